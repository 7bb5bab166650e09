"""The Pipeline: runs the enabled stages of a recipe in order, with the cache and the trace around them."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from agent_cir.config import Recipe, load_recipe, recipe_from_dict
from agent_cir.errors import AgentCirError
from agent_cir.gallery import RetrievalGallery
from agent_cir.hashing import content_hash
from agent_cir.stages.retrieve import QueryInputError, RetrieveStage
from agent_cir.trace import build_trace
from agent_cir.types import Query, QueryState, Result, Stage, StageRecord

_DESCRIPTION_STAGES = ("caption", "rewrite", "one_stage")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(query_id: str) -> str:
    """A query id as a folder name (ids may contain slashes or spaces)."""
    return _UNSAFE.sub("_", str(query_id)).strip("._") or "query"


def _resolve_encoder_config(recipe: Recipe, index_meta: Mapping[str, Any] | None):
    """The index decides the embedding space: its encoder is used, with the recipe's device and precision."""
    if not index_meta:
        return recipe.encoder
    from agent_cir.index import encoder_config_from_meta

    from_index = encoder_config_from_meta(index_meta)
    return from_index.model_copy(
        update={"device": recipe.encoder.device, "precision": recipe.encoder.precision,
                "batch_size": recipe.encoder.batch_size}
    )


class Pipeline:
    """``Query -> caption -> rewrite (or one_stage) -> retrieve -> rerank -> Result``.

    Build it with :meth:`from_config`; the constructor takes ready-made parts (useful in tests).
    """

    def __init__(
        self,
        recipe: Recipe,
        gallery: RetrievalGallery,
        encoder: Any,
        models: Mapping[str, Any] | None = None,
        cache: Any = None,
        artifacts_dir: str | Path | None = None,
    ) -> None:
        self.recipe = recipe
        self.gallery = gallery
        self.encoder = encoder
        self.models = dict(models or {})
        self.cache = cache
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else None
        self.stages: list[Stage] = self._build_stages()
        self._lock = threading.Lock()
        self._model_calls = 0
        self._cache_hits = 0
        self.failures: list[dict[str, str]] = []

    # ---------- construction ----------
    @classmethod
    def from_config(
        cls,
        recipe: str | Path | Recipe | Mapping[str, Any],
        index: str | Path | Any | None = None,
        gallery: RetrievalGallery | None = None,
        overrides: Mapping[str, Any] | None = None,
        models: Mapping[str, Any] | None = None,
        artifacts_dir: str | Path | None = None,
        encoder: Any = None,
        gallery_captions: str | Path | None = None,
    ) -> Pipeline:
        recipe = _as_recipe(recipe, overrides)
        captions_path = gallery_captions or (recipe.retrieve.gallery_captions.path if recipe.retrieve.gallery_captions else None)
        index_obj = None
        if gallery is None and index is not None:
            from agent_cir.index import GalleryIndex

            index_obj = index if isinstance(index, GalleryIndex) else GalleryIndex.load(index)
        if encoder is None:
            from agent_cir.encoders import create_encoder

            encoder_config = _resolve_encoder_config(recipe, index_obj.meta if index_obj is not None else None)
            encoder = create_encoder(encoder_config)
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
        handles = _create_models(recipe, models or {})
        cache = None
        if recipe.cache.enabled and handles:
            from agent_cir.cache import ModelCache

            cache = ModelCache(recipe.cache.path)
        return cls(recipe, gallery, encoder, models=handles, cache=cache, artifacts_dir=artifacts_dir)

    def _build_stages(self) -> list[Stage]:
        recipe = self.recipe
        stages: list[Stage] = []
        if recipe.one_stage.enabled:
            from agent_cir.stages.one_stage import OneStageStage

            stages.append(OneStageStage(recipe.one_stage, self.models[recipe.one_stage.model], self.cache))
        else:
            if recipe.caption.enabled:
                from agent_cir.stages.caption import CaptionStage

                stages.append(CaptionStage(recipe.caption, self.models[recipe.caption.model], self.cache))
            if recipe.rewrite.enabled:
                from agent_cir.stages.rewrite import RewriteStage

                stages.append(RewriteStage(recipe.rewrite, self.models[recipe.rewrite.model], self.cache))
        stages.append(RetrieveStage(recipe.retrieve, self.encoder, self.gallery))
        if recipe.rerank.enabled:
            from agent_cir.stages.rerank import RerankStage

            stages.append(
                RerankStage(
                    recipe.rerank,
                    self.models[recipe.rerank.model],
                    self.cache,
                    candidate_captions=self.gallery.captions or None,
                )
            )
        return stages

    # ---------- running ----------
    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"model_calls": self._model_calls, "cache_hits": self._cache_hits}

    def _prepare(self, query: Query) -> QueryState:
        if not query.text and not query.target_text and query.image is None:
            raise QueryInputError(f"query {query.id}: empty query: give a modification text, an image or both")
        state = QueryState(query=query)
        if query.image is not None:
            image_path = Path(query.image).expanduser()
            if not image_path.is_file():
                raise QueryInputError(f"query {query.id}: reference image {image_path} does not exist")
            state.image_hash = content_hash(image_path)
        if query.reference_caption:
            state.captions = [query.reference_caption]
        if query.target_text:
            state.target_descriptions = [query.target_text]
            state.description_source = "manual"
        if self.artifacts_dir is not None:
            state.artifacts_dir = self.artifacts_dir / safe_name(query.id)
        return state

    def run(
        self, query: Query, on_stage: Callable[[StageRecord, QueryState], None] | None = None
    ) -> Result:
        """Run one query. ``on_stage`` is called after each stage with its record and the state so far
        (the demo uses it to show stages as they complete)."""
        state = self._prepare(query)
        started = time.perf_counter()
        for stage in self.stages:
            if query.target_text and stage.name in _DESCRIPTION_STAGES:
                record = StageRecord(stage=stage.name, skipped="target description set by hand (intervention)")
            else:
                stage_started = time.perf_counter()
                record = stage.run(state)
                record.seconds = round(time.perf_counter() - stage_started, 6)
            state.records.append(record)
            if on_stage is not None:
                on_stage(record, state)
        seconds = time.perf_counter() - started
        trace = build_trace(state, self.recipe.name, self.recipe.hash, seconds)
        with self._lock:
            self._model_calls += trace["totals"]["model_calls"]
            self._cache_hits += trace["totals"]["cache_hits"]
        return Result(query_id=query.id, candidates=state.candidates, trace=trace)

    def run_batch(
        self,
        queries: Iterable[Query],
        max_concurrency: int | None = None,
        progress: bool = True,
        on_result: Callable[[Result], None] | None = None,
        on_error: Callable[[Query, Exception], None] | None = None,
    ) -> list[Result]:
        """Run many queries, ``max_concurrency`` at a time (model calls are I/O bound for servers).

        A query whose input is bad is skipped, reported through ``on_error`` and in ``self.failures``; the
        others go on. ``on_result`` is called (serialised) as each query finishes, so callers can persist
        results immediately. Returns the successful results in input order.
        """
        from tqdm.auto import tqdm

        queries = list(queries)
        workers = max(1, max_concurrency or self.recipe.max_concurrency)
        results: dict[int, Result] = {}
        callback_lock = threading.Lock()
        self.failures = []
        bar = tqdm(total=len(queries), desc=f"{self.recipe.name}", unit="query", disable=not progress)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(self.run, query): position for position, query in enumerate(queries)}
            try:
                for future in as_completed(futures):
                    position = futures[future]
                    query = queries[position]
                    try:
                        result = future.result()
                    except AgentCirError as err:
                        with callback_lock:
                            self.failures.append({"query_id": query.id, "error": str(err)})
                            if on_error is not None:
                                on_error(query, err)
                    else:
                        results[position] = result
                        if on_result is not None:
                            with callback_lock:
                                on_result(result)
                    bar.update(1)
                    stats = self.stats
                    bar.set_postfix(calls=stats["model_calls"], hits=stats["cache_hits"], failed=len(self.failures))
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            finally:
                bar.close()
        return [results[position] for position in sorted(results)]


def _as_recipe(recipe: str | Path | Recipe | Mapping[str, Any], overrides: Mapping[str, Any] | None) -> Recipe:
    if isinstance(recipe, Recipe):
        if not overrides:
            return recipe
        from agent_cir.config import deep_merge

        return recipe_from_dict(deep_merge(recipe.model_dump(), dict(overrides)), source=f"recipe {recipe.name}")
    if isinstance(recipe, Mapping):
        from agent_cir.config import deep_merge

        return recipe_from_dict(deep_merge(dict(recipe), dict(overrides or {})))
    return load_recipe(recipe, dict(overrides) if overrides else None)


def _create_models(recipe: Recipe, injected: Mapping[str, Any]) -> dict[str, Any]:
    """Chat-model handles for the models the enabled stages use; ``injected`` ones (fakes, shared
    instances) win over the recipe's specs."""
    needed = set()
    if recipe.one_stage.enabled:
        needed.add(recipe.one_stage.model)
    else:
        if recipe.caption.enabled:
            needed.add(recipe.caption.model)
        if recipe.rewrite.enabled:
            needed.add(recipe.rewrite.model)
    if recipe.rerank.enabled:
        needed.add(recipe.rerank.model)
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
