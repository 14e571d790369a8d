"""GRPO rewards from group judgments: the paper's formula, the schedules that feed it, and its failures.

    from flexjudge.rewards import group_rewards
    result = group_rewards(prompt, images, judge)        # every pair of the group, judged concurrently
    result.rewards.advantages                            # alpha * z(dimension) + (1 - alpha) * z(overall)

`from_outcomes` is the pure formula, for outcomes obtained any other way.
"""

from flexjudge.rewards._formula import RELEASED_IMAGE_WEIGHTS, GroupRewards, Outcome, from_outcomes
from flexjudge.rewards._group import (
    GroupResult,
    JudgedPair,
    OnFailure,
    PairFailure,
    SwapMode,
    agroup_rewards,
    group_rewards,
)
from flexjudge.rewards._outcome import outcome_of
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

__all__ = [
    "RELEASED_IMAGE_WEIGHTS",
    "Active",
    "Bayesian",
    "GroupResult",
    "GroupRewards",
    "JudgedPair",
    "OnFailure",
    "Outcome",
    "PairFailure",
    "Posterior",
    "RandomGraph",
    "RoundRobin",
    "Schedule",
    "ScoreFirst",
    "SwapMode",
    "Swiss",
    "agroup_rewards",
    "from_outcomes",
    "group_rewards",
    "outcome_of",
]
