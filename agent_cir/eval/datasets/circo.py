"""CIRCO (Baldrati et al., ICCV 2023): ``annotations/{val,test}.json``; images are COCO unlabeled2017.

Expected image layout: ``ROOT/unlabeled2017/000000xxxxxx.jpg`` (the official ``COCO2017_unlabeled``
folder; ROOT may also be the ``unlabeled2017`` folder itself). The gallery is every image in that
folder (123,403 in the official release), so it is only known once the folder is scanned.
Ids are the COCO image ids as strings (``"57413"``); submissions write them back as integers.
"""

from __future__ import annotations

from pathlib import Path

from agent_cir.eval.datasets.base import (
    BenchmarkDataError,
    BenchmarkSplit,
    MissingImagesError,
    id_list,
    integer_id,
    locate_dataset_dir,
    query_id,
    read_json,
    refuse_duplicate_queries,
    require_keys,
    subfolder_root,
    text_field,
)
from agent_cir.types import Query

FOLDER_NAMES = ("circo", "CIRCO")
IMAGE_SUBDIR = "unlabeled2017"
OFFICIAL_GALLERY_SIZE = 123403
LAYOUT = "ROOT must contain unlabeled2017/000000xxxxxx.jpg (COCO 2017 unlabeled images)"


def image_file(image_id: int | str) -> str:
    return f"{IMAGE_SUBDIR}/{int(image_id):012d}.jpg"


def locate(candidates: list[Path]) -> Path:
    return locate_dataset_dir(candidates, FOLDER_NAMES, "annotations/val.json", "CIRCO")


def load_circo(annotations_dir: Path, split: str, images_root: Path | None = None) -> BenchmarkSplit:
    if split not in ("val", "test"):
        raise BenchmarkDataError(f"CIRCO has splits val and test, not {split!r}")
    path = Path(annotations_dir) / "annotations" / f"{split}.json"
    records = read_json(path, f"CIRCO {split} annotations")
    if not isinstance(records, list):
        raise BenchmarkDataError(f"{path}: expected a list of queries; is this the official CIRCO file?")
    has_ground_truth = split == "val"
    required = ("id", "reference_img_id", "relative_caption")
    required += ("target_img_id", "gt_img_ids") if has_ground_truth else ()
    root = subfolder_root(images_root, IMAGE_SUBDIR)
    queries: list[Query] = []
    image_files: dict[str, str] = {}
    for position, record in enumerate(records):
        require_keys(record, required, path, position)
        reference = integer_id(record["reference_img_id"], path, position, "reference_img_id")
        image_files[reference] = image_file(reference)
        meta: dict = {"shared_concept": record.get("shared_concept"), "relative_caption": record["relative_caption"]}
        if has_ground_truth:
            ground_truth = id_list(record["gt_img_ids"], path, position, "gt_img_ids", integer_id)
            target = integer_id(record["target_img_id"], path, position, "target_img_id")
            if not ground_truth:
                raise BenchmarkDataError(f"{path}: entry {position}: gt_img_ids is empty; every CIRCO query has ground truths")
            meta.update(
                ground_truth=ground_truth,
                target=target,
                semantic_aspects=list(record.get("semantic_aspects") or []),
            )
            for image_id in ground_truth:
                image_files[image_id] = image_file(image_id)
        queries.append(
            Query(
                id=query_id(record["id"], path, position, "id"),
                text=text_field(record["relative_caption"], path, position, "relative_caption"),
                image=str(root / image_files[reference]) if root else None,
                reference_id=reference,
                meta=meta,
            )
        )
    refuse_duplicate_queries([q.id for q in queries], path, "id")
    return BenchmarkSplit(
        dataset="circo",
        split=split,
        category=None,
        queries=queries,
        gallery_ids=None,
        image_files=image_files,
        annotation_files=[path],
        has_ground_truth=has_ground_truth,
        layout=LAYOUT,
        images_root=root,
        image_subdir=IMAGE_SUBDIR,
    )


def scan_gallery(split: BenchmarkSplit) -> None:
    """Fill ``gallery_ids`` from the unlabeled2017 folder (after ``check_images`` passed)."""
    folder = split.images_dir
    if not folder.is_dir():
        raise MissingImagesError(f"CIRCO: {folder} does not exist; {LAYOUT}")
    ids: list[str] = []
    for path in sorted(folder.glob("*.jpg")):
        try:
            ids.append(str(int(path.stem)))
        except ValueError:
            continue  # not a COCO image name; the official gallery has only numeric names
    for image_id in ids:
        split.image_files.setdefault(image_id, image_file(image_id))
    split.gallery_ids = ids
    if len(ids) != OFFICIAL_GALLERY_SIZE:
        split.notes.append(
            f"CIRCO gallery has {len(ids)} images under {folder}, the official one {OFFICIAL_GALLERY_SIZE}: "
            "metrics are not comparable with published ones"
        )


DEFAULT_QUERY_TEXT = "{relative_caption}"


def apply_query_text(split: BenchmarkSplit, template: str) -> list[str]:
    """Rebuild every query's text from ``template`` (``Recipe.circo.query_text``: ``{relative_caption}``,
    ``{shared_concept}``); returns notes for run.json. The default template leaves the texts as loaded."""
    if template == DEFAULT_QUERY_TEXT:
        return []
    missing = []
    for query in split.queries:
        concept = query.meta.get("shared_concept")
        if "{shared_concept}" in template and not (isinstance(concept, str) and concept.strip()):
            missing.append(query.id)
            concept = ""
        caption = str(query.meta.get("relative_caption", query.text)).strip()
        query.text = " ".join(template.format(relative_caption=caption, shared_concept=str(concept or "").strip()).split())
    notes = [f"CIRCO query text built with {template!r} (recipe circo.query_text), not the relative caption alone"]
    if missing:
        notes.append(f"{len(missing)} CIRCO queries have no shared_concept; it was left empty for them "
                     f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''})")
    return notes
