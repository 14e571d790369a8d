"""Configuration of the training scripts: a YAML file, overridden on the command line, checked by pydantic.

One resolution order, the same for every script: the model's defaults (the paper's hyperparameters,
DESIGN.md section 3), then the YAML file (`--config`), then the flags (`--model`, `--data`,
`--output-dir`), then each `--set key=value` in the order given. A value given to `--set` is read as YAML
(`true`, `1e-3`, `null`, `[a, b]` become a bool, a float, None and a list), so overrides are typed like the
file; nested keys use dots (`lora.r=8`). An unknown key, a value of the wrong type or out of range is a
`ConfigError` naming the key, the bad value and, for a typo, the key meant; nothing starts on a bad config.

Only pydantic and PyYAML are imported here, so `--help` and config mistakes answer in well under a second.
"""

from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from flexjudge.errors import UsageError

__all__ = [
    "ConfigError",
    "DpoSettings",
    "GrpoSettings",
    "LoraSettings",
    "RewardSettings",
    "SftSettings",
    "TrainSettings",
    "add_arguments",
    "load_settings",
    "parse_overrides",
    "settings_from_args",
]

# The language model's projections only: the Qwen2.5-VL vision tower has `gate_proj`/`up_proj`/`down_proj`
# too, and adapting it is a different experiment. peft matches a string as a regex on the full module name.
DEFAULT_LORA_TARGETS = r".*\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class ConfigError(UsageError):
    """A configuration the scripts cannot run: a missing or unknown key, a wrong type, a bad file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class LoraSettings(_Strict):
    """LoRA adapter (used when `finetune: lora`)."""

    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (the update is scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: str | list[str] = Field(
        DEFAULT_LORA_TARGETS,
        description="Module names (a list) or one regex over full names; default: the language model's "
        "attention and MLP projections, not the vision tower.",
    )


class TrainSettings(_Strict):
    """What SFT and DPO share. Defaults are the paper's (batch 2, accumulation 2, lr 2.5e-6, warm-up 0.1)."""

    model: str = Field(description="Model directory or cached hub id (Qwen2.5-VL, Qwen3-VL).")
    data: str = Field(description="A dataset saved with `save_to_disk` (DIR, or DIR/train and DIR/eval).")
    output_dir: str = Field(description="Checkpoints and the final model go here.")
    finetune: Literal["full", "lora"] = Field("full", description="Train every weight, or a LoRA adapter.")
    lora: LoraSettings = Field(default_factory=lambda: LoraSettings())
    freeze_vision: bool = Field(False, description="Keep the vision tower's weights fixed (full finetuning).")
    per_device_train_batch_size: int = Field(2, ge=1)
    gradient_accumulation_steps: int = Field(2, ge=1)
    learning_rate: float = Field(2.5e-6, gt=0.0)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Share of the steps spent warming up.")
    lr_scheduler_type: str = Field("linear", description="transformers scheduler name.")
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    num_train_epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps (-1: epochs decide).")
    max_length: int | None = Field(
        None, ge=1, description="Token cap per example; None (the default) never cuts image tokens."
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 mixed precision on a GPU that has it, else fp32."
    )
    model_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Weights as loaded: float32 keeps exact master weights under bf16 autocast."
    )
    gradient_checkpointing: bool = False
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(500, ge=1, description="Save a checkpoint every this many steps.")
    save_total_limit: int | None = Field(2, ge=1, description="Keep the newest N checkpoints (None: all).")
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate every N steps when an eval split exists."
    )
    resume: str = Field(
        "auto", description="auto: continue from the newest checkpoint in output_dir; never; or a path."
    )
    seed: int = 42
    use_cpu: bool = Field(False, description="Train on the CPU even where a GPU exists (tests).")
    dataloader_num_workers: int = Field(0, ge=0)
    report_to: str | list[str] = Field("none", description="Trackers: none, tensorboard, wandb, ...")

    @field_validator("model", "data", "output_dir")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


class SftSettings(TrainSettings):
    """Supervised finetuning on distilled traces (`flexjudge sft-data`)."""

    completion_only_loss: bool = Field(True, description="Loss on the judgment only, never on the prompt.")


class DpoSettings(TrainSettings):
    """DPO on mined preference pairs (`flexjudge dpo-pairs`); the reference is the frozen starting model."""

    beta: float = Field(0.1, gt=0.0, description="DPO temperature (the paper's 0.1).")
    ref_model: str | None = Field(
        None,
        description="Reference model directory; None: a frozen copy of `model` (with LoRA: the model "
        "with its adapters disabled, no second copy).",
    )
    loss_type: str = Field("sigmoid", description="TRL DPO loss (sigmoid is the paper's DPO).")


class RewardSettings(_Strict):
    """The verifiable reward (`flexjudge.rewards.verdict_reward`): 1 for the label's winner, 0 for the
    other, `unreadable` when the completion does not read under the schema, minus `penalty` per finding."""

    penalty: float = Field(0.1, ge=0.0, description="Cost of each check() finding and of a repaired read.")
    unreadable: float = Field(0.0, description="Reward of a completion that does not parse.")


class GrpoSettings(TrainSettings):
    """GRPO of the judge on labelled pairs with the verifiable reward (TRL `GRPOTrainer`).

    The learning rate, batch, accumulation and warm-up defaults are the SFT/DPO ones (the paper gives no
    judge GRPO recipe); `num_generations` must divide per_device_train_batch_size x
    gradient_accumulation_steps x processes (TRL's generation batch)."""

    output_format: Literal["flex", "native"] = Field(
        "flex", description="The judgment format: the prompt asks for it and the reward parses it."
    )
    data_layout: str = Field(
        "flexjudge",
        description="Layout of labelled pairs (`flexjudge eval`'s: flexjudge, genai-bench-image, ...), "
        "read when `data` is not a dataset of rendered prompts.",
    )
    orders: Literal["both", "given"] = Field(
        "both", description="both: each pair in both candidate orders (label swapped), so no position pays."
    )
    frames_per_video: int = Field(8, ge=1, description="Frames the prompt shows per video candidate.")
    num_generations: int = Field(4, ge=2, description="G: completions sampled per prompt.")
    max_completion_length: int = Field(1024, ge=1, description="Token budget of one sampled judgment.")
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    beta: float = Field(0.0, ge=0.0, description="KL coefficient to the starting model (0: no reference).")
    epsilon: float = Field(0.2, gt=0.0, description="PPO clip range of the probability ratio.")
    num_iterations: int = Field(1, ge=1, description="Optimisation passes per generated batch.")
    loss_type: str = Field("dapo", description="TRL GRPO loss (grpo, dapo, dr_grpo, bnpo, ...).")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the group's (or batch's) reward std, or not."
    )
    reward: RewardSettings = Field(default_factory=lambda: RewardSettings())
    use_vllm: bool = Field(False, description="Sample with vLLM (colocate or server) instead of generate().")
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_server_base_url: str | None = Field(None, description="`trl vllm-serve` address in server mode.")
    modality: Literal["image", "video"] | None = Field(
        None, description="The constraint's modality (constrained runs: one modality per run)."
    )
    max_string_length: int | None = Field(
        None, ge=1, description="Bound on every string of the constraint (random-weight models only)."
    )
    # After use_vllm and modality: its validator reads them.
    constrained: bool = Field(
        False,
        description="Sample under the judgment schema (vLLM structured outputs; needs use_vllm and "
        "modality). Free generation by default: the reward scores invalid output as unreadable.",
    )
    generation_kwargs: dict[str, Any] | None = Field(
        None, description="Extra sampling arguments (transformers GenerationConfig or vLLM SamplingParams)."
    )
    log_completions: bool = False

    @field_validator("max_length")
    @classmethod
    def _no_cut(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError(
                "does not apply to GRPO: prompts are never cut (a cut drops image tokens); "
                "max_completion_length bounds the sampled judgment"
            )
        return value

    @field_validator("constrained")
    @classmethod
    def _constrainable(cls, value: bool, info: ValidationInfo) -> bool:
        if value and not info.data.get("use_vllm"):
            raise ValueError(
                "needs use_vllm: true (TRL 1.16 hands transformers' generate() no logits processor; "
                "see training/README.md, GRPO of the judge)"
            )
        if value and info.data.get("modality") is None:
            raise ValueError("needs modality: image or video (one schema per run)")
        return value


S = TypeVar("S", bound=TrainSettings)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["a=1", "lora.r=8"]` as a nested dict, each value read as YAML; later keys win."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: {raw!r} is not a YAML value ({exc})") from None
        # YAML 1.1 reads `1e-3` as a string; pydantic's float fields read that string as the number.
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
            node = child
        node[leaf] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values, not {type(loaded).__name__}")
    return loaded


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _known_keys(annotation, prefix + name + ".")
    return keys


def _required(model: type[BaseModel], loc: tuple[int | str, ...]) -> bool:
    field = model.model_fields.get(str(loc[0])) if len(loc) == 1 else None
    return field is not None and field.is_required()


def _explain(exc: ValidationError, model: type[BaseModel], source: str) -> ConfigError:
    known = _known_keys(model)
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"  {key}: unknown key{hint}")
        elif error["type"] == "missing" or (error.get("input") is None and _required(model, error["loc"])):
            lines.append(f"  {key}: required (set it in the YAML file or with --set {key}=...)")
        else:
            lines.append(f"  {key}: {error['msg']} (got {json.dumps(error.get('input'), default=str)})")
    return ConfigError(
        f"invalid {model.__name__.removesuffix('Settings')} config from {source}:\n" + "\n".join(lines)
    )


def load_settings(
    model: type[S],
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> S:
    """Settings from the YAML file `config`, then `flags` (None values skipped), then `overrides`."""
    data = _read_yaml(Path(config)) if config is not None else {}
    data = _merge(data, {k: v for k, v in (flags or {}).items() if v is not None})
    data = _merge(data, parse_overrides(overrides or []))
    source = f"{config}" if config is not None else "the command line"
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, model, source) from None


def add_arguments(parser: argparse.ArgumentParser, default_config: Path) -> None:
    """The flags every training script takes."""
    parser.add_argument(
        "--config", type=Path, default=default_config, help=f"YAML config (default: {default_config})."
    )
    parser.add_argument("--model", help="Model directory (overrides the config's `model`).")
    parser.add_argument("--data", help="Dataset directory (overrides the config's `data`).")
    parser.add_argument("--output-dir", dest="output_dir", help="Output directory (overrides `output_dir`).")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override one config key, the value read as YAML (repeatable): --set lora.r=8",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="Check the config, print it and the TRL arguments it becomes, and exit (no model loads).",
    )


def settings_from_args(model: type[S], args: argparse.Namespace) -> S:
    flags = {"model": args.model, "data": args.data, "output_dir": args.output_dir}
    return load_settings(model, args.config, args.overrides, flags)
