"""Constraint engines: who turns a constraint into a token mask, one module each.

An engine is a module of this package whose name does not start with `_` and that defines `ENGINE`, an
object following `ConstraintEngine`; the registry finds it by listing the package, so adding an engine
touches one file. The shared machinery lives beside them: `_compiled` (the bounded compile cache, kept
per process and, for engines whose artefacts are worth it, on disk) and `_masking` (the logits processor
that fills one mask per batch row and applies it, overlapped with the forward pass).

Engines apply the constraint they are handed; they never look inside it for judgment fields.
`constraint_form` picks which form of a `Constraint` an engine decodes under: the grammar where the
engine takes grammars and the constraint has one, else the JSON Schema.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from flexjudge.errors import ConstraintError, UsageError

if TYPE_CHECKING:
    import torch

    from flexjudge.backends.base import Constraint

__all__ = [
    "DEFAULT_ENGINE",
    "ConstraintEngine",
    "Engine",
    "Matchers",
    "TokenizerView",
    "available_engines",
    "constraint_form",
    "engine_names",
    "fingerprint",
    "get_engine",
]

Engine = str
"""An engine's name: one of `engine_names()`."""

DEFAULT_ENGINE: Engine = "llguidance"
"""Chosen by measurement (`benchmarks/constrained.py`, 2-core CPU, ~150k-token vocabulary) and by what it
enforces: ready in ~1.5 s cold and ~3 ms per further schema, about 0.4 ms of mask per row per step with or
without `maxLength`, one small wheel, and the only engine here that takes Lark grammars (a judgment's
grammar, in which winners follow the scores, enforces more than its schema). xgrammar masks unbounded
schemas faster (0.1 ms) but enforces only the JSON Schema, and its masks cost ~8x more once strings carry
`maxLength`; outlines-core needs seconds per schema, and ran out of memory (over 23 GB) compiling the
pairwise schema with every string bounded."""


@dataclass(frozen=True)
class TokenizerView:
    """What the engines need to know about a tokenizer; `key` identifies it by content, not object."""

    hf: Any
    key: str
    width: int
    """Logits width: the model's vocabulary, often padded beyond the tokenizer's."""
    eos: int
    stops: tuple[int, ...]
    special: frozenset[int]


def fingerprint(tokenizer: Any) -> str:
    """A content hash of a HF tokenizer: two loads of the same tokenizer share compiled constraints."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return digest.hexdigest()[:24]


class Matchers(Protocol):
    """Grammar state for each row of one batch."""

    def advance(self, row: int, token: int) -> str | None:
        """Feed row `row` its sampled token; returns the engine's message when it refuses the token."""
        ...

    def fill(self, bitmask: torch.Tensor, rows: list[int]) -> None:
        """Write the allowed next tokens of `rows` into their rows of `bitmask` (int32 words on the CPU:
        bit j of word k is token 32k + j)."""
        ...


class ConstraintEngine(Protocol):
    """One constraint engine, as the transformers backend drives it."""

    name: str
    requires: str
    """The module the engine needs (`pip install` name aside): the engine is available when it imports."""
    preference: int
    """Order in `available_engines()`, lowest first."""
    takes_grammars: bool
    """Whether `compile` takes Lark grammars as well as JSON Schemas."""
    persistent: bool
    """Whether compiled artefacts pickle and take long enough to build to be kept on disk."""

    def tokenizer_table(self, tok: TokenizerView) -> Any:
        """The engine's view of the tokenizer, built once per tokenizer (the costly part at 150k tokens)."""
        ...

    def compile(self, table: Any, constraint: dict[str, Any] | str) -> Any:
        """Compile a JSON Schema (or a Lark grammar, if `takes_grammars`) against `table`; may raise
        anything on a constraint it cannot take (the compile cache turns that into `ConstraintError`)."""
        ...

    def matchers(self, compiled: Any, batch: int) -> Matchers:
        """Fresh grammar state for `batch` rows, all starting from `compiled`."""
        ...


@functools.cache
def engine_names() -> tuple[Engine, ...]:
    """Every engine this package holds, installed or not, in order of preference."""
    found = [
        _load(info.name)
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_") and not info.ispkg
    ]
    return tuple(e.name for e in sorted(found, key=lambda e: (e.preference, e.name)))


def _load(module: str) -> ConstraintEngine:
    engine: ConstraintEngine = importlib.import_module(f"{__name__}.{module}").ENGINE
    return engine


def get_engine(name: str) -> ConstraintEngine:
    """The engine called `name`; a `ValueError` naming the others when there is none."""
    if name not in engine_names():
        raise UsageError(f"unknown constraint engine {name!r}: use one of {', '.join(engine_names())}")
    return _load(name)


def available_engines() -> list[Engine]:
    """The constraint engines importable here, in order of preference."""
    return [n for n in engine_names() if importlib.util.find_spec(get_engine(n).requires) is not None]


def constraint_form(
    engine: ConstraintEngine, constraint: Constraint
) -> tuple[dict[str, Any] | str, Literal["grammar", "schema"]]:
    """What `engine` decodes `constraint` under, and which form that is: its grammar where the engine
    takes grammars and there is one, else its JSON Schema."""
    if constraint.grammar is not None and engine.takes_grammars:
        return constraint.grammar, "grammar"
    if constraint.schema is not None:
        return constraint.schema, "schema"
    takers = [n for n in engine_names() if get_engine(n).takes_grammars]
    raise ConstraintError(
        f"this constraint is a grammar alone, which the {engine.name} engine cannot take: use "
        + " or ".join(f"engine={n!r}" for n in takers)
    )
