#!/usr/bin/env python
"""One group's reward against a judge server with a fixed latency: how close to the ideal, and to a bare
client making the same calls.

The server (in its own process) reads each request, waits a fixed latency (default 50 ms) and answers one
valid flex judgment: a stand-in for a model server, doing nothing else (it decodes no image), so that
scheduling and client cost show. `--server light` (the default) is plain asyncio
(`openai_overhead.light_serve`); `--server uvicorn` a bare ASGI app under uvicorn, whose 0.8-1.4 ms of CPU
a request, on the two cores the client shares, adds several ms to every round of 8 requests answered
together: more than the client's own cost, and no part of the fixed latency a model server on its own
machine would show. A group of G = 9 images is 36 pairs (72 with swap).

- ideal: ceil(calls / concurrency) x latency, the best any client can do at that concurrency;
- bare: the `openai` client making the same calls (images encoded once, `json.loads` of each answer);
- flexjudge: `flexjudge.rewards.agroup_rewards` with a `Judge(max_concurrency=c)`: media checks, prompt,
  constraint, parse into typed judgments, outcomes, the reward formula. The judge has judged one group
  before the clock starts (its capability probe and c connections, as in a training loop's every step
  after the first, and as the floor opens its connections first); the timed group's images are new, so
  each is loaded, hashed and encoded inside the window;
- floor: the least a Python client can do here: aiohttp posting bodies encoded before the clock starts
  and `json.loads` of each answer (no SDK, no retries, no checks): what the machine allows.

Each repeat runs the three clients in turn (interleaved, so a busy spell on the shared machine hits all
of them); the table keeps each one's best. CPU is `time.process_time` of the client per call, and the
server's own CPU per call (from /proc), best repeat: on 2 cores the client and the server share, the
sum bounds how close to the ideal any client gets.

    python benchmarks/group_reward.py [--latency-ms 50] [--repeat 5] [--server light|uvicorn] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine
from openai_overhead import CANNED, bare_judgment, light_serve, report, spawn_server

import flexjudge
from flexjudge.constraints import pair_constraint
from flexjudge.media import to_data_url
from flexjudge.prompting import PromptSpec, render_prompt
from flexjudge.rewards import agroup_rewards

PROMPT = "A child in a yellow raincoat feeding ducks at a pond, storybook illustration"
G = 9


def serve_with_latency(port: int, latency_s: float) -> None:
    """Answer every chat completion after `latency_s` with the canned judgment (and the capability probe
    with what a schema-enforcing server gives)."""
    import uvicorn

    from flexjudge.backends._probe import PROBE_TOKENS

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        probe = json.loads(raw).get("max_tokens") == PROBE_TOKENS
        await asyncio.sleep(latency_s)
        answer = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "canned",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": '{"ok": true}' if probe else CANNED},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 800, "total_tokens": 900},
        }
        body = json.dumps(answer).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", lifespan="off")


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (256, 256), (25 * k, 40, 200 - 20 * k)) for k in range(G)]


def _cpu_s(pid: int) -> float:
    """A process's CPU seconds so far (user + system), from /proc (Linux); 0 where there is none."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Window:
    """Wall time, the client's CPU and the server's CPU over one timed stretch."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.wall = self.cpu = self.server_cpu = 0.0

    def start(self) -> None:
        self._at = (time.perf_counter(), time.process_time(), _cpu_s(self.server_pid))

    def stop(self) -> None:
        wall, cpu, served = self._at
        self.wall = time.perf_counter() - wall
        self.cpu = time.process_time() - cpu
        self.server_cpu = _cpu_s(self.server_pid) - served


def _pairs(calls: int) -> list[tuple[int, int]]:
    pairs = [(i, j) for i in range(G) for j in range(i + 1, G)]
    return (pairs * math.ceil(calls / len(pairs)))[:calls]


async def _floor(url: str, images: list[Image.Image], calls: int, concurrency: int, window: Window) -> None:
    import aiohttp

    text = render_prompt(PromptSpec(), PROMPT)
    schema = pair_constraint("image", "flex")
    urls = [to_data_url(im) for im in images]
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "judgment", "schema": schema, "strict": True},
    }
    bodies = [
        json.dumps(
            {
                "model": "canned",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": urls[i]}},
                            {"type": "image_url", "image_url": {"url": urls[j]}},
                            {"type": "text", "text": text},
                        ],
                    }
                ],
                "response_format": response_format,
                "max_tokens": 4096,
                "temperature": 0.0,
            }
        ).encode()
        for i, j in _pairs(calls)
    ]
    gate = asyncio.Semaphore(concurrency)
    headers = {"content-type": "application/json", "authorization": "Bearer EMPTY"}
    async with aiohttp.ClientSession() as session:

        async def one(body: bytes) -> Any:
            async with gate, session.post(f"{url}/chat/completions", data=body, headers=headers) as response:
                return json.loads(await response.read())["choices"][0]["message"]["content"]

        await asyncio.gather(*(one(b) for b in bodies[:concurrency]))  # connections, as the others warm up
        window.start()
        await asyncio.gather(*(one(b) for b in bodies))
        window.stop()


async def _bare(
    url: str, images: list[Image.Image], calls: int, concurrency: int, window: Window | None = None
) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0)
    text = render_prompt(PromptSpec(), PROMPT)
    schema = pair_constraint("image", "flex")
    gate = asyncio.Semaphore(concurrency)
    pairs = _pairs(calls)

    async def one(i: int, j: int, urls: list[str]) -> Any:
        async with gate:
            return await bare_judgment(client, [urls[i], urls[j]], text, schema)

    if window is not None:
        window.start()
    urls = [to_data_url(im) for im in images]  # once per group, as flexjudge does
    await asyncio.gather(*(one(i, j, urls) for i, j in pairs))
    if window is not None:
        window.stop()
    await client.close()


async def _flexjudge(
    url: str, images: list[Image.Image], concurrency: int, swap: bool, transport: str, window: Window
) -> None:
    options = {"transport": transport}
    judge = flexjudge.Judge(
        "canned", backend="openai", base_url=url, max_concurrency=concurrency, backend_options=options
    )
    # The capability probe and `concurrency` connections, as the floor warms its own: a training loop
    # reuses its judge, so every group after the first finds them open.
    await agroup_rewards(PROMPT, images, judge, swap=swap)
    fresh = [im.copy() for im in images]  # new pixels objects, same content: the encode memo is by content
    for im, k in zip(fresh, range(G), strict=True):
        im.putpixel((0, 0), (k, k, k + 1))  # distinct from the warm-up's, so nothing is pre-encoded
    window.start()
    result = await agroup_rewards(PROMPT, fresh, judge, swap=swap)
    window.stop()
    await judge.aclose()
    if result.failures or len(result.judgments) != G * (G - 1) // 2:
        raise SystemExit(f"the group did not complete: {result.failures[:3]}")


class _Timed:
    """Best wall time, and client and server CPU per call in the best-CPU repeat, of one client."""

    def __init__(self) -> None:
        self.wall = math.inf
        self.cpu = math.inf
        self.server_cpu = math.inf

    def run(self, window: Window, calls: int, timed: Any) -> None:
        asyncio.run(timed)
        self.wall = min(self.wall, window.wall)
        if window.cpu / calls < self.cpu:
            self.cpu, self.server_cpu = window.cpu / calls, window.server_cpu / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--transport", choices=["auto", "aiohttp", "httpx"], default="auto")
    ap.add_argument("--server", choices=["light", "uvicorn"], default="light")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    latency = args.latency_ms / 1000
    server, port = spawn_server(light_serve if args.server == "light" else serve_with_latency, latency)
    url = f"http://127.0.0.1:{port}/v1"
    images = _images()
    pairs = G * (G - 1) // 2
    rows = []
    try:
        asyncio.run(_bare(url, images, 8, 8))
        for concurrency, swap in ((8, False), (36, False), (8, True), (72, True)):
            calls = pairs * (2 if swap else 1)
            ideal = math.ceil(calls / concurrency) * latency
            floor, bare, ours = _Timed(), _Timed(), _Timed()
            for _ in range(args.repeat):  # interleaved
                window = Window(server.pid)
                floor.run(window, calls, _floor(url, images, calls, concurrency, window))
                bare.run(window, calls, _bare(url, images, calls, concurrency, window))
                ours.run(window, calls, _flexjudge(url, images, concurrency, swap, args.transport, window))
            rows.append((concurrency, calls, ideal, floor, bare, ours))
    finally:
        server.terminate()
    table = [
        "| concurrency | calls | ideal ms | floor ms | bare client ms | flexjudge ms | floor / ideal "
        "| flexjudge / ideal | flexjudge / bare | CPU ms/call: floor, bare, flexjudge, server |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    table += [
        f"| {c} | {n} | {i * 1000:.0f} | {f.wall * 1000:.0f} | {b.wall * 1000:.0f} | {o.wall * 1000:.0f} "
        f"| {f.wall / i:.2f} | {o.wall / i:.2f} | {o.wall / b.wall:.2f} "
        f"| {f.cpu * 1000:.2f}, {b.cpu * 1000:.2f}, {o.cpu * 1000:.2f}, {o.server_cpu * 1000:.2f} |"
        for c, n, i, f, b, o in rows
    ]
    setup = (
        f"{machine()}; G = {G}, 256x256 images, latency {args.latency_ms:.0f} ms, best of {args.repeat} "
        f"interleaved, flexjudge transport {args.transport}, {args.server} server, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    report("group_reward", setup, table, args.record)


if __name__ == "__main__":
    main()
