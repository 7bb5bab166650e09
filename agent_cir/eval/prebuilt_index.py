"""A prebuilt index (plain or sharded, ``agent-cir eval --index``) checked to hold exactly a split's gallery."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent_cir.errors import AgentCirError


class PrebuiltIndexError(AgentCirError):
    """The index given to ``agent-cir eval --index`` is not the split's gallery (names what differs)."""


def open_prebuilt_index(folder: Path, split_name: str, relative_paths: Sequence[str]) -> Any:
    """``folder`` opened for search (``open_index``: a ``GalleryIndex`` or a ``ShardedGallery``) after checking
    that its items are the split's gallery images: every one of ``relative_paths`` (ids relative to the split's
    image folder) and nothing else, since the metrics count every item of the gallery."""
    from agent_cir.index.sharded_gallery import open_index

    folder = Path(folder)
    if not folder.is_dir():
        raise PrebuiltIndexError(f"--index {folder} is not a folder; give an index folder built by `agent-cir index` "
                                 "(or a sharded one) over the split's images")
    index = open_index(folder)
    held = set(map(str, index.ids))
    wanted = set(relative_paths)
    absent = sorted(wanted - held)
    extra = len(held) - (len(wanted) - len(absent))
    if absent or extra:
        parts = []
        if absent:
            parts.append(f"lacks {len(absent)} of its {len(wanted)} gallery images (e.g. {absent[0]})")
        if extra:
            example = next(item for item in map(str, index.ids) if item not in wanted)
            parts.append(f"holds {extra} items that are not in it (e.g. {example})")
        raise PrebuiltIndexError(
            f"{split_name}: the index at {folder} {' and '.join(parts)}; ids must be the gallery files relative to "
            "the split's image folder: build it with `agent-cir index IMAGE_FOLDER`, or leave --index out to let "
            "eval build one")
    return index
