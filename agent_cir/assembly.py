"""Assembly from a recipe: the parts a ``Pipeline`` runs with (recipe, gallery, query encoder, chat models,
cache) and one stage object per entry of ``Recipe.enabled_stages()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_cir.config import Recipe, load_recipe, recipe_from_dict
from agent_cir.encoders.recipe_identity import check_recipe_encoder, encoder_for_index
from agent_cir.errors import AgentCirError
from agent_cir.retrieval.gallery import RetrievalGallery
from agent_cir.stages.retrieve import RetrieveStage
from agent_cir.types import Stage

if TYPE_CHECKING:
    from agent_cir.pipeline import Pipeline


@dataclass
class Parts:
    """What ``Pipeline.__init__`` takes, built from a recipe."""

    recipe: Recipe
    gallery: RetrievalGallery
    encoder: Any
    models: dict[str, Any]
    cache: Any


def assemble(
    recipe: str | Path | Recipe | Mapping[str, Any],
    index: str | Path | Any | None = None,
    gallery: RetrievalGallery | None = None,
    overrides: Mapping[str, Any] | None = None,
    models: Mapping[str, Any] | None = None,
    encoder: Any = None,
    gallery_captions: str | Path | None = None,
    use_index_encoder: bool = False,
) -> Parts:
    """The parts for ``Pipeline.from_config`` (its docstring says what each argument does)."""
    recipe = as_recipe(recipe, overrides)
    captions_path = gallery_captions or (recipe.retrieve.gallery_captions.path if recipe.retrieve.gallery_captions else None)
    index_obj = None
    if gallery is None and index is not None:
        from agent_cir.index.sharded_gallery import open_index

        index_obj = open_index(index)  # a GalleryIndex, or a ShardedGallery for a sharded folder
    if index_obj is not None:
        if encoder is None:
            if not use_index_encoder:
                check_recipe_encoder(recipe, index_obj)
            encoder = encoder_for_index(index_obj, recipe)
        else:
            index_obj.check_encoder(encoder)
    elif encoder is None:
        from agent_cir.encoders import create_encoder

        encoder = create_encoder(recipe.encoder)
    if gallery is None:
        if index_obj is not None:
            gallery = RetrievalGallery.from_index(index_obj)
            if captions_path:
                gallery.with_captions(captions_path, encoder)
        elif captions_path:
            gallery = RetrievalGallery.from_captions(captions_path, encoder)
        else:
            raise AgentCirError(
                f"recipe {recipe.name!r} has nothing to retrieve from: pass an index folder "
                "(--index, made by `agent-cir index`) or gallery captions (retrieve.gallery_captions.path "
                "or --gallery-captions)"
            )
    if recipe.retrieve.gallery_twins:
        if index_obj is None:
            raise AgentCirError("retrieve.gallery_twins scores the index's synthetic twins: pass the index folder "
                                "(--index) that holds them")
        from agent_cir.retrieval.dual import with_twins

        gallery = with_twins(gallery, index_obj)
    handles = create_models(recipe, models or {})
    cache = None
    if recipe.cache.enabled and (handles or recipe.imagine.enabled):
        from agent_cir.cache import ModelCache

        cache = ModelCache(recipe.cache.path)
    return Parts(recipe=recipe, gallery=gallery, encoder=encoder, models=handles, cache=cache)


def as_recipe(recipe: str | Path | Recipe | Mapping[str, Any], overrides: Mapping[str, Any] | None) -> Recipe:
    if isinstance(recipe, Recipe):
        if not overrides:
            return recipe
        from agent_cir.config import deep_merge

        # exclude_unset: what the recipe did not write stays unset (the index then decides the encoder)
        merged = deep_merge(recipe.model_dump(exclude_unset=True), dict(overrides))
        return recipe_from_dict(merged, source=f"recipe {recipe.name}")
    if isinstance(recipe, Mapping):
        from agent_cir.config import deep_merge

        return recipe_from_dict(deep_merge(dict(recipe), dict(overrides or {})))
    return load_recipe(recipe, dict(overrides) if overrides else None)


def create_models(recipe: Recipe, injected: Mapping[str, Any]) -> dict[str, Any]:
    """Chat-model handles for the models the enabled stages use; ``injected`` ones (fakes, shared
    instances) win over the recipe's specs."""
    needed = {getattr(recipe, stage).model for stage in recipe.model_stages()}
    if recipe.predicates.enabled:
        needed.add(recipe.predicates.reasoner)  # the predicates stage's second model (its propositions)
    if recipe.imagine.enabled and recipe.imagine.describe_model:
        needed.add(recipe.imagine.describe_model)
    if not needed:
        return {}
    from agent_cir.backends import as_handle, create_chat_model

    handles: dict[str, Any] = {}
    for name in sorted(needed):
        if name in injected:
            handles[name] = as_handle(injected[name], recipe.models.get(name))
        else:
            handles[name] = create_chat_model(recipe.models[name])
    return handles


def build_stages(pipe: Pipeline) -> list[Stage]:
    """One stage object per entry of ``Recipe.enabled_stages()``, in that order."""
    return [STAGE_BUILDERS[name](pipe) for name in pipe.recipe.enabled_stages()]


def _one_stage(pipe: Pipeline) -> Stage:
    from agent_cir.stages.one_stage import OneStageStage

    config = pipe.recipe.one_stage
    return OneStageStage(config, pipe.models[config.model], pipe.cache)


def _caption(pipe: Pipeline) -> Stage:
    from agent_cir.stages.caption import CaptionStage

    config = pipe.recipe.caption
    return CaptionStage(config, pipe.models[config.model], pipe.cache)


def _rewrite(pipe: Pipeline) -> Stage:
    from agent_cir.stages.rewrite import RewriteStage

    config = pipe.recipe.rewrite
    return RewriteStage(config, pipe.models[config.model], pipe.cache)


def _retrieve(pipe: Pipeline) -> Stage:
    return RetrieveStage(pipe.recipe.retrieve, pipe.encoder, pipe.gallery, head=pipe.head_size())


def _verify(pipe: Pipeline) -> Stage:
    from agent_cir.stages.verify import VerifyStage

    config = pipe.recipe.verify
    return VerifyStage(config, pipe.models[config.model], pipe.cache, refine=pipe.recipe.refine,
                       candidate_captions=pipe.gallery.captions or None, reference_path=pipe.reference_path)


def _refine(pipe: Pipeline) -> Stage:
    from agent_cir.stages.refine import RefineStage

    config = pipe.recipe.refine
    return RefineStage(config, pipe.models[config.model], pipe.cache)


def _rerank(pipe: Pipeline) -> Stage:
    from agent_cir.rerank.stage import RerankStage

    config = pipe.recipe.rerank
    return RerankStage(config, pipe.models[config.model], pipe.cache,
                       candidate_captions=pipe.gallery.captions or None)


def _predicates(pipe: Pipeline) -> Stage:
    from agent_cir.stages.predicates import PredicatesStage

    config = pipe.recipe.predicates
    return PredicatesStage(config, pipe.models[config.model], pipe.models[config.reasoner], pipe.cache)


def _multigrain(pipe: Pipeline) -> Stage:
    from agent_cir.stages.multigrain import MultigrainStage

    return MultigrainStage(pipe.recipe.multigrain, pipe.encoder, pipe.gallery)


def _imagine(pipe: Pipeline) -> Stage:
    from agent_cir.backends.image_edit import create_image_editor
    from agent_cir.stages.imagine import ImagineStage

    config = pipe.recipe.imagine
    describer = pipe.models[config.describe_model] if config.describe_model else None
    return ImagineStage(config, create_image_editor(config), pipe.cache, reference_path=pipe.reference_path,
                        describer=describer)


STAGE_BUILDERS: dict[str, Callable[[Pipeline], Stage]] = {
    "one_stage": _one_stage, "caption": _caption, "rewrite": _rewrite, "imagine": _imagine, "retrieve": _retrieve,
    "verify": _verify, "refine": _refine, "rerank": _rerank, "predicates": _predicates, "multigrain": _multigrain,
}
"""Stage name (as ``Recipe.enabled_stages()`` lists it) -> how the pipeline builds it. Adding a stage: one entry
here and one in ``Recipe.enabled_stages``."""
