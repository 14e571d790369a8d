#!/usr/bin/env python
"""The training pipeline learns (issue 11, point 7): distil, SFT, DPO, each measured by `flexjudge eval`.

The task (`_colour_task`): the prompt names one of six colours, the two candidates are noisy images of two
different colours, the one showing the named colour wins (chance 50%). A rule teacher (`flexjudge serve`'s
app over `ColourTeacher`, in its own process on 127.0.0.1) reads the colours from the pixels it is sent and
writes short, correct flex traces. Then the documented commands run as subprocesses, as a user runs them:

    flexjudge distill -> flexjudge sft-data -> python training/sft.py -> flexjudge eval
    -> flexjudge dpo-pairs (from the SFT model) -> python training/dpo.py -> flexjudge eval

on a small Qwen2.5-VL built here (`build_tiny_model`, its language model set by `--hidden`, `--layers` and
`--heads`, with a tokenizer trained on the task's prompt and trace text, `_colour_tokenizer`), full finetuning
on the CPU, SFT in `--sft-stages` runs in a row (each a fresh optimizer). The teacher's evidence (`--trace`,
`_colour_task.evidence`; default `match`, "A green yellow no") writes the named colour beside each image's and
whether they match, both colours as the prompt's own tokens, so the comparison a score needs is a token the
model is taught and a question whether two adjacent tokens are the same one (with the named colour as another
kind of token, `pairs`, the comparison stayed at chance in some runs). The untrained model is evaluated too
(step 0). Every eval judges the same `--test` held-out pairs, one candidate order each drawn from the seed,
under the flex constraint with every string bounded at `--max-string-length` characters (the longest string
the teacher writes fits; an untrained model never closes an unbounded one). Accuracy is `flexjudge eval
--json`'s (failed runs and tie verdicts dropped, bootstrap 95% interval); "right of all" also counts every
failed run as wrong. After SFT, `decision_probe.py` measures teacher-forced accuracy at the few tokens that
decide a trace (the prompt's colour, each image's colour and mark, the first score, the winner) on the SFT
data's held-out rows: which decision a model has not learnt, in seconds.

    python benchmarks/pipeline_learns.py [--record]
    python benchmarks/pipeline_learns.py --smoke --work DIR        # the smallest scale, every stage
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _colour_task import TRACE_STYLES, serve_teacher, write_pairs
from _colour_tokenizer import colour_tokenizer
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
    decisions: dict[str, Any] = field(default_factory=dict)
    dpo_pairs: dict[str, int] = field(default_factory=dict)
    """`flexjudge dpo-pairs`'s counts (its stats.json)."""
    started: float = 0.0

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
        started = time.perf_counter()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            process = subprocess.Popen(argv, stdout=out, stderr=err, env=self.env(), cwd=ROOT)
            # wait4: this child's own CPU time, which stays right while another stage runs beside it.
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = code = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(), err.read().decode()
        wall = time.perf_counter() - started
        if code not in ok:
            raise SystemExit(f"{stage} failed (exit {code}):\n{stdout[-2000:]}\n{stderr[-4000:]}")
        self.stages.append(Stage(stage, wall, usage.ru_utime + usage.ru_stime))
        return stdout

    def string_bound(self) -> list[str]:
        """Every decode (evals, DPO samples) bounds its strings: the untrained model never closes one."""
        return ["--max-string-length", str(self.args.max_string_length)]

    def probe(self, model: Path) -> None:
        """Teacher-forced accuracy at the decision tokens of the held-out SFT rows (`decision_probe.py`)."""
        argv = [*PYTHON, "benchmarks/decision_probe.py", str(model), str(self.work / "sft-data")]
        self.decisions = json.loads(self.command("probe", argv))

    def evaluate(self, stage: str, model: Path) -> None:
        out = self.work / f"eval-{stage.replace(' ', '-')}.jsonl"
        argv = [*FLEXJUDGE, "eval", str(self.work / "test.jsonl"), "--model", str(model), "--out", str(out)]
        argv += ["--no-consistency", "--seed", str(self.args.seed), "--concurrency", "8", "--device", "cpu"]
        argv += ["--max-new-tokens", str(self.args.max_new_tokens), "--no-progress", "--json"]
        argv += self.string_bound()
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


def _right(row: dict[str, Any]) -> bool:
    primary = row["primary"]
    return bool(primary["status"] == "ok" and primary["winner"] == row["label"])


def training_flags(
    args: argparse.Namespace, *, lr: float, epochs: float, schedule: str, seed: int | None = None
) -> list[str]:
    flags = {
        "lr_scheduler_type": schedule,
        "use_cpu": "true",
        "per_device_train_batch_size": str(args.batch),
        "gradient_accumulation_steps": "1",
        "learning_rate": str(lr),
        "warmup_ratio": "0.05",
        "num_train_epochs": str(epochs),
        "logging_steps": "10",
        "save_steps": "100000",  # the final model is what the next stage reads
        "seed": str(args.seed if seed is None else seed),
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
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.heads,
        # sum(mrope_section) == head_dim / 2
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope(args)},
    }
    tokenizer = colour_tokenizer(args.trace)
    base = build_tiny_model(work / "base", seed=args.seed, tokenizer=tokenizer, text_overrides=overrides)
    run.stages.append(Stage("data and model", time.perf_counter() - started, time.process_time()))
    run.started = started

    server, port = spawn_server(serve_teacher, args.trace)
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

    # The untrained model's eval needs nothing SFT writes: it runs beside SFT, on the machine's other core.
    failed: list[BaseException] = []
    step_0 = threading.Thread(target=_keeping_errors(failed, run.evaluate), args=("step 0", base))
    if not args.stop_after_sft:
        step_0.start()
    sft = work / "runs" / "sft"
    start = base
    for stage in range(1, args.sft_stages + 1):
        # Each stage a fresh optimizer: Adam's second moments keep the first steps' large gradients for
        # ~1,000 steps, which holds back the small late gradient of the one token that compares colours.
        out = sft if stage == args.sft_stages else work / "runs" / f"sft-stage-{stage}"
        argv = [*PYTHON, "training/sft.py", "--model", str(start), "--data", str(work / "sft-data")]
        # A seed of its own, so each stage sees the rows in another order (as the recorded runs did).
        seed = args.seed + stage - 1
        # The last stage decays to 0: a fresh optimizer's first steps at the full rate shake what the model
        # has learnt (a constant last stage lost image 1's colour from 1.000 to 0.839 in one run).
        last = stage == args.sft_stages and args.sft_stages > 1
        schedule = args.sft_last_schedule if last else args.sft_schedule
        flags = training_flags(args, lr=args.sft_lr, epochs=args.sft_epochs, schedule=schedule, seed=seed)
        argv += ["--output-dir", str(out), *flags]
        run.command("sft" if args.sft_stages == 1 else f"sft stage {stage}", argv)
        start = out
    run.probe(sft)
    if args.stop_after_sft:
        return
    step_0.join()
    if failed:
        raise failed[0]
    run.evaluate("after SFT", sft)

    argv = [*FLEXJUDGE, "dpo-pairs", "--data", str(work / "dpo.jsonl"), "--model", str(sft)]
    argv += ["--out", str(work / "dpo-pairs"), "--samples", "2", "--temperature", str(args.dpo_temperature)]
    argv += ["--max-new-tokens", str(args.max_new_tokens), "--seed", str(args.seed), *run.string_bound()]
    if args.smoke:  # two SFT steps teach nothing: a long budget lets one-character strings finish
        argv += ["--max-new-tokens", "1024"]
    run.command("dpo-pairs", argv)
    run.dpo_pairs = json.loads((work / "dpo-pairs" / "stats.json").read_text(encoding="utf-8"))
    if not run.dpo_pairs.get("pairs"):
        return  # a student right in every sample leaves DPO nothing to learn: the table says so
    dpo = work / "runs" / "dpo"
    argv = [*PYTHON, "training/dpo.py", "--model", str(sft), "--data", str(work / "dpo-pairs")]
    flags = training_flags(args, lr=args.dpo_lr, epochs=args.dpo_epochs, schedule="linear")
    argv += ["--output-dir", str(dpo), *flags]
    run.command("dpo", argv)
    run.evaluate("after DPO", dpo)


def _keeping_errors(errors: list[BaseException], target: Any) -> Any:
    """`target`, its exception (SystemExit included, which a thread drops silently) kept in `errors`."""

    def run(*args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:
            errors.append(exc)

    return run


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
    half = args.hidden // args.heads // 2
    return [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]


def _ci(summary: dict[str, Any], metric: str) -> str:
    value, ci = summary.get(metric), summary.get(f"{metric}_ci")
    if value is None:
        return "n/a"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def table(run: Run) -> list[str]:
    lines = [
        "| model | accuracy [95% CI] | first-position win rate [95% CI] | right of all | failed runs | n |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for stage, summary in run.evals.items():
        lines.append(
            f"| {stage} | {_ci(summary, 'accuracy')} | {_ci(summary, 'first_position_win_rate')} | "
            f"{summary['right_of_all']:.3f} | {summary['failed']:.3f} | {summary['rows']} |"
        )
    if run.dpo_pairs:
        counts = ", ".join(f"{name} {count}" for name, count in run.dpo_pairs.items())
        ran = "" if run.dpo_pairs.get("pairs") else ": no pair, so DPO did not run"
        lines += ["", f"`flexjudge dpo-pairs` on the {run.args.dpo} DPO examples: {counts}{ran}."]
    if run.decisions.get("accuracy"):
        lines += [
            "",
            f"Teacher-forced accuracy at the decision tokens after SFT ({run.decisions['rows']} held-out "
            "SFT rows; chance 1/6 for a colour, 1/2 for a score or winner):",
            "",
        ]
        lines += ["| decision | accuracy |", "|---|---:|"]
        lines += [f"| {name} | {value:.3f} |" for name, value in run.decisions["accuracy"].items()]
    lines += ["", "| stage | wall s | CPU s |", "|---|---:|---:|"]
    lines += [f"| {s.name} | {s.wall_s:,.0f} | {s.cpu_s:,.0f} |" for s in run.stages]
    total = time.perf_counter() - run.started  # not the sum: the step 0 eval overlaps SFT
    lines.append(f"| all (elapsed) | {total:,.0f} | {sum(s.cpu_s for s in run.stages):,.0f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--train", type=int, default=600, help="Pairs distilled (both orders) for SFT.")
    ap.add_argument("--dpo", type=int, default=50, help="Pairs the SFT model samples for DPO.")
    ap.add_argument("--test", type=int, default=200, help="Held-out pairs every eval judges.")
    ap.add_argument("--size", type=int, default=56, help="Image side in pixels (56: 4 image tokens).")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--sft-epochs", type=float, default=1, help="Epochs of each SFT stage.")
    ap.add_argument(
        "--sft-stages",
        type=int,
        default=3,
        help="SFT runs in a row, each from the last one's model with a fresh optimizer (see pipeline()).",
    )
    ap.add_argument(
        "--sft-schedule",
        default="constant_with_warmup",
        help="SFT learning-rate schedule (a linear decay stalled the long-range lookups it has to learn).",
    )
    ap.add_argument(
        "--sft-last-schedule",
        default="linear",
        help="The last SFT stage's schedule (of two or more), which settles what the others taught.",
    )
    ap.add_argument(
        "--dpo-temperature",
        type=float,
        default=1.5,
        help="dpo-pairs' sampling temperature: hot, so that a student right at 0.7 still errs on some "
        "examples (at 0.7 the SFT model of seed 0 was right in all 100 samples: no pair)",
    )
    ap.add_argument("--dpo-lr", type=float, default=1e-5)
    ap.add_argument("--dpo-epochs", type=float, default=1)
    ap.add_argument("--max-steps", type=int, default=None, help="Cap the optimizer steps of SFT and DPO.")
    ap.add_argument("--max-new-tokens", type=int, default=400, help="Judgment budget (a trace is ~300).")
    ap.add_argument(
        "--max-string-length",
        type=int,
        default=None,
        help="Bound on every decoded string (default: the longest the teacher writes, 18 characters for "
        "'match' evidence, 'A yellow orange no', else 16, 'A yellow picture').",
    )
    ap.add_argument(
        "--trace",
        choices=TRACE_STYLES,
        default="match",
        help="The teacher's evidence (`_colour_task.evidence`).",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stop-after-sft", action="store_true", help="Tuning: stop after SFT and its probe.")
    ap.add_argument("--smoke", action="store_true", help="The smallest scale: every stage, nothing learnt.")
    ap.add_argument("--work", type=Path, default=None, help="Keep the run's files here (else a temp dir).")
    ap.add_argument("--record", nargs="?", const=str(Path(__file__).parent / "RESULTS.md"), default=None)
    args = ap.parse_args()
    if args.max_string_length is None:
        args.max_string_length = 18 if args.trace == "match" else 16
    if args.smoke:
        args.train, args.dpo, args.test, args.hidden, args.layers, args.max_steps = 4, 3, 2, 64, 2, 2
        args.dpo_temperature = 0.7  # an untrained model's samples vary enough already
        args.max_new_tokens, args.max_string_length = 64, 1
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
        f"layers, {args.heads} heads; the task's own 1,024-token BPE), full finetuning; teacher evidence "
        f"{args.trace!r}; SFT lr {args.sft_lr} ({args.sft_schedule}, the last stage "
        f"{args.sft_last_schedule}) x {args.sft_epochs} epochs x {args.sft_stages} stages, DPO lr "
        f"{args.dpo_lr} x {args.dpo_epochs} epochs on pairs sampled at temperature {args.dpo_temperature}, "
        f"batch {args.batch}; "
        f"decoding: {args.max_new_tokens} new tokens, strings bounded at "
        f"{args.max_string_length} characters; `{command}`"
    )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{stamp}; {setup}\n\n" + "\n".join(table(run)))
    if args.record is not None:
        with Path(args.record).open("a", encoding="utf-8") as fh:
            fh.write(f"\n## pipeline_learns ({stamp})\n\n{setup}\n\n" + "\n".join(table(run)) + "\n")
    print(json.dumps({"evals": run.evals, "stages": [s.__dict__ for s in run.stages]}), file=sys.stderr)


if __name__ == "__main__":
    main()
