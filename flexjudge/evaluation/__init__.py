"""Measure a judge against labelled preference data: run, score, calibrate and report.

- `results`: the one file format every piece shares (`ResultRow`, one JSON line per example).
"""

from flexjudge.evaluation.results import Label, ResultRow, Run, RunStatus

__all__ = ["Label", "ResultRow", "Run", "RunStatus"]
