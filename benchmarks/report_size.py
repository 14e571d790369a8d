"""Report size and time to first screen: `build_report` on N image-pair judgments, in headless Chromium.

Rows are synthetic (real `Judgment`s built through the schema, 3-4 dimensions of 3-4 criteria, both
orders judged, findings from `check`); every candidate is its own small real JPEG (320x240), so no
thumbnail is shared and the file holds 2N distinct images. "First screen" is the wall time of one
`chromium --headless --screenshot` run on the file (browser start, reading the whole file, the first page
of cards drawn); "empty page" is the same run on a blank page, the browser's own start-up.

    python benchmarks/report_size.py --n 10000 [--record benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from _machine import machine  # noqa: E402

from flexjudge.evaluation.metrics import summarize  # noqa: E402
from flexjudge.evaluation.report import build_report  # noqa: E402
from tests.report_rows import chromium_path, make_images, result_row, run_chromium  # noqa: E402


def _first_screen(page: Path, work: Path, tag: str) -> float:
    """Seconds for one headless screenshot of the page's first screen (summary and the first cards)."""
    start = time.perf_counter()
    shot = f"--screenshot={work / (tag + '.png')}"
    run_chromium(page, work / f"profile-{tag}", shot, "--window-size=1280,2400")
    return time.perf_counter() - start


def _first_page_cards(page: Path, work: Path) -> int:
    """Judgment cards the page script drew on its first page (0 if it did not finish), read from the DOM."""
    dom = run_chromium(page, work / "profile-dom", "--dump-dom", "--virtual-time-budget=5000")
    head = dom[: dom.find(b'<script type="application/json"')]  # the cards come before the data
    return head.count(b'<article class="card ') if b'data-ready="1"' in head else 0


def _images(folder: Path, n: int) -> list[str]:
    """`n` distinct images; a --dir from an earlier run with as many is reused (they take minutes)."""
    found = sorted(folder.glob("img*.jpg"))
    paths = found[:n] if len(found) >= n else make_images(folder, n, seed=1)
    return [str(p) for p in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="image-pair judgments")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--record", type=Path, default=None, help="append the table to this Markdown file")
    args = parser.parse_args()
    if chromium_path() is None:
        sys.exit("headless Chromium not found (apt-get install chromium chromium-driver)")
    with tempfile.TemporaryDirectory() as scratch:
        work = args.dir or Path(scratch)
        start = time.perf_counter()
        images = _images(work / "img", 2 * args.n)
        rng = random.Random(0)
        rows = [result_row(i, (images[2 * i], images[2 * i + 1]), rng=rng) for i in range(args.n)]
        prepared = time.perf_counter() - start
        start = time.perf_counter()
        summary = summarize(rows).to_json()
        summarized = time.perf_counter() - start
        start = time.perf_counter()
        info = build_report(rows, summary, work / "report.html", title=f"{args.n} judgments")
        built = time.perf_counter() - start
        blank = work / "blank.html"
        blank.write_text("<!doctype html><title>blank</title><p>blank</p>\n", encoding="utf-8")
        empty = min(_first_screen(blank, work, f"blank{k}") for k in range(2))
        screens = [_first_screen(info.path, work, f"report{k}") for k in range(2)]
        cards = _first_page_cards(info.path, work)
    table = [
        "| judgments | distinct thumbnails | file MB | summarize s | build s "
        "| first screen s (best, worst of 2) | empty page s | cards drawn |",
        "|---|---|---|---|---|---|---|---|",
        f"| {args.n} | {info.images} | {info.bytes / 1e6:.1f} | {summarized:.1f} | {built:.1f} "
        f"| {min(screens):.2f}, {max(screens):.2f} | {empty:.2f} | {cards} |",
    ]
    when = datetime.date.today().isoformat()
    text = "\n".join(
        [f"report_size ({when}; {machine()}; rows and images prepared in {prepared:.0f} s)", *table]
    )
    print(text)
    if cards == 0:
        sys.exit("the page script did not draw the first page of cards")
    if args.record:
        with args.record.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
