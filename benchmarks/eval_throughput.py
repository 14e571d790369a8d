#!/usr/bin/env python
"""`flexjudge eval` throughput against a local OpenAI-compatible server, against the ideal.

The server (a bare ASGI app in its own process, `group_reward.serve_with_latency`) answers every request
a fixed `--latency` after it arrives, with one valid flex judgment: a model server with continuous
batching, as vLLM is, whose cost is known (a stand-in that runs one batch at a time instead halves any
closed-loop client's rate once the requests split into two alternating half batches). At concurrency C
the ideal is C calls per latency, so C / latency / runs-per-example examples per second (2 runs with the
swapped order, 1 without). The measured run is the whole of `run_eval`: each example's two images read
from disk and checked, both orders judged, every judgment parsed and checked, every result appended and
fsynced. Beside it, measured the same way round: the same judge calls made directly (`Judge.ajudge`
under the same bound, nothing written), so the runner's own cost (eval / direct) shows apart from the
SDK's, the server's and the machine's.

    python benchmarks/eval_throughput.py --examples 512 --concurrency 8 64 --latency 1.0 [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from _machine import machine
from group_reward import serve_with_latency
from openai_overhead import report, spawn_server
from PIL import Image

import flexjudge
from flexjudge.evaluation.data import load_examples
from flexjudge.evaluation.runner import run_eval

PROMPT = "A child in a yellow raincoat feeding ducks at a pond, storybook illustration"


def write_data(folder: Path, n: int) -> Path:
    """`n` labelled pairs over 16 distinct 256x256 images."""
    for k in range(16):
        Image.new("RGB", (256, 256), (16 * k, 40, 90)).save(folder / f"{k}.png")
    rows = [
        {"id": f"e{i}", "prompt": PROMPT, "candidates": [f"{i % 16}.png", f"{(i + 1) % 16}.png"], "label": 1}
        for i in range(n)
    ]
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


async def direct(url: str, data: Path, concurrency: int, consistency: bool) -> float:
    """The same calls as `run_eval` makes, straight through `Judge.ajudge`: the baseline."""
    examples = list(load_examples(data))
    gate = asyncio.Semaphore(concurrency)
    orders = (False, True) if consistency else (False,)
    async with flexjudge.Judge(
        "canned", backend="openai", base_url=url, max_concurrency=concurrency
    ) as judge:

        async def one(candidates: list[str]) -> None:
            async with gate:
                await judge.ajudge(PROMPT, candidates)

        started = time.perf_counter()
        calls = [list(e.candidates[::-1] if flip else e.candidates) for e in examples for flip in orders]
        await asyncio.gather(*(one(c) for c in calls))
        return time.perf_counter() - started


async def measure(url: str, data: Path, out: Path, concurrency: int, consistency: bool) -> float:
    examples = list(load_examples(data))
    async with flexjudge.Judge(
        "canned", backend="openai", base_url=url, max_concurrency=concurrency
    ) as judge:
        started = time.perf_counter()
        await run_eval(examples, judge, out, concurrency=concurrency, consistency=consistency, progress=False)
        return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--examples", type=int, default=512, help="at the highest concurrency (fewer below)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--latency", type=float, default=1.0, help="seconds the server takes per request")
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()
    server, port = spawn_server(serve_with_latency, args.latency)
    url = f"http://127.0.0.1:{port}/v1"
    rows = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            data = write_data(folder, args.examples)
            asyncio.run(measure(url, write_data(folder, 8), folder / "warm.jsonl", 8, True))  # imports, probe
            for c in args.concurrency:
                for consistency in (True, False):
                    runs = 2 if consistency else 1
                    # The same number of rounds at every concurrency: each point takes as long.
                    n = max(8, args.examples * c // max(args.concurrency))
                    data = write_data(folder, n)
                    out = folder / f"c{c}-{runs}.jsonl"
                    elapsed = asyncio.run(measure(url, data, out, c, consistency))
                    assert out.read_bytes().count(b"\n") == n
                    baseline = asyncio.run(direct(url, data, c, consistency))
                    ideal = c / args.latency / runs
                    rows.append((c, runs, n, n / elapsed, n / baseline, ideal))
    finally:
        server.terminate()
    table = [
        "| concurrency | runs per example | examples | eval examples/s | direct calls, examples/s"
        " | ideal examples/s | eval / ideal | eval / direct |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    table += [
        f"| {c} | {r} | {n} | {m:,.1f} | {d:,.1f} | {i:,.1f} | {m / i:.2f} | {m / d:.2f} |"
        for c, r, n, m, d, i in rows
    ]
    setup = f"{machine()}; server: every request answered {args.latency * 1000:.0f} ms after it arrives"
    report("eval_throughput", setup, table, args.record)


if __name__ == "__main__":
    main()
