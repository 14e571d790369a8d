"""A simulated judge: a `Backend` whose "model" knows each image's true quality, for reward tests.

Each candidate image carries its quality in the red channel of its first pixel. The judge prefers the
better image in every category and overall, writing a valid flex judgment (scores follow the winners).
Two defects can be switched on, as real judges have them: `first_bias` (on a close pair, the overall
winner is whichever image was shown first, while the categories stay honest) and `broken` (pairs whose
qualities are listed get text that is no judgment at all, so parsing fails).

Not a stand-in for a model in judging tests: it exists to hold the reward arithmetic, the schedules and
the failure accounting to a known truth, which no real model offers.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

from PIL import Image

import flexjudge
from flexjudge.backends.base import Generation, ImagePart, Request

_TEMPLATE = json.loads(
    (Path(__file__).parent.parent / "examples" / "outputs" / "flex_image.json").read_text()
)


def candidate(quality: int, size: int = 16) -> Image.Image:
    """An image of true quality `quality` (0..255)."""
    return Image.new("RGB", (size, size), (quality, 40, 90))


def quality(image: Image.Image) -> int:
    return int(image.getpixel((0, 0))[0])  # type: ignore[index]


def judgment_text(winner: int, overall: int | None = None) -> str:
    """A flex judgment in which candidate `winner` (1 or 2) wins every category; `overall` overrides the
    overall winner."""
    doc: dict[str, Any] = copy.deepcopy(_TEMPLATE)
    for category in doc["categories"]:
        for dim in category["dims"]:
            dim[f"score_{winner}"], dim[f"score_{3 - winner}"] = 7, 3
        category["cat_winner"] = f"Image {winner}"
    doc["winner"] = f"Image {overall or winner}"
    return json.dumps(doc)


_NO_JUDGMENT = "I cannot decide."


def point_text(quality: int) -> str:
    """A pointwise flex judgment that scores an image of `quality` (0..255) on 1..10, higher for better,
    every anchor and the overall score alike."""
    score = 1 + round(quality * 9 / 255)
    judgment = flexjudge.PointwiseJudgment(
        prompt="the prompt",
        modality="image",
        observations=["an image"],
        dimensions=[
            flexjudge.PointDimension(
                name=name,
                origin="predefined",
                analysis="as seen",
                score=score,
                criteria=[
                    flexjudge.PointCriterion(name=f"c{i}", evidence="visible", score=score) for i in range(3)
                ],
            )
            for name in flexjudge.anchor_dimensions("image")
        ],
        verdict=flexjudge.PointVerdict(analysis="as seen", score=score),
    )
    return flexjudge.render_pointwise(judgment)


class SimulatedJudge:
    """See the module docstring. `calls` counts the pairs it was asked to judge, `scored` the single
    images it was asked to score (each by its quality: `point_text`)."""

    name = "simulated"
    model = "simulated-judge"

    def __init__(
        self, *, first_bias: int = 0, broken: set[frozenset[int]] | None = None, latency_s: float = 0.0
    ) -> None:
        self.first_bias = first_bias
        self.broken = broken or set()
        self.latency_s = latency_s  # judgments come after this long, as from a served model
        self.calls = 0
        self.shown: list[tuple[int, int]] = []
        self.scored: list[int] = []

    async def generate(self, requests: list[Request]) -> list[Generation]:
        answers = [self._one(r) for r in requests]
        if self.latency_s and any(a.text != _NO_JUDGMENT for a in answers):
            await asyncio.sleep(self.latency_s)  # a broken pair's non-answer comes at once
        return answers

    def _one(self, request: Request) -> Generation:
        images = [p.image for m in request.messages for p in m.parts if isinstance(p, ImagePart)]
        if len(images) == 1:
            self.scored.append(quality(images[0]))
            if frozenset((quality(images[0]),)) in self.broken:
                return Generation(text=_NO_JUDGMENT, finish_reason="stop", constrained=False)
            return Generation(text=point_text(quality(images[0])), finish_reason="stop", constrained=False)
        one, two = quality(images[0]), quality(images[1])
        self.calls += 1
        self.shown.append((one, two))
        if frozenset((one, two)) in self.broken:
            return Generation(text=_NO_JUDGMENT, finish_reason="stop", constrained=False)
        better = 1 if one > two else 2
        overall = 1 if abs(one - two) <= self.first_bias else better
        return Generation(text=judgment_text(better, overall), finish_reason="stop", constrained=False)

    async def aclose(self) -> None:
        return None
