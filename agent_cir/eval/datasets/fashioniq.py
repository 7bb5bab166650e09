"""FashionIQ (Wu et al., CVPR 2021): ``captions/cap.<category>.<split>.json`` and
``image_splits/split.<category>.<split>.json`` for category dress, shirt, toptee.

Expected image layout: ``ROOT/images/<asin>.png`` (the official image folder; ROOT may also be the
``images`` folder itself). Each category is its own gallery: that category's split file.
Query ids are ``<category>-<position in the captions file>`` (the files have no ids of their own).
"""

from __future__ import annotations

from pathlib import Path

from agent_cir.eval.datasets.base import (
    BenchmarkDataError,
    BenchmarkSplit,
    id_list,
    locate_dataset_dir,
    read_json,
    require_keys,
    string_id,
    subfolder_root,
    text_field,
)
from agent_cir.types import Query

FOLDER_NAMES = ("fashioniq", "fashionIQ", "FashionIQ", "fashionIQ_dataset", "fashion-iq")
CATEGORIES = ("dress", "shirt", "toptee")
IMAGE_SUBDIR = "images"
LAYOUT = "ROOT must contain images/<asin>.png (the FashionIQ images)"


def locate(candidates: list[Path]) -> Path:
    return locate_dataset_dir(candidates, FOLDER_NAMES, "captions/cap.dress.val.json", "FashionIQ")


def join_captions(captions: list[str]) -> str:
    """Two relative captions -> one modification text: ``"c1 and c2"``, each stripped of ``.?,`` and spaces.

    This is how the zero-shot literature feeds FashionIQ to a single-text model (SEARLE, CIReVL, LinCIR and
    CLIP4Cir's validation code all build ``f"{c1.strip('.?, ')} and {c2.strip('.?, ')}"``), so results stay
    comparable; a lone caption is used as is.
    """
    parts = [str(c).strip(".?, ") for c in captions if str(c).strip(".?, ")]
    return " and ".join(parts)


def load_fashioniq(
    annotations_dir: Path, split: str, category: str, images_root: Path | None = None
) -> BenchmarkSplit:
    if category not in CATEGORIES:
        raise BenchmarkDataError(f"FashionIQ categories are {', '.join(CATEGORIES)}, not {category!r}")
    if split not in ("val", "test"):
        raise BenchmarkDataError(f"FashionIQ has splits val and test, not {split!r}")
    annotations_dir = Path(annotations_dir)
    captions_path = annotations_dir / "captions" / f"cap.{category}.{split}.json"
    split_path = annotations_dir / "image_splits" / f"split.{category}.{split}.json"
    records = read_json(captions_path, f"FashionIQ {category} {split} captions")
    gallery = read_json(split_path, f"FashionIQ {category} {split} image split")
    if not isinstance(records, list) or not isinstance(gallery, list):
        raise BenchmarkDataError(f"{captions_path} and {split_path} must be lists; are these the official files?")
    has_ground_truth = split == "val"
    required = ("candidate", "captions") + (("target",) if has_ground_truth else ())
    root = subfolder_root(images_root, IMAGE_SUBDIR)
    gallery_ids = [string_id(item, split_path, i, "image name") for i, item in enumerate(gallery)]
    image_files = {image_id: f"{IMAGE_SUBDIR}/{image_id}.png" for image_id in gallery_ids}
    queries: list[Query] = []
    for position, record in enumerate(records):
        require_keys(record, required, captions_path, position)
        reference = string_id(record["candidate"], captions_path, position, "candidate")
        image_files.setdefault(reference, f"{IMAGE_SUBDIR}/{reference}.png")
        captions = [text_field(c, captions_path, position, "captions[]") for c in id_list(
            record["captions"], captions_path, position, "captions", lambda v, *_: v)]
        meta: dict = {"category": category, "captions": captions}
        if has_ground_truth:
            target = string_id(record["target"], captions_path, position, "target")
            image_files.setdefault(target, f"{IMAGE_SUBDIR}/{target}.png")
            meta.update(ground_truth=[target], target=target)
        queries.append(
            Query(
                id=f"{category}-{position}",
                text=join_captions(captions),
                image=str(root / image_files[reference]) if root else None,
                reference_id=reference,
                meta=meta,
            )
        )
    return BenchmarkSplit(
        dataset="fashioniq",
        split=split,
        category=category,
        queries=queries,
        gallery_ids=gallery_ids,
        image_files=image_files,
        annotation_files=[captions_path, split_path],
        has_ground_truth=has_ground_truth,
        layout=LAYOUT,
        images_root=root,
        image_subdir=IMAGE_SUBDIR,
    )
