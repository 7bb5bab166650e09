"""Registries drive validation: a recipe accepts exactly the names a registry holds (encoder backends, judges,
aggregations, benchmarks), refuses others with the known names and a did-you-mean, and chat backends answer
what they can do from the backend registry, not from their spec prefix."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_cir.backends.capabilities import UNKNOWN_BACKEND
from agent_cir.backends.create import as_handle, create_chat_model
from agent_cir.backends.registry import CHAT_BACKENDS
from agent_cir.config import (
    AGGREGATION_METHODS,
    BENCHMARK_NAMES,
    JUDGE_METHODS,
    ConfigError,
    EncoderConfig,
    ModelConfig,
    RegistryMismatchError,
    RerankConfig,
    check_registry,
    recipe_from_dict,
)
from agent_cir.encoders import ENCODER_BACKENDS, create_encoder
from agent_cir.eval.benchmarks import BENCHMARKS, get_benchmark, load_benchmark
from agent_cir.eval.datasets import BenchmarkDataError
from agent_cir.rerank.aggregate import AGGREGATIONS
from agent_cir.rerank.judges import JUDGES, JudgeBackendError, judge_prompt_name
from agent_cir.rerank.stage import RerankStage
from agent_cir.rerank.yes_no import supports_logprobs

FAKE_MODELS = {"judge": {"spec": "fake:j", "extra": {"responses": ["1"]}}}


def _refusal(data: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        recipe_from_dict(data)
    return str(caught.value)


@pytest.mark.parametrize(("data", "key", "bad", "hint", "known"), [
    ({"encoder": {"backend": "open-clip"}}, "encoder.backend", "open-clip", "open_clip", ENCODER_BACKENDS),
    ({"rerank": {"method": "gird"}}, "rerank.method", "gird", "grid", JUDGE_METHODS),
    ({"rerank": {"aggregation": "RRF"}}, "rerank.aggregation", "RRF", "rrf", AGGREGATION_METHODS),
    ({"by_dataset": {"cirrr": {}}}, "by_dataset.cirrr", "cirrr", "cirr", BENCHMARK_NAMES),
    ({"published": [{"dataset": "fashion-iq", "split": "val", "metric": "recall@10", "value": 1.0,
                     "backbone": "ViT-L/14", "source": "x"}]}, "published.0.dataset", "fashion-iq", "fashioniq",
     BENCHMARK_NAMES),
])
def test_an_unknown_name_is_refused_with_the_known_names_and_a_hint(data, key, bad, hint, known):
    message = _refusal(data)
    assert key in message
    assert f"{bad!r}" in message and f"did you mean {hint!r}" in message
    assert all(name in message for name in known)


def test_logits_is_a_method_of_its_own_and_every_judge_and_aggregation_validates():
    for method in JUDGES:
        assert recipe_from_dict({"rerank": {"method": method}}).rerank.method == method
    for aggregation in AGGREGATIONS:
        assert recipe_from_dict({"rerank": {"aggregation": aggregation}}).rerank.aggregation == aggregation
    assert set(JUDGES) == set(JUDGE_METHODS) and "logits" in JUDGES
    assert set(AGGREGATIONS) == set(AGGREGATION_METHODS)
    assert set(BENCHMARKS) == set(BENCHMARK_NAMES)


def test_an_encoder_backend_added_to_the_registry_is_accepted_and_built(monkeypatch):
    built = []
    monkeypatch.setitem(ENCODER_BACKENDS, "my-encoder", lambda config: built.append(config.model) or "encoder")
    recipe = recipe_from_dict({"encoder": {"backend": "my-encoder", "model": "m"}})
    assert create_encoder(recipe.encoder) == "encoder" and built == ["m"]
    monkeypatch.delitem(ENCODER_BACKENDS, "my-encoder")
    assert "unknown encoder backend 'my-encoder'" in _refusal({"encoder": {"backend": "my-encoder"}})
    with pytest.raises(ConfigError, match="known: open_clip"):  # a config that skipped validation
        create_encoder(EncoderConfig.model_construct(backend="my-encoder"))


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=20))
def test_any_other_text_is_refused_as_a_judge(name):
    if name in JUDGES:
        assert RerankConfig(method=name).method == name
        return
    with pytest.raises(ValueError, match="known: grid, pointwise, logits"):
        RerankConfig(method=name)


def test_a_registry_that_differs_from_its_declared_names_fails_naming_both_sides():
    check_registry("judges", {"a": ""}, {"a": object}, "here")
    with pytest.raises(RegistryMismatchError, match=r"declared but not implemented: b \(add them to here\)"):
        check_registry("judges", {"a": "", "b": ""}, {"a": object}, "here")
    with pytest.raises(RegistryMismatchError, match="implemented but not declared: c .*config/names.py"):
        check_registry("judges", {"a": ""}, {"a": object, "c": object}, "here")


def test_method_logits_is_refused_for_a_backend_without_logits_and_pointwise_falls_back():
    fake = create_chat_model(ModelConfig(spec="fake:j", extra={"responses": ["yes"]}))
    with pytest.raises(JudgeBackendError, match="does not expose.*use rerank.method: pointwise"):
        RerankStage(RerankConfig(enabled=True, method="logits"), fake, cache=None)
    assert RerankStage(RerankConfig(enabled=True, method="pointwise"), fake, cache=None).judge.name == "pointwise"


def test_the_logits_judge_hashes_the_pointwise_prompt_it_renders():
    from agent_cir.eval.provenance import prompt_hashes

    assert judge_prompt_name(RerankConfig(method="logits", pointwise_prompt="verify_image")) == "verify_image"
    recipe = recipe_from_dict({"models": FAKE_MODELS, "rerank": {"enabled": True, "method": "logits"}})
    assert prompt_hashes(recipe)["rerank"]["name"] == "judge_pointwise"
    grid = recipe_from_dict({"models": FAKE_MODELS, "rerank": {"enabled": True}})
    assert prompt_hashes(grid)["rerank"]["name"] == "judge_grid"


def test_benchmarks_own_their_loaders_and_refuse_unknown_names_and_categories(tmp_path):
    with pytest.raises(BenchmarkDataError, match="unknown dataset 'cir' .*did you mean 'cirr'"):
        get_benchmark("cir")
    with pytest.raises(BenchmarkDataError, match="cirr has no categories .*fashioniq and genecis"):
        BENCHMARKS["cirr"].load("val", tmp_path, categories=["dress"])
    assert BENCHMARKS["fashioniq"].categories == ("dress", "shirt", "toptee")
    with pytest.raises(BenchmarkDataError):
        load_benchmark("cirr", "val", tmp_path)  # no annotation files there: the dataset's own locate says so


def test_the_eval_command_lists_exactly_the_registered_benchmarks():
    import typer.main

    from agent_cir.cli import _register, app

    _register()
    group = typer.main.get_command(app)
    command = group.get_command(None, "eval")
    [dataset] = [param for param in command.params if param.name == "dataset"]
    assert dataset.help.split(" | ") == list(BENCHMARKS)


@pytest.mark.parametrize("backend", sorted(CHAT_BACKENDS))
def test_every_chat_backend_declares_its_capabilities(backend):
    capabilities = CHAT_BACKENDS[backend].capabilities
    # Only a server answers with top_logprobs; only in-process models expose logits; only servers have deadlines.
    assert capabilities.logprobs == (backend == "openai")
    assert capabilities.next_token_logits == (backend in ("hf", "hf-vlm"))
    assert capabilities.remote == (backend in ("openai", "ollama"))
    assert capabilities.images == (backend != "hf")


def test_callers_ask_the_capability_not_the_backend_name(monkeypatch):
    from agent_cir.backends.call_policy import call_deadline
    from agent_cir.backends.capabilities import BackendCapabilities, ChatBackend

    fake = create_chat_model(ModelConfig(spec="fake:j", extra={"responses": ["yes"]}))
    assert not supports_logprobs(fake) and call_deadline(fake) is None and not fake.batches_natively
    # Declare the fake backend a logprob-giving, batching server: every caller follows the declaration.
    server_like = BackendCapabilities(images=True, structured_output=True, logprobs=True, next_token_logits=False,
                                      batched_generation=True, remote=True, invoke_retries=False)
    monkeypatch.setitem(CHAT_BACKENDS, "fake", ChatBackend(CHAT_BACKENDS["fake"].factory, server_like))
    assert supports_logprobs(fake) and fake.batches_natively
    assert call_deadline(fake) == pytest.approx(fake.config.timeout * (fake.config.max_retries + 1) + 1.0 + 3.5)


def test_an_injected_model_of_an_unknown_kind_gets_the_cautious_capabilities():
    unknown = as_handle(_Unlisted())
    assert unknown.capabilities == UNKNOWN_BACKEND and unknown.retry_attempts == unknown.config.max_retries
    assert not unknown.batches_natively and not supports_logprobs(unknown)


def _unlisted_class():
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    class Unlisted(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "unlisted-kind"

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content="ok"))])

    return Unlisted


_Unlisted = _unlisted_class()
