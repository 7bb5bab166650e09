"""With the cache off, a SIGKILL during an eval loses no model answer (issue 18, case 6, in full): every answer is
in the run's own store (eval/answers.py) before it is used, and the resume re-issues only the calls that had not
answered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent_cir.eval.answers import ANSWERS_NAME, RunAnswers
from tests.conftest import REPO_ROOT

QUERIES = 30
KILL_AT = 12  # the 12th rewrite call: the 30 queries are one chunk (the recipe's), 11 calls have answered

# The eval in a subprocess whose fake LLM SIGKILLs the whole process at call KILL_AT (what the OOM killer or
# `kill -9` does: no finally, no flush).
KILLED_EVAL = """
import json, os, signal, sys
from tests.fixtures.chat import fake_model
from tests.fixtures.pipeline import BagOfWordsEncoder
from agent_cir.eval.runner import run_eval
mini, out, kill_at = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
calls = []
def rewriter(messages):
    calls.append(1)
    if len(calls) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return json.dumps({"reasoning": "r", "target_description": f"answer {kill_at}-{len(calls)}"})
run_eval(dataset="cirr", split="val", images_root=None, recipe="surrogate_rewrite", gallery_captions=mini["captions"],
         annotations=mini["annotations"], encoder=BagOfWordsEncoder(), progress=False, max_concurrency=1, out_dir=out,
         models={"llm": fake_model(respond=rewriter)}, overrides={"cache": {"enabled": False}})
print(json.dumps({"calls": len(calls)}))
"""


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _eval_in_subprocess(mini: dict, out: Path, kill_at: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", KILLED_EVAL, json.dumps({k: str(v) for k, v in mini.items()}), str(out), str(kill_at)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=240,
    )


@pytest.mark.timeout(400)
def test_a_killed_uncached_eval_resumes_without_repeating_a_call_that_answered(benchmarks_dir, tmp_path) -> None:
    from tests.fixtures.eval import write_mini_cirr

    mini = write_mini_cirr(benchmarks_dir, tmp_path / "mini", queries=QUERIES)
    out = tmp_path / "run"
    killed = _eval_in_subprocess(mini, out, kill_at=KILL_AT)
    assert killed.returncode == -9, killed.stderr[-2000:]
    traced = _lines(out / "traces.jsonl") if (out / "traces.jsonl").exists() else []
    assert traced == []  # no query of the chunk had passed every stage: the store alone kept the answers
    assert len(RunAnswers(out)) == KILL_AT - 1  # but every answer had reached the disk

    resumed = _eval_in_subprocess(mini, out, kill_at=0)  # the same script and fake model, never killed
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    calls = json.loads(resumed.stdout.strip().splitlines()[-1])["calls"]
    assert calls == QUERIES - (KILL_AT - 1)  # without the store: 30, every unfinished query's call again
    traces = _lines(out / "traces.jsonl")
    assert len(traces) == QUERIES and len({t["query_id"] for t in traces}) == QUERIES
    calls_of = [call for t in traces for stage in t["stages"] for call in stage["calls"]]
    from_killed_run = [call for call in calls_of if f"answer {KILL_AT}-" in call["raw"]]
    assert len(from_killed_run) == KILL_AT - 1  # each answer of the killed run used once, none asked again
    assert sum(call["cache"] == "hit" for call in calls_of) == KILL_AT - 1  # replayed from the store
    assert all(call["cache"] in ("off", "hit") for call in calls_of)  # the cache stays off, as configured
    assert not (out / ANSWERS_NAME).exists()  # the run is complete: its answers are in the traces


def test_the_answer_store_ignores_a_torn_line_and_refuses_a_symlink(tmp_path) -> None:
    from agent_cir.errors import AgentCirError

    store = RunAnswers(tmp_path)
    store.put("k1", {"raw": "one"})
    store.close()
    with open(tmp_path / ANSWERS_NAME, "a", encoding="utf-8") as handle:
        handle.write('{"key": "k2", "value": {"raw": "tw')  # killed mid-line
    again = RunAnswers(tmp_path)
    assert again.get("k1") == {"raw": "one"} and again.get("k2") is None
    again.put("k2", {"raw": "two"})  # appended after the torn line, still read back
    assert RunAnswers(tmp_path).get("k2") == {"raw": "two"}

    victim, folder = tmp_path / "mine.txt", tmp_path / "linked"
    victim.write_text("keep", encoding="utf-8")
    folder.mkdir()
    (folder / ANSWERS_NAME).symlink_to(victim)
    with pytest.raises(AgentCirError, match="symlink"):
        RunAnswers(folder)
    assert victim.read_text(encoding="utf-8") == "keep"


def test_a_call_the_store_did_not_answer_is_traced_as_cache_off(tmp_path) -> None:
    from tests.fixtures.chat import fake_model

    from agent_cir.backends.invoke import invoke
    from agent_cir.prompts import load_prompt

    store = RunAnswers(tmp_path)
    prompt = load_prompt("caption")
    model = fake_model(["a red square", "never asked"])
    first = invoke(model, [("user", "x")], prompt=prompt, cache=store)
    second = invoke(model, [("user", "x")], prompt=prompt, cache=store)
    assert (first.cache, second.cache) == ("off", "hit") and second.raw == "a red square"
