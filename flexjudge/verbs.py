"""The one-off verbs: `flexjudge.judge`, `score`, `rank` and their async twins.

Each checks the call (candidate count, prompt, option names) and loads the media before it builds a
`Judge`, so a wrong call fails at once instead of after a model has loaded; then it runs one judgment and
closes what it opened. For many calls, keep a `Judge`. The keywords are `Judge(...)`'s settings plus the
method's options (`flexjudge.options`); `help(flexjudge.judge)` lists them all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from flexjudge._preflight import Candidate, Frames, check_call, check_settings, load_candidates
from flexjudge._sync import run_sync
from flexjudge.anchors import Modality
from flexjudge.judging import Judge
from flexjudge.options import Call, PairCall, PointCall, RankCall, keywords, split_options, with_keywords

if TYPE_CHECKING:
    from flexjudge.ranking import Ranking
    from flexjudge.schema import Judgment, PointwiseJudgment

T = TypeVar("T")

__all__ = ["ajudge", "arank", "ascore", "judge", "rank", "score"]


async def ajudge(prompt: str, candidates: Sequence[Candidate], **options: Unpack[PairCall]) -> Judgment:
    """Judge a pair once: which of two candidates better fits `prompt`. See `Judge` and `Judge.judge`."""
    return await _one_off("judge", prompt, candidates, options, PairCall, (2, 2), Judge.judge_loaded)


async def ascore(prompt: str, candidate: Candidate, **options: Unpack[PointCall]) -> PointwiseJudgment:
    """Score one candidate once on an absolute scale. See `Judge` and `Judge.score`."""
    return await _one_off("score", prompt, [candidate], options, PointCall, (1, 1), _score_first)


async def arank(prompt: str, candidates: Sequence[Candidate], **options: Unpack[RankCall]) -> Ranking:
    """Rank two or more candidates once by pairwise win rate. See `Judge` and `Judge.rank`."""
    return await _one_off("rank", prompt, candidates, options, RankCall, (2, None), Judge.rank_loaded)


def judge(prompt: str, candidates: Sequence[Candidate], **options: Unpack[PairCall]) -> Judgment:
    """Judge a pair once (synchronous `ajudge`; safe inside a running event loop)."""
    return run_sync(ajudge(prompt, candidates, **options))


def score(prompt: str, candidate: Candidate, **options: Unpack[PointCall]) -> PointwiseJudgment:
    """Score one candidate once (synchronous `ascore`)."""
    return run_sync(ascore(prompt, candidate, **options))


def rank(prompt: str, candidates: Sequence[Candidate], **options: Unpack[RankCall]) -> Ranking:
    """Rank candidates once (synchronous `arank`)."""
    return run_sync(arank(prompt, candidates, **options))


def _score_first(judge_: Judge, prompt: str, media: list[Frames], modality: Modality, call: Call) -> Any:
    return judge_.score_loaded(prompt, media[0], modality, call)


async def _one_off(
    verb: str,
    prompt: str,
    candidates: Sequence[Candidate],
    options: Mapping[str, Any],
    allowed: Any,
    count: tuple[int, int | None],
    run: Callable[[Judge, str, list[Frames], Modality, Call], Awaitable[T]],
) -> T:
    settings, call = split_options(verb, options, Judge.__init__, allowed)
    check_call(verb, prompt, candidates, *count)
    check_settings(settings)
    frames = settings.get("frames_per_video", keywords(Judge.__init__)["frames_per_video"].default)
    media, modality = await load_candidates(candidates, call.modality, frames, settings.get("limits"))
    model = settings.pop("model", None)
    judge_ = Judge(model, **settings)
    try:
        return await run(judge_, prompt, media, modality, call)
    finally:
        await judge_.aclose()


_VERBS: list[tuple[Callable[..., Any], Any]] = [
    *((verb, PairCall) for verb in (judge, ajudge)),
    *((verb, PointCall) for verb in (score, ascore)),
    *((verb, RankCall) for verb in (rank, arank)),
]
for _verb, _allowed in _VERBS:
    with_keywords(_verb, _allowed, Judge.__init__)
