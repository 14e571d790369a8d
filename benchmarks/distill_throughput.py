#!/usr/bin/env python
"""`flexjudge distill` against a bare `openai` client, and its memory over many rows (issue 11, point 8).

The server is `flexjudge serve`'s app in its own process over a stand-in model that answers every request
with one fixed, valid flex judgment after `--latency` seconds (`openai_overhead.CannedBackend`; batches of
up to `--concurrency` requests wait once, as a batching model server does).

- rate: `--rows` labelled pairs, each with its own two 256x256 PNG files (distinct pixels, so no cache
  helps either side), at `--concurrency` requests in flight:
  - bare (file bytes): per row, the two files' bytes base64-encoded as data URLs,
    `chat.completions.create` with the strict json_schema response format
    (`openai_overhead.bare_judgment`), `json.loads` of the answer, one JSON line appended and flushed:
    the least a distillation script can do;
  - bare (decoded): the same, but each image opened with PIL and encoded with `to_data_url`, as
    `openai_overhead`'s bare client sends in-memory images;
  - distill: `flexjudge.training.distill.distill` streaming the rows from the JSONL file: media checks,
    the prompt, the constraint, retries, re-asks armed, parsing, `check`, the validator's own reading of
    each line, a flushed and fsynced line per trace, usage totals.
- CPU ms per row (this process, all threads; the server runs in another) is reported beside each rate:
  on a machine that other work shares it is steadier than the rate.
- memory: in a fresh process per size, `--memory` rows (all naming the same two small images) distilled
  with no latency; peak RSS (`resource.getrusage`) per size, and within the run after every tenth of
  its rows, shows whether memory grows with the rows. The server there is a canned chat endpoint in
  plain asyncio (`openai_overhead.light_serve`): only the client's memory is measured, and on a shared machine
  `flexjudge serve`'s CPU a request would make 100,000 rows take an hour.

    python benchmarks/distill_throughput.py --rows 512 --concurrency 64 --latency 0.05 \
        --memory 10000 100000 [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import machine
from openai_overhead import _serve, bare_judgment, light_serve, report, spawn_server
from PIL import Image

from flexjudge.constraints import pair_constraint
from flexjudge.evaluation.data import load_examples
from flexjudge.media import to_data_url
from flexjudge.prompting import PromptSpec, render_prompt
from flexjudge.training.distill import Teacher, distill

PROMPT = "A child in a yellow raincoat feeding ducks at a pond, storybook illustration"


def write_rows(folder: Path, rows: int, *, distinct: bool, size: int) -> Path:
    """`rows` labelled pairs in the flexjudge layout; with `distinct`, two image files of its own per row."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "data.jsonl").open("w") as fh:
        for k in range(rows if distinct else 1):
            for side in (0, 1):
                colour = (k % 256, (k // 256) % 256, 40 + 150 * side)
                Image.new("RGB", (size, size), colour).save(folder / f"{k}-{side}.png")
        for k in range(rows):
            n = k if distinct else 0
            row = {"id": f"r{k}", "prompt": PROMPT, "candidates": [f"{n}-0.png", f"{n}-1.png"], "label": 1}
            fh.write(json.dumps(row) + "\n")
    return folder / "data.jsonl"


async def bare(url: str, data: Path, out: Path, concurrency: int, decoded: bool = False) -> float:
    """The bare client over the same rows; returns the seconds it took."""
    from openai import AsyncOpenAI

    # A long connect timeout, and the client's default retries: on a loaded machine the default 5 s
    # connect can pass before accept, and the server may close an idle kept-alive connection just as a
    # request goes out on it (a reset the client's own retry absorbs; it costs nothing otherwise).
    client = AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=2, timeout=120.0)
    text = render_prompt(PromptSpec(), PROMPT)
    schema = pair_constraint("image", "flex")
    rows = iter(data.read_text().splitlines())

    def url_of(path: Path) -> str:
        if decoded:
            with Image.open(path) as image:
                return to_data_url(image.convert("RGB"))
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()

    started = time.perf_counter()
    with out.open("w") as fh:

        async def worker() -> None:
            for line in rows:
                row = json.loads(line)
                urls = [url_of(data.parent / c) for c in row["candidates"]]
                answer = await bare_judgment(client, urls, text, schema)
                fh.write(json.dumps({"id": row["id"], "output": answer}) + "\n")
                fh.flush()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


async def distilled(url: str, data: Path, out: Path, concurrency: int) -> float:
    out.unlink(missing_ok=True)
    out.with_name(f"{out.stem}.failures.jsonl").unlink(missing_ok=True)
    teacher = Teacher(base_url=url, model="canned")
    started = time.perf_counter()
    totals = await distill(load_examples(data), teacher, out, concurrency=concurrency, progress=False)
    elapsed = time.perf_counter() - started
    assert totals.failed == 0 and totals.unfinished == 0, totals.as_dict()
    return elapsed


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_child(url: str, rows: int, concurrency: int, folder: str, queue: Any) -> None:
    data = write_rows(Path(folder), rows, distinct=False, size=16)
    marks: list[tuple[int, float]] = []

    def counted(examples: Any) -> Any:  # peak RSS after every tenth of the rows has been read
        for k, example in enumerate(examples, 1):
            if k % max(1, rows // 10) == 0:
                marks.append((k, _rss_mib()))
                print(f"  {rows:,} rows: {k:,} read, peak RSS {marks[-1][1]:,.0f} MiB", flush=True)
            yield example

    out = Path(folder) / "traces.jsonl"
    teacher = Teacher(base_url=url, model="canned")
    started = time.perf_counter()
    totals = asyncio.run(
        distill(counted(load_examples(data)), teacher, out, concurrency=concurrency, progress=False)
    )
    elapsed = time.perf_counter() - started
    assert totals.written == rows, totals.as_dict()
    queue.put((_rss_mib(), rows / elapsed, marks))


def memory(url: str, rows: int, concurrency: int) -> tuple[float, float, list[tuple[int, float]]]:
    """Peak RSS (MiB), rows/s and the peak RSS after each tenth of the rows, of a fresh process
    distilling `rows` rows."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    with tempfile.TemporaryDirectory() as folder:
        child = context.Process(target=_memory_child, args=(url, rows, concurrency, folder, queue))
        child.start()
        peak, rate, marks = queue.get()
        child.join()
    return peak, rate, marks


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rates(url: str, rows: int, concurrency: int, repeat: int) -> list[str]:
    """The rate table: every side over the same rows, interleaved, best of `repeat`."""
    with tempfile.TemporaryDirectory() as folder:
        data = write_rows(Path(folder), rows, distinct=True, size=256)
        out = Path(folder) / "out.jsonl"
        sides = {
            "bare openai client (file bytes)": lambda c: bare(url, data, out, c),
            "bare openai client (decoded)": lambda c: bare(url, data, out, c, decoded=True),
            "flexjudge distill": lambda c: distilled(url, data, out, c),
        }
        for side in sides.values():  # warm every path up
            asyncio.run(side(8))
        best: dict[str, tuple[float, float]] = {}
        for _ in range(repeat):  # interleaved: every side sees the same machine load
            for name, side in sides.items():
                cpu = _cpu_s()
                elapsed = asyncio.run(side(concurrency))
                cpu = _cpu_s() - cpu
                if name not in best or elapsed < best[name][0]:
                    best[name] = (elapsed, cpu)
    first = rows / next(iter(best.values()))[0]
    table = ["| client | rows/s | vs bare (file bytes) | CPU ms/row |", "|---|---:|---:|---:|"]
    for name, (elapsed, cpu) in best.items():
        rate = rows / elapsed
        table.append(f"| {name} | {rate:,.0f} | {rate / first:.3f} | {1000 * cpu / rows:.1f} |")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--memory", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--no-rate", action="store_true", help="Measure memory only.")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    table: list[str] = []
    setup = [machine()]
    if not args.no_rate:
        server, port = spawn_server(_serve, args.latency, args.concurrency)
        try:
            table += rates(f"http://127.0.0.1:{port}/v1", args.rows, args.concurrency, args.repeat)
        finally:
            server.terminate()
        setup.append(
            f"rate: {args.rows} rows at concurrency {args.concurrency}, {args.latency * 1000:.0f} ms server "
            f"latency, best of {args.repeat}"
        )
    if args.memory:
        server, port = spawn_server(light_serve)
        try:
            table += ["", "| rows | peak RSS (MiB) | after each tenth of the rows (MiB) | rows/s |"]
            table.append("|---:|---:|---|---:|")
            for rows in args.memory:
                peak, rate, marks = memory(f"http://127.0.0.1:{port}/v1", rows, args.concurrency)
                curve = " ".join(f"{rss:,.0f}" for _, rss in marks)
                table.append(f"| {rows:,} | {peak:,.0f} | {curve} | {rate:,.0f} |")
        finally:
            server.terminate()
        setup.append(
            f"memory: a canned asyncio server, no latency, concurrency {args.concurrency}, "
            "one process per size"
        )
    report("distill_throughput", "; ".join(setup), table, args.record)


if __name__ == "__main__":
    main()
