"""TRL's real `GRPOTrainer` calls flexjudge's verifiable rewards as it calls any reward function: two
steps on the tiny local vision-language judge, both reward forms (sync and `async def`), the dataset's
`label` column reaching them as a keyword (issue 9, point 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flexjudge.rewards.verifiable import averdict_reward, verdict_reward

pytestmark = pytest.mark.slow


# TRL 1.16's generation path reads the model's old `is_gradient_checkpointing` name (transformers 5 warns).
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_grpo_trainer_steps_on_the_verdict_rewards(tmp_path: Path) -> None:
    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOConfig, GRPOTrainer

    from flexjudge.backends.tiny import tiny_model_dir

    model_dir = tiny_model_dir()
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    red, blue = Image.new("RGB", (32, 32), (220, 30, 30)), Image.new("RGB", (32, 32), (30, 30, 220))
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which image is red?"}]
    rows = [
        {"prompt": [{"role": "user", "content": content}], "images": [red, blue], "label": 1},
        {"prompt": [{"role": "user", "content": content}], "images": [blue, red], "label": 2},
    ]
    seen: list[dict[str, Any]] = []
    sync_reward = verdict_reward()

    def recorded(prompts: Any = None, completions: Any = (), **columns: Any) -> list[float | None]:
        seen.append({"completions": list(completions), "labels": list(columns["label"])})
        return sync_reward(prompts=prompts, completions=completions, **columns)

    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=24,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        dataloader_num_workers=0,
        activation_checkpointing=False,  # set, so transformers does not warn about TRL's old-name default
        seed=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[recorded, averdict_reward()],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert seen and all(len(call["completions"]) == len(call["labels"]) for call in seen)
    assert {label for call in seen for label in call["labels"]} <= {1, 2}
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2
    keys = set().union(*logged)
    # Each reward function is logged under its own name: TRL ran both, the async one included.
    assert any("recorded" in k for k in keys) and any("flexjudge_verdict_async" in k for k in keys), keys
    # A random tiny model writes no judgment in 24 tokens: scored as unreadable (0.0), never a guess.
    assert all(
        entry[k] == 0.0 for entry in logged for k in entry if k.startswith("rewards/") and k.endswith("/mean")
    )
