#!/usr/bin/env python
"""Local batching: `Judge.abatch` through `BatchingBackend` against the same pairs judged one by one.

For each model and each count of pairs N (`--pairs`), N pairs with N different prompts are judged
- one by one: sequential `await judge.ajudge(...)` on the bare `TransformersBackend` (what `Judge.batch`
  cost before batching: a model batch of 1 per pair), and
- batched: `await judge.abatch(items)` on a `Judge` whose backend is
  `BatchingBackend(TransformersBackend(model, max_batch_size=16), max_batch=16)`.
Both use the judge's own constraint (flex, llguidance, strings bounded at `--max-length`, as random
weights need), greedy decoding, and the same warmed-up backend (compile caches full). The table gives the
wall times, their ratio, the batch sizes the model itself ran (a forward hook on the prefills), and how
many batched outputs are identical to the one-by-one ones (batch padding may move a random model's
near-tied logits).

Models: `tiny` (the tiny random-weight Qwen2.5-VL, ~900-token vocabulary: the forward pass is mostly
Python overhead) and `150k-wide` (a synthetic 150k-token vocabulary, 1024 wide x 4 layers: a
compute-bound forward pass, built as benchmarks/constrained.py builds it).

    python benchmarks/batching.py                                  # tiny, 8 and 16 pairs
    python benchmarks/batching.py --models tiny,150k-wide --pairs 8
    python benchmarks/batching.py --record                         # append to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def _model_path(name: str, scratch: Path) -> str:
    if name == "tiny":
        return "tiny-random"
    from constrained import MODELS, _synthetic_tokenizer  # the same wide model as that benchmark

    from flexjudge.backends.tiny import build_tiny_model

    vocab, shape = MODELS[name]
    tokenizer = _synthetic_tokenizer() if vocab == "150k" else None
    return str(build_tiny_model(scratch / name, tokenizer=tokenizer, text_overrides=shape))


async def _measure(
    model: str, counts: list[int], repeat: int, max_length: int, device: str, batched_only: bool = False
) -> list[dict[str, Any]]:
    from PIL import Image

    from flexjudge.backends.transformers import TransformersBackend
    from flexjudge.batching import BatchingBackend
    from flexjudge.judging import Judge

    biggest = max(counts)
    backend = TransformersBackend(model, max_batch_size=biggest, device=device)
    prefills: list[int] = []

    def seen(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if kwargs["input_ids"].shape[1] > 1:  # a prefill, not a one-token decode step
            prefills.append(int(kwargs["input_ids"].shape[0]))

    backend._model.register_forward_pre_hook(seen, with_kwargs=True)
    batcher = BatchingBackend(backend, max_batch=biggest)
    alone = Judge(backend=backend, max_string_length=max_length)
    batched = Judge(backend=batcher, max_string_length=max_length)
    images = [Image.new("RGB", (64, 48), (200, 40, 40)), Image.new("RGB", (48, 64), "teal")]
    start = time.perf_counter()
    await alone.ajudge("warm-up", images)  # compile, token tables, first-call costs
    warm_s = time.perf_counter() - start
    print(f"  warm-up: {warm_s:.1f}s", file=sys.stderr)
    rows = []
    for count in counts:
        items = [(f"a red fox, picture {k}", images) for k in range(count)]
        one_by_one, together, batches = [], [], []
        identical = 0
        for _ in range(repeat):  # interleaved, so drift in the machine's load hits both alike
            start = time.perf_counter()
            sequential = []
            for prompt, pair in items if not batched_only else []:
                sequential.append(await alone.ajudge(prompt, pair))
                print(
                    f"    one by one: {len(sequential)}/{count}, {time.perf_counter() - start:.1f}s",
                    file=sys.stderr,
                )
            one_by_one.append(time.perf_counter() - start)
            prefills.clear()
            start = time.perf_counter()
            results = await batched.abatch(items)
            together.append(time.perf_counter() - start)
            batches = list(prefills)
            identical = sum(
                a.meta.raw_text == b.meta.raw_text for a, b in zip(sequential, results, strict=True)
            )
        rows.append(
            {
                "pairs": count,
                "one_by_one_s": statistics.median(one_by_one) if not batched_only else float("nan"),
                "batched_s": statistics.median(together),
                "model_batches": batches,
                "identical": identical,
                "warm_up_s": warm_s,
            }
        )
        print(f"  {count} pairs: {rows[-1]}", file=sys.stderr)
    await backend.aclose()
    return rows


def _table(results: dict[str, list[dict[str, Any]]]) -> str:
    head = [
        "model",
        "pairs",
        "one by one s",
        "batched s",
        "one by one / batched",
        "model batches",
        "same text",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, rows in results.items():
        for r in rows:
            cells = [
                model,
                str(r["pairs"]),
                f"{r['one_by_one_s']:.2f}",
                f"{r['batched_s']:.2f}",
                f"{r['one_by_one_s'] / r['batched_s']:.2f}x",
                "+".join(str(b) for b in r["model_batches"]),
                f"{r['identical']}/{r['pairs']}" if r["one_by_one_s"] == r["one_by_one_s"] else "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="tiny", help="comma-separated: tiny, 150k-wide")
    parser.add_argument("--pairs", default="8,16", help="comma-separated counts of pairs")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=8, help="maxLength of every string")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batched-only", action="store_true", help="skip the one-by-one runs (slow models)")
    parser.add_argument("--record", nargs="?", const=str(ROOT / "benchmarks" / "RESULTS.md"), default=None)
    args = parser.parse_args()
    counts = [int(n) for n in args.pairs.split(",")]
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["FLEXJUDGE_CACHE_DIR"] = str(Path(scratch) / "cache")
        for name in args.models.split(","):
            start = time.perf_counter()
            model = _model_path(name, Path(scratch))
            print(f"{name}: model ready in {time.perf_counter() - start:.1f}s", file=sys.stderr)
            measured = _measure(model, counts, args.repeat, args.max_length, args.device, args.batched_only)
            results[name] = asyncio.run(measured)
    import torch

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.platform()}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    versions = f"Python {platform.python_version()}; torch {torch.__version__}; device {args.device}"
    settings = f"flex, llguidance, greedy, max_string_length {args.max_length}, median of {args.repeat}"
    section = (
        f"## batching ({stamp})\n\n{machine}; load average at the end {load}\n{versions}\n{settings}\n\n"
        f"{_table(results)}\n"
    )
    print(section)
    if args.record:
        with open(args.record, "a", encoding="utf-8") as out:
            out.write("\n" + section)


if __name__ == "__main__":
    main()
