#!/usr/bin/env python
"""A Flow-GRPO / Pref-GRPO reward function backed by flexjudge, on a batch shaped as those loops shape it.

The sampler's batch is a float tensor (B, C, H, W) in [0, 1] holding G consecutive samples per prompt;
`reward_fn(images, prompts, metadata)` returns one float per sample (the paper's group advantages) and an
`info` dict (failed pairs, unscored samples, overall and dimension rates per group).

    python examples/rewards/flow_grpo_reward.py                         # the tiny random judge, on CPU
    python examples/rewards/flow_grpo_reward.py --model DIR             # a local judge
    python examples/rewards/flow_grpo_reward.py --base-url URL/v1 --model NAME   # a served judge (vLLM)

In a Flow-GRPO training script, build `reward_fn` once and call it where the script scores a batch; with
samples of one prompt spread over ranks, wrap it: `Gathered(reward_fn)` (flexjudge.rewards.distributed).
"""

from __future__ import annotations

import argparse

import torch

import flexjudge
from flexjudge.rewards.adapters import FlowGRPOReward, GroupReward


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--base-url", default=None)
    ap.add_argument("--group-size", type=int, default=3)
    args = ap.parse_args()
    tiny = args.model == "tiny-random"  # random weights never close a string: bound them (tests only)
    judge = flexjudge.Judge(
        args.model,
        base_url=args.base_url,
        max_string_length=8 if tiny else None,
        max_new_tokens=1024 if tiny else 4096,
    )
    reward_fn = FlowGRPOReward(GroupReward(judge, seed=0), group_size=args.group_size)
    prompts = ["a red fox in the snow"] * args.group_size + ["a blue car at night"] * args.group_size
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(len(prompts), 3, 32, 32, generator=generator)  # the sampler's decoded batch
    with judge:
        rewards, info = reward_fn(images, prompts, [{} for _ in prompts])
    for prompt, reward in zip(prompts, rewards, strict=True):
        print(f"{reward:+.3f}  {prompt}")
    print("failed pairs per group:", [len(f) for f in info["failures"]])


if __name__ == "__main__":
    main()
