"""The results file of `flexjudge eval`: one `ResultRow` per labelled example, one JSON line each.

Everything downstream (metrics, calibration, `--compare`, the HTML report) reads only this format, so
a results file written by one version can be summarised, compared and rendered by another.

Numbering: every winner in a row is in the *dataset's* numbering (candidate 1 is `candidates[0]` as the
data gave it), whatever order the judge saw. `Run.order` records that order: `[2, 1]` means the judge saw
the dataset's second candidate first. The stored `judgment` is mapped back to the dataset's numbering
too (`flexjudge.swap.unswap`), so the report shows every run the same way round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flexjudge.errors import LogFileError

Label = Literal[1, 2, "tie"]
"""A preference: candidate 1, candidate 2, or a tie."""

RunStatus = Literal["ok", "parse_failure", "truncated", "error"]
"""How one judge call ended: a judgment, output that could not be read, output cut at the token limit,
or any other failure (backend, media, validation); `error` says which."""


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Run(_Row):
    """One judge call on one example, in one candidate order."""

    order: tuple[int, int]
    """The candidate order the judge saw, in dataset numbering: (1, 2) as given, (2, 1) swapped."""
    status: RunStatus
    error: str | None = None
    """For any status but "ok": the error's type and message."""
    winner: Label | None = None
    """The overall winner in dataset numbering ("tie" when the judge declared none); None unless ok."""
    dimension_winners: dict[str, Label] = Field(default_factory=dict)
    """Anchor dimensions only, keyed by canonical name (`flexjudge.anchors.canonical_name`)."""
    confidence: float | None = None
    """The judgment's confidence that `winner` is right, in [0, 1], when one was computed."""
    findings: list[str] = Field(default_factory=list)
    """`check()` finding codes (errors and warnings), in the order found."""
    judgment: dict[str, Any] | None = None
    """The full judgment (`Judgment.model_dump(mode="json")`), in dataset numbering; None unless ok."""
    elapsed_s: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Run:
        if sorted(self.order) != [1, 2]:
            raise ValueError(f"order must be (1, 2) or (2, 1), got {self.order}")
        if self.status == "ok" and self.winner is None:
            raise ValueError('a run with status "ok" needs its winner')
        if self.status != "ok" and (self.winner is not None or not self.error):
            raise ValueError(f'a run with status "{self.status}" has no winner and needs its error')
        if self.confidence is not None and not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must lie in [0, 1], got {self.confidence}")
        return self

    @property
    def first_position_won(self) -> bool | None:
        """Whether the candidate shown first won; None for a tie or a failed run."""
        if self.status != "ok" or self.winner == "tie":
            return None
        return self.winner == self.order[0]


class ResultRow(_Row):
    """One labelled example and the judge's runs on it."""

    id: str
    prompt: str
    candidates: tuple[str, str]
    """The candidates as the data named them (absolute paths or URLs), in dataset order."""
    modality: Literal["image", "video"] = "image"
    label: Label
    dimension_labels: dict[str, Label] = Field(default_factory=dict)
    """Human labels per anchor dimension, keyed by canonical name, where the data has them."""
    primary: Run
    """The run the paper's accuracy counts: candidate order drawn at random with the eval's seed."""
    swapped: Run | None = None
    """The same example with the primary order reversed, when position consistency is measured."""

    @model_validator(mode="after")
    def _orders(self) -> ResultRow:
        if self.swapped is not None and self.swapped.order != self.primary.order[::-1]:
            raise ValueError("the swapped run must reverse the primary run's order")
        return self

    @property
    def correct(self) -> bool | None:
        """Whether the primary run's winner matches the label (ties included); None if it failed."""
        return None if self.primary.status != "ok" else self.primary.winner == self.label

    @property
    def position_consistent(self) -> bool | None:
        """Whether both orders gave the same winner; None without two completed runs."""
        if self.swapped is None or self.primary.status != "ok" or self.swapped.status != "ok":
            return None
        return self.primary.winner == self.swapped.winner


def read_results(path: str | Path) -> list[ResultRow]:
    """Every complete row of a results file. A torn last line (a run still going, or killed) is left
    out; a missing file, or a complete line that is no result row, raises `LogFileError` naming it."""
    source = Path(path)
    if not source.is_file():
        raise LogFileError("no such results file", path=str(source))
    rows = []
    with source.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n") or not line.strip():
                continue
            try:
                rows.append(ResultRow.model_validate_json(line))
            except ValidationError as exc:
                reason = f"not a result row ({exc.errors()[0]['msg']})"
                raise LogFileError(reason, path=str(source), line=number) from None
    return rows
