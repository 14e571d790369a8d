"""The synthetic colour task of `pipeline_learns.py`, and the rule teacher that judges it.

A pair's prompt names one of six colours; its two candidates are noisy images of two different colours;
the one showing the named colour wins (label 1 or 2, so chance is 50%). The teacher is `flexjudge serve`'s
app over `ColourTeacher`, a stand-in model that reads each image's colour from the pixels it is sent (the
mean, nearest of the six) and the named colour from the prompt text, and writes a short, correct flex
judgment: every criterion's evidence names the colour each image shows, and the matching image takes
8 of the 10 points everywhere. Its traces pass `check()` and are as short as the format allows.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from flexjudge.backends._probe import PROBE_TOKENS
from flexjudge.backends.base import Generation, ImagePart, Request, TextPart, Usage
from flexjudge.constraints import anchor_names

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 220, 50),
    "purple": (140, 50, 170),
    "orange": (240, 140, 30),
}
NOISE = 40
"""Standard deviation of the per-pixel, per-channel Gaussian noise (0-255 scale)."""

_NAMED = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")


def prompt_for(colour: str) -> str:
    return f"A {colour} picture"


def noisy_image(colour: str, size: int, rng: random.Random) -> Image.Image:
    """A `size` x `size` image of `colour` with independent Gaussian noise on every pixel and channel."""
    base = COLOURS[colour]
    data = bytes(
        max(0, min(255, round(rng.gauss(channel, NOISE)))) for _ in range(size * size) for channel in base
    )
    return Image.frombytes("RGB", (size, size), data)


def write_pairs(folder: Path, count: int, *, seed: int, size: int, name: str) -> Path:
    """`count` labelled pairs as `folder/<name>.jsonl` (the layout `flexjudge distill` and `eval` read), their
    images as PNG files under `folder/<name>/`. Colours, label side and noise are drawn from `seed`."""
    rng = random.Random(seed)
    images = folder / name
    images.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for k in range(count):
            named, other = rng.sample(sorted(COLOURS), 2)
            label = rng.choice((1, 2))
            shown = (named, other) if label == 1 else (other, named)
            candidates = []
            for side, colour in enumerate(shown, start=1):
                relative = f"{name}/{k}-{side}.png"
                noisy_image(colour, size, rng).save(folder / relative)
                candidates.append(relative)
            row = {"id": f"{name}-{k}", "prompt": prompt_for(named), "candidates": candidates, "label": label}
            fh.write(json.dumps(row) + "\n")
    return path


def colour_of(image: Image.Image) -> str:
    """The colour of the six nearest to the image's mean pixel."""
    pixels = list(image.convert("RGB").getdata())
    mean = [sum(p[c] for p in pixels) / len(pixels) for c in range(3)]
    return min(COLOURS, key=lambda name: sum((m - v) ** 2 for m, v in zip(mean, COLOURS[name], strict=True)))


TraceStyle = Literal["match", "pairs", "marks", "words", "plain"]
TRACE_STYLES: tuple[TraceStyle, ...] = ("match", "pairs", "marks", "words", "plain")


def evidence(colour: str, named: str, style: TraceStyle) -> str:
    """One image's evidence, at most 16 characters (18 for `match`; the evals' string bound). `plain`: its
    colour word alone (`"green"`, one token with its quotes to the task's tokenizer, unlike the prompt's
    ` green`). `words`: "A green", the colour as the prompt's own token. `marks`: "A green yes" / "A yellow
    no", whether the colour is the named one, a token of its own before the scores, so each score is a
    look-up of a mark; the mark still needs the colour token to find its copy in the prompt, far back.
    `pairs`: "green green ok" / "green yellow no", the named colour (a copy of the echoed prompt's, which a
    model learns first), then the image's, then the mark: a function of two adjacent tokens, but the first
    is `"green` (one token with its quote) and the second ` yellow`, two kinds of token the model must learn
    to match as a 6 x 6 table (it stayed at chance in some runs). `match` (the default): "A green yellow
    no", both colours the prompt's own tokens (` green`), so the mark asks whether two adjacent tokens are
    the same token: learnt in one SFT stage where `pairs` needed two or three, when it was learnt at all."""
    if style == "plain":
        return colour
    if style == "match":
        return f"A {named} {colour} {'ok' if colour == named else 'no'}"
    if style == "words":
        return f"A {colour}"
    if style == "pairs":
        return f"{named} {colour} {'ok' if colour == named else 'no'}"
    return f"A {colour} {'yes' if colour == named else 'no'}"


def colour_judgment(prompt: str, shown: tuple[str, str], named: str, style: TraceStyle = "match") -> str:
    """The teacher's flex judgment (compact JSON): candidates showing `shown`, the prompt naming `named`.

    The shortest trace the flex format and `check()` accept, so the decisions are a large share of what the
    student learns and writes: the three anchors with the fewest criteria each (3), one-letter criterion
    names, each image's evidence in `style` (written before the scores, so every score and winner follows
    from facts already on the page), and the named colour as every analysis."""
    winner = 1 if shown[0] == named else 2
    scores = (8, 2) if winner == 1 else (2, 8)
    one, two = (evidence(colour, named, style) for colour in shown)
    return flex_judgment(prompt, ("a", "b", "c"), (one, two), scores, named)


def flex_judgment(
    prompt: str, criteria: tuple[str, ...], evidence: tuple[str, str], scores: tuple[int, int], reason: str
) -> str:
    """A flex judgment (compact JSON) whose every anchor holds `criteria`, each with the two images'
    `evidence` and `scores`; the higher score's image wins every category and overall, for `reason`."""
    winner = f"Image {1 if scores[0] > scores[1] else 2}"
    dims = [
        {
            "name": name,
            "reason_1": evidence[0],
            "reason_2": evidence[1],
            "score_1": scores[0],
            "score_2": scores[1],
        }
        for name in criteria
    ]
    categories = [
        {"name": name, "dims": dims, "cat_reason": reason, "cat_winner": winner}
        for name in anchor_names("image", "flex")
    ]
    answer = {"prompt": prompt, "categories": categories, "reason": reason, "winner": winner}
    return json.dumps(answer, separators=(",", ":"))


class ColourRuleJudge:
    """A rule-based stand-in model (a `Backend`) for the colour task: it judges from the request alone (the
    images' pixels and the prompt's text, as a served model sees them); `judgment` writes the answer. A
    request that is not a colour pair (not two images, not exactly one colour named) gets an unreadable
    answer, never a guess; the openai backend's structured-output probe gets what passes it."""

    name = "colour-rule"
    model = "colour-rule"

    async def generate(self, requests: list[Request]) -> list[Generation]:
        return [self._answer(r) for r in requests]

    def _answer(self, request: Request) -> Generation:
        if request.max_new_tokens == PROBE_TOKENS:
            return Generation('{"ok": true}', "stop", True, Usage(10, 4), model=self.model)
        parts = [p for m in request.messages if m.role == "user" for p in m.parts]
        images = [p.image for p in parts if isinstance(p, ImagePart)]
        text = " ".join(p.text for p in parts if isinstance(p, TextPart))
        named = set(_NAMED.findall(text))
        if len(images) != 2 or len(named) != 1:
            return Generation("{}", "stop", True, Usage(10, 1), model=self.model)
        prompt = next(ln for ln in text.splitlines() if _NAMED.search(ln)).removeprefix("Prompt:").strip()
        answer = self.judgment(prompt, named.pop(), (images[0], images[1]))
        return Generation(answer, "stop", True, Usage(100, len(answer) // 4), model=self.model)

    def judgment(self, prompt: str, named: str, images: tuple[Any, Any]) -> str:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class ColourTeacher(ColourRuleJudge):
    """The colour task's teacher: each image's colour read from its pixels (`colour_of`), the judgment
    `colour_judgment` in evidence `style`."""

    name = "colour-teacher"
    model = "colour-teacher"

    def __init__(self, style: TraceStyle = "match") -> None:
        self.style: TraceStyle = style

    def judgment(self, prompt: str, named: str, images: tuple[Any, Any]) -> str:
        return colour_judgment(prompt, (colour_of(images[0]), colour_of(images[1])), named, self.style)


def serve_teacher(port: int, style: TraceStyle = "match") -> None:
    """Serve `ColourTeacher(style)` with `flexjudge serve`'s app on 127.0.0.1:`port` (a spawned process's
    target)."""
    import uvicorn

    from flexjudge.serve import create_app

    app = create_app(ColourTeacher(style), model_name="colour-teacher", window_s=0.0)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")
