"""What the page holds per result row: the judgment hierarchy without what the page never shows.

`meta.raw_text` repeats the whole judgment as text and `meta.swap` nests two more judgments; dropping
them (and the rest of the provenance but the model and how the output was read) keeps 10,000 judgments
within the file-size budget. Keys are the schema's own names, so the page's script reads as the schema.
"""

from __future__ import annotations

from typing import Any

from flexjudge.evaluation.report._thumbs import Thumbnails
from flexjudge.evaluation.results import ResultRow, Run

_META = ("model", "backend", "source_format", "recovered", "recovery_notes", "template")


def row_view(row: ResultRow, thumbs: Thumbnails) -> dict[str, Any]:
    """One row as the page renders it; `media` holds each candidate's thumbnail indices."""
    media = [thumbs.candidate(source, row.modality) for source in row.candidates]
    return {
        "id": row.id,
        "prompt": row.prompt,
        "modality": row.modality,
        "candidates": list(row.candidates),
        "label": row.label,
        "dimension_labels": row.dimension_labels,
        "correct": row.correct,
        "consistent": row.position_consistent,
        "media": [{"images": images, "error": error} for images, error in media],
        "primary": _run_view(row.primary),
        "swapped": None if row.swapped is None else _run_view(row.swapped),
    }


def index_entry(row: ResultRow) -> list[Any]:
    """What the filters need for every row without opening its details: correctness (1 / 0 / None for a
    failed primary run), the finding codes of both runs, and whether the swapped run disagreed (1 / 0 /
    None without two completed runs)."""
    codes = sorted({*row.primary.findings, *(row.swapped.findings if row.swapped else [])})
    consistent = row.position_consistent
    return [
        None if row.correct is None else int(row.correct),
        codes,
        None if consistent is None else int(not consistent),
    ]


def _run_view(run: Run) -> dict[str, Any]:
    view = run.model_dump(mode="json", exclude={"judgment"})
    judgment = run.judgment
    if judgment is not None:
        meta = judgment.get("meta") or {}
        view["judgment"] = {
            **{k: v for k, v in judgment.items() if k not in ("meta", "prompt")},
            "meta": {k: meta[k] for k in _META if k in meta},
        }
    else:
        view["judgment"] = None
    return view
