"""GeneCIS object tasks (Vaze et al., CVPR 2023): ``change_object.json`` and ``focus_object.json``.

Each record is ``{"condition": text, "reference": {"val_image_id"}, "target": {"val_image_id"},
"gallery": [{"val_image_id"} x 14]}``. The object tasks use WHOLE COCO val2017 images: their records carry
no bounding boxes (only the attribute tasks, built on Visual Genome, crop boxes, and they are not supported
here), so nothing is cropped. A record with a bbox field is refused rather than silently evaluated uncropped.

Expected image layout: ``ROOT/val2017/000000xxxxxx.jpg`` (ROOT may also be the ``val2017`` folder).
Per-query gallery = the target plus its distractors, deduplicated (one change_object record lists its
target among the distractors too); ``meta["gallery"]`` holds it. The ranked gallery of a run is the union
of all records' images; each query's retrieval (and rerank) sees only its own gallery
(``Query.candidate_ids``), and the metrics rank the target inside it.
"""

from __future__ import annotations

from pathlib import Path

from agent_cir.eval.datasets.base import (
    BenchmarkDataError,
    BenchmarkSplit,
    locate_dataset_dir,
    read_json,
    require_keys,
    subfolder_root,
)
from agent_cir.types import Query

FOLDER_NAMES = ("genecis", "GeneCIS")
TASKS = ("change_object", "focus_object")
IMAGE_SUBDIR = "val2017"
LAYOUT = "ROOT must contain val2017/000000xxxxxx.jpg (COCO 2017 validation images)"
_BBOX_KEYS = ("instance_bbox", "bbox", "bboxes")


def locate(candidates: list[Path]) -> Path:
    return locate_dataset_dir(candidates, FOLDER_NAMES, "change_object.json", "GeneCIS")


def _image_id(entry: object, path: Path, position: int, role: str) -> str:
    if not isinstance(entry, dict) or "val_image_id" not in entry:
        raise BenchmarkDataError(f"{path}: entry {position}: {role} lacks val_image_id")
    boxed = [key for key in _BBOX_KEYS if key in entry]
    if boxed:
        raise BenchmarkDataError(
            f"{path}: entry {position}: {role} has {boxed[0]}; cropped (attribute) GeneCIS tasks are not supported"
        )
    return str(int(entry["val_image_id"]))


def load_genecis(annotations_dir: Path, task: str, images_root: Path | None = None) -> BenchmarkSplit:
    if task not in TASKS:
        raise BenchmarkDataError(f"GeneCIS tasks supported are {', '.join(TASKS)}, not {task!r}")
    path = Path(annotations_dir) / f"{task}.json"
    records = read_json(path, f"GeneCIS {task}")
    if not isinstance(records, list):
        raise BenchmarkDataError(f"{path}: expected a list of records; is this the official GeneCIS file?")
    root = subfolder_root(images_root, IMAGE_SUBDIR)
    image_files: dict[str, str] = {}
    gallery_union: dict[str, None] = {}
    queries: list[Query] = []
    for position, record in enumerate(records):
        require_keys(record, ("condition", "reference", "target", "gallery"), path, position)
        reference = _image_id(record["reference"], path, position, "reference")
        target = _image_id(record["target"], path, position, "target")
        distractors = [_image_id(item, path, position, "gallery item") for item in record["gallery"]]
        gallery = list(dict.fromkeys([target, *distractors]))
        for image_id in (reference, *gallery):
            image_files[image_id] = f"{IMAGE_SUBDIR}/{int(image_id):012d}.jpg"
        gallery_union.update(dict.fromkeys(gallery))
        queries.append(
            Query(
                id=f"{task}-{position}",
                text=str(record["condition"]),
                image=str(root / image_files[reference]) if root else None,
                reference_id=reference,
                candidate_ids=gallery,  # each query ranks (and reranks) only its own gallery
                meta={"task": task, "ground_truth": [target], "target": target, "gallery": gallery},
            )
        )
    return BenchmarkSplit(
        dataset="genecis",
        split="val",
        category=task,
        queries=queries,
        gallery_ids=list(gallery_union),
        image_files=image_files,
        annotation_files=[path],
        has_ground_truth=True,
        layout=LAYOUT,
        images_root=root,
        image_subdir=IMAGE_SUBDIR,
    )
