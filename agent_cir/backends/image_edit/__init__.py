"""Image-edit backends: a spec string -> an ``ImageEditor`` that turns (reference image, instruction) into an image.

One interface (:class:`ImageEditor`): ``spec``, ``info`` (what a cache key and a trace record name) and
``edit(request) -> PNG bytes``. With ``request.reference`` None the backend generates from the text alone
(the synthetic gallery twins of ``agent_cir.index.twins``).

Specs (``IMAGE_EDIT_BACKENDS``, extend with :func:`register_image_edit_backend`):

- ``diffusers:ID_OR_PATH``: any diffusers image-to-image or instruction-editing pipeline, in process
  (``diffusers_backend.py``: InstructPix2Pix, FLUX Kontext, Qwen-Image-Edit ...), loaded with
  ``DiffusionPipeline.from_pretrained``; dtype, device / device_map and CPU offload from the recipe.
- ``openai-images:MODEL``: an OpenAI-compatible images endpoint (``openai_images.py``): ``images.edit`` with
  the reference, the answer as ``b64_json``.

``cached.py`` is the one cached call (``edit_image``): the model-output cache keys it by (backend, model, prompt
hash, instruction, reference hash, seed, settings) and the picture is stored as a content-addressed PNG beside
the cache file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent_cir.backends.image_edit.base import EditRequest, ImageEditError, ImageEditor


EditorFactory = Callable[[str, Any], ImageEditor]
"""(model part of the spec, the ImagineConfig-like settings) -> an editor."""


def _diffusers(model: str, config: Any) -> ImageEditor:
    from agent_cir.backends.image_edit.diffusers_backend import DiffusersEditor

    return DiffusersEditor(model, dtype=getattr(config, "dtype", None), device=getattr(config, "device", None),
                           device_map=getattr(config, "device_map", None),
                           cpu_offload=getattr(config, "cpu_offload", None))


def _openai_images(model: str, config: Any) -> ImageEditor:
    from agent_cir.backends.image_edit.openai_images import OpenAIImagesEditor

    return OpenAIImagesEditor(model, base_url=getattr(config, "base_url", None),
                              api_key_env=getattr(config, "api_key_env", None),
                              timeout=float(getattr(config, "timeout", 300.0)))


IMAGE_EDIT_BACKENDS: dict[str, EditorFactory] = {"diffusers": _diffusers, "openai-images": _openai_images}
"""Spec prefix -> factory."""


def register_image_edit_backend(prefix: str, factory: EditorFactory) -> None:
    """Make ``PREFIX:MODEL`` specs build editors with ``factory(model, config)``."""
    if not prefix or ":" in prefix:
        raise ValueError(f"an image-edit backend prefix must be a non-empty word without ':', got {prefix!r}")
    IMAGE_EDIT_BACKENDS[prefix] = factory


def parse_edit_spec(spec: str) -> tuple[str, str]:
    provider, sep, model = str(spec).partition(":")
    if not sep or not model.strip() or provider not in IMAGE_EDIT_BACKENDS:
        known = ", ".join(f"{name}:MODEL" for name in sorted(IMAGE_EDIT_BACKENDS))
        raise ImageEditError(f"image-edit model spec {spec!r} is not one of {known}; set imagine.model, e.g. "
                             "'diffusers:timbrooks/instruct-pix2pix' or 'openai-images:gpt-image-1'")
    return provider, model.strip()


def create_image_editor(config: Any) -> ImageEditor:
    """The editor an ``ImagineConfig`` (or any object with ``model`` and the backend settings) names."""
    provider, model = parse_edit_spec(config.model)
    return IMAGE_EDIT_BACKENDS[provider](model, config)


def request_from_config(config: Any, prompt: str, reference: bytes | None) -> EditRequest:
    """An :class:`EditRequest` with the recipe's settings (``imagine:`` or the twins' settings)."""
    return EditRequest(prompt=prompt, reference=reference, seed=int(config.seed), steps=int(config.steps),
                       guidance=float(config.guidance), image_guidance=config.image_guidance,
                       strength=config.strength, negative_prompt=config.negative_prompt, size=config.size,
                       extra=dict(config.extra))


__all__ = [
    "IMAGE_EDIT_BACKENDS",
    "EditRequest",
    "ImageEditError",
    "ImageEditor",
    "create_image_editor",
    "parse_edit_spec",
    "register_image_edit_backend",
    "request_from_config",
]
