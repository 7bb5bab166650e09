"""CIRR (Liu et al., ICCV 2021), version rc2: ``captions/cap.rc2.<split>.json`` and
``image_splits/split.rc2.<split>.json`` (split = val or test1).

Expected image layout: the official ``cirr_dataset`` folder, i.e. ``ROOT/dev/dev-*.png`` for val and
``ROOT/test1/test1-*.png`` for test1, the relative paths the split files list (``./dev/dev-244-0-img0.png``).
Ids are the CIRR image names (``dev-244-0-img0``); query ids are the ``pairid`` as strings.

``meta["subset"]`` holds ``img_set.members`` as the file gives them (the reference is one of them);
the subset metric removes the reference, as the official evaluation does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from agent_cir.eval.datasets.base import (
    BenchmarkDataError,
    BenchmarkSplit,
    id_list,
    locate_dataset_dir,
    query_id,
    read_json,
    refuse_duplicate_queries,
    require_keys,
    string_id,
    text_field,
)
from agent_cir.types import Query

FOLDER_NAMES = ("cirr", "CIRR", "cirr_dataset")
SPLIT_FILES = {"val": "val", "test": "test1", "test1": "test1"}
LAYOUT = "ROOT must be the CIRR image folder that holds dev/ (val) and test1/ (test) with the *.png files"


def locate(candidates: list[Path]) -> Path:
    return locate_dataset_dir(candidates, FOLDER_NAMES, "image_splits/split.rc2.val.json", "CIRR")


def _relative(path: str) -> str:
    return path[2:] if path.startswith("./") else path.lstrip("/")


def load_cirr(annotations_dir: Path, split: str, images_root: Path | None = None) -> BenchmarkSplit:
    if split not in SPLIT_FILES:
        raise BenchmarkDataError(f"CIRR has splits val and test (test1), not {split!r}")
    name = SPLIT_FILES[split]
    split = "test" if name == "test1" else "val"
    annotations_dir = Path(annotations_dir)
    captions_path = annotations_dir / "captions" / f"cap.rc2.{name}.json"
    split_path = annotations_dir / "image_splits" / f"split.rc2.{name}.json"
    records = read_json(captions_path, f"CIRR {name} captions")
    image_split = read_json(split_path, f"CIRR {name} image split")
    if not isinstance(records, list) or not isinstance(image_split, dict):
        raise BenchmarkDataError(
            f"{captions_path} must be a list and {split_path} an object; are these the official CIRR rc2 files?"
        )
    has_ground_truth = name != "test1"
    required = ("pairid", "reference", "caption", "img_set") + (("target_hard",) if has_ground_truth else ())
    root = Path(images_root).expanduser() if images_root is not None else None
    if root is not None and not (root / name).is_dir() and root.name == name:
        root = root.parent  # ROOT given as the dev/ (or test1/) folder itself
    image_files = {image_id: _relative(str(path)) for image_id, path in image_split.items()}
    queries: list[Query] = []
    for position, record in enumerate(records):
        require_keys(record, required, captions_path, position)
        pair_id = query_id(record["pairid"], captions_path, position, "pairid")
        reference = string_id(record["reference"], captions_path, position, "reference")
        if reference not in image_files:
            raise BenchmarkDataError(f"{captions_path}: query {pair_id}: reference {reference} not in {split_path}")
        image_set = record["img_set"]
        if not isinstance(image_set, dict) or "members" not in image_set:
            raise BenchmarkDataError(f"{captions_path}: entry {position}: img_set must be an object with members")
        meta: dict = {"subset": id_list(image_set["members"], captions_path, position, "img_set.members", string_id)}
        if has_ground_truth:
            target = string_id(record["target_hard"], captions_path, position, "target_hard")
            meta.update(ground_truth=[target], target=target)
        queries.append(
            Query(
                id=pair_id,
                text=text_field(record["caption"], captions_path, position, "caption"),
                image=str(root / image_files[reference]) if root else None,
                reference_id=reference,
                meta=meta,
            )
        )
    refuse_duplicate_queries([q.id for q in queries], captions_path, "pairid")
    return BenchmarkSplit(
        dataset="cirr",
        split=split,
        category=None,
        queries=queries,
        gallery_ids=list(image_split),
        image_files=image_files,
        annotation_files=[captions_path, split_path],
        has_ground_truth=has_ground_truth,
        layout=LAYOUT,
        images_root=root,
        image_subdir=name if name == "test1" else "dev",
    )


def attach_reference_captions(split: BenchmarkSplit, captions: Mapping[str, list[str]]) -> list[str]:
    """Text surrogate: give each query its reference image's caption; returns ids of queries left without one.

    We use the FIRST caption of the reference, not all of them joined: the caption stage it stands in for
    writes one caption by default, and the other captions in the file are paraphrases by the same MLLM;
    one sentence keeps the caption/modification balance of caption+modification baselines as published.
    """
    uncaptioned: list[str] = []
    for query in split.queries:
        texts = captions.get(query.reference_id or "", [])
        if texts:
            query.reference_caption = texts[0]
        else:
            uncaptioned.append(query.id)
    return uncaptioned
