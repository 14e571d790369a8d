#!/usr/bin/env python
"""GRPO of a diffusion generator: the share of a training step spent waiting for rewards, with the reward
batches judged while the next batch samples (`overlap_rewards: true`, the default) and without (each
batch's rewards awaited before the next samples).

The generator is tests/tiny_flow.py's tiny FLUX pipeline, sampled at a size and step count chosen so that
sampling one reward batch takes about as long as judging it (the table shows both, measured from the
trainer's events): that is where the overlap matters most, and where a serial trainer idles half its time.
The rewards come from a real reward server (`flexjudge.serve.create_app`: POST /v1/rewards) in its own
process, in front of the rule judge of tests/tiny_flow.py (the redder image wins) with a fixed latency
per judge call (default 50 ms; the server batches up to 8 pairs into one call, so a group of 4, 6 pairs,
is one call). Each step samples several reward batches (one group each), then trains.

The machine is shared, so the figures are CPU-independent ratios: per step, reward_wait_s / step_s (from
the step's metrics), and the step time with the overlap over the step time without; the two modes run
interleaved (each first in turn), `--repeat` times each, and the first step of every run (warm-up) is
left out.

    python benchmarks/grpo_reward_wait.py [--latency-ms 50] [--repeat 10] [--steps 4] [--record]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The repository (training, tests) and benchmarks/, also in the spawned server process.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine
from openai_overhead import report, spawn_server

G = 4
BATCHES = 4  # reward batches (of one group) per step


def serve_slow_rule_judge(port: int, latency_s: float) -> None:
    """The reward server over the redness rule judge, each judge call held `latency_s` first."""
    import asyncio

    import uvicorn

    from flexjudge.serve import create_app
    from tests.tiny_flow import RednessJudge

    class Slow(RednessJudge):
        async def generate(self, requests: list[Any]) -> list[Any]:
            await asyncio.sleep(latency_s)
            return await super().generate(requests)

    app = create_app(Slow(), model_name="redness-judge")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", lifespan="off")


def _settings(
    args: argparse.Namespace, model: Path, prompts: Path, out: Path, url: str, overlap: bool
) -> Any:
    from training._config import load_settings
    from training._diffusion_config import GrpoDiffusionSettings
    from training.grpo_diffusion import DEFAULT_CONFIG

    overrides = [
        f"group_size={G}", f"prompts_per_step={BATCHES}", "groups_per_reward_batch=1",
        f"num_inference_steps={args.sampling_steps}", f"height={args.size}", f"width={args.size}",
        "max_sequence_length=16", "use_cpu=true", "mixed_precision=fp32", "model_dtype=float32",
        "lora.r=4", "lora.alpha=8", "learning_rate=1e-3", f"train_batch_size={G}",
        "timestep_fraction=0.01", f"max_steps={args.steps}", f"save_steps={args.steps}", "resume=never",
        f"reward.server_url={url}", f"overlap_rewards={str(overlap).lower()}",
    ]  # fmt: skip
    flags = {"model": str(model), "prompts": str(prompts), "output_dir": str(out)}
    return load_settings(GrpoDiffusionSettings, DEFAULT_CONFIG, overrides, flags)  # type: ignore[type-var]


class Mode:
    """One mode's steps: the wait fraction and seconds of each, and the sampling and judging seconds of
    each batch (from the trainer's events)."""

    def __init__(self) -> None:
        self.fractions: list[float] = []
        self.step_s: list[float] = []
        self.sample_s: list[float] = []
        self.judge_s: list[float] = []

    def run(self, settings: Any) -> None:
        from training import grpo_diffusion

        began: dict[tuple[str, int, int], float] = {}

        def on_event(kind: str, step: int, batch: int) -> None:
            now = time.perf_counter()
            if step == 0:
                return
            what, edge = kind.split("_")
            if edge == "start":
                began[(what, step, batch)] = now
            else:
                (self.sample_s if what == "sample" else self.judge_s).append(now - began[(what, step, batch)])

        summary = grpo_diffusion.run(settings, on_event=on_event)
        for entry in summary["log"][1:]:  # the first step warms up
            if entry["failed_pairs"]:
                raise SystemExit(f"the judge failed {entry['failed_pairs']} pairs: no measurement")
            self.fractions.append(entry["reward_wait_s"] / entry["step_s"])
            self.step_s.append(entry["step_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--repeat", type=int, default=10, help="Runs of each mode, interleaved.")
    ap.add_argument("--steps", type=int, default=4, help="Training steps per run (the first is warm-up).")
    ap.add_argument("--size", type=int, default=32, help="Image side in pixels.")
    ap.add_argument("--sampling-steps", type=int, default=2)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    from tests.tiny_flow import COLOUR_PROMPTS, build_flux

    server, port = spawn_server(serve_slow_rule_judge, args.latency_ms / 1000)
    url = f"http://127.0.0.1:{port}/v1"
    modes = {True: Mode(), False: Mode()}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            model = build_flux(root / "flux")
            prompts = root / "prompts.txt"
            prompts.write_text("\n".join(COLOUR_PROMPTS) + "\n")
            for k in range(args.repeat):
                for overlap in (True, False) if k % 2 == 0 else (False, True):  # each goes first in turn
                    mode = modes[overlap]
                    mode.run(_settings(args, model, prompts, root / f"run{k}-{overlap}", url, overlap))
    finally:
        server.terminate()
    on, off = modes[True], modes[False]
    ratios = [a / b for a, b in zip(on.step_s, off.step_s, strict=True)]  # paired by run and step
    table = [
        "| rewards | steps | wait / step, mean (min-max) | sample s / batch | judge s / batch | step s |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, mode in (("overlapped (default)", on), ("serial (overlap_rewards: false)", off)):
        f = mode.fractions
        table.append(
            f"| {name} | {len(f)} | {statistics.mean(f):.3f} ({min(f):.3f}-{max(f):.3f}) "
            f"| {statistics.median(mode.sample_s):.3f} | {statistics.median(mode.judge_s):.3f} "
            f"| {statistics.median(mode.step_s):.2f} |"
        )
    table.append("")
    table.append(
        f"Step time overlapped / serial, paired by run and step: median {statistics.median(ratios):.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}). Overlapped, the trainer still waits for each "
        f"step's last batch (training needs every reward), a floor of about judge s / step s; serial, it "
        f"waits for all {BATCHES}. Sampling beside the judging shares the CPU (and the interpreter) with the "
        "reward client's thread: compare the two sample s / batch before reading the step time ratio."
    )
    setup = (
        f"{machine()}; tiny FLUX (tests/tiny_flow.py) at {args.size}x{args.size}, {args.sampling_steps} "
        f"sampling steps, G = {G}, {BATCHES} reward batches of one group per step; reward server in its "
        f"own process, rule judge with {args.latency_ms:.0f} ms per judge call; {args.repeat} runs of each "
        f"mode interleaved, {args.steps} steps each, the first left out; medians in seconds are wall "
        f"clock on a shared machine (load average {os.getloadavg()[0]:.1f}): read the fractions. "
        f"Command: `python benchmarks/grpo_reward_wait.py --latency-ms {args.latency_ms:.0f} "
        f"--repeat {args.repeat} --steps {args.steps} --size {args.size} "
        f"--sampling-steps {args.sampling_steps} --record`"
    )
    report("grpo_reward_wait", setup, table, args.record)


if __name__ == "__main__":
    main()
