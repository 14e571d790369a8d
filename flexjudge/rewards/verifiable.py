"""Rewards for training the judge itself with TRL's `GRPOTrainer` on labelled pairs (verifiable rewards).

TRL calls each reward function with the batch as keywords: `prompts`, `completions` (strings, or a list
of messages per completion), `completion_ids`, `trainer_state`, logging hooks, and every dataset column;
it wants one float (or None: not applicable) per completion, and runs `async def` ones concurrently.

A completion earns 1 when it reads under the schema and its overall winner is the label, 0 when it names
the other candidate (or a tie), `unreadable` (default 0) when it does not read at all; each finding of
`flexjudge.check` (errors and warnings alike, not notes: a verdict that contradicts its own dimensions is what
training should remove), and a recovered (repaired) read, costs `penalty`. A sample without a label gets
None. Nothing is guessed from text that does not parse: it is scored as unreadable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from flexjudge.anchors import Modality
from flexjudge.checks import check
from flexjudge.errors import ParseError, UsageError
from flexjudge.formats import Format, parse

__all__ = ["averdict_reward", "verdict_reward"]

RewardFunction = Callable[..., list[float | None]]
AsyncRewardFunction = Callable[..., Coroutine[Any, Any, list[float | None]]]


@dataclass(frozen=True)
class _Rule:
    label: str
    output_format: Format
    modality: Modality | None
    penalty: float
    unreadable: float

    def __call__(
        self, completions: Sequence[Any], prompts: Sequence[Any] | None, columns: dict[str, Any]
    ) -> list[float | None]:
        if self.label not in columns:
            raise UsageError(f"the dataset has no {self.label!r} column (columns: {sorted(columns)})")
        labels = columns[self.label]
        if len(labels) != len(completions):
            raise UsageError(f"{len(completions)} completions but {len(labels)} labels")
        return [self.one(_text(c), _label(x)) for c, x in zip(completions, labels, strict=True)]

    def one(self, text: str, label: int | None) -> float | None:
        if label is None:
            return None
        try:
            judgment = parse(text, self.output_format, modality=self.modality)
        except ParseError:
            return self.unreadable
        flaws = sum(f.severity != "info" for f in check(judgment)) + int(judgment.meta.recovered)
        return (1.0 if judgment.verdict.winner == label else 0.0) - self.penalty * flaws


def verdict_reward(
    *,
    label: str = "label",
    output_format: Format = "flex",
    modality: Modality | None = None,
    penalty: float = 0.1,
    unreadable: float = 0.0,
) -> RewardFunction:
    """A TRL reward function: see the module docstring. `label` names the dataset column holding the
    preferred candidate (1 or 2, "Image 1" / "Video 2", or None for no label)."""
    rule = _Rule(label, output_format, modality, penalty, unreadable)

    def flexjudge_verdict(
        prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **columns: Any
    ) -> list[float | None]:
        return rule(completions, prompts, columns)

    return flexjudge_verdict


def averdict_reward(
    *,
    label: str = "label",
    output_format: Format = "flex",
    modality: Modality | None = None,
    penalty: float = 0.1,
    unreadable: float = 0.0,
) -> AsyncRewardFunction:
    """`verdict_reward` as an `async def` (TRL runs those concurrently); parsing runs in a worker thread."""
    rule = _Rule(label, output_format, modality, penalty, unreadable)

    async def flexjudge_verdict_async(
        prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **columns: Any
    ) -> list[float | None]:
        return await asyncio.to_thread(rule, completions, prompts, columns)

    return flexjudge_verdict_async


def _text(completion: Any) -> str:
    """A completion's text: a string, or the last message of a conversation (its text parts joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(
                p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
            )
    raise UsageError(f"a completion is a string or a list of messages, got {type(completion).__name__}")


def _label(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value in (1, 2):
        return value
    if isinstance(value, str) and value.strip() in ("Image 1", "Image 2", "Video 1", "Video 2", "1", "2"):
        return int(value.strip()[-1])
    raise UsageError(f"a label is 1, 2, 'Image 1', 'Video 2' (and alike) or None, got {value!r}")
