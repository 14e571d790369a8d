"""The front door: `judge` / `ajudge` / `Judge` turn a prompt and candidates into a typed judgment.

Flow for one pair: load and size-check the media, render the prompt for the requested wire format,
ask the backend for a generation constrained by `flexjudge.constraints` (valid by construction),
read it with `flexjudge.parse`, and record how it was made in `meta`. `swap=True` runs both candidate
orders concurrently and merges them (`flexjudge.swap`); `mode="rank"` judges every pair of N candidates.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import os
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from pydantic import BaseModel, ConfigDict

from flexjudge.anchors import Modality
from flexjudge.backends.base import Backend, Generation, ImagePart, Message, Request, TextPart
from flexjudge.constraints import OutputFormat, pair_constraint, point_constraint
from flexjudge.errors import FlexjudgeError, ParseError, TruncatedOutput
from flexjudge.formats import parse, parse_pointwise
from flexjudge.prompting import PromptSpec, render_prompt
from flexjudge.prompts import TEMPLATE_VERSION
from flexjudge.schema import Judgment, PointScale, PointwiseJudgment, Preferences, Usage, Verdict
from flexjudge.swap import merge_swapped, unswap
from flexjudge.wire_schemas import flex_schema, native_pair_schema

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from flexjudge.media import Limits

DEFAULT_MODEL = "CodeGoat24/UnifiedReward-Flex-qwen3vl-8b"
BASE_URL_ENV = "FLEXJUDGE_BASE_URL"
Mode = Literal["pair", "point", "rank"]
T = TypeVar("T")

__all__ = ["DEFAULT_MODEL", "Judge", "RankedPair", "Ranking", "ajudge", "judge"]


class RankedPair(BaseModel):
    """One pairwise judgment behind a ranking (candidate numbers are the caller's, 1-based)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    first: int
    """The candidate shown as candidate 1."""
    second: int
    """The candidate shown as candidate 2."""
    judgment: Judgment
    """The judgment of that pair, in that order (after order-swap merging when asked)."""


class Ranking(BaseModel):
    """N candidates ranked by their pairwise win rate, with every judgment behind it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    order: list[int]
    """Candidate numbers (1-based), best first; equal win rates keep the caller's order."""
    win_rate: list[float]
    """Per candidate, in the caller's order: wins / (N - 1), a tie counting one half."""
    pairs: list[RankedPair]
    """Every pair that was judged."""


class Judge:
    """A reusable judge: holds the backend and its compiled constraints. See `judge` for the arguments."""

    def __init__(
        self,
        model: str | None = None,
        *,
        backend: str | Backend = "auto",
        base_url: str | None = None,
        api_key: str | None = None,
        output_format: OutputFormat | None = None,
        engine: str | None = None,
        frames_per_video: int = 8,
        limits: Limits | None = None,
        template: str | Path | None = None,
        max_new_tokens: int = 4096,
        temperature: float = 0.0,
        max_concurrency: int = 8,
        max_string_length: int | None = None,
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        self.model = model or DEFAULT_MODEL
        options = {"max_concurrency": max_concurrency, **(backend_options or {})}
        self.backend: Backend = _make_backend(backend, self.model, base_url, api_key, engine, options)
        self._owns_backend = isinstance(backend, str)  # a Backend handed in is the caller's to close
        self.output_format: OutputFormat = output_format or "flex"
        self.frames_per_video = frames_per_video
        self.limits = limits
        self.template = str(template) if template is not None else None
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.max_string_length = max_string_length
        self._sync_loop: _LoopThread | None = None

    # -- public API -------------------------------------------------------------------------------

    @overload
    async def ajudge(
        self,
        prompt: str,
        candidates: Sequence[Any],
        *,
        mode: Literal["pair"] = "pair",
        preferences: Preferences | str | None = None,
        swap: bool = False,
        seed: int | None = None,
        modality: Modality | None = None,
        scale: PointScale | None = None,
    ) -> Judgment: ...

    @overload
    async def ajudge(
        self,
        prompt: str,
        candidates: Sequence[Any],
        *,
        mode: Literal["point"],
        preferences: Preferences | str | None = None,
        swap: bool = False,
        seed: int | None = None,
        modality: Modality | None = None,
        scale: PointScale | None = None,
    ) -> PointwiseJudgment: ...

    @overload
    async def ajudge(
        self,
        prompt: str,
        candidates: Sequence[Any],
        *,
        mode: Literal["rank"],
        preferences: Preferences | str | None = None,
        swap: bool = False,
        seed: int | None = None,
        modality: Modality | None = None,
        scale: PointScale | None = None,
    ) -> Ranking: ...

    async def ajudge(
        self,
        prompt: str,
        candidates: Sequence[Any],
        *,
        mode: Mode = "pair",
        preferences: Preferences | str | None = None,
        swap: bool = False,
        seed: int | None = None,
        modality: Modality | None = None,
        scale: PointScale | None = None,
    ) -> Judgment | PointwiseJudgment | Ranking:
        """Judge `candidates` for `prompt`: a Judgment (pair), PointwiseJudgment (point) or Ranking (rank)."""
        prefs = Preferences.coerce(preferences)
        expected = {"pair": 2, "point": 1}.get(mode)
        if expected is not None and len(candidates) != expected:
            raise ValueError(f"mode={mode!r} takes {expected} candidate(s), got {len(candidates)}")
        if mode == "rank" and len(candidates) < 2:
            raise ValueError(f"mode='rank' takes at least 2 candidates, got {len(candidates)}")
        if mode == "point" and swap:
            raise ValueError("swap=True compares two orders of a pair; mode='point' judges one candidate")
        media, resolved = await self._load(candidates, modality)
        if mode == "point":
            return await self._point(prompt, media[0], resolved, prefs, seed, scale or PointScale())
        if mode == "rank":
            return await self._rank(prompt, media, resolved, prefs, swap, seed)
        return await self._pair_maybe_swapped(prompt, media[0], media[1], resolved, prefs, swap, seed)

    def judge(self, prompt: str, candidates: Sequence[Any], **options: Any) -> Any:
        """Synchronous `ajudge`; safe to call from code that already runs an event loop.

        Sync calls run on one event loop that this Judge keeps in a background thread, so connection
        pools and semaphores stay on one loop. Use a Judge either through the sync methods or through
        the async ones, not both.
        """
        return self._loop().run(self.ajudge(prompt, candidates, **options))

    async def abatch(self, items: Sequence[tuple[str, Sequence[Any]]], **options: Any) -> list[Any]:
        """Judge many (prompt, candidates) items concurrently; results come back in order."""
        return list(await asyncio.gather(*(self.ajudge(p, c, **options) for p, c in items)))

    def batch(self, items: Sequence[tuple[str, Sequence[Any]]], **options: Any) -> list[Any]:
        """Synchronous `abatch`."""
        return self._loop().run(self.abatch(items, **options))

    async def aclose(self) -> None:
        """Release the backend this Judge made (a backend handed in stays open: it is the caller's)."""
        if self._owns_backend:
            await self.backend.aclose()

    def close(self) -> None:
        """Synchronous `aclose`, and stop the background loop of the sync methods."""
        if self._sync_loop is not None:
            self._sync_loop.run(self.aclose())
            self._sync_loop.stop()
            self._sync_loop = None
        else:
            _run_sync(self.aclose())

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _loop(self) -> _LoopThread:
        if self._sync_loop is None:
            self._sync_loop = _LoopThread()
        return self._sync_loop

    # -- internals --------------------------------------------------------------------------------

    async def _load(
        self, candidates: Sequence[Any], modality: Modality | None
    ) -> tuple[list[list[PILImage]], Modality]:
        from flexjudge import media

        limits = self.limits or media.DEFAULT_LIMITS
        if modality is None:
            kinds = {media.guess_modality(c) for c in candidates}
            if len(kinds) != 1:
                raise media.MediaError("candidates mix images and videos", source="candidates")
            modality = kinds.pop()
        frames = self.frames_per_video
        loaded = await asyncio.gather(
            *(
                asyncio.to_thread(media.load_candidate, c, modality=modality, frames=frames, limits=limits)
                for c in candidates
            )
        )
        return list(loaded), modality

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
        images: list[PILImage],
        schema: dict[str, Any],
        seed: int | None,
        portable: dict[str, Any] | None = None,
        response_model: Any = None,
    ) -> Request:
        parts: list[TextPart | ImagePart] = [ImagePart(image) for image in images]
        parts.append(TextPart(text))
        return Request(
            messages=(Message(role="user", parts=tuple(parts)),),
            schema=schema,
            portable_schema=portable,
            response_model=response_model,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            seed=seed,
        )

    async def _pair_maybe_swapped(
        self,
        prompt: str,
        one: list[PILImage],
        two: list[PILImage],
        modality: Modality,
        prefs: Preferences | None,
        swap: bool,
        seed: int | None,
    ) -> Judgment:
        (judgment,) = await self._judge_pairs(prompt, [(one, two)], modality, prefs, swap, seed)
        return judgment

    async def _judge_pairs(
        self,
        prompt: str,
        pairs: list[tuple[list[PILImage], list[PILImage]]],
        modality: Modality,
        prefs: Preferences | None,
        swap: bool,
        seed: int | None,
    ) -> list[Judgment]:
        """Judge every pair (both orders when `swap`) in one backend call, so a local model batches them."""
        shown = [(one, two, [1, 2]) for one, two in pairs]
        if swap:
            shown += [(two, one, [2, 1]) for one, two in pairs]
        text = render_prompt(self._spec("pair", modality), prompt, prefs)
        custom = prefs.custom_dimensions if prefs is not None else ()
        schema = _pair_constraint(modality, self.output_format, custom, self.max_string_length)
        portable = _portable_schema(modality, self.output_format)
        checked = _checked_model(self.output_format, modality)
        requests = [
            self._request(text, first + second, schema, seed, portable, checked) for first, second, _ in shown
        ]
        generations = await self.backend.generate(requests)
        judgments = [
            self._read_pair(generation, prompt, modality, prefs, order)
            for generation, (_, _, order) in zip(generations, shown, strict=True)
        ]
        if not swap:
            return judgments
        weights = prefs.weights if prefs is not None and prefs.weighted_verdict else None
        half = len(pairs)
        return [merge_swapped(judgments[k], unswap(judgments[half + k]), weights) for k in range(half)]

    def _read_pair(
        self,
        generation: Generation,
        prompt: str,
        modality: Modality,
        prefs: Preferences | None,
        order: list[int],
    ) -> Judgment:
        judgment = _read(
            lambda: parse(generation.text, format=self.output_format, modality=modality, prompt=prompt),
            generation,
        )
        judgment.meta = judgment.meta.model_copy(
            update={"candidate_order": order, **self._provenance(generation, prefs)}
        )
        if prefs is not None and prefs.weighted_verdict:
            judgment = _weighted_verdict(judgment, prefs)
        return judgment

    async def _point(
        self,
        prompt: str,
        images: list[PILImage],
        modality: Modality,
        prefs: Preferences | None,
        seed: int | None,
        scale: PointScale,
    ) -> PointwiseJudgment:
        text = render_prompt(self._spec("point", modality), prompt, prefs, low=scale.low, high=scale.high)
        schema = _point_constraint(modality, scale.low, scale.high, self.max_string_length)
        (generation,) = await self.backend.generate([self._request(text, images, schema, seed)])
        judgment = _read(lambda: _point_with_scale(generation.text, scale), generation)
        judgment.meta = judgment.meta.model_copy(update=self._provenance(generation, prefs))
        return judgment

    def _provenance(self, generation: Generation, prefs: Preferences | None) -> dict[str, Any]:
        """What `meta` records about how a judgment was made."""
        usage = Usage(**vars(generation.usage)) if generation.usage is not None else None
        return {
            "model": generation.model or self.model,
            "backend": self.backend.name,
            "template_version": TEMPLATE_VERSION,
            "constrained": generation.constrained,
            "usage": usage,
            "preferences": prefs,
        }

    async def _rank(
        self,
        prompt: str,
        media: list[list[PILImage]],
        modality: Modality,
        prefs: Preferences | None,
        swap: bool,
        seed: int | None,
    ) -> Ranking:
        pairs = list(itertools.combinations(range(len(media)), 2))
        judgments = await self._judge_pairs(
            prompt, [(media[i], media[j]) for i, j in pairs], modality, prefs, swap, seed
        )
        wins = [0.0] * len(media)
        for (i, j), judgment in zip(pairs, judgments, strict=True):
            winner = judgment.verdict.winner
            if winner is None:
                wins[i] += 0.5
                wins[j] += 0.5
            else:
                wins[i if winner == 1 else j] += 1.0
        rate = [w / (len(media) - 1) for w in wins]
        order = sorted(range(len(media)), key=lambda k: -rate[k])
        return Ranking(
            order=[k + 1 for k in order],
            win_rate=rate,
            pairs=[
                RankedPair(first=i + 1, second=j + 1, judgment=jd)
                for (i, j), jd in zip(pairs, judgments, strict=True)
            ],
        )


@functools.lru_cache(maxsize=64)
def _pair_constraint(
    modality: Modality, output_format: OutputFormat, custom: tuple[str, ...], max_string_length: int | None
) -> dict[str, Any]:
    # Built once per shape and shared (backends treat request schemas as read-only): building one
    # deep-copies a few hundred nodes, which would otherwise be paid on every judgment.
    return pair_constraint(
        modality, output_format, custom_dimensions=custom, max_string_length=max_string_length
    )


@functools.lru_cache(maxsize=64)
def _point_constraint(
    modality: Modality, low: int, high: int, max_string_length: int | None
) -> dict[str, Any]:
    # Keyed by the scale's bounds (a PointScale is not hashable); shared and read-only, like the pair one.
    scale = PointScale(low=low, high=high)
    return point_constraint(modality, scale, max_string_length=max_string_length)


@functools.lru_cache(maxsize=4)
def _checked_model(output_format: OutputFormat, modality: Modality) -> type[BaseModel]:
    """The wire model plus the method's rules as a validator: what instructor re-asks against."""
    from pydantic import model_validator

    from flexjudge.checks import check
    from flexjudge.formats.flex import FlexOutput

    base: type[BaseModel] = FlexOutput if output_format == "flex" else Judgment

    class Checked(base):  # type: ignore[valid-type, misc]
        @classmethod
        def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
            # instructor sends this as the response format: the strict wire schema (exact winners,
            # enumerated scores), not the lenient reading model's.
            return _portable_schema(modality, output_format)

        @model_validator(mode="after")
        def _method_rules(self) -> Any:
            try:
                text = self.model_dump_json(exclude={"meta"})
                judgment = parse(text, format=output_format, modality=modality)
            except ParseError as exc:  # a ValueError is what instructor feeds back to the model
                raise ValueError(f"unreadable judgment: {exc}") from None
            errors = [f"{f.path}: {f.message}" for f in check(judgment) if f.severity == "error"]
            if errors:
                raise ValueError("the judgment breaks the method's rules: " + "; ".join(errors))
            return self

    Checked.__name__ = f"Checked{base.__name__}"
    return Checked


@functools.lru_cache(maxsize=8)
def _portable_schema(modality: Modality, output_format: OutputFormat) -> dict[str, Any]:
    return flex_schema(modality) if output_format == "flex" else native_pair_schema(modality)


def _point_with_scale(text: str, scale: PointScale) -> PointwiseJudgment:
    judgment = parse_pointwise(text)
    if judgment.scale != scale:  # the wire format leaves the scale out: it is the caller's
        judgment = PointwiseJudgment.model_validate({**judgment.content(), "scale": scale.model_dump()})
    return judgment


def _read(read: Callable[[], T], generation: Generation) -> T:
    """Parse a generation; a token budget that ran out is reported as truncation, whatever broke."""
    try:
        return read()
    except TruncatedOutput:
        raise
    except ParseError as exc:
        if generation.finish_reason == "length":
            raise TruncatedOutput(
                f"the token budget ran out before the judgment was complete ({exc.reason})",
                offset=exc.offset,
                partial_text=generation.text,
                format=exc.format,
            ) from exc
        raise


def _weighted_verdict(judgment: Judgment, prefs: Preferences) -> Judgment:
    votes = {1: 0.0, 2: 0.0}
    for dim in judgment.dimensions:
        if dim.winner is not None:
            votes[dim.winner] += prefs.weight(dim.name)
    winner = 1 if votes[1] > votes[2] else 2 if votes[2] > votes[1] else None
    return judgment.model_copy(
        update={
            "verdict": Verdict(analysis=judgment.verdict.analysis, winner=winner),
            "meta": judgment.meta.model_copy(update={"verdict_rule": "weighted"}),
        }
    )


def _make_backend(
    backend: str | Backend,
    model: str,
    base_url: str | None,
    api_key: str | None,
    engine: str | None,
    options: dict[str, Any],
) -> Backend:
    if not isinstance(backend, str):
        return backend
    url = base_url or os.environ.get(BASE_URL_ENV)
    name = backend if backend != "auto" else ("openai" if url else "transformers")
    if name == "openai":
        if not url:
            raise FlexjudgeError(
                f"backend 'openai' needs base_url= or the {BASE_URL_ENV} environment variable"
            )
        from flexjudge.backends.openai import OpenAIBackend

        return OpenAIBackend(url, model=model, api_key=api_key, **options)
    if name == "transformers":
        from flexjudge.backends.transformers import TransformersBackend

        options.pop("max_concurrency", None)  # one process, one model: batching replaces concurrency
        return TransformersBackend(model, engine=engine, **options)  # type: ignore[arg-type]
    raise FlexjudgeError(f"unknown backend {backend!r}; expected 'auto', 'transformers' or 'openai'")


class _LoopThread:
    """An event loop running in a daemon thread, for the synchronous facade of one Judge."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="flexjudge-loop", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # A loop already runs in this thread (a notebook, an async server): run ours in a worker thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def ajudge(
    prompt: str,
    candidates: Sequence[Any],
    *,
    model: str | None = None,
    backend: str | Backend = "auto",
    base_url: str | None = None,
    output_format: OutputFormat | None = None,
    **options: Any,
) -> Any:
    """One-off async judgment; builds a `Judge` (for many calls, keep a `Judge`)."""
    construct = {k: options.pop(k) for k in list(options) if k in _JUDGE_OPTIONS}
    judge_ = Judge(model, backend=backend, base_url=base_url, output_format=output_format, **construct)
    try:
        return await judge_.ajudge(prompt, candidates, **options)
    finally:
        await judge_.aclose()


def judge(prompt: str, candidates: Sequence[Any], **options: Any) -> Any:
    """Judge `candidates` (2 for mode="pair", 1 for "point", N for "rank") for `prompt`.

    Keyword arguments: model, backend ("auto" | "transformers" | "openai" | a Backend), base_url,
    output_format ("flex" | "native"), mode, preferences, swap, seed, modality, scale, engine,
    frames_per_video, limits, template, max_new_tokens, temperature, max_concurrency.
    """
    return _run_sync(ajudge(prompt, candidates, **options))


_JUDGE_OPTIONS = frozenset(
    {
        "api_key",
        "engine",
        "frames_per_video",
        "limits",
        "template",
        "max_new_tokens",
        "temperature",
        "max_concurrency",
        "max_string_length",
        "backend_options",
    }
)
