"""Which encoder embeds the queries of an index: the recipe's encoder checked against the index's (refused when
their embeddings could not be compared), the index's encoder loaded once per index, and the encoder record every
trace carries."""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import Any

from agent_cir.config import EncoderConfig, Recipe
from agent_cir.encoders.identity import EncoderMismatchError

_RUNTIME_ENCODER_FIELDS = frozenset({"device", "precision", "batch_size"})
_NO_WEIGHTS = (None, "", "none", "None")

__all__ = ["EncoderMismatchError", "check_recipe_encoder", "encoder_for_index", "encoder_record"]


def encoder_record(encoder: Any) -> dict[str, Any]:
    """What every trace says about the encoder that embedded the query: ``{backend, architecture, pretrained,
    weights, preprocess, dim, random_weights}`` (random_weights: a random init, whose rankings mean nothing).
    The same record search output and the quickstart print (``agent_cir.provenance``)."""
    from agent_cir.provenance import encoder_provenance

    return encoder_provenance(dict(getattr(encoder, "info", None) or {}))


def _identity_value(value: Any) -> Any:
    if value in _NO_WEIGHTS:
        return None
    if isinstance(value, str):
        value = value.strip()
        path = Path(value).expanduser()
        if path.exists():
            return str(path.resolve())
    return value


def _explicit_encoder_fields(recipe: Recipe) -> list[str]:
    """Identity fields (backend, model, pretrained, preprocessing, ...) the recipe itself wrote down."""
    if "encoder" not in recipe.model_fields_set:
        return []
    identity = set(EncoderConfig.model_fields) - _RUNTIME_ENCODER_FIELDS
    return sorted(identity & set(recipe.encoder.model_fields_set))


def check_recipe_encoder(recipe: Recipe, index: Any) -> None:
    """Refuse a recipe whose encoder differs from the index's: their embeddings cannot be compared. A recipe
    that sets no encoder lets the index decide."""
    from agent_cir.encoders import describe_encoder
    from agent_cir.index.encoder_meta import encoder_config_from_meta

    fields = _explicit_encoder_fields(recipe)
    if not fields:
        return
    built_with = encoder_config_from_meta(index.meta)
    differing = [
        name for name in fields
        if _identity_value(getattr(recipe.encoder, name)) != _identity_value(getattr(built_with, name, None))
    ]
    if not differing:
        return
    wanted = recipe.encoder
    index_dir = getattr(index, "directory", "the index")
    reindex = f"agent-cir index IMAGES_DIR --out NEW_INDEX_DIR --backend {wanted.backend} --model {wanted.model}"
    if wanted.pretrained not in _NO_WEIGHTS:
        reindex += f" --pretrained {wanted.pretrained}"
    raise EncoderMismatchError(
        f"recipe {recipe.name!r} asks for encoder {describe_encoder(wanted.model_dump())}, but index {index_dir} "
        f"was built with {describe_encoder(built_with.model_dump())} (differs in: {', '.join(differing)}); "
        "embeddings of different encoders cannot be compared. What to do: re-index the images with the "
        f"recipe's encoder (`{reindex}`) and pass that index, or search with the index's encoder "
        "(`--use-index-encoder`; Python: Pipeline.from_config(..., use_index_encoder=True))"
    )


# One encoder per loaded index (and runtime settings): building the pipeline twice over the same
# GalleryIndex object, as the demo does on a recipe change, does not load the model again.
_INDEX_ENCODERS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_INDEX_ENCODERS_LOCK = threading.Lock()


def encoder_for_index(index: Any, recipe: Recipe) -> Any:
    """The encoder the index was built with, run with the recipe's device, precision and batch size."""
    from agent_cir.encoders import create_encoder
    from agent_cir.index.encoder_meta import encoder_config_from_meta

    runtime = {name: getattr(recipe.encoder, name) for name in _RUNTIME_ENCODER_FIELDS}
    config = encoder_config_from_meta(index.meta).model_copy(update=runtime)
    key = config.model_dump_json()
    with _INDEX_ENCODERS_LOCK:
        built = _INDEX_ENCODERS.setdefault(index, {})
        if key not in built:
            built[key] = create_encoder(config)
        return built[key]
