"""llguidance: JSON Schemas and Lark grammars, one matcher per row copied from a compiled template."""

from __future__ import annotations

import json
import os
import threading
from typing import TYPE_CHECKING, Any

from flexjudge.backends.engines import TokenizerView
from flexjudge.errors import ConstraintError

if TYPE_CHECKING:
    import torch

# llguidance's thread pool only pays off with cores to spare beside torch's own threads (measured: on 2
# cores it is slower than filling the rows one after the other).
_PARALLEL_MASKS = (os.cpu_count() or 1) >= 8
_executor_lock = threading.Lock()
_executor_instance: Any = None


def _executor() -> Any:
    global _executor_instance
    with _executor_lock:
        if _executor_instance is None:
            from llguidance import LLExecutor

            _executor_instance = LLExecutor()
        return _executor_instance


class _Rows:
    def __init__(self, template: Any, batch: int) -> None:
        # A copy costs microseconds, a new matcher milliseconds.
        self.m = [template.deep_copy() for _ in range(batch)]

    def advance(self, row: int, token: int) -> str | None:
        m = self.m[row]
        return None if m.consume_token(token) else (m.get_error() or f"token {token} refused")

    def fill(self, bitmask: torch.Tensor, rows: list[int]) -> None:
        width = bitmask.shape[1]
        if len(rows) > 1 and _PARALLEL_MASKS:
            _executor().unsafe_compute_mask_ptr(
                [(self.m[i], i) for i in rows], bitmask.data_ptr(), width * 4, bitmask.shape[0]
            )
        else:
            for i in rows:
                self.m[i].unsafe_compute_mask_ptr(bitmask[i].data_ptr(), width * 4)


class LLGuidance:
    name = "llguidance"
    requires = "llguidance"
    preference = 0
    takes_grammars = True
    persistent = False  # a schema compiles in milliseconds; the table (~1.5 s at 150k) cannot be saved

    def tokenizer_table(self, tok: TokenizerView) -> Any:
        import llguidance.hf

        return llguidance.hf.from_tokenizer(tok.hf, n_vocab=tok.width, eos_token=list(tok.stops))

    def compile(self, table: Any, constraint: dict[str, Any] | str) -> Any:
        from llguidance import LLMatcher

        if isinstance(constraint, str):
            grammar = str(LLMatcher.grammar_from_lark(constraint))
        else:
            # Whitespace off: a model that likes whitespace, a random one above all, otherwise emits it
            # until the budget runs out.
            grammar = str(
                LLMatcher.grammar_from_json_schema(
                    json.dumps(constraint), defaults={"whitespace_flexible": False}
                )
            )
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, table)
        if is_error:
            raise ConstraintError(f"the llguidance engine rejects this constraint: {messages[0]}")
        return LLMatcher(table, grammar, log_level=0)

    def matchers(self, compiled: Any, batch: int) -> _Rows:
        return _Rows(compiled, batch)


ENGINE = LLGuidance()
