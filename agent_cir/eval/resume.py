"""Resuming a run folder: what makes two runs the same run (identity), and a torn last trace line.

Identity = everything that changes the numbers, nothing that does not. It holds the recipe with the runtime-only
settings removed (:data:`RUNTIME_KEYS`: devices, batch and chunk sizes, concurrency, timeouts, retries, rate limits,
thread counts, the cache file, secrets, and the descriptive fields), the hash of every prompt template the stages
render, the dataset, split, surrogate flag, the annotation and gallery-caption file hashes, and the benchmark
protocol. Changing ``encoder.device`` resumes; editing a prompt template does not. When the encoder names
local files (an open_clip model JSON config, a checkpoint file or a model folder), their identity is part of
it too (:func:`encoder_files_identity`): an encoder config edited in place does not resume into the old run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agent_cir.config import Recipe, redacted_recipe_dump
from agent_cir.errors import AgentCirError
from agent_cir.atomic import write_text_atomic
from agent_cir.hashing import content_hash, stable_hash
from agent_cir.trace.io import read_typed_traces

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


CONTENT_HASH_MAX_BYTES = 64 * 1024 * 1024
"""Local encoder files up to this size are identified by their sha256; larger ones (weights) by size and
modification time, so a resume does not re-read gigabytes."""
FOLDER_FILES_MAX = 200


def _file_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    if stat.st_size <= CONTENT_HASH_MAX_BYTES:
        return {"sha256": content_hash(path)}
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def encoder_files_identity(recipe: Recipe) -> dict[str, Any]:
    """The identity of every local file or folder the encoder's ``model`` / ``pretrained`` names (empty when
    it names only published architectures and tags, which the recipe text already pins)."""
    found: dict[str, Any] = {}
    encoder = recipe.encoder
    for key in ("model", "pretrained"):
        value = getattr(encoder, key, None)
        if not isinstance(value, str) or not value or value.lower() == "none" or ":" in value.split("/")[0]:
            continue
        path = Path(value).expanduser()
        try:
            if path.is_file():
                found[key] = {"path": value, **_file_identity(path)}
            elif path.is_dir():
                files = sorted(p for p in path.iterdir() if p.is_file())[:FOLDER_FILES_MAX]
                found[key] = {"path": value, "files": {p.name: _file_identity(p) for p in files}}
        except OSError as err:
            raise AgentCirError(f"encoder {key} {value} cannot be read ({err}); check the recipe's encoder") from err
    return found


def run_identity(recipe: Recipe, prompts: dict[str, Any], **parts: Any) -> dict[str, Any]:
    """``{"recipe_hash", "prompts", **parts, "hash"}``; ``parts`` are the dataset, split, file hashes, protocol.
    ``encoder_files`` is added when the encoder names local files (see :func:`encoder_files_identity`)."""
    identity: dict[str, Any] = {**parts, "recipe_hash": stable_hash(results_recipe(recipe)),
                                "prompts": {stage: value["hash"] for stage, value in prompts.items()}}
    encoder_files = encoder_files_identity(recipe)
    if encoder_files:
        identity["encoder_files"] = encoder_files
    identity["hash"] = stable_hash(identity)
    return identity


def _differs(key: str, old: Any, new: Any) -> bool:
    if key == "annotations" and isinstance(old, dict) and isinstance(new, dict):
        # Another --category reads other files; only a file read by both runs with other content is a mismatch.
        return any(old[path] != new[path] for path in old.keys() & new.keys())
    return old != new


def has_traces(path: Path) -> bool:
    """Whether the file holds at least one readable trace (read lazily: it stops at the first)."""
    return path.is_file() and any(True for _ in read_typed_traces(path, salvage=True))


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


def write_failures(path: Path, failures: dict[str, str], finished: dict[str, Any]) -> None:
    """Rewrite ``failures.jsonl`` (atomically) with the failures that remain: this session's, plus earlier
    ones for queries not finished since and not retried now. Removed when none remain (it is our own file)."""
    remaining: dict[str, str] = {}
    if path.is_file() and not path.is_symlink():
        try:
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    remaining[str(record["query_id"])] = str(record["error"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn line of a killed run
        except (OSError, UnicodeDecodeError):
            remaining = {}
    remaining = {query: error for query, error in remaining.items() if query not in finished}
    remaining.update(failures)
    if not remaining:
        if path.is_file() and not path.is_symlink():
            path.unlink()
        return
    write_text_atomic(path, "".join(json.dumps({"query_id": q, "error": e}) + "\n" for q, e in remaining.items()))


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
