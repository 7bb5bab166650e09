"""The chat-backend registry: spec prefix -> its factory, capabilities and failure advice.

Specs:
  ``openai:MODEL``        ChatOpenAI; ``base_url`` for vLLM, SGLang, llama.cpp server or any OpenAI-compatible
                          server. Key: ``api_key``, else ``$api_key_env``, else ``$OPENAI_API_KEY``; with a
                          ``base_url`` and no key a placeholder is sent (local servers ignore it).
  ``ollama:MODEL``        ChatOllama (``pip install 'agent-cir[ollama]'``); ``base_url`` defaults to Ollama's.
  ``hf:ID_OR_PATH``       local transformers text LLM; a ``.gguf`` path or ``gguf_file`` loads GGUF weights.
  ``hf-vlm:ID_OR_PATH``   local transformers VLM (AutoProcessor + AutoModelForImageTextToText): chat VLMs
                          (LLaVA, Idefics3 / SmolVLM, Qwen2-VL, Qwen2.5-VL) and BLIP-2 / InstructBLIP.
                          For both local backends ``extra`` goes to ``from_pretrained`` (e.g. revision), and
                          ``chat.batch(list)`` runs padded batched ``generate`` calls of ``batch_size`` rows.
  ``fake:NAME``           scripted answers for tests and demos: ``extra: {responses: [...]}`` are returned in
                          order (cycling when ``cycle`` is true, the default); from Python, ``respond`` may be a
                          function of the messages instead. No network, no weights.

Retries with backoff come from the client (ChatOpenAI ``max_retries``) or LangChain's ``.with_retry``
(applied by ``invoke``, see ``call_policy.py``); the rate limit is LangChain's ``InMemoryRateLimiter``
(``rate_limit.py``); ``max_concurrency`` bounds how many calls one model serves at once across all pipeline threads.
"""

from __future__ import annotations

from agent_cir.backends.capabilities import BackendCapabilities, ChatBackend
from agent_cir.backends.fake_backend import create_fake
from agent_cir.backends.local_backend import create_local
from agent_cir.backends.ollama_backend import create_ollama
from agent_cir.backends.openai_backend import create_openai

_SERVER = dict(images=True, structured_output=True, next_token_logits=False, batched_generation=False, remote=True)
_LOCAL_ADVICE = "the local model could not generate; check its files, dtype and device_map"
_IN_PROCESS = dict(structured_output=False, logprobs=False, batched_generation=True, remote=False, invoke_retries=False)

CHAT_BACKENDS: dict[str, ChatBackend] = {
    "openai": ChatBackend(create_openai, BackendCapabilities(**_SERVER, logprobs=True, invoke_retries=False)),
    "ollama": ChatBackend(create_ollama, BackendCapabilities(**_SERVER, logprobs=False, invoke_retries=True)),
    "hf": ChatBackend(lambda config, model: create_local(config, model, vision=False),
                      BackendCapabilities(**_IN_PROCESS, images=False, next_token_logits=True), _LOCAL_ADVICE),
    "hf-vlm": ChatBackend(lambda config, model: create_local(config, model, vision=True),
                          BackendCapabilities(**_IN_PROCESS, images=True, next_token_logits=True), _LOCAL_ADVICE),
    "fake": ChatBackend(create_fake, BackendCapabilities(
        images=True, structured_output=False, logprobs=False, next_token_logits=False, batched_generation=False,
        remote=False, invoke_retries=False), "check the fake model's scripted answers"),
}
"""Spec prefix -> its factory and capabilities (``parse_spec`` accepts exactly these names). Adding a backend is
one entry here; callers ask ``handle.capabilities`` rather than comparing backend names."""
