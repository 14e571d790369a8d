"""training/grpo_diffusion.py: its config (fast), and real runs on tiny random flow-matching pipelines built
here (slow), rewarded by a rule judge (the redder image wins) served over HTTP on 127.0.0.1: through the
reward server's client, through an in-process Judge over the OpenAI-compatible endpoint, and under
`accelerate launch --num_processes 2` on CPU (gloo), where each prompt's group is spread over both ranks."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from training import grpo_diffusion
from training._config import ConfigError, load_settings
from training._diffusion_config import GrpoDiffusionSettings

ROOT = Path(__file__).resolve().parent.parent
FLUX_CONFIG = ROOT / "training" / "configs" / "grpo_flux.yaml"


def _settings(*overrides: str) -> GrpoDiffusionSettings:
    return load_settings(GrpoDiffusionSettings, FLUX_CONFIG, list(overrides))


# ------------------------------------------------------------------------------------------- config


def test_the_shipped_config_holds_the_papers_flux_settings(capsys: pytest.CaptureFixture[str]) -> None:
    grpo_diffusion.main(["--dry-run"])
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert settings["group_size"] == 9
    assert settings["num_inference_steps"] == 15
    assert settings["learning_rate"] == pytest.approx(3e-6)
    assert settings["kl_beta"] == 0.0
    assert settings["model"] == "black-forest-labs/FLUX.1-dev"
    wan = load_settings(GrpoDiffusionSettings, ROOT / "training" / "configs" / "grpo_wan.yaml")
    assert (wan.group_size, wan.num_inference_steps, wan.learning_rate) == (6, 20, 3e-5)
    assert (wan.kl_beta, wan.lora.r) == (0.004, 64)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["reward.judge_model=x"], "exactly one of reward.server_url and reward.judge_model"),
        (["prompts_per_step=3", "groups_per_reward_batch=2"], "multiple of groups_per_reward_batch"),
        (["group_sise=4"], "did you mean 'group_size'"),
        (["noise_level=0"], "noise_level"),
    ],
)
def test_a_bad_config_is_a_config_error(overrides: list[str], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(*overrides)
    assert says in str(caught.value)


def test_a_config_mistake_exits_2_in_one_line() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "training" / "grpo_diffusion.py"), "--set", "group_size=1"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120,
    )  # fmt: skip
    assert run.returncode == 2 and "group_size" in run.stderr and "Traceback" not in run.stderr


def test_each_step_takes_a_seeded_shuffle_of_the_prompts_once_per_epoch() -> None:
    settings = _settings("prompts_per_step=2")
    prompts = [f"p{k}" for k in range(6)]
    taken = [p for step in range(6) for p in grpo_diffusion.step_prompts(prompts, settings, step)]
    first, second = taken[:6], taken[6:]
    assert sorted(first) == sorted(second) == prompts and first != prompts and first != second


# ------------------------------------------------------------------------------------ real runs (slow)

TINY = [
    "group_size=4", "num_inference_steps=4", "height=32", "width=32", "max_sequence_length=16",
    "prompts_per_step=2", "use_cpu=true", "mixed_precision=fp32", "model_dtype=float32",
    "gradient_checkpointing=false", "lora.r=4", "lora.alpha=8", "learning_rate=1e-2", "train_batch_size=2",
    "gradient_accumulation_steps=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.tiny_flow import COLOUR_PROMPTS, build_flux, build_sd3, build_wan

    root = tmp_path_factory.mktemp("tiny_flow")
    (root / "prompts.txt").write_text("\n".join(COLOUR_PROMPTS) + "\n")
    flux, sd3, wan = build_flux(root / "flux"), build_sd3(root / "sd3"), build_wan(root / "wan")
    return {"flux": flux, "sd3": sd3, "wan": wan, "prompts": root / "prompts.txt"}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Any]]:
    """The rule judge behind a real flexjudge server (chat completions and /v1/rewards) on 127.0.0.1."""
    from tests.served import running_server
    from tests.tiny_flow import RednessJudge

    judge = RednessJudge()
    with running_server(judge, model_name="redness-judge") as (url, _):
        yield url, judge


def _argv(tiny: dict[str, Path], out: Path, *extra: str, model: str = "flux") -> list[str]:
    argv = ["--model", str(tiny[model]), "--prompts", str(tiny["prompts"]), "--output-dir", str(out)]
    for item in [*TINY, *extra]:
        argv += ["--set", item]
    return argv


def _untimed(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A step log without its wall-clock seconds (which no two runs share)."""
    return [{k: v for k, v in entry.items() if k not in ("reward_wait_s", "step_s")} for entry in log]


def _adapter(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


@pytest.mark.slow
def test_flux_trains_two_steps_on_served_rewards_and_a_resumed_run_matches_an_uninterrupted_one(
    tiny: dict[str, Path], served: tuple[str, Any], tmp_path: Path
) -> None:
    import torch

    url, _ = served
    reward = f"reward.server_url={url}"
    straight, split = tmp_path / "straight", tmp_path / "split"
    grpo_diffusion.main(_argv(tiny, straight, reward, "max_steps=2", "save_steps=1"))
    summary = json.loads((straight / grpo_diffusion.SUMMARY).read_text())
    assert summary["global_step"] == 2 and summary["finite"] and summary["optimizer_steps"] == 4
    assert all(entry["failed_pairs"] == 0 for entry in summary["log"])
    # Every group of 4 had a best and a worst sample: the advantages are not all zero.
    assert all(entry["advantage_abs"] > 0.1 for entry in summary["log"])
    first, last = _adapter(straight / "checkpoint-1"), _adapter(straight)
    lora_b = [k for k in last if "lora_B" in k]
    assert lora_b and all(last[k].abs().sum() > 0 for k in lora_b)  # B starts at zero: the LoRA trained
    assert any(not torch.equal(first[k], last[k]) for k in last)  # and kept training in step 2

    grpo_diffusion.main(_argv(tiny, split, reward, "max_steps=1", "save_steps=1"))
    grpo_diffusion.main(_argv(tiny, split, reward, "max_steps=2", "save_steps=1"))  # resume: auto
    resumed = json.loads((split / grpo_diffusion.SUMMARY).read_text())
    assert resumed["resumed_from"] == str(split / "checkpoint-1") and resumed["global_step"] == 2
    assert _untimed(resumed["log"]) == _untimed(summary["log"])
    again = _adapter(split)
    for key in last:
        torch.testing.assert_close(again[key], last[key])


@pytest.mark.slow
def test_sd3_trains_with_an_in_process_judge_over_the_served_model_with_kl_and_checkpointing(
    tiny: dict[str, Path], served: tuple[str, Any], tmp_path: Path
) -> None:
    url, judge = served
    before = judge.calls
    reward = ["reward.server_url=null", "reward.judge_model=redness-judge", "reward.backend=openai",
              f"reward.base_url={url}", "guidance_scale=4.5", "kl_beta=0.01", "max_steps=1",
              "gradient_checkpointing=true"]  # fmt: skip
    grpo_diffusion.main(_argv(tiny, tmp_path, *reward, model="sd3"))
    summary = json.loads((tmp_path / grpo_diffusion.SUMMARY).read_text())
    assert summary["finite"] and summary["log"][0]["kl"] >= 0.0 and summary["log"][0]["failed_pairs"] == 0
    assert judge.calls - before == 2 * 6  # two groups of 4: C(4, 2) pairs each
    assert any(v.abs().sum() > 0 for k, v in _adapter(tmp_path).items() if "lora_B" in k)


@pytest.mark.slow
def test_wan_video_trains_through_the_same_loop_with_videos_judged_as_videos(
    tiny: dict[str, Path], served: tuple[str, Any], tmp_path: Path
) -> None:
    url, judge = served
    before = judge.calls
    video = [
        "height=16", "width=16", "num_frames=5", "group_size=3", "prompts_per_step=1",
        "num_inference_steps=3", "guidance_scale=5.0", "kl_beta=0.004", "train_batch_size=1",
        "gradient_accumulation_steps=1",
    ]  # fmt: skip
    grpo_diffusion.main(_argv(tiny, tmp_path, f"reward.server_url={url}", "max_steps=1", *video, model="wan"))
    summary = json.loads((tmp_path / grpo_diffusion.SUMMARY).read_text())
    (entry,) = summary["log"]
    assert summary["finite"] and entry["failed_pairs"] == 0 and summary["optimizer_steps"] == 3
    assert entry["kl"] > 0  # the second and third updates start from a trained LoRA
    assert judge.calls - before == 3  # C(3, 2) pairs of videos
    assert any(v.abs().sum() > 0 for k, v in _adapter(tmp_path).items() if "lora_B" in k)


@pytest.mark.slow
def test_under_accelerate_two_cpu_ranks_judge_each_group_whole(
    tiny: dict[str, Path], served: tuple[str, Any], tmp_path: Path
) -> None:
    url, judge = served
    before = judge.calls
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(ROOT / "training" / "grpo_diffusion.py"),
        *_argv(tiny, tmp_path, f"reward.server_url={url}", "max_steps=2", "train_batch_size=1"),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    # `--cpu` would make accelerate start one process; `--multi_gpu` starts torchrun's two, and the
    # script's `use_cpu` makes them CPU ranks over gloo.
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / grpo_diffusion.SUMMARY).read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 2 and summary["finite"]
    # Each rank holds 2 of every group's 4 samples. Judged whole: C(4, 2) = 6 pairs per group, 2 groups a
    # step, 2 steps; judged by halves on each rank it would be 1 pair per half, 8 in all.
    assert judge.calls - before == 2 * 2 * 6
    assert any(v.abs().sum() > 0 for k, v in _adapter(tmp_path).items() if "lora_B" in k)


@pytest.mark.slow
def test_the_next_batch_samples_while_the_judge_rewards_the_last(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    """The judge holds its answer for batch 0 until the trainer has started sampling batch 1: with the
    overlap, that happens; without it, the trainer would wait for the answer before sampling, the judge
    would give up waiting (after 60 s) and the order of events below would differ."""
    from tests.served import running_server
    from tests.tiny_flow import RednessJudge

    second_batch = threading.Event()
    waited_in_vain: list[bool] = []

    class Gated(RednessJudge):
        async def generate(self, requests: list[Any]) -> list[Any]:
            if not second_batch.is_set():
                waited_in_vain.append(not await asyncio.to_thread(second_batch.wait, 60))
            return await super().generate(requests)

    events: list[tuple[str, int, int]] = []

    def on_event(kind: str, step: int, batch: int) -> None:
        events.append((kind, step, batch))
        if (kind, batch) == ("sample_start", 1):
            second_batch.set()

    with running_server(Gated(), model_name="redness-judge") as (url, _):
        overrides = [*TINY, f"reward.server_url={url}", "max_steps=1", "groups_per_reward_batch=1"]
        flags = {"model": str(tiny["flux"]), "prompts": str(tiny["prompts"]), "output_dir": str(tmp_path)}
        settings = load_settings(GrpoDiffusionSettings, FLUX_CONFIG, overrides, flags)
        summary = grpo_diffusion.run(settings, on_event=on_event)
    assert not any(waited_in_vain)
    order = events.index
    assert order(("reward_start", 0, 0)) < order(("sample_start", 0, 1)) < order(("reward_end", 0, 0))
    assert order(("sample_end", 0, 1)) < order(("reward_end", 0, 1))
    (entry,) = summary["log"]
    assert 0 <= entry["reward_wait_s"] < entry["step_s"]


@pytest.mark.slow
def test_without_the_overlap_each_batch_is_judged_before_the_next_samples(
    tiny: dict[str, Path], served: tuple[str, Any], tmp_path: Path
) -> None:
    """overlap_rewards=false, the baseline of benchmarks/grpo_reward_wait.py: strictly serial, and the
    trainer's wait for each batch's rewards is counted in reward_wait_s."""
    url, _ = served
    events: list[tuple[str, int, int]] = []
    overrides = [*TINY, f"reward.server_url={url}", "max_steps=1", "groups_per_reward_batch=1",
                 "overlap_rewards=false"]  # fmt: skip
    flags = {"model": str(tiny["flux"]), "prompts": str(tiny["prompts"]), "output_dir": str(tmp_path)}
    settings = load_settings(GrpoDiffusionSettings, FLUX_CONFIG, overrides, flags)
    summary = grpo_diffusion.run(settings, on_event=lambda *event: events.append(event))
    kinds = ["sample_start", "sample_end", "reward_start", "reward_end"]
    assert events == [(kind, 0, batch) for batch in (0, 1) for kind in kinds]
    (entry,) = summary["log"]
    assert 0 < entry["reward_wait_s"] < entry["step_s"]


@pytest.mark.slow
@pytest.mark.parametrize(("family", "guidance"), [("flux", 3.5), ("sd3", 4.5)])
def test_at_noise_level_zero_the_sampler_draws_what_the_diffusers_pipeline_draws(
    tiny: dict[str, Path], family: str, guidance: float
) -> None:
    """The family adapters (prompt encoding, initial noise, schedule, velocity with guidance, decoding)
    reproduce the pipeline's own `__call__`: with the SDE's noise off, the images are the same."""
    import torch

    settings = _settings(
        f"model={tiny[family]}", "height=32", "width=32", "max_sequence_length=16", "model_dtype=float32",
        f"guidance_scale={guidance}",
    )  # fmt: skip
    pipe, adapter = grpo_diffusion.load_pipeline(settings, "cpu")
    schedule = adapter.schedule(4, "cpu")
    prompts = ["a red apple", "a blue sky"]
    ours = grpo_diffusion.sample(
        adapter,
        pipe.transformer,
        prompts,
        schedule,
        noise_level=0.0,
        generator=torch.Generator().manual_seed(3),
    )
    assert ours.log_probs == []
    theirs = pipe(
        prompts, height=32, width=32, num_inference_steps=4, guidance_scale=guidance, max_sequence_length=16,
        generator=torch.Generator().manual_seed(3), output_type="pt",
    ).images  # fmt: skip
    torch.testing.assert_close(ours.images, theirs, atol=2e-5, rtol=1e-4)
    assert float(ours.images.std()) > 0.01  # real images, not a blank that would match anything
