"""Tolerant extraction of JSON and descriptions from model text: plain JSON, fenced JSON, the first balanced
object/array, labelled lines.

Model output is hostile input. Every function here is total and linear-time:
- only the first ``MAX_ANSWER_CHARS`` (64 KiB) of an answer are read; a longer answer is cut there and the
  cut is recorded (a parse note / the ``repaired`` status), never an error;
- no regular expression with nested or adjacent overlapping quantifiers (the kind that backtracks
  catastrophically): structure is found with ``str`` methods, one-pass scanners and anchored patterns;
- JSON nested deeper than Python's recursion limit (``[[[[...]]]]``), numbers too long for ``int`` and any
  other exception inside a parser become "nothing usable here", recorded, not raised.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_ANSWER_CHARS = 64 * 1024
"""How much of a model answer the parsers read; the rest is ignored (and the cut recorded)."""
MAX_JSON_DEPTH = 32
"""Nesting depth below which JSON values are searched for answers (deeper values are not answers)."""


def bound_answer(text: str | None) -> tuple[str, str | None]:
    """(the part of ``text`` the parsers read, a note when it was cut)."""
    if not text:
        return "", None
    if not isinstance(text, str):
        text = str(text)
    if len(text) <= MAX_ANSWER_CHARS:
        return text, None
    return text[:MAX_ANSWER_CHARS], (
        f"answer was {len(text)} characters; only the first {MAX_ANSWER_CHARS} were read"
    )


def fenced_blocks(text: str) -> list[str]:
    """The contents of ```` ``` ```` fenced blocks (an optional ``json`` tag and leading whitespace dropped).

    One left-to-right pass with ``str.find``: linear in the text, whatever it holds."""
    blocks: list[str] = []
    position = text.find("```")
    while position != -1:
        start = position + 3
        if text.startswith(("json", "JSON"), start):
            start += 4
        while start < len(text) and text[start].isspace():
            start += 1
        end = text.find("```", start)
        if end == -1:
            break
        blocks.append(text[start:end])
        position = text.find("```", end + 3)
    return blocks


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


_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def _json_or_none(candidate: str) -> Any | None:
    try:
        return json.loads(candidate)
    except (ValueError, RecursionError):  # JSONDecodeError, int too long, nested deeper than the stack
        return None


def _loads(candidate: str) -> Any | None:
    value = _json_or_none(candidate)
    if value is not None:
        return value
    # Common model slips: trailing commas, single-quoted keys/strings.
    repaired = _TRAILING_COMMA.sub(r"\1", candidate)
    if "'" in repaired and '"' not in repaired:
        repaired = repaired.replace("'", '"')
    return _json_or_none(repaired) if repaired != candidate else None


def extract_json(text: str, prefer: type | None = dict) -> Any | None:
    """Return the first JSON value found in ``text`` (``prefer`` dict: objects first, then arrays), or None.

    Reads at most ``MAX_ANSWER_CHARS``; never raises."""
    try:
        return _extract_json(bound_answer(text)[0], prefer)
    except Exception:  # noqa: BLE001 - hostile text must never fail a caller
        return None


def _extract_json(text: str, prefer: type | None) -> Any | None:
    if not text:
        return None
    stripped = text.strip()
    whole = _loads(stripped)
    if whole is not None and (prefer is None or isinstance(whole, prefer)):
        return whole
    candidates: list[str] = [block.strip() for block in fenced_blocks(text)]
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
_PLACEHOLDER = re.compile(r"(?:<[^>]*>|\.\.\.|…|n/?a|none|null)?", re.IGNORECASE)
_LINE_DECORATION = " \t>*#_-"
_LIST_NUMBER = re.compile(r"\d{1,6}[.)]")
_LABEL_WORDS = re.compile(r"(?:final )?target (?:image )?descriptions?(?: ?\d{1,6})?", re.IGNORECASE)
_COLONS = (":", "：")
_TRUNCATED_FIELD = r'"{key}"\s*:\s*"((?:[^"\\]|\\.)*)'
_TRUNCATED_LIST = r'"{key}"\s*:\s*\[\s*"((?:[^"\\]|\\.)*)'


def clean_description(text: Any) -> str:
    """One description as retrieval should see it: unquoted, unformatted, single-spaced."""
    if not isinstance(text, str):
        return ""
    value = text.strip().strip("*").strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'`":
        value = value[1:-1]
    value = " ".join(value.split())
    return "" if _PLACEHOLDER.fullmatch(value) else value


def _split_label(line: str) -> tuple[str, str] | None:
    """``(label, value)`` of a ``Label: value`` line (decoration and a list number before the label, stars
    around it); None without a colon. Plain string operations: linear in the line."""
    cut = min((i for i in (line.find(c) for c in _COLONS) if i != -1), default=-1)
    if cut == -1:
        return None
    head = line[:cut].lstrip(_LINE_DECORATION)
    number = _LIST_NUMBER.match(head)
    if number:
        head = head[number.end():]
    label = " ".join(head.replace("*", " ").split())
    value = line[cut + 1:].lstrip(" \t*")
    return label, value


def _labelled_descriptions(text: str) -> list[str]:
    """Values of ``Target description: ...`` lines (``Final target description 2:``, ``**Target image
    description**:``, ``1. Target description: ...``)."""
    found = []
    for line in text.splitlines():
        split = _split_label(line)
        if split and _LABEL_WORDS.fullmatch(split[0]):
            found.append(split[1])
    return found


def _reasoning_line(text: str) -> str | None:
    for line in text.splitlines():
        split = _split_label(line)
        if split and split[0].lower() == "reasoning" and split[1].strip():
            return split[1].strip()
    return None


def _listed_after_header(text: str) -> list[str]:
    """Items of a numbered or bulleted list under a ``Target descriptions:`` line of its own."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        body = line.rstrip(" \t*")
        if not body.endswith(_COLONS):
            continue
        words = body[:-1].replace("*", " ").split()
        if len(words) >= 2 and words[-2].lower() == "target" and words[-1].lower() in ("description", "descriptions"):
            items = []
            for item_line in lines[index + 1:]:
                item = item_line.lstrip()
                if item[:1] in ("-", "*", "•"):
                    rest = item[1:]
                else:
                    number = _LIST_NUMBER.match(item)
                    rest = item[number.end():] if number else ""
                if rest[:1].isspace() and rest.strip():
                    items.append(rest.strip())
            return items
    return []


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
    """Read target description(s) and reasoning from a model answer, however it was formatted; never raises.

    Accepts, in order: the answer being exactly the JSON object asked for (status ``ok``); JSON inside
    fences or other text, other key spellings, a JSON list, a truncated JSON string, or lines labelled
    ``Target description: ...`` (status ``repaired``). Nothing usable: status ``fallback``, no descriptions.
    Only the first ``MAX_ANSWER_CHARS`` are read (the cut is noted and makes the status ``repaired``).
    """
    bounded, cut_note = bound_answer(text)
    try:
        parsed = _parse_target_descriptions(bounded.strip(), expected)
    except Exception as err:  # noqa: BLE001 - a parser bug or hostile text must never fail a query
        return ParsedDescriptions([], None, "fallback", note=f"answer could not be parsed ({type(err).__name__})")
    if cut_note:
        if parsed.status == "ok":
            parsed.status = "repaired"
        parsed.note = f"{cut_note}; {parsed.note}" if parsed.note else cut_note
    return parsed


def _parse_target_descriptions(text: str, expected: int) -> ParsedDescriptions:
    if not text:
        return ParsedDescriptions([], None, "fallback", note="empty answer")

    whole = _json_or_none(text)
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
    for key, pattern in (("target_descriptions", _TRUNCATED_LIST), ("target_description", _TRUNCATED_FIELD)):
        match = re.search(pattern.format(key=key), text)
        if match:
            description = clean_description(match.group(1).replace('\\"', '"'))
            if description:
                reasoning_match = re.search(_TRUNCATED_FIELD.format(key="reasoning") + '"', text)
                reasoning = reasoning_match.group(1) if reasoning_match else None
                return _limit(
                    ParsedDescriptions([description], reasoning, "repaired", note="answer was cut off"), expected
                )

    labelled = [item for item in dict.fromkeys(clean_description(v) for v in _labelled_descriptions(text)) if item]
    if not labelled:
        # "Target descriptions:" on its own line followed by a numbered or bulleted list
        labelled = [item for item in dict.fromkeys(clean_description(i) for i in _listed_after_header(text)) if item]
    if labelled:
        reasoning = _reasoning_line(text)
        if reasoning is None:
            first = next((i for i, line in enumerate(text.splitlines())
                          if (split := _split_label(line)) and _LABEL_WORDS.fullmatch(split[0])), None)
            before = "\n".join(text.splitlines()[:first]).strip() if first is not None else ""
            reasoning = before or None
        return _limit(ParsedDescriptions(labelled, reasoning, "repaired"), expected)

    return ParsedDescriptions([], None, "fallback", note="no target description found in the answer")


def _limit(parsed: ParsedDescriptions, expected: int) -> ParsedDescriptions:
    if len(parsed.descriptions) > expected:
        parsed.note = f"kept the first {expected} of {len(parsed.descriptions)} descriptions"
        parsed.descriptions = parsed.descriptions[:expected]
    return parsed


_CAPTION_LABELS = ("caption", "description", "image caption", "image description")


def parse_caption(text: str | None) -> tuple[str, str]:
    """(caption, status) from a captioner's answer: plain text, a labelled line, or JSON with a caption key.

    Never raises; reads at most ``MAX_ANSWER_CHARS`` (a longer answer is at best ``repaired``)."""
    bounded, cut_note = bound_answer(text)
    try:
        caption, status = _parse_caption(bounded)
    except Exception:  # noqa: BLE001 - hostile text must never fail a query
        return "", "fallback"
    if cut_note and status == "ok":
        status = "repaired"
    return caption, status


def _parse_caption(text: str) -> tuple[str, str]:
    raw = text.strip()
    if not raw:
        return "", "fallback"
    found = extract_json(raw, prefer=dict) if raw.startswith(("{", "```")) else None
    if isinstance(found, dict):
        for key in ("caption", "description", "text"):
            if isinstance(found.get(key), str) and found[key].strip():
                return clean_description(found[key]), "repaired"
    fenced = fenced_blocks(raw)
    if fenced:
        raw = fenced[0].strip()
    lines = [line for line in raw.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    stripped = first
    split = _split_label(first)
    if split and split[0].lower() in _CAPTION_LABELS:
        stripped = split[1]
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
