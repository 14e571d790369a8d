#!/usr/bin/env python
"""The generator learns: GRPO of a tiny flow-matching pipeline on flexjudge rewards, measured by an evaluator
that is not the reward judge.

Per seed: a tiny SD3 pipeline built here (random transformer and text encoders from tests/tiny_flow.py, a
VAE decoder that can show colours: benchmarks/_colour_flow.py says why), trained by
training/grpo_diffusion.py (Flow-GRPO's SDE sampler, PPO-clip, LoRA) for a few dozen steps on prompts that
name a colour. The rewards come from a real reward server (`flexjudge.serve.create_app`, POST /v1/rewards)
in its own process, in front of a rule judge that writes Flex judgments: the image whose mean colour is
nearer the named colour wins (benchmarks/_colour_distance.py). The trainer sees only the group win rates
and advantages that flexjudge computes from those judgments.

The evaluator measures the colour distance directly from the pixels (the mean pixel's Euclidean distance
from the named colour, 0-255 levels) on held-out prompts (templates never trained on, the same colours),
each with fixed initial noise, sampled with the deterministic sampler (noise level 0): before training
(the base pipeline) and after, the same noise for both. A pair is won when the trained sample is nearer
than the step-0 sample of the same prompt and noise; the win rate has a Wilson 95% interval. The curve is
the held-out mean distance at every saved checkpoint.

    python benchmarks/generator_learns.py [--seeds 0 1 2] [--steps 120] [--lr 3e-3] [--record]
    python benchmarks/generator_learns.py --smoke --json OUT.json      (seconds; the smoke test)
"""

from __future__ import annotations

import argparse
import json
import math
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
from _colour_distance import colour_distance, serve_colour_judge
from _machine import machine
from openai_overhead import spawn_server

TRAIN_TEMPLATES = ("a {} car", "a {} field", "a {} sky", "a {} cat", "the {} wall", "some {} paint")
HELD_OUT_TEMPLATES = ("a {} picture", "a {} flower")
FIGURE = Path(__file__).parent / "figures" / "generator_learns.png"
# LoRA targets: the attention projections of both streams (the image queries and the text keys and values
# the colour word reaches the image through), and the layers that carry the pooled text embedding into the
# image tokens (the text embedder, the adaLN modulations, the output projection). The tiny transformer has
# one block; with LoRA on the image-side attention projections only (the config's default), 40 steps
# learnt a prompt-independent drift towards the colours' average and no colour (measured while tuning).
TARGETS = (
    "to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,add_v_proj,norm_out.linear,proj_out,"
    "text_embedder.linear_1,text_embedder.linear_2,norm1.linear"
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=120, help="GRPO steps per seed.")
    ap.add_argument("--colours", nargs="+", default=["red", "green", "blue", "yellow"])
    ap.add_argument("--group-size", type=int, default=8, help="G, samples per prompt.")
    ap.add_argument("--prompts-per-step", type=int, default=12)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = 2 * rank).")
    ap.add_argument("--targets", default=TARGETS, help="LoRA target modules, comma-separated.")
    ap.add_argument("--sampling-steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=16, help="Image side in pixels.")
    ap.add_argument("--noise-level", type=float, default=0.7)
    ap.add_argument("--clip-range", type=float, default=0.2)
    ap.add_argument("--eval-noises", type=int, default=8, help="Fixed initial noises per held-out prompt.")
    ap.add_argument("--eval-every", type=int, default=20, help="Checkpoint (curve point) every N steps.")
    ap.add_argument("--json", type=Path, help="Write the report here as JSON.")
    ap.add_argument("--figure", type=Path, default=FIGURE, help="The before/after strip (PNG).")
    ap.add_argument("--record", action="store_true", help="Append the section to benchmarks/RESULTS.md.")
    ap.add_argument("--smoke", action="store_true", help="Tiny scale: 2 steps, 1 seed (the smoke test).")
    ap.add_argument(
        "--record-from",
        type=Path,
        nargs="+",
        help="Append the section of saved --json reports (one per seed, run side by side: seeds merged); "
        "no run.",
    )
    return ap


def _settings(args: argparse.Namespace, seed: int, model: Path, prompts: Path, out: Path, url: str) -> Any:
    from training._config import load_settings
    from training._diffusion_config import GrpoDiffusionSettings
    from training.grpo_diffusion import DEFAULT_CONFIG

    per_step = args.prompts_per_step * args.group_size
    overrides = [
        f"group_size={args.group_size}", f"prompts_per_step={args.prompts_per_step}",
        f"groups_per_reward_batch={args.prompts_per_step}", f"train_batch_size={per_step}",
        "gradient_accumulation_steps=1", f"num_inference_steps={args.sampling_steps}",
        f"height={args.size}", f"width={args.size}", "guidance_scale=1.0", "max_sequence_length=16",
        "use_cpu=true", "mixed_precision=fp32", "model_dtype=float32", "gradient_checkpointing=false",
        f"lora.r={args.rank}", f"lora.alpha={2 * args.rank}", f"lora.target_modules=[{args.targets}]",
        f"learning_rate={args.lr}", f"noise_level={args.noise_level}", f"clip_range={args.clip_range}",
        "timestep_fraction=1.0", f"max_steps={args.steps}", f"save_steps={args.eval_every}",
        "save_total_limit=null", "resume=never", f"seed={seed}", f"reward.server_url={url}",
    ]  # fmt: skip
    flags = {"model": str(model), "prompts": str(prompts), "output_dir": str(out)}
    return load_settings(GrpoDiffusionSettings, DEFAULT_CONFIG, overrides, flags)  # type: ignore[type-var]


def held_out(colours: list[str], noises: int) -> list[tuple[str, str]]:
    """(prompt, colour) per evaluated sample: every held-out template and colour, `noises` times each."""
    return [(t.format(c), c) for t in HELD_OUT_TEMPLATES for c in colours for _ in range(noises)]


class Evaluator:
    """Samples the held-out set with fixed initial noise and the deterministic sampler, and measures each
    sample's colour distance from its named colour directly from the pixels."""

    def __init__(self, settings: Any, cases: list[tuple[str, str]], seed: int) -> None:
        self.settings, self.cases, self.seed = settings, cases, seed

    def images(self, checkpoint: Path | None) -> Any:
        """The held-out samples (B, 3, H, W) in [0, 1]: the base pipeline, or with the adapter of
        `checkpoint`."""
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        from training.grpo_diffusion import add_lora, load_pipeline, sample

        pipe, family = load_pipeline(self.settings, torch.device("cpu"))
        transformer = pipe.transformer
        if checkpoint is not None:
            transformer = add_lora(pipe, self.settings)
            result = set_peft_model_state_dict(
                transformer, load_file(str(checkpoint / "adapter_model.safetensors"))
            )
            if result.unexpected_keys:
                raise SystemExit(f"{checkpoint} does not fit the pipeline: no measurement")
        transformer.eval()
        schedule = family.schedule(self.settings.num_inference_steps, torch.device("cpu"))
        # One generator, seeded per evaluation seed: the same initial noise for every checkpoint.
        generator = torch.Generator().manual_seed(10_000 + self.seed)
        prompts = [p for p, _ in self.cases]
        return sample(family, transformer, prompts, schedule, noise_level=0.0, generator=generator).images

    def distances(self, images: Any) -> list[float]:
        return [colour_distance(m, c) for m, (_, c) in zip(mean_pixels(images), self.cases, strict=True)]

    def named_is_nearest(self, images: Any, colours: list[str]) -> float:
        """The share of samples whose mean pixel is nearer the named colour than every other colour trained
        on: whether the samples follow their prompts, not only drift towards the colours' average."""
        hits = [
            min(colours, key=lambda k: colour_distance(m, k)) == c
            for m, (_, c) in zip(mean_pixels(images), self.cases, strict=True)
        ]
        return sum(hits) / len(hits)


def mean_pixels(images: Any) -> list[list[float]]:
    """Each image's mean pixel, 0-255 per channel."""
    means: list[list[float]] = (images.double().mean(dim=(2, 3)) * 255).tolist()
    return means


def wilson(wins: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _process_cpu_s(pid: int) -> float | None:
    """A process's CPU seconds (user + system) from /proc, where there is one."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_seed(args: argparse.Namespace, seed: int, url: str, root: Path) -> dict[str, Any]:
    from _colour_flow import build_colour_sd3

    from training import grpo_diffusion

    wall, cpu = time.perf_counter(), time.process_time()
    model = build_colour_sd3(root / f"model-{seed}", seed=seed, size=args.size)
    prompts = root / f"prompts-{seed}.txt"
    prompts.write_text("\n".join(t.format(c) for t in TRAIN_TEMPLATES for c in args.colours) + "\n")
    out = root / f"run-{seed}"
    settings = _settings(args, seed, model, prompts, out, url)
    cases = held_out(args.colours, args.eval_noises)
    evaluator = Evaluator(settings, cases, seed)
    before_images = evaluator.images(None)
    before = evaluator.distances(before_images)
    train_wall, train_cpu = time.perf_counter(), time.process_time()
    summary = grpo_diffusion.run(settings)
    train_wall, train_cpu = time.perf_counter() - train_wall, time.process_time() - train_cpu
    failed = sum(entry["failed_pairs"] for entry in summary["log"])
    curve = [{"step": 0, "mean_distance": statistics.mean(before)}]
    after_images, after = before_images, before
    for step in range(args.eval_every, args.steps + 1, args.eval_every):
        after_images = evaluator.images(out / f"checkpoint-{step}")
        after = evaluator.distances(after_images)
        curve.append({"step": step, "mean_distance": statistics.mean(after)})
    if args.steps % args.eval_every:  # the last step is always saved
        after_images = evaluator.images(out / f"checkpoint-{args.steps}")
        after = evaluator.distances(after_images)
        curve.append({"step": args.steps, "mean_distance": statistics.mean(after)})
    follows = [evaluator.named_is_nearest(x, args.colours) for x in (before_images, after_images)]
    # The same measures on the training prompts (fresh noise): fitting them without following the held-out
    # ones is memorising templates, not learning colours.
    seen_cases = [(t.format(c), c) for t in TRAIN_TEMPLATES for c in args.colours]
    seen = Evaluator(settings, seen_cases, seed + 1)
    seen_before, seen_after = seen.images(None), seen.images(out / f"checkpoint-{args.steps}")
    seen_wins = sum(
        a < b for a, b in zip(seen.distances(seen_after), seen.distances(seen_before), strict=True)
    )
    wins = sum(a < b for a, b in zip(after, before, strict=True))
    low, high = wilson(wins, len(before))
    per_colour = {
        c: statistics.mean(a - b for a, b, (_, k) in zip(after, before, cases, strict=True) if k == c)
        for c in args.colours
    }
    return {
        "seed": seed,
        "pairs": len(before),
        "wins": wins,
        "win_rate": wins / len(before),
        "ci95": [low, high],
        "mean_distance_before": statistics.mean(before),
        "mean_distance_after": statistics.mean(after),
        "distance_change_per_colour": per_colour,
        "named_is_nearest_before": follows[0],
        "named_is_nearest_after": follows[1],
        "train_prompts_win_rate": seen_wins / len(seen_cases),
        "train_prompts_named_is_nearest": [
            seen.named_is_nearest(x, args.colours) for x in (seen_before, seen_after)
        ],
        "curve": curve,
        "failed_pairs": failed,
        "train_log": [{k: e[k] for k in ("step", "loss", "advantage_abs", "step_s")} for e in summary["log"]],
        "train_wall_s": train_wall,
        "train_cpu_s": train_cpu,
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "_strip": (before_images, after_images, cases),
    }


def write_strip(path: Path, runs: list[dict[str, Any]], colours: list[str], noises: int) -> Path:
    """A PNG strip per seed: the target colour swatches, then the first noise of every held-out prompt
    before training, then after, each sample enlarged to 24 px."""
    from _colour_task import COLOURS
    from PIL import Image

    cell, gap = 24, 2
    swatch = cell // 3
    block = swatch + gap + 2 * (cell + gap)  # one seed: swatches, before, after
    columns = len(HELD_OUT_TEMPLATES) * len(colours)
    strip = Image.new("RGB", (columns * (cell + gap), len(runs) * block), (255, 255, 255))
    for r, run in enumerate(runs):
        before, after, cases = run["_strip"]
        top = r * block
        for col in range(columns):
            index = col * noises  # the first noise of each held-out prompt
            x = col * (cell + gap)
            strip.paste(Image.new("RGB", (cell, swatch), COLOURS[cases[index][1]]), (x, top))
            for k, images in enumerate((before, after)):
                pixels = (images[index].permute(1, 2, 0) * 255).round().byte().numpy()
                tile = Image.fromarray(pixels).resize((cell, cell), Image.Resampling.NEAREST)
                strip.paste(tile, (x, top + swatch + gap + k * (cell + gap)))
    path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(path, optimize=True)
    return path


def stack_figures(parts: list[Path], out: Path) -> Path:
    """One strip from the strips of runs made side by side (same width), top to bottom."""
    from PIL import Image

    strips = [Image.open(path).convert("RGB") for path in parts]
    stacked = Image.new("RGB", (strips[0].width, sum(s.height for s in strips)), (255, 255, 255))
    for k, strip in enumerate(strips):
        stacked.paste(strip, (0, sum(s.height for s in strips[:k])))
    out.parent.mkdir(parents=True, exist_ok=True)
    stacked.save(out, optimize=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    args = build_parser().parse_args(argv)
    if args.record_from is not None:
        parts = [json.loads(path.read_text()) for path in args.record_from]
        report: dict[str, Any] = parts[0] | {"seeds": [s for part in parts for s in part["seeds"]]}
        report["judge_server_cpu_s"] = [part["judge_server_cpu_s"] for part in parts]
        report["load_average"] = max(part["load_average"] for part in parts)
        report["figure"] = str(stack_figures([Path(part["figure"]) for part in parts], args.figure))
        record(report)
        return report
    if args.smoke:
        args.seeds, args.steps, args.eval_every, args.eval_noises = args.seeds[:1], 2, 1, 1
        args.group_size, args.prompts_per_step, args.colours = 3, 2, args.colours[:2]
    torch.set_num_threads(1)  # a shared machine: CPU seconds are the figure to read
    server, port = spawn_server(serve_colour_judge)
    url = f"http://127.0.0.1:{port}/v1"
    runs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for seed in args.seeds:
                runs.append(run_seed(args, seed, url, Path(tmp)))
                print(json.dumps({k: v for k, v in runs[-1].items() if not k.startswith("_")}), flush=True)
        judge_cpu = _process_cpu_s(server.pid) if server.pid is not None else None
    finally:
        server.terminate()
    figure = write_strip(args.figure, runs, args.colours, args.eval_noises)
    report = {
        "machine": machine(),
        "command": " ".join(["python benchmarks/generator_learns.py", *(argv or sys.argv[1:])]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "judge_server_cpu_s": judge_cpu,
        "load_average": os.getloadavg()[0],
        "figure": str(figure),
        "figure_bytes": figure.stat().st_size,
        "seeds": [{k: v for k, v in run.items() if not k.startswith("_")} for run in runs],
    }
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.record:
        record(report)
    return report


def record(report: dict[str, Any]) -> None:
    """Append the section (setup line, table per seed, curve, strip) to benchmarks/RESULTS.md."""
    import datetime

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    seeds = report["seeds"]
    lines = [
        f"\n## generator_learns ({stamp})\n",
        f"{report['machine']}; load average {report['load_average']:.1f}. Command: `{report['command']}`\n",
        "| seed | held-out pairs | after beats step 0 | win rate (95% CI) | mean distance before -> after "
        "| distance change per colour | named colour nearest, before -> after | training prompts: win rate, "
        "named nearest before -> after | failed judge pairs | train CPU s | train wall s | seed CPU s "
        "| seed wall s |",
        "|---:|---:|---:|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in seeds:
        seen = s["train_prompts_named_is_nearest"]
        change = ", ".join(f"{c} {d:+.1f}" for c, d in s["distance_change_per_colour"].items())
        lines.append(
            f"| {s['seed']} | {s['pairs']} | {s['wins']} | {s['win_rate']:.2f} ({s['ci95'][0]:.2f}-"
            f"{s['ci95'][1]:.2f}) | {s['mean_distance_before']:.1f} -> {s['mean_distance_after']:.1f} "
            f"| {change} | {s['named_is_nearest_before']:.2f} -> {s['named_is_nearest_after']:.2f} "
            f"| {s['train_prompts_win_rate']:.2f}, {seen[0]:.2f} -> {seen[1]:.2f} "
            f"| {s['failed_pairs']} | {s['train_cpu_s']:.0f} | {s['train_wall_s']:.0f} | {s['cpu_s']:.0f} "
            f"| {s['wall_s']:.0f} |"
        )
    steps = [p["step"] for p in seeds[0]["curve"]]
    lines += [
        "",
        "Held-out mean colour distance (0-255 levels) by training step:",
        "",
        "| seed | " + " | ".join(str(s) for s in steps) + " |",
        "|---:|" + "---:|" * len(steps),
    ]
    for s in seeds:
        lines.append(f"| {s['seed']} | " + " | ".join(f"{p['mean_distance']:.1f}" for p in s["curve"]) + " |")
    figure = Path(report["figure"]).resolve()
    here = Path(__file__).resolve().parent
    link = figure.relative_to(here) if figure.is_relative_to(here) else figure  # RESULTS.md's own folder
    lines += ["", f"![before and after]({link})", ""]
    with (Path(__file__).parent / "RESULTS.md").open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
