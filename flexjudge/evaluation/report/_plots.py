"""The summary's plots, written as inline SVG by hand: no plotting library, nothing fetched to draw them.

Every label that comes from the data (a dimension name) is escaped; every number is formatted here, so
nothing from the summary reaches the markup unescaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

_W = 560
_LABEL_W = 200
_LABEL_CHARS = 28  # at the labels' font size, what fits in _LABEL_W
_ROW_H = 26
_BAR_W = _W - _LABEL_W - 100


@dataclass(frozen=True)
class Bar:
    """One rate on a 0..1 axis, with its 95 % interval when there is one."""

    label: str
    value: float | None
    ci: tuple[float, float] | None = None
    note: str = ""
    """Shown after the value (e.g. the number of examples)."""


def _fit(label: str) -> str:
    """`label` cut to what the label column shows (a long dimension name ran off the plot's left edge);
    the whole name stays in the bar's tooltip."""
    return label if len(label) <= _LABEL_CHARS else label[: _LABEL_CHARS - 1] + "…"


def _x(value: float) -> float:
    return _LABEL_W + max(0.0, min(1.0, value)) * _BAR_W


def interval_bars(
    title: str, bars: Sequence[Bar], *, reference: float | None = None, reference_label: str = ""
) -> str:
    """Horizontal bars on 0..1 with interval whiskers; `reference` draws a dashed line (chance, 0.5)."""
    top = 30
    height = top + _ROW_H * len(bars) + 28
    parts = [_open(title, _W, height), f'<text class="t" x="4" y="18">{escape(title)}</text>']
    for i, bar in enumerate(bars):
        y = top + i * _ROW_H
        label = escape(_fit(bar.label))
        parts.append(f'<text class="l" x="{_LABEL_W - 6}" y="{y + 16}" text-anchor="end">{label}</text>')
        parts.append(f'<rect class="track" x="{_LABEL_W}" y="{y + 5}" width="{_BAR_W}" height="14"/>')
        if bar.value is None:
            parts.append(f'<text class="v" x="{_LABEL_W + 4}" y="{y + 16}">no data</text>')
            continue
        width = _x(bar.value) - _LABEL_W
        parts.append(f'<rect class="bar" x="{_LABEL_W}" y="{y + 5}" width="{width:.1f}" height="14"/>')
        if bar.ci is not None:
            lo, hi = _x(bar.ci[0]), _x(bar.ci[1])
            mid = y + 12
            parts.append(
                f'<path class="ci" d="M{lo:.1f} {mid}H{hi:.1f}M{lo:.1f} {mid - 5}v10M{hi:.1f} {mid - 5}v10"/>'
            )
        text = f"{bar.value:.3f}" + (f" [{bar.ci[0]:.3f}, {bar.ci[1]:.3f}]" if bar.ci else "")
        shown = f"{bar.value:.3f} {bar.note}".rstrip()
        parts.append(f'<text class="v" x="{_LABEL_W + _BAR_W + 4}" y="{y + 16}">{escape(shown)}</text>')
        parts.append(f"<title>{escape(bar.label)}: {text}</title>")
    axis_y = top + _ROW_H * len(bars) + 4
    parts.append(_axis(axis_y))
    if reference is not None:
        x = _x(reference)
        parts.append(f'<path class="ref" d="M{x:.1f} {top - 4}V{axis_y}"/>')
        parts.append(f'<text class="r" x="{x + 3:.1f}" y="{top - 6}">{escape(reference_label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _axis(y: float) -> str:
    ticks = [f'<path class="axis" d="M{_LABEL_W} {y}H{_LABEL_W + _BAR_W}"/>']
    for k in range(6):
        x = _x(k / 5)
        ticks.append(f'<path class="axis" d="M{x:.1f} {y}v4"/><text class="k" x="{x:.1f}" y="{y + 16}" '
                     f'text-anchor="middle">{k / 5:.1f}</text>')  # fmt: skip
    return "".join(ticks)


def reliability(calibration: dict[str, Any]) -> str:
    """A reliability diagram: per confidence bin, accuracy against mean confidence; the diagonal is
    perfect calibration, and a dot's area follows the bin's count."""
    size, pad = 300, 40
    inner = size - 2 * pad
    ece = calibration.get("ece")
    title = "Calibration" + (f" (ECE {ece:.3f})" if isinstance(ece, (int, float)) else "")
    parts = [_open(title, size, size + 10), f'<text class="t" x="4" y="18">{escape(title)}</text>']

    def px(v: float) -> float:
        return pad + max(0.0, min(1.0, v)) * inner

    def py(v: float) -> float:
        return size - pad - max(0.0, min(1.0, v)) * inner

    parts.append(f'<rect class="track" x="{pad}" y="{pad}" width="{inner}" height="{inner}"/>')
    parts.append(f'<path class="ref" d="M{px(0)} {py(0)}L{px(1)} {py(1)}"/>')
    bins = [b for b in calibration.get("bins", []) if b.get("count")]
    most = max((int(b["count"]) for b in bins), default=1)
    for b in bins:
        conf, acc, count = float(b["mean_confidence"]), float(b["accuracy"]), int(b["count"])
        lo, hi = float(b["low"]), float(b["high"])
        parts.append(
            f'<rect class="bin" x="{px(lo):.1f}" y="{py(acc):.1f}" width="{px(hi) - px(lo):.1f}" '
            f'height="{py(0) - py(acc):.1f}"/>'
        )
        r = 2.5 + 6.0 * (count / most) ** 0.5
        parts.append(
            f'<circle class="dot" cx="{px(conf):.1f}" cy="{py(acc):.1f}" r="{r:.1f}"><title>'
            f"confidence {lo:.2f}-{hi:.2f}: {count} judgments, mean confidence {conf:.3f}, accuracy {acc:.3f}"
            "</title></circle>"
        )
    for k in range(6):
        v = k / 5
        parts.append(
            f'<text class="k" x="{px(v):.1f}" y="{size - pad + 14}" text-anchor="middle">{v:.1f}</text>'
        )
        parts.append(f'<text class="k" x="{pad - 4}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
    parts.append(f'<text class="l" x="{size / 2}" y="{size - 6}" text-anchor="middle">confidence</text>')
    parts.append(f'<text class="l" x="12" y="{size / 2}" transform="rotate(-90 12 {size / 2})" '
                 'text-anchor="middle">accuracy</text></svg>')  # fmt: skip
    return "".join(parts)


def _open(title: str, width: int, height: int) -> str:
    return (
        f'<svg class="plot" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}">'
    )
