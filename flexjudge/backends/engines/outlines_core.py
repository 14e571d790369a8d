"""outlines-core: JSON Schemas through a regular expression and an index over the vocabulary.

The index takes seconds to minutes to build at a real vocabulary and pickles cleanly, so the compile
cache keeps it on disk for the next process."""

from __future__ import annotations

import importlib
import json
from typing import TYPE_CHECKING, Any

from flexjudge.backends.engines import TokenizerView

if TYPE_CHECKING:
    import torch


def _untyped(module: str) -> Any:
    return importlib.import_module(module)  # outlines-core ships no type information


class _Rows:
    def __init__(self, index: Any, batch: int) -> None:
        guide = _untyped("outlines_core").Guide
        self.m = [guide(index) for _ in range(batch)]

    def advance(self, row: int, token: int) -> str | None:
        try:
            self.m[row].advance(token_id=token, return_tokens=False)
        except ValueError as exc:
            return str(exc)
        return None

    def fill(self, bitmask: torch.Tensor, rows: list[int]) -> None:
        width = bitmask.shape[1]
        for i in rows:
            self.m[i].write_mask_into(bitmask[i].data_ptr(), width, 4)


class OutlinesCore:
    name = "outlines_core"
    requires = "outlines_core"
    preference = 1
    takes_grammars = False
    persistent = True

    def tokenizer_table(self, tok: TokenizerView) -> Any:
        from outlines.models.transformers import TransformerTokenizer

        # Outlines' token -> text conversion, minus special tokens: they must never match text inside a
        # JSON string (a second stop token there would end the output mid-string).
        to_text = TransformerTokenizer(tok.hf).convert_token_to_string
        table: dict[str, list[int]] = {}
        for token, token_id in tok.hf.get_vocab().items():
            if token_id not in tok.special and token_id < tok.width:
                table.setdefault(to_text(token), []).append(token_id)
        return _untyped("outlines_core").Vocabulary(tok.eos, table)

    def compile(self, table: Any, constraint: dict[str, Any] | str) -> Any:
        # The regex's default whitespace is a single optional space: bounded, as on the other engines.
        regex = _untyped("outlines_core.json_schema").build_regex_from_schema(json.dumps(constraint), None)
        return _untyped("outlines_core").Index(regex, table)

    def matchers(self, compiled: Any, batch: int) -> _Rows:
        return _Rows(compiled, batch)


ENGINE = OutlinesCore()
