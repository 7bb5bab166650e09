"""Flaky servers: a loopback OpenAI-compatible server scripted to time out, fail, answer garbage and recover.

Request counts equal the retry policy (max_retries + 1 attempts, never twice that); only an answer that
says "structured output is not supported" turns structured output off; after a transient failure the next
call asks for structured output again; no query is lost (every call either answers or fails with a clear
ModelCallError, and nothing failed is cached). Secrets never reach cache keys, params or error messages.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_cir.backends import ModelCallError, invoke
from agent_cir.backends.create import create_chat_model
from agent_cir.backends.credentials import redact_url
from agent_cir.backends.structured import structured_output_unsupported
from agent_cir.cache import ModelCache
from agent_cir.config import ModelConfig
from agent_cir.parsing import TargetDescriptionAnswer
from agent_cir.prompts import load_prompt
from tests.fixtures.flaky_server import Drop, Garbage, Hang, Reply, Status, flaky_server  # noqa: F401

PROMPT = load_prompt("rewrite_cot")
ANSWER = '{"reasoning": "r", "target_description": "a red car"}'
LLAMA_CPP_NO_SCHEMA = 'response_format type must be one of "text" or "json_object", but got: json_schema'


def _handle(server, **options):
    options.setdefault("max_retries", 2)
    options.setdefault("timeout", 0.5)
    return create_chat_model(ModelConfig(spec="openai:judge", base_url=server.base_url, **options))


def _ask(handle, text: str = "q", cache=None):
    return invoke(handle, [("user", text)], prompt=PROMPT, schema=TargetDescriptionAnswer, cache=cache)


@pytest.mark.parametrize(("failures", "max_retries"), [(1, 2), (2, 2), (1, 1), (3, 3)])
def test_transient_500s_are_retried_once_by_the_policy_and_structured_output_stays_on(
    flaky_server, failures, max_retries  # noqa: F811
) -> None:
    flaky_server.script = [Status(500)] * failures
    flaky_server.default = Reply(ANSWER)
    handle = _handle(flaky_server, max_retries=max_retries)
    call = _ask(handle)
    assert json.loads(call.raw)["target_description"] == "a red car" and call.params["structured"] is True
    assert flaky_server.structured_flags == [True] * (failures + 1)  # no plain-text fall-through
    assert not handle.structured_disabled
    _ask(handle, "next query")
    assert flaky_server.structured_flags[-1] is True  # the next call asks for structured output again


@pytest.mark.parametrize("max_retries", [0, 2])
def test_persistent_500s_cost_exactly_max_retries_plus_one_requests(flaky_server, tmp_path, max_retries) -> None:  # noqa: F811
    flaky_server.script = [Status(500)] * (max_retries + 1)
    flaky_server.default = Reply(ANSWER)
    handle = _handle(flaky_server, max_retries=max_retries)
    cache = ModelCache(tmp_path / "c.sqlite")
    with pytest.raises(ModelCallError, match="openai:judge") as err:
        _ask(handle, cache=cache)
    assert len(flaky_server.requests) == max_retries + 1  # was 2 * (max_retries + 1): retries spent twice
    assert isinstance(err.value.__cause__, Exception)
    assert not handle.structured_disabled and len(cache) == 0  # nothing failed is cached
    # The server recovers: the same query now succeeds, structured, and is cached (resume loses nothing).
    call = _ask(handle, cache=cache)
    assert call.params["structured"] is True and call.cache == "miss" and len(cache) == 1
    assert flaky_server.structured_flags[-1] is True


@pytest.mark.parametrize("trouble", [Hang(3.0), Drop(), Garbage(), Garbage(b'{"id": "x"')],
                         ids=["timeout", "dropped", "html", "truncated-json"])
def test_timeouts_drops_and_garbage_are_retried_then_recover(flaky_server, trouble) -> None:  # noqa: F811
    flaky_server.script = [trouble]
    flaky_server.default = Reply(ANSWER)
    handle = _handle(flaky_server, max_retries=1)
    call = _ask(handle)
    assert call.params["structured"] is True and json.loads(call.raw)["target_description"] == "a red car"
    assert flaky_server.structured_flags == [True, True]


@pytest.mark.parametrize("trouble", [Hang(3.0), Garbage()], ids=["timeout", "html"])
def test_unrecovered_timeouts_and_garbage_fail_clearly_after_the_policy(flaky_server, trouble) -> None:  # noqa: F811
    flaky_server.script = [trouble] * 2
    handle = _handle(flaky_server, max_retries=1)
    with pytest.raises(ModelCallError, match="What to do"):
        _ask(handle)
    assert len(flaky_server.requests) == 2


@pytest.mark.parametrize("message", [
    LLAMA_CPP_NO_SCHEMA,
    'Either "json_schema" or "grammar" can be specified, but not both',
    "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
    "response_format is not supported by this server",
])
def test_only_an_unsupported_answer_turns_structured_output_off(flaky_server, message) -> None:  # noqa: F811
    flaky_server.script = [Status(400, message)]
    flaky_server.default = Reply("Target description: a red car")
    handle = _handle(flaky_server, max_retries=2)
    call = _ask(handle)
    assert call.raw == "Target description: a red car" and call.params["structured"] is False
    assert "unsupported" in call.params["structured_note"]
    assert flaky_server.structured_flags == [True, False]  # a 400 is not retried; then one plain call
    assert handle.structured_disabled
    _ask(handle, "again")
    assert flaky_server.structured_flags[-1] is False  # no second refused request


def test_other_client_errors_fail_the_call_and_keep_structured_output(flaky_server) -> None:  # noqa: F811
    flaky_server.script = [Status(400, "This model's maximum context length is 4096 tokens")]
    flaky_server.default = Reply(ANSWER)
    handle = _handle(flaky_server)
    with pytest.raises(ModelCallError, match="structured_output: false"):
        _ask(handle)
    assert flaky_server.structured_flags == [True] and not handle.structured_disabled


def test_an_answer_outside_the_schema_goes_to_the_tolerant_parser_without_a_second_request(flaky_server) -> None:  # noqa: F811
    flaky_server.script = [Reply("Sure! Target description: a red car")]
    handle = _handle(flaky_server)
    call = _ask(handle)
    assert call.raw == "Sure! Target description: a red car" and call.params["structured"] is False
    assert "did not parse" in call.params["structured_note"]
    assert flaky_server.structured_flags == [True] and not handle.structured_disabled


def test_a_flaky_run_loses_no_query(flaky_server, tmp_path) -> None:  # noqa: F811
    """20 queries against a server that times out, fails, answers garbage and recovers along the way:
    every query answers (max_retries 2 absorbs each burst), structured throughout, and the request count
    is the answers plus exactly one request per injected failure."""
    troubles = {3: [Status(500)], 7: [Hang(3.0)], 11: [Garbage(), Status(503)], 15: [Drop(), Status(502)]}
    script = []
    for index in range(20):
        script += troubles.get(index, []) + [Reply(lambda body: json.dumps(
            {"reasoning": "r", "target_description": body["messages"][-1]["content"]}))]
    flaky_server.script = script
    handle = _handle(flaky_server, max_retries=2)
    cache = ModelCache(tmp_path / "c.sqlite")
    answers = [json.loads(_ask(handle, f"query {index}", cache).raw)["target_description"] for index in range(20)]
    assert answers == [f"query {index}" for index in range(20)]
    assert len(flaky_server.requests) == 20 + sum(len(v) for v in troubles.values())
    assert all(flaky_server.structured_flags) and len(cache) == 20


def test_structured_output_unsupported_recognises_the_real_shapes() -> None:
    class Http(Exception):
        def __init__(self, status: int, message: str) -> None:
            super().__init__(message)
            self.status_code = status

    assert structured_output_unsupported(NotImplementedError("with_structured_output is not implemented"))
    assert structured_output_unsupported(Http(500, LLAMA_CPP_NO_SCHEMA))  # some llama.cpp builds answer 500
    assert structured_output_unsupported(Http(400, "registry.ollama.ai/library/x does not support tools"))
    assert structured_output_unsupported(Http(422, "Unknown field response_format: extra inputs are not permitted"))
    assert not structured_output_unsupported(Http(500, "response_format unsupported... internal error"))
    assert not structured_output_unsupported(Http(429, "rate limit; response_format unsupported"))
    assert not structured_output_unsupported(Http(400, "maximum context length exceeded"))
    assert not structured_output_unsupported(TimeoutError("timed out"))
    assert not structured_output_unsupported(ConnectionError("refused"))


SECRET = "sk-test-SECRET-0123456789abcdef"


def test_api_keys_never_reach_cache_keys_params_or_error_messages(flaky_server, tmp_path, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)
    flaky_server.script = [Status(401, f"Incorrect API key provided: {SECRET}")]
    flaky_server.default = Reply(ANSWER)
    base_url = flaky_server.base_url + "?api_key=" + SECRET
    handle = create_chat_model(ModelConfig(spec="openai:judge", base_url=base_url, api_key_env="MY_JUDGE_KEY",
                                           max_retries=0))
    cache = ModelCache(tmp_path / "c.sqlite")
    with pytest.raises(ModelCallError) as err:
        _ask(handle, cache=cache)
    assert SECRET not in str(err.value) and "***" in str(err.value)
    assert flaky_server.requests  # the server was reached (with the key, as it must be)
    call = _ask(handle, cache=cache)
    assert SECRET not in json.dumps(call.params) and SECRET not in (call.prompt or "")
    import sqlite3

    stored = sqlite3.connect(cache.path).execute("SELECT key, value FROM model_cache").fetchall()
    assert stored and all(SECRET not in key + value for key, value in stored)
    assert redact_url("https://user:pw123456@host/v1?key=abc&x=1") == "https://user:***@host/v1?key=%2A%2A%2A&x=1"


# --- wall-clock deadline per call (issue 18, case 12) ------------------------------------------------------


@pytest.mark.parametrize("structured", [True, False], ids=["structured", "plain"])
def test_a_trickling_server_fails_the_call_at_its_deadline_naming_the_endpoint_and_timeout(
    flaky_server, structured  # noqa: F811
) -> None:
    import time

    from tests.fixtures.flaky_server import Trickle

    flaky_server.default = Trickle(interval=0.2, seconds=30.0)
    handle = _handle(flaky_server, max_retries=0, timeout=1.5)
    started = time.monotonic()
    with pytest.raises(ModelCallError) as err:
        invoke(handle, [("user", "q")], prompt=PROMPT, schema=TargetDescriptionAnswer if structured else None)
    elapsed = time.monotonic() - started
    assert elapsed < 1.5 + 2.5, elapsed  # was ~30 s: the per-read timeout never fires on a trickle
    message = str(err.value)
    assert flaky_server.base_url in message and "1.5 s" in message
    assert len(flaky_server.requests) == 1


def test_the_deadline_counts_every_attempt_and_a_normal_answer_is_untouched(flaky_server) -> None:  # noqa: F811
    from agent_cir.backends.call_policy import call_deadline

    handle = _handle(flaky_server, max_retries=2, timeout=5.0)
    assert 15.0 < call_deadline(handle) < 20.0
    flaky_server.default = Reply(ANSWER)
    assert json.loads(_ask(handle).raw)["target_description"] == "a red car"
    fake = create_chat_model(ModelConfig(spec="fake:x", timeout=0.001, extra={"responses": ["ok"]}))
    assert call_deadline(fake) is None  # in-process models are not cut off


# --- a huge answer is capped at the call site (issue 18, case 17) -------------------------------------------


def test_a_megabytes_long_answer_is_capped_with_the_cut_recorded(tmp_path) -> None:
    from agent_cir.backends.prepared import MAX_RAW_ANSWER_CHARS

    huge = "1 > 2 > 3 " * 300_000  # 3 MB
    handle = create_chat_model(ModelConfig(spec="fake:judge", extra={"responses": [huge]}))
    cache = ModelCache(tmp_path / "c.sqlite")
    miss = invoke(handle, [("user", "rank")], prompt=PROMPT, cache=cache)
    assert len(miss.raw) == MAX_RAW_ANSWER_CHARS and huge.startswith(miss.raw)
    assert miss.params["raw_truncated"] == {"original_chars": len(huge), "kept_chars": MAX_RAW_ANSWER_CHARS}
    hit = invoke(handle, [("user", "rank")], prompt=PROMPT, cache=cache)
    assert hit.cache == "hit" and hit.raw == miss.raw
    small = create_chat_model(ModelConfig(spec="fake:judge", extra={"responses": ["1 > 2"]}))
    call = invoke(small, [("user", "rank")], prompt=PROMPT)
    assert call.raw == "1 > 2" and "raw_truncated" not in call.params


def test_header_secrets_from_extra_never_reach_an_error_message(flaky_server) -> None:  # noqa: F811
    secret = "hdr-SECRET-0123456789"
    flaky_server.default = Status(401, f"bad credentials: Bearer {secret} / {secret}")
    handle = _handle(flaky_server, max_retries=0, extra={"default_headers": {"Authorization": f"Bearer {secret}"}})
    with pytest.raises(ModelCallError) as err:
        _ask(handle)
    assert secret not in str(err.value)
