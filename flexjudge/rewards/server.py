"""`POST /v1/rewards` on `flexjudge serve`: a batch of groups in, per group the rewards out.

The body names, per group, the prompt and the candidates (each an image data URL, or a list of frame
data URLs for a video), and once for the batch the reward settings (`swap`, `on_failure`, `schedule`,
`alpha`, `category_weights`, `seed`, `return_judgments`). Media is accepted inline only: a reward server
never opens a path or URL named in a request. The judge behind it is a `flexjudge.Judge` over the served
model (through the app's batcher, so reward pairs batch with chat requests) or over an OpenAI-compatible
server (`flexjudge serve --base-url`). Each group is `flexjudge.rewards.agroup_rewards`; the groups of a
request are judged concurrently. `on_failure="raise"` is not offered: one failed pair would throw away a
whole batch a trainer waits on; failures are always returned per group instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flexjudge._serve_limits import (
    ClientLeft,
    LimitExceeded,
    PixelBudget,
    ServeLimits,
    guarded,
    unless_client_leaves,
)
from flexjudge.errors import MediaError, UsageError
from flexjudge.judging import Judge
from flexjudge.rewards._group import GroupResult, agroup_rewards
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

if TYPE_CHECKING:
    from fastapi.responses import JSONResponse
    from starlette.requests import Request as HTTPRequest

__all__ = ["RewardsRequest", "judge_groups", "parse_rewards_request", "result_json", "rewards_endpoint"]


class _Body(BaseModel):
    # strict: JSON types as sent; forbid: an option this server does not know is refused, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


_Small = Annotated[int, Field(ge=1, le=1024)]


class RoundRobinSpec(_Body):
    kind: Literal["round_robin"]


class RandomGraphSpec(_Body):
    kind: Literal["random_graph"]
    k: _Small = 4


class SwissSpec(_Body):
    kind: Literal["swiss"]
    rounds: _Small = 4


class ActiveSpec(_Body):
    kind: Literal["active"]
    fraction: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.5
    per_round: _Small | None = None


class BayesianSpec(_Body):
    kind: Literal["bayesian"]
    fraction: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.5
    per_round: _Small = 1


class ScoreFirstSpec(_Body):
    kind: Literal["score_first"]
    fraction: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.5
    per_round: _Small = 1


class PosteriorSpec(_Body):
    kind: Literal["posterior"]
    fraction: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.5
    per_round: _Small = 2
    error: Annotated[float, Field(gt=0, lt=0.5, allow_inf_nan=False)] = 0.15


ScheduleSpec = Annotated[
    RoundRobinSpec | RandomGraphSpec | SwissSpec | ActiveSpec | PosteriorSpec | BayesianSpec | ScoreFirstSpec,
    Field(discriminator="kind"),
]
_Candidate = str | Annotated[list[str], Field(min_length=1)]


class GroupSpec(_Body):
    prompt: Annotated[str, Field(min_length=1)]
    candidates: Annotated[list[_Candidate], Field(min_length=2)]


class RewardsRequest(_Body):
    """The body of `POST /v1/rewards`."""

    groups: Annotated[list[GroupSpec], Field(min_length=1)]
    swap: bool | Literal["both"] = False
    on_failure: Literal["drop", "tie"] = "drop"
    schedule: ScheduleSpec | None = None
    alpha: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.7
    category_weights: (
        Annotated[list[Annotated[float, Field(ge=0, allow_inf_nan=False)]], Field(min_length=3, max_length=3)]
        | None
    ) = None
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    return_judgments: bool = False

    def to_schedule(self) -> Schedule:
        spec = self.schedule
        if isinstance(spec, RandomGraphSpec):
            return RandomGraph(k=spec.k)
        if isinstance(spec, SwissSpec):
            return Swiss(rounds=spec.rounds)
        if isinstance(spec, ActiveSpec):
            return Active(fraction=spec.fraction, per_round=spec.per_round)
        if isinstance(spec, BayesianSpec):
            return Bayesian(fraction=spec.fraction, per_round=spec.per_round)
        if isinstance(spec, ScoreFirstSpec):
            return ScoreFirst(fraction=spec.fraction, per_round=spec.per_round)
        if isinstance(spec, PosteriorSpec):
            return Posterior(fraction=spec.fraction, per_round=spec.per_round, error=spec.error)
        return RoundRobin()


def parse_rewards_request(raw: bytes, limits: ServeLimits) -> tuple[RewardsRequest, list[list[Any]]]:
    """A rewards body -> the validated request and each group's decoded candidates (a PIL image, or a
    list of frames), within `limits`; `UsageError` or `LimitExceeded` (400) saying what is wrong. Counts
    are checked before any image is decoded, and each image's header against what is left of the
    request's pixel budget before its pixels are."""
    from flexjudge.serve import _describe

    try:
        body = RewardsRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise UsageError(_describe(exc)) from None
    if body.category_weights is not None and sum(body.category_weights) <= 0:
        raise UsageError("category_weights must not all be 0")
    if len(body.groups) > limits.max_groups:
        raise _over(f"{len(body.groups)} groups", limits.max_groups, "--max-groups")
    for n, group in enumerate(body.groups):
        if len(group.candidates) > limits.max_group_candidates:
            where = f"group {n} has {len(group.candidates)} candidates"
            raise _over(where, limits.max_group_candidates, "--max-group-candidates")
    images = sum(len(c) if isinstance(c, list) else 1 for g in body.groups for c in g.candidates)
    if images > limits.max_reward_images:
        raise _over(f"the request has {images} images (frames counted)", limits.max_reward_images,
                    "--max-reward-images")  # fmt: skip
    budget = PixelBudget(
        limits.max_reward_pixels, limits.max_image_pixels, "--max-reward-pixels", UsageError, "candidates"
    )
    candidates = [
        [[budget.decode(f) for f in c] if isinstance(c, list) else budget.decode(c) for c in group.candidates]
        for group in body.groups
    ]
    return body, candidates


def _over(what: str, limit: int, flag: str) -> LimitExceeded:
    return LimitExceeded(f"{what}, above this server's limit of {limit} ({flag})", status=400)


async def judge_groups(judge: Judge, body: RewardsRequest, candidates: list[list[Any]]) -> list[GroupResult]:
    """Every group of the request, concurrently; cancelling this cancels every pair still being judged."""
    return list(
        await asyncio.gather(
            *(
                agroup_rewards(
                    group.prompt,
                    media,
                    judge,
                    schedule=body.to_schedule(),
                    swap=body.swap,
                    on_failure=body.on_failure,
                    alpha=body.alpha,
                    category_weights=body.category_weights,
                    seed=body.seed,
                )
                for group, media in zip(body.groups, candidates, strict=True)
            )
        )
    )


def result_json(result: GroupResult, *, judgments: bool) -> dict[str, Any]:
    """One group's answer: the rates, advantages and scalar reward, the outcomes counted, every failed
    pair with its error's type and message, and (when asked) the judgments."""
    rewards = result.rewards
    out: dict[str, Any] = {
        "advantages": rewards.advantages,
        "overall": rewards.overall,
        "dimension": rewards.dimension,
        "anchors": rewards.anchors,
        "comparisons": rewards.comparisons,
        "unscored": rewards.unscored,
        "alpha": rewards.alpha,
        "reward": rewards.reward(),
        "outcomes": [[i, j, winner, list(categories)] for i, j, winner, categories in result.outcomes],
        "failures": [
            {"first": f.first, "second": f.second, "type": type(f.error).__name__, "message": str(f.error)}
            for f in result.failures
        ],
    }
    if judgments:
        out["judgments"] = [
            {"first": p.first, "second": p.second, "judgment": p.judgment.model_dump(mode="json")}
            for p in result.judgments
        ]
    return out


def rewards_endpoint(
    app: Any, judge: Judge, limits: ServeLimits, error: Callable[..., JSONResponse]
) -> Callable[[HTTPRequest], Awaitable[JSONResponse]]:
    """The `/v1/rewards` handler of `flexjudge.serve.create_app`: the chat route's protections (the key
    is the app's middleware; body size and deadline, limits, the bounded queue in `app.state.admitted`)."""

    async def rewards(http: HTTPRequest) -> JSONResponse:
        async def handle(parsed: tuple[RewardsRequest, list[list[Any]]]) -> JSONResponse:
            body, media = parsed
            return await _answer(http, judge, body, media, error)

        def parse(raw: bytes) -> tuple[RewardsRequest, list[list[Any]]]:
            return parse_rewards_request(raw, limits)

        return await guarded(http, app.state, limits, error, parse, (UsageError,), handle)

    return rewards


async def _answer(
    http: HTTPRequest,
    judge: Judge,
    body: RewardsRequest,
    media: list[list[Any]],
    error: Callable[..., JSONResponse],
) -> JSONResponse:
    """Judge the groups, abandoning them when the client disconnects (every pair still queued or
    decoding is cancelled; the batcher stops a cancelled row's decoding at its next step)."""
    from fastapi.responses import JSONResponse

    try:
        results = await unless_client_leaves(http, judge_groups(judge, body, media))
    except ClientLeft:
        return error(499, "the client disconnected", "client_closed_request")
    except (UsageError, MediaError) as exc:  # what the request asked: a schedule that does not fit a group
        return error(400, str(exc), "invalid_request_error")
    except Exception as exc:
        return error(500, f"{type(exc).__name__}: {exc}", "server_error")
    groups = [result_json(r, judgments=body.return_judgments) for r in results]
    return JSONResponse({"object": "rewards", "groups": groups})
