"""Export a trained judge for serving: one self-contained model directory.

    python training/export.py OUTPUT_OR_CHECKPOINT --out SERVE_DIR [--base BASE_MODEL] [--dtype bfloat16]

The input is what sft.py or dpo.py wrote (their output_dir or one `checkpoint-N` in it): a full model, or a
LoRA adapter, which is merged into its base model (read from the adapter's config, or `--base`). The
directory written holds the weights (safetensors), config and generation config, and beside them the
processor with its chat template, so that both of these load it as it is:

    flexjudge judge --model SERVE_DIR --prompt "..." a.png b.png
    vllm serve SERVE_DIR --limit-mm-per-prompt.image 16        (on a GPU machine)

Why the processor class is rewritten: where torchvision is missing, flexjudge loads Qwen-VL processors as
image-only subclasses, and a processor saves its own class name; vLLM and stock transformers do not know
those names, so the export names the stock class (flexjudge maps it back to the image-only one itself).
The directory is written beside the target and renamed into place, so a failed export leaves nothing a
server would take for a model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `training` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training import _common
from training._config import ConfigError

_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="training/export.py",
        description="Merge LoRA (if any); save a judge that `flexjudge judge` and `vllm serve` load.",
    )
    parser.add_argument(
        "checkpoint", type=Path, help="sft.py / dpo.py output_dir or one of its checkpoint-N."
    )
    parser.add_argument("--out", type=Path, required=True, help="The directory to write (must not exist).")
    parser.add_argument("--base", help="Base model of a LoRA adapter (default: the one its config names).")
    parser.add_argument(
        "--dtype",
        choices=("bfloat16", "float32"),
        default="bfloat16",
        help="Weights as saved (default bfloat16).",
    )
    parser.add_argument("--force", action="store_true", help="Replace --out if it exists.")
    return parser


def _adapter_base(checkpoint: Path, base: str | None) -> str:
    if base is not None:
        return base
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    named = config.get("base_model_name_or_path")
    if not named:
        raise ConfigError(f"the adapter in {checkpoint} names no base model: pass --base")
    return str(named)


def load_merged(checkpoint: Path, base: str | None) -> tuple[Any, str]:
    """(model with any LoRA merged in, directory its processor comes from)."""
    import torch
    from transformers import AutoModelForImageTextToText

    auto_model: Any = AutoModelForImageTextToText
    if (checkpoint / "adapter_config.json").is_file():
        from peft import PeftModel

        base_path = _adapter_base(checkpoint, base)
        # Merge in float32: adding a low-rank update to bf16 weights would round it away.
        model = auto_model.from_pretrained(base_path, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, str(checkpoint)).merge_and_unload()
        has_processor = any((checkpoint / name).is_file() for name in _PROCESSOR_FILES)
        return model, str(checkpoint) if has_processor else base_path
    if not (checkpoint / "config.json").is_file():
        raise ConfigError(f"{checkpoint} holds neither a model (config.json) nor a LoRA adapter")
    return auto_model.from_pretrained(str(checkpoint), dtype=torch.float32), str(checkpoint)


def _stock_processor_class(out: Path) -> None:
    from flexjudge.backends import tiny

    image_only = {cls.__name__: cls for cls in map(tiny.image_only_processor_class, _model_types()) if cls}
    for name in (*_PROCESSOR_FILES, "tokenizer_config.json"):
        path = out / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        cls = image_only.get(data.get("processor_class", ""))
        if cls is not None:
            data["processor_class"] = cls.__mro__[1].__name__  # the stock class it subclasses
            path.write_text(json.dumps(data, indent=2) + "\n")


def _model_types() -> list[str]:
    return ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"]


def export(
    checkpoint: Path, out: Path, *, base: str | None = None, dtype: str = "bfloat16", force: bool = False
) -> Path:
    import torch

    if not checkpoint.is_dir():
        raise ConfigError(f"no checkpoint directory at {checkpoint}")
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out} exists and is not empty: choose another --out or pass --force")
    model, processor_dir = load_merged(checkpoint, base)
    processor = _common.load_processor(processor_dir)
    model.config.use_cache = True  # training switched the KV cache off; serving needs it
    model = model.to(torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        if not (staging / "chat_template.jinja").is_file():
            raise ConfigError(
                f"the processor from {processor_dir} has no chat template: a served judge needs one"
            )
        _stock_processor_class(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    out = export(args.checkpoint, args.out, base=args.base, dtype=args.dtype, force=args.force)
    print(f"exported to {out}")


if __name__ == "__main__":
    _common.run_main(main)
