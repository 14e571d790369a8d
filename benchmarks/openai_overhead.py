#!/usr/bin/env python
"""What the SDK adds on top of the bare `openai` client, against the same local server.

The server (`flexjudge serve`'s app, in its own process) answers every request with one fixed, valid
flex judgment at once: a stand-in model, so that only client-side cost shows. Both sides send the same
two 256x256 images as PNG data URLs with the same strict `json_schema` response format.

- bare: encode the images, `AsyncOpenAI.chat.completions.create`, `json.loads` the content;
- sdk: `Judge(backend="openai").ajudge(prompt, [image_1, image_2])`: media checks, prompt rendering,
  the constraint, retries, parsing into a typed Judgment with metadata.

    python benchmarks/openai_overhead.py --requests 256 --concurrency 1 8 64 [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _machine import machine
from PIL import Image

import flexjudge
from flexjudge.backends._probe import PROBE_TOKENS
from flexjudge.backends.base import Generation, Request, Usage
from flexjudge.constraints import pair_constraint
from flexjudge.media import to_data_url
from flexjudge.prompting import PromptSpec, render_prompt

CANNED = (Path(__file__).parent.parent / "examples" / "outputs" / "flex_image.json").read_text(
    encoding="utf-8"
)


class CannedBackend:
    """A stand-in model that answers every request with the same valid judgment, after `latency_s`
    (each batch of requests waits once, as a batching model server does)."""

    name = "canned"
    model = "canned"

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s

    async def generate(self, requests: list[Request]) -> list[Generation]:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return [self._answer(r) for r in requests]

    def _answer(self, request: Request) -> Generation:
        # The SDK's capability probe asks for {"ok": <bool>}; a server that enforces schemas gives it.
        text = '{"ok": true}' if request.max_new_tokens == PROBE_TOKENS else CANNED
        return Generation(text, "stop", True, Usage(100, 800), model="canned")

    async def aclose(self) -> None:
        return None


def _serve(port: int, latency_s: float = 0.0, max_batch: int | None = None) -> None:
    import uvicorn

    from flexjudge.serve import create_app

    app = create_app(CannedBackend(latency_s), model_name="canned", window_s=0.0, max_batch=max_batch)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn_server(target: Any, *args: Any) -> tuple[multiprocessing.process.BaseProcess, int]:
    """Start `target(port, *args)` in a spawned process on a free port; return once it accepts. A SIGTERM
    to this process then exits it as Python exits (daemon children stopped, `finally` blocks run),
    rather than killing it on the spot and leaving the server running."""
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    port = _free_port()
    server = multiprocessing.get_context("spawn").Process(target=target, args=(port, *args), daemon=True)
    server.start()
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return server, port


_PROBE_BODY_MAX = 1 << 16


def light_serve(port: int, latency_s: float = 0.0) -> None:
    """A canned OpenAI-compatible chat endpoint (HTTP/1.1 keep-alive, plain asyncio): every request gets
    the canned flex judgment (the capability probe its `{"ok": true}`), with usage, after `latency_s`.
    A tenth of uvicorn's CPU a request or less: on a machine the client shares, the latency it adds is
    the one asked for, not its own parsing."""

    def answer(content: str) -> bytes:
        body = json.dumps(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": "canned",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 100, "completion_tokens": 800, "total_tokens": 900},
            }
        ).encode()
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        return head.encode() + body

    answers = {True: answer('{"ok": true}'), False: answer(CANNED)}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                raw = await reader.readexactly(length)
                # Only a small body can be the probe: a judgment's images are not parsed (on a machine
                # the client shares, parsing megabytes of data URLs would be the server's cost, not its).
                body = json.loads(raw) if 0 < length < _PROBE_BODY_MAX else {}
                if latency_s:
                    await asyncio.sleep(latency_s)
                writer.write(answers[body.get("max_tokens") == PROBE_TOKENS])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, limit=1 << 24)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def report(name: str, setup: str, table: list[str], record: bool) -> None:
    """Print the table under its setup line; with `record`, append it to benchmarks/RESULTS.md."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{stamp}; {setup}\n")
    print("\n".join(table))
    if record:
        with (Path(__file__).parent / "RESULTS.md").open("a", encoding="utf-8") as fh:
            fh.write(f"\n## {name} ({stamp})\n\n{setup}\n\n" + "\n".join(table) + "\n")


async def bare_judgment(client: Any, urls: list[str], text: str, schema: dict[str, Any]) -> Any:
    """One judgment as a bare `openai` client asks for it: the images' data URLs, the prompt, the strict
    json_schema response format, `json.loads` of the answer."""
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    content.append({"type": "text", "text": text})
    response = await client.chat.completions.create(
        model="canned",
        messages=[{"role": "user", "content": content}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "judgment", "schema": schema, "strict": True},
        },
        max_tokens=4096,
        temperature=0.0,
    )
    return json.loads(response.choices[0].message.content or "")


async def _bare(url: str, images: list[Image.Image], prompt: str, n: int, concurrency: int) -> float:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0)
    text = render_prompt(PromptSpec(), prompt)
    schema = pair_constraint("image", "flex")
    gate = asyncio.Semaphore(concurrency)

    async def one() -> Any:
        async with gate:
            return await bare_judgment(client, [to_data_url(im) for im in images], text, schema)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


async def _sdk(url: str, images: list[Image.Image], prompt: str, n: int, concurrency: int) -> float:
    judge = flexjudge.Judge("canned", backend="openai", base_url=url, max_concurrency=concurrency)
    started = time.perf_counter()
    await asyncio.gather(*(judge.ajudge(prompt, images) for _ in range(n)))
    elapsed = time.perf_counter() - started
    await judge.aclose()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    server, port = spawn_server(_serve)
    url = f"http://127.0.0.1:{port}/v1"
    images = [Image.new("RGB", (256, 256), (200, 40, 40)), Image.new("RGB", (256, 256), (40, 40, 200))]
    prompt = "A child in a yellow raincoat feeding ducks at a pond, storybook illustration"
    rows = []
    try:
        asyncio.run(_bare(url, images, prompt, 8, 8))  # warm both paths up
        asyncio.run(_sdk(url, images, prompt, 8, 8))
        for c in args.concurrency:
            bare = min(asyncio.run(_bare(url, images, prompt, args.requests, c)) for _ in range(args.repeat))
            sdk = min(asyncio.run(_sdk(url, images, prompt, args.requests, c)) for _ in range(args.repeat))
            rows.append((c, args.requests / bare, args.requests / sdk, sdk / bare))
    finally:
        server.terminate()
    table = [
        "| concurrency | bare client req/s | SDK req/s | SDK time / bare time |",
        "|---:|---:|---:|---:|",
    ]
    table += [f"| {c} | {b:,.0f} | {s:,.0f} | {r:.3f} |" for c, b, s, r in rows]
    report(
        "openai_overhead",
        f"{machine()}; {args.requests} requests per point, best of {args.repeat}",
        table,
        args.record,
    )


if __name__ == "__main__":
    main()
