"""The HTML report, rendered by headless Chromium: it draws, holds what it should, keeps hostile strings
as text, fetches nothing, and its thumbnails stay small. Pure parts (escaping, the results reader, the
command) are tested without a browser."""

from __future__ import annotations

import base64
import io
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from typer.testing import CliRunner

from flexjudge.cli import app
from flexjudge.errors import UsageError
from flexjudge.evaluation.report import build_report
from flexjudge.evaluation.report._html import script_json
from flexjudge.evaluation.results import ResultRow
from tests.report_rows import (
    CHROMIUM_MISSING,
    chromium_path,
    hand_summary,
    make_images,
    result_row,
    run_chromium,
)

ROOT = Path(__file__).parent.parent
HOSTILE = "</script><img src=x onerror=\"document.title='PWNED'\"><!-- <svg onload=alert(1)>"
needs_chromium = pytest.mark.skipif(chromium_path() is None, reason=CHROMIUM_MISSING)


def _hostile_judgment(row: ResultRow) -> ResultRow:
    """`row` with hostile text in a dimension name, a criterion's evidence, an analysis and a finding."""
    assert row.primary.judgment is not None
    judgment = json.loads(json.dumps(row.primary.judgment))
    judgment["dimensions"][0]["name"] = HOSTILE
    judgment["dimensions"][0]["criteria"][0]["evidence_1"] = HOSTILE
    judgment["verdict"]["analysis"] = HOSTILE
    where = "dimensions[0].criteria[0]"
    judgment["findings"].append({"code": "split_sum", "severity": "error", "path": where, "message": HOSTILE})
    primary = row.primary.model_copy(
        update={"judgment": judgment, "findings": [*row.primary.findings, HOSTILE]}
    )
    return row.model_copy(update={"primary": primary})


def _gif(path: Path, frames: int, green: int) -> Path:
    images = [Image.new("RGB", (400, 300), (40 * k % 256, green, 200 - 20 * k)) for k in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ResultRow]]:
    folder = tmp_path_factory.mktemp("report")
    images = [str(p) for p in make_images(folder / "img", 24, size=(400, 300))]
    rng = random.Random(7)
    # 130 rows: past the first chunk of 100, so later pages come from a gzipped chunk opened on demand.
    rows = [result_row(i, (images[i % 24], images[(i + 5) % 24]), rng=rng) for i in range(130)]
    rows[0] = result_row(0, (images[0], images[1]), rng=rng, prompt=HOSTILE)
    rows[1] = _hostile_judgment(rows[1])
    rows[2] = result_row(2, ("https://example.com/a.png", images[2]), rng=rng)
    video = (str(_gif(folder / "v1.gif", 6, 90)), str(_gif(folder / "v2.gif", 9, 160)))
    rows[3] = result_row(3, video, rng=rng, modality="video")
    rows[4] = rows[4].model_copy(update={"id": HOSTILE})
    summary = hand_summary(len(rows))
    summary["per_dimension"][HOSTILE] = {"agreement": 0.5, "agreement_ci": [0.4, 0.6], "n": 3}
    out = folder / "report.html"
    info = build_report(rows, summary, out, title=HOSTILE)
    assert info.judgments == 130 and info.media_failures == 1  # the URL: never fetched
    return out, rows


def _dom(page: Path, fragment: str = "", *also: str) -> str:
    profile = page.parent / f"profile{abs(hash(fragment))}"
    return run_chromium(
        page, profile, "--dump-dom", "--virtual-time-budget=2000", *also, fragment=fragment
    ).decode()


@pytest.fixture(scope="module")
def dom(report: tuple[Path, list[ResultRow]]) -> str:
    """The first screen's DOM; the same run takes the screenshot (`shot.png` beside the page)."""
    if chromium_path() is None:
        pytest.skip(CHROMIUM_MISSING)
    page = report[0]
    return _dom(page, "", f"--screenshot={page.parent / 'shot.png'}", "--window-size=1280,1600")


@needs_chromium
def test_the_page_holds_the_summary_plots_the_first_cards_and_the_filters(dom: str) -> None:
    assert 'data-ready="1"' in dom  # the page script ran to the end
    assert (
        len(re.findall(r'<svg class="plot"', dom)) == 5
    )  # accuracy, bias, dimensions, failures, calibration
    assert len(re.findall(r'<article class="card ', dom)) == 20  # the first page, not all 60
    for control in ('<select id="f-correct"', '<select id="f-code"', 'id="f-swap"', 'id="next"'):
        assert control in dom
    assert '<option value="split_sum">split_sum (' in dom  # finding codes offered with their counts
    assert "page 1 of 7 · 130 of 130 judgments" in dom


@needs_chromium
def test_the_hierarchy_score_bars_findings_and_swap_disagreement_are_shown(
    dom: str, report: tuple[Path, list[ResultRow]]
) -> None:
    rows = report[1][:20]
    assert dom.count('class="dim') >= sum(
        len(r.primary.judgment["dimensions"]) for r in rows if r.primary.judgment
    )
    assert len(re.findall(r'<div class="bar"><span class="s1" style="width: ', dom)) > 100
    # A finding on a criterion opens its dimension and marks the criterion.
    assert re.search(r'<details class="dim flag[^"]*" open="">|<details class="dim[^"]*" open="">', dom)
    assert '<li class="crit flag">' in dom
    disagreeing = sum(r.position_consistent is False for r in rows)
    assert disagreeing > 0
    assert len(re.findall(r'<span class="badge swap">swap disagrees</span>', dom)) == disagreeing
    assert dom.count('class="cand strip"') == 2  # the video row: two frame strips
    assert len(re.findall(r'<img class="frame"', dom)) == 8  # four frames each


@needs_chromium
def test_hostile_strings_render_as_text(dom: str, report: tuple[Path, list[ResultRow]]) -> None:
    shown = _as_text(HOSTILE)
    assert dom.count(shown) >= 5  # prompt, id, dimension name, evidence, analysis, finding message, code
    assert "PWNED</title>" not in dom and '<img src="x"' not in dom and "<svg onload" not in dom
    html = report[0].read_text(encoding="utf-8")
    # Outside the data tags too (the title, the per-dimension plot), the text is escaped.
    assert f"<title>{HOSTILE}" not in html and "&lt;/script&gt;&lt;img src=x" in html


@needs_chromium
def test_the_screenshot_is_not_blank(dom: str, report: tuple[Path, list[ResultRow]]) -> None:
    image = Image.open(report[0].parent / "shot.png").convert("L")
    assert image.size == (1280, 1600)
    stddev = ImageStat.Stat(image).stddev[0]
    assert stddev > 20, f"the page looks blank (pixel std {stddev:.1f})"


def _as_text(text: str) -> str:
    """How the DOM serialiser writes `text` held in a text node."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _codes(row: ResultRow) -> set[str]:
    return {*row.primary.findings, *(row.swapped.findings if row.swapped else [])}


@needs_chromium
def test_filters_from_the_link_keep_only_what_they_ask(report: tuple[Path, list[ResultRow]]) -> None:
    page, rows = report
    wanted = [r for r in rows if r.correct is False and "split_sum" in _codes(r)]
    assert 0 < len(wanted) <= 20 and any(r.id >= "ex-00100" for r in wanted)  # rows from both chunks
    dom = _dom(page, "#f-correct=wrong&f-code=split_sum")
    assert len(re.findall(r'<article class="card ', dom)) == len(wanted)
    assert len(re.findall(r'<article class="card wrong"', dom)) == len(wanted)
    assert all(f'<code class="rid">{_as_text(r.id)}</code>' in dom for r in wanted)
    assert f"{len(wanted)} of 130 judgments" in dom
    dom = _dom(page, "#page=6")  # rows 100-119: the second chunk
    assert "page 6 of 7" in dom and 'data-ready="1"' in dom
    assert len(re.findall(r'<article class="card ', dom)) == 20
    assert '<code class="rid">ex-00100</code>' in dom and '<code class="rid">ex-00119</code>' in dom


def test_nothing_is_fetched_from_the_network(report: tuple[Path, list[ResultRow]]) -> None:
    html = report[0].read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"url\(|@import|<link\b|<iframe\b|<object\b", html, re.I)
    assert "https://example.com/a.png" in html  # the URL candidate is shown as text, never loaded


def test_thumbnails_are_at_most_256_px(report: tuple[Path, list[ResultRow]]) -> None:
    html = report[0].read_text(encoding="utf-8")
    stored = re.findall(r'<div hidden id="fj-i\d+">([A-Za-z0-9+/=]+)</div>', html)
    assert len(stored) == 24 + 4 + 4  # 24 distinct images stored once each, then two four-frame strips
    sizes = [Image.open(io.BytesIO(base64.b64decode(data))).size for data in stored]
    assert max(max(size) for size in sizes) == 256  # the 400x300 sources, shrunk
    assert all(max(size) <= 256 for size in sizes)


def test_script_json_cannot_end_its_script_tag() -> None:
    value = {"a": "</script><!--<script>", "b": "\u2028&"}
    text = script_json(value)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == value


def test_a_summary_with_nan_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="accuracy"):
        build_report([], {**hand_summary(0), "accuracy": float("nan")}, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_the_page_is_the_same_on_every_build(tmp_path: Path) -> None:
    """Thumbnails are made on several threads; their numbering follows the rows, not the threads."""
    images = [str(p) for p in make_images(tmp_path / "img", 8, size=(300, 200))]
    rng = random.Random(3)
    rows = [result_row(i, (images[(3 * i) % 8], images[(3 * i + 5) % 8]), rng=rng) for i in range(16)]
    pages = []
    for k in range(2):
        build_report(rows, hand_summary(16), tmp_path / f"r{k}.html")
        pages.append((tmp_path / f"r{k}.html").read_bytes())
    assert pages[0] == pages[1]


def test_the_report_command_writes_the_page(tmp_path: Path) -> None:
    images = [str(p) for p in make_images(tmp_path / "img", 4)]
    rng = random.Random(1)
    rows = [result_row(i, (images[i % 4], images[(i + 1) % 4]), rng=rng) for i in range(12)]
    results = tmp_path / "results.jsonl"
    lines = [row.model_dump_json() for row in rows]
    results.write_text("\n".join(lines) + "\n" + lines[0][:50], encoding="utf-8")  # a torn last line
    out = tmp_path / "report.html"
    done = CliRunner().invoke(app, ["report", str(results), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "wrote" in done.output and "12 judgments" in done.output
    html = out.read_text(encoding="utf-8")
    assert '"n":12' not in html and "<td>12</td>" in html  # the summary came from metrics.summarize
    results.write_text(lines[0] + "\n{}\n" + lines[1] + "\n", encoding="utf-8")
    done = CliRunner().invoke(app, ["report", str(results), "--out", str(tmp_path / "bad.html")])
    assert done.exit_code == 2 and f"{results}:2: not a result row" in done.output


@pytest.mark.slow
@needs_chromium
def test_the_size_benchmark_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "report_size.py"), "--n", "300", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| 300 |" in done.stdout


def test_a_long_dimension_name_is_cut_in_the_plot_and_whole_in_its_tooltip() -> None:
    from flexjudge.evaluation.report._plots import Bar, interval_bars

    name = "semantic alignment and accuracy of the whole scene"
    svg = interval_bars("Per-dimension agreement", [Bar(name, 0.5, (0.4, 0.6))])
    shown = svg.split('text-anchor="end">')[1].split("</text>")[0]
    assert shown.endswith("…") and len(shown) <= 28 and name.startswith(shown[:-1])
    assert f"<title>{name}: " in svg
