"""``agent-cir index``: embed an image folder into a gallery index (incremental on re-runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agent_cir.index.faiss_io import INDEX_TYPE_GUIDE, with_refine

from agent_cir.cli import app
from agent_cir.cli._common import echo_json, json_option, out_option, quiet_option, status, user_errors

_DEFAULTS = {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}


def format_summary(summary_dict: dict, out: Path) -> str:
    skipped = summary_dict["skipped"]
    skipped_text = (
        ", ".join(f"{count} {reason}" for reason, count in skipped.items()) if skipped else "none"
    )
    lines = [
        f"index: {out}",
        f"  images in index: {summary_dict['total']}",
        f"  encoded now:     {summary_dict['indexed']} ({summary_dict['images_per_second']:.1f} images/s)",
        f"  reused:          {summary_dict['reused']}",
        f"  removed:         {summary_dict['removed']}",
        f"  skipped:         {summary_dict['skipped_total']} ({skipped_text}; reasons per file in manifest.jsonl)",
        f"  time:            {summary_dict['seconds']:.1f} s",
    ]
    return "\n".join(lines)


def check_images_dir(images_dir: Path) -> None:
    """Fail before any model loads when the folder to index is not there."""
    from agent_cir.errors import AgentCirError

    if not images_dir.exists():
        raise AgentCirError(f"images folder {images_dir} does not exist; give the folder of images to index")
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
):
    """What ``agent-cir index`` does, callable from Python (the benchmark uses it): returns the GalleryIndex."""
    from agent_cir.config import EncoderConfig
    from agent_cir.encoders import create_encoder
    from agent_cir.index import GalleryIndex

    config = EncoderConfig(
        backend=backend,  # type: ignore[arg-type]
        model=model,
        pretrained=pretrained if backend == "open_clip" else None,
        device=device,
        precision=precision,  # type: ignore[arg-type]
        batch_size=batch_size,
        preprocess=preprocess,  # type: ignore[arg-type]
        target_ratio=target_ratio,
    )
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
    )


@app.command("index")
def index_command(
    images_dir: Path = typer.Argument(..., help="Folder of images, scanned recursively (jpg jpeg png webp bmp gif)."),
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
    json_output: bool = json_option("Print the summary as one JSON object (errors too: {\"error\": ...})."),
    quiet: bool = quiet_option(),
    follow_symlinks: bool = typer.Option(
        False, "--follow-symlinks", help="Also index file symlinks that point outside IMAGES_DIR (regular files only)."
    ),
    wait: bool = typer.Option(False, "--wait", help="If another `agent-cir index` is writing --out, wait for it instead of failing."),
) -> None:
    """Embed every image of IMAGES_DIR into INDEX_DIR; re-runs encode only new or changed files."""
    from agent_cir.errors import AgentCirError

    with user_errors(json_output):
        if backend not in ("open_clip", "hf"):
            raise AgentCirError(f"--backend must be open_clip or hf, got {backend!r}")
        if precision not in ("fp32", "fp16", "bf16"):
            raise AgentCirError(f"--precision must be fp32, fp16 or bf16, got {precision!r}")
        if preprocess not in ("center_crop", "targetpad"):
            raise AgentCirError(f"--preprocess must be center_crop or targetpad, got {preprocess!r}")
        check_images_dir(images_dir)
        status(f"loading encoder {backend} {model} / {pretrained} ...", quiet or json_output)
        index = run_index(
            images_dir,
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
        )
        from agent_cir.provenance import encoder_provenance, random_weights_warning

        summary = index.build_summary.to_dict()
        encoder_info = dict(index.meta.get("encoder") or {}) if isinstance(getattr(index, "meta", None), dict) else {}
        if json_output:
            echo_json({"index": str(out), **summary, "encoder": encoder_provenance(encoder_info)})
        else:
            warning = random_weights_warning(encoder_info) if encoder_info else None
            if warning:
                typer.secho(warning, fg=typer.colors.YELLOW)
            typer.echo(format_summary(summary, out))
