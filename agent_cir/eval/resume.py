"""Resuming a run folder: what makes two runs the same run (identity), and a torn last trace line.

Identity = everything that changes the numbers, nothing that does not. It holds the recipe with the runtime-only
settings removed (:data:`RUNTIME_KEYS`: devices, batch and chunk sizes, concurrency, timeouts, retries, rate limits,
thread counts, the cache file, secrets, and the descriptive fields), the hash of every prompt template the stages
render, the dataset, split, surrogate flag, the annotation and gallery-caption file hashes, and the benchmark
protocol. Changing ``encoder.device`` resumes; editing a prompt template does not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agent_cir.config import Recipe, redacted_recipe_dump
from agent_cir.errors import AgentCirError
from agent_cir.hashing import stable_hash
from agent_cir.trace import read_traces

RUNTIME_KEYS = frozenset({
    "device", "device_map", "batch_size", "chunk_size", "max_concurrency", "timeout", "max_retries",
    "requests_per_second", "num_threads", "api_key", "api_key_env",
})
"""Keys, at any depth of the recipe, that change how fast or where a run goes, never what it returns."""
DESCRIPTIVE_KEYS = ("name", "description", "mirrors", "differences", "published", "by_dataset")


class RunMismatchError(AgentCirError):
    """The output folder holds a run of another recipe or dataset; resuming into it would mix results."""


def _without_runtime(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _without_runtime(value) for key, value in data.items() if key not in RUNTIME_KEYS}
    if isinstance(data, list):
        return [_without_runtime(item) for item in data]
    return data


def results_recipe(recipe: Recipe) -> dict[str, Any]:
    """The part of ``recipe`` that can change results (see the module docstring)."""
    data = redacted_recipe_dump(recipe)
    for key in DESCRIPTIVE_KEYS:
        data.pop(key, None)
    (data.get("cache") or {}).pop("path", None)
    return _without_runtime(data)


def run_identity(recipe: Recipe, prompts: dict[str, Any], **parts: Any) -> dict[str, Any]:
    """``{"recipe_hash", "prompts", **parts, "hash"}``; ``parts`` are the dataset, split, file hashes, protocol."""
    identity: dict[str, Any] = {**parts, "recipe_hash": stable_hash(results_recipe(recipe)),
                                "prompts": {stage: value["hash"] for stage, value in prompts.items()}}
    identity["hash"] = stable_hash(identity)
    return identity


def _differs(key: str, old: Any, new: Any) -> bool:
    if key == "annotations" and isinstance(old, dict) and isinstance(new, dict):
        # Another --category reads other files; only a file read by both runs with other content is a mismatch.
        return any(old[path] != new[path] for path in old.keys() & new.keys())
    return old != new


def has_traces(path: Path) -> bool:
    return path.is_file() and any(True for _ in read_traces(path))


def check_resume(out_dir: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The previous manifest when resuming; None for a fresh run. A previous run that finished no query
    (e.g. stopped by a missing model) does not lock the folder: it is replaced."""
    manifest_path = out_dir / "run.json"
    traces_exist = has_traces(out_dir / "traces.jsonl")
    if not manifest_path.is_file():
        if traces_exist:
            raise RunMismatchError(
                f"{out_dir} has traces.jsonl but no run.json: it was not written by `agent-cir eval`; use another --out"
            )
        return None
    try:
        previous = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RunMismatchError(f"{manifest_path} is not valid JSON; use another --out or repair it") from err
    before = previous.get("identity", {}) if isinstance(previous, dict) else {}
    for key, value in identity.items():
        if key == "hash":
            continue
        if _differs(key, before.get(key), value):
            if not traces_exist:
                return None
            raise RunMismatchError(
                f"{out_dir} holds a run with another {key} ({before.get(key)!r}, this run {value!r}); resuming would "
                "mix results. Use another --out, or the same recipe, prompts and data"
            )
    return previous


def repair_torn_tail(path: Path) -> bool:
    """Cut a last line that lacks its newline (a writer killed mid-line), so appends start on a clean line.
    Returns True when something was cut."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return False
        data_end = handle.seek(0, os.SEEK_END)
        chunk = 1 << 16
        position = data_end
        cut = 0
        while position > 0:
            start = max(0, position - chunk)
            handle.seek(start)
            block = handle.read(position - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                cut = start + newline + 1
                break
            position = start
        handle.truncate(cut)
    return True
