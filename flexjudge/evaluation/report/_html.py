"""Page assembly: one self-contained HTML file (inline CSS, script and SVG; images as data: URLs).

Layout of the file, in order: the summary (plain markup and SVG), the filter controls, then the data
as script tags the page reads lazily: the filter index, the rows in chunks of `CHUNK` (the first as plain
JSON, the rest gzip + base64, ~5x smaller), the thumbnails one tag each (referred to by number, so an
image shared by many rows is stored once), and the page script. Base64 goes in hidden <div>s rather than
script tags: it holds no "<" or "&", and Chromium reads text ~20 % faster than script data, which is most
of the time a 10,000-judgment page takes to load. The script and the thumbnails the first
chunk uses come before the rest, so the first screen renders while the browser still reads the file.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
from collections import Counter
from collections.abc import Sequence
from html import escape
from importlib import resources
from typing import IO, Any

from flexjudge.errors import UsageError
from flexjudge.evaluation.report import _plots
from flexjudge.evaluation.report._rows import index_entry, row_view
from flexjudge.evaluation.report._thumbs import Thumbnails
from flexjudge.evaluation.results import ResultRow

CHUNK = 100
"""Rows per data chunk: what one page turn decompresses at most (a page is `PAGE` rows)."""
PAGE = 20
"""Judgment cards per page."""

# In a <script> element the HTML parser ends the data at "</script" and "<!--" opens odd states; JSON with
# these characters escaped means the same to JSON.parse and nothing to the parser. U+2028/9 for old engines.
# (Chained replace: several times faster than str.translate on the tens of megabytes of a large report.)
_SCRIPT_SAFE = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def script_json(value: Any) -> str:
    """`value` as JSON that is safe inside a <script> element (and still the same JSON)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escaped in _SCRIPT_SAFE:
        text = text.replace(char, escaped)
    return text


def _utf8(text: str) -> bytes:
    # Only inside JSON strings can a lone surrogate occur (a prompt from a bad file); "\ud800" written as
    # its JSON escape keeps the file valid UTF-8 and reads back as the same string.
    return text.encode("utf-8", "backslashreplace")


def write_page(
    rows: Sequence[ResultRow], summary: dict[str, Any], fh: IO[bytes], *, title: str
) -> Thumbnails:
    """Write the whole page to `fh`; returns the thumbnails (counts for the caller)."""
    thumbs = Thumbnails()
    thumbs.prefetch((source, row.modality) for row in rows for source in row.candidates)
    index = [index_entry(row) for row in rows]
    codes = Counter(code for entry in index for code in entry[1])
    views = [row_view(row, thumbs) for row in rows[:CHUNK]]
    first_images = len(thumbs.images)
    meta = {"mime": thumbs.mime, "pageSize": PAGE, "chunkSize": CHUNK, "codes": dict(sorted(codes.items()))}
    fh.write(_utf8(_head(title, summary, len(rows))))
    fh.write(_utf8(f'<script type="application/json" id="fj-meta">{script_json(meta)}</script>\n'))
    fh.write(_utf8(f'<script type="application/json" id="fj-index">{script_json(index)}</script>\n'))
    fh.write(_utf8(f'<script type="application/json" id="fj-c0">{script_json(views)}</script>\n'))
    _write_images(fh, thumbs.images, 0)
    script = resources.files(__package__).joinpath("_page.js").read_text(encoding="utf-8")
    fh.write(_utf8(f"<script>{script}</script>\n"))
    for k in range(1, math.ceil(len(rows) / CHUNK)):
        chunk = [row_view(row, thumbs) for row in rows[k * CHUNK : (k + 1) * CHUNK]]
        packed = gzip.compress(_utf8(script_json(chunk)), compresslevel=6, mtime=0)
        fh.write(f'<div hidden id="fj-c{k}">{base64.b64encode(packed).decode()}</div>\n'.encode())
    _write_images(fh, thumbs.images[first_images:], first_images)
    fh.write(b"</body></html>\n")
    return thumbs


def _write_images(fh: IO[bytes], images: list[str], start: int) -> None:
    for i, data in enumerate(images, start):
        fh.write(f'<div hidden id="fj-i{i}">{data}</div>\n'.encode())


def _head(title: str, summary: dict[str, Any], n_rows: int) -> str:
    css = resources.files(__package__).joinpath("_page.css").read_text(encoding="utf-8")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # The page fetches nothing: this forbids any load but inline data, should a string ever get through.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{escape(title)}</title><style>{css}</style></head>\n<body>"
        f"<h1>{escape(title)}</h1>\n{_summary(summary, n_rows)}\n"
        '<section id="judgments"><h2>Judgments</h2><div id="controls">'
        '<label>correctness <select id="f-correct"><option value="">all</option>'
        '<option value="correct">correct</option><option value="wrong">wrong</option>'
        '<option value="failed">failed (no judgment)</option></select></label>'
        '<label>finding <select id="f-code"><option value="">all</option>'
        '<option value="__any">any finding</option><option value="__none">no finding</option>'
        "</select></label>"
        '<label><input type="checkbox" id="f-swap"> swap disagrees only</label></div>'
        '<div id="cards"></div><nav id="pager"><button id="prev" type="button">previous</button>'
        '<span id="pageinfo"></span><button id="next" type="button">next</button></nav></section>\n'
    )


def _number(summary: dict[str, Any], key: str) -> float | None:
    value = summary.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"summary[{key!r}] must be a finite number or null, got {value!r}")
    return float(value)


def _interval(summary: dict[str, Any], key: str) -> tuple[float, float] | None:
    value = summary.get(f"{key}_ci")
    if value is None:
        return None
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise UsageError(f"summary[{key + '_ci'!r}] must be [low, high] or null, got {value!r}")
    low, high = _number({"v": value[0]}, "v"), _number({"v": value[1]}, "v")
    return None if low is None or high is None else (low, high)


_ROWS = (
    ("accuracy", "accuracy (ties dropped)"),
    ("accuracy_with_ties", "accuracy with ties"),
    ("kendall_tau_b", "Kendall's tau-b"),
    ("position_consistency", "position consistency"),
    ("first_position_win_rate", "first-position win rate"),
    ("findings_rate", "judgments with findings"),
    ("parse_failure_rate", "parse failures"),
    ("truncation_rate", "truncated outputs"),
    ("error_rate", "errors"),
)


def _bar(summary: dict[str, Any], key: str, label: str) -> _plots.Bar:
    return _plots.Bar(label, _number(summary, key), _interval(summary, key))


def _summary(summary: dict[str, Any], n_rows: int) -> str:
    cells = [f"<tr><th>examples</th><td>{escape(str(summary.get('n', n_rows)))}</td><td></td></tr>"]
    for key, label in _ROWS:
        value, ci = _number(summary, key), _interval(summary, key)
        shown = "—" if value is None else f"{value:.3f}"
        interval = "" if ci is None else f"95% CI [{ci[0]:.3f}, {ci[1]:.3f}]"
        cells.append(f'<tr data-metric="{key}"><th>{label}</th><td>{shown}</td><td>{interval}</td></tr>')
    plots = [
        _plots.interval_bars(
            "Agreement with the labels",
            [
                _bar(summary, "accuracy", "accuracy (ties dropped)"),
                _bar(summary, "accuracy_with_ties", "with ties"),
            ],
            reference=0.5,
            reference_label="chance (pairs)",
        ),
        _plots.interval_bars(
            "Position bias",
            [
                _bar(summary, "first_position_win_rate", "first shown wins"),
                _bar(summary, "position_consistency", "same winner when swapped"),
            ],
            reference=0.5,
            reference_label="no bias",
        ),
        _plots.interval_bars("Per-dimension agreement", _dimension_bars(summary.get("per_dimension") or {})),
        _plots.interval_bars(
            "Findings and failures",
            [_bar(summary, key, label) for key, label in _ROWS[5:]],
        ),
    ]
    calibration = summary.get("calibration")
    note = ""
    if calibration:
        plots.append(_plots.reliability(calibration))
    else:
        note = '<p class="note">No calibration: the runs carry no confidence.</p>'
    return (
        f'<section id="summary"><h2>Summary</h2><table class="stats">{"".join(cells)}</table>'
        f'<div class="plots">{"".join(plots)}</div>{note}</section>'
    )


def _dimension_bars(per_dimension: dict[str, Any]) -> list[_plots.Bar]:
    bars = []
    for name, entry in sorted(per_dimension.items()):
        n = entry.get("n")
        bars.append(
            _plots.Bar(
                str(name),
                _number(entry, "agreement"),
                _interval(entry, "agreement"),
                note=f"n={n}" if n else "",
            )
        )
    return bars or [_plots.Bar("no dimension labels", None)]
