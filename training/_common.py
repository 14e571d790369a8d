"""What the SFT and DPO scripts share: loading the model, processor and data, the TRL arguments, resume,
the final save and a summary of the run.

torch, transformers and TRL are imported inside the functions, so `--help` and config errors stay fast.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from flexjudge.errors import FlexjudgeError
from training._config import ConfigError, TrainSettings, settings_from_args

Settings = TypeVar("Settings", bound=TrainSettings)

SUMMARY = "train_summary.json"
"""Written into output_dir at the end of a run: steps, losses, where it resumed from."""


def load_processor(path: str) -> Any:
    """The model's processor; the image-only one where the stock processor cannot load (no torchvision)."""
    from transformers import AutoConfig, AutoProcessor

    from flexjudge.backends import tiny

    tiny.register_processors()  # saved tiny models name the image-only processors
    auto_processor: Any = AutoProcessor
    try:
        processor = auto_processor.from_pretrained(path)
    except Exception:  # stock Qwen-VL processors need torchvision for their video processor
        processor = None
    if processor is None or not hasattr(processor, "image_processor"):
        model_type = getattr(AutoConfig.from_pretrained(path), "model_type", "")
        image_only = tiny.image_only_processor_class(model_type)
        if image_only is None:
            raise ConfigError(f"{path} has no image processor: the scripts train vision-language models")
        processor = image_only.from_pretrained(path)
    return processor


def load_model(path: str, settings: TrainSettings) -> Any:
    import torch
    from transformers import AutoModelForImageTextToText

    auto_model: Any = AutoModelForImageTextToText
    dtype = torch.bfloat16 if settings.model_dtype == "bfloat16" else torch.float32
    model = auto_model.from_pretrained(path, dtype=dtype)
    model.config.use_cache = False  # the KV cache is for generation; training recomputes everything
    if settings.freeze_vision:
        for name, parameter in model.named_parameters():
            if ".visual." in f".{name}":
                parameter.requires_grad_(False)
    return model


def load_splits(data: str, columns: list[str], reader: str) -> tuple[Any, Any]:
    """(train, eval or None) from DIR/train + DIR/eval (what `flexjudge sft-data` writes), a saved
    DatasetDict, or one saved Dataset; only `columns` are kept (TRL's collators refuse any other, such as
    `id`, `label` or `case`, and the vision columns stop the trainer from dropping them itself)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    root = Path(data)
    if not root.exists():
        raise ConfigError(f"no dataset at {root}")
    if (root / "train").is_dir() and not (root / "dataset_dict.json").exists():
        train = load_from_disk(str(root / "train"))
        evaluation = load_from_disk(str(root / "eval")) if (root / "eval").is_dir() else None
    else:
        loaded = load_from_disk(str(root))
        if isinstance(loaded, DatasetDict):
            if "train" not in loaded:
                raise ConfigError(f"the dataset at {root} has no train split (splits: {list(loaded)})")
            train, evaluation = loaded["train"], loaded.get("eval", loaded.get("test"))
        else:
            train, evaluation = loaded, None
    if not isinstance(train, Dataset) or len(train) == 0:
        raise ConfigError(f"the train split at {root} is empty")
    if evaluation is not None and len(evaluation) == 0:
        evaluation = None
    splits = []
    for split in (train, evaluation):
        if split is None:
            splits.append(None)
            continue
        missing = sorted(set(columns) - set(split.column_names))
        if missing:
            raise ConfigError(
                f"the dataset at {root} lacks {missing}: {reader} (it has {split.column_names})"
            )
        # The rows' chat-template arguments travel with them, when they have any (`fit_template_kwargs`).
        kept = [*columns, TEMPLATE_KWARGS] if TEMPLATE_KWARGS in split.column_names else columns
        splits.append(split.select_columns(kept))
    return splits[0], splits[1]


TEMPLATE_KWARGS = "chat_template_kwargs"


def fit_template_kwargs(split: Any, processor: Any) -> Any:
    """`split` with each row's `chat_template_kwargs` cut to what `processor`'s chat template reads, the
    rule the transformers backend applies when it judges (an argument the template does not read only
    earns a warning from transformers); without the column when the template reads none of them."""
    from datasets import Features

    from flexjudge.backends.transformers import template_variables

    if split is None or TEMPLATE_KWARGS not in split.column_names:
        return split
    given = split.features[TEMPLATE_KWARGS]
    keys = [key for key in given if key in template_variables(processor)]
    if not keys:
        return split.remove_columns(TEMPLATE_KWARGS)
    if len(keys) == len(given):
        return split
    features = Features({**split.features, TEMPLATE_KWARGS: {key: given[key] for key in keys}})
    return split.map(
        lambda row: {TEMPLATE_KWARGS: {key: row[key] for key in keys}},
        input_columns=[TEMPLATE_KWARGS],
        features=features,
    )


def use_bf16(settings: TrainSettings) -> bool:
    if settings.precision != "auto":
        return settings.precision == "bf16"
    import torch

    return not settings.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def trainer_arguments(settings: TrainSettings, has_eval: bool) -> dict[str, Any]:
    """The TrainingArguments both TRL configs take, from the settings."""
    evaluate = has_eval and settings.eval_steps is not None
    return {
        "output_dir": settings.output_dir,
        "per_device_train_batch_size": settings.per_device_train_batch_size,
        "per_device_eval_batch_size": settings.per_device_train_batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "learning_rate": settings.learning_rate,
        "warmup_steps": settings.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the steps
        "lr_scheduler_type": settings.lr_scheduler_type,
        "weight_decay": settings.weight_decay,
        "max_grad_norm": settings.max_grad_norm,
        "num_train_epochs": settings.num_train_epochs,
        "max_steps": settings.max_steps,
        "max_length": settings.max_length,
        "bf16": use_bf16(settings),
        "fp16": False,
        "activation_checkpointing": settings.gradient_checkpointing,
        "activation_checkpointing_kwargs": {"use_reentrant": False}
        if settings.gradient_checkpointing
        else None,
        "logging_steps": settings.logging_steps,
        "save_strategy": "steps",
        "save_steps": settings.save_steps,
        "save_total_limit": settings.save_total_limit,
        "eval_strategy": "steps" if evaluate else "no",
        "eval_steps": settings.eval_steps if evaluate else None,
        "seed": settings.seed,
        "use_cpu": settings.use_cpu,
        "dataloader_num_workers": settings.dataloader_num_workers,
        "report_to": settings.report_to,
        # The vision columns (`images`) must reach TRL's collator.
        "remove_unused_columns": False,
    }


def make_trl_config(config_class: type[Any], kwargs: dict[str, Any]) -> Any:
    try:
        return config_class(**kwargs)
    except ValueError as exc:  # TRL/transformers check combinations of arguments when they are built
        raise ConfigError(f"TRL refused the arguments: {exc}") from None


def lora_config(settings: TrainSettings) -> Any:
    if settings.finetune != "lora":
        return None
    from peft import LoraConfig

    lora = settings.lora
    targets = lora.target_modules
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        task_type="CAUSAL_LM",
    )


def resume_from(settings: TrainSettings) -> str | None:
    """The checkpoint to continue from: `resume: auto` takes the newest in output_dir (None when there is
    none, a fresh run), `never` none, anything else is a checkpoint directory that must exist."""
    if settings.resume == "never":
        return None
    if settings.resume == "auto":
        from transformers.trainer_utils import get_last_checkpoint

        out = Path(settings.output_dir)
        return get_last_checkpoint(str(out)) if out.is_dir() else None
    if not Path(settings.resume).is_dir():
        raise ConfigError(f"resume: no checkpoint directory at {settings.resume}")
    return settings.resume


def weights_to_load(settings: TrainSettings, resumed: str | None) -> str:
    """Where the trained model's weights come from: the checkpoint when a full-finetuning run resumes.

    Why not leave it to the Trainer: transformers 5.24 saves Qwen-VL checkpoints under the checkpoint key
    names (`model.layers.*`, `visual.*`) but its resume loads them with `load_state_dict(strict=False)`,
    which matches none of the module names (`model.language_model.layers.*`) and silently keeps the
    starting weights (found by the resume test: steps after a resume did not match the uninterrupted
    run). `from_pretrained` converts the names; the Trainer's own load then matches nothing and changes
    nothing, and it still restores the optimizer, scheduler, RNG and step."""
    if resumed is not None and settings.finetune == "full":
        return resumed
    return settings.model


def check_model_dir(path: str, role: str) -> None:
    """A LoRA output is an adapter, not a model: say how to get a model from it."""
    if (Path(path) / "adapter_config.json").is_file():
        raise ConfigError(
            f"{role} {path} is a LoRA adapter, not a model: merge it first with "
            f"`python training/export.py {path} --out MERGED_DIR`, then point {role} at MERGED_DIR"
        )


def finish(
    trainer: Any, processor: Any, settings: TrainSettings, resumed: str | None, script: str
) -> dict[str, Any]:
    """Save the final model (the adapter alone under LoRA) with its processor, and the run's summary."""
    trainer.save_model(settings.output_dir)
    logs = trainer.state.log_history
    losses = [{"step": h["step"], "loss": h["loss"]} for h in logs if "loss" in h]
    summary: dict[str, Any] = {
        "script": script,
        "global_step": trainer.state.global_step,
        "resumed_from": resumed,
        "losses": losses,
        "finite": all(math.isfinite(h["loss"]) for h in losses),
        "finetune": settings.finetune,
        "bf16": bool(trainer.args.bf16),
        "settings": settings.model_dump(),
    }
    extra = [
        {k: v for k, v in h.items() if k.startswith(("rewards/", "logps/", "eval_"))} | {"step": h["step"]}
        for h in logs
        if any(k.startswith(("rewards/", "eval_")) for k in h)
    ]
    if extra:
        summary["metrics"] = extra
    if trainer.is_world_process_zero():
        processor.save_pretrained(settings.output_dir)
        Path(settings.output_dir, SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def dry_run(settings: TrainSettings, trl_config: Any) -> None:
    resolved = {"settings": settings.model_dump(), "trl": json.loads(trl_config.to_json_string())}
    print(json.dumps(resolved, indent=2))


def train_main(
    argv: list[str] | None,
    parser: argparse.ArgumentParser,
    settings_class: type[Settings],
    build_trainer: Callable[[Settings, str | None], tuple[Any, Any]],
    trl_config: Callable[..., Any],
    script: str,
) -> None:
    """The body of every TRL script's `main`: settings from the command line; with `--dry-run` the
    trainer's arguments printed and nothing else; otherwise train (resuming the newest checkpoint when the
    settings say so) and save the model and processor."""
    args = parser.parse_args(argv)
    settings = settings_from_args(settings_class, args)
    if args.dry_run:
        dry_run(settings, trl_config(settings, has_eval=False))
        return
    resumed = resume_from(settings)
    trainer, processor = build_trainer(settings, resumed)
    trainer.train(resume_from_checkpoint=resumed)
    finish(trainer, processor, settings, resumed, script)


def run_main(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a script's main; a flexjudge error is one line on stderr and exit status 2, not a traceback."""
    try:
        main(argv)
    except FlexjudgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
