"""One :class:`Benchmark` per dataset: its gallery, reference rule, candidate restriction, metrics and submission.

The protocol belongs to the benchmark, not to the recipe: ``agent-cir eval`` applies it whatever the recipe says
(it overrides ``retrieve.exclude_reference`` and, where a metric needs the whole ranking, ``retrieve.k``) and
records it in run.json under ``protocol``. ``BENCHMARKS`` is the registry (a plain dict, the one list of
benchmarks: the CLI, the loaders and the recipe schema's names, checked equal to ``config/names.py``
BENCHMARK_NAMES on import, read it); each benchmark owns its loader (``load``), its categories and its target
rank. docs/PROTOCOLS.md cites the official code for every rule.

``agent-cir search`` over a user's own gallery is not a benchmark: there the reference keeps being excluded
(``retrieve.exclude_reference: true``, a product choice: a user rarely wants the photo they gave back first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from agent_cir.config import BENCHMARK_NAMES, Recipe, check_registry, unknown_name_message
from agent_cir.eval import metrics as M
from agent_cir.eval import submission as S
from agent_cir.eval.datasets import BenchmarkDataError, BenchmarkSplit
from agent_cir.eval.datasets import circo as circo_data
from agent_cir.eval.datasets import cirr as cirr_data
from agent_cir.eval.datasets import fashioniq as fashioniq_data
from agent_cir.eval.datasets import genecis as genecis_data
from agent_cir.retrieval.ranking import Ranking
from agent_cir.types import Query

KEEP_TOP = 50
"""Ranked ids kept per query: the largest K any metric or submission uses (mAP@50, R@50, 50-id submissions)."""


class Benchmark:
    """The protocol of one dataset. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    exclude_reference: ClassVar[bool]
    gallery: ClassVar[str]
    reference_rule: ClassVar[str]
    candidates: ClassVar[str] = "the whole gallery"
    submission_format: ClassVar[str | None] = None
    surrogate_ok: ClassVar[bool] = True
    sources: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[str] = "2"
    """Bumped when a rule changes, so a run folder of the old protocol is not resumed into."""

    categories: ClassVar[tuple[str, ...]] = ()
    """What ``--category`` chooses from (FashionIQ categories, GeneCIS tasks); empty: the benchmark has none."""

    # ---------- data ----------
    def locate(self, candidates: Sequence[Path]) -> Path:
        """The folder holding the official annotation files, among ``candidates`` (or their children)."""
        raise NotImplementedError

    def load_splits(self, folder: Path, split: str, chosen: Sequence[str], images_root: Path | None
                    ) -> list[BenchmarkSplit]:
        """One split per gallery (``chosen``: the categories, empty when the benchmark has none)."""
        raise NotImplementedError

    def default_categories(self, folder: Path) -> list[str]:
        return list(self.categories)

    def load(self, split: str, annotations: str | Path | Sequence[str | Path], images_root: str | Path | None = None,
             categories: Sequence[str] | None = None) -> list[BenchmarkSplit]:
        """Load ``split``; ``categories`` picks FashionIQ categories or GeneCIS tasks (default: all)."""
        # The arguments are checked before any file is looked for.
        if categories and not self.categories:
            with_categories = [b.name for b in BENCHMARKS.values() if b.categories]
            raise BenchmarkDataError(f"{self.name} has no categories (--category is for {' and '.join(with_categories)})")
        unknown = [c for c in categories or () if c not in self.categories]
        if unknown:
            raise BenchmarkDataError(
                f"{self.name}: unknown category {', '.join(unknown)}; choose from {', '.join(self.categories)}")
        candidates = [annotations] if isinstance(annotations, (str, Path)) else list(annotations)
        folder = self.locate([Path(c) for c in candidates if c is not None])
        root = Path(images_root).expanduser() if images_root is not None else None
        chosen = list(categories) if categories else self.default_categories(folder)
        return self.load_splits(folder, split, chosen, root)

    def prepare(self, split: BenchmarkSplit, work_dir: Path) -> None:
        """Make the gallery concrete once the images are known to exist (scan a folder, cut crops)."""

    # ---------- protocol ----------
    def retrieve_overrides(self, recipe: Recipe, splits: Sequence[BenchmarkSplit]) -> dict[str, Any]:
        retrieve: dict[str, Any] = {}
        if recipe.retrieve.exclude_reference != self.exclude_reference:
            retrieve["exclude_reference"] = self.exclude_reference
        if self.exclude_reference and recipe.retrieve.exclude_reference_by != "id":
            # The official evaluators remove the reference by name; a byte-identical copy under another name
            # stays (it may be a CIRR img_set member).
            retrieve["exclude_reference_by"] = "id"
        k = max(recipe.retrieve.k, KEEP_TOP, self.min_k(splits))
        if k != recipe.retrieve.k:
            retrieve["k"] = k
        return {"retrieve": retrieve} if retrieve else {}

    def min_k(self, splits: Sequence[BenchmarkSplit]) -> int:
        return 0

    def apply_query_options(self, recipe: Recipe, splits: Sequence[BenchmarkSplit]) -> list[str]:
        """Adjust the loaded queries to the recipe's protocol options (CIRCO's query text); returns notes."""
        return []

    def protocol_record(self) -> dict[str, Any]:
        return {
            "benchmark": self.name, "version": self.version, "gallery": self.gallery,
            "reference": self.reference_rule, "exclude_reference": self.exclude_reference,
            "candidates": self.candidates, "submission": self.submission_format, "sources": list(self.sources),
        }

    # ---------- per-query record ----------
    def restricted_members(self, query: Query) -> set[str]:
        """Images a restricted metric needs beyond the top KEEP_TOP (kept in the trace's ranking)."""
        return set()

    def scored_ranking(self, query: Query, ranking: Ranking) -> Ranking:
        """The ranking the metrics read (CIRR drops the reference first)."""
        return ranking

    def eval_record(self, split: BenchmarkSplit, query: Query, ranking: Ranking) -> dict[str, Any]:
        """What the metrics need from one query, read from the ranking's arrays: the top ``KEEP_TOP`` ids, then
        every restricted-metric member ranked further down (in rank order), the length, and the target's rank."""
        scored = self.scored_ranking(query, ranking)
        kept = scored.head_ids(KEEP_TOP)
        below = sorted((rank, member) for member in self.restricted_members(query)
                       if (rank := scored.rank_of(member)) is not None and rank > KEEP_TOP)
        return {
            "dataset": split.dataset, "split": split.split, "category": split.category,
            "ranking": kept + [member for _, member in below],
            "kept_top": KEEP_TOP, "ranked": len(scored),
            "target_rank": self.target_rank(query, scored),
        }

    def target_rank(self, query: Query, scored: Ranking) -> int | None:
        """1-based rank of the (primary) target in the scored ranking (``scored_ranking``: CIRR without the
        reference); None when it is not ranked. The one target-rank rule of a benchmark (traces, compare, report)."""
        target = query.meta.get("target")
        return None if target is None else scored.rank_of(str(target))

    # ---------- metrics ----------
    def split_metrics(self, split: BenchmarkSplit, queries: Sequence[Query],
                      rankings: Mapping[str, Any]) -> dict[str, float]:
        raise NotImplementedError

    def aggregate(self, per_split: dict[str, dict[str, float]], notes: list[str]) -> dict[str, Any]:
        """The metrics block of metrics.json from the per-split metrics."""
        return next(iter(per_split.values()), {})

    # ---------- submission ----------
    def write_submission(self, out: Path, split: BenchmarkSplit, queries: Sequence[Query],
                         rankings: Mapping[str, Any]) -> dict[str, Any]:
        return {"files": [], "note": f"{self.name} test has no submission server format here"}


class CIRCO(Benchmark):
    name = "circo"
    exclude_reference = False
    gallery = ("every image of COCO 2017 unlabeled (123,403); ours: every numeric *.jpg under ROOT/unlabeled2017, "
               "a note when the count differs")
    reference_rule = "kept in the gallery (never a ground truth; the official code ranks the full gallery)"
    submission_format = "submission_circo_test.json: {query id: [50 COCO ids]}, every test query"
    surrogate_ok = False
    sources = (
        "miccunifi/CIRCO src/dataset.py:41-47 (gallery = image_info_unlabeled2017.json)",
        "miccunifi/CIRCO src/evaluation.py:53-64 (mAP@K, Recall@K on the prediction list as given)",
        "miccunifi/CIRCO src/evaluation.py:66-68, 78-80 (mAP@10 per semantic aspect)",
        "miccunifi/SEARLE src/validate.py:327-329 and src/generate_test_submission.py:229-234 (top-50 over the full gallery, no reference mask)",
        "ExplainableML/Vision_by_Language src/compute_results.py:150-158, 174-179 (same, CIReVL)",
    )

    def locate(self, candidates):
        return circo_data.locate(list(candidates))

    def load_splits(self, folder, split, chosen, images_root):
        return [circo_data.load_circo(folder, split, images_root)]

    def prepare(self, split: BenchmarkSplit, work_dir: Path) -> None:
        circo_data.scan_gallery(split)

    def apply_query_options(self, recipe: Recipe, splits: Sequence[BenchmarkSplit]) -> list[str]:
        """The recipe's query text convention (``circo.query_text``, shared_concept or not)."""
        return [note for split in splits for note in circo_data.apply_query_text(split, recipe.circo.query_text)]

    def split_metrics(self, split, queries, rankings):
        ground_truth = {q.id: q.meta["ground_truth"] for q in queries}
        metrics = M.circo_metrics(rankings, ground_truth, {q.id: q.meta["target"] for q in queries})
        # per-semantic-aspect mAP@10, as the official evaluator reports it (src/evaluation.py:66-80)
        metrics.update(M.circo_semantic_map10(rankings, ground_truth,
                                              {q.id: q.meta.get("semantic_aspects") or [] for q in queries}))
        return metrics

    def write_submission(self, out, split, queries, rankings):
        payload = S.circo_submission(rankings, query_ids=[q.id for q in split.queries])
        return {"files": [str(S.write_json(out / "submission_circo_test.json", payload))],
                "queries": len(payload), "complete": True}


class CIRR(Benchmark):
    name = "cirr"
    exclude_reference = True
    gallery = "the split's image_splits/split.rc2.<split>.json (2,297 val, 2,315 test1 images)"
    reference_rule = "removed from the ranking before scoring (Recall@K and Recall_subset@K)"
    candidates = "the whole gallery; Recall_subset ranks img_set.members minus the reference inside that ranking"
    submission_format = "submission_cirr_test1_{recall,recall_subset}.json with version rc2, every test1 pair"
    sources = (
        "miccunifi/SEARLE src/validate.py:195-211 (reference mask, group mask)",
        "miccunifi/SEARLE src/generate_test_submission.py:84-100 (test1 submission)",
        "ExplainableML/Vision_by_Language src/compute_results.py:76-89",
        "Cuberick-Orion/CIRR Test-split_server.md (submission format)",
    )

    def locate(self, candidates):
        return cirr_data.locate(list(candidates))

    def load_splits(self, folder, split, chosen, images_root):
        return [cirr_data.load_cirr(folder, split, images_root)]

    def min_k(self, splits):
        # Recall_subset ranks a handful of images inside the full ranking: rank the whole gallery.
        return max((len(split.gallery_ids or []) for split in splits), default=0)

    def restricted_members(self, query):
        return {str(m) for m in query.meta.get("subset", [])}

    def scored_ranking(self, query, ranking):
        return ranking.without([query.reference_id]) if query.reference_id is not None else ranking

    def split_metrics(self, split, queries, rankings):
        return M.cirr_metrics(rankings, {q.id: q.reference_id for q in queries},
                              {q.id: q.meta["target"] for q in queries}, {q.id: q.meta["subset"] for q in queries})

    def write_submission(self, out, split, queries, rankings):
        recall, subset = S.cirr_submissions(
            rankings, {q.id: q.reference_id for q in split.queries}, {q.id: q.meta["subset"] for q in split.queries},
            query_ids=[q.id for q in split.queries],
        )
        files = [str(S.write_json(out / "submission_cirr_test1_recall.json", recall)),
                 str(S.write_json(out / "submission_cirr_test1_recall_subset.json", subset))]
        return {"files": files, "queries": len(recall) - 2, "complete": True}


class FashionIQ(Benchmark):
    name = "fashioniq"
    exclude_reference = False
    gallery = "per category: that category's image_splits/split.<category>.val.json"
    reference_rule = "kept in the gallery"
    categories = fashioniq_data.CATEGORIES
    sources = (
        "miccunifi/SEARLE src/validate.py:93-106 (argsort over the category gallery, no reference mask)",
        "ExplainableML/Vision_by_Language src/compute_results.py:29-45",
    )

    def locate(self, candidates):
        return fashioniq_data.locate(list(candidates))

    def load_splits(self, folder, split, chosen, images_root):
        return [fashioniq_data.load_fashioniq(folder, split, category, images_root) for category in chosen]

    def split_metrics(self, split, queries, rankings):
        return M.fashioniq_metrics(rankings, {q.id: q.meta["target"] for q in queries})

    def aggregate(self, per_split, notes):
        result: dict[str, Any] = dict(per_split)
        if len(per_split) > 1:
            result["mean"] = M.fashioniq_mean(per_split)
        return result


class GeneCIS(Benchmark):
    name = "genecis"
    exclude_reference = False
    gallery = "per query: the official list of 15 (target first + 14 distractors, copies kept)"
    reference_rule = "not in the query's list (nothing is removed)"
    candidates = "the query's own list only (Query.candidate_ids); attribute tasks rank instance crops"
    sources = (
        "facebookresearch/genecis datasets/coco_dataset.py:43-69, datasets/vaw_dataset.py:39-113",
        "facebookresearch/genecis eval/eval_functions.py:83-124 (sort of the 15 similarities, R@1,2,3)",
        "ExplainableML/Vision_by_Language src/compute_results.py:199-225",
    )

    categories = genecis_data.TASKS

    def locate(self, candidates):
        return genecis_data.locate(list(candidates))

    def default_categories(self, folder):
        # Every task whose file is there (the attribute files are often fetched apart).
        return [task for task in self.categories if (folder / f"{task}.json").is_file()]

    def load_splits(self, folder, split, chosen, images_root):
        if split != "val":
            raise BenchmarkDataError(f"GeneCIS is evaluated on its val files only, not {split!r}")
        return [genecis_data.load_genecis(folder, task, images_root) for task in chosen]

    def prepare(self, split, work_dir):
        genecis_data.materialise_crops(split, work_dir / "genecis-vg-crops")

    def min_k(self, splits):
        return max((len(q.candidate_ids or []) for split in splits for q in split.queries), default=0)

    def restricted_members(self, query):
        return {str(m) for m in query.meta.get("gallery", [])}

    def target_rank(self, query, scored):
        # The per-query list is short (15) and may hold copies: the rank in the official list, over ids.
        target, gallery = query.meta.get("target"), [str(g) for g in query.meta.get("gallery", [])]
        if target is None or not gallery:
            return None
        try:
            return M.genecis_list_rank(scored.head_ids(), gallery, query.id)
        except M.MetricError:
            return None

    def split_metrics(self, split, queries, rankings):
        return M.genecis_metrics(rankings, {q.id: q.meta["target"] for q in queries},
                                 {q.id: q.meta["gallery"] for q in queries})

    def aggregate(self, per_split, notes):
        result: dict[str, Any] = dict(per_split)
        average = M.genecis_average(per_split, genecis_data.TASKS)
        if average is not None:
            result["average"] = average
        else:
            missing = [task for task in genecis_data.TASKS if task not in per_split]
            notes.append(
                "GeneCIS average not reported: published averages are over all four tasks and "
                f"{', '.join(missing)} did not run"
            )
        return result


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (CIRCO(), CIRR(), FashionIQ(), GeneCIS())}
"""Benchmark name -> its protocol, loader and target rank: the one list of benchmarks."""
check_registry("benchmarks", BENCHMARK_NAMES, BENCHMARKS, "agent_cir/eval/benchmarks.py BENCHMARKS")


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise BenchmarkDataError(unknown_name_message("dataset", name, BENCHMARKS))
    return BENCHMARKS[name]


def load_benchmark(
    dataset: str,
    split: str,
    annotations: str | Path | Sequence[str | Path],
    images_root: str | Path | None = None,
    categories: Sequence[str] | None = None,
) -> list[BenchmarkSplit]:
    """Load ``dataset``/``split`` (one :class:`BenchmarkSplit` per gallery: FashionIQ per category, GeneCIS per
    task); ``categories`` picks FashionIQ categories or GeneCIS tasks (default: all)."""
    return get_benchmark(dataset).load(split, annotations, images_root=images_root, categories=categories)


def locate_annotations(dataset: str, candidates: Sequence[str | Path]) -> Path:
    """The folder holding ``dataset``'s official annotation files, among ``candidates`` (or their children)."""
    return get_benchmark(dataset).locate([Path(c) for c in candidates if c is not None])
