"""The front door: `judge` / `ajudge` / `Judge` turn a prompt and candidates into a typed judgment.

Flow for one pair: load and size-check the media, render the prompt for the requested wire format,
ask the backend for a generation constrained by `flexjudge.constraints` (valid by construction),
read it with `flexjudge.parse`, and record how it was made in `meta`. `swap=True` runs both candidate
orders concurrently and merges them (`flexjudge.swap`); `mode="rank"` judges every pair of N candidates.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from flexjudge._sync import LoopThread, run_sync
from flexjudge.anchors import Modality
from flexjudge.backends.auto import BASE_URL_ENV, make_backend
from flexjudge.backends.base import Backend, Constraint, Generation, ImagePart, Message, Request, TextPart
from flexjudge.constraints import OutputFormat
from flexjudge.formats import parse
from flexjudge.prompting import PromptSpec, render_prompt
from flexjudge.prompts import TEMPLATE_VERSION
from flexjudge.ranking import RankedPair, Ranking, rank_by_win_rate
from flexjudge.reading import (
    checked_model,
    pair_request_constraint,
    point_request_constraint,
    point_with_scale,
    read_generation,
    weighted_verdict,
)
from flexjudge.schema import Judgment, PointScale, PointwiseJudgment, Preferences, Usage
from flexjudge.swap import merge_swapped, unswap

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from flexjudge.media import Limits

DEFAULT_MODEL = "CodeGoat24/UnifiedReward-Flex-qwen3vl-8b"
Mode = Literal["pair", "point", "rank"]

__all__ = ["BASE_URL_ENV", "DEFAULT_MODEL", "Judge", "RankedPair", "Ranking", "ajudge", "judge"]


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
        self.backend: Backend = make_backend(backend, self.model, base_url, api_key, engine, options)
        self._owns_backend = isinstance(backend, str)  # a Backend handed in is the caller's to close
        self.output_format: OutputFormat = output_format or "flex"
        self.frames_per_video = frames_per_video
        self.limits = limits
        self.template = str(template) if template is not None else None
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.max_string_length = max_string_length
        self._sync_loop: LoopThread | None = None

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
        (judgment,) = await self._judge_pairs(prompt, [(media[0], media[1])], resolved, prefs, swap, seed)
        return judgment

    def judge(self, prompt: str, candidates: Sequence[Any], **options: Any) -> Any:
        """Synchronous `ajudge`; safe to call from code that already runs an event loop.

        Sync calls run on one event loop that this Judge keeps in a background thread; a served
        backend keeps one client per event loop, so the same Judge also serves async callers.
        """
        return self._loop().run(self.ajudge(prompt, candidates, **options))

    async def abatch(self, items: Sequence[tuple[str, Sequence[Any]]], **options: Any) -> list[Any]:
        """Judge many (prompt, candidates) items concurrently; results come back in order."""
        return list(await asyncio.gather(*(self.ajudge(p, c, **options) for p, c in items)))

    def batch(self, items: Sequence[tuple[str, Sequence[Any]]], **options: Any) -> list[Any]:
        """Synchronous `abatch`."""
        return self._loop().run(self.abatch(items, **options))

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

    def _loop(self) -> LoopThread:
        if self._sync_loop is None:
            self._sync_loop = LoopThread()
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
        constraint: Constraint,
        seed: int | None,
        response_model: Any = None,
    ) -> Request:
        parts: list[TextPart | ImagePart] = [ImagePart(image) for image in images]
        parts.append(TextPart(text))
        return Request(
            messages=(Message(role="user", parts=tuple(parts)),),
            constraint=constraint,
            response_model=response_model,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            seed=seed,
        )

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
        constraint = pair_request_constraint(modality, self.output_format, custom, self.max_string_length)
        checked = checked_model(self.output_format, modality)
        requests = [
            self._request(text, first + second, constraint, seed, checked) for first, second, _ in shown
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
        judgment = read_generation(
            lambda: parse(generation.text, format=self.output_format, modality=modality, prompt=prompt),
            generation,
        )
        judgment.meta = judgment.meta.model_copy(
            update={"candidate_order": order, **self._provenance(generation, prefs)}
        )
        if prefs is not None and prefs.weighted_verdict:
            judgment = weighted_verdict(judgment, prefs)
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
        constraint = point_request_constraint(modality, scale.low, scale.high, self.max_string_length)
        (generation,) = await self.backend.generate([self._request(text, images, constraint, seed)])
        judgment = read_generation(lambda: point_with_scale(generation.text, scale), generation)
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
        return rank_by_win_rate(len(media), pairs, judgments)


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
    return run_sync(ajudge(prompt, candidates, **options))


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
