"""Index generations on disk: written whole into a fresh folder, published by one atomic pointer update,
verified on load.

Layout of an index folder (``--out``)::

    CURRENT                  {"generation": "gen-<id>", "meta_sha256": ...}: the one commit point
    gen-<id>/meta.json       encoder, dim, count, factory, and for each file below: name, bytes, sha256
    gen-<id>/manifest.jsonl  one entry per gallery file (manifest.py); ok entries are rows 0..count-1
    gen-<id>/embeddings.npy  float32 (count, dim)
    gen-<id>/index.faiss     faiss index over the rows (ntotal = count)
    work-<run>/              checkpoints of a build in progress or killed (checkpoint.py)
    .lock                    the writer's lock (lock.py)

A build writes ``gen-<id>.partial/``, fsyncs every file, renames it to ``gen-<id>/``, then replaces
``CURRENT`` (written as ``CURRENT.tmp-<pid>-<random>`` + fsync + ``os.replace`` + fsync of the folder).
Before that replace, readers see the previous generation whole; after it, the new one whole. Only then
are older generations removed, keeping the one just replaced. ``CURRENT`` carries the sha256 of the
generation's meta.json and meta.json carries the size and sha256 of the three data files, so a file
edited, truncated or swapped in from another generation is detected on load.

A folder written by agent_cir <= 0.x (meta.json, manifest.jsonl, embeddings.npy, index.faiss directly in
``--out``, no ``CURRENT``) loads as a read-only *legacy* generation (count checks only); the next build
writes a generation next to it and removes the flat files one build later.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent_cir.errors import AgentCirError
from agent_cir.index.faults import fault_point
from agent_cir.index.out_folder import claim, open_nofollow_file, owned_names, release
from agent_cir.index.manifest import MANIFEST_NAME, ManifestEntry, manifest_bytes, parse_manifest

POINTER_NAME = "CURRENT"
META_NAME = "meta.json"
EMBEDDINGS_NAME = "embeddings.npy"
FAISS_NAME = "index.faiss"
FORMAT_VERSION = 2
LEGACY_FORMAT_VERSION = 1
LEGACY_FILES = (META_NAME, MANIFEST_NAME, EMBEDDINGS_NAME, FAISS_NAME)
VERIFY_FULL_MAX_BYTES = 512 * 1024 * 1024
"""Load checks the sha256 of every file of generations up to this size; larger ones get size, count and
manifest checks (and a full check with ``verify=True``, as every build does on the generation it reuses)."""

_GENERATION_RE = re.compile(r"^gen-[0-9A-Za-z-]{1,80}$")


class DamagedIndexError(AgentCirError):
    """An index file does not match what its generation recorded (edited, truncated, mixed)."""


def _damaged(out: Path, file: Path | str, what: str) -> DamagedIndexError:
    return DamagedIndexError(
        f"index {out} is damaged: {file} {what}. Re-run `agent-cir index IMAGES_DIR --out {out}`: it writes a "
        "fresh generation (files left in place until then), or point --out at a new folder."
    )


# ---------------------------------------------------------------- small durable-write helpers
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _record(path: Path) -> dict[str, Any]:
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": _file_sha256(path)}


def new_generation_id() -> str:
    return f"gen-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{secrets.token_hex(4)}"


# ---------------------------------------------------------------- writing and publishing
def write_generation(
    out: Path, generation: str, matrix: np.ndarray, entries: list[ManifestEntry], faiss_index: Any, meta: dict[str, Any]
) -> str:
    """Write a complete generation folder ``out/<generation>``; returns the sha256 of its meta.json.

    Nothing here is visible to readers until ``publish`` points ``CURRENT`` at it.
    """
    import faiss

    partial = out / f"{generation}.partial"
    claim(out, partial.name)
    claim(out, generation)
    partial.mkdir(parents=True)
    with open_nofollow_file(partial / EMBEDDINGS_NAME, "wb") as handle:
        np.save(handle, np.ascontiguousarray(matrix, dtype=np.float32))
        handle.flush()
        os.fsync(handle.fileno())
    fault_point("gen-embeddings")
    faiss.write_index(faiss_index, str(partial / FAISS_NAME))
    _sync_file(partial / FAISS_NAME)
    fault_point("gen-faiss")
    with open_nofollow_file(partial / MANIFEST_NAME, "wb") as handle:
        handle.write(manifest_bytes(entries))
        handle.flush()
        os.fsync(handle.fileno())
    fault_point("gen-manifest")
    meta = dict(meta)
    meta.update(
        format_version=FORMAT_VERSION,
        generation=generation,
        count=int(matrix.shape[0]),
        faiss_ntotal=int(faiss_index.ntotal),
        files={
            "embeddings": _record(partial / EMBEDDINGS_NAME),
            "manifest": _record(partial / MANIFEST_NAME),
            "faiss": _record(partial / FAISS_NAME),
        },
    )
    meta_data = (json.dumps(meta, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    with open_nofollow_file(partial / META_NAME, "wb") as handle:
        handle.write(meta_data)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_dir(partial)
    fault_point("gen-meta")
    os.replace(partial, out / generation)
    _fsync_dir(out)
    fault_point("gen-sealed")
    return hashlib.sha256(meta_data).hexdigest()


def publish(out: Path, generation: str, meta_sha256: str) -> None:
    """Point ``CURRENT`` at ``generation``: one atomic rename, made durable."""
    tmp = out / f"{POINTER_NAME}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    claim(out, tmp.name)
    with open_nofollow_file(tmp, "w") as handle:
        json.dump({"generation": generation, "meta_sha256": meta_sha256}, handle)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    fault_point("pointer-tmp")
    os.replace(tmp, out / POINTER_NAME)
    _fsync_dir(out)
    fault_point("published")


def _is_legacy_meta(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format_version") == LEGACY_FORMAT_VERSION
    except (OSError, ValueError, AttributeError):
        return False


def _own_sealed_generation(item: Path) -> bool:
    """A generation written before the marker existed, recognised by its own record (meta.json naming it)."""
    try:
        meta = json.loads((item / META_NAME).read_text(encoding="utf-8"))
        return isinstance(meta, dict) and meta.get("generation") == item.name and meta.get("format_version") == FORMAT_VERSION
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def collect_garbage(out: Path, keep: set[str]) -> list[str]:
    """Remove generations not in ``keep`` (names; ``"legacy"`` keeps flat files), unfinished ``.partial``
    folders and stray pointer temp files, but only those this index's own records name (out_folder.claim,
    or a generation's meta.json naming it): a user's look-alike folder is never touched. Call only while
    holding the lock. Returns what was removed."""
    removed = []
    owned = owned_names(out)
    for item in sorted(out.iterdir()):
        name = item.name
        is_dir = item.is_dir() and not item.is_symlink()
        stale_generation = is_dir and (
            (name.endswith(".partial") and _GENERATION_RE.match(name[: -len(".partial")]) and name in owned)
            or (_GENERATION_RE.match(name) and name not in keep and (name in owned or _own_sealed_generation(item)))
        )
        if stale_generation:
            shutil.rmtree(item)
            removed.append(name)
        elif name.startswith(f"{POINTER_NAME}.tmp-") and name in owned and item.is_file() and not item.is_symlink():
            item.unlink()
            removed.append(name)
    if "legacy" not in keep and (out / POINTER_NAME).is_file() and _is_legacy_meta(out / META_NAME):
        for name in LEGACY_FILES:
            for path in (out / name, out / f"{name}.tmp", out / f"{name}.tmp.npy"):
                if path.is_file() and not path.is_symlink():
                    path.unlink()
                    removed.append(path.name)
    if removed:
        _fsync_dir(out)
    release(out)
    return removed


# ---------------------------------------------------------------- reading and verifying
@dataclass
class Generation:
    """One verified generation, ready to use."""

    out: Path
    """The index folder (``--out``)."""
    directory: Path
    """The folder holding this generation's files (``out`` itself for a legacy index)."""
    name: str
    """``gen-<id>``, or ``"legacy"``."""
    meta: dict[str, Any]
    entries: list[ManifestEntry]
    embeddings: np.ndarray
    """(count, dim) float32, memory-mapped read-only."""
    fully_verified: bool

    @property
    def legacy(self) -> bool:
        return self.name == "legacy"

    @property
    def faiss_path(self) -> Path:
        return self.directory / FAISS_NAME

    def read_faiss(self) -> Any:
        """The faiss index, after checking it holds exactly ``count`` vectors of dimension ``dim``."""
        import faiss

        try:
            index = faiss.read_index(str(self.faiss_path))
        except RuntimeError as err:
            raise _damaged(self.out, self.faiss_path, f"cannot be read by faiss ({' '.join(str(err).split())[-160:]})") from err
        if index.ntotal != len(self.embeddings) or index.d != self.embeddings.shape[1]:
            raise _damaged(
                self.out,
                self.faiss_path,
                f"holds {index.ntotal} vectors of dimension {index.d}, but the generation has "
                f"{len(self.embeddings)} of dimension {self.embeddings.shape[1]}",
            )
        return index


def has_index(out: Path) -> bool:
    return (out / POINTER_NAME).is_file() or (out / META_NAME).is_file()


def _read_pointer(out: Path) -> tuple[str, str]:
    path = out / POINTER_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        generation, meta_sha = data["generation"], data["meta_sha256"]
        if not isinstance(generation, str) or not _GENERATION_RE.match(generation) or not isinstance(meta_sha, str):
            raise ValueError(f"unexpected values {data!r}"[:200])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise _damaged(out, path, f"is not a valid generation pointer ({' '.join(str(err).split())[:160]})") from err
    return generation, meta_sha


def _load_meta(out: Path, path: Path, data: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise _damaged(out, path, f"is not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise _damaged(out, path, "is not a JSON object")
    for key, kind in (("encoder", dict), ("dim", int), ("count", int), ("images_dir", str)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise _damaged(out, path, f"has no valid {key!r}")
    return meta


def _check_rows(out: Path, meta: dict[str, Any], entries: list[ManifestEntry], manifest_path: Path) -> None:
    ok = [e for e in entries if e.status == "ok"]
    rows = sorted(int(e.row) for e in ok)  # type: ignore[arg-type]
    if rows != list(range(len(ok))):
        raise _damaged(out, manifest_path, "does not number its images 0..n-1 (rows repeated or missing)")
    if len(ok) != meta["count"]:
        raise _damaged(out, manifest_path, f"lists {len(ok)} images, but meta.json says count {meta['count']}")


def _load_embeddings(out: Path, path: Path, meta: dict[str, Any]) -> np.ndarray:
    try:
        embeddings = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise _damaged(out, path, f"cannot be read ({' '.join(str(err).split())[:160]})") from err
    expected = (meta["count"], meta["dim"])
    if embeddings.dtype != np.float32 or embeddings.shape != expected:
        raise _damaged(out, path, f"holds {embeddings.dtype} {embeddings.shape}, expected float32 {expected}")
    return embeddings


def _open_current(out: Path, verify: bool | None) -> Generation:
    name, meta_sha = _read_pointer(out)
    directory = out / name
    meta_path = directory / META_NAME
    try:
        meta_data = meta_path.read_bytes()
    except FileNotFoundError as err:
        raise FileNotFoundError(str(meta_path)) from err
    except OSError as err:
        raise _damaged(out, meta_path, f"cannot be read ({err})") from err
    if hashlib.sha256(meta_data).hexdigest() != meta_sha:
        raise _damaged(out, meta_path, f"does not match the checksum {POINTER_NAME} recorded (edited or replaced)")
    meta = _load_meta(out, meta_path, meta_data)
    if meta.get("generation") != name or meta.get("format_version") != FORMAT_VERSION:
        raise _damaged(out, meta_path, f"belongs to generation {meta.get('generation')!r}, not {name!r}")
    records = meta.get("files")
    if not isinstance(records, dict) or not all(isinstance(records.get(k), dict) for k in ("embeddings", "manifest", "faiss")):
        raise _damaged(out, meta_path, "has no file records")
    total = 0
    for key in ("embeddings", "manifest", "faiss"):
        record = records[key]
        path = directory / str(record.get("name"))
        if path.parent != directory:
            raise _damaged(out, meta_path, f"names a file outside its generation ({record.get('name')!r})")
        try:
            size = path.stat().st_size
        except FileNotFoundError as err:
            raise FileNotFoundError(str(path)) from err
        if size != record.get("bytes"):
            raise _damaged(out, path, f"is {size} bytes, but its generation recorded {record.get('bytes')}")
        total += size
    full = verify if verify is not None else total <= VERIFY_FULL_MAX_BYTES
    manifest_path = directory / records["manifest"]["name"]
    manifest_data = manifest_path.read_bytes()
    if hashlib.sha256(manifest_data).hexdigest() != records["manifest"].get("sha256"):
        raise _damaged(out, manifest_path, "does not match the checksum its generation recorded")
    if full:
        for key in ("embeddings", "faiss"):
            path = directory / records[key]["name"]
            if _file_sha256(path) != records[key].get("sha256"):
                raise _damaged(out, path, "does not match the checksum its generation recorded")
    entries = parse_manifest(manifest_data, manifest_path)
    _check_rows(out, meta, entries, manifest_path)
    embeddings = _load_embeddings(out, directory / records["embeddings"]["name"], meta)
    if meta.get("faiss_ntotal") != meta["count"]:
        raise _damaged(out, meta_path, f"records faiss ntotal {meta.get('faiss_ntotal')} for {meta['count']} images")
    return Generation(out, directory, name, meta, entries, embeddings, full)


def _open_legacy(out: Path) -> Generation:
    meta_path = out / META_NAME
    try:
        meta_data = meta_path.read_bytes()
    except OSError as err:
        raise _damaged(out, meta_path, f"cannot be read ({err})") from err
    meta = _load_meta(out, meta_path, meta_data)
    for name in (MANIFEST_NAME, EMBEDDINGS_NAME, FAISS_NAME):
        if not (out / name).is_file():
            raise _damaged(out, out / name, "is missing")
    manifest_path = out / MANIFEST_NAME
    entries = parse_manifest(manifest_path.read_bytes(), manifest_path)
    _check_rows(out, meta, entries, manifest_path)
    embeddings = _load_embeddings(out, out / EMBEDDINGS_NAME, meta)
    return Generation(out, out, "legacy", meta, entries, embeddings, False)


def open_generation(out: str | Path, verify: bool | None = None) -> Generation:
    """The current generation of ``out``, verified (see the module docstring); AgentCirError when absent
    or damaged. ``verify``: True = sha256 of every file, False = sizes and counts, None = full up to
    ``VERIFY_FULL_MAX_BYTES``."""
    out = Path(out)
    if not has_index(out):
        raise AgentCirError(
            f"no gallery index in {out} (no {POINTER_NAME} or {META_NAME}); build one with "
            f"`agent-cir index IMAGES_DIR --out {out}`"
        )
    if not (out / POINTER_NAME).is_file():
        return _open_legacy(out)
    for attempt in range(3):
        try:
            return _open_current(out, verify)
        except FileNotFoundError as err:
            # A writer may have published a newer generation and removed this one between our reading
            # CURRENT and opening its files: read the pointer again.
            if attempt == 2:
                raise _damaged(out, Path(str(err)), "is missing") from err
    raise AssertionError("unreachable")
