"""Gather a prompt's group from every rank before judging it, then send each rank its samples' rewards.

Flow-GRPO spreads a prompt's G samples over the GPUs, so a rank alone holds part of each group; judging
those parts apart (as Pref-GRPO does) compares a sample with fewer rivals and normalises over the wrong
set. Here every rank shares its samples (`all_gather_object`), the whole groups are formed in rank order,
each rank judges every world-size-th group, and the rewards are shared back. Works with any
`torch.distributed` backend that gathers Python objects (gloo on CPU, NCCL with `device` set).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from flexjudge.errors import FlexjudgeError, UsageError
from flexjudge.rewards.adapters import FlowGRPOReward, to_candidates

__all__ = ["Gathered"]

Sample = tuple[int, int]
"""(rank, index in that rank's batch)."""


@dataclass(frozen=True)
class _Failed:
    rank: int
    error: str


@dataclass
class Gathered:
    """`FlowGRPOReward` over groups spread across ranks; call it on every rank with that rank's batch.

    `group_key(prompt, metadata)` names a sample's group (default: its prompt; give one when two groups
    of a batch may share a prompt). Every group must hold `reward.group_size` samples in all."""

    reward: FlowGRPOReward
    group_key: Callable[[str, Any], Hashable] | None = None
    process_group: Any = None

    def __call__(
        self, images: Any, prompts: Sequence[str], metadata: Any = None, only_strict: bool = True
    ) -> tuple[list[float], dict[str, Any]]:
        import torch.distributed as dist

        world = dist.get_world_size(self.process_group)
        rank = dist.get_rank(self.process_group)
        candidates = to_candidates(images)
        if len(candidates) != len(prompts):
            raise UsageError(f"{len(candidates)} images but {len(prompts)} prompts")
        metas = list(metadata) if isinstance(metadata, (list, tuple)) else [metadata] * len(prompts)
        keys = [self._key(p, m) for p, m in zip(prompts, metas, strict=True)]
        shared: list[Any] = [None] * world
        dist.all_gather_object(
            shared, list(zip(keys, prompts, candidates, strict=True)), group=self.process_group
        )
        groups = self._groups(shared)
        mine = [g for k, g in enumerate(groups) if k % world == rank]
        failure: FlexjudgeError | None = None
        try:
            judged: Any = self.reward.group.run(self._judge(shared, mine))
        except FlexjudgeError as error:  # told to every rank, so none waits forever for this one
            failure, judged = error, _Failed(rank, repr(error))
        answers: list[Any] = [None] * world
        dist.all_gather_object(answers, judged, group=self.process_group)
        if failure is not None:
            raise failure
        for part in answers:
            if isinstance(part, _Failed):
                raise FlexjudgeError(f"rank {part.rank} failed to judge its groups: {part.error}")
        values: dict[Sample, float] = {}
        failures: list[Any] = []
        for part in answers:
            for samples, floats, failed in part:
                values.update(zip(samples, floats, strict=True))
                failures.append(failed)
        return [values[(rank, i)] for i in range(len(prompts))], {"failures": failures, "groups": len(groups)}

    def _key(self, prompt: str, meta: Any) -> Hashable:
        return prompt if self.group_key is None else self.group_key(prompt, meta)

    def _groups(self, shared: list[Any]) -> list[list[Sample]]:
        groups: dict[Hashable, list[Sample]] = {}
        for rank, part in enumerate(shared):
            for index, (key, _, _) in enumerate(part):
                groups.setdefault(key, []).append((rank, index))
        size = self.reward.group_size
        wrong = {key: len(members) for key, members in groups.items() if len(members) != size}
        if wrong:
            raise UsageError(f"groups must hold {size} samples across the ranks; these do not: {wrong}")
        return list(groups.values())

    async def _judge(
        self, shared: list[Any], groups: list[list[Sample]]
    ) -> list[tuple[list[Sample], list[float], list[Any]]]:
        import asyncio

        async def one(samples: list[Sample]) -> tuple[list[Sample], list[float], list[Any]]:
            prompt = shared[samples[0][0]][samples[0][1]][1]
            result = await self.reward.group.arun(prompt, [shared[r][i][2] for r, i in samples])
            failed = [(f.first, f.second, repr(f.error)) for f in result.failures]
            return samples, self.reward.group.values(result), failed

        return list(await asyncio.gather(*(one(g) for g in groups)))
