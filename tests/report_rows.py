"""Result rows for report tests and the report-size benchmark: real judgments built through the schema
(findings from `flexjudge.check`), real image files, labels and swap runs drawn from a seeded generator."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from flexjudge import check
from flexjudge.anchors import FLEX_ANCHORS, Modality, canonical_name
from flexjudge.evaluation.results import Label, ResultRow, Run
from flexjudge.schema import Criterion, Dimension, Judgment, Verdict

_TEXT = """red kirin child stands meadow lantern glow sharp blurred edge texture fur sky dusk mirror
reflection text legible sign hands fingers count three two left right behind above shadow light
soft harsh palette muted vivid composition balanced cluttered background foreground detail realistic plastic
anatomy correct distorted
motion smooth flicker camera pan frame consistent object missing present style watercolor"""
_WORDS = _TEXT.split()


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def make_images(folder: Path, n: int, *, size: tuple[int, int] = (320, 240), seed: int = 0) -> list[Path]:
    """`n` distinct small JPEG photos-alike (gradients, shapes, noise), written under `folder`."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    noise = Image.effect_noise(size, 40).convert("RGB")
    for i in range(n):
        base = Image.linear_gradient("L").resize(size).rotate(rng.uniform(0, 360))
        offsets = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        bands = [base.point(lambda v, k=k: (v * rng.uniform(0.3, 1.0) + k) % 256) for k in offsets]
        colour = Image.merge("RGB", bands)
        draw = ImageDraw.Draw(colour)
        for _ in range(4):
            x, y = rng.randrange(size[0]), rng.randrange(size[1])
            r = rng.randrange(10, 60)
            fill = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        image = Image.blend(colour, noise, 0.15).filter(ImageFilter.SMOOTH)
        path = folder / f"img{i:05d}.jpg"
        image.save(path, quality=85)
        paths.append(path)
    return paths


def judgment(
    rng: random.Random, prompt: str, modality: Modality, winner: int, *, broken: bool = False
) -> dict[str, Any]:
    """A Flex judgment favouring `winner` (1 or 2), its findings attached; `broken` breaks one split."""
    dims = []
    names = [*FLEX_ANCHORS[modality], *(["Text Rendering (sign)"] if rng.random() < 0.5 else [])]
    for d, name in enumerate(names):
        criteria = []
        for c in range(rng.randint(3, 4)):
            a = (
                rng.randint(3, 8)
                if rng.random() < 0.5
                else (rng.randint(5, 8) if winner == 1 else rng.randint(2, 5))
            )
            b = 10 - a + (1 if broken and d == 0 and c == 0 else 0)
            criteria.append(
                Criterion(
                    name=sentence(rng, 3)[:-1],
                    evidence_1=sentence(rng, rng.randint(10, 20)),
                    evidence_2=sentence(rng, rng.randint(10, 20)),
                    score_1=a,
                    score_2=b,
                )
            )
        t1, t2 = sum(c.score_1 for c in criteria), sum(c.score_2 for c in criteria)
        dims.append(
            Dimension(
                name=name,
                origin="predefined" if d < 3 else "generated",
                criteria=criteria,
                analysis=sentence(rng, 25),
                winner=None if t1 == t2 else (1 if t1 > t2 else 2),
            )
        )
    made = Judgment(prompt=prompt, modality=modality, dimensions=dims,
                    verdict=Verdict(analysis=sentence(rng, 30), winner=1 if winner == 1 else 2))  # fmt: skip
    made.findings = check(made, prompt=prompt)
    return made.model_dump(mode="json")


def _run(rng: random.Random, prompt: str, modality: Modality, order: tuple[int, int], winner: int) -> Run:
    if rng.random() < 0.03:
        return Run(
            order=order, status="parse_failure", error="ParseError: unexpected end of input (offset 812)"
        )
    data = judgment(rng, prompt, modality, winner, broken=rng.random() < 0.1)
    dims = {canonical_name(d["name"]): d["winner"] or "tie" for d in data["dimensions"][:3]}
    return Run(
        order=order, status="ok", winner=data["verdict"]["winner"], dimension_winners=dims,
        confidence=round(rng.uniform(0.5, 1.0), 3), findings=[f["code"] for f in data["findings"]],
        judgment=data, elapsed_s=round(rng.uniform(2, 9), 2),
    )  # fmt: skip


def result_row(
    i: int,
    candidates: tuple[str, str],
    *,
    rng: random.Random,
    modality: Modality = "image",
    prompt: str | None = None,
) -> ResultRow:
    """Row `i`: a labelled pair, a primary run right ~75 % of the time and a swapped run that sometimes
    disagrees (the first-shown candidate favoured)."""
    prompt = prompt if prompt is not None else sentence(rng, rng.randint(8, 30))
    label: Label = rng.choice([1, 2, 1, 2, 1, 2, "tie"])
    order = (1, 2) if rng.random() < 0.5 else (2, 1)
    truth = label if label != "tie" else rng.choice([1, 2])
    primary_winner = truth if rng.random() < 0.75 else 3 - truth
    swapped_winner = primary_winner if rng.random() < 0.8 else 3 - primary_winner
    labels: dict[str, Label] = {canonical_name(n): rng.choice([1, 2]) for n in FLEX_ANCHORS[modality]}
    return ResultRow(
        id=f"ex-{i:05d}", prompt=prompt, candidates=candidates, modality=modality, label=label,
        dimension_labels=labels, primary=_run(rng, prompt, modality, order, primary_winner),
        swapped=_run(rng, prompt, modality, order[::-1], swapped_winner),
    )  # fmt: skip


def hand_summary(n: int, *, calibration: bool = True) -> dict[str, Any]:
    """A summary in the metrics contract's keys (what `Summary.to_json()` returns), by hand."""
    per_dim = {
        canonical_name(name): {
            "agreement": 0.6 + 0.05 * k,
            "agreement_ci": [0.5 + 0.05 * k, 0.7 + 0.05 * k],
            "n": n,
        }
        for k, name in enumerate(FLEX_ANCHORS["image"])
    }
    bins = [
        {
            "low": k / 10,
            "high": (k + 1) / 10,
            "count": 10 * k,
            "mean_confidence": k / 10 + 0.05,
            "accuracy": min(1.0, k / 10 + 0.02),
        }
        for k in range(5, 10)
    ]
    return {
        "n": n, "accuracy": 0.74, "accuracy_ci": [0.7, 0.78], "accuracy_with_ties": 0.66,
        "accuracy_with_ties_ci": [0.62, 0.7], "kendall_tau_b": 0.41, "kendall_tau_b_ci": [0.35, 0.47],
        "position_consistency": 0.8, "position_consistency_ci": [0.76, 0.84], "first_position_win_rate": 0.57,
        "first_position_win_rate_ci": [0.53, 0.61], "findings_rate": 0.1, "findings_rate_ci": [0.08, 0.12],
        "parse_failure_rate": 0.03, "parse_failure_rate_ci": [0.02, 0.04], "truncation_rate": 0.0,
        "truncation_rate_ci": [0.0, 0.0], "error_rate": None, "error_rate_ci": None, "per_dimension": per_dim,
        "calibration": {"ece": 0.043, "bins": bins} if calibration else None,
    }  # fmt: skip


CHROMIUM_MISSING = (
    "headless Chromium not found (Debian: apt-get install chromium chromium-driver, which .ci/run does where"
    " apt-get works)"
)


def chromium_path() -> str | None:
    """The Chromium (or Chrome) executable, or None."""
    import shutil

    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def run_chromium(page: Path, profile: Path, *args: str, fragment: str = "", timeout: float = 300) -> bytes:
    """Run headless Chromium on `page` with `args` (e.g. --dump-dom); returns its stdout. A profile of its
    own (`profile`) keeps parallel runs apart; --no-sandbox because CI runs as root."""
    import subprocess

    exe = chromium_path()
    assert exe is not None, CHROMIUM_MISSING
    command = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={profile}", *args, page.resolve().as_uri() + fragment]  # fmt: skip
    done = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout
