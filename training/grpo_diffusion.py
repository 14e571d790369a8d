"""GRPO of a diffusers flow-matching pipeline (FLUX, SD3 images; Wan2.1 video) on flexjudge's group rewards.

    python training/grpo_diffusion.py --config training/configs/grpo_flux.yaml --model FLUX_DIR \\
        --prompts prompts.txt --output-dir OUT --set reward.server_url=http://127.0.0.1:8000
    accelerate launch --num_processes 8 training/grpo_diffusion.py --config ...      (one rank per GPU)

Each step: `prompts_per_step` prompts, `group_size` (G) samples each, drawn with Flow-GRPO's SDE sampler
(`training/_flow_sde.py`), which records every step's log-probability; each prompt's G images are judged as
one group by flexjudge (all C(G, 2) pairs, the paper's win-rate rewards and blended advantages), through a
reward server (`reward.server_url`, `flexjudge serve`) or a `Judge` in this process (`reward.judge_model`);
then a PPO-clip loss on the ratio of each step's log-probability under the current LoRA to the sampled
one, over a random `timestep_fraction` of the steps, optionally with a KL to the reference (the same
transformer with its LoRA off). The samples of a step are spread over the ranks; a prompt's group is
gathered from every rank and judged whole (`flexjudge.rewards.distributed.Gathered`). The step's groups
are sampled in batches of `groups_per_reward_batch`; each batch is judged on a worker thread while the
next samples, so the judge does not idle the generator (`overlap_rewards: false` judges each batch before
the next samples: the baseline). Each step's metrics hold `reward_wait_s`, the seconds the trainer was
blocked on rewards, beside `step_s`, the step's seconds. Checkpoints (the adapter, the optimizer, the
step) go to output_dir every `save_steps`; rerunning continues from the newest (`resume: auto`).

Wan2.1 (`WanPipeline`) trains through the same loop: videos of `num_frames` frames are judged as videos
(the judge samples its frames). Wan2.2's two-transformer pipelines are refused.

For a benchmark: `run(settings)` trains and returns the summary; `load_pipeline` and `sample` draw images
from a base pipeline with or without a trained adapter.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `training` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training._common import run_main
from training._config import ConfigError, load_settings
from training._diffusion_config import GrpoDiffusionSettings, RewardSettings
from training._flow_pipelines import FlowFamily, Schedule, family_of
from training._flow_sde import sde_step

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "grpo_flux.yaml"
SUMMARY = "train_summary.json"
_MIXED = {"fp32": "no", "bf16": "bf16"}  # accelerate's names (a bare `no` in YAML would read as False)
STATE = "trainer_state.json"
Event = Callable[[str, int, int], None]
"""`on_event(kind, step, batch)` as things happen: sample_start, sample_end, reward_start, reward_end."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="training/grpo_diffusion.py",
        description="GRPO (Flow-GRPO's SDE sampler, PPO-clip, LoRA) of a FLUX, SD3 or Wan2.1 pipeline on "
        "flexjudge group rewards.",
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help=f"YAML config (default: {DEFAULT_CONFIG})."
    )
    parser.add_argument("--model", help="Pipeline directory (overrides the config's `model`).")
    parser.add_argument("--prompts", help="Prompt file, one per line (overrides `prompts`).")
    parser.add_argument("--output-dir", dest="output_dir", help="Output directory (overrides `output_dir`).")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override one config key, the value read as YAML (repeatable): --set group_size=6",
    )
    parser.add_argument("--dry-run", action="store_true", help="Check the config, print it, and exit.")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    flags = {"model": args.model, "prompts": args.prompts, "output_dir": args.output_dir}
    # load_settings is typed for TrainSettings (SFT, DPO); it validates any pydantic settings model.
    settings = load_settings(GrpoDiffusionSettings, args.config, args.overrides, flags)  # type: ignore[type-var]
    if args.dry_run:
        print(json.dumps({"settings": settings.model_dump()}, indent=2))
        return
    run(settings)


# --------------------------------------------------------------------------------------------- model


def load_pipeline(settings: GrpoDiffusionSettings, device: Any) -> tuple[Any, FlowFamily]:
    """The pipeline with every weight frozen, on `device`, and its family adapter."""
    import torch
    from diffusers import DiffusionPipeline

    dtype = torch.bfloat16 if settings.model_dtype == "bfloat16" else torch.float32
    try:
        pipe = DiffusionPipeline.from_pretrained(settings.model, dtype=dtype)
    except (OSError, ValueError) as exc:  # diffusers' "no such directory / not a pipeline"
        raise ConfigError(f"cannot load a diffusers pipeline from {settings.model}: {exc}") from None
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False)
    family = family_of(
        pipe,
        settings.family,
        height=settings.height,
        width=settings.width,
        guidance_scale=settings.guidance_scale,
        max_sequence_length=settings.max_sequence_length,
        num_frames=settings.num_frames,
    )
    return pipe, family


def add_lora(pipe: Any, settings: GrpoDiffusionSettings) -> Any:
    """The transformer wrapped by peft with a trainable LoRA (only the adapter's weights train)."""
    from peft import LoraConfig, get_peft_model

    lora = settings.lora
    targets = lora.target_modules
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        init_lora_weights="gaussian",
        target_modules=targets if isinstance(targets, str) else list(targets),
    )
    if settings.gradient_checkpointing:
        pipe.transformer.enable_gradient_checkpointing()
    return get_peft_model(pipe.transformer, config)


@dataclass
class Trajectory:
    """What sampling keeps for training: the latents at every step (T + 1, float32), the log-probability
    of each step (T, B), the prompts' conditioning and the decoded images (B, 3, H, W) or videos
    (B, 3, F, H, W), in [0, 1]."""

    latents: list[Any]
    log_probs: list[Any]
    cond: dict[str, Any]
    images: Any


def sample(
    family: FlowFamily,
    transformer: Any,
    prompts: list[str],
    schedule: Schedule,
    *,
    noise_level: float,
    generator: Any,
) -> Trajectory:
    """Sample `prompts` (one image or video each) with the SDE step; `noise_level` 0 is diffusers' Euler
    sampler (then `log_probs` is empty). Runs without gradients."""
    import torch

    device = family.pipe.transformer.device
    dtype = family.pipe.transformer.dtype
    sigmas = schedule.sigmas
    with torch.no_grad():
        cond = family.encode(prompts)
        x = family.initial_latents(len(prompts), generator, device).float()
        latents, log_probs = [x], []
        for i, t in enumerate(schedule.timesteps):
            v = family.velocity(transformer, x.to(dtype), t, cond)
            step = sde_step(
                v,
                x,
                sigmas[i],
                sigmas[i + 1],
                noise_level=noise_level,
                sigma_max=sigmas[1],
                generator=generator,
            )
            x = step.prev_sample
            latents.append(x)
            if step.log_prob is not None:
                log_probs.append(step.log_prob)
        images = family.decode(x.to(dtype))
    return Trajectory(latents=latents, log_probs=log_probs, cond=cond, images=images)


# ------------------------------------------------------------------------------------------- rewards


@contextmanager
def reward_function(reward: RewardSettings, group_size: int, distributed: bool) -> Iterator[Any]:
    """Flow-GRPO's `fn(images, prompts, metadata) -> (advantages, info)` over flexjudge: the paper's
    blended group advantages, each group judged whole (gathered from every rank when `distributed`)."""
    from flexjudge import Judge
    from flexjudge.rewards.adapters import FlowGRPOReward, GroupReward
    from flexjudge.rewards.client import RewardClient

    key = None
    if reward.api_key_env is not None:
        key = os.environ.get(reward.api_key_env)
        if key is None:
            raise ConfigError(f"reward.api_key_env names {reward.api_key_env}, which is not set")
    judge: Judge | RewardClient
    if reward.server_url is not None:
        judge = RewardClient(reward.server_url, api_key=key, timeout=reward.timeout_s)
    else:
        judge = Judge(reward.judge_model, backend=reward.backend, base_url=reward.base_url, api_key=key)
    fn: Any = FlowGRPOReward(GroupReward(judge, swap=reward.swap, alpha=reward.alpha), group_size=group_size)
    if distributed:
        from flexjudge.rewards.distributed import Gathered

        fn = Gathered(fn, group_key=lambda prompt, group: group)
    try:
        yield fn
    finally:
        judge.close()


# ---------------------------------------------------------------------------------------- checkpoint


def newest_checkpoint(output_dir: str) -> Path | None:
    root = Path(output_dir)
    found = [p for p in root.glob("checkpoint-*") if (p / STATE).is_file()] if root.is_dir() else []
    return max(found, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


def resume_from(settings: GrpoDiffusionSettings) -> Path | None:
    if settings.resume == "never":
        return None
    if settings.resume == "auto":
        return newest_checkpoint(settings.output_dir)
    path = Path(settings.resume)
    if not (path / STATE).is_file():
        raise ConfigError(f"resume: no checkpoint at {path} (it has no {STATE})")
    return path


def save_checkpoint(
    accelerator: Any, model: Any, optimizer: Any, settings: GrpoDiffusionSettings, state: dict[str, Any]
) -> None:
    import torch

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        path = Path(settings.output_dir) / f"checkpoint-{state['step']}"
        accelerator.unwrap_model(model).save_pretrained(path)
        torch.save(optimizer.state_dict(), path / "optimizer.pt")
        (path / STATE).write_text(json.dumps(state, indent=2) + "\n")
        older = sorted(
            (
                p
                for p in Path(settings.output_dir).glob("checkpoint-*")
                if p != path and (p / STATE).is_file()
            ),
            key=lambda p: int(p.name.rsplit("-", 1)[1]),
        )
        limit = settings.save_total_limit
        for stale in older[: max(0, len(older) - (limit - 1))] if limit is not None else []:
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()


def load_checkpoint(path: Path, model: Any, optimizer: Any) -> dict[str, Any]:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"checkpoint {path} has no adapter_model.safetensors")
    result = set_peft_model_state_dict(model, load_file(str(weights)))
    if result.unexpected_keys:
        raise ConfigError(f"checkpoint {path} does not fit this model: {result.unexpected_keys[:3]} ...")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    state: dict[str, Any] = json.loads((path / STATE).read_text())
    return state


# ------------------------------------------------------------------------------------------ training


def read_prompts(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read prompts {path}: {exc.strerror or exc}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ConfigError(f"the prompt file {path} has no prompts")
    return prompts


def step_prompts(prompts: list[str], settings: GrpoDiffusionSettings, step: int) -> list[str]:
    """The prompts of step `step`: an endless stream of seeded shuffles of the file (one per epoch), the
    same on every rank and after a resume."""
    out = []
    for k in range(step * settings.prompts_per_step, (step + 1) * settings.prompts_per_step):
        epoch, index = divmod(k, len(prompts))
        order = list(range(len(prompts)))
        random.Random(f"{settings.seed}:{epoch}").shuffle(order)
        out.append(prompts[order[index]])
    return out


def hash_parts(*parts: int) -> int:
    """A seed from integers, the same in every process (Python's `hash` of a str is salted)."""
    value = 1469598103934665603
    for part in parts:
        value = ((value ^ (part & 0xFFFFFFFF)) * 1099511628211) % (1 << 63)
    return value


def run(settings: GrpoDiffusionSettings, on_event: Event | None = None) -> dict[str, Any]:
    """Train; returns the summary also written to output_dir/train_summary.json."""
    import torch
    from accelerate import Accelerator

    prompts = read_prompts(settings.prompts)
    accelerator = Accelerator(cpu=settings.use_cpu, mixed_precision=_MIXED[settings.mixed_precision])
    world = accelerator.num_processes
    per_step = settings.prompts_per_step * settings.group_size
    per_batch = settings.groups_per_reward_batch * settings.group_size
    if per_batch % world:
        raise ConfigError(
            f"groups_per_reward_batch * group_size ({per_batch}) must split evenly over {world} ranks"
        )
    pipe, family = load_pipeline(settings, accelerator.device)
    torch.manual_seed(settings.seed)  # the LoRA's random A, the same on every rank and in every run
    model = add_lora(pipe, settings)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    resumed = resume_from(settings)
    state: dict[str, Any] = {"step": 0, "optimizer_steps": 0, "log": []}
    if resumed is not None:
        state = load_checkpoint(resumed, model, optimizer)
    model, optimizer = accelerator.prepare(model, optimizer)
    schedule = family.schedule(settings.num_inference_steps, accelerator.device)
    emit = on_event or (lambda kind, step, batch: None)

    with ExitStack() as stack:
        reward = stack.enter_context(reward_function(settings.reward, settings.group_size, world > 1))
        # One worker: the judging of a batch runs beside the sampling of the next, and the batches'
        # (collective) reward calls keep one order on every rank.
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewards"))
        while state["step"] < settings.max_steps:
            step = state["step"]
            started = time.perf_counter()
            trajectories, advantages, failures, waited = _sample_and_judge(
                settings,
                step_prompts(prompts, settings, step),
                family,
                accelerator,
                model,
                schedule,
                reward,
                pool,
                emit,
                step,
            )
            metrics = _train(
                settings,
                family,
                accelerator,
                model,
                optimizer,
                schedule,
                trajectories,
                advantages,
                state,
                step,
            )
            # reward_wait_s: the seconds this rank sat blocked on rewards (the cost the overlap removes).
            metrics |= {"step": step + 1, "failed_pairs": failures, "samples": per_step}
            metrics |= {"reward_wait_s": waited, "step_s": time.perf_counter() - started}
            state["log"].append(metrics)
            state["step"] = step + 1
            if accelerator.is_main_process:
                print(json.dumps(metrics), flush=True)
            if state["step"] % settings.save_steps == 0 or state["step"] == settings.max_steps:
                save_checkpoint(accelerator, model, optimizer, settings, state)
    return _finish(accelerator, model, settings, state, resumed)


def _sample_and_judge(
    settings: GrpoDiffusionSettings,
    chosen: list[str],
    family: FlowFamily,
    accelerator: Any,
    model: Any,
    schedule: Schedule,
    reward: Any,
    pool: ThreadPoolExecutor,
    emit: Event,
    step: int,
) -> tuple[list[Trajectory], list[Any], int, float]:
    """This rank's trajectories of the step, batch by batch, each batch judged while the next samples
    (with `overlap_rewards`; else judged before the next samples), and the seconds spent blocked on the
    rewards."""
    import torch

    world, rank = accelerator.num_processes, accelerator.process_index
    sampler = accelerator.unwrap_model(model)
    trajectories: list[Trajectory] = []
    pending: list[Future[tuple[list[float], dict[str, Any]]]] = []
    waited = 0.0
    groups = settings.groups_per_reward_batch
    for batch, start in enumerate(range(0, len(chosen), groups)):
        # The batch's samples in group order (G consecutive per prompt), cut into equal parts per rank.
        flat = [
            (p, start + g)
            for g, p in enumerate(chosen[start : start + groups])
            for _ in range(settings.group_size)
        ]
        share = len(flat) // world
        mine = flat[rank * share : (rank + 1) * share]
        emit("sample_start", step, batch)
        generator = torch.Generator().manual_seed(hash_parts(settings.seed, step, batch, rank))
        sampler.eval()  # no adapter dropout while sampling; training (below) recomputes in train mode
        with accelerator.autocast():  # the precision the training forward uses, so fresh ratios are 1
            texts = [p for p, _ in mine]
            trajectory = sample(
                family, sampler, texts, schedule, noise_level=settings.noise_level, generator=generator
            )
        emit("sample_end", step, batch)
        trajectories.append(trajectory)
        candidates = family.candidates(trajectory.images)
        pending.append(pool.submit(_judge, reward, candidates, mine, emit, step, batch))
        if not settings.overlap_rewards:
            waited += _blocked_on(pending[-1])
    advantages, failures = [], 0
    for future in pending:
        waited += _blocked_on(future)
        values, info = future.result()
        advantages.append(torch.tensor(values, dtype=torch.float32, device=accelerator.device))
        failures += sum(len(f) for f in info["failures"])
    return trajectories, advantages, failures, waited


def _blocked_on(future: Future[Any]) -> float:
    """Wait for `future` (its error, if any, is raised where its result is read); the seconds waited."""
    started = time.perf_counter()
    wait([future])
    return time.perf_counter() - started


def _judge(
    reward: Any, candidates: Any, mine: list[tuple[str, int]], emit: Event, step: int, batch: int
) -> Any:
    emit("reward_start", step, batch)
    result = reward(candidates, [p for p, _ in mine], [g for _, g in mine])
    emit("reward_end", step, batch)
    return result


def _train(
    settings: GrpoDiffusionSettings,
    family: FlowFamily,
    accelerator: Any,
    model: Any,
    optimizer: Any,
    schedule: Schedule,
    trajectories: list[Trajectory],
    advantages: list[Any],
    state: dict[str, Any],
    step: int,
) -> dict[str, Any]:
    """PPO-clip over a random subset of the steps, micro-batch by micro-batch; one optimizer update per
    `gradient_accumulation_steps` micro-batches (and at the end). Every rank runs the same number of
    backward passes (equal shares, the same subset), as DDP needs."""
    import torch

    steps = len(schedule.timesteps)
    picker = random.Random(hash_parts(settings.seed, step, 7))
    trained = sorted(picker.sample(range(steps), max(1, round(settings.timestep_fraction * steps))))
    sigmas, dtype = schedule.sigmas, family.pipe.transformer.dtype
    micro = [
        (t, rows)
        for t in trajectories
        for rows in torch.arange(t.images.shape[0]).split(settings.train_batch_size)
    ]
    adv_of = {
        id(t): a.clamp(-settings.adv_clip_max, settings.adv_clip_max)
        for t, a in zip(trajectories, advantages, strict=True)
    }
    losses, clipped, kls, ratios = [], [], [], []
    model.train()
    for m, (trajectory, rows) in enumerate(micro):
        update = (m + 1) % settings.gradient_accumulation_steps == 0 or m == len(micro) - 1
        adv = adv_of[id(trajectory)][rows]
        cond = family.rows(trajectory.cond, rows)
        for k, i in enumerate(trained):
            sync = update and k == len(trained) - 1
            x, x_next = trajectory.latents[i][rows], trajectory.latents[i + 1][rows]
            with nullcontext() if sync else accelerator.no_sync(model):
                with accelerator.autocast():
                    v = family.velocity(model, x.to(dtype), schedule.timesteps[i], cond)
                new = sde_step(
                    v,
                    x,
                    sigmas[i],
                    sigmas[i + 1],
                    noise_level=settings.noise_level,
                    sigma_max=sigmas[1],
                    prev_sample=x_next,
                )
                assert new.log_prob is not None  # noise_level > 0 (checked by the settings)
                ratio = torch.exp(new.log_prob - trajectory.log_probs[i][rows])
                bound = settings.clip_range
                loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - bound, 1 + bound)).mean()
                if settings.kl_beta > 0:
                    kl = _kl_to_reference(settings, family, accelerator, model, new, x, i, schedule, cond)
                    loss = loss + settings.kl_beta * kl
                    kls.append(kl.item())
                accelerator.backward(loss / (len(trained) * settings.gradient_accumulation_steps))
            losses.append(loss.item())
            ratios.append(ratio.mean().item())
            clipped.append(((ratio - 1).abs() > bound).float().mean().item())
        if update:
            accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state["optimizer_steps"] += 1
    metrics = {
        "loss": sum(losses) / len(losses),
        "ratio": sum(ratios) / len(ratios),
        "clip_fraction": sum(clipped) / len(clipped),
        "advantage_abs": float(torch.cat(advantages).abs().mean()),
        "trained_timesteps": trained,
    }
    if kls:
        metrics["kl"] = sum(kls) / len(kls)
    return metrics


def _kl_to_reference(
    settings: GrpoDiffusionSettings,
    family: FlowFamily,
    accelerator: Any,
    model: Any,
    new: Any,
    x: Any,
    i: int,
    schedule: Schedule,
    cond: dict[str, Any],
) -> Any:
    """Flow-GRPO's KL between the two Gaussian steps (same std): |mean - mean_ref|^2 / (2 std^2), per
    sample the mean over elements, as the log-probability is."""
    import torch

    sigmas = schedule.sigmas
    reference = accelerator.unwrap_model(model)
    with torch.no_grad(), reference.disable_adapter():
        v_ref = family.velocity(reference, x.to(family.pipe.transformer.dtype), schedule.timesteps[i], cond)
        ref = sde_step(
            v_ref,
            x,
            sigmas[i],
            sigmas[i + 1],
            noise_level=settings.noise_level,
            sigma_max=sigmas[1],
            prev_sample=new.prev_sample,
        )
    per_sample = ((new.mean - ref.mean) ** 2).mean(dim=tuple(range(1, x.ndim))) / (2 * new.std**2)
    return per_sample.mean()


def _finish(
    accelerator: Any, model: Any, settings: GrpoDiffusionSettings, state: dict[str, Any], resumed: Path | None
) -> dict[str, Any]:
    log = state["log"]
    summary = {
        "script": "grpo_diffusion",
        "global_step": state["step"],
        "optimizer_steps": state["optimizer_steps"],
        "resumed_from": str(resumed) if resumed is not None else None,
        "log": log,
        "finite": all(math.isfinite(entry["loss"]) for entry in log),
        "world_size": accelerator.num_processes,
        "settings": settings.model_dump(),
    }
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(settings.output_dir)
        Path(settings.output_dir, SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    accelerator.wait_for_everyone()
    return summary


if __name__ == "__main__":
    run_main(main)
