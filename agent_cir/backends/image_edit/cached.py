"""``edit_image``: one cached, traced image edit. The imagine stage and the gallery twins call it.

The cache key is the model-output cache's (``agent_cir.cache.ModelCache``), built from the backend's ``info``
(backend, model), the prompt template's hash, the rendered instruction, the reference's sha256, the seed and
every other setting (``EditRequest.settings``). The value names the picture by its sha256; the picture itself is
a PNG in ``<cache file>.images/<sha256>.png``, written atomically (a new file, then a rename). Content-addressed,
so two writers of one key write the same bytes. A value whose file is missing or does not hash to its name is
damaged: a miss, computed again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_cir.atomic import write_bytes_atomic
from agent_cir.backends.image_edit.base import EditRequest, ImageEditError, ImageEditor
from agent_cir.cache import ModelCache
from agent_cir.hashing import bytes_hash
from agent_cir.redact import redact_secrets
from agent_cir.types import ModelCall


def images_folder(cache: ModelCache) -> Path:
    """Where the cache keeps its pictures: beside the SQLite file."""
    return cache.path.with_name(cache.path.name + ".images")


@dataclass
class EditOutcome:
    png: bytes
    sha256: str
    call: ModelCall


def edit_cache_key(editor: ImageEditor, request: EditRequest, prompt_hash: str) -> str:
    reference = bytes_hash(request.reference) if request.reference is not None else None
    # Secrets (a header in ``extra``) never reach a key or a trace: they do not change the picture.
    return ModelCache.make_key(kind="image_edit", backend=editor.info, prompt_hash=prompt_hash,
                               prompt=request.prompt, reference=reference, settings=redact_secrets(request.settings()))


def _stored(folder: Path, value: dict[str, Any]) -> bytes | None:
    digest = value.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        return None
    try:
        data = (folder / f"{digest}.png").read_bytes()
    except OSError:
        return None
    return data if bytes_hash(data) == digest else None


def edit_image(editor: ImageEditor, request: EditRequest, *, prompt_name: str, prompt_hash: str,
               cache: ModelCache | None = None) -> EditOutcome:
    """The picture for ``request``: from the cache when it holds it, else from ``editor`` (then stored)."""
    info = editor.info
    reference = bytes_hash(request.reference) if request.reference is not None else None

    def record(sha256: str, status: str, seconds: float) -> ModelCall:
        return ModelCall(backend=str(info.get("backend", "")), model=str(info.get("model", "")),
                         prompt_name=prompt_name, prompt_hash=prompt_hash, raw=f"image sha256:{sha256}",
                         cache=status, seconds=round(seconds, 4), prompt=request.prompt,  # type: ignore[arg-type]
                         images=[reference] if reference else [], params=redact_secrets(request.settings()))

    started = time.perf_counter()
    key = edit_cache_key(editor, request, prompt_hash) if cache is not None else None
    if cache is not None and key is not None:
        folder = images_folder(cache)
        stored: dict[str, bytes] = {}

        def usable(value: dict[str, Any]) -> bool:
            data = _stored(folder, value)
            if data is not None:
                stored["png"] = data
            return data is not None

        value, _status = cache.lookup(key, usable)
        if value is not None:
            return EditOutcome(stored["png"], value["sha256"], record(value["sha256"], "hit",
                                                                       time.perf_counter() - started))
    try:
        png = editor.edit(request)
    except ImageEditError:
        raise
    except Exception as err:  # noqa: BLE001 - a backend's own failure, named with the model
        detail = " ".join(str(err).split())[:300] or type(err).__name__
        raise ImageEditError(f"{editor.spec}: the edit failed ({type(err).__name__}: {detail})") from err
    seconds = time.perf_counter() - started
    sha256 = bytes_hash(png)
    if cache is not None and key is not None:
        folder = images_folder(cache)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{sha256}.png"
        if not target.is_file():
            write_bytes_atomic(target, png)
        cache.put(key, {"sha256": sha256, "bytes": len(png), "model": info.get("model"), "seconds": round(seconds, 4)})
    return EditOutcome(png, sha256, record(sha256, "miss" if cache is not None else "off", seconds))
