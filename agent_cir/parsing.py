"""Tolerant extraction of JSON from model text: plain JSON, fenced JSON, or the first balanced object/array."""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def _balanced_spans(text: str, opener: str, closer: str) -> list[str]:
    """Every top-level balanced ``opener...closer`` span, in order, ignoring brackets inside strings."""
    spans: list[str] = []
    depth, start, in_string, escaped = 0, -1, False, False
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"' and depth > 0:
            in_string = True
        elif char == opener:
            if depth == 0:
                start = index
            depth += 1
        elif char == closer and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start : index + 1])
    return spans


def _loads(candidate: str) -> Any | None:
    try:
        return json.loads(candidate)
    except (json.JSONDecodeError, ValueError):
        pass
    # Common model slips: trailing commas, single-quoted keys/strings.
    repaired = re.sub(r",\s*([}\]])", r"\1", candidate)
    if "'" in repaired and '"' not in repaired:
        repaired = repaired.replace("'", '"')
    try:
        return json.loads(repaired)
    except (json.JSONDecodeError, ValueError):
        return None


def extract_json(text: str, prefer: type | None = dict) -> Any | None:
    """Return the first JSON value found in ``text`` (``prefer`` dict: objects first, then arrays), or None."""
    if not text:
        return None
    stripped = text.strip()
    whole = _loads(stripped)
    if whole is not None and (prefer is None or isinstance(whole, prefer)):
        return whole
    candidates: list[str] = [match.strip() for match in _FENCE.findall(text)]
    order = [("{", "}"), ("[", "]")] if prefer is not list else [("[", "]"), ("{", "}")]
    for opener, closer in order:
        candidates.extend(_balanced_spans(text, opener, closer))
    fallback = None
    for candidate in candidates:
        value = _loads(candidate)
        if value is None:
            continue
        if prefer is None or isinstance(value, prefer):
            return value
        fallback = fallback if fallback is not None else value
    return fallback if fallback is not None else whole
