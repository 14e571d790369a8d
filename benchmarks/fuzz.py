#!/usr/bin/env python
"""Fuzz every reader at scale: mutated example outputs judged by an independent oracle on watched workers.

    python benchmarks/fuzz.py --inputs 1000000 --workers 2 [--record [PATH]]

Reports inputs tried, crashes (an error that is not a FlexjudgeError), invented verdicts (a winner the
oracle in tests/fuzzing.py does not allow), hangs (an input past its time limit, its worker killed), the
slowest input per KB and the throughput. The goal is 0, 0, 0, and a slowest-per-KB near the typical one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The harness lives in tests/ with the strategies the default suite uses; the benchmark borrows it.
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import fuzzing  # noqa: E402
from _machine import machine  # noqa: E402


def _json_us_per_kb() -> float:
    """json.loads on the flex example, for scale: a linear reader's slope is a small multiple of it."""
    text = (ROOT / "examples" / "outputs" / "flex_image.json").read_text(encoding="utf-8")
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(200):
            json.loads(text)
        best = min(best, (time.perf_counter() - start) / 200)
    return best * 1e6 / (len(text.encode()) / 1024)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=100_000, help="fuzz inputs to try (default 100000)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--salt", type=int, default=0, help="picks another deterministic input sequence")
    ap.add_argument("--limit", type=float, default=2.0, help="seconds per input before a kill (default 2)")
    ap.add_argument("--limit-per-kb", type=float, default=0.02, help="extra seconds per KB (default 0.02)")
    ap.add_argument(
        "--skip-open", action="store_true", help="leave out the inputs of known open bugs (fuzzing.OPEN_RAW)"
    )
    default_record = str(Path(__file__).with_name("RESULTS.md"))
    ap.add_argument("--record", nargs="?", const=default_record, metavar="PATH", help="append to RESULTS.md")
    args = ap.parse_args(argv)

    last = [0.0]

    def progress(tally: fuzzing.Tally) -> None:
        if time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            print(
                f"  {tally.inputs} inputs, {tally.crashes} crashes, {tally.invented} invented",
                file=sys.stderr,
            )

    start = time.perf_counter()
    tally = fuzzing.fuzz_pool(
        args.inputs, args.workers, salt=args.salt, limit_s=args.limit, limit_s_per_kb=args.limit_per_kb,
        open_bugs=not args.skip_open, progress=progress,
    )  # fmt: skip
    wall = time.perf_counter() - start
    tried = tally.inputs + tally.hangs
    typical = tally.seconds * 1e6 / max(tally.bytes / 1024, 1e-9)
    rows = [
        ("inputs tried", f"{tried}"),
        ("crashes", f"{tally.crashes}"),
        ("invented verdicts", f"{tally.invented}"),
        ("hangs (killed past the limit)", f"{tally.hangs}"),
        ("slowest input per KB", f"{tally.slowest_us_per_kb:.0f} µs/KB: {tally.slowest}"),
        ("all inputs per KB", f"{typical:.0f} µs/KB (json.loads: {_json_us_per_kb():.1f} µs/KB)"),
        ("reads (strict + lenient)", f"{tally.read} verdicts read, {tally.refused} refused"),
        ("throughput", f"{tried / wall:.0f} inputs/s on {args.workers} workers ({wall:.0f} s wall)"),
    ]
    table = "| measure | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    print(table)
    for key, n in sorted(tally.kinds.items(), key=lambda kv: -kv[1]):
        print(f"{n:8d}  {key}")
    for finding in tally.findings[:20]:
        print(json.dumps(finding.__dict__, ensure_ascii=True))
    if args.record:
        command = (
            f"python benchmarks/fuzz.py --inputs {args.inputs} --workers {args.workers} --salt {args.salt}"
            + (" --skip-open" if args.skip_open else "")
        )
        found = "".join(f"- `{json.dumps(f.__dict__, ensure_ascii=True)}`\n" for f in tally.findings[:10])
        section = (
            f"\n## fuzz: {tried} inputs ({datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC})\n\n"
            f"{machine()};\n`{command}`. Inputs are single splices of the example outputs and\n"
            "their renders in every format (truncations, bit flips, quotes and braces, duplicated keys,\n"
            "confusables, long runs, second judgments, rewritten winners), each read strictly and\n"
            "leniently, then checked; the oracle and the watched pool are in tests/fuzzing.py. Per-input\n"
            "times are the worker's CPU time for both reads and check; inputs under 1 KB count as 1 KB.\n\n"
            f"{table}"
        )
        if tally.kinds:
            kinds = "".join(f"| {k} | {n} |\n" for k, n in sorted(tally.kinds.items(), key=lambda kv: -kv[1]))
            section += f"\nEvery finding, by mutation:\n\n| finding | count |\n|---|---:|\n{kinds}"
        if found:
            section += f"\nFindings (first 10; `#index` regenerates the input with `case_at`):\n\n{found}"
        with Path(args.record).open("a", encoding="utf-8") as fh:
            fh.write(section)
        print(f"recorded in {args.record}", file=sys.stderr)
    return 1 if tally.crashes or tally.invented or tally.hangs else 0


if __name__ == "__main__":
    sys.exit(main())
