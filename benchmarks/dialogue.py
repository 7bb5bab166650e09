"""Multi-turn retrieval with a simulated user on the CIRR text surrogate (ChatIR / PlugIR protocol).

Turn 0 is the CIR query (reference caption + modification) through ``Pipeline.session``. At each later turn the
agent asks one question (``prompts/dialogue_question.j2``) and a simulated user, an LLM that sees ONLY the target
image's gallery captions (``prompts/simulated_user.j2``; never the target id, the reference or the query),
answers it; the answer is the next turn (``Session.answer``). An answer may not copy the target's captions: every
word inside a word n-gram (default 4) shared with a target caption is removed before the agent sees it, and the
removed share is reported. Recall@1/10 of the target per turn, with the single-turn ensemble
(``surrogate_rewrite_ensemble``) on the same queries for comparison.

  # the LLM server of RESULTS.md on 127.0.0.1:8080 (agent and simulated user are the same Qwen2.5-Coder-1.5B)
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dialogue.py --limit 20 --turns 3 --out runs/dialogue_20
  # the full protocol (200 queries, turns 0..5), given the time:
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dialogue.py --limit 200 --turns 5 --out runs/dialogue_200
  # protocol check without a server (scripted models):
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dialogue.py --fake --limit 5 --turns 2 --out runs/dialogue_fake

A run appends one JSON line per finished query to OUT/dialogues.jsonl and resumes from it; OUT/summary.json and
the printed Markdown table hold the recall per turn.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's agent_cir, not an installed one

from agent_cir.backends import ChatModelHandle, create_chat_model, invoke
from agent_cir.config import ModelConfig
from agent_cir.prompts import load_prompt
from agent_cir.session import SessionError
from agent_cir.types import Query

USER_PROMPT = "simulated_user"
NGRAM = 4
RECALL_AT = (1, 10)
_WORD = re.compile(r"\w+", re.UNICODE)


# ------------------------------------------------------------------------------------------ copy guard
def _ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def caption_ngrams(captions: Sequence[str], n: int = NGRAM) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    for caption in captions:
        found |= _ngrams([w.lower() for w in _WORD.findall(caption)], n)
    return found


def copied_share(answer: str, captions: Sequence[str], n: int = NGRAM) -> float:
    """Share of the answer's words that lie inside a word n-gram it shares with a caption (0 = nothing copied)."""
    words = [w.lower() for w in _WORD.findall(answer)]
    if not words:
        return 0.0
    shared = caption_ngrams(captions, n)
    covered = set()
    for i in range(len(words) - n + 1):
        if tuple(words[i:i + n]) in shared:
            covered.update(range(i, i + n))
    return len(covered) / len(words)


def strip_copied(answer: str, captions: Sequence[str], n: int = NGRAM) -> str:
    """The answer without every word inside an n-gram it shares with a caption, repeated until none is left (a
    removal can join words into a new shared n-gram). The rest of the text, punctuation included, is kept."""
    shared = caption_ngrams(captions, n)
    text = answer
    while True:
        words = list(_WORD.finditer(text))
        lowered = [w.group().lower() for w in words]
        covered: set[int] = set()
        for i in range(len(words) - n + 1):
            if tuple(lowered[i:i + n]) in shared:
                covered.update(range(i, i + n))
        if not covered:
            return " ".join(text.split())
        kept, last = [], 0
        for i in sorted(covered):
            kept.append(text[last:words[i].start()])
            last = words[i].end()
        kept.append(text[last:])
        text = "".join(kept)


# ------------------------------------------------------------------------------------------ the simulated user
@dataclass
class SimulatedUser:
    """Answers the agent's question from the target's captions only; counts its calls."""

    model: ChatModelHandle
    cache: Any = None
    ngram: int = NGRAM
    calls: int = 0
    prompt: Any = field(default_factory=lambda: load_prompt(USER_PROMPT))

    def answer(self, question: str, target_captions: Sequence[str]) -> dict[str, Any]:
        messages = self.prompt.render_messages(captions=list(target_captions), question=question)
        call = invoke(self.model, messages, prompt=self.prompt, cache=self.cache)
        self.calls += call.cache != "hit"
        raw = " ".join(call.raw.split())[:400]
        stripped = strip_copied(raw, target_captions, self.ngram)
        return {"raw": raw, "answer": stripped, "copied_share": round(copied_share(raw, target_captions, self.ngram), 4),
                "prompt_hash": call.prompt_hash}


# ------------------------------------------------------------------------------------------ one dialogue
def run_dialogues(pipeline: Any, user: SimulatedUser, items: Sequence[tuple[Query, str, Sequence[str]]],
                  turns: int) -> list[dict[str, Any]]:
    """Turn 0 = the CIR query; turns 1..``turns``: question, simulated answer, search. The target's rank per turn.

    The dialogues of ``items`` ((query, target id, target captions) each) advance in lockstep, one kind of call
    at a time (every question, then every answer, then every rewrite): a llama.cpp server reuses the prompt
    prefix it evaluated last, so a template's long system part is read once per batch instead of once per call.
    """
    started = time.perf_counter()
    sessions = [pipeline.session(reference_id=q.reference_id, reference_caption=q.reference_caption, text=q.text)
                for q, _, _ in items]
    ranks = [[s.last_result.ranking.rank_of(target)] for s, (_, target, _) in zip(sessions, items)]
    exchanges: list[list[dict[str, Any]]] = [[] for _ in items]
    for _ in range(turns):
        questions = [s.ask() for s in sessions]
        replies = [user.answer(question, captions) for question, (_, _, captions) in zip(questions, items)]
        for number, (session, question, reply) in enumerate(zip(sessions, questions, replies)):
            exchange = {"question": question, **reply}
            try:
                session.answer(reply["answer"])
                ranks[number].append(session.last_result.ranking.rank_of(items[number][1]))
            except SessionError:  # nothing left after stripping: the turn brings no information
                exchange["skipped"] = "empty answer after stripping"
                session.record.turns[-1].asked = None
                ranks[number].append(ranks[number][-1])
            exchanges[number].append(exchange)
    seconds = round((time.perf_counter() - started) / max(1, len(items)), 2)
    return [{"query_id": query.id, "target": target, "ranks": ranks[n], "exchanges": exchanges[n],
             "descriptions": [t.target_description for t in sessions[n].history], "seconds": seconds}
            for n, (query, target, _) in enumerate(items)]


def run_dialogue(pipeline: Any, user: SimulatedUser, query: Query, target: str, target_captions: Sequence[str],
                 turns: int) -> dict[str, Any]:
    """One dialogue (:func:`run_dialogues` of one)."""
    return run_dialogues(pipeline, user, [(query, target, target_captions)], turns)[0]


def recall_table(records: Sequence[Mapping[str, Any]], turns: int) -> list[dict[str, float]]:
    rows = []
    for turn in range(turns + 1):
        ranks = [r["ranks"][turn] for r in records]
        row: dict[str, float] = {"turn": turn}
        for k in RECALL_AT:
            row[f"R@{k}"] = round(100.0 * sum(1 for rank in ranks if rank is not None and rank <= k) / max(1, len(ranks)), 2)
        rows.append(row)
    return rows


def baseline_recall(pipeline: Any, queries: Sequence[Query], targets: Mapping[str, str]) -> dict[str, float]:
    """The single-turn recipe on the same queries (its own rewrite prompt)."""
    results = pipeline.run_batch(list(queries), progress=False)
    ranks = {r.query_id: r.ranking.rank_of(targets[r.query_id]) for r in results}
    return {f"R@{k}": round(100.0 * sum(1 for q in queries if (ranks.get(q.id) or 10**9) <= k) / max(1, len(queries)), 2)
            for k in RECALL_AT}


# ------------------------------------------------------------------------------------------ the command
def _fake_models() -> tuple[Any, Any]:
    """Scripted agent and user for a protocol check without a server: the user copies the captions on purpose."""
    def agent(messages: list[Any]) -> str:
        text = str(messages[-1].content)
        if "Best matches so far" in text or "Requests so far" in text:
            return "What colour is it?"
        requests = re.findall(r"^- (?:asked \".*\", the user answered: )?(.*)$", text, re.M)
        return json.dumps({"reasoning": "fake", "target_description": " ".join(requests) or "an image"})

    def user(messages: list[Any]) -> str:
        text = str(messages[-1].content)
        described = text.split("The image you are looking for:")[-1].split("Question:")[0].strip()
        return f"It is like this: {described}"

    def handle(respond: Callable[[list[Any]], str], name: str) -> ChatModelHandle:
        return create_chat_model(ModelConfig(spec=f"fake:{name}", extra={"respond": respond}))

    return handle(agent, "agent"), handle(user, "user")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", default="../shared/data/benchmarks")
    parser.add_argument("--gallery-captions",
                        default="../shared/data/benchmarks/cirr_gallery_captions/cirr_labeled_images_cir_cleaned.json")
    parser.add_argument("--recipe", default="surrogate_rewrite_ensemble")
    parser.add_argument("--limit", type=int, default=200, help="the first N queries of the CIRR val dev subset")
    parser.add_argument("--turns", type=int, default=5, help="turns after turn 0")
    parser.add_argument("--ngram", type=int, default=NGRAM, help="copy guard: shared word n-gram length")
    parser.add_argument("--max-tokens", type=int, default=64, help="token budget of the agent's rewrite and question")
    parser.add_argument("--user-max-tokens", type=int, default=32, help="token budget of the simulated user's answer")
    parser.add_argument("--block", type=int, default=5, help="dialogues advanced in lockstep (saved per block)")
    parser.add_argument("--report", action="store_true", help="only summarise the dialogues OUT already holds")
    parser.add_argument("--out", required=True)
    parser.add_argument("--fake", action="store_true", help="scripted models (protocol check, no server)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the single-turn row of --recipe")
    parser.add_argument("--baselines", default="",
                        help="more single-turn recipes on the same queries, comma-separated (e.g. the no-LLM "
                        "surrogate_modification,surrogate_caption_mod); they run with --report too")
    args = parser.parse_args(argv)

    from agent_cir.encoders import create_encoder
    from agent_cir.eval.datasets.cirr import attach_reference_captions, load_cirr, locate
    from agent_cir.pipeline import Pipeline
    from agent_cir.retrieval.gallery import RetrievalGallery, load_gallery_captions

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = load_cirr(locate([Path(args.annotations)]), "val")
    table = load_gallery_captions(args.gallery_captions)
    attach_reference_captions(split, table)
    queries = [q for q in split.queries if q.reference_caption and table.get(q.meta["target"])][: args.limit]
    targets = {q.id: q.meta["target"] for q in queries}

    from agent_cir.config import load_recipe

    recipe = load_recipe(args.recipe)
    encoder = create_encoder(recipe.encoder)
    gallery = RetrievalGallery.from_captions(dict(table), encoder, ids=list(split.gallery_ids or []))
    # one model is agent (dialogue rewrite and question) and user; short answers: this machine has 2 CPU cores
    # plain text answers: a json_mode attempt the schema check rejects is made again as plain text (two calls)
    overrides = {"models": {"llm": {"max_tokens": args.max_tokens}}, "rewrite": {"structured_output": False},
                 "session": {"rejected_per_turn": 0}}
    injected: dict[str, Any] = {}
    if args.fake:
        agent, user_model = _fake_models()
        injected = {"llm": agent}
    else:
        user_model = create_chat_model(recipe.models["llm"].model_copy(update={"max_tokens": args.user_max_tokens}))
    pipeline = Pipeline.from_config(recipe, gallery=gallery, encoder=encoder, overrides=overrides, models=injected)
    user = SimulatedUser(user_model, cache=pipeline.cache, ngram=args.ngram)

    log = out / "dialogues.jsonl"
    done: dict[str, dict[str, Any]] = {}
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run
            if len(record.get("ranks", [])) == args.turns + 1:
                done[record["query_id"]] = record
    started = time.perf_counter()
    todo = [q for q in queries if q.id not in done] if not args.report else []
    with open(log, "a", encoding="utf-8") as stream:
        for first in range(0, len(todo), args.block):
            block = todo[first:first + args.block]
            for record in run_dialogues(pipeline, user, [(q, targets[q.id], table[targets[q.id]]) for q in block],
                                        args.turns):
                done[record["query_id"]] = record
                stream.write(json.dumps(record, ensure_ascii=False) + "\n")
                stream.flush()
                print(f"[{len(done)}/{len(queries)}] {record['query_id']} ranks {record['ranks']}", file=sys.stderr)
    records = [done[q.id] for q in queries if q.id in done]  # --report: the finished ones, in query order
    rows = recall_table(records, args.turns)
    answers = [e for r in records for e in r["exchanges"]]
    summary = {
        "queries": len(records), "turns": args.turns, "recipe": args.recipe, "fake": args.fake, "ngram": args.ngram,
        "per_turn": rows,
        "answers": len(answers),
        "answers_with_copying": sum(1 for e in answers if e["copied_share"] > 0),
        "mean_copied_share_before_strip": round(sum(e["copied_share"] for e in answers) / max(1, len(answers)), 4),
        "answers_empty_after_strip": sum(1 for e in answers if "skipped" in e),
        "residual_copying_after_strip": sum(1 for r in records for e in r["exchanges"]
                                            if copied_share(e["answer"], table[r["target"]], args.ngram) > 0),
        "wall_seconds_this_run": round(time.perf_counter() - started, 1),
        "mean_seconds_per_dialogue_in_lockstep": round(sum(r["seconds"] for r in records) / max(1, len(records)), 1),
    }
    scored = [q for q in queries if q.id in done]
    baselines = [] if args.no_baseline or args.report else [args.recipe]
    baselines += [name.strip() for name in args.baselines.split(",") if name.strip()]
    summary["baselines_single_turn"] = {}
    for name in baselines:
        single = load_recipe(name)
        single_pipe = Pipeline.from_config(single, gallery=gallery, encoder=encoder,
                                           models=injected if single.model_stages() else None)
        summary["baselines_single_turn"][name] = baseline_recall(single_pipe, scored, targets)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"\n{len(records)} queries, turns 0..{args.turns}, recipe {args.recipe}{' (FAKE models)' if args.fake else ''}")
    print("| turn | R@1 | R@10 |\n|---|---|---|")
    for row in rows:
        print(f"| {row['turn']} | {row['R@1']:.2f} | {row['R@10']:.2f} |")
    for name, base in summary["baselines_single_turn"].items():
        print(f"| single-turn {name} | {base['R@1']:.2f} | {base['R@10']:.2f} |")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("per_turn",)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
