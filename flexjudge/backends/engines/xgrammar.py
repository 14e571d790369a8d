"""xgrammar: JSON Schemas only; masks filled for the whole batch in one call.

It declares triton (~1 GB) as a dependency but runs on CPU without it:
`pip install --no-deps xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2`."""

from __future__ import annotations

import importlib
import json
from typing import TYPE_CHECKING, Any

from flexjudge.backends.engines import TokenizerView

if TYPE_CHECKING:
    import torch


def _xgrammar() -> Any:
    return importlib.import_module("xgrammar")  # optional and untyped: Any in every setup


class _Rows:
    def __init__(self, compiled: Any, batch: int) -> None:
        xgrammar = _xgrammar()
        self.m = [xgrammar.GrammarMatcher(compiled) for _ in range(batch)]
        self._batch = xgrammar.BatchGrammarMatcher()

    def advance(self, row: int, token: int) -> str | None:
        return None if self.m[row].accept_token(token) else f"token {token} refused"

    def fill(self, bitmask: torch.Tensor, rows: list[int]) -> None:
        self._batch.batch_fill_next_token_bitmask([self.m[i] for i in rows], bitmask, indices=rows)


class XGrammar:
    name = "xgrammar"
    requires = "xgrammar"
    preference = 2
    takes_grammars = False  # it has an EBNF of its own, not the Lark grammars flexjudge writes
    persistent = False

    def tokenizer_table(self, tok: TokenizerView) -> Any:
        xgrammar = _xgrammar()
        info = xgrammar.TokenizerInfo.from_huggingface(
            tok.hf, vocab_size=tok.width, stop_token_ids=list(tok.stops)
        )
        # flexjudge's compile cache is the bounded one: xgrammar's own would keep every schema forever.
        return xgrammar.GrammarCompiler(info, cache_enabled=False)

    def compile(self, table: Any, constraint: dict[str, Any] | str) -> Any:
        return table.compile_json_schema(json.dumps(constraint), any_whitespace=False)

    def matchers(self, compiled: Any, batch: int) -> _Rows:
        return _Rows(compiled, batch)


ENGINE = XGrammar()
