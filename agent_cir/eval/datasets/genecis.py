"""GeneCIS (Vaze et al., CVPR 2023): the four tasks ``change_object``, ``focus_object``, ``change_attribute``,
``focus_attribute`` (one JSON file each, as in the official ``genecis/`` folder).

Each record is ``{"condition": text, "reference": item, "target": item, "gallery": [item x 14]}``:
- object tasks: ``item = {"val_image_id": int}``, a whole COCO val2017 image (official ``datasets/coco_dataset.py``
  ``load_sample``: ``f"{val_img_id:012d}.jpg"``). Layout: ``ROOT/val2017/000000xxxxxx.jpg``.
- attribute tasks: ``item = {"image_id": int, "instance_bbox": [x, y, w, h]}``, an object instance in a Visual
  Genome 1.2 image (official ``datasets/vaw_dataset.py``: ``load_cropped_image``). The evaluated picture is the
  box dilated by 0.7, cropped, then padded to a centred black square (:func:`crop_instance`); we write those crops
  once as PNG files and index them. Layout: ``ROOT/<image_id>.jpg`` (the official ``VG_100K_all`` folder).

The per-query gallery is the OFFICIAL list, target first then the 14 distractors (``[target] + gallery``, 15
entries, ``target_rank = 0``: vaw_dataset.py:105-113, coco_dataset.py:59-69), kept as is in ``meta["gallery"]``,
duplicates included (one change_object record lists its target among its distractors). Retrieval ranks the
distinct ids of that list (``Query.candidate_ids``); the metric scores the 15 entries as the official code
does (see ``agent_cir.eval.metrics.genecis_metrics`` for ties between copies).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agent_cir.eval.datasets.base import (
    BenchmarkDataError,
    BenchmarkSplit,
    MissingImagesError,
    integer_id,
    read_json,
    require_keys,
    subfolder_root,
    text_field,
)
from agent_cir.types import Query

FOLDER_NAMES = ("genecis", "GeneCIS")
OBJECT_TASKS = ("change_object", "focus_object")
ATTRIBUTE_TASKS = ("change_attribute", "focus_attribute")
TASKS = OBJECT_TASKS + ATTRIBUTE_TASKS
IMAGE_SUBDIR = "val2017"
OBJECT_LAYOUT = "ROOT must contain val2017/000000xxxxxx.jpg (COCO 2017 validation images)"
ATTRIBUTE_LAYOUT = "ROOT must contain <image_id>.jpg (Visual Genome 1.2 images, the official VG_100K_all folder)"
DILATION = 0.7
"""Official ``DILATION`` (vaw_dataset.py:13): the box grows by 0.7 of its size before cropping."""
_OBJECT_BOX_KEYS = ("instance_bbox", "bbox", "bboxes")


def locate(candidates: list[Path]) -> Path:
    """The folder holding any GeneCIS task file (the attribute files are often fetched separately)."""
    searched: list[str] = []
    for candidate in candidates:
        base = Path(candidate).expanduser()
        for folder in (base, *(base / name for name in FOLDER_NAMES)):
            for task in TASKS:
                searched.append(str(folder / f"{task}.json"))
                if (folder / f"{task}.json").is_file():
                    return folder
    raise BenchmarkDataError(
        f"GeneCIS annotations not found (looked for {', '.join(searched[:8]) or 'change_object.json'}"
        f"{' ...' if len(searched) > 8 else ''}); pass --annotations DIR, the official genecis/ folder"
    )


def _object_item(entry: Any, path: Path, position: int, role: str) -> str:
    if not isinstance(entry, dict) or "val_image_id" not in entry:
        raise BenchmarkDataError(f"{path}: entry {position}: {role} lacks val_image_id; is this an object-task file?")
    boxed = [key for key in _OBJECT_BOX_KEYS if key in entry]
    if boxed:
        raise BenchmarkDataError(
            f"{path}: entry {position}: {role} has {boxed[0]}, which object tasks do not have; is this an attribute "
            "task file under an object task's name?"
        )
    return integer_id(entry["val_image_id"], path, position, f"{role}.val_image_id")


def _box(value: Any, path: Path, position: int, role: str) -> tuple[float, float, float, float]:
    numbers = isinstance(value, list) and len(value) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    )
    if not numbers or value[2] <= 0 or value[3] <= 0:
        raise BenchmarkDataError(
            f"{path}: entry {position}: {role}.instance_bbox is {value!r:.80}; expected [x, y, width, height] "
            "with a positive width and height"
        )
    return (float(value[0]), float(value[1]), float(value[2]), float(value[3]))


def attribute_item_id(image_id: str, box: tuple[float, float, float, float]) -> str:
    """A file-name-safe id for one instance crop: ``vg<image_id>_<x>_<y>_<w>_<h>``."""
    return "vg" + "_".join([image_id, *(f"{v:g}" for v in box)])


def _attribute_item(
    entry: Any, path: Path, position: int, role: str, boxes: dict[str, tuple[str, tuple[float, float, float, float]]]
) -> str:
    if not isinstance(entry, dict) or "image_id" not in entry or "instance_bbox" not in entry:
        raise BenchmarkDataError(
            f"{path}: entry {position}: {role} lacks image_id or instance_bbox; is this an attribute-task file?"
        )
    image_id = integer_id(entry["image_id"], path, position, f"{role}.image_id")
    box = _box(entry["instance_bbox"], path, position, role)
    item = attribute_item_id(image_id, box)
    boxes[item] = (image_id, box)
    return item


def load_genecis(annotations_dir: Path, task: str, images_root: Path | None = None) -> BenchmarkSplit:
    if task not in TASKS:
        raise BenchmarkDataError(f"GeneCIS tasks are {', '.join(TASKS)}, not {task!r}")
    path = Path(annotations_dir) / f"{task}.json"
    if not path.is_file():
        raise BenchmarkDataError(
            f"GeneCIS {task}: {path} not found; download {task}.json from the official repository's genecis/ folder "
            "(facebookresearch/genecis) into that folder, or leave the task out with --category"
        )
    records = read_json(path, f"GeneCIS {task}")
    if not isinstance(records, list):
        raise BenchmarkDataError(f"{path}: expected a list of records; is this the official GeneCIS file?")
    attribute = task in ATTRIBUTE_TASKS
    root = Path(images_root).expanduser() if attribute and images_root is not None else subfolder_root(images_root, IMAGE_SUBDIR)
    image_files: dict[str, str] = {}
    boxes: dict[str, tuple[str, tuple[float, float, float, float]]] = {}
    gallery_union: dict[str, None] = {}
    queries: list[Query] = []
    for position, record in enumerate(records):
        require_keys(record, ("condition", "reference", "target", "gallery"), path, position)
        if not isinstance(record["gallery"], list):
            raise BenchmarkDataError(f"{path}: entry {position}: gallery is not a list")
        if attribute:
            item = lambda entry, role: _attribute_item(entry, path, position, role, boxes)  # noqa: E731
        else:
            item = lambda entry, role: _object_item(entry, path, position, role)  # noqa: E731
        reference = item(record["reference"], "reference")
        target = item(record["target"], "target")
        distractors = [item(entry, f"gallery[{i}]") for i, entry in enumerate(record["gallery"])]
        official = [target, *distractors]  # the official list: target first, duplicates kept
        for image_id in (reference, *official):
            image_files[image_id] = (
                f"{boxes[image_id][0]}.jpg" if attribute else f"{IMAGE_SUBDIR}/{int(image_id):012d}.jpg"
            )
        gallery_union.update(dict.fromkeys(official))
        queries.append(
            Query(
                id=f"{task}-{position}",
                text=text_field(record["condition"], path, position, "condition"),
                image=str(root / image_files[reference]) if root else None,
                reference_id=reference,
                candidate_ids=list(dict.fromkeys(official)),  # retrieval ranks each distinct image once
                meta={"task": task, "ground_truth": [target], "target": target, "gallery": official},
            )
        )
    split = BenchmarkSplit(
        dataset="genecis",
        split="val",
        category=task,
        queries=queries,
        gallery_ids=list(gallery_union),
        image_files=image_files,
        annotation_files=[path],
        has_ground_truth=True,
        layout=ATTRIBUTE_LAYOUT if attribute else OBJECT_LAYOUT,
        images_root=root,
        image_subdir="" if attribute else IMAGE_SUBDIR,
    )
    split.crop_boxes = boxes  # type: ignore[attr-defined]
    return split


def crop_instance(image: Any, box: tuple[float, float, float, float], dilation: float = DILATION) -> Any:
    """The official attribute-task picture of one instance (vaw_dataset.py:39-68): the box [x, y, w, h] grows to
    ``left = max(0, x - d w)``, ``top = max(0, y - d h)``, ``right = min(W, left + (1 + d) w)``,
    ``bottom = min(H, top + (1 + d) h)``; the crop is then pasted centred on a black square (expand2square)."""
    from PIL import Image

    width, height = image.size
    x, y, w, h = box
    left, top = max(0.0, x - dilation * w), max(0.0, y - dilation * h)
    right, bottom = min(width, left + (1 + dilation) * w), min(height, top + (1 + dilation) * h)
    crop = image.crop((left, top, right, bottom))
    if crop.mode not in ("L", "RGB"):
        crop = crop.convert("RGB")
    background = (0,) if crop.mode == "L" else (0, 0, 0)
    cw, ch = crop.size
    if cw == ch:
        return crop
    side = max(cw, ch)
    square = Image.new(crop.mode, (side, side), background)
    square.paste(crop, (0, (cw - ch) // 2) if cw > ch else ((ch - cw) // 2, 0))
    return square


def materialise_crops(split: BenchmarkSplit, crops_dir: Path) -> None:
    """Attribute tasks: write every instance crop the split needs as ``crops_dir/<item id>.png`` (once; existing
    crops are reused, their names carry the box), then point the split and its queries at the crops."""
    boxes: dict[str, tuple[str, tuple[float, float, float, float]]] = getattr(split, "crop_boxes", {})
    if not boxes:
        return
    from PIL import Image

    if split.images_root is None:
        raise MissingImagesError(f"{split.name} needs the Visual Genome images: pass --images ROOT ({split.layout})")
    source_root = split.images_root
    crops_dir.mkdir(parents=True, exist_ok=True)
    for item, (image_id, box) in boxes.items():
        target = crops_dir / f"{item}.png"
        if target.is_file():
            continue
        source = source_root / f"{image_id}.jpg"
        try:
            with Image.open(source) as image:
                image.load()
                crop = crop_instance(image, box)
        except OSError as err:
            raise MissingImagesError(f"{split.name}: cannot read {source} for crop {item}: {err}") from err
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        crop.save(partial, format="PNG")
        os.replace(partial, target)
    split.images_root = crops_dir
    split.image_subdir = ""
    split.image_files = {item: f"{item}.png" for item in split.image_files}
    for query in split.queries:
        query.image = str(crops_dir / f"{query.reference_id}.png")
    split.notes.append(
        f"{split.category}: {len(boxes)} instance crops (dilation {DILATION}, padded square, as the official "
        f"vaw_dataset.py) written to {crops_dir}"
    )


CIREVL_REFERENCE_AVERAGED_TASKS = ("focus_attribute",)
"""Tasks whose query CIReVL averages with the reference (crop) image feature before scoring
(Vision_by_Language src/main.py:212-215); the other three tasks score the text query alone."""


def reference_averaged_query(query: Any, reference_image: Any) -> Any:
    """CIReVL's GeneCIS focus_attribute query: normalise((q + normalise(r)) / 2), q the (unit) text query
    feature and r the reference image feature (Vision_by_Language src/main.py:212-215). Rows are queries."""
    import numpy as np

    def unit(rows: Any) -> Any:
        rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return rows / np.maximum(norms, 1e-12)

    return unit((unit(query) + unit(reference_image)) / 2.0).astype(np.float32)
