"""Supervised finetuning of a vision-language judge on distilled traces, with TRL's `SFTTrainer`.

    python training/sft.py --config training/configs/sft.yaml --model BASE --data SFT_DIR --output-dir OUT
    accelerate launch --config_file training/accelerate/ddp.yaml training/sft.py --config ...   (GPUs)

The data is what `flexjudge sft-data` writes: TRL's conversational vision-language rows (`prompt`,
`completion`, `images`). The loss covers the completion (the judgment) only; `max_length` is None by default
so no image token is ever cut. Full finetuning or LoRA (`finetune: lora`); bf16 mixed precision where the GPU
has it, else fp32. Checkpoints go to output_dir every `save_steps`; rerunning the same command continues
from the newest one (`resume: auto`). The final model (or adapter) and its processor are saved in
output_dir; `training/export.py` turns either into a model `flexjudge judge --model` and `vllm serve` load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `training` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training import _common
from training._config import SftSettings, add_arguments

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "sft.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="training/sft.py",
        description="SFT of a vision-language judge on `flexjudge sft-data` output (TRL SFTTrainer).",
    )
    add_arguments(parser, DEFAULT_CONFIG)
    return parser


def trl_config(settings: SftSettings, has_eval: bool) -> object:
    from trl import SFTConfig

    kwargs = _common.trainer_arguments(settings, has_eval)
    kwargs["completion_only_loss"] = settings.completion_only_loss
    return _common.make_trl_config(SFTConfig, kwargs)


def build_trainer(settings: SftSettings, resumed: str | None = None) -> tuple[object, object]:
    """(trainer, processor), ready to train: model, data, LoRA and arguments from the settings."""
    from trl import SFTTrainer

    _common.check_model_dir(settings.model, "model")
    train, evaluation = _common.load_splits(
        settings.data, ["prompt", "completion", "images"], "SFT reads `flexjudge sft-data` output"
    )
    processor = _common.load_processor(settings.model)
    train, evaluation = (_common.fit_template_kwargs(split, processor) for split in (train, evaluation))
    model = _common.load_model(_common.weights_to_load(settings, resumed), settings)
    trainer = SFTTrainer(
        model=model,
        args=trl_config(settings, evaluation is not None),  # type: ignore[arg-type]
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor,
        peft_config=_common.lora_config(settings),
    )
    return trainer, processor


def main(argv: list[str] | None = None) -> None:
    _common.train_main(argv, build_parser(), SftSettings, build_trainer, trl_config, "sft")


if __name__ == "__main__":
    _common.run_main(main)
