"""The gallery of one benchmark split: its captions (the text surrogate) or its images' index, named by
benchmark id.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agent_cir.eval.datasets import BenchmarkSplit
from agent_cir.eval.prebuilt_index import open_prebuilt_index
from agent_cir.eval.run_inputs import EvalInputError


def caption_gallery(split: BenchmarkSplit, table: Mapping[str, list[str]], encoder: Any):
    from agent_cir.retrieval.gallery import RetrievalGallery

    ids = list(split.gallery_ids or [])
    covered = sum(1 for i in ids if i in table)
    if covered < max(1, len(ids) // 2):
        raise EvalInputError(
            f"{split.name}: the gallery captions cover {covered} of {len(ids)} gallery images (e.g. "
            f"{ids[0] if ids else '-'} has none); is it the captions file of this dataset and split?"
        )
    if covered < len(ids):
        split.notes.append(f"{len(ids) - covered} of {len(ids)} gallery images have no caption (scored 0)")
    return RetrievalGallery.from_captions(dict(table), encoder, ids=ids)


def image_gallery(split: BenchmarkSplit, index_root: Path, encoder: Any, prebuilt: Path | None = None):
    """Build (or reuse) the index of the split's gallery images (or open ``prebuilt``, checked to hold exactly
    them), then name its items by benchmark id."""
    from agent_cir.retrieval.gallery import RetrievalGallery
    from agent_cir.index import GalleryIndex

    relative = split.gallery_relative_paths()
    index_dir = prebuilt or index_root / split.name
    index = (open_prebuilt_index(prebuilt, split.name, relative) if prebuilt is not None
             else GalleryIndex.build(split.images_dir, index_dir, encoder, files=relative))
    gallery = RetrievalGallery.from_index(index)
    position = {gallery_id: i for i, gallery_id in enumerate(gallery.ids)}
    absent = [rel for rel in relative if rel not in position]
    if absent:
        raise EvalInputError(
            f"{split.name}: the index at {index_dir} lacks {len(absent)} gallery images (e.g. {absent[0]}); "
            "they could not be read; see the index's report of skipped files"
        )
    rows = [position[rel] for rel in relative]
    return RetrievalGallery(
        ids=list(split.gallery_ids or []),
        paths=[gallery.paths[i] for i in rows],
        hashes=[gallery.hashes[i] for i in rows],
        image_embeddings=np.asarray(gallery.image_embeddings[np.asarray(rows, dtype=np.int64)], dtype=np.float32),
        encoder_info=dict(gallery.encoder_info),
        source=str(index_dir),
        index=gallery.index,
    )
