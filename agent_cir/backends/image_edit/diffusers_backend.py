"""``diffusers:ID_OR_PATH``: any diffusers image-to-image or instruction-editing pipeline, in process.

The pipeline is loaded once, on the first edit, with ``DiffusionPipeline.from_pretrained`` (the class comes from
the model's ``model_index.json``: InstructPix2Pix, img2img, FLUX Kontext, Qwen-Image-Edit ...). Only the call
arguments the pipeline's ``__call__`` takes are passed (``image_guidance_scale`` to InstructPix2Pix, ``strength``
to img2img, ``true_cfg_scale`` to Qwen-Image), so one recipe section drives them all. The generator is a CPU
``torch.Generator`` seeded per call: the same seed gives the same picture on every device type's CPU path and
is independent of earlier calls.

Text-only requests (no reference) run the same weights as a text-to-image pipeline
(``AutoPipelineForText2Image.from_pipe``), or the pipeline itself when it takes no image.
"""

from __future__ import annotations

import inspect
import io
import threading
from typing import Any

from agent_cir.backends.image_edit.base import EditRequest, ImageEditError

_EXTRA = "pip install 'agent-cir[edit]' (from a clone: pip install -c requirements/constraints.txt -e '.[edit]')"


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError as err:
        raise ImageEditError(f"the diffusers backend needs the optional package 'diffusers' (extra `edit`): {_EXTRA}") from err
    return diffusers


def _accepts(pipe: Any) -> set[str]:
    parameters = inspect.signature(pipe.__call__).parameters
    return {name for name, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _takes_image(pipe: Any) -> bool:
    return "image" in _accepts(pipe)


class DiffusersEditor:
    def __init__(self, model: str, *, dtype: str | None = None, device: str | None = None,
                 device_map: str | None = None, cpu_offload: str | None = None) -> None:
        self.model = model
        self.spec = f"diffusers:{model}"
        self.dtype = dtype
        self.device = device
        self.device_map = device_map
        self.cpu_offload = cpu_offload
        self._lock = threading.Lock()
        self._pipe: Any = None
        self._text_pipe: Any = None
        self.loads = 0
        """How many times weights were loaded (once per editor)."""

    @property
    def info(self) -> dict[str, Any]:
        return {"backend": "diffusers", "model": self.model, "dtype": self.dtype}

    # ---------- loading ----------
    def _load(self) -> Any:
        diffusers = _diffusers()
        import torch

        kwargs: dict[str, Any] = {}
        if self.dtype:
            kwargs["torch_dtype"] = getattr(torch, self.dtype)
        if self.device_map:
            kwargs["device_map"] = self.device_map
        try:
            pipe = diffusers.DiffusionPipeline.from_pretrained(self.model, **kwargs)
        except (OSError, ValueError, EnvironmentError) as err:
            raise ImageEditError(
                f"diffusers model {self.model!r} cannot be loaded ({' '.join(str(err).split())[:300]}); give a "
                "Hugging Face id the machine can download (or has in its cache, with HF_HUB_OFFLINE=1) or the path "
                "of a folder saved with save_pretrained (it holds model_index.json)"
            ) from err
        if self.cpu_offload == "model":
            pipe.enable_model_cpu_offload()
        elif self.cpu_offload == "sequential":
            pipe.enable_sequential_cpu_offload()
        elif not self.device_map:
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        self.loads += 1
        return pipe

    def _pipeline(self, text_only: bool) -> Any:
        with self._lock:
            if self._pipe is None:
                self._pipe = self._load()
            if not text_only or not _takes_image(self._pipe):
                return self._pipe
            if self._text_pipe is None:
                try:
                    self._text_pipe = _diffusers().AutoPipelineForText2Image.from_pipe(self._pipe)
                except (ValueError, KeyError) as err:
                    raise ImageEditError(
                        f"diffusers model {self.model!r} ({type(self._pipe).__name__}) edits images and has no "
                        "text-to-image form; a text-only request (gallery twins) needs a text-to-image model "
                        "(e.g. diffusers:stabilityai/sdxl-turbo)"
                    ) from err
                self._text_pipe.set_progress_bar_config(disable=True)
            return self._text_pipe

    # ---------- one edit ----------
    def _arguments(self, pipe: Any, request: EditRequest) -> dict[str, Any]:
        import torch
        from PIL import Image

        accepts = _accepts(pipe)
        call: dict[str, Any] = {"prompt": request.prompt, "num_inference_steps": request.steps,
                                "generator": torch.Generator(device="cpu").manual_seed(request.seed)}
        if request.reference is not None:
            with Image.open(io.BytesIO(request.reference)) as opened:
                picture = opened.convert("RGB")
            if request.size:
                picture = picture.resize((request.size, request.size), Image.Resampling.BICUBIC)
            call["image"] = picture
        optional = {
            "guidance_scale": request.guidance, "true_cfg_scale": request.guidance,
            "image_guidance_scale": request.image_guidance, "strength": request.strength,
            "negative_prompt": request.negative_prompt,
            "height": request.size, "width": request.size,
        }
        call.update({name: value for name, value in optional.items() if value is not None and name in accepts})
        unknown = sorted(set(request.extra) - accepts)
        if unknown:
            raise ImageEditError(
                f"imagine.extra has {', '.join(unknown)}, which {type(pipe).__name__} does not take; its arguments: "
                f"{', '.join(sorted(accepts))}"
            )
        call.update(request.extra)
        return call

    def edit(self, request: EditRequest) -> bytes:
        import torch

        pipe = self._pipeline(text_only=request.reference is None)
        call = self._arguments(pipe, request)
        with torch.inference_mode():
            output = pipe(**call)
        images = getattr(output, "images", None)
        if not images:
            raise ImageEditError(f"diffusers model {self.model!r} returned no image")
        buffer = io.BytesIO()
        images[0].convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue()
