"""Gallery index on disk: scan, parallel decode, encode, manifest, faiss, incremental update."""

from agent_cir.index.decode import BadImageError, load_image
from agent_cir.index.gallery_index import (
    DEFAULT_INDEX_TYPE,
    BuildSummary,
    GalleryIndex,
    build_faiss_index,
    encode_image_file,
    encoder_config_from_meta,
)
from agent_cir.index.manifest import ManifestEntry
from agent_cir.index.scan import IMAGE_EXTENSIONS, scan_images

__all__ = [
    "DEFAULT_INDEX_TYPE",
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "BuildSummary",
    "GalleryIndex",
    "ManifestEntry",
    "build_faiss_index",
    "encode_image_file",
    "encoder_config_from_meta",
    "load_image",
    "scan_images",
]
