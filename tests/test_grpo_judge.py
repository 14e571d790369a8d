"""training/grpo_judge.py: its config and data (fast), and real GRPO runs on the tiny local VLM (slow).

The slow runs go through the script as a user runs it (a subprocess; `accelerate launch` for the LoRA run)
with flexjudge's real verifiable reward. A random tiny model never writes a judgment, so every completion
would score the same and GRPO's advantages (and gradients) would all be zero; the runs therefore steer the
sampler with transformers' `sequence_bias` (through the script's `generation_kwargs`) towards two short
flex judgments that differ in their winner. Sampling at temperature 1 still strays from them, so a group
holds correct, wrong and unreadable judgments, and the rewards differ within it. The bias is a test
device: it makes the sampler differ from the policy whose log-probabilities TRL computes, as a
constraint would (see training/README.md).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from training._config import ConfigError, GrpoSettings, load_settings

ROOT = Path(__file__).parent.parent
TRAINING = ROOT / "training"
SCRIPT = TRAINING / "grpo_judge.py"
KITES = [ROOT / "examples" / "images" / f"kite_{i}.png" for i in (1, 2)]
BASE = ["model=m", "data=d", "output_dir=o"]

# ------------------------------------------------------------------------------------------ config (fast)


def test_the_shipped_config_is_the_settings_defaults() -> None:
    path = TRAINING / "configs" / "grpo_judge.yaml"
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= set(GrpoSettings.model_fields), set(raw) - set(GrpoSettings.model_fields)
    settings = load_settings(GrpoSettings, path, BASE)
    assert settings == GrpoSettings(model="m", data="d", output_dir="o")
    assert (settings.learning_rate, settings.per_device_train_batch_size, settings.warmup_ratio) == (
        2.5e-6,
        2,
        0.1,
    )
    assert not settings.constrained and settings.beta == 0.0 and settings.reward.penalty == 0.1


@pytest.mark.parametrize(
    ("overrides", "key", "what"),
    [
        (["num_generatons=3"], "num_generatons", "did you mean 'num_generations'"),
        (["reward.penalti=1"], "reward.penalti", "did you mean 'reward.penalty'"),
        (["num_generations=1"], "num_generations", "greater than or equal to 2"),
        (["output_format=think"], "output_format", "'flex' or 'native'"),
        (["max_length=512"], "max_length", "max_completion_length"),
        (["constrained=true"], "constrained", "use_vllm"),
        (["use_vllm=true", "constrained=true"], "constrained", "modality"),
    ],
)
def test_a_bad_key_or_value_is_a_config_error_naming_it(overrides: list[str], key: str, what: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(GrpoSettings, None, [*BASE, *overrides])
    line = next(line for line in str(caught.value).splitlines() if line.strip().startswith(f"{key}:"))
    assert what in line


def test_constrained_sampling_hands_vllm_the_judges_own_schema() -> None:
    from flexjudge.reading import pair_request_constraint
    from training import grpo_judge

    free = load_settings(GrpoSettings, None, BASE)
    assert grpo_judge.generation_kwargs(free) is None
    settings = load_settings(
        GrpoSettings,
        None,
        [*BASE, "use_vllm=true", "modality=video", "constrained=true", "generation_kwargs={top_k: 5}"],
    )
    extra = grpo_judge.generation_kwargs(settings)
    assert extra is not None and extra["top_k"] == 5
    schema = pair_request_constraint("video", "flex", (), None).schema
    assert extra["structured_outputs"] == {"json": schema, "disable_any_whitespace": True}


@pytest.mark.slow  # a subprocess: about 1.5 s of CPU, 6 s on a busy machine
def test_a_config_mistake_exits_2_naming_the_key_without_a_traceback() -> None:
    result = _script("--set", "num_generatons=3")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "num_generatons: unknown key (did you mean 'num_generations'?)" in result.stderr
    assert "model: required" in result.stderr


def test_pairs_become_judge_prompts_in_both_orders_with_the_label_following_and_ties_dropped(
    tmp_path: Path,
) -> None:
    from flexjudge.training.sft_data import conversation, pair_request, prompt_judge
    from training import grpo_judge

    pairs = write_pairs(tmp_path / "pairs.jsonl")
    settings = load_settings(GrpoSettings, None, [f"data={pairs}", "model=m", f"output_dir={tmp_path}"])
    skipped: Counter[str] = Counter()
    rows = list(grpo_judge._rows(settings, skipped))
    assert skipped == {"tie": 1}
    shown = [(r["id"], r["label"]) for r in rows]
    assert shown == [("a", "2"), ("a/swapped", "1"), ("b", "1"), ("b/swapped", "2")]
    # The prompt is the request judge() sends for that order: its images, candidate 1 first.
    request = pair_request(prompt_judge("flex"), "a red kite", [str(KITES[1]), str(KITES[0])], "image")
    expected, images = conversation(request.messages)
    assert rows[1]["prompt"] == expected
    assert [i.tobytes() for i in rows[1]["images"]] == [i.tobytes() for i in images]
    assert rows[0]["images"][0].tobytes() == rows[1]["images"][1].tobytes()
    assert "a red kite" in expected[-1]["content"][-1]["text"]
    given = settings.model_copy(update={"orders": "given"})
    assert [r["id"] for r in grpo_judge._rows(given, Counter())] == ["a", "b"]


# --------------------------------------------------------------------------------------------- helpers


def write_pairs(path: Path) -> Path:
    """Labelled pairs in the flexjudge layout (what `flexjudge eval` reads), one of them a tie."""
    kite_1, kite_2 = (str(p.resolve()) for p in KITES)
    lines = [
        {"id": "a", "prompt": "a red kite", "candidates": [kite_1, kite_2], "label": 2},
        {"id": "b", "prompt": "a kite over the sea", "candidates": [kite_2, kite_1], "label": 1},
        {"id": "t", "prompt": "two kites", "candidates": [kite_1, kite_2], "label": "tie"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _judgment(winner: int) -> str:
    """A short flex judgment that reads (with three criteria-count warnings) and names `winner` overall."""
    template = json.loads((ROOT / "examples" / "outputs" / "flex_image.json").read_text())
    categories = [
        {
            "name": category["name"],
            "dims": [{"name": f"d{k}", "reason_1": f"a{k}", "reason_2": f"b{k}", "score_1": 7, "score_2": 3}],
            "cat_reason": f"c{k}{k}",  # distinct text per category keeps the steering unambiguous
            "cat_winner": "Image 1",
        }
        for k, category in enumerate(template["categories"][:3])
    ]
    doc = {"prompt": "p", "categories": categories, "reason": "r", "winner": f"Image {winner}"}
    return json.dumps(doc, separators=(",", ":"))


def steering_config(model: Path, path: Path, context: int = 16) -> Path:
    """A config whose `generation_kwargs.sequence_bias` favours, after the assistant turn opens, the tokens
    of `_judgment(1)` or `_judgment(2)` (each next token given the previous `context` ones)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    head = tokenizer.encode("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    sequences = set()
    for winner in (1, 2):
        ids = [*head, *tokenizer.encode(_judgment(winner), add_special_tokens=False), end]
        sequences |= {tuple(ids[max(0, i - context) : i + 1]) for i in range(len(head), len(ids))}
    bias = [[list(s), 12.0] for s in sorted(sequences)]
    path.write_text(yaml.safe_dump({"generation_kwargs": {"sequence_bias": bias}}))
    return path


def _env(cache: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FLEXJUDGE_BASE_URL"}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", ACCELERATE_USE_CPU="1")
    if cache is not None:
        env["FLEXJUDGE_CACHE_DIR"] = str(cache)
    return env


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=_env()
    )


def _run(cmd: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=_env(cache), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


STEPS = [  # one prompt's group of 4 per optimizer step, a rate that moves a tiny model
    "--set", "use_cpu=true",
    "--set", "per_device_train_batch_size=4",
    "--set", "gradient_accumulation_steps=1",
    "--set", "num_generations=4",
    "--set", "max_completion_length=200",
    "--set", "learning_rate=1e-3",
    "--set", "warmup_ratio=0",
    "--set", "logging_steps=1",
    "--set", "save_steps=1",
    "--set", "save_total_limit=null",
]  # fmt: skip


def _train(cache: Path, *args: str, accelerate: bool = False) -> dict[str, Any]:
    prefix = [sys.executable]
    if accelerate:
        prefix += ["-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    _run([*prefix, str(SCRIPT), *args], cache)
    output_dir = Path(args[args.index("--output-dir") + 1])
    summary: dict[str, Any] = json.loads((output_dir / "train_summary.json").read_text())
    return summary


def _rewards(summary: dict[str, Any]) -> list[tuple[float, float]]:
    return [
        (m["rewards/flexjudge_verdict/mean"], m["rewards/flexjudge_verdict/std"])
        for m in summary.get("metrics", [])
        if "rewards/flexjudge_verdict/mean" in m
    ]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tiny(cache: Path) -> Path:
    from flexjudge.backends.tiny import build_tiny_model

    return build_tiny_model(cache / "tiny-base")


# ------------------------------------------------------------------------------------ real runs (slow)


@pytest.mark.slow
def test_two_full_steps_learn_from_the_reward_resume_and_the_checkpoint_judges(
    tiny: Path, cache: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForImageTextToText

    pairs = write_pairs(tmp_path / "pairs.jsonl")
    config = steering_config(tiny, tmp_path / "steer.yaml")
    out = tmp_path / "out"
    common = ["--config", str(config), "--model", str(tiny), "--data", str(pairs), "--output-dir", str(out),
              *STEPS, "--set", "max_steps=2"]  # fmt: skip
    first = _train(cache, *common)
    losses = [h["loss"] for h in first["losses"]]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
    rewards = _rewards(first)
    # The reward reached TRL and differed within a group (else no gradient at all).
    assert len(rewards) == 2 and any(std > 0 for _, std in rewards), rewards
    stats = json.loads((out / "grpo-data" / "stats.json").read_text())
    assert (stats["rows"], stats["skipped"]) == (4, {"tie": 1})

    base = AutoModelForImageTextToText.from_pretrained(str(tiny), dtype=torch.float32).state_dict()
    trained = AutoModelForImageTextToText.from_pretrained(str(out / "checkpoint-2"), dtype=torch.float32)
    moved = [k for k, v in trained.state_dict().items() if not torch.equal(v, base[k])]
    assert any(".language_model." in k for k in moved), "no weight of the language model changed"

    # Killed after checkpoint-1: the same command continues there and stops at step 2.
    shutil.rmtree(out / "checkpoint-2")
    (out / "model.safetensors").unlink()
    second = _train(cache, *common)
    assert second["resumed_from"] == str(out / "checkpoint-1") and second["global_step"] == 2
    assert second["losses"][0] == first["losses"][0]  # step 1 restored from the log, not rerun

    # A full-finetuning checkpoint is a model: flexjudge judges with it as it is.
    import flexjudge

    judged = _run(
        [sys.executable, "-m", "flexjudge.cli", "judge", "--model", str(out / "checkpoint-2"),
         "--max-string-length", "8", "--seed", "1", "--json", "--prompt", "a red kite", *map(str, KITES)],
        cache,
    )  # fmt: skip
    judgment = flexjudge.Judgment.model_validate(json.loads(judged.stdout))
    assert judgment.meta.constrained and judgment.verdict.winner in (1, 2)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_lora_under_accelerate_trains_the_adapter_on_prepared_prompts(
    tiny: Path, cache: Path, tmp_path: Path
) -> None:
    from datasets import Dataset
    from safetensors.torch import load_file

    from training import grpo_judge

    # Rendered prompts, as `flexjudge sft-data` writes them (here without completions: GRPO needs none).
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    settings = load_settings(GrpoSettings, None, [f"data={pairs}", "model=m", f"output_dir={tmp_path}"])
    rows = list(grpo_judge._rows(settings, Counter()))
    prepared = tmp_path / "prepared"
    Dataset.from_list(rows, features=grpo_judge._features()).save_to_disk(str(prepared / "train"))

    config = steering_config(tiny, tmp_path / "steer.yaml")
    out = tmp_path / "lora"
    summary = _train(
        cache, "--config", str(config), "--model", str(tiny), "--data", str(prepared),
        "--output-dir", str(out), *STEPS, "--set", "max_steps=2", "--set", "finetune=lora",
        "--set", "lora.r=4", "--set", "seed=3",
        accelerate=True,
    )  # fmt: skip
    losses = [h["loss"] for h in summary["losses"]]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
    assert any(std > 0 for _, std in _rewards(summary)), summary.get("metrics")
    # Prepared prompts are read as they are, not rendered again.
    assert not (out / grpo_judge.DATA_DIR).exists()
    adapter = load_file(str(out / "adapter_model.safetensors"))
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    # peft starts every lora_B at zero: a nonzero one was trained.
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b.values())


@pytest.mark.slow
def test_dry_run_prints_the_grpo_arguments_without_loading_a_model(tmp_path: Path) -> None:
    result = _script("--model", "Qwen/Qwen3-VL-8B-Instruct", "--data", str(tmp_path / "pairs.jsonl"),
                     "--output-dir", str(tmp_path / "o"), "--set", "finetune=lora", "--dry-run")  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    trl = resolved["trl"]
    grpo = (trl["num_generations"], trl["beta"], trl["loss_type"], trl["learning_rate"])
    assert grpo == (4, 0.0, "dapo", 2.5e-6)
    assert trl["generation_kwargs"] is None and trl["use_vllm"] is False
    assert resolved["settings"]["finetune"] == "lora"
    assert not (tmp_path / "o").exists()  # nothing rendered, nothing loaded


def test_prompts_are_rendered_with_the_judges_template_arguments_cut_to_what_the_template_reads(
    tmp_path: Path,
) -> None:
    from datasets import Dataset

    from flexjudge.training.sft_data import prompt_judge
    from training import grpo_judge

    class Processor:  # only its chat template is read
        def __init__(self, template: str) -> None:
            self.chat_template = template

    thinking = Processor("{{ messages }}{% if enable_thinking %}x{% endif %}")
    plain = Processor("{{ messages }}")
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    settings = load_settings(GrpoSettings, None, [f"data={pairs}", "model=m", f"output_dir={tmp_path}"])
    empty = Dataset.from_list([{"prompt": "p", "label": "1"}])
    judge_kwargs = prompt_judge("flex").chat_template_kwargs
    assert judge_kwargs  # the judge asks with thinking off; the model's template decides whether it reads it
    assert grpo_judge.template_kwargs(settings, empty, thinking) == judge_kwargs
    assert grpo_judge.template_kwargs(settings, empty, plain) == {}
    # A prepared dataset's column wins; rows rendered two ways cannot share TRL's one set.
    rows = Dataset.from_list([{"chat_template_kwargs": {"enable_thinking": True}}] * 2)
    assert grpo_judge.template_kwargs(settings, rows, thinking) == {"enable_thinking": True}
    mixed = Dataset.from_list([{"chat_template_kwargs": {"enable_thinking": v}} for v in (True, False)])
    with pytest.raises(ConfigError, match="chat_template_kwargs"):
        grpo_judge.template_kwargs(settings, mixed, thinking)
