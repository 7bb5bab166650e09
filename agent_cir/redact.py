"""One redactor for everything we write (run.json, traces, reports, manifests, ``recipes --json``).

Secrets are found by where they sit and by what they look like:
- any mapping key whose name has a secret word in it (``api_key``, ``X-Api-Key``, ``Authorization``,
  ``access_token``, ``client_secret``, ``password``, ``credentials``, ``openai_api_key`` ...): its value goes,
  whatever it is (a string, a number, a nested mapping);
- inside any string: a URL's user-info password (``http://user:pass@host``) and secret-looking query values
  (``?api_key=...``, ``&sig=...``), and ``Bearer ...`` / ``Basic ...`` credentials.
Keys are split into words (``max_tokens`` is the words ``max`` and ``tokens``; ``X-Api-Key`` is ``x``,
``api``, ``key``), so counting and sampling settings (``max_tokens``, ``top_k``, ``input_tokens``) are kept.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"

# Words that make a key name secret. Plural "tokens" is deliberately absent: it counts, it does not grant.
_SECRET_WORDS = frozenset({
    "key", "apikey", "token", "secret", "password", "passwd", "pwd", "passphrase", "authorization", "auth",
    "credential", "credentials", "cookie", "signature", "sig", "bearer", "private",
})
# Word runs that are secret only together (``api`` alone is not).
_SECRET_JOINED = ("apikey", "accesstoken", "secretkey", "privatekey", "clientsecret", "sessionid")
_NUMERIC_SECRET_PARTS = ("apikey", "password", "passwd", "secret", "credential")
# Keys that name where a secret is, not the secret: ``api_key_env: OPENAI_API_KEY`` is kept.
_KEY_NAME_SUFFIXES = ("_env", "_env_var", "_file_name")

_QUERY_SECRET_WORDS = _SECRET_WORDS | {"access_token", "api_key", "x-api-key", "x-amz-signature", "x-amz-credential"}
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/@:\s?#]*):(?P<password>[^/@\s?#]*)@")
_URL_USER_ONLY = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/@:\s?#]+)@")
_QUERY_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&;#\s]+)=(?P<value>[^&;#\s]*)")
_AUTH_SCHEME = re.compile(r"\b(?P<scheme>Bearer|Basic|Token)\s+[A-Za-z0-9\-._~+/=]{6,}", re.IGNORECASE)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def key_words(name: str) -> list[str]:
    """``X-Api-Key`` -> ["x", "api", "key"]; ``openaiApiKey`` -> ["openai", "api", "key"]."""
    return [word for word in re.split(r"[^a-z0-9]+", _CAMEL.sub("_", name).lower()) if word]


def is_secret_key(name: Any) -> bool:
    """Whether a mapping key's name says its value is a credential."""
    if not isinstance(name, str):
        return False
    lowered = name.lower()
    if lowered.endswith(_KEY_NAME_SUFFIXES):
        return False
    words = key_words(name)
    if any(word in _SECRET_WORDS for word in words):
        return True
    joined = "".join(words)
    return any(part in joined for part in _SECRET_JOINED)


def _query_name_is_secret(name: str) -> bool:
    return name.lower() in _QUERY_SECRET_WORDS or is_secret_key(name)


def redact_text(text: str) -> str:
    """``text`` with URL passwords, secret query values and Authorization-style credentials replaced."""
    if not text:
        return text
    if "://" in text:
        text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
        # A lone user-info without a colon is usually a token (https://TOKEN@github.com).
        text = _URL_USER_ONLY.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    if "=" in text:
        text = _QUERY_PARAM.sub(
            lambda m: f"{m['lead']}{m['name']}={REDACTED}" if m["value"] and _query_name_is_secret(m["name"])
            else m.group(0),
            text,
        )
    if " " in text:
        text = _AUTH_SCHEME.sub(lambda m: f"{m['scheme']} {REDACTED}", text)
    return text


def redact_url(url: str | None) -> str | None:
    """A URL without a password in its user-info and without secret-looking query values."""
    return redact_text(url) if isinstance(url, str) else url


def _keep(key: str, value: Any) -> bool:
    """Values under a secret-named key that are kept: nothing set, a flag, or a count (``token_limit: 512``;
    a number is taken as a secret only under a name such as ``api_key`` or ``password``)."""
    if value is None or value == "" or isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        joined = "".join(key_words(key))
        return not any(word in joined for word in _NUMERIC_SECRET_PARTS)
    return False


def redact_secrets(data: Any) -> Any:
    """A copy of ``data`` (nested dicts / lists / tuples / strings) with every secret replaced by ``<redacted>``."""
    if isinstance(data, dict):
        return {
            key: (REDACTED if is_secret_key(key) and not _keep(key, value) else redact_secrets(value))
            for key, value in data.items()
        }
    if isinstance(data, (list, tuple)):
        return [redact_secrets(item) for item in data]
    if isinstance(data, str):
        return redact_text(data)
    return data
