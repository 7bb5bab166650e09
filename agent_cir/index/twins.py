"""Synthetic gallery twins (Paracosm): every gallery image captioned, then drawn again from its caption by a
text-to-image model, and the drawing embedded as a second vector of the item.

Paracosm scores a gallery item by normalise(normalise(f(real)) + normalise(f(twin))), so that the generated query
picture and the gallery meet in one synthetic domain (``agent_cir.retrieval.dual.twin_vectors``; set
``retrieve.gallery_twins: true``). This module builds and loads the twins; the formula lives with retrieval.

On disk, in the index folder (claimed in its marker, so garbage collection and out-folder checks know it):

    twins/images/<sha256 of the real file>.png   one twin per distinct gallery image, written atomically
    twins/journal.jsonl                           one line per finished twin (caption, twin sha256, seconds)
    twins/embeddings.npy, twins/meta.json         the twin vectors in the index's row order, for one generation

Resumable: a twin whose journal line and image file both exist (the file hashing to the journal's sha256) is
never generated again, so a build killed at any point (SIGKILL included) loses at most the twin it was drawing.
A torn last journal line is ignored. Captions and drawings also go through the model cache. The twin images
are embedded through the index build's encoding engines (``encode.ENGINES``: local, ray), with the index's own
encoder. ``meta.json`` records the cost: seconds per image for captioning, drawing and encoding.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent_cir.atomic import write_bytes_atomic, write_text_atomic
from agent_cir.errors import AgentCirError
from agent_cir.hashing import bytes_hash, stable_hash
from agent_cir.index.encode import EncodeEngine, EncodeJob, get_engine
from agent_cir.index.lock import IndexLock
from agent_cir.index.manifest import ManifestEntry
from agent_cir.index.out_folder import claim, open_nofollow_file, owned_names

TWINS_DIR = "twins"
IMAGES_DIR = "images"
JOURNAL_NAME = "journal.jsonl"
EMBEDDINGS_NAME = "embeddings.npy"
META_NAME = "meta.json"
TWINS_FORMAT = 1
CAPTION_PROMPT = "twin_caption"


class TwinsError(AgentCirError):
    """Twins cannot be built or used as asked (names the index folder and what to do)."""


@dataclass
class TwinsSummary:
    generated: int = 0
    """Twins drawn in this run."""
    reused: int = 0
    """Twins a previous (possibly killed) run had finished."""
    total: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    """Seconds per newly made twin: caption, generate, encode (per image encoded)."""
    cache_hits: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"generated": self.generated, "reused": self.reused, "total": self.total,
                "seconds_per_image": dict(self.seconds), "cache_hits": self.cache_hits}


@dataclass
class TwinsRequest:
    """Twins to build right after an index build (``GalleryIndex.build(..., twins=TwinsRequest(...))``): the
    arguments of :func:`build_twins`; ``engine`` None uses the build's own encoding engine."""

    generator: Any
    settings: Any
    captioner: Any = None
    captions: Mapping[str, str] | None = None
    cache: Any = None
    engine: Any = None
    engine_options: dict[str, Any] | None = None


EDIT_EXTRA = "pip install 'agent-cir[edit]'"


def twins_request_from_recipe(recipe: Any) -> TwinsRequest:
    """The twins a recipe describes (``agent-cir index --twins``): its ``imagine:`` section is the image model and
    its settings (steps, guidance, seed, size, device), the model ``caption.model`` names under ``models:`` is
    the captioner, and its ``cache:`` caches both. Fails here, before any index work, when a piece is missing."""
    from agent_cir.backends.create import create_chat_model
    from agent_cir.backends.image_edit import create_image_editor, parse_edit_spec

    settings = recipe.imagine
    provider, _model = parse_edit_spec(settings.model)
    if provider == "diffusers":
        try:
            import diffusers  # noqa: F401 - only to fail now rather than after the index is built
        except ImportError as err:
            raise TwinsError(f"twins drawn with {settings.model} need the optional package 'diffusers': "
                             f"{EDIT_EXTRA} (or set imagine.model to another image backend)") from err
    name = recipe.caption.model
    if name not in recipe.models:
        known = ", ".join(sorted(recipe.models)) or "none"
        raise TwinsError(f"the twins' captioner is caption.model = {name!r}, which is not under 'models:' of the "
                         f"recipe (defined: {known}); add it or set caption.model")
    cache = None
    if recipe.cache.enabled:
        from agent_cir.cache import ModelCache

        cache = ModelCache(recipe.cache.path)
    return TwinsRequest(generator=create_image_editor(settings), settings=settings,
                        captioner=create_chat_model(recipe.models[name]), cache=cache)


def twins_folder(index_dir: str | Path) -> Path:
    return Path(index_dir) / TWINS_DIR


def _read_journal(folder: Path, drawn_with: str | None = None) -> dict[str, dict[str, Any]]:
    """Finished twins by real-image hash: journal lines whose image file exists and hashes right, and that were
    drawn with ``drawn_with`` (the hash of the generator and its settings; lines written before it was recorded
    count as drawn with it)."""
    done: dict[str, dict[str, Any]] = {}
    journal = folder / JOURNAL_NAME
    if not journal.is_file():
        return done
    for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn line of a killed run
        if not isinstance(record, dict) or not isinstance(record.get("hash"), str):
            continue
        if drawn_with is not None and record.get("drawn_with", drawn_with) != drawn_with:
            continue  # drawn by another model or with other settings: drawn again
        image = folder / IMAGES_DIR / f"{record['hash']}.png"
        try:
            if bytes_hash(image.read_bytes()) != record.get("twin_sha256"):
                continue
        except OSError:
            continue
        done[record["hash"]] = record
    return done


def _append(journal: Path, record: dict[str, Any]) -> None:
    with open_nofollow_file(journal, "a") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _caption(captioner: Any, image_path: str, cache: Any) -> tuple[str, float, bool]:
    from agent_cir.backends import invoke
    from agent_cir.parsing import parse_caption
    from agent_cir.prompts import load_prompt

    prompt = load_prompt(CAPTION_PROMPT)
    started = time.perf_counter()
    call = invoke(captioner, prompt.render_messages(), prompt=prompt, images=[image_path], cache=cache)
    text, _status = parse_caption(call.raw)
    return text, time.perf_counter() - started, call.cache == "hit"


def build_twins(
    index: Any,
    generator: Any,
    settings: Any,
    *,
    captioner: Any = None,
    captions: Mapping[str, str] | None = None,
    cache: Any = None,
    encoder: Any = None,
    engine: str | EncodeEngine = "local",
    engine_options: dict[str, Any] | None = None,
    batch_size: int | None = None,
    workers: int = 0,
    progress: bool = False,
    wait: bool = False,
) -> TwinsSummary:
    """Caption every distinct image of ``index`` (a ``GalleryIndex``), draw its twin with ``generator`` (an
    ``ImageEditor`` given text only; ``settings``: an ``ImagineConfig`` for steps, guidance, seed, size), embed
    the twins with the index's encoder through ``engine``, and write them beside the index (see the module
    docstring). ``captions`` (gallery id -> caption) replaces the captioner where it has an entry."""
    from agent_cir.backends.image_edit import request_from_config
    from agent_cir.backends.image_edit.cached import edit_image
    from agent_cir.prompts import load_prompt

    index_dir = Path(index.directory)
    if captioner is None and captions is None:
        raise TwinsError(f"twins of {index_dir} need a captioner (a chat VLM) or gallery captions to draw from")
    prompt_hash = load_prompt(CAPTION_PROMPT).hash
    summary = TwinsSummary()
    spent = {"caption": 0.0, "generate": 0.0, "encode": 0.0}
    with IndexLock(index_dir, wait=wait):
        if TWINS_DIR not in owned_names(index_dir):
            claim(index_dir, TWINS_DIR)
        folder = twins_folder(index_dir)
        (folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        drawn_with = stable_hash({"generator": dict(generator.info),
                                  "settings": request_from_config(settings, "", None).settings()})
        done = _read_journal(folder, drawn_with)
        first_row: dict[str, int] = {}
        for row, digest in enumerate(index.hashes):
            first_row.setdefault(digest, row)
        summary.total = len(first_row)
        summary.reused = sum(1 for digest in first_row if digest in done)
        from tqdm.auto import tqdm

        to_draw = [(digest, row) for digest, row in first_row.items() if digest not in done]
        for digest, row in tqdm(to_draw, desc="twins", unit="image", disable=not progress or not to_draw):
            gallery_id, image_path = index.ids[row], index.paths[row]
            given = (captions or {}).get(gallery_id)
            if given and given.strip():
                caption, caption_seconds, hit = given.strip(), 0.0, False
            elif captioner is not None:
                caption, caption_seconds, hit = _caption(captioner, image_path, cache)
                summary.cache_hits += int(hit)
            else:
                raise TwinsError(f"gallery item {gallery_id} has no caption in the given captions and no captioner "
                                 "was given")
            if not caption:
                raise TwinsError(f"the captioner gave no readable caption for {gallery_id}; its twin cannot be drawn")
            request = request_from_config(settings, caption, None)
            outcome = edit_image(generator, request, prompt_name=CAPTION_PROMPT, prompt_hash=prompt_hash, cache=cache)
            summary.cache_hits += int(outcome.call.cache == "hit")
            write_bytes_atomic(folder / IMAGES_DIR / f"{digest}.png", outcome.png)
            record = {"hash": digest, "id": gallery_id, "caption": caption, "twin_sha256": outcome.sha256,
                      "drawn_with": drawn_with,
                      "seconds": {"caption": round(caption_seconds, 4), "generate": outcome.call.seconds},
                      "cache": outcome.call.cache}
            _append(folder / JOURNAL_NAME, record)
            done[digest] = record
            summary.generated += 1
            spent["caption"] += caption_seconds
            spent["generate"] += outcome.call.seconds
        encode_started = time.perf_counter()
        vectors = _encode_twins(folder, done, encoder or index.load_encoder(), engine, engine_options,
                                batch_size, workers, progress)
        spent["encode"] = time.perf_counter() - encode_started
        matrix = np.stack([vectors[digest] for digest in index.hashes]) if index.hashes else np.zeros(
            (0, index.dim), dtype=np.float32)
        buffer = io.BytesIO()
        np.save(buffer, matrix.astype(np.float32))
        write_bytes_atomic(folder / EMBEDDINGS_NAME, buffer.getvalue())
        made = max(1, summary.generated)
        summary.seconds = {"caption": round(spent["caption"] / made, 4), "generate": round(spent["generate"] / made, 4),
                           "encode": round(spent["encode"] / max(1, len(first_row)), 4)}
        meta = {"format": TWINS_FORMAT, "generation": index.generation, "count": int(len(matrix)),
                "dim": int(matrix.shape[1]) if matrix.ndim == 2 else index.dim, "encoder": index.encoder_info,
                "generator": dict(generator.info), "settings": request_from_config(settings, "", None).settings(),
                "caption_prompt_hash": prompt_hash, "embeddings_sha256": bytes_hash(buffer.getvalue()),
                "last_build": summary.to_dict()}
        write_text_atomic(folder / META_NAME, json.dumps(meta, indent=2, sort_keys=True, default=str))
    return summary


def _encode_twins(folder: Path, done: Mapping[str, Mapping[str, Any]], encoder: Any, engine: str | EncodeEngine,
                  engine_options: dict[str, Any] | None, batch_size: int | None, workers: int,
                  progress: bool) -> dict[str, np.ndarray]:
    images = folder / IMAGES_DIR
    entries = []
    for digest, record in done.items():
        stat = (images / f"{digest}.png").stat()
        entries.append(ManifestEntry(f"{digest}.png", stat.st_size, stat.st_mtime, stat.st_mtime_ns,
                                     str(record["twin_sha256"])))
    job = EncodeJob(images, entries, encoder, batch_size or getattr(encoder, "batch_size", 64), workers, progress,
                    dict(engine_options or {}))
    vectors: dict[str, np.ndarray] = {}
    for batch in get_engine(engine)(job):
        if batch.failures:
            failure = batch.failures[0]
            raise TwinsError(f"twin image {images / failure.path} cannot be encoded ({failure.reason}: "
                             f"{failure.detail}); delete it and build the twins again")
        for entry, vector in zip(batch.entries, np.asarray(batch.vectors, dtype=np.float32)):
            vectors[entry.path[: -len(".png")]] = vector
    missing = [digest for digest in done if digest not in vectors]
    if missing:
        raise TwinsError(f"the encoding engine returned no vector for {len(missing)} twins (e.g. {missing[0]})")
    return vectors


def twins_meta(index: Any) -> dict[str, Any]:
    path = twins_folder(index.directory) / META_NAME
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TwinsError(f"index {index.directory} has no synthetic twins; build them with "
                         "agent_cir.index.twins.build_twins (or set retrieve.gallery_twins: false)") from None
    except (OSError, ValueError) as err:
        raise TwinsError(f"twins meta {path} cannot be read ({err}); build the twins again") from None
    if not isinstance(meta, dict) or meta.get("format") != TWINS_FORMAT:
        raise TwinsError(f"twins meta {path} is not a twins meta of this agent_cir; build the twins again")
    return meta


def load_twins(index: Any) -> np.ndarray:
    """The twin vectors of ``index`` (a GalleryIndex), in its row order; refused when they were built for
    another generation or are damaged."""
    meta = twins_meta(index)
    folder = twins_folder(index.directory)
    if meta.get("generation") != index.generation or int(meta.get("count", -1)) != len(index):
        raise TwinsError(
            f"the twins of {index.directory} were built for generation {meta.get('generation')} "
            f"({meta.get('count')} items), the index is now {index.generation} ({len(index)} items); build the "
            "twins again (finished twins are reused, only new images are drawn)"
        )
    data = (folder / EMBEDDINGS_NAME).read_bytes()
    if bytes_hash(data) != meta.get("embeddings_sha256"):
        raise TwinsError(f"{folder / EMBEDDINGS_NAME} does not match its meta.json (damaged); build the twins again")
    matrix = np.load(io.BytesIO(data), allow_pickle=False)
    if matrix.shape != (len(index), index.dim):
        raise TwinsError(f"{folder / EMBEDDINGS_NAME} has shape {matrix.shape}, expected {(len(index), index.dim)}")
    return matrix
