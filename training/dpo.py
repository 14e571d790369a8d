"""DPO of a vision-language judge on mined preference pairs, with TRL's `DPOTrainer`.

    python training/dpo.py --config training/configs/dpo.yaml --model SFT --data PAIRS --output-dir OUT
    accelerate launch --config_file training/accelerate/ddp.yaml training/dpo.py --config ...   (GPUs)

The data is what `flexjudge dpo-pairs` writes (`prompt`, `chosen`, `rejected`, `images`). `model` is the SFT
model (merged: run `training/export.py` on a LoRA output first). The reference is that model, frozen, as in
the paper (beta 0.1): a second copy for full finetuning (or `ref_model` when set), the same weights with
the adapters disabled under LoRA. Checkpoints, resume, precision and the final save work as in sft.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `training` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training import _common
from training._config import DpoSettings, add_arguments

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "dpo.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="training/dpo.py",
        description="DPO of a vision-language judge on `flexjudge dpo-pairs` output (TRL DPOTrainer).",
    )
    add_arguments(parser, DEFAULT_CONFIG)
    return parser


def trl_config(settings: DpoSettings, has_eval: bool) -> object:
    from trl import DPOConfig

    kwargs = _common.trainer_arguments(settings, has_eval)
    kwargs.update(beta=settings.beta, loss_type=[settings.loss_type])
    return _common.make_trl_config(DPOConfig, kwargs)


def build_trainer(settings: DpoSettings, resumed: str | None = None) -> tuple[object, object]:
    """(trainer, processor), ready to train, with the frozen reference the settings name."""
    from trl import DPOTrainer

    _common.check_model_dir(settings.model, "model")
    train, evaluation = _common.load_splits(
        settings.data, ["prompt", "chosen", "rejected", "images"], "DPO reads `flexjudge dpo-pairs` output"
    )
    processor = _common.load_processor(settings.model)
    train, evaluation = (_common.fit_template_kwargs(split, processor) for split in (train, evaluation))
    model = _common.load_model(_common.weights_to_load(settings, resumed), settings)
    reference = None
    if settings.finetune == "full" or settings.ref_model is not None:
        # Full finetuning needs its own frozen copy (TRL refuses the same object); LoRA disables the
        # adapters instead unless another reference was asked for.
        ref_path = settings.ref_model or settings.model
        _common.check_model_dir(ref_path, "ref_model")
        reference = _common.load_model(ref_path, settings).eval()
        reference.requires_grad_(False)
    trainer = DPOTrainer(
        model=model,
        ref_model=reference,
        args=trl_config(settings, evaluation is not None),  # type: ignore[arg-type]
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor,
        peft_config=_common.lora_config(settings),
    )
    return trainer, processor


def main(argv: list[str] | None = None) -> None:
    _common.train_main(argv, build_parser(), DpoSettings, build_trainer, trl_config, "dpo")


if __name__ == "__main__":
    _common.run_main(main)
