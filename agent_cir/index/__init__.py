"""Gallery index on disk: scan, plan, encode (pluggable engines), faiss, atomic generations, verified loads."""

from agent_cir.index.build import BuildSummary
from agent_cir.index.decode import MAX_DECODE_PIXELS, MAX_IMAGE_PIXELS, load_image
from agent_cir.index.encode import ENGINES, EncodedBatch, EncodeEngine, EncodeJob, encode_image_file, local_engine
from agent_cir.index.faiss_io import DEFAULT_INDEX_TYPE, build_faiss_index
from agent_cir.index.files import read_hash
from agent_cir.index.encoder_meta import encoder_config_from_meta
from agent_cir.index.gallery_index import GalleryIndex, reference_hash
from agent_cir.index.generation import DamagedIndexError
from agent_cir.index.lock import IndexLockedError
from agent_cir.index.manifest import ManifestEntry
from agent_cir.index.reasons import BadImageError
from agent_cir.index.scan import IMAGE_EXTENSIONS, scan_gallery, scan_images

__all__ = [
    "DEFAULT_INDEX_TYPE",
    "ENGINES",
    "IMAGE_EXTENSIONS",
    "MAX_DECODE_PIXELS",
    "MAX_IMAGE_PIXELS",
    "BadImageError",
    "BuildSummary",
    "DamagedIndexError",
    "EncodeEngine",
    "EncodeJob",
    "EncodedBatch",
    "GalleryIndex",
    "IndexLockedError",
    "ManifestEntry",
    "build_faiss_index",
    "encode_image_file",
    "encoder_config_from_meta",
    "load_image",
    "local_engine",
    "read_hash",
    "reference_hash",
    "scan_gallery",
    "scan_images",
]
