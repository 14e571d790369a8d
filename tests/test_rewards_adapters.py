"""The reward adapters: Flow-GRPO's reward_fn, the group callable, TRL reward functions, and the
cross-rank gather with two real gloo processes."""

from __future__ import annotations

import asyncio
import inspect
import math
import os
from collections.abc import Iterator

import pytest

from flexjudge import Judge, UsageError
from flexjudge.rewards import group_rewards
from flexjudge.rewards.adapters import FlowGRPOReward, GroupReward
from flexjudge.rewards.verifiable import averdict_reward, verdict_reward
from tests.simulated import SimulatedJudge, candidate, judgment_text

torch = pytest.importorskip("torch")

GROUPS = {"a red fox": [120, 200, 40, 160], "a blue car": [90, 30, 250, 10]}


def _batch() -> tuple[object, list[str]]:
    """Flow-GRPO's layout: a float (B, C, H, W) tensor in [0, 1], G consecutive samples per prompt."""
    prompts = [p for p, qualities in GROUPS.items() for _ in qualities]
    import numpy as np

    pixels = [
        torch.from_numpy(np.array(candidate(q))).permute(2, 0, 1) / 255 for qs in GROUPS.values() for q in qs
    ]
    return torch.stack(pixels), prompts


@pytest.fixture
def judge() -> Iterator[Judge]:
    with Judge("simulated", backend=SimulatedJudge()) as j:
        yield j


def test_flow_grpo_reward_fn_rewards_each_group_as_group_rewards_does(judge: Judge) -> None:
    images, prompts = _batch()
    fn = FlowGRPOReward(GroupReward(judge), group_size=4)
    rewards, info = fn(images, prompts, [{}] * len(prompts))
    expected = [
        a
        for p, qs in GROUPS.items()
        for a in group_rewards(p, [candidate(q) for q in qs], judge).rewards.advantages
    ]
    assert rewards == pytest.approx(expected)
    assert rewards[1] == max(rewards[:4]) and rewards[6] == max(rewards[4:])  # the best of each group
    assert info["failures"] == [[], []] and info["unscored"] == [[], []]
    assert info["overall"][0] == [1 / 3, 1.0, 0.0, 2 / 3]


def test_the_released_scalar_is_offered_for_loops_that_normalise(judge: Judge) -> None:
    images, prompts = _batch()
    rewards, _ = FlowGRPOReward(GroupReward(judge, output="reward"), group_size=4)(images, prompts)
    assert all(0.0 <= r <= 1.0 for r in rewards) and rewards[1] == 1.0 and rewards[2] == 0.0


def test_a_batch_that_is_not_groups_is_refused(judge: Judge) -> None:
    images, prompts = _batch()
    fn = FlowGRPOReward(GroupReward(judge), group_size=4)
    with pytest.raises(UsageError, match="share one prompt"):
        fn(images, prompts[1:] + prompts[:1])
    with pytest.raises(UsageError, match="groups of 3"):
        FlowGRPOReward(GroupReward(judge), group_size=3)(images, prompts)
    with pytest.raises(UsageError, match="prompts"):
        fn(images, prompts[:4])


def test_the_group_callable_and_its_failures(judge: Judge) -> None:
    reward = GroupReward(judge)
    values = reward("a red fox", [candidate(q) for q in GROUPS["a red fox"]])
    assert (
        values.index(max(values)) == 1
        and asyncio.run(reward.acall("a red fox", [candidate(120), candidate(3)]))[0] > 0
    )
    broken = SimulatedJudge(broken={frozenset((120, 200)), frozenset((120, 40)), frozenset((120, 160))})
    with Judge("simulated", backend=broken) as j:
        isolated = GroupReward(j, output="reward")("a red fox", [candidate(q) for q in GROUPS["a red fox"]])
    assert math.isnan(isolated[0])  # every pair of candidate 0 failed: no reward is made up for it
    assert GroupReward(j)("a red fox", [candidate(q) for q in GROUPS["a red fox"]])[0] == 0.0


# ------------------------------------------------------------------------------------ TRL GRPOTrainer


def _trl_call(completions: list[object], labels: list[object]) -> dict[str, object]:
    """The keywords GRPOTrainer passes a reward function (TRL 1.x): the batch and every dataset column."""
    return {
        "prompts": ["judge these"] * len(completions),
        "completions": completions,
        "completion_ids": [[1, 2, 3]] * len(completions),
        "trainer_state": None,
        "log_extra": None,
        "log_metric": None,
        "label": labels,
        "image": [None] * len(completions),
    }


def test_trl_reward_functions_score_the_judges_own_verdicts() -> None:
    right, wrong, contradictory = judgment_text(2), judgment_text(1), judgment_text(2, overall=1)
    completions: list[object] = [
        [{"role": "assistant", "content": right}],
        wrong,
        "the second image is nicer",
        [{"role": "assistant", "content": [{"type": "text", "text": right}]}],
        right,
        [{"role": "assistant", "content": contradictory}],
    ]
    labels: list[object] = [2, 2, 2, "Image 2", None, 2]
    fn = verdict_reward()
    rewards = fn(**_trl_call(completions, labels))
    assert rewards[:5] == [1.0, 0.0, 0.0, 1.0, None]
    assert (
        rewards[5] is not None and rewards[5] < 0.0
    )  # names the wrong winner, and contradicts its categories
    assert fn.__name__ == "flexjudge_verdict"  # TRL logs each reward function under its name
    async_fn = averdict_reward(unreadable=-1.0)
    assert inspect.iscoroutinefunction(async_fn)
    assert asyncio.run(async_fn(**_trl_call(completions[:3], [2, 2, 2]))) == [1.0, 0.0, -1.0]


def test_trl_reward_refuses_labels_it_cannot_read() -> None:
    with pytest.raises(UsageError, match="label"):
        verdict_reward()(**_trl_call([judgment_text(2)], ["the second"]))
    with pytest.raises(UsageError, match="column"):
        verdict_reward(label="winner")(**_trl_call([judgment_text(2)], [2]))


# ------------------------------------------------------------------------- torch.distributed gather


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    import json

    import torch.distributed as dist

    from flexjudge.rewards.distributed import Gathered

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        images, prompts = _batch()
        # Each rank holds half of every group: rank 0 samples 0-1 of each prompt, rank 1 samples 2-3.
        mine = [k for k in range(len(prompts)) if (k % 4) // 2 == rank]
        with Judge("simulated", backend=SimulatedJudge()) as judge:
            fn = Gathered(FlowGRPOReward(GroupReward(judge), group_size=4))
            rewards, info = fn(images[mine], [prompts[k] for k in mine])  # type: ignore[index]
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"indices": mine, "rewards": rewards, "groups": info["groups"]}, f)
    finally:
        dist.destroy_process_group()


def test_the_gather_judges_whole_groups_across_two_gloo_ranks(tmp_path: object, judge: Judge) -> None:
    import json

    import torch.multiprocessing as mp

    from tests.served import free_port

    out = os.path.join(str(tmp_path), "rank")
    mp.spawn(_rank_main, args=(2, free_port(), out), nprocs=2, join=True)
    images, prompts = _batch()
    whole, _ = FlowGRPOReward(GroupReward(judge), group_size=4)(images, prompts)
    seen: dict[int, float] = {}
    for rank in range(2):
        with open(f"{out}.{rank}") as f:
            part = json.load(f)
        assert part["groups"] == 2
        seen.update(zip(part["indices"], part["rewards"], strict=True))
    # Every sample's reward is the one it gets when its whole group is judged in one process.
    assert [seen[k] for k in range(8)] == pytest.approx(whole)
