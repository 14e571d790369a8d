"""What a judging call must pass before anything loads: the call's shape, the settings' ranges, and the
candidates' media (decoded and size-checked off the event loop). Shared by `Judge`'s verbs and the
one-off verbs, which run these before they build a `Judge` (and so before a model loads)."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from flexjudge.anchors import Modality
from flexjudge.errors import UsageError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from flexjudge.media import Limits

Candidate = Any
"""A path, PIL image, encoded bytes, numpy array, or (a video) a list of frames."""
Frames = list["PILImage"]

__all__ = [
    "Candidate",
    "Frames",
    "check_call",
    "check_settings",
    "finish_loading",
    "load_candidates",
    "start_loading",
]


async def load_candidates(
    candidates: Sequence[Candidate],
    modality: Modality | None,
    frames: int,
    limits: Limits | None,
    prepare: Callable[[PILImage], object] | None = None,
) -> tuple[list[Frames], Modality]:
    """Decode and size-check candidates in worker threads; they must all be images or all videos.
    `prepare` (a backend's `prepare_image`) runs on each loaded image in the thread that loaded it. The
    first candidate, in order, that cannot be loaded raises its `MediaError` once every load has ended."""
    loading, modality = start_loading(candidates, modality, frames, limits, prepare)
    return await finish_loading(loading), modality


async def finish_loading(loading: Sequence[asyncio.Task[Frames]]) -> list[Frames]:
    """Every candidate of `start_loading`, once all have loaded; the first, in order, that could not be
    loaded raises its error."""
    loaded = await asyncio.gather(*loading, return_exceptions=True)
    for result in loaded:
        if isinstance(result, BaseException):
            raise result
    return cast(list[Frames], loaded)


_LOADS_AT_ONCE = max(
    2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
)
"""Candidates decoded at once, one per core: decoding and encoding are CPU work (Pillow lets go of the
GIL), so more at once only finishes every candidate later, where in turn the first are ready first."""


def start_loading(
    candidates: Sequence[Candidate],
    modality: Modality | None,
    frames: int,
    limits: Limits | None,
    prepare: Callable[[PILImage], object] | None = None,
) -> tuple[list[asyncio.Task[Frames]], Modality]:
    """`load_candidates` without waiting for it: one task per candidate, in order, so that work on the
    first candidates can start while the others load. The caller awaits every task, or cancels it
    (`_sync.cancel_and_collect`; a load's thread finishes on its own). Mixed modalities raise here,
    before anything loads."""
    from flexjudge import media

    bounds = limits or media.DEFAULT_LIMITS
    if modality is None:
        kinds = {media.guess_modality(c) for c in candidates}
        if len(kinds) != 1:
            raise media.MediaError("candidates mix images and videos", source="candidates")
        modality = kinds.pop()
    elif modality not in ("image", "video"):
        raise UsageError(f"modality must be 'image' or 'video', not {modality!r}")
    chosen = modality

    def load(candidate: Candidate) -> Frames:
        images = media.load_candidate(candidate, modality=chosen, frames=frames, limits=bounds)
        for image in images:
            media.mark_loaded(image)  # hashed once for this call's requests, not once per pair
            if prepare is not None:
                prepare(image)
        return images

    gate = asyncio.Semaphore(_LOADS_AT_ONCE)

    async def load_in_turn(candidate: Candidate) -> Frames:
        async with gate:  # first come, first loaded: a pair's two candidates are ready early
            return await asyncio.to_thread(load, candidate)

    return [asyncio.create_task(load_in_turn(c)) for c in candidates], modality


def check_call(
    verb: str,
    prompt: str,
    candidates: Sequence[Candidate],
    low: int,
    high: int | None,
) -> None:
    """Refuse, before anything loads, a call that cannot be judged as written."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise UsageError(f"{verb}() needs a non-empty prompt: the text the candidates were generated from")
    if isinstance(candidates, str | bytes) or not isinstance(candidates, Sequence):
        raise UsageError(f"{verb}() takes its candidates as a list, e.g. [first, second]")
    count = len(candidates)
    if (count < low) if high is None else (count != low):
        what = f"at least {low}" if high is None else f"exactly {low}"
        raise UsageError(f"{verb}() takes {what} candidate(s), got {count}: {_VERB_FOR.get(count, _RANK)}")


_RANK = "flexjudge.rank(prompt, candidates) ranks two or more"
_VERB_FOR = {
    0: "pass the candidates as a list",
    1: "flexjudge.score(prompt, candidate) scores a single candidate",
    2: "flexjudge.judge(prompt, [a, b]) compares two",
}


def check_settings(settings: dict[str, Any]) -> None:
    """Refuse settings out of range (those given; the rest keep their defaults)."""
    output_format = settings.get("output_format", "flex")
    if output_format not in ("flex", "native"):
        raise UsageError(f"output_format must be 'flex' or 'native', not {output_format!r}")
    for name in ("frames_per_video", "max_new_tokens", "max_concurrency"):
        value = settings.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a whole number of at least 1, not {value!r}")
    temperature = settings.get("temperature", 0.0)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise UsageError(f"temperature must be a number, not {temperature!r}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise UsageError(f"temperature must be a finite number of at least 0, not {temperature!r}")
    top_p = settings.get("top_p", 1.0)
    if isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise UsageError(f"top_p must be a number in (0, 1], not {top_p!r}")
