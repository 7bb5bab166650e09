"""``agent-cir search``: one composed query against an index, with or without a recipe."""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import typer

from agent_cir.cli._app import app
from agent_cir.cli._common import (
    check_recipe_name,
    echo,
    echo_json,
    json_option,
    quiet_library_logs,
    quiet_option,
    settle_offline_mode,
    status,
    user_errors,
    warn,
)
from agent_cir.cli._ranking import format_ranking, ranking_rows
from agent_cir.errors import AgentCirError

MODES = ("text", "image", "fusion", "pdv")
DEFAULT_K = 10
"""Results without a recipe (rclip shows 10 too); --k or the recipe's retrieve.k changes it."""
URL_MAX_BYTES = 50 * 1024 * 1024
URL_TIMEOUT_S = 20.0
_URL_RE = re.compile(r"^https?://", re.IGNORECASE)


def is_url(reference: str | None) -> bool:
    return bool(reference) and bool(_URL_RE.match(str(reference)))


@contextlib.contextmanager
def fetched_reference(url: str, max_bytes: int = URL_MAX_BYTES, timeout: float = URL_TIMEOUT_S) -> Iterator[Path]:
    """An image URL downloaded to a temporary file (removed afterwards), at most ``max_bytes``, each read
    bounded by ``timeout`` seconds and the whole download by 3 x ``timeout``."""
    import urllib.error
    import urllib.request

    suffix = Path(url.split("?", 1)[0]).suffix[:8] or ".img"
    handle, name = tempfile.mkstemp(prefix="agent-cir-reference-", suffix=suffix)
    path = Path(name)
    try:
        started = time.monotonic()
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "agent-cir"})
            with urllib.request.urlopen(request, timeout=timeout) as response, os.fdopen(handle, "wb") as out:
                handle = -1
                total = 0
                while True:
                    chunk = response.read(64 * 1024)
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > max_bytes:
                        raise AgentCirError(f"reference image {url} is larger than {max_bytes // (1024 * 1024)} MB; "
                                            "download it yourself and give the file")
                    if time.monotonic() - started > 3 * timeout:
                        raise AgentCirError(f"reference image {url}: the download took over {3 * timeout:.0f} s; "
                                            "download it yourself and give the file")
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise AgentCirError(f"reference image {url} could not be downloaded ({reason}); check the URL or "
                                "download it yourself and give the file") from err
        yield path
    finally:
        if handle != -1:
            os.close(handle)
        path.unlink(missing_ok=True)


def check_reference_image(path: Path, shown_as: str) -> None:
    """Decode the reference before any model loads, so that a text file given as --image costs nothing. The
    decode is memoised (``index.image_memo``): the stages reuse it instead of decoding the file again."""
    from agent_cir.index.image_memo import image_file
    from agent_cir.index.reasons import BadImageError

    try:
        image_file(path).rgb()
    except BadImageError as err:
        detail = re.sub(r"<_io\.\w+ name=[^>]*>", "", err.detail).strip(" :")
        raise AgentCirError(f"reference image {shown_as} cannot be used: {err.reason}"
                            + (f" ({detail})" if detail else "") + "; give a jpg, png, webp, bmp or gif file") from err


def build_search_overrides(
    mode: str | None,
    alpha: float | None,
    k: int | None,
    with_recipe: bool,
    has_image: bool = True,
    has_text: bool = True,
) -> dict[str, Any]:
    """Command-line options become recipe overrides; without a recipe the retrieval is CLIP only, and the
    text side is the modification itself (no LLM): fusion with a reference image and a text, image with an
    image alone, text without an image."""
    retrieve: dict[str, Any] = {}
    if mode is not None:
        retrieve["mode"] = mode
    if alpha is not None:
        retrieve["alpha"] = alpha
    if k is not None:
        retrieve["k"] = k
    if not with_recipe:
        default_mode = ("fusion" if has_text else "image") if has_image else "text"
        retrieve.setdefault("mode", default_mode)
        retrieve.setdefault("k", DEFAULT_K)
        retrieve["text_source"] = "modification"
    return {"retrieve": retrieve} if retrieve else {}


def validate_search_inputs(
    index: Path | None, image: Path | str | None, text: str, target_text: str | None, mode: str | None,
    config: str | None, gallery_captions: Path | None,
) -> None:
    """Everything that can be checked before a model loads: a typo must cost nothing."""
    if mode is not None and mode not in MODES:
        raise typer.BadParameter(f"--mode must be text, image, fusion or pdv (got {mode!r})", param_hint="--mode")
    if index is None and gallery_captions is None and config is None:
        raise typer.BadParameter("give --index INDEX_DIR (made by `agent-cir index`)", param_hint="--index")
    if index is not None and index.is_file():
        raise typer.BadParameter(f"{index} is a file, expected an index folder (made by `agent-cir index`)",
                                 param_hint="--index")
    if index is not None and not index.is_dir():
        raise typer.BadParameter(f"index folder {index} does not exist (make one with `agent-cir index`)",
                                 param_hint="--index")
    if image is not None and not is_url(str(image)):
        image = Path(image)
        if image.is_dir():
            raise typer.BadParameter(f"{image} is a folder, expected a reference image file", param_hint="--image")
        if not image.is_file():
            raise typer.BadParameter(f"reference image {image} does not exist", param_hint="--image")
    if gallery_captions is not None and gallery_captions.is_dir():
        raise typer.BadParameter(f"{gallery_captions} is a folder, expected a JSON file",
                                 param_hint="--gallery-captions")
    if gallery_captions is not None and not gallery_captions.is_file():
        raise typer.BadParameter(f"gallery captions file {gallery_captions} does not exist",
                                 param_hint="--gallery-captions")
    if index is not None and not _looks_like_index(index):
        hint = ("; it holds images: index them first, into a folder of its own, e.g. "
                f"`agent-cir index {index} -o {index.name or 'images'}_index`") if _holds_images(index) else ""
        raise typer.BadParameter(f"{index} is not an index folder (no CURRENT or meta.json){hint}",
                                 param_hint="--index")
    has_text = bool(text.strip()) or bool(target_text)
    if not has_text and image is None:
        raise typer.BadParameter("give --text, --image or both", param_hint="--text")
    if config is None and not has_text and mode in ("text", "fusion", "pdv"):
        raise typer.BadParameter(f"--mode {mode} needs a --text (without one, use --mode image)", param_hint="--mode")


def _looks_like_index(folder: Path) -> bool:
    from agent_cir.index.generation import has_index

    return has_index(folder) or (folder / "sharded.json").is_file()


def _holds_images(folder: Path) -> bool:
    suffixes = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
    try:
        return any(entry.suffix.lower() in suffixes for _, entry in zip(range(200), folder.iterdir()))
    except OSError:
        return False


def search_query_id(image: str | None, text: str, target_text: str | None) -> str | None:
    """A query id unique to (image, text, target text): the image's stem for reading, plus a content hash,
    so that two searches with one reference and different texts get two trace pages and two grids."""
    from agent_cir.types import auto_query_id

    digest = auto_query_id(text, image, target_text)
    if not image:
        return digest
    stem = Path(str(image).split("?", 1)[0]).stem or "query"
    return f"{stem}-{digest.removeprefix('q-')}"


def pipeline_options(use_index_encoder: bool) -> dict[str, Any]:
    """Keyword arguments for Pipeline.from_config that this version of it accepts (use_index_encoder is new)."""
    from agent_cir.pipeline import Pipeline

    accepted = inspect.signature(Pipeline.from_config).parameters
    return {"use_index_encoder": use_index_encoder} if "use_index_encoder" in accepted else {}


@app.command("search")
def search(
    index: Optional[Path] = typer.Option(None, "--index", "-i", help="Index folder made by `agent-cir index`."),
    image: Optional[str] = typer.Option(
        None, "--image", help="Reference image: a file, or an http(s) URL (downloaded to a temporary file, at most "
        f"{URL_MAX_BYTES // (1024 * 1024)} MB)."
    ),
    text: str = typer.Option("", "--text", help="Modification text, e.g. 'the same dress but red'."),
    k: Optional[int] = typer.Option(
        None, "--k", "-k", min=1, help=f"How many results (default {DEFAULT_K}, or the recipe's)."
    ),
    mode: Optional[str] = typer.Option(
        None, "--mode", help="text | image | fusion | pdv (default: fusion with --image and --text, image with "
        "--image alone, text with --text alone; or the recipe's)."
    ),
    alpha: Optional[float] = typer.Option(
        None, "--alpha", min=0.0, max=1.0, help="Fusion weight of the text: q = norm((1-a) img + a txt)."
    ),
    config: Optional[str] = typer.Option(
        None, "--config", "-c", help="Recipe: a YAML file or a packaged name (see `agent-cir recipes`)."
    ),
    target_text: Optional[str] = typer.Option(
        None, "--target-text", help="Intervention: use this target description; skips caption and rewrite."
    ),
    gallery_captions: Optional[Path] = typer.Option(
        None, "--gallery-captions", help="JSON of gallery id -> captions to mix into scores."
    ),
    use_index_encoder: bool = typer.Option(
        False, "--use-index-encoder",
        help="Run the index's encoder even when the recipe names another one (instead of stopping with an error).",
    ),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Append the query's trace record to this JSONL."),
    artifacts: Optional[Path] = typer.Option(
        None, "--artifacts", help="Folder for files stages write (grid images). Default: next to --trace; "
        "without --trace none are written."
    ),
    paths_only: bool = typer.Option(
        False, "--paths-only", "-f", help="Print only the result paths, one per line, best first (for pipes, "
        "like rclip -f)."
    ),
    as_json: bool = json_option(),
    quiet: bool = quiet_option(),
) -> None:
    """Answer one composed query: reference image + modification text -> ranked gallery images.

    Results go to stdout; warnings and progress to stderr."""
    with user_errors(as_json):
        check_recipe_name(config)
        validate_search_inputs(index, image, text, target_text, mode, config, gallery_captions)
        with contextlib.ExitStack() as stack:
            stack.enter_context(quiet_library_logs(quiet or as_json or paths_only))
            reference: Path | None = None
            if image is not None:
                reference = stack.enter_context(fetched_reference(image)) if is_url(image) else Path(image)
                check_reference_image(reference, image)
            _search(index, image, reference, text, k, mode, alpha, config, target_text, gallery_captions,
                    use_index_encoder, trace, artifacts, paths_only, as_json, quiet)


def _search(
    index: Path | None, image: str | None, reference: Path | None, text: str, k: int | None, mode: str | None,
    alpha: float | None, config: str | None, target_text: str | None, gallery_captions: Path | None,
    use_index_encoder: bool, trace: Path | None, artifacts: Path | None, paths_only: bool, as_json: bool,
    quiet: bool,
) -> None:
    from agent_cir.pipeline import Pipeline
    from agent_cir.provenance import encoder_provenance, random_weights_warning
    from agent_cir.trace.io import TraceWriter
    from agent_cir.trace.model import EncoderRecord
    from agent_cir.types import Query

    quiet = quiet or paths_only
    has_text = bool(text.strip())
    overrides = build_search_overrides(
        mode, alpha, k, with_recipe=config is not None, has_image=image is not None, has_text=has_text
    )
    recipe: Any = config if config is not None else {"name": "clip-only"}
    if artifacts is None and trace is not None:
        artifacts = trace.parent / f"{trace.stem}_artifacts"
    if config is not None:  # a recipe's models: one Hub check for all of them, not retries per model
        settle_offline_mode(quiet)
    status(f"loading models ({'recipe ' + config if config else 'CLIP only'}) ...", quiet)
    started = time.perf_counter()
    pipeline = Pipeline.from_config(
        recipe, index=index, overrides=overrides, artifacts_dir=artifacts, gallery_captions=gallery_captions,
        **pipeline_options(use_index_encoder),
    )
    status(f"models ready in {time.perf_counter() - started:.1f} s; searching ...", quiet)
    query = Query(
        id=search_query_id(image, text, target_text),
        text=text,
        image=str(reference) if reference else None,
        target_text=target_text,
    )
    result = pipeline.run(query)
    typed = result.trace
    if image is not None and is_url(image):
        # an extra key of the trace: the temporary download is gone after this command; the URL is not
        typed.image = image  # type: ignore[attr-defined]
    encoder = encoder_provenance(pipeline.encoder.info)
    if typed.encoder is None:
        typed.encoder = EncoderRecord.model_validate(encoder)
    if trace is not None:
        with TraceWriter(trace) as writer:
            writer.write(typed)
    grids = _grid_paths(typed)
    retrieve = typed.stage("retrieve")
    stats = pipeline.stats
    ordered_by, rows = ranking_rows(result, pipeline.recipe)
    if as_json:
        echo_json(
            {
                "query": {"id": query.id, "image": image, "text": query.text, "target_text": target_text},
                "recipe": pipeline.recipe.name,
                "encoder": encoder,
                "mode": retrieve.output.mode if retrieve is not None else None,
                "target_descriptions": typed.target_descriptions,
                "query_texts": retrieve.output.query_texts if retrieve is not None else [],
                "description_source": typed.description_source,
                "ordered_by": ordered_by,
                "results": rows,
                "grids": grids,
                "trace": str(trace) if trace else None,
                "model_calls": stats["model_calls"],
                "cache_hits": stats["cache_hits"],
            }
        )
        return
    warning = random_weights_warning(pipeline.encoder.info)
    if warning:
        warn(warning)
    if paths_only:
        for row in rows:
            echo(row["path"])
        return
    descriptions = typed.target_descriptions
    if descriptions:
        echo(f"target description ({typed.description_source}): {descriptions[0]}")
    for line in format_ranking(ordered_by, rows):
        echo(line)
    for grid in grids:
        echo(f"judge grid: {grid}")
    if trace is not None:
        echo(f"trace: {trace}")
    if stats["model_calls"] or stats["cache_hits"]:  # a CLIP-only search calls no model: nothing to report
        status(f"model calls: {stats['model_calls']} (cache hits: {stats['cache_hits']})", quiet)


def _grid_paths(trace: Any) -> list[str]:
    """Grid images the rerank stage saved (``trace`` is an ``agent_cir.trace.model.Trace``)."""
    rerank = trace.stage("rerank")
    return [grid.path for grid in rerank.output.grids if grid.path] if rerank is not None else []
