"""A rule judge of known behaviour, for confidence and calibration tests: its margins follow a known
noise model, so the probability that it is right at each margin is known exactly.

Each pair is drawn by `pair(better_first, margin, sample)`: two images whose red channel holds their true
quality (200 for the better, 100 for the worse), whose green channel holds the margin `k` (1..4) the judge
will write, and whose second pixel holds the sample number. The judge picks the truly better candidate
with probability `RIGHT[k]` (seeded by the sample and the order shown, so a run is reproducible), and
writes every criterion as (5 + k, 5 - k) for the candidate it picked: its uncalibrated confidence
(`confidence_of`) is then 0.5 + k / 10, while the truth is `RIGHT[k]`.

With `logprobs`, it returns token log-probabilities: the text split into short tokens, each with
log-probability 0 except the token holding the overall winner's digit, which gets log(`TOKEN[k]`).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image

from flexjudge.backends.base import Generation, ImagePart, Request, TokenLogprob
from flexjudge.formats import parse, render
from flexjudge.schema import Judgment, Verdict

RIGHT = {1: 0.52, 2: 0.62, 3: 0.86, 4: 0.98}
"""P(the judge's winner is the truly better candidate | it wrote margin k)."""
TOKEN = {1: 0.6, 2: 0.75, 3: 0.9, 4: 0.99}
"""The probability it gives the winner token at margin k."""

_TEMPLATE = parse(
    (Path(__file__).parent.parent / "examples" / "outputs" / "flex_image.json").read_text(), format="flex"
)


def pair(better_first: bool, margin: int, sample: int) -> list[Image.Image]:
    """The two candidates of one labelled example (label 1 when `better_first`, else 2)."""
    images = []
    for quality in (200, 100) if better_first else (100, 200):
        image = Image.new("RGB", (8, 8), (quality, margin, 0))
        image.putpixel((1, 0), (sample % 256, sample // 256, 0))
        images.append(image)
    return images


def written(winner: int, margin: int) -> Judgment:
    """The judgment the rule judge writes: `winner` ahead by `margin` points on every criterion."""
    high, low = 5 + margin, 5 - margin
    scores = (high, low) if winner == 1 else (low, high)
    dimensions = [
        dim.model_copy(
            update={
                "criteria": [
                    c.model_copy(update={"score_1": scores[0], "score_2": scores[1]}) for c in dim.criteria
                ],
                "winner": winner,
            }
        )
        for dim in _TEMPLATE.dimensions
    ]
    return _TEMPLATE.model_copy(
        update={"dimensions": dimensions, "verdict": Verdict(analysis="by the rule", winner=winner)}
    )


def tokens(text: str, winner_probability: float) -> tuple[TokenLogprob, ...]:
    """`text` in 3-character tokens; the one holding the last winner digit gets `winner_probability`."""
    key = text.rfind('"winner"')  # the verdict's: it comes last in flex and native alike
    at = next(i for i in range(key + len('"winner"'), len(text)) if text[i] in "12")
    out = []
    for start in range(0, len(text), 3):
        chosen = start <= at < start + 3
        out.append(TokenLogprob(text[start : start + 3], math.log(winner_probability) if chosen else 0.0))
    return tuple(out)


class RuleJudge:
    """The rule judge as a `Backend` (see the module docstring)."""

    name = "rule"
    model = "rule-judge"

    def __init__(self, *, output_format: str = "flex", logprobs: bool = False) -> None:
        self.output_format = output_format
        self.logprobs = logprobs

    async def generate(self, requests: list[Request]) -> list[Generation]:
        return [self._one(r) for r in requests]

    def _one(self, request: Request) -> Generation:
        images = [p.image for m in request.messages for p in m.parts if isinstance(p, ImagePart)]
        if not images:  # the openai backend's structured-output probe
            return Generation(text='{"ok": true}', finish_reason="stop", constrained=True)
        first, second = (image.getpixel((0, 0)) for image in images[:2])
        sample = images[0].getpixel((1, 0))
        better = 1 if first[0] > second[0] else 2  # type: ignore[index]
        margin = int(first[1])  # type: ignore[index]
        rng = random.Random(f"{sample}:{first}:{second}")
        winner = better if rng.random() < RIGHT[margin] else 3 - better
        text = render(written(winner, margin), self.output_format)  # type: ignore[arg-type]
        logprobs = tokens(text, TOKEN[margin]) if self.logprobs and request.logprobs else None
        return Generation(text=text, finish_reason="stop", constrained=True, token_logprobs=logprobs)

    async def aclose(self) -> None:
        return None
