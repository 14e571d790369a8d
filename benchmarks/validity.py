#!/usr/bin/env python
"""Valid by construction, measured: N seeded judgments from a tiny random-weight model under the constraint.

A random-weight model is the worst case for a constraint: nothing but the grammar keeps its output in
shape. Each run samples at temperature 1 with its own seed, so the N outputs differ. Counted per run:
the text reads in strict mode, the rules the grammar enforces hold (split, anchors, criteria counts),
and whether `check` finds any error at all. Winners that follow the scores are beyond JSON Schema and
enforced by the llguidance grammar; unique criterion names are beyond any grammar and kept by the
backend's name guard, which must give way when a repeat is the only text the length bound still allows.

    python benchmarks/validity.py --runs 100 [--format flex|native] [--engine llguidance] [--record]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

import flexjudge
from flexjudge.backends.transformers import TransformersBackend
from flexjudge.constraints import enforced_findings


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--format", choices=("flex", "native"), default="flex")
    ap.add_argument("--engine", default="llguidance")
    ap.add_argument("--max-string-length", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=1500)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("FLEXJUDGE_CACHE_DIR", tempfile.mkdtemp(prefix="flexjudge-"))
    images = [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (30, 30, 200))]
    backend = TransformersBackend("tiny-random", engine=args.engine)
    enforced = enforced_findings(args.engine)
    counts: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()
    with flexjudge.Judge(
        "tiny-random",
        backend=backend,
        output_format=args.format,
        temperature=1.0,
        max_string_length=args.max_string_length,
        max_new_tokens=args.max_new_tokens,
    ) as judge:
        for seed in range(args.runs):
            try:
                judgment = judge.judge("a red square beside a blue one", images, seed=seed)
            except flexjudge.TruncatedOutput:
                counts["truncated"] += 1
                continue
            except flexjudge.FlexjudgeError as exc:
                counts["failed"] += 1
                print(f"seed {seed}: {exc}", file=sys.stderr)
                continue
            flexjudge.parse(judgment.meta.raw_text or "", format=args.format, strict=True)  # must not raise
            counts["read_strict"] += 1
            codes = {f.code for f in flexjudge.check(judgment) if f.severity == "error"}
            counts["grammar_rules_hold"] += not (codes & enforced)
            counts["no_error_findings"] += not codes
            counts.update(f"error:{c}" for c in codes - enforced)
    seconds = time.perf_counter() - started
    lines = [
        f"{args.runs} runs, format {args.format}, engine {args.engine}, temperature 1.0, "
        f"max_string_length {args.max_string_length}, {seconds:.0f} s",
        f"- read in strict mode: {counts['read_strict']}/{args.runs}",
        f"- grammar-enforced rules hold ({', '.join(sorted(enforced))}): "
        f"{counts['grammar_rules_hold']}/{args.runs}",
        f"- truncated (token budget): {counts['truncated']}; other failures: {counts['failed']}",
        f"- no error finding at all: {counts['no_error_findings']}/{args.runs}; beyond the grammar: "
        + (", ".join(f"{k[6:]} {v}" for k, v in sorted(counts.items()) if k.startswith("error:")) or "none"),
    ]
    print("\n".join(lines))
    if args.record:
        machine = f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        section = f"\n## validity ({stamp})\n\n{machine}\n\n" + "\n".join(lines) + "\n"
        with (Path(__file__).parent / "RESULTS.md").open("a", encoding="utf-8") as fh:
            fh.write(section)


if __name__ == "__main__":
    main()
