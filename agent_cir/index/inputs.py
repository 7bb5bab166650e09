"""A gallery given as a list of its files instead of a folder (``agent-cir index --input-format list|parquet``).

- ``list``: a UTF-8 text file, one path per line (blank lines and ``#`` comments ignored).
- ``parquet``: a Parquet file (or folder of them) with a string column ``path`` (img2dataset-style shards).

Paths are absolute or relative to the gallery root (``--root``; default: the folder holding the list), and every
one must lie inside it: the root is what gallery ids are relative to, so an incremental rerun with a longer list
updates the same index. The listed files then go through the planner like a scanned folder (``build(files=...)``):
hashed, diffed against the previous generation, and only new or changed ones encoded. URLs are refused: the
planner hashes each file's bytes, so object stores must be mounted (s3fs, gcsfuse) and listed by path.
"""

from __future__ import annotations

from pathlib import Path

from agent_cir.errors import AgentCirError
from agent_cir.index.scan import relative_files

INPUT_FORMATS = ("folder", "list", "parquet")


def _read_list(source: Path) -> list[str]:
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise AgentCirError(f"file list {source} cannot be read as UTF-8 text ({err})") from err
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _read_parquet(source: Path) -> list[str]:
    try:
        import pyarrow.parquet as parquet
    except ImportError as err:
        raise AgentCirError(
            "--input-format parquet needs pyarrow; install the ray extra: pip install 'agent-cir[ray]'"
        ) from err
    try:
        column = parquet.read_table(source, columns=["path"]).column("path")
    except KeyError as err:
        raise AgentCirError(f"parquet file {source} has no 'path' column (one string path per image)") from err
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid / ArrowIOError derive from these
        message = " ".join(str(err).split())[:300]
        if "path" in message and ("not found" in message.lower() or "no match" in message.lower()):
            raise AgentCirError(f"parquet file {source} has no 'path' column (one string path per image)") from err
        raise AgentCirError(f"parquet file {source} cannot be read ({message})") from err
    paths = column.to_pylist()
    bad = [row for row, value in enumerate(paths) if not isinstance(value, str) or not value.strip()]
    if bad:
        raise AgentCirError(f"parquet file {source}: column 'path' has {len(bad)} empty or non-string values (first at row {bad[0]})")
    return [value.strip() for value in paths]


def read_listed_paths(source: str | Path, input_format: str) -> list[str]:
    """The paths a list file or Parquet file names, in file order (duplicates kept)."""
    source = Path(source).expanduser()
    if input_format not in ("list", "parquet"):
        raise AgentCirError(f"input format must be list or parquet here, got {input_format!r}")
    if not source.exists():
        raise AgentCirError(f"{input_format} file {source} does not exist")
    if input_format == "list" and not source.is_file():
        raise AgentCirError(f"{source} is a folder; --input-format list reads a text file of paths")
    paths = _read_list(source) if input_format == "list" else _read_parquet(source)
    urls = [path for path in paths if "://" in path]
    if urls:
        raise AgentCirError(
            f"{source} lists {len(urls)} URLs (e.g. {urls[0]}); only local paths can be indexed: mount the storage "
            "(s3fs, gcsfuse, NFS) and list the files by path"
        )
    if not paths:
        raise AgentCirError(f"{source} lists no files")
    return paths


def listed_gallery(source: str | Path, input_format: str, root: str | Path | None = None) -> tuple[Path, list[str]]:
    """(gallery root, sorted unique paths relative to it) for ``GalleryIndex.build(root, ..., files=paths)``."""
    source = Path(source).expanduser()
    base = Path(root).expanduser() if root is not None else source.resolve().parent
    if not base.is_dir():
        raise AgentCirError(f"gallery root {base} is not a folder; --root must be the folder the listed paths lie in")
    paths = read_listed_paths(source, input_format)
    try:
        return base.resolve(), relative_files(base, paths)
    except AgentCirError as err:
        raise AgentCirError(
            f"{err} (listed in {source}; gallery ids are paths relative to the root {base.resolve()}: "
            "pass --root FOLDER holding every listed file)"
        ) from err
