"""The ``fake:`` backend: ``ScriptedChatModel`` answers from a script, for tests and demos (no network, no
weights)."""

from __future__ import annotations

import threading
from typing import Any, Callable

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from agent_cir.backends.capabilities import BuiltChatModel
from agent_cir.backends.errors import BackendError
from agent_cir.backends.rate_limit import rate_limiter
from agent_cir.config import ModelConfig



class ScriptedChatModel(BaseChatModel):
    """``fake:`` answers from a list (or a function of the messages); records what it was sent.

    Unlike LangChain's FakeListChatModel it accepts image blocks, reports token usage (whitespace tokens)
    and keeps the messages it received, so tests can assert on rendered prompts and attached images.
    """

    responses: list[str] = []
    cycle: bool = True
    respond: Callable[[list[BaseMessage]], str] | None = None
    """Python-only alternative to ``responses``: compute the answer from the messages."""
    model_name: str = "fake"
    temperature: float = 0.0
    seed: int | None = 0

    # One mutable script state, shared by sampling copies (model_copy is shallow), so that copies made for
    # another temperature continue the same script and record into the same list.
    _script: dict[str, Any] = PrivateAttr(
        default_factory=lambda: {"index": 0, "received": [], "lock": threading.Lock()}
    )

    @property
    def _llm_type(self) -> str:
        return "agent-cir-fake"

    @property
    def received(self) -> list[list[BaseMessage]]:
        """Every message list this model (or a sampling copy of it) was called with."""
        return self._script["received"]

    def _next_response(self, messages: list[BaseMessage]) -> str:
        script = self._script
        with script["lock"]:
            script["received"].append(list(messages))
        if self.respond is not None:
            return self.respond(messages)  # outside the lock: concurrent calls really overlap
        with script["lock"]:
            if script["index"] >= len(self.responses):
                if not self.cycle:
                    raise BackendError(f"fake:{self.model_name} ran out of scripted responses ({len(self.responses)})")
                script["index"] = 0
            answer = self.responses[script["index"]]
            script["index"] += 1
            return answer

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = self._next_response(messages)
        prompt_words = sum(len(_text_words(m.content)) for m in messages)
        usage = {"input_tokens": prompt_words, "output_tokens": len(text.split()), "total_tokens": 0}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        message = AIMessage(content=text, usage_metadata=usage, response_metadata={"model_name": self.model_name})
        return ChatResult(generations=[ChatGeneration(message=message)])


def _text_words(content: Any) -> list[str]:
    if isinstance(content, str):
        return content.split()
    parts = content if isinstance(content, list) else [content]
    return [w for p in parts if isinstance(p, dict) and p.get("type") == "text" for w in str(p.get("text", "")).split()]


def create_fake(config: ModelConfig, model: str) -> BuiltChatModel:
    extra = dict(config.extra)
    unknown = set(extra) - {"responses", "cycle", "respond"}
    if unknown:
        raise BackendError(f"{config.spec}: unknown fake options {sorted(unknown)}; use responses, cycle")
    responses = extra.get("responses", [])
    if isinstance(responses, str):
        responses = [responses]
    if not responses and extra.get("respond") is None:
        raise BackendError(f"{config.spec}: a fake model needs answers: extra: {{responses: ['...', ...]}}")
    chat = ScriptedChatModel(
        responses=[str(r) for r in responses],
        cycle=bool(extra.get("cycle", True)),
        respond=extra.get("respond"),
        model_name=model,
        temperature=config.temperature,
        seed=config.seed,
        rate_limiter=rate_limiter(config),
    )
    return BuiltChatModel(
        chat=chat,
        model=model,
        fingerprint={
            "responses": [str(r) for r in responses],
            "respond": getattr(extra.get("respond"), "__qualname__", None),
        },
    )
