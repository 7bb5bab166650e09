"""Planning a build: which gallery files to encode, which vectors to reuse, which files are skipped.

Vectors are reused by content hash only: from the previous generation (verified before use) or from the
checkpoints of a killed run. A file whose size and mtime are unchanged keeps its recorded hash without
being read again. Files the scan rejected, and files that cannot be read for hashing, become skipped
entries with their reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent_cir.index.files import read_hash
from agent_cir.index.manifest import ManifestEntry
from agent_cir.index.reasons import BadImageError
from agent_cir.index.scan import ScanResult


@dataclass
class BuildPlan:
    entries: dict[str, ManifestEntry] = field(default_factory=dict)
    """Every file of the new generation by path: status ok (a vector is needed) or skipped."""
    to_encode: list[ManifestEntry] = field(default_factory=list)
    reused: int = 0
    """ok files whose vector comes from the previous generation."""
    resumed: int = 0
    """ok files whose vector comes from a killed run's checkpoint."""
    removed: int = 0
    """Files of the previous generation that are gone."""


def _skipped(path: str, reason: str, detail: str, base: ManifestEntry | None = None) -> ManifestEntry:
    if base is not None:
        return replace(base, status="skipped", row=None, reason=reason, detail=detail)
    return ManifestEntry(path=path, size=0, mtime=0.0, mtime_ns=0, hash="", status="skipped", reason=reason, detail=detail)


def plan_build(
    scan: ScanResult,
    root: Path,
    previous_entries: list[ManifestEntry],
    previous_hashes: set[str],
    checkpoint_hashes: set[str],
    known_failures: Mapping[str, tuple[str, str]],
    hash_file: Callable[[Path], str] | None = None,
    confined: bool = False,
) -> BuildPlan:
    """``previous_hashes``: hashes with a vector in the previous generation; ``checkpoint_hashes``: in
    checkpoints; ``known_failures``: hash -> (reason, detail) of files already found undecodable.
    ``confined``: hash a file only if, opened, it lies inside ``root`` (a link re-pointed after the scan)."""
    hash_file = hash_file or ((lambda path: read_hash(path, root)) if confined else read_hash)
    plan = BuildPlan()
    old_by_path = {e.path: e for e in previous_entries}
    failures = dict(known_failures)
    for old in previous_entries:
        if old.status == "skipped" and old.hash:
            failures.setdefault(old.hash, (old.reason or "unknown", old.detail or ""))
    for found in scan.found:
        old = old_by_path.get(found.path)
        entry = ManifestEntry(found.path, found.size, found.mtime, found.mtime_ns, "")
        if old is not None and old.hash and (old.size, old.mtime_ns) == (found.size, found.mtime_ns):
            entry.hash = old.hash
        else:
            try:
                entry.hash = hash_file(root / found.path)
            except BadImageError as err:
                plan.entries[found.path] = _skipped(found.path, err.reason, err.detail, entry)
                continue
        if entry.hash in previous_hashes:
            plan.reused += 1
        elif entry.hash in checkpoint_hashes:
            plan.resumed += 1
        elif entry.hash in failures:
            reason, detail = failures[entry.hash]
            entry = _skipped(found.path, reason, detail, entry)
        else:
            plan.to_encode.append(entry)
        plan.entries[found.path] = entry
    for rejected in scan.rejected:
        plan.entries[rejected.path] = _skipped(rejected.path, rejected.reason, rejected.detail)
    plan.removed = len(set(old_by_path) - set(plan.entries))
    return plan
