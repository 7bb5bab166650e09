"""What a run records about where its numbers came from: package versions, the source checkout, prompts, models."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from agent_cir.config import Recipe, redact_secrets
from agent_cir.hashing import text_hash

PACKAGES = (
    "agent-cir", "numpy", "torch", "open_clip_torch", "transformers", "sentence-transformers", "faiss-cpu",
    "langchain-core", "langchain-openai", "langchain-ollama", "langchain-huggingface", "pillow", "pydantic",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state() -> dict[str, Any] | None:
    """Commit of the source checkout agent_cir runs from (None for an installed wheel)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def prompt_hashes(recipe: Recipe) -> dict[str, dict[str, str]]:
    """Name and sha256 of every template an enabled stage renders (read from disk now: an edited file shows)."""
    from agent_cir.prompts import load_prompt

    hashes = {}
    for stage in recipe.model_stages():
        config = getattr(recipe, stage)
        names = [config.prompt]
        if stage == "rerank":
            from agent_cir.rerank.judges import judge_prompt_name

            names = [judge_prompt_name(config)]
        if stage == "verify":
            from agent_cir.stages.verify import verify_prompt_name

            names = [verify_prompt_name(config)]
        template = load_prompt(names[0])
        # Hash the file as it is now: a long-lived process may hold a template read before it was edited.
        current = text_hash(Path(template.path).read_text(encoding="utf-8"))
        hashes[stage] = {"name": template.name, "path": str(template.path), "hash": current}
    if recipe.imagine.enabled:  # the edit instruction (and the edited image's description) are prompts too
        extra = {"imagine": recipe.imagine.prompt}
        if recipe.imagine.describe_model:
            extra["imagine_describe"] = "imagine_describe"
        for stage, name in extra.items():
            template = load_prompt(name)
            current = text_hash(Path(template.path).read_text(encoding="utf-8"))
            hashes[stage] = {"name": template.name, "path": str(template.path), "hash": current}
    return hashes


def models_used(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """The chat models the enabled stages call, without secrets."""
    used = {}
    for stage in recipe.model_stages():
        config = getattr(recipe, stage)
        if config.enabled:
            model = recipe.models[config.model]
            used[config.model] = {
                "spec": model.spec, "base_url": redact_secrets(model.base_url), "gguf_file": model.gguf_file,
                "quantization": model.quantization, "temperature": model.temperature, "seed": model.seed,
            }
    return used


def environment() -> dict[str, Any]:
    return {
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git": git_state(),
    }
