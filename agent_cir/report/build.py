"""``build_report``: load a run, analyse each query, render the pages, write them into a checked folder.

The report needs no server: pages link to thumbnails written under ``out/thumbs`` and ``out/grids``; CSS
and the few lines of filter script are inline. Where an image cannot be shown (caption-only runs, a moved
file, a path outside the gallery folders of the run) a placeholder says why.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

from agent_cir.errors import AgentCirError
from agent_cir.redact import redact_secrets
from agent_cir.report.analyse import FILTERS, STATUSES, analyse, random_encoder_traces, split_metrics, stage_summary
from agent_cir.report.folder import ReportFolder
from agent_cir.report.images import ReportImages
from agent_cir.report.load import ReportError, gallery_captions_path, gallery_roots, load_traces, resolve_source
from agent_cir.report.render import COMMON, environment, index_row, query_context

PAGE_SIZE = 100


def _gallery_captions(path: str | None, notes: list[str]) -> dict[str, list[str]]:
    """Gallery captions of a caption-only (surrogate) eval run: shown in place of images."""
    if not path:
        return {}
    from agent_cir.retrieval.gallery import load_gallery_captions

    try:
        return load_gallery_captions(path)
    except (AgentCirError, OSError) as err:
        notes.append(f"gallery captions {path} could not be read ({err}); items show their ids only")
        return {}


def build_report(
    source: str | Path,
    out_dir: str | Path,
    limit: int | None = None,
    filter: str = "all",  # noqa: A002 - the CLI option's name
    page_size: int = PAGE_SIZE,
    gallery: Iterable[str | Path] = (),
) -> Path:
    """Write the HTML report of ``source`` (traces.jsonl or eval run folder) into ``out_dir``; return index.html.

    ``filter`` keeps only queries of one status (lost, improved, hurt, hit, unknown; ``all`` keeps every
    query); ``limit`` keeps the first N of those. The index paginates ``page_size`` queries per page.
    ``gallery``: more folders whose images may be shown (images folders or index folders), beside those
    the run records. ``out_dir`` must be new, empty, or a folder an earlier report wrote (see
    ``agent_cir.report.folder``). Besides the HTML, ``summary.json`` lists each query's status and ranks.
    """
    if filter not in FILTERS:
        raise ReportError(f"unknown filter {filter!r}; choose one of: {', '.join(FILTERS)}")
    if limit is not None and limit < 1:
        raise ReportError(f"--limit must be at least 1, got {limit}")
    if page_size < 1:
        raise ReportError(f"page_size must be at least 1, got {page_size}")
    run = resolve_source(source)
    traces, notes = load_traces(run.traces_path)
    if not traces:
        raise ReportError(f"{run.traces_path} holds no trace records; run a search or an eval first")

    all_views = [analyse(trace, number) for number, trace in enumerate(traces, start=1)]
    counts = {status: sum(1 for v in all_views if v.status == status) for status in STATUSES}
    views = [v for v in all_views if filter == "all" or v.status == filter]
    if limit is not None:
        views = views[:limit]
    captions = _gallery_captions(gallery_captions_path(run), notes)
    random_encoder = random_encoder_traces(traces)
    env = environment()
    pages = max(1, math.ceil(len(views) / page_size))
    index_names = ["index.html"] + [f"index-{n}.html" for n in range(2, pages + 1)]

    with ReportFolder(out_dir) as folder:
        images = ReportImages(folder, gallery_roots(run, gallery), run.traces_path.parent)
        images.learn(traces)
        query_template = env.get_template("query.html.j2")
        for position, view in enumerate(views):
            context = query_context(view, images, captions)
            context.update(COMMON)
            context["index_page"] = index_names[position // page_size]
            context["previous"] = views[position - 1].page if position > 0 else None
            context["next"] = views[position + 1].page if position + 1 < len(views) else None
            folder.write_text(f"queries/{view.page}", query_template.render(**context))

        rows = [index_row(v, images) for v in views]
        if images.outside:
            examples = ", ".join(sorted(set(images.outside))[:3])
            notes.append(f"{len(set(images.outside))} image path(s) named by the traces are outside the gallery folders "
                         f"recorded for this run (e.g. {examples}) and are not shown; pass --gallery DIR to show the "
                         "images of a folder you trust")
        notes.extend(f"{path}: {why}" for path, why in images.failures().items())
        metrics = split_metrics(run.metrics)
        index_template = env.get_template("index.html.j2")
        for page_number, name in enumerate(index_names, start=1):
            chunk = rows[(page_number - 1) * page_size: page_number * page_size]
            folder.write_text(name, index_template.render(
                **COMMON,
                title=run.label,
                source=str(run.run_dir or run.traces_path),
                source_name=(run.run_dir or run.traces_path).name,
                run_info=redact_secrets({k: v for k, v in (run.run_info or {}).items()
                                         if not isinstance(v, (dict, list))}),
                metrics=metrics,
                stages=stage_summary(traces),
                total_queries=len(all_views),
                shown_queries=len(views),
                counts=counts,
                filter=filter,
                rows=chunk,
                page_number=page_number,
                index_names=index_names,
                notes=notes,
                random_encoder=random_encoder,
            ))

        summary = {
            "source": str(run.run_dir or run.traces_path),
            "filter": filter,
            "counts": counts,
            "index_pages": index_names,
            "thumbnails": {"generated": images.thumbs.generated + images.grids.generated,
                           "reused": images.thumbs.reused + images.grids.reused},
            "images_outside_gallery": len(set(images.outside)),
            "random_encoder_queries": len(random_encoder),
            "queries": [{"id": v.query_id, "status": v.status, "retrieve_rank": v.retrieve_rank,
                         "final_rank": v.final_rank, "official_rank": v.official_rank, "page": f"queries/{v.page}",
                         "index_page": index_names[i // page_size]} for i, v in enumerate(views)],
        }
        folder.write_text("summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
        folder.commit(keep_prefixes=("thumbs/", "grids/"))  # thumbnails are a cache for later reports
    return folder.path / "index.html"


__all__ = ["PAGE_SIZE", "build_report"]
