"""``agent-cir index``: embed an image folder into a gallery index (incremental on re-runs)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from agent_cir.index.faiss_io import INDEX_TYPE_GUIDE, with_refine

from agent_cir.cli._app import app
from agent_cir.cli._common import (
    echo,
    echo_json,
    json_option,
    out_option,
    quiet_library_logs,
    quiet_option,
    status,
    terminal_safe,
    user_errors,
    warn,
)

_DEFAULTS = {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}


def format_summary(summary_dict: dict, out: Path) -> str:
    skipped = summary_dict["skipped"]
    skipped_text = (
        ", ".join(f"{count} {reason}" for reason, count in skipped.items()) if skipped else "none"
    )
    lines = [
        f"index: {terminal_safe(out)}",
        f"  images in index: {summary_dict['total']}",
        f"  encoded now:     {summary_dict['indexed']} ({summary_dict['images_per_second']:.1f} images/s)",
        f"  reused:          {summary_dict['reused']}",
        f"  removed:         {summary_dict['removed']}",
        f"  skipped:         {summary_dict['skipped_total']} ({skipped_text}; reasons per file in manifest.jsonl)",
        f"  time:            {summary_dict['seconds']:.1f} s",
    ]
    lines += [f"  note:            {terminal_safe(note)}" for note in summary_dict.get("notes") or []]
    return "\n".join(lines)


ENCODER_FLAGS = ("model", "pretrained", "backend", "precision", "preprocess", "target_ratio", "normalize")
"""The options that choose the encoder: an update of an index reuses the recorded ones unless one is given."""


class RecordedEncoder:
    """The encoder an index recorded, loaded only when a file needs encoding: an update with nothing new or
    changed never loads the model (rclip's rerun). Once loaded, its identity must match the record."""

    def __init__(self, meta: dict, device: str, batch_size: int) -> None:
        self.info = dict(meta["encoder"])
        self.dim = int(meta.get("dim") or self.info.get("dim") or 0)
        self.batch_size = batch_size
        self._meta = meta
        self._device = device
        self._loaded = None

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image", "text")

    def _load(self):
        if self._loaded is None:
            from agent_cir.encoders import create_encoder
            from agent_cir.index.build import check_same_encoder
            from agent_cir.index.encoder_meta import encoder_config_from_meta

            config = encoder_config_from_meta(self._meta, device=self._device)
            config.batch_size = self.batch_size
            encoder = create_encoder(config)
            check_same_encoder(self.info, encoder.info, Path("."))
            self._loaded = encoder
        return self._loaded

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._load(), name)


def recorded_index_meta(out: Path) -> dict | None:
    """meta.json of the index in ``out`` (its current generation), or None when ``out`` holds no index."""
    from agent_cir.index.generation import has_index, open_generation

    from agent_cir.errors import AgentCirError

    if not out.is_dir() or not has_index(out):
        return None
    try:
        meta = open_generation(out).meta
    except AgentCirError:
        return None  # a damaged index: the build itself says what is wrong (and a rerun repairs it)
    return meta if isinstance(meta, dict) and isinstance(meta.get("encoder"), dict) else None


def check_out_path(out: Path) -> None:
    """Fail before any model loads when --out cannot be an index folder."""
    from agent_cir.errors import AgentCirError

    if out.exists() and not out.is_dir():
        raise AgentCirError(f"--out {out} is a file, expected a folder: give a new folder (or an index folder) for the index")


def check_images_dir(images_dir: Path) -> None:
    """Fail before any model loads when the folder to index is not there."""
    from agent_cir.errors import AgentCirError

    if not images_dir.exists():
        raise AgentCirError(f"images folder {images_dir} does not exist; give the folder of images to index")
    if images_dir.is_file():
        raise AgentCirError(f"{images_dir} is a file, expected a folder of images (a list of files needs "
                            "--input-format list)")
    if not images_dir.is_dir():
        raise AgentCirError(f"{images_dir} is a file, not a folder; give the folder of images to index")


def run_index(
    images_dir: Path,
    out: Path,
    model: str = _DEFAULTS["model"],
    pretrained: Optional[str] = _DEFAULTS["pretrained"],
    backend: str = "open_clip",
    batch_size: int = 64,
    workers: Optional[int] = None,
    index_type: str = "Flat",
    device: str = "cpu",
    precision: str = "fp32",
    progress: bool = True,
    follow_symlinks: bool = False,
    wait: bool = False,
    preprocess: str = "center_crop",
    target_ratio: float = 1.25,
    normalize: str = "model",
    files: Optional[list[str]] = None,
    engine: str = "local",
    engine_options: Optional[dict] = None,
    encoder=None,
    twins=None,
):
    """What ``agent-cir index`` does, callable from Python (the benchmark uses it): returns the GalleryIndex.

    ``files``: index only these (relative to ``images_dir``); ``engine``/``engine_options``: see index/encode.py;
    ``encoder``: an encoder object to use instead of the one the options describe; ``twins``: a ``TwinsRequest``
    (synthetic twins drawn after the build)."""
    from agent_cir.config import EncoderConfig
    from agent_cir.encoders import create_encoder
    from agent_cir.index import GalleryIndex
    from agent_cir.index.out_folder import check_out_folder

    check_out_folder(out, images_dir)  # before the model loads: never write into a user's folder or the gallery
    config = EncoderConfig(
        backend=backend,  # type: ignore[arg-type]
        model=model,
        pretrained=pretrained if backend == "open_clip" else None,
        device=device,
        precision=precision,  # type: ignore[arg-type]
        batch_size=batch_size,
        preprocess=preprocess,  # type: ignore[arg-type]
        target_ratio=target_ratio,
        normalize=normalize,  # type: ignore[arg-type]
    )
    if encoder is None:
        encoder = create_encoder(config)
    return GalleryIndex.build(
        images_dir,
        out,
        encoder,
        batch_size=batch_size,
        workers=workers,
        index_type=index_type,
        progress=progress,
        follow_symlinks=follow_symlinks,
        wait=wait,
        files=files,
        engine=engine,
        engine_options=engine_options,
        twins=twins,
    )


def twins_from_options(config: str, assignments: list[str]):
    """The ``TwinsRequest`` of ``--twins-config`` with its ``--twins-set`` overrides (fails before any model loads
    when the recipe, its captioner or the image backend's package is missing)."""
    from agent_cir.cli._common import check_recipe_name
    from agent_cir.cli.eval_cmd import parse_assignments
    from agent_cir.config import load_recipe
    from agent_cir.index.twins import twins_request_from_recipe

    check_recipe_name(config)
    return twins_request_from_recipe(load_recipe(config, parse_assignments(assignments)))


def click_default_source():
    """click's ParameterSource.DEFAULT (newer typer vendors click: take it from typer's own copy)."""
    try:
        from typer._click.core import ParameterSource  # type: ignore[import-not-found]
    except ImportError:
        from click.core import ParameterSource
    return ParameterSource.DEFAULT


def ray_options(address: Optional[str], concurrency: int, num_cpus_per_actor: float, num_gpus_per_actor: float) -> dict:
    """The ray engine's options from the command line (defaults left to the engine)."""
    return {
        "address": address,
        "concurrency": concurrency,
        "num_cpus_per_actor": num_cpus_per_actor,
        "num_gpus_per_actor": num_gpus_per_actor,
    }


def resolve_gallery(source: Path, input_format: str, root: Optional[Path]) -> tuple[Path, Optional[list[str]]]:
    """(folder to index, listed files or None) for IMAGES and --input-format; fails before any model loads."""
    from agent_cir.errors import AgentCirError

    if input_format == "folder":
        if root is not None:
            raise AgentCirError("--root is for --input-format list or parquet; with a folder, the folder is the root")
        check_images_dir(source)
        return source, None
    if input_format not in ("list", "parquet"):
        raise AgentCirError(f"--input-format must be folder, list or parquet, got {input_format!r}")
    from agent_cir.index.inputs import listed_gallery

    return listed_gallery(source, input_format, root)


@app.command("index")
def index_command(
    ctx: typer.Context,
    images_dir: Path = typer.Argument(
        ...,
        metavar="IMAGES",
        help="Folder of images, scanned recursively (jpg jpeg png webp bmp gif); with --input-format list/parquet, "
        "the file listing them.",
    ),
    out: Path = out_option("Index folder to create or update."),
    model: str = typer.Option(
        _DEFAULTS["model"], "--model", help="open_clip architecture or model JSON config; hf: hub id or local folder."
    ),
    pretrained: str = typer.Option(
        _DEFAULTS["pretrained"],
        "--pretrained",
        help="open_clip weights: pretrained tag, hf-hub:org/name, local checkpoint file or folder, or 'none'.",
    ),
    backend: str = typer.Option("open_clip", "--backend", help="open_clip or hf (transformers CLIP/SigLIP)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per encoder batch."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=0, help="Decode worker processes (default: half the cores; 0 = decode in-process)."
    ),
    index_type: str = typer.Option("Flat", "--index-type", help="faiss index_factory string. " + INDEX_TYPE_GUIDE),
    refine: bool = typer.Option(
        False, "--refine", help="Re-score the compressed index's short list (4 x k) with the exact vectors (faiss RFlat)."
    ),
    device: str = typer.Option("cpu", "--device", help="torch device for the encoder (cpu, cuda, cuda:1, mps)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 or bf16."),
    preprocess: str = typer.Option(
        "center_crop", "--preprocess", help="center_crop (the model's own) or targetpad (CIReVL / SEARLE)."
    ),
    target_ratio: float = typer.Option(1.25, "--target-ratio", min=1.0, help="targetpad: long / short side ratio."),
    normalize: str = typer.Option(
        "model", "--normalize", help="model (the weights' own mean/std) or openai (OpenAI CLIP's, as CIReVL / WeiMoCIR)."
    ),
    json_output: bool = json_option("Print the summary as one JSON object (errors too: {\"error\": ...})."),
    quiet: bool = quiet_option(),
    follow_symlinks: bool = typer.Option(
        False, "--follow-symlinks", help="Also index file symlinks that point outside IMAGES_DIR (regular files only)."
    ),
    wait: bool = typer.Option(False, "--wait", help="If another `agent-cir index` is writing --out, wait for it instead of failing."),
    input_format: str = typer.Option(
        "folder", "--input-format", help="folder (IMAGES is a folder), list (a text file, one path per line) or "
        "parquet (a Parquet file with a 'path' column)."
    ),
    root: Optional[Path] = typer.Option(
        None, "--root", help="list/parquet: the folder gallery ids are relative to (default: the list file's folder)."
    ),
    engine: str = typer.Option("local", "--engine", help="local (this process + decode workers) or ray (Ray Data; extra \\[ray])."),
    address: Optional[str] = typer.Option(
        None, "--address", help="ray: join this cluster (auto, HOST:PORT, ray://HOST:10001); default: start a local one."
    ),
    concurrency: int = typer.Option(1, "--concurrency", min=1, help="ray: encoder actors."),
    num_cpus_per_actor: float = typer.Option(1.0, "--num-cpus-per-actor", min=0.0, help="ray: CPUs each encoder actor reserves."),
    num_gpus_per_actor: float = typer.Option(
        0.0, "--num-gpus-per-actor", min=0.0, help="ray: GPUs each encoder actor reserves (> 0 encodes on cuda)."
    ),
    twins: bool = typer.Option(
        False, "--twins", help="Also draw each image's synthetic twin (Paracosm: caption -> text-to-image), embedded "
        "beside the index for retrieve.gallery_twins; resumable (finished twins are kept). Needs the extra \\[edit]."
    ),
    twins_config: str = typer.Option(
        "paracosm", "--twins-config", help="--twins: recipe whose imagine: section is the image model and its settings "
        "and whose caption.model (under models:) is the captioner."
    ),
    twins_assignments: Optional[List[str]] = typer.Option(
        None, "--twins-set", help="--twins: override in that recipe, KEY=VALUE, repeatable (e.g. --twins-set "
        "imagine.model=diffusers:Qwen/Qwen-Image --twins-set imagine.steps=30)."
    ),
) -> None:
    """Embed every image of IMAGES (a folder, or a list of files) into --out; re-runs encode only new or changed files."""
    from agent_cir.errors import AgentCirError

    with user_errors(json_output):
        if backend not in ("open_clip", "hf"):
            raise AgentCirError(f"--backend must be open_clip or hf, got {backend!r}")
        if precision not in ("fp32", "fp16", "bf16"):
            raise AgentCirError(f"--precision must be fp32, fp16 or bf16, got {precision!r}")
        if preprocess not in ("center_crop", "targetpad"):
            raise AgentCirError(f"--preprocess must be center_crop or targetpad, got {preprocess!r}")
        if normalize not in ("model", "openai"):
            raise AgentCirError(f"--normalize must be model or openai, got {normalize!r}")
        if engine not in ("local", "ray"):
            raise AgentCirError(f"--engine must be local or ray, got {engine!r}")
        ray_given = address is not None or concurrency != 1 or num_cpus_per_actor != 1.0 or num_gpus_per_actor != 0.0
        if engine == "local" and ray_given:
            raise AgentCirError("--address, --concurrency, --num-cpus-per-actor and --num-gpus-per-actor need --engine ray")
        if engine == "ray":
            from agent_cir.index.ray_engine import require_ray

            require_ray()
        twins_given = [flag for flag, name in (("--twins-config", "twins_config"), ("--twins-set", "twins_assignments"))
                       if ctx.get_parameter_source(name) not in (None, click_default_source())]
        if twins_given and not twins:
            raise AgentCirError(f"{' and '.join(twins_given)} choose how twins are drawn: add --twins")
        check_out_path(out)
        gallery, files = resolve_gallery(images_dir, input_format, root)
        twins_request = twins_from_options(twins_config, twins_assignments or []) if twins else None
        given = [name for name in ENCODER_FLAGS
                 if ctx.get_parameter_source(name) not in (None, click_default_source())]
        meta = recorded_index_meta(out)
        recorded = None
        if meta is not None and not given:
            recorded = RecordedEncoder(meta, device, batch_size)
            status(f"updating {out} with its recorded encoder ({recorded.info.get('backend')} "
                   f"{recorded.info.get('model')} / {recorded.info.get('pretrained')}); it loads only if a file "
                   "is new or changed ...", quiet or json_output)
        else:
            status(f"loading encoder {backend} {model} / {pretrained} ...", quiet or json_output)
        with quiet_library_logs(quiet or json_output):
            index = run_index(
                gallery,
                out,
                model=model,
                pretrained=pretrained,
                backend=backend,
                batch_size=batch_size,
                workers=workers,
                index_type=with_refine(index_type) if refine else index_type,
                device=device,
                precision=precision,
                progress=not quiet,
                follow_symlinks=follow_symlinks,
                wait=wait,
                preprocess=preprocess,
                target_ratio=target_ratio,
                normalize=normalize,
                files=files,
                engine=engine,
                engine_options=ray_options(address, concurrency, num_cpus_per_actor, num_gpus_per_actor) if engine == "ray" else None,
                encoder=recorded,
                twins=twins_request,
            )
        from agent_cir.provenance import encoder_provenance, random_weights_warning

        summary = index.build_summary.to_dict()
        encoder_info = dict(index.meta.get("encoder") or {}) if isinstance(getattr(index, "meta", None), dict) else {}
        if json_output:
            echo_json({"index": str(out), **summary, "engine": engine, "encoder": encoder_provenance(encoder_info)})
        else:
            warning = random_weights_warning(encoder_info) if encoder_info else None
            if warning:
                warn(warning)
            for line in format_summary(summary, out).splitlines():
                echo(line)
