"""training/sft.py, dpo.py and export.py: their config (fast), and real runs on the tiny local VLM (slow).

The slow tests run the scripts as a user does, in subprocesses (`accelerate launch` with one CPU process
for SFT, plain `python` for DPO), on datasets built here in exactly the format `flexjudge sft-data` and
`flexjudge dpo-pairs` write (TRAIN_CONTRACT.md), then export the result and judge with it through
`flexjudge judge --model DIR` under the constraint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from flexjudge.judging import THINKING_OFF
from training._config import (
    ConfigError,
    DpoSettings,
    SftSettings,
    load_settings,
    parse_overrides,
)

ROOT = Path(__file__).parent.parent
TRAINING = ROOT / "training"
KITES = [ROOT / "examples" / "images" / f"kite_{i}.png" for i in (1, 2)]
# A judgment in the Think format, short so that a CPU step stays cheap.
TRACE = (
    "<think>\n1. Semantic consistency:\n    Image 1 (6/10) - a kite, not red;\n"
    "    Image 2 (9/10) - a red kite over the sea\nTotal score:\nImage 1: 6=6\nImage 2: 9=9\n</think>\n"
    "<answer>Image 2 is better</answer>"
)
PROMPT_TEXT = "Compare Image 1 and Image 2 for the prompt: a red kite over the sea. Which is better?"

# ------------------------------------------------------------------------------------------ config (fast)


def test_overrides_are_read_as_typed_yaml_values_with_dotted_sections() -> None:
    got = parse_overrides(
        ["learning_rate=1e-3", "max_steps=7", "use_cpu=true", "max_length=null", "lora.r=8"]
    )
    assert got == {
        "learning_rate": "1e-3",
        "max_steps": 7,
        "use_cpu": True,
        "max_length": None,
        "lora": {"r": 8},
    }
    settings = load_settings(SftSettings, None, ["model=m", "data=d", "output_dir=o"])
    assert settings.learning_rate == 2.5e-6
    tuned = load_settings(
        SftSettings,
        None,
        ["model=m", "data=d", "output_dir=o", "learning_rate=1e-3", "lora.r=8", "max_steps=7"],
    )
    assert (tuned.learning_rate, tuned.lora.r, tuned.max_steps, tuned.lora.alpha) == (1e-3, 8, 7, 32)


def test_the_file_then_the_flags_then_set_each_win_over_the_one_before(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model: from-file\ndata: d\noutput_dir: o\nlearning_rate: 1.0e-5\nbeta: 0.3\n")
    settings = load_settings(DpoSettings, config, [], {"model": "from-flag", "data": None})
    assert (settings.model, settings.data, settings.learning_rate, settings.beta) == (
        "from-flag",
        "d",
        1e-5,
        0.3,
    )
    settings = load_settings(DpoSettings, config, ["model=from-set", "beta=0.2"], {"model": "from-flag"})
    assert (settings.model, settings.beta) == ("from-set", 0.2)


def test_shipped_configs_hold_the_papers_hyperparameters() -> None:
    for name, cls in (("sft", SftSettings), ("dpo", DpoSettings)):
        path = TRAINING / "configs" / f"{name}.yaml"
        raw = yaml.safe_load(path.read_text())
        settings = load_settings(cls, path, ["model=m", "data=d", "output_dir=o"])
        defaults = cls(model="m", data="d", output_dir="o")
        assert settings == defaults, f"{path} drifted from the {cls.__name__} defaults"
        assert set(raw) <= set(cls.model_fields), set(raw) - set(cls.model_fields)
        assert (settings.per_device_train_batch_size, settings.gradient_accumulation_steps) == (2, 2)
        assert (settings.learning_rate, settings.warmup_ratio, settings.max_length) == (2.5e-6, 0.1, None)
    assert (
        load_settings(
            DpoSettings, TRAINING / "configs" / "dpo.yaml", ["model=m", "data=d", "output_dir=o"]
        ).beta
        == 0.1
    )


@pytest.mark.parametrize(
    ("overrides", "key", "what"),
    [
        (["lerning_rate=1"], "lerning_rate", "did you mean 'learning_rate'"),
        (["lora.rank=4"], "lora.rank", "did you mean 'lora.r'"),
        (["max_steps=many"], "max_steps", "valid integer"),
        (["learning_rate=-1"], "learning_rate", "greater than 0"),
        (["finetune=qlora"], "finetune", "'full' or 'lora'"),
        (["model=null"], "model", "required"),
    ],
)
def test_a_bad_key_or_value_is_a_config_error_naming_it(overrides: list[str], key: str, what: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(SftSettings, None, ["model=m", "data=d", "output_dir=o", *overrides])
    line = next(line for line in str(caught.value).splitlines() if line.strip().startswith(f"{key}:"))
    assert what in line


def test_malformed_set_and_files_are_config_errors(tmp_path: Path) -> None:
    for bad in ("novalue", "=3", "a=[1,"):
        with pytest.raises(ConfigError):
            parse_overrides([bad])
    with pytest.raises(ConfigError):
        parse_overrides(["lora=3", "lora.r=4"])
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1,\n")
    for path in (listed, broken, tmp_path / "missing.yaml"):
        with pytest.raises(ConfigError):
            load_settings(SftSettings, path)


def test_datasets_load_in_each_layout_with_only_the_trainers_columns(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    from training import _common

    rows = Dataset.from_list([{"prompt": "p", "completion": "c", "images": "i", "id": "a", "label": "1"}])
    rows.save_to_disk(str(tmp_path / "split" / "train"))
    rows.save_to_disk(str(tmp_path / "split" / "eval"))
    rows.save_to_disk(str(tmp_path / "single"))
    DatasetDict({"train": rows, "test": rows}).save_to_disk(str(tmp_path / "dict"))
    columns = ["prompt", "completion", "images"]
    for layout, has_eval in (("split", True), ("single", False), ("dict", True)):
        train, evaluation = _common.load_splits(str(tmp_path / layout), columns, "SFT")
        assert train.column_names == columns and (evaluation is not None) == has_eval, layout
    with pytest.raises(ConfigError, match=r"lacks \['chosen', 'rejected'\]"):
        _common.load_splits(str(tmp_path / "single"), ["prompt", "chosen", "rejected", "images"], "DPO")
    with pytest.raises(ConfigError, match="no dataset"):
        _common.load_splits(str(tmp_path / "missing"), columns, "SFT")


def test_a_lora_adapter_given_as_model_is_refused_with_the_export_command(tmp_path: Path) -> None:
    from training import _common

    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"training/export\.py"):
        _common.check_model_dir(str(tmp_path), "model")
    _common.check_model_dir(str(tmp_path / "elsewhere"), "model")  # a model directory passes
    out = str(tmp_path / "out")
    settings = SftSettings(model="m", data="d", output_dir=out, resume="/no/such/checkpoint")
    with pytest.raises(ConfigError, match="resume"):
        _common.resume_from(settings)
    assert _common.resume_from(settings.model_copy(update={"resume": "auto"})) is None  # nothing yet: fresh


def _script(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, str(TRAINING / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.parametrize("name", ["sft.py", "dpo.py", "export.py"])
def test_each_script_answers_help(name: str) -> None:
    result = _script(name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: training/{name}")
    flags = ("--config", "--set", "--dry-run") if name != "export.py" else ("--out", "--base", "--dtype")
    assert all(flag in result.stdout for flag in flags)


def test_a_config_mistake_exits_2_with_one_line_per_problem_and_no_traceback() -> None:
    result = _script("sft.py", "--set", "lerning_rate=1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "lerning_rate: unknown key (did you mean 'learning_rate'?)" in result.stderr
    assert "model: required" in result.stderr


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2"])
def test_accelerate_configs_parse_with_accelerates_loader(name: str) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config: Any = load_config_from_file(str(TRAINING / "accelerate" / f"{name}.yaml"))
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED"}[name]
    assert str(config.distributed_type).split(".")[-1] == expected
    assert config.mixed_precision == "bf16" and config.num_processes >= 2
    if name == "deepspeed_zero2":
        assert config.deepspeed_config["zero_stage"] == 2
    if name == "fsdp":
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


# ------------------------------------------------------------------------------- the tiny datasets


def _images() -> list[Any]:
    from PIL import Image

    return [Image.open(path).convert("RGB") for path in KITES]


def _user_turn() -> list[dict[str, Any]]:
    # The contract's prompt: one user message, the images first (candidate 1 first), then the text.
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": PROMPT_TEXT}]
    return [{"role": "user", "content": content}]


def _assistant(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def _swapped(trace: str) -> str:
    """The same trace with the verdict for the other image (a wrong judgment, for DPO's rejected side)."""
    return trace.replace("<answer>Image 2 is better</answer>", "<answer>Image 1 is better</answer>")


def build_sft_data(root: Path, rows: int = 2) -> Path:
    """`flexjudge sft-data`'s layout and features: DIR/train and DIR/eval, TRL's conversational
    vision-language rows."""
    from datasets import Dataset

    from flexjudge.training.sft_data import sft_features

    def split(n: int, prefix: str) -> Any:
        return Dataset.from_list(
            [
                {
                    "prompt": _user_turn(),
                    "completion": _assistant(TRACE),
                    "images": _images(),
                    "id": f"{prefix}{i}",
                    "label": "2",
                    "chat_template_kwargs": THINKING_OFF,
                }
                for i in range(n)
            ],
            features=sft_features(THINKING_OFF),
        )

    split(rows, "t").save_to_disk(str(root / "train"))
    split(1, "e").save_to_disk(str(root / "eval"))
    return root


def build_dpo_data(root: Path, rows: int = 2) -> Path:
    """`flexjudge dpo-pairs`'s layout (DIR/train) and features: prompt, chosen, rejected, images, id, label,
    case, tie_breaker."""
    from datasets import Dataset

    from flexjudge.training.dpo_pairs import dpo_features

    Dataset.from_list(
        [
            {
                "prompt": _user_turn(),
                "chosen": _assistant(TRACE),
                "rejected": _assistant(_swapped(TRACE)),
                "images": _images(),
                "id": f"p{i}",
                "label": "2",
                "case": "one_correct",
                "tie_breaker": None,
                "chat_template_kwargs": THINKING_OFF,
            }
            for i in range(rows)
        ],
        features=dpo_features(THINKING_OFF),
    ).save_to_disk(str(root / "train"))
    return root


# ------------------------------------------------------------------------------ real runs (slow)

TRAIN_FAST = [  # a repeated batch of 2 rows, one optimizer step per batch, a rate that moves a tiny model
    "--set", "use_cpu=true",
    "--set", "per_device_train_batch_size=2",
    "--set", "gradient_accumulation_steps=1",
    "--set", "learning_rate=1e-3",
    "--set", "warmup_ratio=0",
    "--set", "logging_steps=1",
    "--set", "save_steps=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's cache for the subprocesses, built once for the module."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tiny(cache: Path) -> Path:
    from flexjudge.backends.tiny import build_tiny_model

    return build_tiny_model(cache / "tiny-base")


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FLEXJUDGE_BASE_URL"}
    env.update(
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        FLEXJUDGE_CACHE_DIR=str(cache),
        ACCELERATE_USE_CPU="1",
    )
    return env


def _run(cmd: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=_env(cache), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _train(script: str, cache: Path, *args: str, launcher: str = "python") -> dict[str, Any]:
    prefix = [sys.executable]
    if launcher == "accelerate":
        prefix += ["-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    _run([*prefix, str(TRAINING / script), *args], cache)
    output_dir = Path(args[args.index("--output-dir") + 1])
    summary: dict[str, Any] = json.loads((output_dir / "train_summary.json").read_text())
    return summary


def _losses(summary: dict[str, Any], after: int = 0) -> list[float]:
    return [h["loss"] for h in summary["losses"] if h["step"] > after]


def _judge(model: Path, cache: Path) -> Any:
    import flexjudge

    args = [
        "--model",
        str(model),
        "--max-string-length",
        "8",
        "--seed",
        "1",
        "--json",
        "--prompt",
        "a red kite",
    ]
    result = _run([sys.executable, "-m", "flexjudge.cli", "judge", *args, *map(str, KITES)], cache)
    judgment = flexjudge.Judgment.model_validate(json.loads(result.stdout))
    assert judgment.meta.constrained and judgment.verdict.winner in (1, 2)
    return judgment


@pytest.mark.slow
def test_sft_under_accelerate_learns_a_repeated_batch_resumes_and_its_export_judges(
    tiny: Path, cache: Path, tmp_path: Path
) -> None:
    data = build_sft_data(tmp_path / "sft")
    out = tmp_path / "sft-out"
    common = ["--model", str(tiny), "--data", str(data), "--output-dir", str(out), *TRAIN_FAST,
              "--set", "max_steps=4", "--set", "save_total_limit=null"]  # fmt: skip
    first = _train("sft.py", cache, *common, launcher="accelerate")
    losses = _losses(first)
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses), losses
    assert losses[2] < losses[0], losses  # the same batch again and again: the loss falls
    assert first["resumed_from"] is None and not first["bf16"]  # fp32 where there is no bf16 GPU
    assert (out / "checkpoint-4" / "model.safetensors").is_file()
    assert (out / "checkpoint-4" / "optimizer.pt").is_file()

    # A run killed after checkpoint-2 was written: the same command continues from checkpoint-2 and
    # steps 3 and 4 come out as they did in the uninterrupted run (weights, optimizer, schedule, RNG).
    for later in ("checkpoint-3", "checkpoint-4"):
        shutil.rmtree(out / later)
    (out / "model.safetensors").unlink()
    second = _train("sft.py", cache, *common, launcher="accelerate")
    assert second["resumed_from"] == str(out / "checkpoint-2")
    assert second["global_step"] == 4
    assert [h["step"] for h in second["losses"]] == [1, 2, 3, 4]  # steps 1-2 restored, not rerun
    assert second["losses"][:2] == first["losses"][:2]
    assert _losses(second, after=2) == pytest.approx(losses[2:], rel=1e-4)

    served = tmp_path / "served"
    _run([sys.executable, str(TRAINING / "export.py"), str(out), "--out", str(served)], cache)
    assert (served / "chat_template.jinja").is_file() and (served / "model.safetensors").is_file()
    processor_config = json.loads((served / "processor_config.json").read_text())
    assert processor_config["processor_class"] == "Qwen2_5_VLProcessor"  # a name vLLM knows
    assert json.loads((served / "config.json").read_text())["text_config"]["use_cache"] is True
    _judge(served, cache)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft's call
def test_sft_lora_export_merges_the_adapter_and_dpo_trains_on_the_merged_model(
    tiny: Path, cache: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    sft_out = tmp_path / "sft-lora"
    data = build_sft_data(tmp_path / "sft")
    args = ["--model", str(tiny), "--data", str(data), "--output-dir", str(sft_out), *TRAIN_FAST]
    lora = ["--set", "finetune=lora", "--set", "lora.r=4", "--set", "eval_steps=2"]
    summary = _train("sft.py", cache, *args, "--set", "max_steps=2", *lora)
    losses = _losses(summary)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses) and losses[1] < losses[0], losses
    evaluated = [m["eval_loss"] for m in summary.get("metrics", []) if "eval_loss" in m]
    assert len(evaluated) == 1 and math.isfinite(evaluated[0])  # the eval split, at step 2
    assert (sft_out / "adapter_config.json").is_file() and not (sft_out / "model.safetensors").exists()

    merged = tmp_path / "sft-merged"
    _run(
        [
            sys.executable,
            str(TRAINING / "export.py"),
            str(sft_out),
            "--out",
            str(merged),
            "--dtype",
            "float32",
        ],
        cache,
    )
    assert not (merged / "adapter_config.json").exists()
    # The merged weights compute what base + adapter compute, and differ from the base model's.
    ids = torch.tensor([[10, 20, 30, 40, 50]])
    with torch.no_grad():
        base = AutoModelForImageTextToText.from_pretrained(str(tiny), dtype=torch.float32).eval()
        base_logits = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, str(sft_out)).eval()
        adapter_logits = adapted(input_ids=ids).logits
        model = AutoModelForImageTextToText.from_pretrained(str(merged), dtype=torch.float32).eval()
        merged_logits = model(input_ids=ids).logits
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-4)

    # DPO, full finetuning, from the merged SFT model; the reference is that model, frozen: at step 1 the
    # policy equals it, so the DPO loss is exactly log 2.
    pairs = build_dpo_data(tmp_path / "pairs")
    dpo_out = tmp_path / "dpo"
    dpo = _train(
        "dpo.py", cache, "--model", str(merged), "--data", str(pairs), "--output-dir", str(dpo_out),
        *TRAIN_FAST, "--set", "max_steps=3",
    )  # fmt: skip
    losses = _losses(dpo)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), losses
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3)
    assert losses[-1] < losses[0], losses
    assert dpo["settings"]["beta"] == 0.1
    _judge(dpo_out / "checkpoint-3", cache)  # a full-finetuning checkpoint loads as it is


@pytest.mark.slow
def test_dpo_lora_uses_the_disabled_adapters_as_reference_and_resumes(
    tiny: Path, cache: Path, tmp_path: Path
) -> None:
    pairs = build_dpo_data(tmp_path / "pairs")
    out = tmp_path / "dpo-lora"
    common = ["--model", str(tiny), "--data", str(pairs), "--output-dir", str(out), *TRAIN_FAST,
              "--set", "finetune=lora", "--set", "lora.r=4", "--set", "learning_rate=5e-3"]  # fmt: skip
    common += ["--set", "max_steps=3", "--set", "save_total_limit=null"]
    first = _train("dpo.py", cache, *common)
    losses = _losses(first)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3)  # adapters start at zero: policy == reference
    assert losses[2] < losses[0], losses
    # Killed after checkpoint-2: the same command continues there, step 3 as in the uninterrupted run.
    shutil.rmtree(out / "checkpoint-3")
    (out / "adapter_model.safetensors").unlink()
    second = _train("dpo.py", cache, *common)
    assert second["resumed_from"] == str(out / "checkpoint-2") and second["global_step"] == 3
    assert _losses(second, after=2) == pytest.approx(losses[2:], rel=1e-4)
    served = tmp_path / "served"
    _run([sys.executable, str(TRAINING / "export.py"), str(out), "--out", str(served)], cache)
    _judge(served, cache)


@pytest.mark.slow
def test_qwen3_vl_sft_then_lora_dpo_from_its_output_then_export_judges(cache: Path, tmp_path: Path) -> None:
    from flexjudge.backends.tiny import build_tiny_model

    base = build_tiny_model(cache / "tiny-qwen3", arch="qwen3_vl")
    sft_out, dpo_out, served = tmp_path / "sft", tmp_path / "dpo", tmp_path / "served"
    data, pairs = build_sft_data(tmp_path / "sft-data"), build_dpo_data(tmp_path / "pairs")
    steps = [*TRAIN_FAST, "--set", "max_steps=2"]
    sft = _train("sft.py", cache, "--model", str(base), "--data", str(data), "--output-dir", str(sft_out),
                 *steps)  # fmt: skip
    assert _losses(sft)[1] < _losses(sft)[0], sft["losses"]
    # A full-finetuning output directory is a model: DPO starts from it as it is.
    lora = ["--set", "finetune=lora", "--set", "lora.r=4", "--set", "learning_rate=5e-3"]
    dpo = _train("dpo.py", cache, "--model", str(sft_out), "--data", str(pairs), "--output-dir", str(dpo_out),
                 *steps, *lora)  # fmt: skip
    losses = _losses(dpo)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3) and losses[1] < losses[0], losses
    _run([sys.executable, str(TRAINING / "export.py"), str(dpo_out), "--out", str(served)], cache)
    assert json.loads((served / "processor_config.json").read_text())["processor_class"] == "Qwen3VLProcessor"
    _judge(served, cache)


@pytest.mark.slow
def test_sft_loss_covers_the_completion_only(tiny: Path, tmp_path: Path) -> None:
    from transformers import AutoProcessor

    from training import sft

    settings = SftSettings(
        model=str(tiny),
        data=str(build_sft_data(tmp_path / "sft")),
        output_dir=str(tmp_path / "o"),
        use_cpu=True,
    )
    trainer: Any
    trainer, _ = sft.build_trainer(settings)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels = batch["labels"][0]
    learned = labels[labels != -100]
    tokenizer = AutoProcessor.from_pretrained(str(tiny)).tokenizer
    assert tokenizer.decode(learned).strip() == TRACE + "<|im_end|>"
    assert (labels != -100).sum() < (batch["attention_mask"][0] == 1).sum()  # the prompt is in the input


@pytest.mark.slow
@pytest.mark.parametrize("script", ["sft.py", "dpo.py"])
def test_dry_run_resolves_gpu_configs_without_loading_a_model(script: str, tmp_path: Path) -> None:
    result = _script(script, "--model", "Qwen/Qwen3-VL-8B-Instruct", "--data", str(tmp_path),
                     "--output-dir", str(tmp_path / "o"), "--set", "finetune=lora", "--dry-run")  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    trl = resolved["trl"]
    assert (trl["per_device_train_batch_size"], trl["gradient_accumulation_steps"]) == (2, 2)
    assert (trl["learning_rate"], trl["warmup_steps"], trl["max_length"]) == (2.5e-6, 0.1, None)
    assert resolved["settings"]["finetune"] == "lora"
    if script == "dpo.py":
        assert trl["beta"] == 0.1
    else:
        assert trl["completion_only_loss"] is True


# --------------------------------------------------------------------------- the README's commands


def _readme_commands() -> list[list[str]]:
    import re

    text = (TRAINING / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```console\n(.*?)```", text, re.S)
    lines = [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]
    from tests._recipe import shell_words  # without `CUDA_VISIBLE_DEVICES=...` and a trailing `&`

    return [shell_words(line.replace("$BASE", "base-model")) for line in lines]


def test_every_training_command_in_the_readme_resolves_its_flags_and_config() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    from training import dpo, export, grpo_diffusion, grpo_judge, sft
    from training._config import GrpoSettings
    from training._diffusion_config import GrpoDiffusionSettings

    scripts = {
        "training/sft.py": sft,
        "training/dpo.py": dpo,
        "training/export.py": export,
        "training/grpo_judge.py": grpo_judge,
        "training/grpo_diffusion.py": grpo_diffusion,
    }
    settings_of: dict[Any, Any] = {
        sft: SftSettings,
        dpo: DpoSettings,
        grpo_judge: GrpoSettings,
        grpo_diffusion: GrpoDiffusionSettings,
    }
    seen = set()
    for words in _readme_commands():
        script = next((w for w in words if w in scripts), None)
        if script is None:
            assert words[0] in ("flexjudge", "vllm"), words  # judged with, or served (GPU), not trained
            continue
        seen.add(script)
        if words[:2] == ["accelerate", "launch"] and "--config_file" in words:
            config = ROOT / words[words.index("--config_file") + 1]
            assert load_config_from_file(str(config)).num_processes >= 2
        elif words[:2] == ["accelerate", "launch"]:
            assert int(words[words.index("--num_processes") + 1]) >= 2, words
        else:
            assert words[0] == "python", words
        args = words[words.index(script) + 1 :]
        module: Any = scripts[script]
        parsed = module.build_parser().parse_args(args)
        if script != "training/export.py":
            flags = {k: vars(parsed).get(k) for k in ("model", "data", "prompts", "output_dir")}
            settings = load_settings(settings_of[module], parsed.config, parsed.overrides, flags)
            assert settings.model and settings.output_dir
    assert seen == set(scripts)
