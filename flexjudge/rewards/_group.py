"""`group_rewards`: judge a group's scheduled pairs through one `Judge`, count every failure, reward.

Each candidate's media is decoded once for the whole group, and a served backend encodes each image once
(its data-URL memo, filled where the image loads), so the 36 pairs of G = 9 cost nine decodes, not 72.
Candidates load in parallel and a pair is judged as soon as its two have loaded, so the first requests
are out while later images still encode (for 1024x1024 photographs, 0.1 s each). Pairs of a round are
judged concurrently: a local model batches them, a server gets up to `max_concurrency` at once. A
candidate that cannot be loaded stops the group with its `MediaError`, and a pair failing under
`on_failure="raise"` with its error: either way the round's other requests are cancelled, not left running.
An incomplete schedule's choices and its rewards' fit (Bradley-Terry, or the exact posterior: about
30 ms at G = 16) run in a worker thread, so the event loop keeps serving the other groups'
requests meanwhile; round robin's are too cheap to be worth the hop.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from flexjudge._preflight import Candidate as Media
from flexjudge._preflight import Frames, check_call, finish_loading
from flexjudge._sync import cancel_and_collect
from flexjudge.anchors import Modality
from flexjudge.errors import FlexjudgeError, UsageError
from flexjudge.judging import Judge
from flexjudge.options import Call
from flexjudge.rewards._formula import ANCHOR_COUNT, GroupRewards, Outcome, from_outcomes
from flexjudge.rewards._outcome import outcome_of
from flexjudge.rewards.schedules import RoundRobin, Schedule, ScoreFirst, estimate_of
from flexjudge.schema import Judgment, PointwiseJudgment, Preferences

__all__ = [
    "GroupResult",
    "JudgedPair",
    "OnFailure",
    "PairFailure",
    "SwapMode",
    "agroup_rewards",
    "group_rewards",
]

T = TypeVar("T")

OnFailure = Literal["drop", "tie", "raise"]
"""What a failed pair counts as: `drop` nothing; `tie` 0.5 overall to each side and no dimensions (the
released code, exactly); `raise` stops the group with the error. Failures are returned in every mode."""

SwapMode = bool | Literal["both"]
"""False: each pair in one order (lower index first). True: both orders, merged into one outcome by the
judge's swap rule (position bias cancelled, one comparison). "both": both orders, counted as two."""


@dataclass(frozen=True)
class JudgedPair:
    """One judgment behind the rewards: which candidates it showed, in which order (0-based)."""

    first: int
    second: int
    judgment: Judgment


@dataclass(frozen=True)
class PairFailure:
    """A pair whose judgment failed, with the error: never turned into a result silently. `first ==
    second` is that candidate's `score` call (the `ScoreFirst` schedule's)."""

    first: int
    second: int
    error: FlexjudgeError


@dataclass(frozen=True)
class GroupResult:
    """A group's rewards with everything behind them."""

    rewards: GroupRewards
    judgments: list[JudgedPair]
    outcomes: list[Outcome]
    """The outcomes counted, failures read as ties included (on_failure="tie")."""
    failures: list[PairFailure] = field(default_factory=list)
    scores: list[PointwiseJudgment | None] = field(default_factory=list)
    """`ScoreFirst`'s score call of each candidate (None where it failed); empty for other schedules."""

    def matrix(self) -> list[list[float | None]]:
        """`m[a][b]`: the points candidate a took from its games against b (a win 1, a tie 0.5 each, over
        every counted comparison); None where the two never met."""
        g = len(self.rewards.overall)
        m: list[list[float | None]] = [[None] * g for _ in range(g)]
        for i, j, winner, _ in self.outcomes:
            for a, b in ((i, j), (j, i)):
                m[a][b] = (m[a][b] or 0.0) + (0.5 if winner is None else 1.0 if winner == a else 0.0)
        return m


async def agroup_rewards(
    prompt: str,
    candidates: Sequence[Media],
    judge: Judge,
    *,
    schedule: Schedule | None = None,
    swap: SwapMode = False,
    on_failure: OnFailure = "drop",
    alpha: float = 0.7,
    category_weights: Sequence[float] | None = None,
    modality: Modality | None = None,
    preferences: Preferences | str | None = None,
    seed: int | None = None,
) -> GroupResult:
    """Judge the pairs `schedule` picks (default: round robin, every pair) among `candidates` and turn
    the judgments into the group's rewards (`flexjudge.rewards.from_outcomes`). `seed` seeds the judge's
    sampling and the schedule's random choices."""
    schedule = schedule if schedule is not None else RoundRobin()
    if on_failure not in ("drop", "tie", "raise"):
        raise UsageError(f"on_failure must be 'drop', 'tie' or 'raise', got {on_failure!r}")
    if swap not in (False, True, "both"):
        raise UsageError(f"swap must be False, True or 'both', got {swap!r}")
    check_call("group_rewards", prompt, candidates, 2, None)  # the checks every verb makes
    call = Call(preferences=Preferences.coerce(preferences), swap=swap is True, seed=seed, modality=modality)
    loading, loaded_modality = judge.start_loading(candidates, modality)
    rng = random.Random(seed)
    outcomes: list[Outcome] = []
    judged: list[JudgedPair] = []
    failures: list[PairFailure] = []
    off_loop = not schedule.complete  # see the module docstring
    scored: list[PointwiseJudgment | None] = []
    try:
        if isinstance(schedule, ScoreFirst):
            score_results = await _gather_cancelling(
                [
                    _score_one(judge, prompt, loading, k, loaded_modality, call, on_failure)
                    for k in range(len(loading))
                ]
            )
            for k, score in enumerate(score_results):
                if isinstance(score, FlexjudgeError):
                    failures.append(PairFailure(k, k, score))
                    scored.append(None)
                else:
                    scored.append(score)
            schedule = schedule.with_scores([None if j is None else score_readings(j) for j in scored])
        while pairs := await _call(off_loop, schedule.next_pairs, len(loading), outcomes, rng):
            shown = [(i, j) for i, j in pairs] + ([(j, i) for i, j in pairs] if swap == "both" else [])
            results = await _gather_cancelling(
                [
                    _judge_one(judge, prompt, loading, a, b, loaded_modality, call, on_failure)
                    for a, b in shown
                ],
            )
            for (a, b), result in zip(shown, results, strict=True):
                if isinstance(result, FlexjudgeError):
                    failures.append(PairFailure(a, b, result))
                    if on_failure == "tie":
                        outcomes.append((min(a, b), max(a, b), None, ()))
                else:
                    judged.append(JudgedPair(a, b, result))
                    outcomes.append(outcome_of(result, a, b))
            if not any(isinstance(r, Judgment) for r in results) and on_failure == "drop":
                break  # nothing new to schedule on: an adaptive schedule would ask the same pairs again
        await finish_loading(loading)  # a candidate no pair showed must load all the same
    finally:
        await cancel_and_collect(loading)  # all done already, unless the group stopped early
    rewards = await _call(
        off_loop,
        from_outcomes,
        len(loading),
        outcomes,
        alpha=alpha,
        category_weights=category_weights,
        estimate=estimate_of(schedule),
        scores=schedule.scores if isinstance(schedule, ScoreFirst) else None,
    )
    return GroupResult(rewards=rewards, judgments=judged, outcomes=outcomes, failures=failures, scores=scored)


async def _call(off_loop: bool, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`function(*args, **kwargs)`, in a worker thread when `off_loop`."""
    if off_loop:
        return await asyncio.to_thread(function, *args, **kwargs)
    return function(*args, **kwargs)


def group_rewards(
    prompt: str,
    candidates: Sequence[Media],
    judge: Judge,
    *,
    schedule: Schedule | None = None,
    swap: SwapMode = False,
    on_failure: OnFailure = "drop",
    alpha: float = 0.7,
    category_weights: Sequence[float] | None = None,
    modality: Modality | None = None,
    preferences: Preferences | str | None = None,
    seed: int | None = None,
) -> GroupResult:
    """Synchronous `agroup_rewards`, on the judge's own event loop (safe inside a running loop)."""
    return judge._run(
        agroup_rewards(
            prompt,
            candidates,
            judge,
            schedule=schedule,
            swap=swap,
            on_failure=on_failure,
            alpha=alpha,
            category_weights=category_weights,
            modality=modality,
            preferences=preferences,
            seed=seed,
        )
    )


async def _gather_cancelling(work: list[Coroutine[Any, Any, T]]) -> list[T]:
    """`asyncio.gather` of `work`, except that the first exception cancels the rest (and waits for them)
    before it propagates: nothing is left running behind a caller that got an error."""
    tasks = [asyncio.ensure_future(one) for one in work]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        await cancel_and_collect(tasks)
        raise


def score_readings(judgment: PointwiseJudgment) -> list[float]:
    """What `ScoreFirst` reads of a score call: the overall score and the anchors' scores (a generated
    dimension, like the generated dimension D of a pair, speaks through the overall score only)."""
    return [float(judgment.verdict.score)] + [float(d.score) for d in judgment.dimensions[:ANCHOR_COUNT]]


async def _score_one(
    judge: Judge,
    prompt: str,
    loading: list[asyncio.Task[Frames]],
    k: int,
    modality: Modality,
    call: Call,
    on_failure: OnFailure,
) -> PointwiseJudgment | FlexjudgeError:
    images = await loading[k]  # a candidate that cannot load stops the group
    return await _result_or_error(judge.score_loaded(prompt, images, modality, call), on_failure)


async def _judge_one(
    judge: Judge,
    prompt: str,
    loading: list[asyncio.Task[Frames]],
    first: int,
    second: int,
    modality: Modality,
    call: Call,
    on_failure: OnFailure,
) -> Judgment | FlexjudgeError:
    media = [await loading[first], await loading[second]]  # a candidate that cannot load stops the group
    return await _result_or_error(judge.judge_loaded(prompt, media, modality, call), on_failure)


async def _result_or_error(work: Coroutine[Any, Any, T], on_failure: OnFailure) -> T | FlexjudgeError:
    """The judge call's result, or its error as a value (raised instead under `on_failure="raise"`)."""
    try:
        return await work
    except FlexjudgeError as error:
        if on_failure == "raise":
            raise
        return error
