"""The reward judge of `generator_learns.py`: a rule-based stand-in model (a flexjudge `Backend`) that judges
a pair of images by colour distance and writes its verdict as a Flex judgment.

The prompt names a colour (one of `_colour_task.COLOURS`); each image's mean pixel is measured, and the
image whose mean is nearer (Euclidean, 0-255 RGB) to the named colour wins every criterion, every
category and overall, 7 of the 10 points where the two distances differ by less than 30 levels and 9 where
they differ by more. The evidence of every criterion states what was measured. Its output reads under
flexjudge's strict Flex parser and passes `check()` (tests/test_generator_learns.py holds it to that).

The benchmark's evaluator measures the same distance directly from the pixels, not through this judge:
what the judge contributes is the route (Flex text, the reward server, the group win rates and
advantages); a broken route shows as a generator that does not learn.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from _colour_task import COLOURS, ColourRuleJudge, flex_judgment

CLEAR_GAP = 30.0
"""Distance gap (0-255 levels) above which the winner takes 9 of 10 points instead of 7."""


def mean_colour(image: Any) -> tuple[float, float, float]:
    """The mean pixel of a PIL image, 0-255 per channel."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)
    return (float(pixels[0]), float(pixels[1]), float(pixels[2]))


def colour_distance(mean: tuple[float, float, float] | Any, colour: str) -> float:
    """Euclidean distance (0-255 levels) of a mean pixel from the named colour."""
    return math.dist([float(v) for v in mean], COLOURS[colour])


def distance_judgment(prompt: str, colour: str, means: tuple[Any, Any]) -> str:
    """The Flex judgment (compact JSON) of two images with mean pixels `means` for a prompt naming `colour`:
    the nearer image wins everything (the first on an exact tie)."""
    d1, d2 = (colour_distance(m, colour) for m in means)
    winner = 1 if d1 <= d2 else 2
    high = 9 if abs(d1 - d2) > CLEAR_GAP else 7
    scores = (high, 10 - high) if winner == 1 else (10 - high, high)
    shown = [
        f"mean colour ({m[0]:.0f}, {m[1]:.0f}, {m[2]:.0f}), {d:.0f} levels from {colour}"
        for m, d in zip(means, (d1, d2), strict=True)
    ]
    reason = f"Image {winner} is nearer to {colour} ({min(d1, d2):.0f} against {max(d1, d2):.0f} levels)"
    return flex_judgment(prompt, ("Colour match", "Hue", "Brightness"), (shown[0], shown[1]), scores, reason)


class ColourDistanceJudge(ColourRuleJudge):
    """The rule judge: the image whose mean colour is nearer the named one wins (`distance_judgment`).
    `answers` keeps every judgment it wrote (for the smoke test)."""

    name = "colour-distance"
    model = "colour-distance"

    def __init__(self) -> None:
        self.answers: list[tuple[str, str]] = []  # (prompt, judgment text)

    def judgment(self, prompt: str, named: str, images: tuple[Any, Any]) -> str:
        answer = distance_judgment(prompt, named, (mean_colour(images[0]), mean_colour(images[1])))
        self.answers.append((prompt, answer))
        return answer


def serve_colour_judge(port: int) -> None:
    """`flexjudge serve`'s app over `ColourDistanceJudge` on 127.0.0.1:`port` (a spawned process's target)."""
    import uvicorn

    from flexjudge.serve import create_app

    app = create_app(ColourDistanceJudge(), model_name="colour-distance", window_s=0.0)
    # Idle connections kept for 10 minutes: the trainer's client reuses its connection after a step of
    # sampling and training, which on a loaded machine outlasts uvicorn's 5 s default; the server closing
    # it in between surfaced as `ReadError` on the next request (seen once, killing a run).
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", lifespan="off", timeout_keep_alive=600)
