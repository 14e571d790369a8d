"""`build_report`: a results file as one self-contained HTML page people can read.

The page opens with no network (inline CSS, script and SVG; thumbnails as data: URLs). It shows the
summary with plots (accuracy with its interval, position bias, per-dimension agreement, calibration) and,
per judgment, the two candidates side by side as thumbnails (a video as a strip of frames) with the
hierarchy: dimensions, criteria with score bars, per-dimension and overall winners, `check()` findings
marked where they apply, and the swapped run beside it, marked where it disagrees. Cards can be filtered
by correctness, by finding code and by swap disagreement. Every string from the results is shown as text.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexjudge.evaluation.report._html import write_page
from flexjudge.evaluation.results import ResultRow

__all__ = ["ReportInfo", "build_report"]


@dataclass(frozen=True)
class ReportInfo:
    """What was written."""

    path: Path
    bytes: int
    judgments: int
    images: int
    """Distinct thumbnails stored (a video's frames counted one by one)."""
    media_failures: int
    """Candidates that could not be loaded (shown on their card with the reason)."""


def build_report(
    rows: Sequence[ResultRow], summary: dict[str, Any], out: Path, *, title: str = "flexjudge evaluation"
) -> ReportInfo:
    """Write the report of `rows` to `out` (one HTML file), with `summary` (`Summary.to_json()` of
    `flexjudge.evaluation.metrics`) as its summary. The file is replaced at once: a reader never sees a
    half-written page."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            thumbs = write_page(rows, summary, fh, title=title)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return ReportInfo(out, out.stat().st_size, len(rows), len(thumbs.images), thumbs.failures)
