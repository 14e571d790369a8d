#!/usr/bin/env python
"""Reward-server throughput (groups/s) and its overhead over calling `agroup_rewards` directly.

Both sides judge through the same stand-in model: `CannedBackend` (one valid flex judgment per request,
after a fixed latency per batch, as a batching model server answers) behind a `BatchingBackend` of up to
`--max-batch` requests. So only what differs shows:

- direct: `agroup_rewards` for every group of the batch, concurrently, through a `Judge` over the
  batcher in this process (PIL images in, `GroupResult` out);
- server: `RewardClient.arewards` of the same groups to `flexjudge serve`'s app in its own process
  (`POST /v1/rewards`; the images PNG-encoded by the client, decoded and size-checked by the server,
  the results as JSON and rebuilt into `GroupResult`), with the same backend and batcher behind it.

G = 9 candidates of 256x256 per group, round robin (36 pairs). `--concurrency` requests of `--groups`
groups each are in flight at once; throughput is groups over wall time, best of `--repeat`.

    python benchmarks/reward_server.py [--latency-ms 50] [--groups 1 8 32] [--repeat 3] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine
from openai_overhead import CannedBackend, report, spawn_server

from flexjudge import Judge
from flexjudge.batching import BatchingBackend
from flexjudge.rewards import agroup_rewards
from flexjudge.rewards.client import RewardClient

PROMPT = "A child in a yellow raincoat feeding ducks at a pond, storybook illustration"
G = 9
Batch = list[tuple[str, list[Image.Image]]]


def _serve(port: int, latency_s: float, max_batch: int) -> None:
    import uvicorn

    from flexjudge.serve import ServeLimits, create_app, server_config

    limits = ServeLimits(max_groups=256, max_reward_images=4096, max_reward_pixels=10**10)
    app = create_app(CannedBackend(latency_s), model_name="canned", window_s=0.0, max_batch=max_batch,
                     limits=limits)  # fmt: skip
    uvicorn.Server(server_config(app, host="127.0.0.1", port=port, limits=limits, log_level="error")).run()


def _groups(count: int, salt: int) -> Batch:
    # Distinct pixels per run: nothing is served from an encode memo.
    return [
        (PROMPT, [Image.new("RGB", (256, 256), ((25 * k + salt) % 256, 40 + g % 200, 7)) for k in range(G)])
        for g in range(count)
    ]


async def _direct(batches: list[Batch], latency_s: float, max_batch: int) -> float:
    batcher = BatchingBackend(CannedBackend(latency_s), max_batch=max_batch, window_s=0.0)
    judge = Judge("canned", backend=batcher)
    await agroup_rewards(PROMPT, batches[0][0][1][:2], judge)  # warm: constraint compiled once
    started = time.perf_counter()
    results = await asyncio.gather(
        *(agroup_rewards(prompt, images, judge) for batch in batches for prompt, images in batch)
    )
    elapsed = time.perf_counter() - started
    _check([r for r in results])
    return elapsed


async def _served(url: str, batches: list[Batch]) -> float:
    client = RewardClient(url)
    await client.arewards(batches[0][:1])  # warm: connection, constraint compiled in the server
    started = time.perf_counter()
    answers = await asyncio.gather(*(client.arewards(batch) for batch in batches))
    elapsed = time.perf_counter() - started
    await client.aclose()
    _check([r for batch in answers for r in batch])
    return elapsed


def _check(results: list) -> None:  # type: ignore[type-arg]
    bad = [r for r in results if r.failures or len(r.outcomes) != G * (G - 1) // 2]
    if bad:
        raise SystemExit(f"{len(bad)} groups did not complete: {bad[0].failures[:2]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--max-batch", type=int, default=128)
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    latency = args.latency_ms / 1000
    server, port = spawn_server(_serve, latency, args.max_batch)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for count in args.groups:
            direct, served = [], []
            for run in range(args.repeat):
                batches = [_groups(count, 11 * run + c) for c in range(args.concurrency)]
                direct.append(asyncio.run(_direct(batches, latency, args.max_batch)))
                batches = [_groups(count, 11 * run + c + 5) for c in range(args.concurrency)]
                served.append(asyncio.run(_served(url, batches)))
            groups = count * args.concurrency
            rows.append((count, groups, min(direct), min(served)))
    finally:
        server.terminate()
    table = [
        "| groups / request | requests in flight | direct ms | server ms | direct groups/s | server groups/s "
        "| server / direct |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    table += [
        f"| {c} | {args.concurrency} | {d * 1000:.0f} | {s * 1000:.0f} | {n / d:.1f} | {n / s:.1f} "
        f"| {s / d:.2f} |"
        for c, n, d, s in rows
    ]
    setup = (
        f"{machine()}; G = {G} (36 pairs, round robin), 256x256 images, latency {args.latency_ms:.0f} ms per "
        f"batch of up to {args.max_batch}, best of {args.repeat}"
    )
    report("reward_server", setup, table, args.record)


if __name__ == "__main__":
    main()
