"""GRPO of a vision-language judge on labelled pairs, with TRL's `GRPOTrainer` and flexjudge's verifiable
reward (`flexjudge.rewards.verdict_reward`).

    python training/grpo_judge.py --config training/configs/grpo_judge.yaml --model SFT --data PAIRS \\
        --output-dir OUT
    accelerate launch --config_file training/accelerate/ddp.yaml training/grpo_judge.py --config ...  (GPUs)

The judge samples `num_generations` judgments per prompt; each earns 1 when it reads under the schema and
names the labelled winner, 0 when it names the other, `reward.unreadable` when it does not read, minus
`reward.penalty` per `check()` finding. No teacher traces are needed: only labels.

`data` is either labelled pairs in a `flexjudge eval` layout (`data_layout`; the flexjudge JSONL:
`{"id", "prompt", "candidates": [a, b], "label": 1 | 2 | "tie"}`), whose prompts are rendered here by the
judge's own prompt builder (`flexjudge.training.sft_data.pair_request`, the request `judge()` sends, so the
judge is trained on the prompt it is asked) into OUT/grpo-data, or a dataset already in that form
(`prompt`, `images`, `label`: what `flexjudge sft-data` and `flexjudge dpo-pairs` write). Ties are
dropped (no judgment format has a tie verdict) and counted.

Generation is free by default: a completion that does not read scores `reward.unreadable`. `constrained:
true` samples under the judgment's JSON schema through vLLM's structured outputs; TRL then computes the
policy's log-probabilities without the mask (see training/README.md, "GRPO of the judge", for the bias).
Checkpoints, resume, LoRA or full finetuning, precision and the final save work as in sft.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `training` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training import _common
from training._config import ConfigError, GrpoSettings, add_arguments

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "grpo_judge.yaml"
COLUMNS = ["prompt", "images", "label"]
DATA_DIR = "grpo-data"
"""Where rendered prompts are written in output_dir (reused when the same source is rendered again)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="training/grpo_judge.py",
        description="GRPO of a vision-language judge on labelled pairs with the verifiable reward "
        "(TRL GRPOTrainer).",
    )
    add_arguments(parser, DEFAULT_CONFIG)
    return parser


def generation_kwargs(settings: GrpoSettings) -> dict[str, Any] | None:
    """The sampler's extra arguments; under `constrained`, vLLM's structured outputs with the judge's
    own pair schema (TRL turns a `structured_outputs` dict into `StructuredOutputsParams`)."""
    extra = dict(settings.generation_kwargs or {})
    if settings.constrained:
        from flexjudge.reading import pair_request_constraint

        assert settings.modality is not None  # the config refuses constrained without it
        constraint = pair_request_constraint(
            settings.modality, settings.output_format, (), settings.max_string_length
        )
        # Whitespace off: xgrammar otherwise lets a model emit whitespace forever (DESIGN.md section 6).
        extra["structured_outputs"] = {"json": constraint.schema, "disable_any_whitespace": True}
    return extra or None


def trl_config(
    settings: GrpoSettings, has_eval: bool, template_kwargs: dict[str, Any] | None = None
) -> object:
    from trl import GRPOConfig

    kwargs = _common.trainer_arguments(settings, has_eval)
    del kwargs["max_length"]  # GRPOConfig has none; the settings refuse one
    kwargs.update(
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        top_p=settings.top_p,
        beta=settings.beta,
        epsilon=settings.epsilon,
        num_iterations=settings.num_iterations,
        loss_type=settings.loss_type,
        scale_rewards=settings.scale_rewards,
        use_vllm=settings.use_vllm,
        vllm_mode=settings.vllm_mode,
        vllm_server_base_url=settings.vllm_server_base_url,
        generation_kwargs=generation_kwargs(settings),
        log_completions=settings.log_completions,
        # One set for every prompt: TRL 1.16's GRPO renders all prompts with the same arguments.
        chat_template_kwargs=template_kwargs or None,
        # Set, so transformers does not warn about TRL's default under its old name.
        activation_checkpointing=settings.gradient_checkpointing,
    )
    return _common.make_trl_config(GRPOConfig, kwargs)


def rewards(settings: GrpoSettings) -> list[Any]:
    from flexjudge.rewards.verifiable import verdict_reward

    # modality None: each completion's winner labels say it, so image and video rows can share a run.
    return [
        verdict_reward(
            output_format=settings.output_format,
            penalty=settings.reward.penalty,
            unreadable=settings.reward.unreadable,
        )
    ]


# -- data -----------------------------------------------------------------------------------------


def _prepared(root: Path) -> bool:
    """Whether `root` holds rendered prompts already (sft-data / dpo-pairs output), not labelled pairs."""
    from datasets import load_from_disk

    for candidate in (root / "train", root):
        if (candidate / "dataset_info.json").is_file() or (candidate / "dataset_dict.json").is_file():
            loaded = load_from_disk(str(candidate))
            names = loaded.column_names
            columns = names["train"] if isinstance(names, dict) and "train" in names else names
            return isinstance(columns, list) and set(COLUMNS) <= set(columns)
    return False


def _features() -> Any:
    from datasets import Features, Image, List, Value

    from flexjudge.training.sft_data import message_features

    return Features(
        {
            "prompt": message_features(),
            "images": List(Image()),
            "label": Value("string"),
            "id": Value("string"),
            "modality": Value("string"),
        }
    )


def _rows(settings: GrpoSettings, skipped: Counter[str]) -> Iterator[dict[str, Any]]:
    """TRL's conversational rows from labelled pairs, each prompt the request `judge()` sends."""
    from flexjudge.errors import FlexjudgeError
    from flexjudge.evaluation.data import load_examples
    from flexjudge.training.sft_data import conversation, pair_request, prompt_judge

    judge = prompt_judge(settings.output_format, frames_per_video=settings.frames_per_video)
    orders = (False, True) if settings.orders == "both" else (False,)
    media = Path(settings.output_dir) / DATA_DIR / "media"
    for example in load_examples(settings.data, layout=settings.data_layout, media_dir=media):
        if example.label == "tie":
            skipped["tie"] += 1
            continue
        if settings.modality is not None and example.modality != settings.modality:
            skipped[f"not_{settings.modality}"] += 1
            continue
        for swapped in orders:
            candidates = example.candidates[::-1] if swapped else example.candidates
            try:
                request = pair_request(judge, example.prompt, candidates, example.modality)
            except FlexjudgeError as exc:
                skipped["media"] += 1
                print(f"skipped {example.id}: {exc}", file=sys.stderr)
                break
            prompt, images = conversation(request.messages)
            label = 3 - example.label if swapped else example.label
            yield {
                "prompt": prompt,
                "images": images,
                "label": str(label),
                "id": f"{example.id}{'/swapped' if swapped else ''}",
                "modality": example.modality,
            }


def render_pairs(settings: GrpoSettings) -> Path:
    """Write the rendered prompts of `settings.data` to output_dir/grpo-data/train; reuse them when the
    same source was rendered with the same settings (a resumed run)."""
    from datasets.arrow_writer import ArrowWriter  # type: ignore[import-untyped]

    from flexjudge.training.sft_data import save_split

    target = Path(settings.output_dir) / DATA_DIR
    stamp = {
        "source": str(Path(settings.data).resolve()),
        "layout": settings.data_layout,
        "output_format": settings.output_format,
        "orders": settings.orders,
        "frames_per_video": settings.frames_per_video,
        "modality": settings.modality,
    }
    stats_file = target / "stats.json"
    if stats_file.is_file() and json.loads(stats_file.read_text()).get("stamp") == stamp:
        return target
    target.mkdir(parents=True, exist_ok=True)
    skipped: Counter[str] = Counter()
    arrow = target / "train.arrow"
    with ArrowWriter(features=_features(), path=str(arrow), writer_batch_size=64) as writer:
        for row in _rows(settings, skipped):
            writer.write(row)
        writer.finalize()
    rows = save_split(arrow, target / "train")
    arrow.unlink()
    stats_file.write_text(json.dumps({"stamp": stamp, "rows": rows, "skipped": dict(skipped)}, indent=2))
    if rows == 0:
        raise ConfigError(f"no trainable pair in {settings.data} (skipped: {dict(skipped)})")
    return target


def template_kwargs(settings: GrpoSettings, train: Any, processor: Any) -> dict[str, Any]:
    """The chat-template arguments the prompts were rendered with (a prepared dataset's
    `chat_template_kwargs` column, else those of the judge that renders them here), cut to what the
    model's template reads: the rule the transformers backend applies when it judges."""
    from flexjudge.backends.transformers import template_variables
    from flexjudge.training.sft_data import prompt_judge

    if _common.TEMPLATE_KWARGS in train.column_names:
        seen = {json.dumps(v, sort_keys=True) for v in train[_common.TEMPLATE_KWARGS]}
        if len(seen) > 1:
            raise ConfigError(
                f"the rows of {settings.data} were rendered with different chat_template_kwargs "
                f"({sorted(seen)}); TRL's GRPO renders every prompt with one set"
            )
        given: dict[str, Any] = json.loads(seen.pop()) if seen else {}
    elif _prepared(Path(settings.data)):
        given = {}
    else:
        given = prompt_judge(settings.output_format).chat_template_kwargs
    read = template_variables(processor)
    return {key: value for key, value in given.items() if key in read}


def _without_template_kwargs(split: Any) -> Any:
    """The split without its `chat_template_kwargs` column: TRL's GRPO takes them from its config."""
    if split is None or _common.TEMPLATE_KWARGS not in split.column_names:
        return split
    return split.remove_columns(_common.TEMPLATE_KWARGS)


def load_data(settings: GrpoSettings) -> tuple[Any, Any]:
    """(train, eval or None): rendered rows with a winner label (ties dropped)."""
    root = Path(settings.data)
    if not root.exists():
        raise ConfigError(f"no dataset at {root}")
    if not _prepared(root):
        from accelerate import PartialState

        # One process renders, the others read its output; `cpu` as the trainer will ask, so the state
        # created here is the one the trainer finds.
        with PartialState(cpu=settings.use_cpu).main_process_first():
            root = render_pairs(settings)
    reader = "GRPO reads labelled pairs or `flexjudge sft-data` / `dpo-pairs` output"
    train, evaluation = _common.load_splits(str(root), COLUMNS, reader)

    def labelled(split: Any) -> Any:
        return None if split is None else split.filter(lambda row: row["label"] in ("1", "2"))

    return labelled(train), labelled(evaluation)


# -- the run --------------------------------------------------------------------------------------


def build_trainer(settings: GrpoSettings, resumed: str | None = None) -> tuple[object, object]:
    """(trainer, processor), ready to train: model, data, reward, LoRA and arguments from the settings."""
    from trl import GRPOTrainer

    _common.check_model_dir(settings.model, "model")
    train, evaluation = load_data(settings)
    if len(train) == 0:
        raise ConfigError(f"the dataset at {settings.data} has no row labelled 1 or 2")
    processor = _common.load_processor(settings.model)
    kwargs = template_kwargs(settings, train, processor)
    train, evaluation = (_without_template_kwargs(split) for split in (train, evaluation))
    model = _common.load_model(_common.weights_to_load(settings, resumed), settings)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=rewards(settings),
        args=trl_config(settings, evaluation is not None, kwargs),  # type: ignore[arg-type]
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor,
        peft_config=_common.lora_config(settings),
    )
    return trainer, processor


def main(argv: list[str] | None = None) -> None:
    _common.train_main(argv, build_parser(), GrpoSettings, build_trainer, trl_config, "grpo_judge")


if __name__ == "__main__":
    _common.run_main(main)
