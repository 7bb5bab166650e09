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


# ---------------------------------------------------------------------------------------------------------
# Target descriptions (rewrite and one-stage answers) and captions.

from dataclasses import dataclass, field  # noqa: E402

from pydantic import BaseModel, Field  # noqa: E402


class TargetDescriptionAnswer(BaseModel):
    """Structured-output schema: reason, then one target description."""

    reasoning: str = Field(description="Short reasoning: what the modification changes and what stays.")
    target_description: str = Field(description="One sentence describing the target image only.")


class TargetDescriptionsAnswer(BaseModel):
    """Structured-output schema: reason, then several alternative target descriptions."""

    reasoning: str = Field(description="Short reasoning: what the modification changes and what stays.")
    target_descriptions: list[str] = Field(description="Alternative one-sentence descriptions of the target image.")


class OneStageAnswer(BaseModel):
    """Structured-output schema of the one-stage MLLM: see, reason, answer."""

    reference_description: str = Field(description="One sentence describing the reference image.")
    reasoning: str = Field(description="What the modification changes and what stays.")
    target_description: str = Field(description="One sentence describing the target image only.")


class OneStageMultiAnswer(BaseModel):
    reference_description: str = Field(description="One sentence describing the reference image.")
    reasoning: str = Field(description="What the modification changes and what stays.")
    target_descriptions: list[str] = Field(description="Alternative one-sentence descriptions of the target image.")


def answer_schema(num_descriptions: int, one_stage: bool = False) -> type[BaseModel]:
    if one_stage:
        return OneStageAnswer if num_descriptions == 1 else OneStageMultiAnswer
    return TargetDescriptionAnswer if num_descriptions == 1 else TargetDescriptionsAnswer


@dataclass
class ParsedDescriptions:
    """What the tolerant parser read from a model answer."""

    descriptions: list[str]
    reasoning: str | None
    status: str
    """ok (clean JSON), repaired (found inside other text, fenced, truncated or as a labelled line), fallback."""
    fields: dict[str, Any] = field(default_factory=dict)
    """Other string fields of the answer (e.g. reference_description)."""
    note: str | None = None


_SINGLE_KEYS = ("target_description", "description", "target", "target_caption", "edited_description", "answer")
_MULTI_KEYS = ("target_descriptions", "descriptions", "targets", "target_captions")
_REASONING_KEYS = ("reasoning", "reason", "thoughts", "thinking", "analysis", "edit", "edit_type")
_PLACEHOLDER = re.compile(r"^\s*(<[^>]*>|\.\.\.|…|n/?a|none|null)?\s*$", re.IGNORECASE)
_LABELLED = re.compile(
    r"^[ \t>*#_-]*(?:\d+[.)][ \t]*)?\**[ \t]*(?:final[ \t]+)?target(?:[ \t]+image)?[ \t]+descriptions?(?:[ \t]*\d+)?[ \t]*\**[ \t]*[:：][ \t]*\**[ \t]*(.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_REASONING_LINE = re.compile(r"^[ \t>*#_-]*\**[ \t]*reasoning[ \t]*\**[ \t]*[:：][ \t]*(.+)$", re.IGNORECASE | re.MULTILINE)
_TRUNCATED_FIELD = r'"{key}"\s*:\s*"((?:[^"\\]|\\.)*)'


def clean_description(text: Any) -> str:
    """One description as retrieval should see it: unquoted, unformatted, single-spaced."""
    if not isinstance(text, str):
        return ""
    value = text.strip().strip("*").strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'`":
        value = value[1:-1]
    value = re.sub(r"\s+", " ", value).strip()
    return "" if _PLACEHOLDER.match(value) else value


def _descriptions_from(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    cleaned = [clean_description(item) for item in items]
    return [item for item in dict.fromkeys(cleaned) if item]


def _from_mapping(data: dict[str, Any]) -> tuple[list[str], str | None, dict[str, Any], bool]:
    """(descriptions, reasoning, other fields, whether the canonical key was used)."""
    lowered = {str(k).strip().lower().replace(" ", "_"): v for k, v in data.items()}
    descriptions: list[str] = []
    canonical = False
    for key in _MULTI_KEYS + _SINGLE_KEYS:
        if key in lowered:
            descriptions = _descriptions_from(lowered[key])
            if descriptions:
                canonical = key in ("target_description", "target_descriptions")
                break
    reasoning = None
    for key in _REASONING_KEYS:
        if isinstance(lowered.get(key), str) and lowered[key].strip():
            reasoning = lowered[key].strip()
            break
    fields = {k: v.strip() for k, v in lowered.items() if isinstance(v, str) and k not in _SINGLE_KEYS}
    return descriptions, reasoning, fields, canonical


def parse_target_descriptions(text: str | None, expected: int = 1) -> ParsedDescriptions:
    """Read target description(s) and reasoning from a model answer, however it was formatted.

    Accepts, in order: the answer being exactly the JSON object asked for (status ``ok``); JSON inside
    fences or other text, other key spellings, a JSON list, a truncated JSON string, or lines labelled
    ``Target description: ...`` (status ``repaired``). Nothing usable: status ``fallback``, no descriptions.
    """
    text = (text or "").strip()
    if not text:
        return ParsedDescriptions([], None, "fallback", note="empty answer")

    try:
        whole = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        whole = None
    if isinstance(whole, dict):
        descriptions, reasoning, fields, canonical = _from_mapping(whole)
        if descriptions:
            status = "ok" if canonical else "repaired"
            return _limit(ParsedDescriptions(descriptions, reasoning, status, fields), expected)

    found = extract_json(text, prefer=dict)
    if isinstance(found, dict):
        descriptions, reasoning, fields, _ = _from_mapping(found)
        if descriptions:
            return _limit(ParsedDescriptions(descriptions, reasoning, "repaired", fields), expected)
    if isinstance(found, list):
        descriptions = _descriptions_from([item for item in found if isinstance(item, str)])
        if descriptions:
            return _limit(ParsedDescriptions(descriptions, None, "repaired"), expected)

    # JSON cut off by max_tokens: take the description string up to where it stops.
    for key in ("target_descriptions", "target_description"):
        match = re.search(_TRUNCATED_FIELD.format(key=key) if key == "target_description" else
                          rf'"{key}"\s*:\s*\[\s*"((?:[^"\\]|\\.)*)', text)
        if match:
            description = clean_description(match.group(1).replace('\\"', '"'))
            if description:
                reasoning_match = re.search(_TRUNCATED_FIELD.format(key="reasoning") + '"', text)
                reasoning = reasoning_match.group(1) if reasoning_match else None
                return _limit(
                    ParsedDescriptions([description], reasoning, "repaired", note="answer was cut off"), expected
                )

    labelled = [clean_description(m.group(1)) for m in _LABELLED.finditer(text)]
    labelled = [item for item in dict.fromkeys(labelled) if item]
    if not labelled:
        # "Target descriptions:" on its own line followed by a numbered or bulleted list
        header = re.search(r"target\s+descriptions?\s*\**\s*[:：]\s*\**\s*$", text, re.IGNORECASE | re.MULTILINE)
        if header:
            tail = text[header.end():]
            items = re.findall(r"^\s*(?:[-*•]|\d+[.)])\s+(.+)$", tail, re.MULTILINE)
            labelled = [item for item in dict.fromkeys(clean_description(i) for i in items) if item]
    if labelled:
        reasoning_match = _REASONING_LINE.search(text)
        reasoning = reasoning_match.group(1).strip() if reasoning_match else None
        if reasoning is None:
            first = _LABELLED.search(text)
            before = text[: first.start()].strip() if first else ""
            reasoning = before or None
        return _limit(ParsedDescriptions(labelled, reasoning, "repaired"), expected)

    return ParsedDescriptions([], None, "fallback", note="no target description found in the answer")


def _limit(parsed: ParsedDescriptions, expected: int) -> ParsedDescriptions:
    if len(parsed.descriptions) > expected:
        parsed.note = f"kept the first {expected} of {len(parsed.descriptions)} descriptions"
        parsed.descriptions = parsed.descriptions[:expected]
    return parsed


def fallback_description(caption: str | None, modification: str) -> str:
    """What retrieval searches for when no target description could be read: caption + modification."""
    caption = (caption or "").strip().rstrip(".").strip()
    modification = (modification or "").strip()
    if caption and modification:
        return f"{caption}. {modification}"
    return caption or modification


_CAPTION_LABEL = re.compile(r"^\s*\**\s*(?:image\s+)?(?:caption|description)\s*\**\s*[:：]\s*", re.IGNORECASE)


def parse_caption(text: str | None) -> tuple[str, str]:
    """(caption, status) from a captioner's answer: plain text, a labelled line, or JSON with a caption key."""
    raw = (text or "").strip()
    if not raw:
        return "", "fallback"
    found = extract_json(raw, prefer=dict) if raw.startswith(("{", "```")) else None
    if isinstance(found, dict):
        for key in ("caption", "description", "text"):
            if isinstance(found.get(key), str) and found[key].strip():
                return clean_description(found[key]), "repaired"
    fenced = _FENCE.findall(raw)
    if fenced:
        raw = fenced[0].strip()
    lines = [line for line in raw.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    stripped = _CAPTION_LABEL.sub("", first)
    caption = clean_description(stripped)
    if not caption:
        return "", "fallback"
    status = "ok" if (stripped == first and len(lines) == 1 and not fenced) else "repaired"
    return caption, status


_STATUS_ORDER = {"not_applicable": 0, "ok": 1, "repaired": 2, "fallback": 3}


def worst_status(statuses: list[str]) -> str:
    """The least clean parse status of several calls (ok < repaired < fallback)."""
    return max(statuses, key=lambda s: _STATUS_ORDER.get(s, 0), default="not_applicable")


def template_wants_list(template_source: str) -> bool:
    """Whether a rewrite template asks for a ``target_descriptions`` list even for one description."""
    return "target_descriptions" in template_source and '"target_description"' not in template_source
