"""Query text made safe to carry: text UTF-8 cannot encode repaired, query ids as folder names."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Lone surrogates other than U+DC80..U+DCFF (those carry undecodable bytes, see repair_text).
_FOREIGN_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def safe_name(query_id: str) -> str:
    """A query id as a folder name (ids may contain slashes or spaces)."""
    return _UNSAFE.sub("_", str(query_id)).strip("._") or "query"


def repair_text(text: str | None) -> str | None:
    """Text that UTF-8 cannot carry, made usable: bytes the OS could not decode (command-line arguments arrive
    as U+DC80..U+DCFF, Python's surrogateescape) are decoded again, every other lone surrogate becomes U+FFFD.
    Valid text is returned unchanged."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    raw = _FOREIGN_SURROGATE.sub("\ufffd", text).encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "replace")
