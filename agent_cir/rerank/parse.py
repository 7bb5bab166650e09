"""Judge answers -> a full ranking of cells, or a yes/no score. Total and linear-time on any text.

Everything a judge says goes through :func:`parse_ranking`, which never raises: out-of-range numbers and
duplicates are dropped, left-out cells are appended in retrieval order, and an answer with no usable
ranking keeps the retrieval order; each repair is recorded. Answers longer than
:data:`agent_cir.parsing.MAX_ANSWER_CHARS` are read up to that length (repair ``ignored_text_beyond_limit``).

The free-text forms (``Final answer: 3 > 1``, ``2 -> 4 -> 1``, ``5, 3, 1``) are read by a tokenizer (one
``finditer`` whose alternatives each match a run of one character class, so it never backtracks) and small
state machines over the tokens, instead of the nested-quantifier regexes that made ``"1" + 2,000 spaces +
"x"`` take 31 s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from agent_cir.parsing import MAX_JSON_DEPTH, bound_answer, extract_json, fenced_blocks

_RANKING_KEYS = ("ranking", "rank", "ranks", "order", "final_ranking", "final_order", "answer", "result")
_NUMBER_ITEM = re.compile(r"(?:cell|image|candidate|img|no\.?|#)? ?#? ?(\d{1,18}) ?[.)]?", re.IGNORECASE)
_MAX_ITEM_CHARS = 40
"""A JSON string item longer than this is not a cell number ("cell 12", "#3", "Image 4.")."""
_MAX_DIGITS = 18
"""Longer digit runs stand for 10**18 (out of range): ``int`` refuses strings past 4,300 digits."""
_DIGITS = re.compile(r"\d+")
_TOKEN = re.compile(
    r"(?P<num>\d+)|(?P<label>cell|image|candidate|#)|(?P<arrow>>>|->|→|>)|(?P<punct>[,;])|(?P<ws>\s+)|(?P<other>.)",
    re.IGNORECASE | re.DOTALL,
)
_KEYWORD = re.compile(r"final\s+answer|final\s+ranking|ranking|answer|order", re.IGNORECASE)


@dataclass
class ParsedRanking:
    """A judge answer turned into a full ranking of cell numbers, and how it got there."""

    ranking: list[int]
    """Every cell number 1..n exactly once, best first."""
    source: str
    """Where the ranking came from: structured | json | fenced_json | embedded_json | final_answer |
    arrow_chain | number_list | none (nothing usable: retrieval order)."""
    given: list[Any] = field(default_factory=list)
    """The items the model gave, before repair."""
    out_of_range: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    not_numbers: list[str] = field(default_factory=list)
    appended: list[int] = field(default_factory=list)
    """Cells the model left out, appended in retrieval order."""
    reasons: dict[str, str] = field(default_factory=dict)
    truncated: bool = False
    """The answer was longer than MAX_ANSWER_CHARS; only its beginning was read."""
    error: str | None = None
    """Set when the parser itself failed on this answer (then: retrieval order)."""

    @property
    def fallback(self) -> bool:
        return self.source == "none"

    @property
    def repairs(self) -> list[str]:
        """Names of the repairs made, in the order they were applied (empty: the answer was used as given)."""
        done: list[str] = []
        if self.truncated:
            done.append("ignored_text_beyond_limit")
        if self.not_numbers:
            done.append("dropped_not_numbers")
        if self.out_of_range:
            done.append("dropped_out_of_range")
        if self.duplicates:
            done.append("dropped_duplicates")
        if self.fallback:
            done.append("fallback_retrieval_order")
        elif self.appended:
            done.append("appended_missing")
        return done

    @property
    def status(self) -> str:
        if self.fallback:
            return "fallback"
        return "repaired" if self.repairs else "ok"

    def to_dict(self) -> dict[str, Any]:
        data = {
            "ranking": self.ranking,
            "source": self.source,
            "given": self.given,
            "repairs": self.repairs,
            "out_of_range": self.out_of_range,
            "duplicates": self.duplicates,
            "not_numbers": self.not_numbers,
            "appended": self.appended,
            "reasons": self.reasons,
        }
        if self.error:
            data["error"] = self.error
        return data


def _short_text(value: Any, limit: int = 200) -> str:
    """A bounded, never-raising text form of any parsed JSON value (deep nesting included)."""
    if isinstance(value, str):
        return value[:limit]
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text[:limit]


def _to_int(digits: str) -> int:
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def _coerce_item(item: Any, depth: int = 0) -> int | None:
    if isinstance(item, bool):
        return None
    if isinstance(item, int):
        return item
    if isinstance(item, float) and item.is_integer():
        return int(item)
    if isinstance(item, str):
        text = " ".join(item.split())
        if len(text) <= _MAX_ITEM_CHARS:
            match = _NUMBER_ITEM.fullmatch(text)
            if match:
                return int(match.group(1))
    if isinstance(item, Mapping) and depth < 2:  # [{"cell": 3, ...}, ...]
        for key in ("cell", "id", "number", "index", "candidate"):
            if key in item:
                return _coerce_item(item[key], depth + 1)
    return None


def _ranking_from_json(value: Any, depth: int = 0) -> tuple[list[Any] | None, dict[str, str]]:
    """The ranking list (and reasons) inside a parsed JSON value, searching nested objects (bounded depth)."""
    if isinstance(value, list):
        return value, {}
    if not isinstance(value, Mapping) or depth > MAX_JSON_DEPTH:
        return None, {}
    reasons_raw = value.get("reasons") or value.get("reasoning") or {}
    reasons = (
        {str(k)[:40]: _short_text(v) for k, v in reasons_raw.items()} if isinstance(reasons_raw, Mapping) else {}
    )
    lowered = {str(k).lower(): v for k, v in value.items()}
    for key in _RANKING_KEYS:
        found = lowered.get(key)
        if isinstance(found, list):
            return found, reasons
        if isinstance(found, str) and _DIGITS.search(found):
            return _split_sequence(found), reasons
        if isinstance(found, (int, float)) and not isinstance(found, bool):
            return [found], reasons
    for nested in value.values():
        if isinstance(nested, Mapping):
            items, nested_reasons = _ranking_from_json(nested, depth + 1)
            if items is not None:
                return items, reasons or nested_reasons
    return None, reasons


def _split_sequence(text: str) -> list[Any]:
    return [_to_int(d) for d in _DIGITS.findall(text)]


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or "other"
        yield kind, match.group()


def number_sequence(text: str) -> list[int] | None:
    """The numbers when ``text`` is nothing but a list of cell numbers: ``[3, 1, 2]``, ``3 > 1 > 2.``,
    ``cell 3; cell 1``, ``4 5 1``; None otherwise. Between two numbers: whitespace and at most one of
    ``> >> -> → , ;``; a number may carry a ``cell`` / ``image`` / ``candidate`` / ``#`` label."""
    body = text.strip()
    if body[:1] in ("[", "("):
        body = body[1:]
    if body.endswith("."):
        body = body[:-1].rstrip()
    if body[-1:] in ("]", ")"):
        body = body[:-1]
    numbers: list[int] = []
    state = "need_number"  # need_number | after_label | after_number | after_space | after_symbol
    for kind, value in _tokens(body):
        if kind == "ws":
            if state == "after_number":
                state = "after_space"
            continue
        if kind == "num" and state != "after_number":
            numbers.append(_to_int(value))
            state = "after_number"
        elif kind == "label" and state in ("need_number", "after_space", "after_symbol"):
            state = "after_label"
        elif kind in ("arrow", "punct") and state in ("after_number", "after_space"):
            state = "after_symbol"
        else:
            return None
    return numbers if numbers and state in ("after_number", "after_space") else None


def arrow_chains(text: str) -> list[list[int]]:
    """Every maximal ``a > b > c`` / ``a -> b`` / ``a → b`` chain of (labelled) numbers, in order."""
    chains: list[list[int]] = []
    current: list[int] = []
    state = "idle"  # idle | label | number | arrow | arrow_label

    def close() -> None:
        nonlocal current
        if len(current) >= 2:
            chains.append(current)
        current = []

    for kind, value in _tokens(text):
        while True:  # a token that breaks a chain is looked at again as a possible chain start
            if kind == "ws" and state != "idle":
                break
            if state == "idle":
                if kind == "num":
                    current, state = [_to_int(value)], "number"
                elif kind == "label":
                    state = "label"
                break
            if state in ("label", "arrow_label", "arrow") and kind == "num":
                if state == "label":
                    current = [_to_int(value)]
                else:
                    current.append(_to_int(value))
                state = "number"
                break
            if state == "arrow" and kind == "label":
                state = "arrow_label"
                break
            if state == "number" and kind == "arrow":
                state = "arrow"
                break
            close()
            state = "idle"
    close()
    return chains


def _final_answer_tail(line: str) -> str | None:
    """What follows the first ``final answer:`` / ``ranking =`` / ``order -`` (``is`` allowed) in a line."""
    for match in _KEYWORD.finditer(line):
        position = match.end()
        while position < len(line) and line[position].isspace():
            position += 1
        if line[position:position + 2].lower() == "is":
            position += 2
            while position < len(line) and line[position].isspace():
                position += 1
        if position < len(line) and line[position] in ":=-" and position + 1 < len(line):
            return line[position + 1:]
    return None


def _find_items(text: str, structured: Any = None) -> tuple[list[Any] | None, str, dict[str, str]]:
    """Locate the ranking in a model answer: the first form that yields one wins."""
    if structured is not None:
        items, reasons = _ranking_from_json(structured if not isinstance(structured, BaseModel)
                                            else structured.model_dump())
        if items:
            return items, "structured", reasons
    stripped = (text or "").strip()
    if not stripped:
        return None, "none", {}
    if stripped[:1] in "[{":
        whole = extract_json(stripped, prefer=None)
        if whole is not None:
            items, reasons = _ranking_from_json(whole)
            if items:
                return items, "json", reasons
    for fenced in fenced_blocks(stripped):
        value = extract_json(fenced.strip(), prefer=None)
        items, reasons = _ranking_from_json(value)
        if items:
            return items, "fenced_json", reasons
    embedded = extract_json(stripped, prefer=dict)
    if isinstance(embedded, Mapping):
        items, reasons = _ranking_from_json(embedded)
        if items:
            return items, "embedded_json", reasons
    lines = stripped.splitlines()
    # "Final answer: 3 > 1 > 7" (the last such line wins: models restate their answer at the end)
    for line in reversed(lines):
        tail = _final_answer_tail(line)
        if tail is not None:
            sequence = number_sequence(tail.strip().rstrip("."))
            if sequence:
                return sequence, "final_answer", {}
    chains = arrow_chains(stripped)
    if chains:
        return chains[-1], "arrow_chain", {}
    # A bare list of numbers: the whole answer, or its last line.
    non_empty = [line for line in lines if line.strip()]
    last_line = non_empty[-1] if len(non_empty) > 1 else ""
    for candidate in (stripped, last_line):
        sequence = number_sequence(candidate)
        if sequence:
            return sequence, "number_list", {}
    return None, "none", {}


def parse_ranking(
    text: str | None,
    n_cells: int,
    retrieval_order: Sequence[int] | None = None,
    structured: Any = None,
) -> ParsedRanking:
    """Turn a judge's answer into a full ranking of cells ``1..n_cells``; never raises.

    ``retrieval_order``: the cell numbers ordered by their candidates' retrieval rank (default 1..n);
    cells the model leaves out are appended in this order, and it is the whole answer when nothing in the
    text is usable. ``structured``: a parsed structured-output object, tried first.
    """
    order = list(retrieval_order) if retrieval_order is not None else list(range(1, n_cells + 1))
    bounded, cut = bound_answer(text)
    parsed = ParsedRanking(ranking=[], source="none", truncated=cut is not None)
    try:
        items, source, reasons = _find_items(bounded, structured)
        parsed.source, parsed.reasons = source, reasons
        if items is None:
            parsed.source, parsed.ranking = "none", order
            return parsed
        parsed.given = [item if isinstance(item, (int, float, str)) else _short_text(item) for item in items]
        seen: set[int] = set()
        for item in items:
            number = _coerce_item(item)
            if number is None:
                parsed.not_numbers.append(_short_text(item) if not isinstance(item, str) else item[:200])
            elif not 1 <= number <= n_cells:
                parsed.out_of_range.append(number)
            elif number in seen:
                parsed.duplicates.append(number)
            else:
                seen.add(number)
                parsed.ranking.append(number)
    except Exception as err:  # noqa: BLE001 - a parser bug must never fail a query: the answer is unusable
        return ParsedRanking(ranking=order, source="none", truncated=cut is not None,
                             error=f"{type(err).__name__}: {_short_text(str(err))}")
    if not parsed.ranking:
        parsed.source, parsed.ranking = "none", order
        return parsed
    parsed.appended = [cell for cell in order if cell not in seen]
    parsed.ranking.extend(parsed.appended)
    return parsed


_YES = re.compile(r"\b(yes|true|match(?:es)?)\b", re.IGNORECASE)
_NO = re.compile(r"\b(no|false|not?\s+a\s+match|does\s+not)\b", re.IGNORECASE)
_FIRST_WORD = re.compile(r"\W*(\w+)")


def parse_yes_no(text: str | None) -> tuple[float | None, str]:
    """1.0 for yes, 0.0 for no, None when neither (or both, ambiguously) appears; and where it was found.

    Never raises; reads at most MAX_ANSWER_CHARS."""
    try:
        return _parse_yes_no(bound_answer(text)[0])
    except Exception:  # noqa: BLE001 - hostile text: no answer
        return None, "none"


def _parse_yes_no(text: str) -> tuple[float | None, str]:
    stripped = text.strip()
    if not stripped:
        return None, "none"
    value = extract_json(stripped, prefer=dict)
    if isinstance(value, Mapping):
        for key in ("answer", "match", "matches", "is_match", "verdict"):
            if key in value:
                found = value[key]
                if isinstance(found, bool):
                    return (1.0 if found else 0.0), "json"
                if isinstance(found, str):
                    word = found.strip().lower()
                    if word.startswith("yes"):
                        return 1.0, "json"
                    if word.startswith("no"):
                        return 0.0, "json"
    first_word = _FIRST_WORD.match(stripped)
    if first_word:
        word = first_word.group(1).lower()
        if word in ("yes", "true"):
            return 1.0, "first_word"
        if word in ("no", "false"):
            return 0.0, "first_word"
    yes, no = _YES.search(stripped), _NO.search(stripped)
    if yes and not no:
        return 1.0, "text"
    if no and not yes:
        return 0.0, "text"
    return None, "none"
