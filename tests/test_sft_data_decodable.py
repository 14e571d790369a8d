"""An SFT completion is a text the constrained decoder can emit, token by token.

The decoding constraint writes compact JSON (whitespace off, `flexjudge.grammar`); a completion with the
codec's spaced separators puts a token the decoder forbids after the first ':', so a judge trained on it
is pushed off its own trace at every separator when judging (the first full pipeline_learns run: every
eval after SFT truncated).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from transformers import AutoTokenizer

from flexjudge.backends.tiny import tiny_model_dir
from flexjudge.constraints import pair_constraint
from flexjudge.training.sft_data import build_sft_data

pytest.importorskip("llguidance")
pytest.importorskip("datasets")

ANCHORS = ("A. Semantic Alignment & Accuracy", "B. Image Quality & Realism", "C. Aesthetics & Artistry")
TRACE = {
    "prompt": "A red picture",
    "categories": [
        {
            "name": name,
            "dims": [
                {"name": n, "reason_1": "blue", "reason_2": "red", "score_1": 2, "score_2": 8}
                for n in ("a", "b", "c")
            ],
            "cat_reason": "red",
            "cat_winner": "Image 2",
        }
        for name in ANCHORS
    ],
    "reason": "red",
    "winner": "Image 2",
}


def test_completion_is_accepted_by_the_decoding_grammar(tmp_path: Path) -> None:
    import llguidance.hf
    from datasets import load_from_disk
    from llguidance import LLMatcher

    for name, colour in (("1.png", (40, 70, 220)), ("2.png", (220, 40, 40))):
        Image.new("RGB", (28, 28), colour).save(tmp_path / name)
    record = {
        "id": "p0", "prompt": TRACE["prompt"], "output": json.dumps(TRACE), "label": 2, "modality": "image",
        "candidates": ["1.png", "2.png"], "order": [1, 2], "format": "flex", "agrees": True, "usage": None,
    }  # fmt: skip
    (tmp_path / "traces.jsonl").write_text(json.dumps(record) + "\n")
    build_sft_data(tmp_path / "traces.jsonl", tmp_path / "sft", eval_fraction=0.0)
    (row,) = load_from_disk(str(tmp_path / "sft" / "train"))
    text = row["completion"][0]["content"][0]["text"]

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir())
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    table = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer), eos_token=[eos])
    # As the llguidance engine compiles a JSON Schema constraint (backends/engines/llguidance.py).
    schema = json.dumps(pair_constraint("image", "flex"))
    grammar = LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    matcher = LLMatcher(table, str(grammar), log_level=0)
    accepted = matcher.consume_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert accepted and not matcher.is_error(), matcher.get_error()
    assert matcher.consume_token(eos) and matcher.is_accepting()
