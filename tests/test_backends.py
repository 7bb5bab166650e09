"""Backends: spec strings, the OpenAI-compatible path against a real HTTP server on loopback, structured
output and its fallback, retries, rate limit, concurrency limit, the local transformers VLM and errors."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import HumanMessage
from PIL import Image

from agent_cir.backends import (
    BackendError,
    ImageInputError,
    ModelCallError,
    as_handle,
    create_chat_model,
    image_bytes,
    invoke,
    parse_spec,
)
from agent_cir.backends.errors import LocalModelError
from agent_cir.cache import ModelCache
from agent_cir.config import ModelConfig
from agent_cir.errors import AgentCirError
from agent_cir.hashing import content_hash
from agent_cir.parsing import TargetDescriptionAnswer
from agent_cir.prompts import load_prompt
from tests.fixtures.chat import fake_model
from tests.fixtures.tiny_models import TINY_VLM_TOKENS_PER_IMAGE

PROMPT = load_prompt("rewrite_cot")


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def _messages() -> list[tuple[str, str]]:
    return PROMPT.render_messages(caption="a dog on a sofa", captions=["a dog on a sofa"],
                                  modification="make it a cat", num_descriptions=1)


# ------------------------------------------------------------------------------------------ spec strings


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("openai:gpt-4o-mini", ("openai", "gpt-4o-mini")), ("ollama:qwen2.5:7b", ("ollama", "qwen2.5:7b")),
     ("hf:Qwen/Qwen2.5-1.5B-Instruct", ("hf", "Qwen/Qwen2.5-1.5B-Instruct")), ("hf-vlm:./vlm", ("hf-vlm", "./vlm")),
     ("fake:", ("fake", "fake")), ("FAKE:judge", ("fake", "judge"))],
)
def test_parse_spec(spec: str, expected: tuple[str, str]) -> None:
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["gpt-4o", "anthropic:claude", "openai:", "hf:  "])
def test_bad_specs_say_what_is_accepted(spec: str) -> None:
    with pytest.raises(BackendError) as err:
        parse_spec(spec)
    assert spec.strip() in str(err.value) or "empty" in str(err.value)
    assert isinstance(err.value, AgentCirError)


def test_fake_model_needs_answers_and_rejects_unknown_options() -> None:
    with pytest.raises(BackendError, match="responses"):
        create_chat_model(ModelConfig(spec="fake:"))
    with pytest.raises(BackendError, match="unknown fake options"):
        create_chat_model(ModelConfig(spec="fake:", extra={"responses": ["a"], "answers": ["b"]}))


def test_fake_model_answers_in_order_and_records_messages() -> None:
    handle = fake_model(["first", "second"])
    assert handle.backend == "fake" and not handle.supports_structured_output
    answers = [invoke(handle, [("user", f"q{i}")], prompt=PROMPT).raw for i in range(3)]
    assert answers == ["first", "second", "first"]
    assert [m[-1].content for m in handle.chat.received] == ["q0", "q1", "q2"]
    no_cycle = create_chat_model(ModelConfig(spec="fake:", extra={"responses": ["only"], "cycle": False}))
    invoke(no_cycle, [("user", "x")], prompt=PROMPT)
    with pytest.raises(BackendError, match="ran out"):
        invoke(no_cycle, [("user", "y")], prompt=PROMPT)


def test_openai_key_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendError, match="OPENAI_API_KEY"):
        create_chat_model(ModelConfig(spec="openai:gpt-4o-mini"))
    local = create_chat_model(ModelConfig(spec="openai:qwen", base_url="http://127.0.0.1:9/v1"))
    assert local.chat.openai_api_key.get_secret_value() == "not-needed"
    with pytest.raises(BackendError, match="MY_KEY"):
        create_chat_model(ModelConfig(spec="openai:gpt-4o-mini", api_key_env="MY_KEY"))
    monkeypatch.setenv("MY_KEY", "sk-test")
    keyed = create_chat_model(ModelConfig(spec="openai:gpt-4o-mini", api_key_env="MY_KEY", max_retries=5))
    assert keyed.chat.openai_api_key.get_secret_value() == "sk-test"
    assert keyed.chat.max_retries == 5


def test_ollama_handle_options() -> None:
    handle = create_chat_model(ModelConfig(spec="ollama:qwen2.5vl:3b", base_url="http://127.0.0.1:9",
                                           max_tokens=77, temperature=0.3, max_retries=2, requests_per_second=2))
    assert handle.backend == "ollama" and handle.model == "qwen2.5vl:3b"
    assert handle.chat.num_predict == 77 and handle.chat.temperature == 0.3
    assert handle.retry_attempts == 2  # ChatOllama has no client retries: invoke adds .with_retry
    assert handle.chat.rate_limiter is not None


def test_as_handle_wraps_any_langchain_chat_model() -> None:
    handle = as_handle(FakeListChatModel(responses=["hi"]), name="judge")
    assert handle.backend == "fake" and not handle.supports_structured_output
    assert invoke(handle, [("user", "x")], prompt=PROMPT).raw == "hi"
    assert as_handle(handle) is handle
    configured = as_handle(FakeListChatModel(responses=["hi"]),
                           ModelConfig(spec="fake:judge", max_concurrency=1, temperature=0.2))
    assert configured.config.max_concurrency == 1 and configured.sampling_params()["temperature"] == 0.2
    assert as_handle(ModelConfig(spec="fake:", extra={"responses": ["a"]})).backend == "fake"
    with pytest.raises(BackendError, match="responses"):
        as_handle("fake:judge")  # a bare spec works too, and a fake one needs its answers
    with pytest.raises(BackendError, match="judge"):
        as_handle(object(), name="judge")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- OpenAI-compatible server


def test_openai_request_carries_image_data_url_and_rendered_prompt(fake_openai_server, tmp_path: Path) -> None:
    fake_openai_server.replies = ["a red square"]
    image = _png(tmp_path / "ref.png", (200, 0, 0))
    handle = create_chat_model(ModelConfig(spec="openai:served-model", base_url=fake_openai_server.base_url,
                                           max_tokens=64, seed=7))
    call = invoke(handle, _messages(), prompt=PROMPT, images=[image])
    assert call.raw == "a red square" and call.cache == "off"
    (request,) = fake_openai_server.requests
    assert request.path.endswith("/chat/completions")
    assert request.body["model"] == "served-model"
    assert request.body["temperature"] == 0.0 and request.body["seed"] == 7
    # both spellings: OpenAI-compatible servers differ in which one they read
    assert request.body["max_tokens"] == request.body["max_completion_tokens"] == 64
    roles = [m["role"] for m in request.messages]
    assert roles == ["system", "user"]
    rendered = dict(_messages())
    assert request.messages[0]["content"] == rendered["system"]
    assert request.texts()[-1] == rendered["user"]
    (url,) = request.image_urls()
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == image.read_bytes()  # the exact file bytes travel
    assert call.images == [content_hash(image)]
    assert call.usage and call.usage["output_tokens"] == 3
    assert "make it a cat" in call.prompt and call.prompt_hash == PROMPT.hash


def test_openai_structured_output_uses_json_schema(fake_openai_server) -> None:
    answer = {"reasoning": "dog -> cat", "target_description": "a cat on a sofa"}
    fake_openai_server.replies = [json.dumps(answer)]
    handle = create_chat_model(ModelConfig(spec="openai:m", base_url=fake_openai_server.base_url))
    call = invoke(handle, _messages(), prompt=PROMPT, schema=TargetDescriptionAnswer)
    (request,) = fake_openai_server.requests
    response_format = request.body["response_format"]
    assert response_format["type"] == "json_schema"
    assert set(response_format["json_schema"]["schema"]["properties"]) == {"reasoning", "target_description"}
    assert json.loads(call.raw) == answer and call.params["structured"] is True


def test_structured_json_mode_for_servers_without_json_schema(fake_openai_server) -> None:
    """llama-cpp-python's server takes only {"type": "json_object"}: structured_method json_mode asks for that."""
    fake_openai_server.replies = ['{"reasoning": "r", "target_description": "a cat"}']
    handle = create_chat_model(ModelConfig(spec="openai:m", base_url=fake_openai_server.base_url,
                                           structured_method="json_mode"))
    call = invoke(handle, _messages(), prompt=PROMPT, schema=TargetDescriptionAnswer)
    assert fake_openai_server.requests[0].body["response_format"] == {"type": "json_object"}
    assert call.params["structured"] is True and json.loads(call.raw)["target_description"] == "a cat"


def test_openai_retries_server_errors(fake_openai_server) -> None:
    fake_openai_server.replies = ["fine"]
    fake_openai_server.fail_next(1, status=500)
    handle = create_chat_model(ModelConfig(spec="openai:m", base_url=fake_openai_server.base_url, max_retries=2))
    assert invoke(handle, [("user", "x")], prompt=PROMPT).raw == "fine"
    assert len(fake_openai_server.requests) == 2


def test_unreachable_server_is_a_clear_error(fake_openai_server) -> None:
    fake_openai_server.fail_next(5, status=500)
    handle = create_chat_model(ModelConfig(spec="openai:m", base_url=fake_openai_server.base_url, max_retries=0))
    with pytest.raises(ModelCallError) as err:
        invoke(handle, [("user", "x")], prompt=PROMPT)
    message = str(err.value)
    assert "openai:m" in message and fake_openai_server.base_url in message


def test_cache_makes_the_second_call_free(fake_openai_server, tmp_path: Path) -> None:
    fake_openai_server.replies = ["one", "two"]
    cache = ModelCache(tmp_path / "c.sqlite")
    handle = create_chat_model(ModelConfig(spec="openai:m", base_url=fake_openai_server.base_url))
    image = _png(tmp_path / "a.png", (0, 0, 255))
    first = invoke(handle, _messages(), prompt=PROMPT, images=[image], cache=cache)
    copy = tmp_path / "renamed.png"
    copy.write_bytes(image.read_bytes())
    second = invoke(handle, _messages(), prompt=PROMPT, images=[copy], cache=cache)  # same content, other path
    assert (first.cache, second.cache) == ("miss", "hit")
    assert second.raw == "one" and second.usage is None
    assert len(fake_openai_server.requests) == 1
    other = invoke(handle, _messages(), prompt=PROMPT, images=[_png(tmp_path / "b.png", (0, 255, 0))], cache=cache)
    hotter = invoke(handle, _messages(), prompt=PROMPT, images=[image], cache=cache, temperature=0.7)
    assert (other.cache, hotter.cache) == ("miss", "miss")
    assert len(fake_openai_server.requests) == 3
    assert fake_openai_server.requests[-1].body["temperature"] == 0.7
    assert cache.stats == {"hits": 1, "misses": 3}


# ------------------------------------------------------------------------------ LangChain primitives


def test_rate_limit_spaces_calls() -> None:
    handle = fake_model(["a"], requests_per_second=10)
    started = time.perf_counter()
    for index in range(4):
        invoke(handle, [("user", str(index))], prompt=PROMPT)
    # a bucket of one token refilled at 10/s: the 2nd..4th calls each wait ~0.1 s
    assert time.perf_counter() - started >= 0.25


def test_concurrency_limit_per_model() -> None:
    active, peak, lock = [0], [0], threading.Lock()

    def slow(messages: list) -> str:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return "ok"

    for limit in (1, 3):
        peak[0] = 0
        handle = fake_model(respond=slow, max_concurrency=limit)
        threads = [threading.Thread(target=invoke, args=(handle, [("user", str(i))]), kwargs={"prompt": PROMPT})
                   for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert peak[0] <= limit
    assert peak[0] > 1  # with limit 3 calls did overlap: the limit, not the fake, serialised them before


# ------------------------------------------------------------------------------------------ images


def test_image_inputs_bytes_pil_path_same_hash(tmp_path: Path) -> None:
    path = _png(tmp_path / "x.png", (1, 2, 3))
    data, mime = image_bytes(path)
    assert (data, mime) == (path.read_bytes(), "image/png")
    assert image_bytes(path.read_bytes()) == (data, mime)
    jpeg = tmp_path / "x.jpg"
    Image.new("RGB", (8, 8)).save(jpeg)
    assert image_bytes(jpeg)[1] == "image/jpeg"
    pil_bytes, pil_mime = image_bytes(Image.open(path))
    assert pil_mime == "image/png" and Image.open(io.BytesIO(pil_bytes)).getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(ImageInputError, match="missing.png"):
        image_bytes(tmp_path / "missing.png")
    (tmp_path / "not.png").write_text("text")
    with pytest.raises(ImageInputError, match="not a readable image"):
        image_bytes(tmp_path / "not.png")


# ------------------------------------------------------------------------------- local transformers


def test_tiny_vlm_reads_image_blocks(tiny_vlm_dir: Path, tmp_path: Path) -> None:
    handle = create_chat_model(ModelConfig(spec=f"hf-vlm:{tiny_vlm_dir}", max_tokens=5))
    assert handle.backend == "hf-vlm" and not handle.supports_structured_output
    chat = handle.chat
    red = _png(tmp_path / "red.png", (220, 10, 10), (64, 48))
    blue = _png(tmp_path / "blue.png", (10, 10, 220), (30, 50))
    image_token = chat.weights.processor.tokenizer.convert_tokens_to_ids("<image>")

    def blocks(path: Path, form: str) -> list:
        b64 = base64.b64encode(path.read_bytes()).decode()
        image = ({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}} if form == "openai"
                 else {"type": "image", "base64": b64, "mime_type": "image/png"})
        return [image, {"type": "text", "text": "describe"}]

    inputs = chat._prepare_inputs([HumanMessage(content=blocks(red, "openai") + blocks(blue, "v1"))])
    assert tuple(inputs["pixel_values"].shape) == (2, 3, 30, 30)
    assert int((inputs["input_ids"] == image_token).sum()) == 2 * TINY_VLM_TOKENS_PER_IMAGE
    # The pixels reach the model: the two images give different first-token logits.
    import torch

    with torch.inference_mode():
        logits = [chat.weights.model(**chat._prepare_inputs([HumanMessage(content=blocks(p, "openai"))])).logits[0, -1]
                  for p in (red, blue)]
    assert not torch.allclose(logits[0], logits[1])
    first = invoke(handle, [("user", "describe")], prompt=PROMPT, images=[red])
    again = invoke(handle, [("user", "describe")], prompt=PROMPT, images=[red])
    assert first.raw == again.raw and first.raw  # greedy: deterministic, non-empty
    assert first.usage["output_tokens"] <= 5 and first.usage["input_tokens"] > TINY_VLM_TOKENS_PER_IMAGE


def test_text_only_local_model_refuses_images(tiny_vlm_dir: Path) -> None:
    from agent_cir.backends.hf_models import TransformersChatModel

    chat = TransformersChatModel(model_path=str(tiny_vlm_dir))
    message = HumanMessage(content=[{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])
    with pytest.raises(LocalModelError, match="text-only"):
        chat._conversation([message])


def test_missing_local_weights_say_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    for spec in (f"hf:{missing}", f"hf-vlm:{missing}", f"hf:{missing}/model.Q4.gguf"):
        with pytest.raises(LocalModelError) as err:
            create_chat_model(ModelConfig(spec=spec))
        assert str(missing) in str(err.value) and "download" in str(err.value)


def test_quantization_without_bitsandbytes_or_bad_dtype_is_clear(tiny_vlm_dir: Path) -> None:
    with pytest.raises(LocalModelError, match="dtype"):
        create_chat_model(ModelConfig(spec=f"hf-vlm:{tiny_vlm_dir}", dtype="float13"))


def test_tiny_local_llm_uses_chat_template_and_sampling(tiny_llm_dir: Path) -> None:
    handle = create_chat_model(ModelConfig(spec=f"hf:{tiny_llm_dir}", max_tokens=4))
    assert handle.backend == "hf" and handle.model == str(tiny_llm_dir)
    messages = [("system", "you rewrite captions"), ("user", "a dog on a sofa")]
    tokenizer = handle.chat.weights.processor
    from agent_cir.backends import to_langchain_messages

    inputs = handle.chat._prepare_inputs(to_langchain_messages(messages))
    prompt = tokenizer.decode(inputs["input_ids"][0])
    assert "system : you rewrite captions" in prompt and prompt.rstrip().endswith("assistant :")
    greedy = [invoke(handle, messages, prompt=PROMPT).raw for _ in range(2)]
    assert greedy[0] == greedy[1]
    samples = {invoke(handle, messages, prompt=PROMPT, temperature=5.0, n_sample_index=i).raw for i in range(4)}
    assert len(samples) > 1  # a seed per sample index: samples differ
    repeat = invoke(handle, messages, prompt=PROMPT, temperature=5.0, n_sample_index=2).raw
    assert repeat in samples  # and each sample is reproducible
    call = invoke(handle, messages, prompt=PROMPT)
    assert 0 < call.usage["output_tokens"] <= 4


def test_ollama_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "langchain_ollama", None)  # import now fails as if not installed
    with pytest.raises(BackendError, match=r"agent-cir\[ollama\]"):
        create_chat_model(ModelConfig(spec="ollama:llava"))
