"""Thin adapters from `group_rewards` to the RL loops people run.

- `FlowGRPOReward`: Flow-GRPO / Pref-GRPO's `reward_fn(images, prompts, metadata) -> (rewards, info)` for a
  flat batch of groups of G consecutive samples per prompt (`flexjudge.rewards.distributed` gathers a
  prompt's group from every rank first).
- `GroupReward`: a callable that rewards one whole group at once (Flow-Factory style group rewards).

Both judge the groups of a batch concurrently through one `Judge` and report every failed pair in `info`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from flexjudge.errors import UsageError
from flexjudge.judging import Judge
from flexjudge.rewards._group import GroupResult, OnFailure, SwapMode, agroup_rewards
from flexjudge.rewards.client import RewardClient
from flexjudge.rewards.schedules import (
    Active,
    Bayesian,
    Posterior,
    RandomGraph,
    RoundRobin,
    Schedule,
    ScoreFirst,
    Swiss,
)

__all__ = ["FlowGRPOReward", "GroupReward", "RewardOutput", "schedule_spec", "to_candidates"]

T = TypeVar("T")

RewardOutput = Literal["advantages", "reward"]
"""`advantages`: the paper's blended, group-normalised advantages (0 for an unscored sample), for loops
that take them as they are; `reward`: the released scalar `0.3 * overall + 0.7 * dimension`, for loops
that normalise per group themselves (NaN for an unscored sample: a loop must see that it has none)."""


@dataclass
class GroupReward:
    """Rewards one group: `reward(prompt, candidates) -> list[float]` (see `RewardOutput`); `arun` gives the
    whole `GroupResult` (judgments, outcomes, failures).

    `judge` is an in-process `Judge`, or a `RewardClient` of a reward server (`flexjudge serve`'s
    `/v1/rewards`), which judges the group there with the same settings and answers the same result."""

    judge: Judge | RewardClient
    output: RewardOutput = "advantages"
    schedule: Schedule | None = None
    swap: SwapMode = False
    on_failure: OnFailure = "drop"
    alpha: float = 0.7
    category_weights: Sequence[float] | None = None
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """Further `agroup_rewards` keywords (`modality`, `preferences`)."""

    def __post_init__(self) -> None:
        if self.output not in ("advantages", "reward"):
            raise UsageError(f"output must be 'advantages' or 'reward', got {self.output!r}")

    async def arun(self, prompt: str, candidates: Sequence[Any]) -> GroupResult:
        if isinstance(self.judge, RewardClient):
            return await self._remote(self.judge, prompt, candidates)
        return await agroup_rewards(
            prompt,
            candidates,
            self.judge,
            schedule=self.schedule,
            swap=self.swap,
            on_failure=self.on_failure,
            alpha=self.alpha,
            category_weights=self.category_weights,
            seed=self.seed,
            **self.options,
        )

    async def _remote(self, client: RewardClient, prompt: str, candidates: Sequence[Any]) -> GroupResult:
        if self.options:
            raise UsageError(
                f"a reward server takes no {sorted(self.options)}: its judge's settings are its own"
            )
        result = await client.agroup(
            prompt,
            candidates,
            schedule=schedule_spec(self.schedule),
            swap=self.swap,
            on_failure="drop" if self.on_failure == "raise" else self.on_failure,
            alpha=self.alpha,
            category_weights=self.category_weights,
            seed=self.seed,
        )
        if self.on_failure == "raise" and result.failures:  # the server returns failures; raise the first
            raise result.failures[0].error
        return result

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the judge's (or client's) loop thread."""
        if isinstance(self.judge, Judge):
            return self.judge._run(coroutine)
        return self.judge.run(coroutine)

    def values(self, result: GroupResult) -> list[float]:
        """The floats a loop receives from a result, per `output`."""
        if self.output == "advantages":
            return list(result.rewards.advantages)
        return [math.nan if r is None else r for r in result.rewards.reward()]

    async def acall(self, prompt: str, candidates: Sequence[Any]) -> list[float]:
        return self.values(await self.arun(prompt, candidates))

    def __call__(self, prompt: str, candidates: Sequence[Any]) -> list[float]:
        return self.run(self.acall(prompt, candidates))


@dataclass
class FlowGRPOReward:
    """Flow-GRPO's reward interface over flexjudge: `fn(images, prompts, metadata) -> (rewards, info)`.

    The batch holds `group_size` consecutive samples per prompt (as Flow-GRPO and Pref-GRPO lay out a
    rank's batch); each group is judged as one (every group of the batch at once) and each sample gets
    its float (see `RewardOutput`). `info` lists per group the failed pairs and their errors, the
    unscored samples, and the overall and dimension rates. Images may be a tensor (B, C, H, W) with
    values in [0, 1] (Flow-GRPO's), a uint8 array (B, H, W, C), or a list of anything `flexjudge.judge`
    accepts. For groups spread over ranks, wrap the call in `flexjudge.rewards.distributed.gathered`."""

    group: GroupReward
    group_size: int

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise UsageError(f"group_size must be at least 2, got {self.group_size}")

    def __call__(
        self, images: Any, prompts: Sequence[str], metadata: Any = None, only_strict: bool = True
    ) -> tuple[list[float], dict[str, Any]]:
        """`metadata` and `only_strict` are accepted as Flow-GRPO passes them, and not used."""
        return self.group.run(self.acall(images, prompts))

    async def acall(self, images: Any, prompts: Sequence[str]) -> tuple[list[float], dict[str, Any]]:
        candidates = to_candidates(images)
        groups = _groups(prompts, len(candidates), self.group_size)
        results = await asyncio.gather(
            *(self.group.arun(prompts[start], candidates[start:end]) for start, end in groups)
        )
        rewards = [value for result in results for value in self.group.values(result)]
        info = {
            "failures": [[(f.first, f.second, repr(f.error)) for f in r.failures] for r in results],
            "unscored": [r.rewards.unscored for r in results],
            "overall": [r.rewards.overall for r in results],
            "dimension": [r.rewards.dimension for r in results],
        }
        return rewards, info


def to_candidates(images: Any) -> list[Any]:
    """A batch of images as a list `flexjudge.judge` accepts: a (B, C, H, W) tensor in [0, 1] (or uint8)
    becomes uint8 (H, W, C) arrays; a (B, H, W, C) array or a list is split as it is."""
    if hasattr(images, "detach") and getattr(images, "ndim", 0) == 4:  # a torch tensor: torch is loaded
        import torch

        pixels = images.detach().cpu()
        if pixels.is_floating_point():
            pixels = (pixels.clamp(0, 1) * 255).round()
        return list(pixels.to(dtype=torch.uint8).permute(0, 2, 3, 1).contiguous().numpy())
    if isinstance(images, (list, tuple)) or getattr(images, "ndim", 0) == 4:
        return list(images)
    kind = type(images).__name__
    raise UsageError(f"images must be a batch (a 4-D tensor or array, or a list), got {kind}")


def _groups(prompts: Sequence[str], count: int, size: int) -> list[tuple[int, int]]:
    if len(prompts) != count:
        raise UsageError(f"{count} images but {len(prompts)} prompts")
    if count % size:
        raise UsageError(f"the batch of {count} does not split into groups of {size}")
    spans = [(start, start + size) for start in range(0, count, size)]
    for start, end in spans:
        if len(set(prompts[start:end])) != 1:
            raise UsageError(
                f"samples {start}..{end - 1} should share one prompt (a group of {size} consecutive samples)"
            )
    return spans


def schedule_spec(schedule: Schedule | None) -> dict[str, Any] | None:
    """A schedule as a reward server takes it in a request body (the built-in kinds)."""
    if schedule is None or isinstance(schedule, RoundRobin):
        return None if schedule is None else {"kind": "round_robin"}
    if isinstance(schedule, RandomGraph):
        return {"kind": "random_graph", "k": schedule.k}
    if isinstance(schedule, Swiss):
        return {"kind": "swiss", "rounds": schedule.rounds}
    if isinstance(schedule, Active):
        per_round = {} if schedule.per_round is None else {"per_round": schedule.per_round}
        return {"kind": "active", "fraction": schedule.fraction, **per_round}
    if isinstance(schedule, Bayesian):
        return {"kind": "bayesian", "fraction": schedule.fraction, "per_round": schedule.per_round}
    if isinstance(schedule, ScoreFirst):
        return {"kind": "score_first", "fraction": schedule.fraction, "per_round": schedule.per_round}
    if isinstance(schedule, Posterior):
        fields = {"fraction": schedule.fraction, "per_round": schedule.per_round, "error": schedule.error}
        return {"kind": "posterior", **fields}
    raise UsageError(f"a reward server knows the built-in schedules, not {schedule!r}")
