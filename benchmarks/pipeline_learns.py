#!/usr/bin/env python
"""The training pipeline learns (issue 11, point 7): distil, SFT, DPO, each measured by `flexjudge eval`.

The task (`_colour_task`): the prompt names one of six colours, the two candidates are noisy images of two
different colours, the one showing the named colour wins (chance 50%). A rule teacher (`flexjudge serve`'s
app over `ColourTeacher`, in its own process on 127.0.0.1) reads the colours from the pixels it is sent and
writes short, correct flex traces. Then the documented commands run as subprocesses, as a user runs them:

    flexjudge distill -> flexjudge sft-data -> python training/sft.py -> flexjudge eval
    -> flexjudge dpo-pairs (from the SFT model) -> python training/dpo.py -> flexjudge eval

on a small Qwen2.5-VL built here (`build_tiny_model`, its language model widened by `--hidden` and
`--layers`), full finetuning on the CPU. The untrained model is evaluated too (step 0). Every eval judges
the same `--test` held-out pairs, one candidate order each drawn from the seed, under the flex constraint.
Accuracy is `flexjudge eval --json`'s (failed runs and tie verdicts dropped, bootstrap 95% interval);
"right of all" also counts every failed run as wrong.

    python benchmarks/pipeline_learns.py [--record]
    python benchmarks/pipeline_learns.py --smoke --work DIR        # the smallest scale, every stage
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _colour_task import serve_teacher, write_pairs
from _machine import machine
from openai_overhead import spawn_server

from flexjudge.backends.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stage:
    name: str
    wall_s: float
    cpu_s: float


@dataclass
class Run:
    args: argparse.Namespace
    work: Path
    stages: list[Stage] = field(default_factory=list)
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "FLEXJUDGE_BASE_URL"}
        env.update(
            PYTHONPATH=str(ROOT),
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            FLEXJUDGE_CACHE_DIR=str(self.work / "cache"),
            TOKENIZERS_PARALLELISM="false",
        )
        return env

    def command(self, stage: str, argv: list[str], ok: tuple[int, ...] = (0,)) -> str:
        """Run one documented command; record its wall time and its CPU time (children's rusage). `ok`: the
        exit statuses that are a result, not a failure of the benchmark."""
        print(f"[{stage}] {' '.join(argv)}", file=sys.stderr, flush=True)
        before = _children_cpu()
        started = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, env=self.env(), cwd=ROOT, check=False)
        wall = time.perf_counter() - started
        if result.returncode not in ok:
            output = f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
            raise SystemExit(f"{stage} failed (exit {result.returncode}):\n{output}")
        self.stages.append(Stage(stage, wall, _children_cpu() - before))
        return result.stdout

    def evaluate(self, stage: str, model: Path) -> None:
        out = self.work / f"eval-{stage.replace(' ', '-')}.jsonl"
        argv = [*FLEXJUDGE, "eval", str(self.work / "test.jsonl"), "--model", str(model), "--out", str(out)]
        argv += ["--no-consistency", "--seed", str(self.args.seed), "--concurrency", "8", "--device", "cpu"]
        argv += ["--max-new-tokens", str(self.args.max_new_tokens), "--no-progress", "--json"]
        # Exit 1 with every run failed is a result too (an untrained model writes no complete judgment);
        # eval prints the summary before it exits.
        summary = json.loads(self.command(f"eval {stage}", argv, ok=(0, 1)))
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        summary["right_of_all"] = sum(_right(row) for row in rows) / len(rows)
        summary["rows"] = len(rows)
        summary["failed"] = sum(row["primary"]["status"] != "ok" for row in rows) / len(rows)
        self.evals[stage] = summary


FLEXJUDGE = [str(Path(sys.executable).parent / "flexjudge")]
PYTHON = [sys.executable]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _right(row: dict[str, Any]) -> bool:
    primary = row["primary"]
    return bool(primary["status"] == "ok" and primary["winner"] == row["label"])


def training_flags(args: argparse.Namespace, *, lr: float, epochs: float) -> list[str]:
    flags = {
        "use_cpu": "true",
        "per_device_train_batch_size": str(args.batch),
        "gradient_accumulation_steps": "1",
        "learning_rate": str(lr),
        "warmup_ratio": "0.05",
        "num_train_epochs": str(epochs),
        "logging_steps": "10",
        "save_steps": "100000",  # the final model is what the next stage reads
        "seed": str(args.seed),
    }
    if args.max_steps is not None:
        flags["max_steps"] = str(args.max_steps)
    return [arg for key, value in flags.items() for arg in ("--set", f"{key}={value}")]


def pipeline(run: Run) -> None:
    args, work = run.args, run.work
    started = time.perf_counter()
    write_pairs(work, args.train, seed=args.seed, size=args.size, name="train")
    write_pairs(work, args.dpo, seed=args.seed + 1, size=args.size, name="dpo")
    write_pairs(work, args.test, seed=args.seed + 2, size=args.size, name="test")
    overrides = {
        "hidden_size": args.hidden,
        "intermediate_size": 2 * args.hidden,
        "num_hidden_layers": args.layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        # sum(mrope_section) == head_dim / 2
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope(args)},
    }
    base = build_tiny_model(work / "base", seed=args.seed, text_overrides=overrides)
    run.stages.append(Stage("data and model", time.perf_counter() - started, time.process_time()))

    server, port = spawn_server(serve_teacher)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        _wait_until_serving(url)
        argv = [*FLEXJUDGE, "distill", "--base-url", url, "--model", "colour-teacher"]
        argv += ["--data", str(work / "train.jsonl"), "--out", str(work / "traces.jsonl"), "--both-orders"]
        argv += ["--concurrency", "16", "--no-progress", "--json"]
        run.command("distill", argv)
    finally:
        server.terminate()
    run.command("validate", [*FLEXJUDGE, "validate", str(work / "traces.jsonl")])
    traces, sft_data = str(work / "traces.jsonl"), str(work / "sft-data")
    run.command("sft-data", [*FLEXJUDGE, "sft-data", traces, "--out", sft_data])

    run.evaluate("step 0", base)
    sft = work / "runs" / "sft"
    argv = [*PYTHON, "training/sft.py", "--model", str(base), "--data", str(work / "sft-data")]
    argv += ["--output-dir", str(sft), *training_flags(args, lr=args.sft_lr, epochs=args.sft_epochs)]
    run.command("sft", argv)
    run.evaluate("after SFT", sft)

    argv = [*FLEXJUDGE, "dpo-pairs", "--data", str(work / "dpo.jsonl"), "--model", str(sft)]
    argv += ["--out", str(work / "dpo-pairs"), "--samples", "2", "--temperature", "0.7"]
    argv += ["--max-new-tokens", str(args.max_new_tokens), "--seed", str(args.seed)]
    if args.smoke:  # two SFT steps teach nothing: the flag for random-weight models keeps strings short
        argv += ["--max-string-length", "1", "--max-new-tokens", "1024"]
    run.command("dpo-pairs", argv)
    dpo = work / "runs" / "dpo"
    argv = [*PYTHON, "training/dpo.py", "--model", str(sft), "--data", str(work / "dpo-pairs")]
    argv += ["--output-dir", str(dpo), *training_flags(args, lr=args.dpo_lr, epochs=args.dpo_epochs)]
    run.command("dpo", argv)
    run.evaluate("after DPO", dpo)


def _wait_until_serving(url: str, timeout_s: float = 300) -> None:
    """`spawn_server` waits 20 s for the port; a loaded machine can take longer to import the server."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _mrope(args: argparse.Namespace) -> list[int]:
    half = args.hidden // 4 // 2  # 4 heads
    return [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]


def _ci(summary: dict[str, Any], metric: str) -> str:
    value, ci = summary.get(metric), summary.get(f"{metric}_ci")
    if value is None:
        return "n/a"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def table(run: Run) -> list[str]:
    lines = ["| model | accuracy [95% CI] | right of all | failed runs | n |", "|---|---:|---:|---:|---:|"]
    for stage, summary in run.evals.items():
        lines.append(
            f"| {stage} | {_ci(summary, 'accuracy')} | {summary['right_of_all']:.3f} | "
            f"{summary['failed']:.3f} | {summary['rows']} |"
        )
    lines += ["", "| stage | wall s | CPU s |", "|---|---:|---:|"]
    lines += [f"| {s.name} | {s.wall_s:,.0f} | {s.cpu_s:,.0f} |" for s in run.stages]
    total = sum(s.wall_s for s in run.stages)
    lines.append(f"| all | {total:,.0f} | {sum(s.cpu_s for s in run.stages):,.0f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--train", type=int, default=300, help="Pairs distilled (both orders) for SFT.")
    ap.add_argument("--dpo", type=int, default=100, help="Pairs the SFT model samples for DPO.")
    ap.add_argument("--test", type=int, default=200, help="Held-out pairs every eval judges.")
    ap.add_argument("--size", type=int, default=56, help="Image side in pixels (56: 4 image tokens).")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--sft-epochs", type=float, default=2)
    ap.add_argument("--dpo-lr", type=float, default=1e-5)
    ap.add_argument("--dpo-epochs", type=float, default=1)
    ap.add_argument("--max-steps", type=int, default=None, help="Cap the optimizer steps of SFT and DPO.")
    ap.add_argument("--max-new-tokens", type=int, default=640, help="Judgment budget (a trace is ~510).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="The smallest scale: every stage, nothing learnt.")
    ap.add_argument("--work", type=Path, default=None, help="Keep the run's files here (else a temp dir).")
    ap.add_argument("--record", nargs="?", const=str(Path(__file__).parent / "RESULTS.md"), default=None)
    args = ap.parse_args()
    if args.smoke:
        args.train, args.dpo, args.test, args.hidden, args.layers, args.max_steps = 4, 3, 2, 64, 2, 2
        args.max_new_tokens = 64
    command = "python benchmarks/pipeline_learns.py " + " ".join(sys.argv[1:])
    work = args.work or Path(tempfile.mkdtemp(prefix="pipeline-learns-"))
    work.mkdir(parents=True, exist_ok=True)
    run = Run(args, work)
    try:
        pipeline(run)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    setup = (
        f"{machine()}; {args.train} pairs distilled in both orders, {args.dpo} for DPO pairs, {args.test} "
        f"held out; {args.size}px images; Qwen2.5-VL built here (text {args.hidden} wide, {args.layers} "
        f"layers), full finetuning; SFT lr {args.sft_lr} x {args.sft_epochs} epochs, DPO lr {args.dpo_lr} x "
        f"{args.dpo_epochs} epochs, batch {args.batch}; `{command}`"
    )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{stamp}; {setup}\n\n" + "\n".join(table(run)))
    if args.record is not None:
        with Path(args.record).open("a", encoding="utf-8") as fh:
            fh.write(f"\n## pipeline_learns ({stamp})\n\n{setup}\n\n" + "\n".join(table(run)) + "\n")
    print(json.dumps({"evals": run.evals, "stages": [s.__dict__ for s in run.stages]}), file=sys.stderr)


if __name__ == "__main__":
    main()
