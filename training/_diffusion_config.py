"""Settings of `training/grpo_diffusion.py`: GRPO of a diffusers flow-matching generator on flexjudge rewards.

The defaults are the paper's FLUX.1-dev run (DESIGN.md section 4: G = 9, 15 sampling steps, lr 3e-6, no KL);
the Wan2.1-T2V-14B run is LoRA r64, G = 6, 20 steps, lr 3e-5, KL 0.004 (`training/configs/grpo_wan.yaml`).
What the paper does not state is taken from Flow-GRPO's FLUX/SD3 configs and marked so: noise level 0.7,
clip range 1e-4, advantages clipped at 5, 60% of the timesteps trained, LoRA r32/alpha 64 on the attention
projections. Same resolution order as the other scripts (`training/_config.py`): defaults, YAML, flags,
`--set key=value`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from training._config import ConfigError, LoraSettings, _Strict

__all__ = ["ConfigError", "DiffusionLoraSettings", "GrpoDiffusionSettings", "RewardSettings"]

# The transformer blocks' attention projections, in FLUX, SD3 and Wan alike (diffusers' `Attention`).
DIFFUSION_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class DiffusionLoraSettings(LoraSettings):
    """LoRA on the transformer (Flow-GRPO's FLUX/SD3 default r32, alpha 64; the paper's Wan run uses r64)."""

    r: int = Field(32, ge=1, description="Adapter rank.")
    alpha: int = Field(64, ge=1, description="LoRA alpha (the update is scaled by alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: str | list[str] = Field(
        default_factory=lambda: list(DIFFUSION_LORA_TARGETS),
        description="Module names (a list) or one regex over full names; default: attention projections.",
    )


class RewardSettings(_Strict):
    """Where the rewards come from: a reward server (`flexjudge serve`, POST /v1/rewards) or a `Judge`
    built in this process (a local model, or an OpenAI-compatible server through `base_url`)."""

    server_url: str | None = Field(None, description="Reward server URL; set it or `judge_model`, not both.")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the API key (of the reward server or `base_url`)."
    )
    judge_model: str | None = Field(None, description="In-process judge: the model name or directory.")
    backend: str = Field("auto", description="In-process judge backend (auto, transformers, openai).")
    base_url: str | None = Field(None, description="In-process judge over an OpenAI-compatible server.")
    swap: bool = Field(False, description="Judge each pair in both orders (Pref-GRPO: no).")
    alpha: float = Field(0.7, ge=0.0, le=1.0, description="A = alpha * A_dim + (1 - alpha) * A_overall.")
    timeout_s: float = Field(600.0, gt=0.0, description="Per request to a reward server.")

    @model_validator(mode="after")
    def _one_source(self) -> RewardSettings:
        if (self.server_url is None) == (self.judge_model is None):
            raise ValueError("set exactly one of reward.server_url and reward.judge_model")
        return self


class GrpoDiffusionSettings(_Strict):
    """GRPO (Flow-GRPO mechanics, Pref-GRPO rewards) on a diffusers flow-matching pipeline."""

    model: str = Field(description="A diffusers pipeline directory or cached hub id (FLUX, SD3 or Wan2.1).")
    prompts: str = Field(description="A text file with one prompt per line.")
    output_dir: str = Field(description="Checkpoints (the LoRA adapter, optimizer, state) go here.")
    reward: RewardSettings
    family: Literal["auto", "flux", "sd3", "wan"] = Field(
        "auto", description="auto: from the pipeline's class."
    )
    lora: DiffusionLoraSettings = Field(default_factory=lambda: DiffusionLoraSettings())
    group_size: int = Field(9, ge=2, description="G: samples per prompt, judged as one group (paper: 9).")
    prompts_per_step: int = Field(
        2, ge=1, description="Prompts (groups) sampled per step, over all ranks together."
    )
    groups_per_reward_batch: int = Field(
        1,
        ge=1,
        description="Groups sampled between reward submissions: each batch is judged while the next samples.",
    )
    overlap_rewards: bool = Field(
        True,
        description="Judge each reward batch while the next samples; False awaits each batch's rewards "
        "before the next samples (the serial baseline the overlap is measured against).",
    )
    num_inference_steps: int = Field(15, ge=2, description="Sampling steps (paper: 15 for FLUX.1-dev).")
    height: int = Field(512, ge=16, description="Image height (not in DESIGN.md; Flow-GRPO's 512).")
    width: int = Field(512, ge=16)
    num_frames: int = Field(81, ge=1, description="Video frames (Wan; Wan2.1 T2V's 81). Images ignore it.")
    guidance_scale: float = Field(
        3.5, ge=0.0, description="FLUX: the embedded guidance; SD3: classifier-free guidance (1 = off)."
    )
    max_sequence_length: int = Field(512, ge=1, description="T5 prompt tokens.")
    noise_level: float = Field(0.7, gt=0.0, description="SDE noise level a (Flow-GRPO's 0.7).")
    timestep_fraction: float = Field(
        0.6, gt=0.0, le=1.0, description="Share of the sampling steps trained each step, drawn at random."
    )
    clip_range: float = Field(1e-4, gt=0.0, description="PPO clip on the per-step log-prob ratio.")
    adv_clip_max: float = Field(5.0, gt=0.0, description="Advantages are clipped to +-this.")
    kl_beta: float = Field(
        0.0, ge=0.0, description="KL to the reference (LoRA off); paper: 0 FLUX, 0.004 Wan."
    )
    learning_rate: float = Field(3e-6, gt=0.0, description="Paper: 3e-6 (FLUX.1-dev).")
    weight_decay: float = Field(1e-4, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    train_batch_size: int = Field(1, ge=1, description="Samples per forward pass when training (per rank).")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches (of train_batch_size samples, all trained timesteps) per update."
    )
    max_steps: int = Field(100, ge=1, description="Steps (sample, judge, train) to run in all.")
    save_steps: int = Field(10, ge=1, description="Save a checkpoint every this many steps.")
    save_total_limit: int | None = Field(2, ge=1, description="Keep the newest N checkpoints (None: all).")
    resume: str = Field("auto", description="auto: the newest checkpoint in output_dir; never; or a path.")
    mixed_precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: accelerate's bf16 autocast.")
    model_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="The pipeline's weights as loaded (bf16 for FLUX.1-dev on one GPU)."
    )
    gradient_checkpointing: bool = False
    use_cpu: bool = Field(False, description="Train on the CPU even where a GPU exists (tests).")
    seed: int = 42

    @model_validator(mode="after")
    def _layout(self) -> GrpoDiffusionSettings:
        if self.prompts_per_step % self.groups_per_reward_batch:
            raise ValueError(
                f"prompts_per_step ({self.prompts_per_step}) must be a multiple of groups_per_reward_batch "
                f"({self.groups_per_reward_batch})"
            )
        return self
