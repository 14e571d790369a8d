#!/usr/bin/env python
"""Teacher-forced accuracy at the decision tokens of held-out traces: a seconds-long check of what SFT learnt.

A colour-task trace (`_colour_task.colour_judgment`) is mostly structure a model learns in a few steps; what
decides the judgment is a handful of tokens: the prompt's colour echoed, each image's colour word (the first
criterion's `reason_1` and `reason_2`: later ones copy them), in the styles that write them the named colour
beside image 1's and each image's mark (whether its colour is the named one), the first score and the
overall winner. This
feeds each held-out row of a `flexjudge sft-data` split (prompt, images and the teacher's completion) to a
model and counts, per decision, how often the model's most likely next token is the teacher's at every token
of it. Chance: 1/6 for the colour words, 1/2 for a mark, the score and the winner. It needs no decoding, so it
runs in seconds where `flexjudge eval` takes minutes, and it says which decision fails.

    python benchmarks/decision_probe.py MODEL_DIR SFT_DATA_DIR [--split eval] [--rows 64]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

DECISIONS = (
    "prompt colour",
    "named colour in evidence",
    "image 1 colour",
    "image 2 colour",
    "image 1 mark",
    "image 2 mark",
    "first score",
    "winner",
)
_FIXED = {
    "prompt colour": re.compile(r'"prompt": ?"A (\w+) picture"'),
    "first score": re.compile(r'"score_1": ?(\d+)'),
    "winner": re.compile(r'"winner": ?"Image (\d)"\}$'),
}
_REASON = re.compile(r'"reason_([12])": ?"([^"]*)"')
_MARKS = frozenset({"ok", "no", "yes"})

OPTIONAL = frozenset({"named colour in evidence", "image 1 mark", "image 2 mark"})
"""Decisions only some trace styles write (`_colour_task.TRACE_STYLE`): absent from every row, not scored."""


def decision_spans(answer: str) -> dict[str, tuple[int, int]]:
    """Each decision's first occurrence in a rendered trace, as a character span. An image's evidence (every
    style of `_colour_task.evidence`) is words: an optional "A", the named colour in some styles, the image's
    colour, and a mark in some; read from the end, so one parser serves every style."""
    spans = {name: found.span(1) for name, pattern in _FIXED.items() if (found := pattern.search(answer))}
    for image in ("1", "2"):
        found = next((m for m in _REASON.finditer(answer) if m.group(1) == image), None)
        if found is None:
            continue
        words = [(w.group(), found.start(2) + w.start()) for w in re.finditer(r"\w+", found.group(2))]
        if words and words[-1][0] in _MARKS:
            spans.setdefault(f"image {image} mark", _span(words.pop()))
        if words and words[0][0] == "A":
            words.pop(0)
        if words:
            spans.setdefault(f"image {image} colour", _span(words.pop()))
        if words and image == "1":
            spans.setdefault("named colour in evidence", _span(words.pop()))
    return spans


def _span(word: tuple[str, int]) -> tuple[int, int]:
    return word[1], word[1] + len(word[0])


def decision_accuracy(model_dir: Path, data_dir: Path, split: str, rows: int) -> dict[str, Any]:
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from flexjudge.backends.tiny import register_processors

    register_processors()
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    data = load_from_disk(str(data_dir / split))
    data = data.select(range(min(rows, len(data))))
    right = dict.fromkeys(DECISIONS, 0)
    tokens_right = tokens_all = 0
    started = time.process_time()
    for row in data:
        prompt_text = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        answer = row["completion"][0]["content"][0]["text"]
        prompt = processor(text=[prompt_text], images=row["images"], return_tensors="pt")
        completion = processor.tokenizer(answer, return_offsets_mapping=True, add_special_tokens=False)
        ids = torch.tensor([completion["input_ids"]])
        inputs = dict(prompt, input_ids=torch.cat([prompt["input_ids"], ids], dim=1))
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        if "mm_token_type_ids" in prompt:
            pad = torch.zeros_like(ids, dtype=prompt["mm_token_type_ids"].dtype)
            inputs["mm_token_type_ids"] = torch.cat([prompt["mm_token_type_ids"], pad], dim=1)
        with torch.no_grad():
            logits = model(**inputs).logits[0]
        start = prompt["input_ids"].shape[1]
        # The prediction for completion token k is made at position start + k - 1.
        predicted = logits[start - 1 : start - 1 + ids.shape[1]].argmax(-1).tolist()
        tokens_right += sum(p == t for p, t in zip(predicted, completion["input_ids"], strict=True))
        tokens_all += len(predicted)
        spans = decision_spans(answer)
        for name in DECISIONS:
            if name not in right:
                continue
            if name not in spans and name in OPTIONAL:
                right.pop(name, None)
                continue
            if name not in spans:
                raise SystemExit(f"row {row['id']}: no {name} in {answer[:200]!r}")
            lo, hi = spans[name]
            tokens = [k for k, (a, b) in enumerate(completion["offset_mapping"]) if a < hi and b > lo]
            right[name] += all(predicted[k] == completion["input_ids"][k] for k in tokens)
    n = len(data)
    return {
        "rows": n,
        "cpu_s": round(time.process_time() - started, 1),
        "token_accuracy": round(tokens_right / max(tokens_all, 1), 3),
        "accuracy": {name: round(count / n, 3) for name, count in right.items()} if n else {},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("data", type=Path, help="A `flexjudge sft-data` output folder.")
    ap.add_argument("--split", default="eval")
    ap.add_argument("--rows", type=int, default=64)
    args = ap.parse_args()
    print(json.dumps(decision_accuracy(args.model, args.data, args.split, args.rows)))


if __name__ == "__main__":
    main()
