#!/usr/bin/env python
"""Valid by construction, measured: seeded judgments of a tiny random-weight model, every mode, every engine.

A random-weight model is the worst case for a constraint: nothing but the constraint keeps its output in
shape. Modes: `pair` (one pairwise judgment per run), `point` (one pointwise judgment), `rank` (three
candidates, judged as three pairs; each pairwise judgment counts as one read). Runs sample at temperature
1; a batch of `--batch` runs shares one seed (rows draw in turn from it, so all outputs differ) and run k
is reproducible from (seed k // batch, its row). Counted per read: the text reads in strict mode, the
rules its constraint enforces on that path hold (`flexjudge.constraints.applied_findings`, by the form
the engine applied: grammar or JSON Schema), and whether `check` finds any error at all (what is left:
unique names, which the backend's name guard keeps unless a length bound leaves nothing else; winners or
dimension scores on engines without the grammar).

It drives the backend directly: the requests carry the constraints `flexjudge.reading` builds for the
judge, and the outputs are read with `parse` / `parse_pointwise` and checked with `check`.

    python benchmarks/validity.py --runs 100 [--modes pair,point,rank] [--engines llguidance,xgrammar]
        [--format flex|native] [--batch 10] [--record [RESULTS.md]]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

import flexjudge
from flexjudge.backends.base import Generation, ImagePart, Message, Request, TextPart
from flexjudge.backends.transformers import TransformersBackend, available_engines
from flexjudge.constraints import applied_findings
from flexjudge.prompting import PromptSpec, render_prompt
from flexjudge.ranking import rank_by_win_rate
from flexjudge.reading import pair_request_constraint, point_request_constraint, point_with_scale
from flexjudge.schema import Judgment, PointScale, PointwiseJudgment

PROMPT = "a red square beside a blue one"
COLOURS = [(200, 30, 30), (30, 30, 200), (30, 160, 30)]
RANK_PAIRS = [(0, 1), (0, 2), (1, 2)]


@dataclass
class Tally:
    reads: int = 0
    strict: int = 0
    enforced_hold: int = 0
    no_error: int = 0
    truncated: int = 0
    failed: int = 0
    whole_rankings: int = 0
    applied: set[str] = field(default_factory=set)
    enforced: set[str] = field(default_factory=set)
    beyond: collections.Counter[str] = field(default_factory=collections.Counter)


def _request(text: str, images: list[Image.Image], constraint: Any, seed: int, args: Any) -> Request:
    parts = (*[ImagePart(image) for image in images], TextPart(text))
    return Request(
        messages=(Message(role="user", parts=parts),),
        constraint=constraint,
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        seed=seed,
    )


def _requests(mode: str, seed: int, count: int, args: Any) -> list[Request]:
    images = [Image.new("RGB", (32, 32), colour) for colour in COLOURS]
    bound = args.max_string_length
    if mode == "point":
        text = render_prompt(PromptSpec(mode="point", modality="image"), PROMPT)
        constraint = point_request_constraint("image", 1, 10, bound)
        return [_request(text, images[:1], constraint, seed, args) for _ in range(count)]
    text = render_prompt(PromptSpec(mode="pair", modality="image", output_format=args.format), PROMPT)
    constraint = pair_request_constraint("image", args.format, (), bound)
    pairs = RANK_PAIRS if mode == "rank" else RANK_PAIRS[:1]
    return [
        _request(text, [images[i], images[j]], constraint, seed, args) for _ in range(count) for i, j in pairs
    ]


def _read(mode: str, generation: Generation, args: Any, tally: Tally) -> Judgment | PointwiseJudgment | None:
    tally.reads += 1
    if generation.finish_reason == "length":
        tally.truncated += 1
        return None
    try:
        judgment: Judgment | PointwiseJudgment
        if mode == "point":
            judgment = point_with_scale(generation.text, PointScale())
            flexjudge.parse_pointwise(generation.text, strict=True)
        else:
            judgment = flexjudge.parse(generation.text, format=args.format, modality="image", strict=True)
    except flexjudge.ParseError as exc:
        tally.failed += 1
        print(f"{mode}: unreadable: {exc}", file=sys.stderr)
        return None
    tally.strict += 1
    applied = generation.enforced
    tally.applied.add(str(applied))
    enforced = applied_findings(applied, "point" if mode == "point" else "pair", args.format)
    tally.enforced |= enforced
    findings = flexjudge.check(judgment)
    broken = {f.code for f in findings} & enforced  # enforced rules of any severity (3-5 criteria warns)
    codes = {f.code for f in findings if f.severity == "error"}
    tally.enforced_hold += not broken
    tally.no_error += not codes
    tally.beyond.update(codes - enforced)
    tally.beyond.update(f"ENFORCED {code}" for code in broken)  # must never appear
    return judgment


def run_mode(backend: TransformersBackend, mode: str, args: Any) -> Tally:
    tally = Tally()
    per_run = len(RANK_PAIRS) if mode == "rank" else 1
    for start in range(0, args.runs, args.batch):
        count = min(args.batch, args.runs - start)
        requests = _requests(mode, start // args.batch, count, args)
        generations = asyncio.run(backend.generate(requests))
        for k in range(count):
            judgments = [_read(mode, g, args, tally) for g in generations[k * per_run : (k + 1) * per_run]]
            if mode == "rank" and all(isinstance(j, Judgment) for j in judgments):
                ranking = rank_by_win_rate(3, RANK_PAIRS, judgments)  # type: ignore[arg-type]
                tally.whole_rankings += sorted(ranking.order) == [1, 2, 3] and len(ranking.pairs) == 3
    return tally


def report(engine: str, mode: str, tally: Tally, seconds: float, args: Any) -> str:
    n = tally.reads
    beyond = ", ".join(f"{code} {count}" for code, count in sorted(tally.beyond.items())) or "none"
    applied = "/".join(sorted(tally.applied))
    lines = [
        f"{engine}, {mode} ({args.runs} runs, {n} reads, applied as {applied}, {seconds:.0f} s):",
        f"- read in strict mode: {tally.strict}/{n}; truncated {tally.truncated}; unreadable {tally.failed}",
        f"- enforced rules hold ({', '.join(sorted(tally.enforced))}): {tally.enforced_hold}/{n}",
        f"- no error finding at all: {tally.no_error}/{n}; left to check: {beyond}",
    ]
    if mode == "rank":
        lines.append(f"- rankings that place all 3 candidates: {tally.whole_rankings}/{args.runs}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--modes", default="pair,point,rank")
    ap.add_argument("--engines", default="llguidance,xgrammar")
    ap.add_argument("--format", choices=("flex", "native"), default="flex")
    ap.add_argument("--batch", type=int, default=10, help="runs decoded together (one seed per batch)")
    ap.add_argument("--max-string-length", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--record", nargs="?", const=str(Path(__file__).parent / "RESULTS.md"), default=None)
    args = ap.parse_args()
    os.environ.setdefault("FLEXJUDGE_CACHE_DIR", tempfile.mkdtemp(prefix="flexjudge-"))
    # One thread: the tiny model's matrices are too small to share out, and on a busy machine threads
    # that wait for each other made a run 30x slower (68 s against 2 s for 4 pairs, measured here).
    torch.set_num_threads(args.threads)
    sections = []
    for engine in args.engines.split(","):
        if engine not in available_engines():
            print(f"{engine}: not installed, skipped", file=sys.stderr)
            continue
        backend = TransformersBackend("tiny-random", engine=engine, max_batch_size=3 * args.batch)  # type: ignore[arg-type]
        for mode in args.modes.split(","):
            started = time.perf_counter()
            tally = run_mode(backend, mode, args)
            text = report(engine, mode, tally, time.perf_counter() - started, args)
            print(text, flush=True)
            sections.append(text)
        asyncio.run(backend.aclose())
    if args.record:
        machine = f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        setup = (
            f"`python benchmarks/validity.py --runs {args.runs} --modes {args.modes} "
            f"--engines {args.engines} --format {args.format} --batch {args.batch} "
            f"--threads {args.threads}`: "
            "tiny random-weight Qwen2.5-VL (`tiny-random`), "
            f"temperature 1.0, strings bounded to {args.max_string_length} characters (random weights never "
            "close a string otherwise)"
        )
        section = f"\n## validity ({stamp})\n\n{machine}\n\n{setup}\n\n" + "\n\n".join(sections) + "\n"
        with Path(args.record).open("a", encoding="utf-8") as fh:
            fh.write(section)


if __name__ == "__main__":
    main()
