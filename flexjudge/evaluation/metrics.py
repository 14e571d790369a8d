"""How well a judge agrees with labelled preferences, how biased and how reliable it is, with intervals.

`summarize(rows)` measures one results file; `compare(a, b)` measures two judges on the same examples.
`METRICS` holds each metric's definition word for word (the docs quote it), with `DIMENSION_AGREEMENT`
and `CALIBRATION`. NumPy (the `media` extra) is imported only when a summary is computed, and rich only
when a table is drawn.

Every metric but Kendall's tau-b is a ratio of two counts summed over examples: each `ResultRow`
contributes a numerator and a denominator, and rows whose denominator is 0 are *dropped* from that
metric (they are not counted as wrong). A metric whose denominator sums to 0 has no value: it is
``None`` (``null`` in JSON), and so is its interval; no metric is ever NaN or a stand-in number.
A "run" is one judge call (`ResultRow.primary`, and `ResultRow.swapped` when it exists); an "ok" run is
one whose status is ``"ok"``. Winners and labels are in the dataset's numbering (see `results`).

Intervals (``<metric>_ci``) are 95 % bootstrap percentile intervals: the examples (rows) are resampled
with replacement `resamples` times by ``numpy.random.default_rng(seed)``, the metric is recomputed on
each resample, and the interval is the 2.5th and 97.5th percentiles (linear interpolation) of the
resamples in which the metric is defined (a resample that happens to hold no row of a metric's
denominator is skipped for that metric). Rows are put in order of `id` first, so the same rows in any
order give the same summary, and the same seed gives the same intervals. ``resamples=0`` gives every
interval as None. Ids must be unique: a results file with one id twice is refused, not guessed at.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flexjudge.errors import UsageError
from flexjudge.evaluation.calibration import expected_calibration_error, reliability
from flexjudge.evaluation.results import Label, ResultRow, Run

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray
    from rich.table import Table

    Floats = NDArray[np.float64]

__all__ = [
    "CALIBRATION",
    "DIMENSION_AGREEMENT",
    "METRICS",
    "Comparison",
    "Estimate",
    "Summary",
    "compare",
    "summarize",
]

_LEVEL = 0.95
_BINS = 10
_CODE: dict[Label, int] = {1: 1, "tie": 0, 2: -1}
"""Kendall's tau-b codes: candidate 1 preferred is +1, a tie 0, candidate 2 preferred -1."""


@dataclass(frozen=True)
class Estimate:
    """One metric: its value, its 95 % bootstrap interval, and how many units its denominator counts."""

    value: float | None
    """None when no row counts towards the metric."""
    ci: tuple[float, float] | None
    """(low, high); None when `value` is None, when ``resamples=0``, or when no resample defines it."""
    n: int
    """The denominator: examples, or runs for the run-level rates (see each metric's definition)."""


def _runs(row: ResultRow) -> list[Run]:
    return [row.primary] if row.swapped is None else [row.primary, row.swapped]


def _accuracy(row: ResultRow) -> tuple[int, int]:
    """accuracy (ties dropped; the paper's number): examples whose primary run's winner equals the label,
    over examples whose label is not "tie", whose primary run is ok, and whose primary winner is not
    "tie". Dropped: tie labels, tie verdicts, failed primary runs (those count in the failure rates)."""
    p = row.primary
    if p.status != "ok" or row.label == "tie" or p.winner == "tie":
        return 0, 0
    return int(p.winner == row.label), 1


def _accuracy_with_ties(row: ResultRow) -> tuple[int, int]:
    """accuracy_with_ties (three-way): examples whose primary winner equals the label (1, 2 or "tie"),
    over every example whose primary run is ok. Dropped: failed primary runs."""
    if row.primary.status != "ok":
        return 0, 0
    return int(row.primary.winner == row.label), 1


def _position_consistency(row: ResultRow) -> tuple[int, int]:
    """position_consistency (agreement under swap): examples whose primary and swapped runs name the
    same winner (a tie in both counts as the same), over examples with a swapped run where both runs are
    ok. Dropped: examples without a swapped run, and those where either run failed."""
    same = row.position_consistent
    return (0, 0) if same is None else (int(same), 1)


def _first_position_win_rate(row: ResultRow) -> tuple[int, int]:
    """first_position_win_rate: runs whose winner is the candidate the judge saw first, over every ok run
    whose winner is not "tie", primary and swapped runs alike (0.5 is no position bias). Dropped: tie
    verdicts and failed runs. Its interval resamples examples, keeping an example's two runs together."""
    won = [w for w in (run.first_position_won for run in _runs(row)) if w is not None]
    return sum(won), len(won)


def _findings_rate(row: ResultRow) -> tuple[int, int]:
    """findings_rate (self-contradiction): ok runs with at least one `check()` finding (error or
    warning), over every ok run, primary and swapped. Dropped: failed runs."""
    ok = [run for run in _runs(row) if run.status == "ok"]
    return sum(bool(run.findings) for run in ok), len(ok)


def _status_rate(status: str) -> Callable[[ResultRow], tuple[int, int]]:
    def rate(row: ResultRow) -> tuple[int, int]:
        runs = _runs(row)
        return sum(run.status == status for run in runs), len(runs)

    return rate


_parse_failure_rate = _status_rate("parse_failure")
_parse_failure_rate.__doc__ = """parse_failure_rate: runs with status "parse_failure" (output that could
not be read), over every run, primary and swapped, whatever its status. Nothing is dropped."""
_truncation_rate = _status_rate("truncated")
_truncation_rate.__doc__ = """truncation_rate: runs with status "truncated" (output cut at the token
limit), over every run, primary and swapped, whatever its status. Nothing is dropped."""
_error_rate = _status_rate("error")
_error_rate.__doc__ = """error_rate: runs with status "error" (any other failure: backend, media,
validation), over every run, primary and swapped, whatever its status. Nothing is dropped."""


def _dimension_agreement(name: str) -> Callable[[ResultRow], tuple[int, int]]:
    """per_dimension[name].agreement (three-way, ties counted as in accuracy_with_ties): examples whose
    primary run's winner on anchor dimension `name` equals its label there (1, 2 or "tie"), over examples
    that have a label for `name` in `dimension_labels` and an ok primary run with a winner for `name` in
    `dimension_winners`. Dropped: examples missing either side. Names are the canonical anchor names the
    results file stores; a dimension is listed when any example has a label for it."""

    def agreement(row: ResultRow) -> tuple[int, int]:
        label = row.dimension_labels.get(name)
        winner = row.primary.dimension_winners.get(name) if row.primary.status == "ok" else None
        if label is None or winner is None:
            return 0, 0
        return int(winner == label), 1

    return agreement


_RATIOS: dict[str, Callable[[ResultRow], tuple[int, int]]] = {
    "accuracy": _accuracy,
    "accuracy_with_ties": _accuracy_with_ties,
    "position_consistency": _position_consistency,
    "first_position_win_rate": _first_position_win_rate,
    "findings_rate": _findings_rate,
    "parse_failure_rate": _parse_failure_rate,
    "truncation_rate": _truncation_rate,
    "error_rate": _error_rate,
}

_KENDALL_TAU_B = """kendall_tau_b: Kendall's tau-b between the label and the primary run's winner, each coded
+1 (candidate 1 preferred), 0 ("tie"), -1 (candidate 2 preferred), over examples whose primary run is ok
(failed primary runs dropped). Over those m examples' pairs, with n0 = m(m-1)/2, C and D the concordant and
discordant pairs, n1 the pairs tied in the label and n2 the pairs tied in the winner:
tau_b = (C - D) / sqrt((n0 - n1) (n0 - n2)). None when the denominator is 0 (fewer than two examples, or
every label alike, or every winner alike). Its `n` is m."""

_ORDER = ("accuracy", "accuracy_with_ties", "kendall_tau_b", *list(_RATIOS)[2:])
METRICS: dict[str, str] = {
    name: " ".join((_KENDALL_TAU_B if name == "kendall_tau_b" else _RATIOS[name].__doc__ or "").split())
    for name in _ORDER
}
"""Each metric's definition, as the docs quote it; per-dimension agreement is `DIMENSION_AGREEMENT`."""
DIMENSION_AGREEMENT = " ".join((_dimension_agreement.__doc__ or "").split())
CALIBRATION = """calibration: the primary run's confidence against whether its winner is right, over
examples counted by accuracy (tie labels and tie verdicts dropped) whose primary run carries a confidence;
the reliability table of `flexjudge.evaluation.calibration.reliability` over 10 equal-width bins and
its expected calibration error (`expected_calibration_error`). None when no such example exists or that
module is not installed. It has no interval."""


@dataclass(frozen=True)
class Summary:
    """One judge's metrics over one results file; `METRICS` defines each one."""

    n: int
    """Examples (rows)."""
    metrics: dict[str, Estimate]
    """Keyed by metric name, in `METRICS` order: accuracy, accuracy_with_ties, kendall_tau_b, ..."""
    per_dimension: dict[str, Estimate]
    """Agreement per anchor dimension (`DIMENSION_AGREEMENT`), by canonical name, sorted."""
    calibration: dict[str, Any] | None
    """`CALIBRATION`: {"ece": x, "bins": [{"low", "high", "count", "mean_confidence", "accuracy"}]}."""
    resamples: int
    seed: int

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON: `n`, each metric `m` beside `m_ci` ([low, high] or null), `per_dimension`,
        `calibration`, and (for readers) `denominators` {metric: n}, `resamples` and `seed`."""
        out: dict[str, Any] = {"n": self.n}
        for name, est in self.metrics.items():
            out[name] = est.value
            out[f"{name}_ci"] = None if est.ci is None else list(est.ci)
        out["per_dimension"] = {
            name: {"agreement": e.value, "agreement_ci": None if e.ci is None else list(e.ci), "n": e.n}
            for name, e in self.per_dimension.items()
        }
        out["calibration"] = self.calibration
        out["denominators"] = {name: est.n for name, est in self.metrics.items()}
        out["resamples"] = self.resamples
        out["seed"] = self.seed
        return out

    def table(self) -> Table:
        """The terminal table: metric, value, 95 % interval, and the count it is over."""
        from rich.table import Table

        table = Table(title=f"flexjudge eval: {self.n} examples")
        for column in ("metric", "value", "95% CI", "over"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for name, est in self.metrics.items():
            table.add_row(name, *_cells(est))
        for name, est in self.per_dimension.items():
            table.add_row(f"agreement: {name}", *_cells(est))
        if self.calibration is not None:
            ece = self.calibration.get("ece")
            table.add_row("calibration ECE", _fmt(ece), "", "")
        return table


@dataclass(frozen=True)
class Comparison:
    """Two judges on the examples both results files hold (paired by id); differences are b - a."""

    n: int
    """Shared ids."""
    only_a: int
    """Ids only in a (not compared)."""
    only_b: int
    """Ids only in b (not compared)."""
    a: dict[str, Estimate]
    b: dict[str, Estimate]
    diff: dict[str, Estimate]
    """b - a for each metric; its interval is a paired bootstrap: the same resampled ids for both."""
    resamples: int
    seed: int

    def to_json(self) -> dict[str, Any]:
        """`n`; for accuracy and accuracy_with_ties: `{m}_a`, `{m}_b`, `{m}_diff` (b - a), `{m}_diff_ci`;
        and `only_a`, `only_b` (ids one file lacks), `resamples`, `seed`."""
        out: dict[str, Any] = {"n": self.n}
        for name in self.diff:
            out[f"{name}_a"] = self.a[name].value
            out[f"{name}_b"] = self.b[name].value
            out[f"{name}_diff"] = self.diff[name].value
            ci = self.diff[name].ci
            out[f"{name}_diff_ci"] = None if ci is None else list(ci)
        out |= {"only_a": self.only_a, "only_b": self.only_b, "resamples": self.resamples, "seed": self.seed}
        return out

    def table(self) -> Table:
        """The terminal table: metric, a, b, b - a and its 95 % paired interval."""
        from rich.table import Table

        table = Table(title=f"flexjudge eval --compare: {self.n} shared examples")
        for column in ("metric", "a", "b", "b - a", "95% CI"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for name, d in self.diff.items():
            table.add_row(name, _fmt(self.a[name].value), _fmt(self.b[name].value), *_cells(d)[:2])
        return table


def summarize(rows: Sequence[ResultRow], *, resamples: int = 1000, seed: int = 0) -> Summary:
    """Every metric of one judge over `rows` (one results file), with bootstrap intervals."""
    import numpy as np

    ordered = _by_id(rows, "the results")
    _check_bootstrap(resamples, seed)
    dims = sorted({name for row in ordered for name in row.dimension_labels})
    ratios = {**_RATIOS, **{f"dim:{d}": _dimension_agreement(d) for d in dims}}
    counts = np.array([[c for f in ratios.values() for c in f(row)] for row in ordered], float)
    counts = counts.reshape(len(ordered), 2 * len(ratios))
    tau_cells = _tau_cells(ordered)
    features = np.concatenate([counts, tau_cells], axis=1)
    boot = _bootstrap(features, resamples, seed)

    estimates = {}
    for i, name in enumerate(ratios):
        num, den = features[:, 2 * i].sum(), features[:, 2 * i + 1].sum()
        value = _ratio(num, den)
        stats = _ratios(boot[:, 2 * i], boot[:, 2 * i + 1])
        estimates[name] = Estimate(value, _interval(stats) if value is not None else None, int(den))
    tau_all = _tau_b(tau_cells.sum(axis=0)[None])[0]
    tau = Estimate(
        None if np.isnan(tau_all) else float(tau_all),
        None if np.isnan(tau_all) else _interval(_tau_b(boot[:, 2 * len(ratios) :])),
        int(tau_cells.sum()),
    )
    metrics = {name: tau if name == "kendall_tau_b" else estimates[name] for name in METRICS}
    per_dimension = {d: estimates[f"dim:{d}"] for d in dims}
    return Summary(len(ordered), metrics, per_dimension, _calibration(ordered), resamples, seed)


def compare(
    a: Sequence[ResultRow], b: Sequence[ResultRow], *, resamples: int = 1000, seed: int = 0
) -> Comparison:
    """Judge b against judge a on the ids both hold: accuracy and accuracy_with_ties of each, b - a, and
    b - a's interval from a paired bootstrap (each resample draws ids, and both judges are scored on the
    same draw). An id labelled differently in the two files is refused: they are not the same example."""
    import numpy as np

    by_a = {row.id: row for row in _by_id(a, "a")}
    by_b = {row.id: row for row in _by_id(b, "b")}
    _check_bootstrap(resamples, seed)
    shared = sorted(by_a.keys() & by_b.keys())
    for i in shared:
        if by_a[i].label != by_b[i].label:
            raise UsageError(f"id {i!r} is labelled {by_a[i].label!r} in a but {by_b[i].label!r} in b")
    names = ["accuracy", "accuracy_with_ties"]
    fs = [_RATIOS[name] for name in names]
    rows_a, rows_b = [by_a[i] for i in shared], [by_b[i] for i in shared]
    cols = [[c for f in fs for c in (*f(ra), *f(rb))] for ra, rb in zip(rows_a, rows_b, strict=True)]
    features = np.array(cols, float).reshape(len(shared), 4 * len(names))
    boot = _bootstrap(features, resamples, seed)
    ea, eb, ed = {}, {}, {}
    for k, name in enumerate(names):
        j = 4 * k
        va = _ratio(features[:, j].sum(), features[:, j + 1].sum())
        vb = _ratio(features[:, j + 2].sum(), features[:, j + 3].sum())
        ea[name] = Estimate(va, None, int(features[:, j + 1].sum()))
        eb[name] = Estimate(vb, None, int(features[:, j + 3].sum()))
        diff = None if va is None or vb is None else vb - va
        stats = _ratios(boot[:, j + 2], boot[:, j + 3]) - _ratios(boot[:, j], boot[:, j + 1])
        ed[name] = Estimate(diff, None if diff is None else _interval(stats), len(shared))
    only_a, only_b = len(by_a) - len(shared), len(by_b) - len(shared)
    return Comparison(len(shared), only_a, only_b, ea, eb, ed, resamples, seed)


def _by_id(rows: Sequence[ResultRow], what: str) -> list[ResultRow]:
    ordered = sorted(rows, key=lambda row: row.id)
    for prev, row in itertools.pairwise(ordered):
        if prev.id == row.id:
            raise UsageError(f"{what} hold id {row.id!r} twice; each example must appear once")
    return ordered


def _check_bootstrap(resamples: int, seed: int) -> None:
    if resamples < 0:
        raise UsageError(f"resamples must be 0 (no intervals) or more, got {resamples}")
    if seed < 0:  # numpy's generators take no negative seed; say so in our own words
        raise UsageError(f"seed must be 0 or more, got {seed}")


def _tau_cells(rows: Sequence[ResultRow]) -> Floats:
    """Per row, a one-hot 3 x 3 (label code, winner code) cell, flattened; all zero if the primary failed."""
    import numpy as np

    cells = np.zeros((len(rows), 9))
    for i, row in enumerate(rows):
        if row.primary.status == "ok" and row.primary.winner is not None:
            cells[i, 3 * (_CODE[row.label] + 1) + _CODE[row.primary.winner] + 1] = 1.0
    return cells


def _tau_b(tables: Floats) -> Floats:
    """Kendall's tau-b of each 3 x 3 table (flattened, rows: label code -1, 0, 1; columns: winner code),
    counting pairs of units; NaN where undefined. A unit counted twice (a resample) is tied with itself's
    copy in both variables, as the expanded sample would be."""
    import numpy as np

    t = tables.reshape(-1, 3, 3)
    sign = np.sign(np.subtract.outer(np.arange(3), np.arange(3))).astype(float)
    # Over ordered pairs of cells, sign(a - a') sign(b - b') t[a, b] t[a', b'] counts each unordered pair
    # twice, so half of it is C - D.
    s = 0.5 * np.einsum("rab,ac,bd,rcd->r", t, sign, sign, t)
    n = t.sum(axis=(1, 2))
    n0 = n * (n - 1) / 2
    label_ties = (t.sum(axis=2) * (t.sum(axis=2) - 1) / 2).sum(axis=1)
    winner_ties = (t.sum(axis=1) * (t.sum(axis=1) - 1) / 2).sum(axis=1)
    denom = (n0 - label_ties) * (n0 - winner_ties)
    out = np.full(len(t), np.nan)
    np.divide(s, np.sqrt(denom, where=denom > 0, out=np.zeros_like(denom)), out=out, where=denom > 0)
    return out


def _bootstrap(features: Floats, resamples: int, seed: int) -> Floats:
    """Column sums of `features` over `resamples` resamples of its rows drawn with replacement."""
    import numpy as np

    n, k = features.shape
    out = np.zeros((resamples, k))
    if n == 0:
        return out
    rng = np.random.default_rng(seed)
    # A resample's weights (how often each row was drawn) times the features gives its sums at once;
    # chunks keep the weight matrix near 16 MB whatever n and resamples are.
    chunk = max(1, min(resamples, 2_000_000 // n))
    for start in range(0, resamples, chunk):
        c = min(chunk, resamples - start)
        draws = rng.integers(0, n, size=(c, n)) + (np.arange(c) * n)[:, None]
        weights = np.bincount(draws.ravel(), minlength=c * n).reshape(c, n)
        out[start : start + c] = weights @ features
    return out


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num / den)


def _ratios(num: Floats, den: Floats) -> Floats:
    import numpy as np

    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _interval(stats: Floats) -> tuple[float, float] | None:
    import numpy as np

    defined = stats[~np.isnan(stats)]
    if defined.size == 0:
        return None
    tail = (1 - _LEVEL) / 2 * 100
    low, high = np.percentile(defined, [tail, 100 - tail])
    return float(low), float(high)


def calibration_data(rows: Sequence[ResultRow]) -> tuple[list[float], list[bool]]:
    """The primary runs' confidences and whether each winner is right, over the examples `accuracy`
    counts (no tie label, no tie verdict, an ok run) that carry a confidence: what the reliability table
    reads and what `flexjudge eval --fit-calibration` fits a map on."""
    pairs = [
        (row.primary.confidence, row.primary.winner == row.label)
        for row in rows
        if _accuracy(row)[1] and row.primary.confidence is not None
    ]
    return [c for c, _ in pairs], [ok for _, ok in pairs]


def _calibration(rows: Sequence[ResultRow]) -> dict[str, Any] | None:
    confidences, correct = calibration_data(rows)
    if not confidences:
        return None
    table = reliability(confidences, correct, bins=_BINS)
    ece = expected_calibration_error(confidences, correct, bins=_BINS)
    return {"ece": ece, "bins": [b.to_json() for b in table]}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _cells(est: Estimate) -> tuple[str, str, str]:
    ci = "-" if est.ci is None else f"[{est.ci[0]:.3f}, {est.ci[1]:.3f}]"
    return _fmt(est.value), ci, str(est.n)
