"""What every benchmark loader returns, and the checks shared by all of them.

A loader reads the OFFICIAL annotation files (never images) and returns one :class:`BenchmarkSplit` per
gallery: the queries (``agent_cir.types.Query``, ground truth in ``meta``), the gallery ids, and for each
image id its path relative to the user's ``--images ROOT``. Images are checked before any model runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_cir.errors import AgentCirError
from agent_cir.types import Query


class BenchmarkDataError(AgentCirError):
    """Annotation files are missing or not in the official format."""


class MissingImagesError(AgentCirError):
    """The image root is missing, or images the benchmark needs are not under it."""


@dataclass
class BenchmarkSplit:
    """One benchmark split with one gallery (FashionIQ and GeneCIS give one per category/task)."""

    dataset: str
    """circo | cirr | fashioniq | genecis"""
    split: str
    """val | test (CIRR's test split is test1)."""
    category: str | None
    """FashionIQ category or GeneCIS task; None for CIRCO and CIRR."""
    queries: list[Query]
    gallery_ids: list[str] | None
    """Ids of the images ranked. None for CIRCO until the image folder is scanned (its gallery is the
    whole COCO unlabeled2017 folder, which the annotations do not list)."""
    image_files: dict[str, str]
    """Image id -> path relative to the images root, for every image the split needs (gallery and references)."""
    annotation_files: list[Path]
    has_ground_truth: bool
    layout: str
    """What ``--images ROOT`` must contain, for error messages and the docs."""
    images_root: Path | None = None
    image_subdir: str = ""
    """Folder under ROOT that holds the gallery images (the folder the index is built over)."""
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """A file-name-safe label: ``cirr-val``, ``fashioniq-dress-val``, ``genecis-change_object-val``."""
        parts = [self.dataset] + ([self.category] if self.category else []) + [self.split]
        return "-".join(parts)

    def image_path(self, image_id: str) -> Path:
        if self.images_root is None:
            raise MissingImagesError(f"{self.name}: no image root given; pass --images ROOT ({self.layout})")
        return self.images_root / self.image_files[image_id]

    @property
    def images_dir(self) -> Path:
        """The folder an index of this split's gallery is built over."""
        if self.images_root is None:
            raise MissingImagesError(f"{self.name}: no image root given; pass --images ROOT ({self.layout})")
        return self.images_root / self.image_subdir if self.image_subdir else self.images_root

    def gallery_relative_paths(self) -> list[str]:
        """Gallery image paths relative to :attr:`images_dir` (what the index stores as its ids)."""
        prefix = f"{self.image_subdir}/" if self.image_subdir else ""
        paths = []
        for image_id in self.gallery_ids or []:
            relative = self.image_files[image_id]
            paths.append(relative[len(prefix):] if prefix and relative.startswith(prefix) else relative)
        return paths

    def check_images(self) -> None:
        """Raise :class:`MissingImagesError` unless every image the split needs exists under the root."""
        if self.images_root is None:
            raise MissingImagesError(f"{self.name} needs its images: pass --images ROOT, where {self.layout}")
        if not self.images_root.is_dir():
            raise MissingImagesError(
                f"{self.name}: image root {self.images_root} does not exist or is not a folder; {self.layout}"
            )
        missing = [rel for rel in self.image_files.values() if not (self.images_root / rel).is_file()]
        if missing:
            examples = ", ".join(str(self.images_root / rel) for rel in missing[:3])
            raise MissingImagesError(
                f"{self.name}: {len(missing)} of {len(self.image_files)} images are missing under "
                f"{self.images_root} (e.g. {examples}); {self.layout}"
            )


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise BenchmarkDataError(f"{what}: {path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BenchmarkDataError(f"{what}: {path} is not valid JSON (line {err.lineno}: {err.msg})") from None


def require_keys(record: Any, keys: tuple[str, ...], path: Path, position: int) -> None:
    if not isinstance(record, dict):
        raise BenchmarkDataError(f"{path}: entry {position} is not an object; is this the official file?")
    absent = [key for key in keys if key not in record]
    if absent:
        raise BenchmarkDataError(
            f"{path}: entry {position} lacks {', '.join(absent)}; is this the official annotation file?"
        )


def locate_dataset_dir(candidates: list[Path], folder_names: tuple[str, ...], marker: str, dataset: str) -> Path:
    """The first candidate folder (or its ``<folder_name>/`` child) that holds ``marker``.

    Users keep annotations either in the dataset's own folder (``cirr/captions/...``) or in a parent with
    one folder per benchmark (``benchmarks/cirr/captions/...``); both are accepted.
    """
    searched: list[str] = []
    for candidate in candidates:
        base = Path(candidate).expanduser()
        for folder in (base, *(base / name for name in folder_names)):
            searched.append(str(folder / marker))
            if (folder / marker).is_file():
                return folder
    raise BenchmarkDataError(
        f"{dataset} annotations not found (looked for {', '.join(searched) or marker}); pass "
        f"--annotations DIR, the folder with the official {dataset} annotation files"
    )


def subfolder_root(root: Path | None, subdir: str) -> Path | None:
    """Accept both ROOT (containing ``subdir/``) and ROOT pointing at ``subdir`` itself."""
    if root is None:
        return None
    root = Path(root).expanduser()
    if not (root / subdir).is_dir() and root.name == subdir:
        return root.parent
    return root


# ---------- field checks: a hostile or hand-edited file gives one clear error naming it, never a traceback ----------
def integer_id(value: Any, path: Path, position: int, field_name: str) -> str:
    """An integer image id (COCO, Visual Genome) as our string id. Strings, floats and booleans are refused:
    the official files hold JSON integers, and ``int("12.jpg")`` style guesses would hide a wrong file."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BenchmarkDataError(
            f"{path}: entry {position}: {field_name} is {value!r} ({type(value).__name__}); the official file has "
            "integer image ids here"
        )
    return str(value)


def string_id(value: Any, path: Path, position: int, field_name: str) -> str:
    """A named image id (CIRR ``dev-244-0-img0``, FashionIQ ASINs): a non-empty JSON string."""
    if not isinstance(value, str) or not value.strip():
        raise BenchmarkDataError(
            f"{path}: entry {position}: {field_name} is {value!r}; the official file has a non-empty image name here"
        )
    return value


def id_list(value: Any, path: Path, position: int, field_name: str, item: Any) -> list[str]:
    """A JSON list of ids, each checked by ``item`` (``integer_id`` or ``string_id``); a bare id or a string is refused
    (iterating ``"123"`` would give three one-digit ids)."""
    if not isinstance(value, list):
        raise BenchmarkDataError(
            f"{path}: entry {position}: {field_name} is {type(value).__name__} {value!r:.60}; expected a list of ids"
        )
    return [item(element, path, position, f"{field_name}[{i}]") for i, element in enumerate(value)]


def query_id(value: Any, path: Path, position: int, field_name: str) -> str:
    """A query id as written in the file (int or string); anything else is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and not value.strip()):
        raise BenchmarkDataError(f"{path}: entry {position}: {field_name} is {value!r}; expected an integer or string id")
    return str(value)


def text_field(value: Any, path: Path, position: int, field_name: str) -> str:
    if not isinstance(value, str):
        raise BenchmarkDataError(f"{path}: entry {position}: {field_name} is {type(value).__name__}, expected text")
    return value


def refuse_duplicate_queries(ids: list[str], path: Path, field_name: str) -> None:
    """Two queries with one id would both run while the metrics keep one ranking: refuse, naming the ids."""
    seen: set[str] = set()
    duplicates = list(dict.fromkeys(i for i in ids if i in seen or seen.add(i)))  # type: ignore[func-returns-value]
    if duplicates:
        shown = ", ".join(duplicates[:10]) + (" ..." if len(duplicates) > 10 else "")
        raise BenchmarkDataError(
            f"{path}: {len(duplicates)} {field_name} values occur more than once ({shown}); each query needs its own id. "
            "Is the file edited or concatenated?"
        )
