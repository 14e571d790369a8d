"""Calibration: how often a judge is right at each confidence, and a map that makes confidence mean that.

- `reliability(confidences, correct, bins=10)`: the reliability table, equal-width bins over [0, 1]
  (a confidence of exactly 1.0 falls in the last bin): per bin its bounds, how many judgments fell in it,
  their mean confidence and the share of them that were right (None for an empty bin).
- `expected_calibration_error`: the count-weighted mean gap between accuracy and mean confidence over
  those bins; 0 is perfectly calibrated.
- `fit_calibration(..., method="platt" | "isotonic")` -> `CalibrationMap`, a monotone non-decreasing map
  from a raw confidence to the accuracy observed at it. Platt: ``sigmoid(a * logit(p) + b)`` fitted by
  Newton's method on the log-loss, with Platt's smoothed targets ((positives + 1) / (positives + 2) and
  1 / (negatives + 2)) so separable data still gives finite parameters; a slope fitted below zero (a
  confidence that anti-predicts correctness) is set to 0, so the map never reverses the order and then
  returns the base rate. Isotonic: pool-adjacent-violators on the sorted confidences, interpolated
  linearly between the pooled blocks' mean confidences and flat beyond the ends.
- `CalibrationMap.save(path)` writes JSON atomically; `CalibrationMap.load(path)` raises
  `CalibrationFileError` for a file that is missing, not JSON, or not a calibration map.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from flexjudge.errors import FlexjudgeError, UsageError

__all__ = [
    "CalibrationFileError",
    "CalibrationMap",
    "Method",
    "ReliabilityBin",
    "expected_calibration_error",
    "fit_calibration",
    "reliability",
]

Method = Literal["platt", "isotonic"]
FILE_FORMAT = "flexjudge-calibration"
FILE_VERSION = 1
_EDGE = 1e-6  # confidences are kept off 0 and 1 before taking their log-odds


class CalibrationFileError(FlexjudgeError):
    """A calibration file that cannot be read: missing, not JSON, or not a calibration map."""


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of the reliability table: confidences in [low, high) (the last bin includes 1.0)."""

    low: float
    high: float
    count: int
    mean_confidence: float | None
    """Mean confidence of the judgments in the bin; None when it is empty."""
    accuracy: float | None
    """Share of the judgments in the bin that were right; None when it is empty."""

    def to_json(self) -> dict[str, Any]:
        return {
            "low": self.low,
            "high": self.high,
            "count": self.count,
            "mean_confidence": self.mean_confidence,
            "accuracy": self.accuracy,
        }


def _checked(confidences: Sequence[float], correct: Sequence[bool]) -> list[tuple[float, bool]]:
    if len(confidences) != len(correct):
        raise UsageError(f"{len(confidences)} confidences but {len(correct)} correctness labels")
    pairs = []
    for p, right in zip(confidences, correct, strict=True):
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise UsageError(f"a confidence must be a number in [0, 1], not {p!r}")
        if not isinstance(right, bool):
            raise UsageError(f"correctness must be True or False, not {right!r}")
        pairs.append((float(p), right))
    return pairs


def reliability(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> list[ReliabilityBin]:
    """The reliability table over `bins` equal-width bins of [0, 1] (see the module docstring)."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise UsageError(f"bins must be a whole number of at least 1, not {bins!r}")
    held: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for p, right in _checked(confidences, correct):
        held[min(int(p * bins), bins - 1)].append((p, right))
    table = []
    for k, members in enumerate(held):
        n = len(members)
        table.append(
            ReliabilityBin(
                low=k / bins,
                high=(k + 1) / bins,
                count=n,
                mean_confidence=sum(p for p, _ in members) / n if n else None,
                accuracy=sum(right for _, right in members) / n if n else None,
            )
        )
    return table


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> float | None:
    """Sum over bins of (bin count / total) * |accuracy - mean confidence|; None when there is no data."""
    table = reliability(confidences, correct, bins)
    total = sum(b.count for b in table)
    if total == 0:
        return None
    return sum(
        b.count / total * abs(b.accuracy - b.mean_confidence)
        for b in table
        if b.accuracy is not None and b.mean_confidence is not None
    )


def _logit(p: float) -> float:
    p = min(1 - _EDGE, max(_EDGE, p))
    return math.log(p / (1 - p))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True)
class CalibrationMap:
    """A fitted monotone map from a raw confidence to a calibrated one. Build it with `fit_calibration`
    or `CalibrationMap.load`."""

    method: Method
    n: int
    """How many labelled judgments it was fitted on."""
    a: float = 1.0
    """Platt: the slope on logit(confidence) (never negative)."""
    b: float = 0.0
    """Platt: the intercept."""
    x: tuple[float, ...] = ()
    """Isotonic: the knots' confidences, increasing."""
    y: tuple[float, ...] = ()
    """Isotonic: the accuracy at each knot, non-decreasing."""

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise UsageError(f"not a calibration map: {problem}")

    def __call__(self, p: float) -> float:
        """The calibrated confidence for raw confidence `p` (in [0, 1])."""
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise UsageError(f"a confidence must be a number in [0, 1], not {p!r}")
        if self.method == "platt":
            return _sigmoid(self.a * _logit(p) + self.b)
        k = bisect_right(self.x, p)
        if k == 0:
            return self.y[0]
        if k == len(self.x):
            return self.y[-1]
        x0, x1, y0, y1 = self.x[k - 1], self.x[k], self.y[k - 1], self.y[k]
        return y0 + (y1 - y0) * (p - x0) / (x1 - x0)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FILE_FORMAT, "version": FILE_VERSION, "method": self.method}
        out["n"] = self.n
        if self.method == "platt":
            out |= {"a": self.a, "b": self.b}
        else:
            out |= {"x": list(self.x), "y": list(self.y)}
        return out

    def save(self, path: str | Path) -> None:
        """Write the map as JSON; the file is replaced whole (a reader never sees half of it)."""
        target = Path(path)
        text = json.dumps(self.to_json(), indent=2) + "\n"
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> CalibrationMap:
        """Read a map written by `save`; `CalibrationFileError` says what is wrong with a bad file."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CalibrationFileError(f"no calibration file at {path}") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CalibrationFileError(f"{path} is not a readable JSON calibration file: {exc}") from None
        return cls.from_json(data, source=str(path))

    @classmethod
    def from_json(cls, data: Any, *, source: str = "calibration data") -> CalibrationMap:
        """A map from its JSON object (`to_json`); `CalibrationFileError` when it is not one."""
        if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
            raise CalibrationFileError(f"{source} is not a flexjudge calibration map")
        if data.get("version") != FILE_VERSION:
            raise CalibrationFileError(f"{source}: unsupported version {data.get('version')!r}")
        method = data.get("method")
        keys = {"format", "version", "method", "n"} | ({"a", "b"} if method == "platt" else {"x", "y"})
        if method not in ("platt", "isotonic") or set(data) != keys:
            raise CalibrationFileError(f"{source}: expected the keys {sorted(keys)}, got {sorted(data)}")
        try:
            if method == "platt":
                return cls(method="platt", n=data["n"], a=data["a"], b=data["b"])
            return cls(method="isotonic", n=data["n"], x=tuple(data["x"]), y=tuple(data["y"]))
        except (UsageError, TypeError) as exc:
            raise CalibrationFileError(f"{source}: {exc}") from None


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _problem(m: CalibrationMap) -> str | None:
    """What makes `m` not a monotone map, or None."""
    if m.method not in ("platt", "isotonic"):
        return f"unknown method {m.method!r}"
    if isinstance(m.n, bool) or not isinstance(m.n, int) or m.n < 0:
        return f"n must be a count, not {m.n!r}"
    if m.method == "platt":
        if not (_number(m.a) and _number(m.b)) or m.a < 0:
            return f"platt needs finite a >= 0 and b, got a={m.a!r}, b={m.b!r}"
        return None
    if not m.x or len(m.x) != len(m.y) or not all(_number(v) for v in (*m.x, *m.y)):
        return "isotonic needs as many finite x as y, at least one"
    if any(x1 <= x0 for x0, x1 in zip(m.x, m.x[1:], strict=False)) or not 0 <= m.x[0] <= m.x[-1] <= 1:
        return "isotonic x must increase strictly within [0, 1]"
    if any(y1 < y0 for y0, y1 in zip(m.y, m.y[1:], strict=False)) or not 0 <= m.y[0] <= m.y[-1] <= 1:
        return "isotonic y must not decrease and must lie in [0, 1]"
    return None


def fit_calibration(
    confidences: Sequence[float], correct: Sequence[bool], method: Method = "platt"
) -> CalibrationMap:
    """Fit a monotone map from confidence to the accuracy observed at it (see the module docstring)."""
    pairs = _checked(confidences, correct)
    if not pairs:
        raise UsageError("fit_calibration needs at least one labelled confidence")
    if method == "platt":
        a, b = _platt(pairs)
        return CalibrationMap(method="platt", n=len(pairs), a=a, b=b)
    if method == "isotonic":
        x, y = _isotonic(pairs)
        return CalibrationMap(method="isotonic", n=len(pairs), x=x, y=y)
    raise UsageError(f"method must be 'platt' or 'isotonic', not {method!r}")


def _platt(pairs: list[tuple[float, bool]]) -> tuple[float, float]:
    positives = sum(right for _, right in pairs)
    negatives = len(pairs) - positives
    high, low = (positives + 1) / (positives + 2), 1 / (negatives + 2)
    data = [(_logit(p), high if right else low) for p, right in pairs]
    a, b = _newton(data, fit_slope=True)
    if a < 0:  # anti-predictive: keep the map monotone and fall back to the smoothed base rate
        a, b = _newton(data, fit_slope=False)
    return a, b


def _newton(data: list[tuple[float, float]], *, fit_slope: bool) -> tuple[float, float]:
    """Minimise the log-loss of sigmoid(a z + b) against targets t by Newton's method, halving the step
    until the loss falls (the loss is convex; halving guards against overshooting on flat parts)."""

    def loss(a: float, b: float) -> float:
        total = 0.0
        for z, t in data:
            s = a * z + b
            # log(1 + e^s) - t s, written to stay finite for large |s|
            total += (s if s > 0 else 0.0) + math.log1p(math.exp(-abs(s))) - t * s
        return total

    a, b = (1.0 if fit_slope else 0.0), 0.0
    current = loss(a, b)
    for _ in range(100):
        ga = gb = haa = hab = hbb = 0.0
        for z, t in data:
            q = _sigmoid(a * z + b)
            w = q * (1 - q)
            ga, gb = ga + (q - t) * z, gb + (q - t)
            haa, hab, hbb = haa + w * z * z, hab + w * z, hbb + w
        if fit_slope:
            det = haa * hbb - hab * hab
            if det <= 1e-12:
                break
            da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        else:
            if hbb <= 1e-12:
                break
            da, db = 0.0, gb / hbb
        step = 1.0
        while step > 1e-10:
            na, nb = a - step * da, b - step * db
            candidate = loss(na, nb)
            if candidate <= current:
                break
            step /= 2
        else:
            break
        done = abs(current - candidate) < 1e-12 * max(1.0, abs(current))
        a, b, current = na, nb, candidate
        if done:
            break
    return a, b


def _isotonic(pairs: list[tuple[float, bool]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Pool adjacent violators over blocks of [sum of confidence, number right, count]: equal confidences
    start as one block, and a block whose accuracy is not above its left neighbour's joins it."""
    groups: dict[float, list[float]] = {}
    for p, right in pairs:  # equal confidences form one block before any pooling: PAV never splits one
        group = groups.setdefault(p, [0.0, 0.0, 0.0])
        group[0] += p
        group[1] += right
        group[2] += 1
    blocks: list[list[float]] = []
    for p in sorted(groups):
        blocks.append(groups[p])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            last = blocks.pop()
            blocks[-1] = [u + v for u, v in zip(blocks[-1], last, strict=True)]
    x: list[float] = []
    y: list[float] = []
    weights: list[float] = []
    for total, hits, n in blocks:
        mean, accuracy = total / n, hits / n
        if x and mean <= x[-1]:  # rounding made two means equal: merge the knots, keep it a function
            w = weights[-1] + n
            y[-1] = (y[-1] * weights[-1] + accuracy * n) / w
            weights[-1] = w
            continue
        x.append(min(1.0, mean))
        y.append(accuracy)
        weights.append(n)
    return tuple(x), tuple(y)
