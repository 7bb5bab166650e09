"""Imagine stage: the reference image edited into a picture of the target (WISER's I2I path, Paracosm's mental
image), through an image-edit backend (``agent_cir.backends.image_edit``).

The instruction is ``prompts/imagine.j2`` rendered with the modification text, or the rewritten target
description (``imagine.source: description``). The edit is cached like every model call (``edit_image``), the
picture kept as the query's artifact (``<artifacts_dir>/imagine.png``) and on the state for the dual retrieval.
With ``imagine.describe_model`` a VLM describes the picture in one sentence (Paracosm's mental-image
description, ``prompts/imagine_describe.j2``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_cir.atomic import write_bytes_atomic
from agent_cir.backends import invoke
from agent_cir.backends.image_edit import ImageEditor, request_from_config
from agent_cir.backends.image_edit.cached import edit_image
from agent_cir.config import ImagineConfig
from agent_cir.errors import AgentCirError
from agent_cir.parsing import parse_caption
from agent_cir.prompts import load_prompt
from agent_cir.trace.outputs import ImagineOutput
from agent_cir.types import QueryState, StageRecord

ARTIFACT_NAME = "imagine.png"


class ImagineInputError(AgentCirError):
    """A query the imagine stage cannot edit (no reference image, an unreadable one, an empty instruction)."""


@dataclass
class EditedImage:
    """The imagine stage's picture of the target."""

    png: bytes
    sha256: str
    path: str | None = None
    """The artifact file, when the query has an artifacts folder."""
    description: str | None = None

    def picture(self) -> Any:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(self.png)) as opened:
            return opened.convert("RGB")


class ImagineStage:
    """Fills ``state.edited_image``."""

    name = "imagine"

    def __init__(self, config: ImagineConfig, editor: ImageEditor, cache: Any = None, *,
                 reference_path: Callable[[QueryState], str | None] | None = None,
                 describer: Any = None) -> None:
        self.config = config
        self.editor = editor
        self.cache = cache
        self.prompt = load_prompt(config.prompt)
        self.reference_path = reference_path or (lambda state: state.query.image)
        self.describer = describer
        self.describe_prompt = load_prompt("imagine_describe") if describer is not None else None

    def _reference(self, state: QueryState) -> bytes:
        query = state.query
        reference = self.reference_path(state)
        if not reference:
            raise ImagineInputError(
                f"query {query.id}: the imagine stage edits the reference image and this query has none; give "
                "--image, or disable imagine (and retrieve.mode dual) for text-only queries"
            )
        from agent_cir.index.decode import load_image
        from agent_cir.index.reasons import BadImageError

        try:
            load_image(reference).close()  # the indexer's checks: a decodable image within the pixel limits
            return Path(reference).read_bytes()
        except BadImageError as err:
            raise ImagineInputError(f"query {query.id}: reference image {reference} cannot be edited: {err}") from err
        except OSError as err:
            raise ImagineInputError(f"query {query.id}: reference image {reference} cannot be read "
                                    f"({err.strerror or err})") from err

    def _instruction(self, state: QueryState, notes: list[str]) -> tuple[str, str]:
        query = state.query
        description = None
        source = "modification"
        if self.config.source == "description":
            descriptions = [d for d in state.target_descriptions if d and d.strip()]
            if descriptions and state.description_source not in (None, "modification"):
                description, source = descriptions[0], "description"
            else:
                notes.append("no rewritten target description: the edit instruction is the modification text")
        messages = self.prompt.render_messages(modification=query.text, description=description,
                                               caption=state.captions[0] if state.captions else None)
        instruction = "\n".join(text for role, text in messages if role == "user").strip()
        if not instruction:
            raise ImagineInputError(
                f"query {query.id}: the edit instruction is empty (prompt {self.prompt.name}); give a modification text"
            )
        return instruction, source

    def _describe(self, state: QueryState, png: bytes, record: StageRecord) -> str | None:
        if self.describer is None or self.describe_prompt is None:
            return None
        call = invoke(self.describer, self.describe_prompt.render_messages(), prompt=self.describe_prompt,
                      images=[png], cache=self.cache)
        text, status = parse_caption(call.raw)
        call.parse_status = status  # type: ignore[assignment]
        record.calls.append(call)
        if not text:
            record.notes.append("the description of the edited image could not be read: none used")
        return text or None

    def run(self, state: QueryState) -> StageRecord:
        started = time.perf_counter()
        record = StageRecord(stage=self.name)
        reference = self._reference(state)
        instruction, source = self._instruction(state, record.notes)
        request = request_from_config(self.config, instruction, reference)
        outcome = edit_image(self.editor, request, prompt_name=self.prompt.name, prompt_hash=self.prompt.hash,
                             cache=self.cache)
        record.calls.append(outcome.call)
        path = None
        if state.artifacts_dir is not None:
            folder = Path(state.artifacts_dir)
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / ARTIFACT_NAME if state.round == 0 else folder / f"imagine_r{state.round}.png"
            write_bytes_atomic(target, outcome.png)
            path = str(target)
        description = self._describe(state, outcome.png, record)
        state.edited_image = EditedImage(outcome.png, outcome.sha256, path, description)
        output = ImagineOutput(model=self.editor.spec, instruction=instruction, source=source,
                               seed=request.seed, steps=request.steps, guidance=request.guidance,
                               image_guidance=request.image_guidance, strength=request.strength, size=request.size,
                               image_sha256=outcome.sha256, path=path, description=description)
        record.output = output
        record.parse_status = "ok"
        record.seconds = time.perf_counter() - started
        return record
