#!/usr/bin/env python
"""Group rewards when a prompt's samples are spread over ranks, as Flow-GRPO spreads them.

Each rank holds half of every group. `Gathered` shares the samples (all_gather_object), judges whole
groups (each rank every world-size-th group) and hands each rank the rewards of its own samples, so a
sample is compared with its whole group, not with the part that happened to land on its rank.

    torchrun --nproc-per-node 2 examples/rewards/distributed_rewards.py          # gloo on CPU
    torchrun --nproc-per-node 8 examples/rewards/distributed_rewards.py --backend nccl --model DIR

(One judge per rank here, for a self-contained example; in training, point every rank at one served judge
with `--base-url` so the model is loaded once.)
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist

import flexjudge
from flexjudge.rewards.adapters import FlowGRPOReward, GroupReward
from flexjudge.rewards.distributed import Gathered


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--base-url", default=None)
    ap.add_argument("--backend", default="gloo")
    args = ap.parse_args()
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    group_size = 2 * world  # two samples of each prompt on every rank
    tiny = args.model == "tiny-random"
    judge = flexjudge.Judge(
        args.model,
        base_url=args.base_url,
        max_string_length=8 if tiny else None,
        max_new_tokens=1024 if tiny else 4096,
    )
    reward_fn = Gathered(FlowGRPOReward(GroupReward(judge, seed=0), group_size=group_size))
    prompts = ["a red fox in the snow"] * 2 + ["a blue car at night"] * 2
    generator = torch.Generator().manual_seed(rank)  # each rank sampled its own images
    images = torch.rand(len(prompts), 3, 32, 32, generator=generator)
    try:
        with judge:
            rewards, info = reward_fn(images, prompts)
        print(
            f"rank {rank}: {len(rewards)} rewards {[round(r, 3) for r in rewards]}; groups {info['groups']}",
            flush=True,  # one whole line now, before the process group (and the process) goes away
        )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
