"""A prompt template cannot render without bound (issue 18, case 14): loops, repetition and output size."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent_cir import prompts
from agent_cir.prompts import PromptTemplate, RenderBudgetError, load_prompt


def _render(source: str, **variables):
    return PromptTemplate(name="t", path=Path("hostile.j2"), source=source).render_messages(**variables)


@pytest.fixture
def short_budget(monkeypatch):
    monkeypatch.setattr(prompts, "RENDER_SECONDS", 0.3)


@pytest.mark.parametrize("source", [
    "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}",
    "{% set L = [1,2,3,4,5,6,7,8,9,10] %}" + "".join(f"{{% for a{i} in L %}}" for i in range(12))
    + "{% endfor %}" * 12,
], ids=["nested-ranges", "nested-literal-lists-without-output"])
def test_nested_loops_stop_at_the_time_budget(short_budget, source):
    started = time.monotonic()
    with pytest.raises(RenderBudgetError, match="hostile.j2"):
        _render(source)
    assert time.monotonic() - started < 2.0


def test_output_past_the_size_budget_is_refused(short_budget):
    with pytest.raises(RenderBudgetError, match="characters"):
        _render("{% for a in range(99999) %}{% for b in range(99999) %}xxxxxxxxxx{% endfor %}{% endfor %}")


def test_a_huge_repetition_is_refused_before_it_is_built():
    started = time.monotonic()
    with pytest.raises(RenderBudgetError, match="repeating"):
        _render("{{ 'x' * 1000000000 }}")
    assert time.monotonic() - started < 1.0


def test_ordinary_templates_render_as_before():
    assert _render("hi {{ name }}: {% for c in cs %}{{ loop.index }}={{ c }} {% endfor %}", name="bob",
                   cs=["a", "b"]) == [("user", "hi bob: 1=a 2=b")]
    assert _render("{{ '-' * 3 }} {{ 2 ** 3 }}") == [("user", "--- 8")]
    messages = load_prompt("rewrite_cot").render_messages(caption="a dog", modification="make it red",
                                                           captions=["a dog"], num_descriptions=1)
    assert messages and all(body for _, body in messages)
