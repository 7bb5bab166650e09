"""Several replicas behind one model block: calls are spread round-robin and fail over when a replica dies."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from langchain_core.messages import HumanMessage
from pydantic import BaseModel

from agent_cir.backends import create_chat_model
from agent_cir.backends.errors import BackendError
from agent_cir.backends.multi_endpoint import MultiEndpointChatOpenAI
from agent_cir.config import ModelConfig
from tests.fixtures.chat import FakeOpenAIServer


@pytest.fixture
def two_servers():
    servers = [FakeOpenAIServer(replies=["from a"]).start(), FakeOpenAIServer(replies=["from b"]).start()]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def _handle(urls, **extra):
    return create_chat_model(ModelConfig(spec="openai:m", base_url=urls, max_retries=1, timeout=5, **extra))


def test_calls_alternate_between_replicas(two_servers):
    a, b = two_servers
    handle = _handle([a.base_url, b.base_url])
    assert isinstance(handle.chat, MultiEndpointChatOpenAI)
    answers = [handle.chat.invoke([HumanMessage(content=f"q{i}")]).content for i in range(6)]
    assert answers == ["from a", "from b"] * 3
    assert len(a.requests) == 3 and len(b.requests) == 3


def test_a_replica_dying_mid_run_loses_no_query(two_servers):
    a, b = two_servers
    handle = _handle([a.base_url, b.base_url], failover_cooldown=60)
    prompts = [[HumanMessage(content=f"query {i}")] for i in range(40)]

    def ask(position: int) -> str:
        if position == 10:
            a.stop()  # replica a dies while requests are in flight
        return handle.chat.invoke(prompts[position]).content

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(ask, range(len(prompts))))
    assert len(answers) == 40 and all(answer in ("from a", "from b") for answer in answers)
    stats = handle.chat.stats
    assert stats[a.base_url]["served"] >= 1 and stats[b.base_url]["served"] >= 20
    # every question reached some replica that answered it: nothing was dropped or answered twice
    asked = [r.texts()[-1] for server in (a, b) for r in server.requests]
    assert set(asked) == {f"query {i}" for i in range(40)}


def test_server_errors_fail_over_but_bad_requests_do_not(two_servers):
    a, b = two_servers
    handle = _handle([a.base_url, b.base_url])
    a.fail_next(1, status=503)
    assert handle.chat.invoke([HumanMessage(content="x")]).content == "from b"  # a's 503 went to b
    b.fail_next(1, status=400)
    a.fail_next(0)
    import openai

    with pytest.raises(openai.BadRequestError):
        # the round-robin now starts at b, whose 400 is a bad request every replica would refuse too
        handle.chat.invoke([HumanMessage(content="y")])


def test_every_replica_down_raises_after_bounded_attempts(two_servers):
    a, b = two_servers
    handle = _handle([a.base_url, b.base_url])
    a.stop()
    b.stop()
    import openai

    with pytest.raises(openai.APIConnectionError):
        handle.chat.invoke([HumanMessage(content="z")])
    stats = handle.chat.stats
    assert sum(s["failed"] for s in stats.values()) == 2  # max(max_retries + 1, replicas) attempts, no more


def test_structured_output_goes_through_the_replicas(two_servers):
    a, b = two_servers
    a.replies = ['{"answer": "red"}']
    b.replies = ['{"answer": "blue"}']
    handle = _handle([a.base_url, b.base_url])

    class Answer(BaseModel):
        answer: str

    structured = handle.chat.with_structured_output(Answer, method="json_mode")
    got = [structured.invoke([HumanMessage(content="colour? reply in json")]).answer for _ in range(2)]
    assert got == ["red", "blue"]
    assert all(r.body.get("response_format", {}).get("type") == "json_object" for r in a.requests + b.requests)


def test_ollama_refuses_a_list_of_servers():
    with pytest.raises(BackendError, match="only the openai: backend"):
        create_chat_model(ModelConfig(spec="ollama:qwen", base_url=["http://127.0.0.1:1", "http://127.0.0.1:2"]))
