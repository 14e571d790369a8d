"""The front door: `Judge` turns a prompt and candidates into a typed, checked judgment.

One verb per result: `judge` (a pair -> `Judgment`), `score` (one candidate -> `PointwiseJudgment`),
`rank` (N candidates -> `Ranking`, built on pairs), each with an async twin and a batch form.
Flow for one pair: load and size-check the media, render the prompt for the requested wire format, ask
the backend for a generation under the constraint the judge layer built (`reading.py`), read it with
`flexjudge.parse`, run `check()` once and attach its findings, and record how it was made in `meta`.
`swap=True` runs both candidate orders in one backend call and merges them (`flexjudge.swap`).
The one-off verbs (`flexjudge.judge`, ...) live in `oneoff.py`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Unpack

from flexjudge._preflight import (
    Candidate,
    Frames,
    check_call,
    check_settings,
    load_candidates,
    start_loading,
)
from flexjudge._sync import LoopThread, run_sync
from flexjudge.anchors import Modality
from flexjudge.backends.auto import make_backend
from flexjudge.backends.base import Backend, Constraint, Generation, ImagePart, Message, Request, TextPart
from flexjudge.checks import check
from flexjudge.confidence import confidence_of, winner_token_probability
from flexjudge.constraints import OutputFormat
from flexjudge.errors import UsageError, ValidationFailed
from flexjudge.evaluation.calibration import CalibrationMap
from flexjudge.formats import parse
from flexjudge.options import (
    Call,
    OnFindings,
    PairOptions,
    PointOptions,
    RankOptions,
    call_options,
    with_keywords,
)
from flexjudge.prompting import PromptSpec, render_prompt, template_identity
from flexjudge.ranking import Ranking, rank_by_win_rate
from flexjudge.reading import (
    checked_model,
    pair_request_constraint,
    point_request_constraint,
    point_with_scale,
    read_generation,
    weighted_verdict,
)
from flexjudge.schema import Judgment, PointScale, PointwiseJudgment, Sampling, Usage
from flexjudge.swap import merge_swapped, unswap

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from flexjudge.media import Limits

DEFAULT_MODEL = "CodeGoat24/UnifiedReward-Flex-qwen3vl-8b"
THINKING_OFF: dict[str, Any] = {"enable_thinking": False}
"""The chat-template arguments sent by default: the released Qwen3.5-based judge is served with thinking
off, and templates without the switch ignore it."""

T = TypeVar("T")
Judged = TypeVar("Judged", Judgment, PointwiseJudgment)

__all__ = ["DEFAULT_MODEL", "Judge"]


class Judge:
    """A reusable judge: holds the backend and its compiled constraints for many calls.

    - `model`: a local model directory (or a hub id in the local cache, or `"tiny-random"`), or the model
      name a server knows; default the released UnifiedReward-Flex checkpoint.
    - `backend`: `"auto"` (a server when `base_url=` or FLEXJUDGE_BASE_URL is set, else local
      transformers), `"transformers"`, `"openai"`, or a `Backend` of your own (left open on close).
    - `output_format`: `"flex"` (the released format) or `"native"` (intent and evidence first).
    - `engine`, `device`, `dtype`: local models only; the constraint engine (default llguidance), the
      device (None: cuda when available), the dtype (None: bf16 on a GPU that has it, float32 on CPU).
    - `frames_per_video` frames are sampled uniformly from each video; `limits` bounds media
      (`flexjudge.Limits`); `template` is a prompt template file of your own.
    - Sampling: `max_new_tokens`, `temperature` (0: greedy), `top_p`; `chat_template_kwargs` reach the
      chat template (default: thinking off); `max_concurrency` bounds requests in flight to a server.
    - `max_string_length` bounds every string while decoding: for random-weight test models only.
    - `backend_options`: keywords of the backend's constructor (`TransformersBackend`, `OpenAIBackend`).
    - `calibration`: a `CalibrationMap` or the path of one saved by `flexjudge eval`; every pairwise
      judgment's `meta.confidence` (`flexjudge.confidence.confidence_of`) is mapped through it. Without
      it the confidence is uncalibrated.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        backend: str | Backend = "auto",
        base_url: str | None = None,
        api_key: str | None = None,
        output_format: OutputFormat = "flex",
        engine: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        frames_per_video: int = 8,
        limits: Limits | None = None,
        template: str | Path | None = None,
        max_new_tokens: int = 4096,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_concurrency: int = 8,
        max_string_length: int | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        backend_options: dict[str, Any] | None = None,
        calibration: str | Path | CalibrationMap | None = None,
    ) -> None:
        check_settings(
            {
                "output_format": output_format,
                "frames_per_video": frames_per_video,
                "max_new_tokens": max_new_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "max_concurrency": max_concurrency,
            }
        )
        if template is not None and not Path(template).is_file():
            raise UsageError(f"template= names no file: {template}")
        if calibration is not None and not isinstance(calibration, CalibrationMap):
            calibration = CalibrationMap.load(calibration)  # a bad file fails here, not at the first call
        self.calibration = calibration
        self.model = model or DEFAULT_MODEL
        self.backend: Backend = make_backend(
            backend,
            self.model,
            base_url=base_url,
            api_key=api_key,
            engine=engine,
            device=device,
            dtype=dtype,
            max_concurrency=max_concurrency,
            options=dict(backend_options or {}),
        )
        self._owns_backend = isinstance(backend, str)  # a Backend handed in is the caller's to close
        self.output_format: OutputFormat = output_format
        self.frames_per_video = frames_per_video
        self.limits = limits
        self.template = str(template) if template is not None else None
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.max_string_length = max_string_length
        self.chat_template_kwargs = dict(
            THINKING_OFF if chat_template_kwargs is None else chat_template_kwargs
        )
        self.max_concurrency = max_concurrency
        self._sync_loop: LoopThread | None = None

    # -- the verbs: keyword options are typed by `flexjudge.options` and checked at run time -----------

    async def ajudge(
        self, prompt: str, candidates: Sequence[Candidate], **options: Unpack[PairOptions]
    ) -> Judgment:
        """Judge a pair: which of two candidates better fits `prompt`, dimension by dimension.
        `swap=True` also judges the reversed order and merges both (position bias cancelled)."""
        call = call_options("judge", options, PairOptions)
        check_call("judge", prompt, candidates, 2, 2)
        media, modality = await self.load(candidates, call.modality)
        return await self.judge_loaded(prompt, media, modality, call)

    def judge(self, prompt: str, candidates: Sequence[Candidate], **options: Unpack[PairOptions]) -> Judgment:
        """Synchronous `ajudge`; safe to call from code that already runs an event loop."""
        return self._run(self.ajudge(prompt, candidates, **options))

    async def ascore(
        self, prompt: str, candidate: Candidate, **options: Unpack[PointOptions]
    ) -> PointwiseJudgment:
        """Score one candidate on an absolute scale (`scale=`, default 1..10) with the same anchors."""
        call = call_options("score", options, PointOptions)
        check_call("score", prompt, [candidate], 1, 1)
        media, modality = await self.load([candidate], call.modality)
        return await self.score_loaded(prompt, media[0], modality, call)

    def score(self, prompt: str, candidate: Candidate, **options: Unpack[PointOptions]) -> PointwiseJudgment:
        """Synchronous `ascore`."""
        return self._run(self.ascore(prompt, candidate, **options))

    async def arank(
        self, prompt: str, candidates: Sequence[Candidate], **options: Unpack[RankOptions]
    ) -> Ranking:
        """Rank two or more candidates by their win rate over every pair (each judged as `judge` does)."""
        call = call_options("rank", options, RankOptions)
        check_call("rank", prompt, candidates, 2, None)
        media, modality = await self.load(candidates, call.modality)
        return await self.rank_loaded(prompt, media, modality, call)

    def rank(self, prompt: str, candidates: Sequence[Candidate], **options: Unpack[RankOptions]) -> Ranking:
        """Synchronous `arank`."""
        return self._run(self.arank(prompt, candidates, **options))

    async def abatch(
        self, items: Sequence[tuple[str, Sequence[Candidate]]], **options: Unpack[PairOptions]
    ) -> list[Judgment]:
        """Judge many (prompt, [a, b]) items; results in order. Items run concurrently, so a local model
        decodes them together in batches, with at most `in_flight` items' media loaded at once."""
        call_options("batch", options, PairOptions)
        for prompt, candidates in items:
            check_call("batch", prompt, candidates, 2, 2)
        return await self._bounded([functools.partial(self.ajudge, p, c, **options) for p, c in items])

    def batch(
        self, items: Sequence[tuple[str, Sequence[Candidate]]], **options: Unpack[PairOptions]
    ) -> list[Judgment]:
        """Synchronous `abatch`."""
        return self._run(self.abatch(items, **options))

    async def ascore_batch(
        self, items: Sequence[tuple[str, Candidate]], **options: Unpack[PointOptions]
    ) -> list[PointwiseJudgment]:
        """Score many (prompt, candidate) items; results in order, media loaded under the same bound."""
        call_options("score_batch", options, PointOptions)
        for prompt, candidate in items:
            check_call("score_batch", prompt, [candidate], 1, 1)
        return await self._bounded([functools.partial(self.ascore, p, c, **options) for p, c in items])

    def score_batch(
        self, items: Sequence[tuple[str, Candidate]], **options: Unpack[PointOptions]
    ) -> list[PointwiseJudgment]:
        """Synchronous `ascore_batch`."""
        return self._run(self.ascore_batch(items, **options))

    async def arank_batch(
        self, items: Sequence[tuple[str, Sequence[Candidate]]], **options: Unpack[RankOptions]
    ) -> list[Ranking]:
        """Rank many (prompt, candidates) items; results in order."""
        call_options("rank_batch", options, RankOptions)
        for prompt, candidates in items:
            check_call("rank_batch", prompt, candidates, 2, None)
        return await self._bounded([functools.partial(self.arank, p, c, **options) for p, c in items])

    def rank_batch(
        self, items: Sequence[tuple[str, Sequence[Candidate]]], **options: Unpack[RankOptions]
    ) -> list[Ranking]:
        """Synchronous `arank_batch`."""
        return self._run(self.arank_batch(items, **options))

    # -- lifecycle --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Release what the backend this Judge made holds for the running event loop (a backend handed in
        stays open: it is the caller's). `async with judge:` calls it on the way out."""
        if self._owns_backend:
            await self.backend.aclose()

    def close(self) -> None:
        """Synchronous `aclose`, and stop the background loop of the sync methods."""
        if self._sync_loop is not None:
            self._sync_loop.run(self.aclose())
            self._sync_loop.stop()
            self._sync_loop = None
        else:
            run_sync(self.aclose())

    def __enter__(self) -> Judge:
        return self

    async def __aenter__(self) -> Judge:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the steps, for the verbs above and the one-off verbs -------------------------------------

    @property
    def in_flight(self) -> int:
        """How many batch items may hold their decoded media at once: enough to fill model batches and
        server concurrency, few enough that memory stays flat over a long batch."""
        return max(16, 2 * self.max_concurrency)

    async def load(
        self, candidates: Sequence[Candidate], modality: Modality | None
    ) -> tuple[list[Frames], Modality]:
        """Decode and size-check the candidates (off the event loop); one modality for all of them."""
        return await load_candidates(candidates, modality, self.frames_per_video, self.limits, self._prepare)

    def start_loading(
        self, candidates: Sequence[Candidate], modality: Modality | None
    ) -> tuple[list[asyncio.Task[Frames]], Modality]:
        """`load` without waiting: one task per candidate (see `_preflight.start_loading`)."""
        return start_loading(candidates, modality, self.frames_per_video, self.limits, self._prepare)

    @property
    def _prepare(self) -> Callable[[PILImage], object] | None:
        """The backend's per-image preparation, run where each image loads (`Backend`'s docstring)."""
        prepare: Callable[[PILImage], object] | None = getattr(self.backend, "prepare_image", None)
        return prepare

    async def judge_loaded(
        self, prompt: str, media: list[Frames], modality: Modality, call: Call
    ) -> Judgment:
        (judgment,) = await self._judge_pairs(prompt, [(media[0], media[1])], modality, call)
        return _with_findings(judgment, prompt, call.on_findings)

    async def score_loaded(
        self, prompt: str, images: Frames, modality: Modality, call: Call
    ) -> PointwiseJudgment:
        scale = call.scale or PointScale()
        spec = self._spec("point", modality)
        text = render_prompt(spec, prompt, call.preferences, low=scale.low, high=scale.high)
        custom = call.preferences.custom_dimensions if call.preferences is not None else ()
        constraint = point_request_constraint(modality, scale.low, scale.high, self.max_string_length, custom)
        (generation,) = await self.backend.generate([self._request(text, images, constraint, call.seed)])
        judgment = read_generation(functools.partial(point_with_scale, generation.text, scale), generation)
        judgment.meta = judgment.meta.model_copy(update=self._provenance(generation, call, spec, constraint))
        return _with_findings(judgment, prompt, call.on_findings)

    async def rank_loaded(self, prompt: str, media: list[Frames], modality: Modality, call: Call) -> Ranking:
        pairs = list(itertools.combinations(range(len(media)), 2))
        judgments = await self._judge_pairs(prompt, [(media[i], media[j]) for i, j in pairs], modality, call)
        checked = [_with_findings(j, prompt, call.on_findings) for j in judgments]
        return rank_by_win_rate(len(media), pairs, checked)

    # -- internals --------------------------------------------------------------------------------

    def _run(self, coroutine: Awaitable[T]) -> T:
        # Sync calls run on one event loop that this Judge keeps in a background thread; a served backend
        # keeps one client per event loop, so the same Judge also serves async callers.
        if self._sync_loop is None:
            self._sync_loop = LoopThread()
        return self._sync_loop.run(coroutine)  # type: ignore[arg-type]

    async def _bounded(self, calls: list[Callable[[], Awaitable[T]]]) -> list[T]:
        gate = asyncio.Semaphore(self.in_flight)

        async def one(call: Callable[[], Awaitable[T]]) -> T:
            async with gate:  # media is loaded inside the call: only `in_flight` items hold theirs
                return await call()

        return list(await asyncio.gather(*(one(c) for c in calls)))

    def _spec(self, mode: Literal["pair", "point"], modality: Modality) -> PromptSpec:
        return PromptSpec(
            mode=mode,
            modality=modality,
            output_format=self.output_format,
            frames_per_video=self.frames_per_video,
            template=self.template,
        )

    def _request(
        self,
        text: str,
        images: Frames,
        constraint: Constraint,
        seed: int | None,
        response_model: Any = None,
        logprobs: bool = False,
    ) -> Request:
        parts: list[TextPart | ImagePart] = [ImagePart(image) for image in images]
        parts.append(TextPart(text))
        return Request(
            messages=(Message(role="user", parts=tuple(parts)),),
            constraint=constraint,
            response_model=response_model,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=seed,
            chat_template_kwargs=self.chat_template_kwargs,
            logprobs=logprobs,
        )

    async def _judge_pairs(
        self,
        prompt: str,
        pairs: list[tuple[Frames, Frames]],
        modality: Modality,
        call: Call,
    ) -> list[Judgment]:
        """Judge every pair (both orders when `swap`) in one backend call, so a local model batches them."""
        prefs = call.preferences
        shown = [(one, two, [1, 2]) for one, two in pairs]
        if call.swap:
            shown += [(two, one, [2, 1]) for one, two in pairs]
        spec = self._spec("pair", modality)
        text = render_prompt(spec, prompt, prefs)
        custom = prefs.custom_dimensions if prefs is not None else ()
        constraint = pair_request_constraint(modality, self.output_format, custom, self.max_string_length)
        checked = checked_model(self.output_format, modality)
        requests = [
            self._request(text, first + second, constraint, call.seed, checked, logprobs=True)
            for first, second, _ in shown
        ]
        generations = await self.backend.generate(requests)
        judgments = []
        for generation, (_, _, order) in zip(generations, shown, strict=True):
            read = functools.partial(
                parse, generation.text, format=self.output_format, modality=modality, prompt=prompt
            )
            judgment = read_generation(read, generation)
            judgment.meta = judgment.meta.model_copy(
                update={
                    "candidate_order": order,
                    "winner_probability": winner_token_probability(
                        generation.text, generation.token_logprobs, judgment.verdict.winner
                    ),
                    **self._provenance(generation, call, spec, constraint),
                }
            )
            if prefs is not None and prefs.weighted_verdict:
                judgment = weighted_verdict(judgment, prefs)
            judgments.append(judgment)
        if call.swap:
            half = len(pairs)
            judgments = [merge_swapped(judgments[k], unswap(judgments[half + k]), prefs) for k in range(half)]
        return [self._with_confidence(j) for j in judgments]

    def _with_confidence(self, judgment: Judgment) -> Judgment:
        """Set `meta.confidence`, calibrated when this judge has a map (a tie keeps its defined 0.5)."""
        confidence = confidence_of(judgment)
        if self.calibration is not None and judgment.verdict.winner is not None:
            confidence = self.calibration(confidence)
        # A merged judgment's token probabilities live in its two runs (`meta.swap`), not in its own meta.
        token = None if judgment.meta.swap is not None else judgment.meta.winner_probability
        update = {"confidence": confidence, "winner_probability": token}
        return judgment.model_copy(update={"meta": judgment.meta.model_copy(update=update)})

    def _provenance(
        self,
        generation: Generation,
        call: Call,
        spec: PromptSpec,
        constraint: Constraint,
    ) -> dict[str, Any]:
        """What `meta` records about how a judgment was made: enough to make it again."""
        usage = Usage(**vars(generation.usage)) if generation.usage is not None else None
        template, template_digest = template_identity(spec)
        return {
            "model": generation.model or self.model,
            "backend": self.backend.name,
            "template": template,
            "template_digest": template_digest,
            "constrained": generation.constrained,
            "engine": generation.engine,
            "enforced": generation.enforced,
            "constraint_digest": constraint.digest,
            "attempts": generation.attempts,
            "sampling": Sampling(
                temperature=self.temperature,
                top_p=self.top_p,
                seed=call.seed,
                max_new_tokens=self.max_new_tokens,
            ),
            "frames_per_video": self.frames_per_video if spec.modality == "video" else None,
            "usage": usage,
            "preferences": call.preferences,
        }


def _with_findings(judgment: Judged, prompt: str, on_findings: OnFindings) -> Judged:
    """Run `check` once and attach its findings; with on_findings="raise", an error finding raises."""
    judgment.findings = check(judgment, prompt=prompt)
    if on_findings == "raise" and any(f.severity == "error" for f in judgment.findings):
        raise ValidationFailed([f for f in judgment.findings if f.severity == "error"])
    return judgment


for _name, _allowed in (
    ("judge", PairOptions),
    ("ajudge", PairOptions),
    ("batch", PairOptions),
    ("abatch", PairOptions),
    ("score", PointOptions),
    ("ascore", PointOptions),
    ("score_batch", PointOptions),
    ("ascore_batch", PointOptions),
    ("rank", RankOptions),
    ("arank", RankOptions),
    ("rank_batch", RankOptions),
    ("arank_batch", RankOptions),
):
    with_keywords(getattr(Judge, _name), _allowed)
