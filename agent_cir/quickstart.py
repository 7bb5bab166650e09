"""The first run: index the packaged example gallery, answer one composed query through all four stages,
write the HTML report. Works from any clone or pip install, with no data of your own.

With the Hugging Face Hub reachable it runs the ``local`` recipe (real weights, in-process). Offline (or
asked to, or when the weights cannot be loaded) it runs the very same recipe with only the weights
swapped: a random-init CLIP of the same architecture and scripted (``fake:``) chat models that answer
with the example's known descriptions. The result says which of the two it was, everywhere it is shown.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_cir.atomic import write_text_atomic
from agent_cir.errors import AgentCirError

DEFAULT_FOLDER = Path("agent_cir_quickstart")
MARKER_NAME = ".agent_cir_quickstart"
"""A file in every folder the quickstart made; a folder without it is the user's and is never written to."""
RECIPE = "local"


class QuickstartError(AgentCirError):
    """The quickstart cannot run as asked (folder not ours, unknown example query)."""


@dataclass(frozen=True)
class ExampleQuery:
    id: str
    reference: str
    """File name in the example gallery."""
    text: str
    target: str
    reference_description: str
    target_description: str


@dataclass
class QuickstartOutcome:
    folder: Path
    offline_reason: str | None
    """Why the scripted, random-weight path ran; None when real weights ran."""
    query: ExampleQuery
    result: Any
    """The pipeline's Result (final ranking and trace)."""
    trace_path: Path
    report: Path
    recipe: Any
    """The Recipe that ran (``local``, or its offline twin)."""
    encoder: dict[str, Any]

    @property
    def offline(self) -> bool:
        return self.offline_reason is not None

    def target_rank(self, stage: str = "final") -> int | None:
        """Rank of the known target after retrieval (``stage='retrieve'``) or at the end (None: not listed)."""
        if stage == "final":
            ids = [c.id for c in self.result.candidates]
        else:
            record = self.result.stage(stage)
            # Only the retrieve stage's output has candidates; any other stage name lists none.
            ids = [c.id for c in getattr(record.output, "candidates", None) or []] if record is not None else []
        return ids.index(self.query.target) + 1 if self.query.target in ids else None


# ------------------------------------------------------------------------------------------ the examples


def examples_dir() -> Path:
    """``agent_cir/examples_data``: the generated gallery (scripts/make_example_gallery.py) and examples.json."""
    return Path(__file__).resolve().parent / "examples_data"


def example_gallery() -> Path:
    return examples_dir() / "gallery"


def example_queries() -> list[ExampleQuery]:
    manifest = json.loads((examples_dir() / "examples.json").read_text(encoding="utf-8"))
    return [ExampleQuery(**entry) for entry in manifest["queries"]]


def pick_query(query_id: str | None) -> ExampleQuery:
    queries = example_queries()
    if query_id is None:
        return queries[0]
    for query in queries:
        if query.id == query_id:
            return query
    known = ", ".join(q.id for q in queries)
    raise QuickstartError(f"no example query {query_id!r}; the examples are: {known}")


# ----------------------------------------------------------------------------------- online or offline


def offline_reason(force_offline: bool, probe: Callable[[], str | None] | None = None) -> str | None:
    """Why the quickstart must run without real weights, or None when it may try them.

    The network is touched only when neither ``--offline`` nor HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE says
    otherwise (the test suite sets HF_HUB_OFFLINE=1, so tests never probe).
    """
    from agent_cir.encoders.base import hub_offline, hub_unreachable_reason

    if force_offline:
        return "--offline was given"
    if hub_offline():
        return "HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set"
    unreachable = (probe or hub_unreachable_reason)()
    if unreachable:
        return f"the Hugging Face Hub is not reachable: {unreachable}"
    return None


def scripted_recipe(query: ExampleQuery) -> dict[str, Any]:
    """The ``local`` recipe with only the weights swapped: random-init CLIP of the same architecture, and
    ``fake:`` chat models in the same roles. The captioner and the rewriter answer with the example's
    known descriptions; the judge keeps the retrieval order. No cache: nothing real to remember."""
    from agent_cir.config import load_recipe

    recipe = load_recipe(RECIPE).model_dump(mode="json")
    recipe["name"] = f"{RECIPE} (offline: random-init CLIP, scripted models)"
    recipe["encoder"]["pretrained"] = "none"
    caption = query.reference_description[0].upper() + query.reference_description[1:] + "."
    rewrite = json.dumps({
        "reasoning": f"scripted: the example's known target for {query.text!r}",
        "target_description": query.target_description[0].upper() + query.target_description[1:] + ".",
    })
    judge = "Scripted judge (no model): keeping the retrieval order.\nFinal answer: " + " > ".join(
        str(cell) for cell in range(1, recipe["rerank"]["k"] + 1)
    )
    answers = {"vlm": caption, "llm": rewrite, "judge": judge}
    for name, entry in recipe["models"].items():
        recipe["models"][name] = {"spec": f"fake:quickstart-{name}", "extra": {"responses": [answers[name]]}}
    recipe["cache"] = {"enabled": False, "path": None}
    return recipe


# ----------------------------------------------------------------------------------------- the folder


def prepare_folder(folder: Path) -> Path:
    """Create the quickstart folder, or reuse one the quickstart made; refuse any other non-empty folder."""
    folder = folder.expanduser()
    if folder.exists() and not folder.is_dir():
        raise QuickstartError(f"{folder} is a file; give the quickstart a folder name with --out")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER_NAME).is_file():
        raise QuickstartError(
            f"{folder} already exists and was not made by the quickstart; nothing was written to it. "
            "Give another folder with --out"
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER_NAME).write_text("made by `agent-cir quickstart`; safe to delete with the folder\n",
                                      encoding="utf-8")
    return folder


def copy_gallery(folder: Path) -> Path:
    """The example images, copied into the folder (so that the index and the report never point into the
    installed package, which may move)."""
    target = folder / "gallery"
    target.mkdir(exist_ok=True)
    for source in sorted(example_gallery().glob("*.jpg")):
        destination = target / source.name
        if not destination.is_file() or destination.stat().st_size != source.stat().st_size:
            shutil.copyfile(source, destination)
    return target


def _index_name(encoder_config: Any) -> str:
    label = f"{encoder_config.model}-{encoder_config.pretrained or 'none'}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)


# ------------------------------------------------------------------------------------------- the run


def _run_recipe(recipe: Any, folder: Path, gallery: Path, query: ExampleQuery,
                status: Callable[[str], None], progress: bool) -> tuple[Any, Any, dict[str, Any]]:
    from agent_cir.config import Recipe, recipe_from_dict
    from agent_cir.encoders import create_encoder
    from agent_cir.index import GalleryIndex
    from agent_cir.pipeline import Pipeline
    from agent_cir.provenance import encoder_provenance
    from agent_cir.trace.model import EncoderRecord
    from agent_cir.types import Query

    recipe = recipe if isinstance(recipe, Recipe) else recipe_from_dict(recipe, source="quickstart")
    status(f"loading the encoder ({recipe.encoder.model} / {recipe.encoder.pretrained}) ...")
    encoder = create_encoder(recipe.encoder)
    status(f"indexing {len(list(gallery.glob('*.jpg')))} example images ...")
    index = GalleryIndex.build(gallery, folder / "index" / _index_name(recipe.encoder), encoder,
                               workers=0, progress=progress)
    specs = sorted({model.spec for model in recipe.models.values()})
    status(f"loading the models ({', '.join(specs)}) ...")
    pipeline = Pipeline.from_config(recipe, index=index, encoder=encoder, artifacts_dir=folder / "run" / "artifacts")
    status("running caption -> rewrite -> retrieve -> rerank ...")
    result = pipeline.run(Query(
        id=query.id, text=query.text, image=str(gallery / query.reference),
        meta={"ground_truth": [query.target], "example": True},
    ))
    provenance = encoder_provenance(encoder.info)
    if result.trace.encoder is None:
        result.trace.encoder = EncoderRecord.model_validate(provenance)
    return recipe, result, provenance


def run_quickstart(
    folder: str | Path = DEFAULT_FOLDER,
    *,
    offline: bool = False,
    query_id: str | None = None,
    status: Callable[[str], None] = lambda message: None,
    on_mode: Callable[[str | None], None] = lambda reason: None,
    progress: bool = True,
    probe: Callable[[], str | None] | None = None,
) -> QuickstartOutcome:
    """Index the example gallery into ``folder``, run one example query through all four stages, write the
    trace and the HTML report. ``status`` receives progress lines; ``on_mode`` is told once, before any
    model loads, whether the run is offline (the reason) or real (None), and again if a real run falls
    back to offline; ``probe`` replaces the Hub reachability check (tests)."""
    from agent_cir.config import load_recipe
    from agent_cir.report import build_report

    folder = prepare_folder(Path(folder).expanduser().resolve())  # absolute: printed paths work from anywhere
    query = pick_query(query_id)
    gallery = copy_gallery(folder)
    reason = offline_reason(offline, probe)
    on_mode(reason)
    outcome: tuple[Any, Any, dict[str, Any]] | None = None
    if reason is None:
        try:
            outcome = _run_recipe(load_recipe(RECIPE), folder, gallery, query, status, progress)
        except (AgentCirError, OSError) as err:
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            reason = f"the real weights could not be loaded ({first_line[:300]})"
            on_mode(reason)
    if outcome is None:
        outcome = _run_recipe(scripted_recipe(query), folder, gallery, query, status, progress)
    recipe, result, provenance = outcome

    run_dir = folder / "run"
    run_dir.mkdir(exist_ok=True)
    trace_path = run_dir / "traces.jsonl"
    write_text_atomic(trace_path, json.dumps(result.trace.to_json_dict(), ensure_ascii=False, default=str) + "\n")
    offline_note = (
        f"OFFLINE RUN ({reason}): random-init CLIP and scripted models stand in for the real ones; the "
        "ranking shows the pipeline working, not its quality. Run `agent-cir quickstart` with network access "
        "for real weights."
    ) if reason else None
    run_info = {
        "name": "quickstart",
        "quickstart_offline": reason is not None,
        "offline_reason": reason,
        "recipe": recipe.name,
        "encoder": f"{provenance['architecture']} / {provenance['pretrained']}",
        "random_weights": provenance["random_weights"],
        "query": f"{query.reference} + {query.text!r} -> {query.target}",
        # the report shows these images (thumbnails); without the entry they read "outside the gallery"
        "images_dir": str(gallery),
    }
    write_text_atomic(run_dir / "run.json", json.dumps(run_info, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(run_dir / "metrics.json", json.dumps({"notes": [offline_note] if offline_note else []}) + "\n")
    report = build_report(run_dir, folder / "report")
    return QuickstartOutcome(folder=folder, offline_reason=reason, query=query, result=result,
                             trace_path=trace_path, report=report, recipe=recipe, encoder=provenance)
