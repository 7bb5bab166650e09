"""Compare two run folders: metrics side by side, and the queries whose target rank moved most."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from agent_cir.errors import AgentCirError
from agent_cir.trace.io import read_typed_traces


class CompareError(AgentCirError):
    """A run folder cannot be compared (missing metrics.json or traces.jsonl)."""


def _load_metrics(run: Path) -> dict[str, Any]:
    path = run / "metrics.json"
    if not path.is_file():
        raise CompareError(f"{run} has no metrics.json; is it an `agent-cir eval` output folder (finished)?")
    return json.loads(path.read_text(encoding="utf-8"))


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"dress": {"recall@10": x}}`` -> ``{"dress/recall@10": x}``; plain metrics keep their names."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, prefix=f"{name}/"))
        elif isinstance(value, (int, float)):
            flat[name] = float(value)
    return flat


def target_ranks(run: Path) -> dict[str, dict[str, Any]]:
    path = run / "traces.jsonl"
    if not path.is_file():
        raise CompareError(f"{run} has no traces.jsonl")
    ranks = {}
    for trace in read_typed_traces(path):
        if trace.eval is not None:
            ranks[trace.query_id] = {"rank": trace.eval.target_rank, "ranked": trace.eval.ranked,
                                     "text": trace.query.text if "query" in trace.model_fields_set else None}
    return ranks


def _log_rank(rank: int | None, ranked: int | None) -> float:
    # An unranked target sits just below the end of the ranking.
    return math.log((rank if rank is not None else (ranked or 0) + 1))


def compare_runs(run_a: str | Path, run_b: str | Path, top: int = 10) -> dict[str, Any]:
    """Metrics of both runs (same keys, with B - A), and the ``top`` queries whose target rank changed most
    (by the change of log rank: 1 -> 5 counts more than 101 -> 105)."""
    run_a, run_b = Path(run_a), Path(run_b)
    metrics_a, metrics_b = _load_metrics(run_a), _load_metrics(run_b)
    flat_a, flat_b = flatten_metrics(metrics_a.get("metrics", {})), flatten_metrics(metrics_b.get("metrics", {}))
    rows = []
    for name in list(dict.fromkeys([*flat_a, *flat_b])):
        a, b = flat_a.get(name), flat_b.get(name)
        rows.append({"metric": name, "a": a, "b": b, "delta": (b - a) if a is not None and b is not None else None})
    ranks_a, ranks_b = target_ranks(run_a), target_ranks(run_b)
    common = [q for q in ranks_a if q in ranks_b]
    changes = []
    for query_id in common:
        ra, rb = ranks_a[query_id], ranks_b[query_id]
        if ra["rank"] == rb["rank"]:
            continue
        shift = _log_rank(rb["rank"], rb["ranked"]) - _log_rank(ra["rank"], ra["ranked"])
        changes.append(
            {"query_id": query_id, "rank_a": ra["rank"], "rank_b": rb["rank"], "text": ra["text"], "log_shift": shift}
        )
    changes.sort(key=lambda change: (-abs(change["log_shift"]), change["query_id"]))
    improved = sum(1 for c in changes if c["log_shift"] < 0)
    return {
        "a": {"path": str(run_a), "recipe": metrics_a.get("recipe"), "dataset": metrics_a.get("dataset"),
              "surrogate": metrics_a.get("surrogate")},
        "b": {"path": str(run_b), "recipe": metrics_b.get("recipe"), "dataset": metrics_b.get("dataset"),
              "surrogate": metrics_b.get("surrogate")},
        "metrics": rows,
        "common_queries": len(common),
        "improved": improved,
        "worsened": len(changes) - improved,
        "changes": changes[:top],
    }


def format_comparison(comparison: dict[str, Any]) -> str:
    a, b = comparison["a"], comparison["b"]
    lines = [
        f"A: {a['path']}  ({(a['recipe'] or {}).get('name')}, {a['dataset']}{', surrogate' if a['surrogate'] else ''})",
        f"B: {b['path']}  ({(b['recipe'] or {}).get('name')}, {b['dataset']}{', surrogate' if b['surrogate'] else ''})",
        "",
        f"{'metric':<28}{'A':>10}{'B':>10}{'B-A':>10}",
    ]
    for row in comparison["metrics"]:
        cells = [f"{v:>10.2f}" if v is not None else f"{'-':>10}" for v in (row["a"], row["b"], row["delta"])]
        lines.append(f"{row['metric']:<28}{''.join(cells)}")
    lines += [
        "",
        f"{comparison['common_queries']} queries in both runs: target rank better in B for {comparison['improved']}, "
        f"worse for {comparison['worsened']}",
    ]
    if comparison["changes"]:
        lines.append(f"largest target-rank changes (rank in A -> rank in B; '-' = not in the kept ranking):")
        for change in comparison["changes"]:
            ra = change["rank_a"] if change["rank_a"] is not None else "-"
            rb = change["rank_b"] if change["rank_b"] is not None else "-"
            text = (change["text"] or "")[:60]
            lines.append(f"  {change['query_id']:<20}{ra!s:>6} -> {rb!s:<6} {text}")
    return "\n".join(lines)


# ---------- ours against the paper's numbers ----------
def _norm(text: str | None) -> str:
    return "".join(ch for ch in (text or "").lower().replace("/", "-") if ch.isalnum() or ch == "-")


def _published_tag(entry: dict[str, Any]) -> str:
    """The weights a published row names: its ``pretrained`` field, else a tag in parentheses in ``backbone``."""
    tag = entry.get("pretrained")
    if tag:
        return str(tag)
    _, _, rest = str(entry.get("backbone", "")).partition("(")
    return rest.rstrip(") ").strip()


def _backbone_matches(entry: dict[str, Any], encoder: dict[str, Any]) -> bool:
    """``ViT-L/14`` matches open_clip ``ViT-L-14``; the row's pretrained tag, when known, must match too
    (ViT-L-14 openai and ViT-L-14 laion2b_s32b_b82k are different models)."""
    model = str(entry.get("backbone", "")).partition("(")[0]
    if _norm(model) != _norm(encoder.get("model")):
        return False
    tag = _published_tag(entry)
    return not tag or _norm(tag) == _norm(encoder.get("pretrained"))


def compare_published(run: str | Path, published: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Ours beside the paper's for every metric they share, and the settings that differ.

    ``published`` defaults to the entries of the run's own recipe (run.json ``recipe.published``)."""
    run = Path(run)
    manifest_path = run / "run.json"
    if not manifest_path.is_file():
        raise CompareError(f"{run} has no run.json; is it an `agent-cir eval` output folder?")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    metrics = _load_metrics(run)
    recipe = manifest.get("recipe") or {}
    entries = published if published is not None else list(recipe.get("published") or [])
    dataset, split = metrics.get("dataset"), metrics.get("split")
    ours = flatten_metrics(metrics.get("metrics", {}))
    # The encoder that actually ran (an index decides it) over the recipe's own setting.
    used = manifest.get("encoder") or {}
    encoder = used if used.get("model") else (recipe.get("encoder") or {})
    our_models = [m.get("spec", "") for m in (manifest.get("models") or {}).values()]
    rows, differences, unshared = [], [], []
    for entry in entries:
        if entry.get("dataset") != dataset:
            continue
        if entry.get("split") != split or entry.get("metric") not in ours:
            unshared.append(entry)
            continue
        value = ours[entry["metric"]]
        rows.append({"metric": entry["metric"], "ours": value, "paper": float(entry["value"]),
                     "delta": value - float(entry["value"]), "backbone": entry.get("backbone"),
                     "source": entry.get("source")})
        if not _backbone_matches(entry, encoder):
            tag = _published_tag(entry)
            paper = f"{entry.get('backbone')}" + (f" / {tag}" if tag and tag not in str(entry.get("backbone")) else "")
            differences.append(f"backbone: paper {paper}, ours {encoder.get('model')} ({encoder.get('pretrained')})")
        elif not _published_tag(entry):
            differences.append(f"backbone weights: the paper's row ({entry.get('backbone')}) names no pretrained "
                               "weights; only the architecture was compared")
        llm = entry.get("llm")
        if llm and not any(_norm(llm) in _norm(spec) for spec in our_models):
            differences.append(f"LLM: paper {llm}, ours {', '.join(our_models) or 'none'}")
    if metrics.get("surrogate"):
        differences.append("surrogate data: gallery = captions, text-to-text retrieval; not comparable with the paper")
    for note in metrics.get("notes", []):
        if "not comparable" in note:
            differences.append(note)
    if entries and not rows:
        same = [e for e in entries if e.get("dataset") == dataset] or entries
        splits = sorted({f"{e.get('dataset')} {e.get('split')}" for e in same})
        differences.append(f"no shared metric: the paper reports {', '.join(splits)}; this run is {dataset} {split}")
    return {
        "path": str(run), "recipe": recipe.get("name"), "dataset": dataset, "split": split,
        "rows": rows, "differences": list(dict.fromkeys(differences)), "unshared": unshared,
        "queries": metrics.get("queries"),
    }


def format_published(comparison: dict[str, Any]) -> str:
    lines = [f"{comparison['path']}  ({comparison['recipe']}, {comparison['dataset']} {comparison['split']}) vs the paper"]
    if comparison["rows"]:
        lines.append(f"{'metric':<28}{'ours':>10}{'paper':>10}{'diff':>10}  source")
        for row in comparison["rows"]:
            lines.append(f"{row['metric']:<28}{row['ours']:>10.2f}{row['paper']:>10.2f}{row['delta']:>+10.2f}  {row['source']}")
    else:
        lines.append("  no published number shares a metric with this run")
    for difference in comparison["differences"]:
        lines.append(f"  settings differ: {difference}")
    queries = comparison.get("queries") or {}
    if queries.get("not_evaluated"):
        lines.append(f"  {queries['not_evaluated']} queries not evaluated count as misses")
    return "\n".join(lines)
