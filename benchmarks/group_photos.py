#!/usr/bin/env python
"""One group's reward of photograph-sized images, two checkouts of flexjudge side by side.

G = 9 photo-like 1024x1024 images (smooth fields with noise: PNG-encoding one takes 0.1-0.2 s, as a
generated photograph does), judged in round robin (36 pairs) at concurrency 8 against a server with a
fixed 50 ms latency (`openai_overhead.light_serve`, which reads but does not parse judgment bodies).
Where `group_reward.py` measures scheduling on small images, this measures what the images cost: loading,
encoding, and building 36 requests of about 5 MB each. Each checkout runs in its own process
(`PYTHONPATH` set to it), the checkouts interleaved, fresh images every repeat; wall time per group,
best and median.

    python benchmarks/group_photos.py --checkout OLD_DIR --checkout . [--repeat 3] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
G = 9


def photos(seed: int, size: int) -> list[object]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, size)
    out = []
    for k in range(G):
        field = np.sin((6 + k) * x)[None, :, None] * np.cos((4 + k) * x)[:, None, None] * 100 + 128
        pixels = field + np.array([0, 10 * k, -10 * k]) + rng.normal(0, 4, (size, size, 3))
        out.append(Image.fromarray(pixels.clip(0, 255).astype("uint8")))
    return out


def child(url: str, repeat: int, size: int) -> None:
    """Time `repeat` groups with the flexjudge on sys.path; print the wall times as JSON."""
    import flexjudge
    from flexjudge.rewards import agroup_rewards

    async def run() -> list[float]:
        judge = flexjudge.Judge("canned", backend="openai", base_url=url, max_concurrency=8)
        await agroup_rewards("a photograph", photos(999, 64)[:2], judge)  # the probe and a connection
        walls = []
        for r in range(repeat):
            images = photos(r, size)
            started = time.perf_counter()
            result = await agroup_rewards("a photograph", images, judge)
            walls.append(time.perf_counter() - started)
            if result.failures or len(result.judgments) != G * (G - 1) // 2:
                raise SystemExit(f"the group did not complete: {result.failures[:3]}")
        await judge.aclose()
        return walls

    print(json.dumps(asyncio.run(run())))


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--checkout", action="append", default=[], help="a flexjudge checkout (repeatable)")
    ap.add_argument("--repeat", type=int, default=3, help="groups per checkout per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    if not args.checkout:
        ap.error("name at least one --checkout")
    sys.path.insert(0, str(HERE))
    from _machine import machine
    from openai_overhead import light_serve, report, spawn_server

    server, port = spawn_server(light_serve, 0.05)
    walls: dict[str, list[float]] = {c: [] for c in args.checkout}
    try:
        for _ in range(args.rounds):
            for checkout in args.checkout:
                env = {**os.environ, "PYTHONPATH": str(Path(checkout).resolve())}
                command = [sys.executable, __file__, "--child", f"http://127.0.0.1:{port}/v1"]
                command += [str(args.repeat), str(args.size)]
                out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
                walls[checkout] += json.loads(out.strip().splitlines()[-1])
    finally:
        server.terminate()
    base = min(walls[args.checkout[0]])
    table = ["| checkout | commit | best ms | median ms | best / first's |", "|---|---|---:|---:|---:|"]
    for checkout, times in walls.items():
        commit = subprocess.run(
            ["git", "-C", checkout, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        table.append(
            f"| {checkout} | {commit} | {min(times) * 1000:.0f} | {statistics.median(times) * 1000:.0f} "
            f"| {min(times) / base:.2f} |"
        )
    setup = (
        f"{machine()}; G = {G}, {args.size}x{args.size} photo-like images, concurrency 8, latency 50 ms, "
        f"{args.rounds} rounds x {args.repeat} groups per checkout, load average {os.getloadavg()[0]:.1f}"
    )
    report("group_photos", setup, table, args.record)


if __name__ == "__main__":
    main()
