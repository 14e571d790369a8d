"""A tokenizer for the colour task's small model, trained on the text that model reads and writes.

`build_tiny_model`'s own tokenizer learns its 1,024 tokens from a fixed English and JSON corpus that lacks
the judge's prompt and most colour words: the flex prompt takes ~1,000 tokens and "yellow" five. A real
judge's tokenizer has such words as single tokens, and on a CPU the sequence length is the cost of every
training step and decode. This one is the same byte-level BPE (the same pre-tokenizer but for one
rule, special tokens and chat template, 1,024 tokens, every byte still encodable) trained on the judge's
prompt text for each of the six colours and the teacher's traces for every ordered pair of colours. It is
built from the task's definition alone: no pair, label or held-out image is read.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from _colour_task import COLOURS, TraceStyle, colour_judgment, prompt_for

from flexjudge.backends.tiny import _SPLIT_PATTERN, build_tokenizer
from flexjudge.formats import parse, render
from flexjudge.prompting import PromptSpec, render_prompt


def _task_corpus(style: TraceStyle) -> list[str]:
    spec = PromptSpec(mode="pair", modality="image", output_format="flex")
    # Weighted like the traces: BPE spends its merges on the most frequent pairs, and the prompt, ~2/3 of
    # every sequence, is otherwise left in pieces of one or two letters.
    lines = [render_prompt(spec, prompt_for(colour)) for colour in COLOURS] * 30
    for named, other in itertools.permutations(COLOURS, 2):
        for shown in ((named, other), (other, named)):
            prompt = prompt_for(named)
            raw = colour_judgment(prompt, shown, named, style)
            # The trace as `flexjudge sft-data` writes it for training: the codec's, compact.
            text = render(parse(raw, format="flex", modality="image", prompt=prompt), "flex")
            lines.append(json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":")))
    return lines


def colour_tokenizer(style: TraceStyle = "match", vocab_size: int = 1024) -> Any:
    # A quoted identifier takes the space before it (`: "reason_1"` in the prompt's JSON example).
    split = r' ?"[A-Za-z_][A-Za-z0-9_]*"|' + _SPLIT_PATTERN
    return build_tokenizer(vocab_size, _task_corpus(style), split)
