#!/usr/bin/env python
"""Constrained decoding cost in the transformers backend, per constraint engine.

Measures, for each engine (each in a fresh process, so "cold" really is cold):
- compile: the first schema in the process (engine tokenizer table + grammar), a second schema on the same
  tokenizer, and the same schema again (cache hit), for the judge's own constraint (`pair_constraint`, flex
  wire format: a grammar with winners that follow the scores on llguidance, JSON Schema elsewhere), then
  the pointwise one (`--max-length N` bounds every string, as random-weight tests need);
- decode: milliseconds per decode step (prefill subtracted; median of `--repeat`) with and without the
  constraint on the same model, batch 1 and 8, sampled (temperature 1, closing bias off, so rows stay inside
  long strings, where masks cost most), and the time the constraint processor took per step.

Models (`--models`): the tiny model with its trained ~900-token tokenizer; the same weights with a synthetic
~150k-token byte-level BPE (Qwen-sized), where compile and mask costs are realistic and the forward pass is
not; `150k-wide`, a compute-bound forward pass on CPU (`--device cuda` runs any of them on a GPU).
"constrained" computes each mask after the forward pass, "overlapped" during it on a worker thread
(`TransformersBackend(overlap_masks=...)`); the runs are interleaved. Every invocation starts with an empty
flexjudge cache, so "cold" is cold; "next process" is a second process compiling the same schema with the
cache the first one left on disk (only outlines-core indexes are kept there).

    python benchmarks/constrained.py                     # tiny and 150k, every installed engine
    python benchmarks/constrained.py --models tiny --quick
    python benchmarks/constrained.py --models 150k-wide --device cuda --engines llguidance --batches 1,16
    python benchmarks/constrained.py --record            # append the table to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent


def _synthetic_tokenizer(n_merges: int = 150_000, seed: int = 0) -> Any:
    """A byte-level BPE with random merges: Qwen-sized, so engine tables and masks cost what they would."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from flexjudge.backends import tiny

    rng = random.Random(seed)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(tiny.SPECIAL_TOKENS)}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    tokens = list(alphabet)
    letters = [c for c in alphabet if c.isalnum()] + ["Ġ"] * 10  # Ġ: the byte-level space
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        a = rng.choice(tokens) if rng.random() < 0.5 else rng.choice(letters)
        b = rng.choice(tokens[-5000:]) if rng.random() < 0.5 else rng.choice(letters)
        if len(a + b) > 12 or a + b in vocab:
            continue
        vocab[a + b] = len(vocab)
        tokens.append(a + b)
        merges.append((a, b))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(tiny.SPECIAL_TOKENS[1:]),
        chat_template=tiny.CHAT_TEMPLATE,
        padding_side="left",
    )


_ROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}  # head_dim 128
MODELS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "tiny": ("tiny", None),
    "150k": ("150k", None),
    "150k-wide": (
        "150k",
        {
            "hidden_size": 1024,
            "intermediate_size": 2816,
            "num_hidden_layers": 4,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "rope_parameters": _ROPE,
        },
    ),
}
MODEL_NOTES = {
    "tiny": "tiny weights, the trained ~900-token vocabulary: the forward pass is mostly Python overhead",
    "150k": "tiny weights, a synthetic 150k-token vocabulary: realistic masks on a near-free forward pass",
    "150k-wide": "150k tokens, 1024 wide x 4 layers: a compute-bound forward pass of about 30 ms on 2 cores",
}


def _requests(schema: dict[str, Any] | None, batch: int, tokens: int) -> list[Any]:
    from PIL import Image

    from flexjudge.backends.base import Constraint, ImagePart, Message, Request, TextPart

    images = (
        ImagePart(Image.new("RGB", (64, 48), (200, 40, 40))),
        ImagePart(Image.new("RGB", (48, 64), "teal")),
    )
    message = Message(
        "user", (TextPart("Prompt: a red fox. Image 1:"), images[0], TextPart("Image 2:"), images[1])
    )
    return [
        Request(
            messages=(message,),
            constraint=Constraint(schema=schema) if schema is not None else None,
            max_new_tokens=tokens,
            temperature=1.0,
            seed=0,
        )
        for _ in range(batch)
    ]


def child(
    engine: str,
    model: str,
    tokens: int,
    repeat: int,
    batches: list[int],
    max_length: int,
    device: str,
    compile_only: bool = False,
    dtype: str | None = None,
) -> dict[str, Any]:
    """One engine in this (fresh) process; returns the measurements."""
    from flexjudge.backends.transformers import TransformersBackend
    from flexjudge.constraints import pair_constraint, point_constraint
    from flexjudge.schema import PointScale

    bound = max_length or None
    pair = pair_constraint("image", "flex", max_string_length=bound)
    point = point_constraint("image", PointScale(), max_string_length=bound)
    start = time.perf_counter()
    backend = TransformersBackend(model, engine=engine, closing_bias=0.0, device=device, dtype=dtype)
    row: dict[str, Any] = {
        "engine": engine,
        "dtype": str(backend.dtype).removeprefix("torch."),
        "vocab": backend._tok.width,
        "init_s": time.perf_counter() - start,
    }
    row["cold_compile_s"] = backend.compile(pair)
    if compile_only:
        return row
    row["second_schema_s"] = backend.compile(point)
    start = time.perf_counter()
    backend.compile(pair)
    row["cached_compile_ms"] = 1000 * (time.perf_counter() - start)
    start = time.perf_counter()
    asyncio.run(backend.generate(_requests(pair, 1, 1)))
    row["first_token_s"] = time.perf_counter() - start
    variants = (("free", None, False), ("constrained", pair, False), ("overlapped", pair, True))
    for batch in batches:
        per_step: dict[str, list[float]] = {label: [] for label, _, _ in variants}
        masks: dict[str, list[float]] = {"mask": [], "wait": [], "overlapped_wait": []}
        for _ in range(repeat):
            for label, schema, overlap in variants:  # interleaved, so drift hits every variant alike
                backend.overlap_masks = overlap
                # A one-token run times the prefill (images included), which is subtracted out.
                start = time.perf_counter()
                asyncio.run(backend.generate(_requests(schema, batch, 1)))
                prefill = time.perf_counter() - start
                start = time.perf_counter()
                generations = asyncio.run(backend.generate(_requests(schema, batch, tokens)))
                wall = time.perf_counter() - start
                steps = max(g.usage.completion_tokens for g in generations if g.usage)
                per_step[label].append(1000 * (wall - prefill) / max(steps - 1, 1))
                extra = generations[0].extra
                if label == "constrained":
                    masks["mask"].append(extra["mask_ms_per_step"])
                    masks["wait"].append(extra["mask_wait_ms_per_step"])
                elif label == "overlapped":
                    masks["overlapped_wait"].append(extra["mask_wait_ms_per_step"])
        for label, values in per_step.items():
            row[f"b{batch}_{label}_ms"] = statistics.median(values)
        for label, values in masks.items():
            row[f"b{batch}_{label}_ms"] = statistics.median(values)
    return row


def _run_child(engine: str, model: Path | str, args: argparse.Namespace) -> dict[str, Any]:
    row = _child_process(engine, model, args, [])
    if "error" not in row:  # a second process, with whatever the first left in the on-disk cache
        again = _child_process(engine, model, args, ["--compile-only"])
        row["next_process_s"] = again.get("cold_compile_s", float("nan"))
    return row


def _child_process(
    engine: str, model: Path | str, args: argparse.Namespace, extra: list[str]
) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", engine, "--model", str(model), *extra]
    command += ["--tokens", str(args.tokens), "--repeat", str(args.repeat), "--batches", args.batches]
    command += ["--max-length", str(args.max_length), "--device", args.device]
    if args.dtype:
        command += ["--dtype", args.dtype]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode < 0:  # outlines-core on bounded strings at 150k tokens: OOM-killed past 23 GB here
        return {"engine": engine, "error": f"killed by signal {-done.returncode} (out of memory?)"}
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip() and "it/s]" not in line]
        return {"engine": engine, "error": lines[-1] if lines else f"exit status {done.returncode}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _table(rows: list[dict[str, Any]], batches: list[int]) -> str:
    head = ["engine", "vocab", "cold compile s", "next process s", "2nd schema s", "cached ms", "1st token s"]
    for b in batches:
        head += [f"b{b} free ms/step", f"b{b} constrained", "×", "overlapped", "×", "mask ms", "wait ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['engine']} | error: {r['error']} |")
            continue
        cells = [r["engine"], f"{r['vocab']:,}", f"{r['cold_compile_s']:.3f}", f"{r['next_process_s']:.3f}"]
        cells.append(f"{r['second_schema_s']:.3f}")
        cells += [f"{r['cached_compile_ms']:.3f}", f"{r['first_token_s']:.3f}"]
        for b in batches:
            free = r[f"b{b}_free_ms"]
            cells.append(f"{free:.2f}")
            for label in ("constrained", "overlapped"):
                cells += [f"{r[f'b{b}_{label}_ms']:.2f}", f"{r[f'b{b}_{label}_ms'] / free:.3f}"]
            waits = f"{r[f'b{b}_wait_ms']:.3f} / {r[f'b{b}_overlapped_wait_ms']:.3f}"
            cells += [f"{r[f'b{b}_mask_ms']:.3f}", waits]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", default="", help="comma-separated; default: every installed engine")
    parser.add_argument(
        "--models", default="tiny,150k", help=f"comma-separated, from: {', '.join(MODELS)} (see above)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--dtype", default=None, help="bfloat16, float16, float32, auto; default: bf16 on a GPU, else float32"
    )
    parser.add_argument("--tokens", type=int, default=128, help="max new tokens per decode run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--max-length", type=int, default=0, help="add maxLength N to every string")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 tokens, one repeat")
    parser.add_argument("--record", nargs="?", const=str(ROOT / "benchmarks" / "RESULTS.md"), default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.repeat = 8, 1
    batches = [int(b) for b in args.batches.split(",")]
    if args.child:
        row = child(
            args.child,
            args.model,
            args.tokens,
            args.repeat,
            batches,
            args.max_length,
            args.device,
            args.compile_only,
            args.dtype,
        )
        print(json.dumps(row))
        return

    from flexjudge.backends.tiny import build_tiny_model, tiny_model_dir
    from flexjudge.backends.transformers import available_engines

    engines = args.engines.split(",") if args.engines else available_engines()
    sections = []
    all_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["FLEXJUDGE_CACHE_DIR"] = str(Path(scratch) / "cache")  # cold means cold; children inherit
        for name in args.models.split(","):
            start = time.perf_counter()
            vocab, shape = MODELS[name]
            if vocab == "tiny" and not shape:
                model: Path | str = tiny_model_dir(0)
            else:
                tokenizer = _synthetic_tokenizer() if vocab == "150k" else None
                model = build_tiny_model(Path(scratch) / name, tokenizer=tokenizer, text_overrides=shape)
            print(f"{name}: model ready in {time.perf_counter() - start:.1f}s", file=sys.stderr)
            rows = []
            for engine in engines:
                rows.append(_run_child(engine, model, args))
                print(f"  {engine}: {json.dumps(rows[-1])}", file=sys.stderr)
            all_rows += rows
            sections.append(f"### model: {name} ({MODEL_NOTES[name]})\n\n{_table(rows, batches)}")
    import torch
    import transformers

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.platform()}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    versions = f"Python {platform.python_version()}; torch {torch.__version__}"
    versions += f"; transformers {transformers.__version__}; device {args.device}"
    dtypes = sorted({row["dtype"] for row in all_rows if "dtype" in row})
    versions += f", dtype {'/'.join(dtypes) or '?'}"
    if args.device == "cuda":
        versions += f" ({torch.cuda.get_device_name()})"
    settings = f"`--tokens {args.tokens} --repeat {args.repeat} --batches {args.batches}"
    settings += f" --max-length {args.max_length}`" if args.max_length else "`"
    settings += " (the judge's constraint: pair_constraint('image', 'flex'), then the pointwise one)"
    report = (
        f"## constrained ({stamp[:10]})\n\n{stamp}; {machine}; {versions}\n\n{settings}\n\n"
        + "\n\n".join(sections)
    )
    print(report)
    if args.record:
        with open(args.record, "a", encoding="utf-8") as out:
            out.write("\n" + report + "\n")


if __name__ == "__main__":
    main()
