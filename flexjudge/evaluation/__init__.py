"""Measure a judge against labelled preference data: run, score, calibrate and report.

- `results`: the one file format every piece shares (`ResultRow`, one JSON line per example).
- `data`: labelled pairs from JSONL, saved datasets and the public benchmarks' layouts.
- `runner`: `run_eval`, judging them resumably into a results file.
- `metrics`: `summarize` and `compare`, with bootstrap intervals.
- `calibration`: reliability tables and fitted confidence maps.
- `report`: the self-contained HTML page.
"""

from flexjudge.evaluation.results import Label, ResultRow, Run, RunStatus, read_results

__all__ = ["Label", "ResultRow", "Run", "RunStatus", "read_results"]
