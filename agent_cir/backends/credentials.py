"""Secrets of a chat model (keys, URL passwords, auth headers): never in cache keys, ModelCall.params or the
error messages we format."""

from __future__ import annotations

from typing import Any

from agent_cir.backends.handle import ChatModelHandle

_SECRET_QUERY_KEYS = ("key", "api_key", "apikey", "token", "access_token", "secret", "password", "sig", "signature")


def redact_url(url: str | None) -> str | None:
    """A URL without a password in its user-info and without secret-looking query values."""
    if not url or ("@" not in url and "?" not in url):
        return url
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
    query = urlencode([(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in parse_qsl(parts.query)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secret_values(data: Any, secret: bool = False) -> list[str]:
    """Every string under a secret-named key of ``data`` (nested), and the credential of ``Bearer X`` values."""
    from agent_cir.redact import is_secret_key

    if isinstance(data, dict):
        return [v for key, value in data.items() for v in _secret_values(value, secret or is_secret_key(key))]
    if isinstance(data, (list, tuple)):
        return [v for item in data for v in _secret_values(item, secret)]
    if secret and isinstance(data, str):
        scheme, _, credential = data.partition(" ")
        return [data, credential] if scheme.lower() in ("bearer", "basic", "token") and credential else [data]
    return []


def handle_secrets(handle: ChatModelHandle) -> list[str]:
    """Every credential the handle's model may send: the configured key, the key from the environment and
    the client's own key attribute (placeholders and very short strings excluded)."""
    import os

    from agent_cir.backends.openai_backend import LOCAL_KEY_PLACEHOLDER

    config = handle.config
    found = [config.api_key, os.environ.get(config.api_key_env) if config.api_key_env else None,
             os.environ.get("OPENAI_API_KEY")]
    for attribute in ("openai_api_key", "api_key"):
        value = getattr(handle.chat, attribute, None)
        value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        found.append(value if isinstance(value, str) else None)
    for url in (config.base_url, getattr(handle.chat, "openai_api_base", None)):
        if isinstance(url, str) and "@" in url:
            userinfo = url.split("//", 1)[-1].rpartition("@")[0]
            found.append(userinfo.split(":", 1)[1] if ":" in userinfo else userinfo)
    found.extend(_secret_values(config.extra))  # default_headers.Authorization, X-Api-Key, openai_api_key ...
    secrets = {s for s in found if isinstance(s, str) and len(s) >= 6 and s != LOCAL_KEY_PLACEHOLDER}
    return sorted(secrets, key=len, reverse=True)


def redact(text: str, handle: ChatModelHandle) -> str:
    """``text`` with every secret of ``handle`` replaced by ``***``."""
    for secret in handle_secrets(handle):
        text = text.replace(secret, "***")
    return text
