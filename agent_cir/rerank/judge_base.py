"""What every model judge (grid, pointwise, pairwise, cotrr) shares: its config, model, cache, prompt and the
traced call. ``__init__(config, model, cache)``, ``prompt`` from ``prompt_field``, ``rank(ctx)``; ``judges.py``
registers them all.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent_cir.config import RerankConfig
from agent_cir.prompts import load_prompt
from agent_cir.rerank.context import RerankContext
from agent_cir.types import ModelCall


class MethodJudge:
    name: ClassVar[str] = ""
    prompt_field: ClassVar[str] = "prompt"

    def __init__(self, config: RerankConfig, model: Any, cache: Any) -> None:
        self.config = config
        self.model = model
        self.cache = cache
        self.prompt = load_prompt(getattr(config, self.prompt_field))

    def _invoke(self, ctx: RerankContext, messages: list[tuple[str, str]], images: list[Any], schema: Any = None,
                image_labels: list[str] | None = None) -> ModelCall:
        from agent_cir.backends import invoke

        call = invoke(self.model, messages, prompt=self.prompt, images=images, cache=self.cache, schema=schema,
                      temperature=self.config.temperature, image_labels=image_labels)
        ctx.add_call(call, len(images))
        return call
