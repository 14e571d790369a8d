"""`check` settles a clean judgment in one fast pass; every broken rule must still reach the full walk.

Each case breaks one rule of a judgment that checks clean (and takes the fast pass); the fast pass must
then decline, and `check` must report what the full walk finds. A fast pass that waves a case through
fails here, whichever rule it forgot.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import flexjudge
from flexjudge import Judgment
from flexjudge.checks import _clean
from flexjudge.schema import Criterion, Evidence

OUTPUTS = Path(__file__).parent.parent / "examples" / "outputs"


def _judgment(name: str) -> Judgment:
    read = flexjudge.parse((OUTPUTS / name).read_text(encoding="utf-8"))
    return Judgment.model_validate(read.model_dump())  # an independent copy, safe to edit


def _crit(j: Judgment, k: int) -> Criterion:
    return j.dimensions[0].criteria[k]


def _extra_anchor(j: Judgment) -> None:
    j.dimensions.append(j.dimensions[0].model_copy(update={"origin": "generated"}))


def _generated(j: Judgment, *names: str) -> None:
    del j.dimensions[3:]  # only the anchors: what is added is all that is generated
    for name in names:
        j.dimensions.append(j.dimensions[0].model_copy(update={"name": name, "origin": "generated"}))


def _too_many(j: Judgment) -> None:
    for k in range(3):
        j.dimensions.append(j.dimensions[0].model_copy(update={"name": f"Extra {k}", "origin": "generated"}))


BREAKS: dict[str, Callable[[Judgment], Any]] = {
    "duplicate criterion": lambda j: setattr(_crit(j, 1), "name", _crit(j, 0).name),
    "empty criterion name": lambda j: setattr(j.dimensions[1].criteria[0], "name", "**"),
    "duplicate dimension": lambda j: setattr(j.dimensions[2], "name", j.dimensions[1].name),
    "anchor repeated as generated": _extra_anchor,
    "too many generated": _too_many,
    "generated without a name": lambda j: _generated(j, "**"),
    "generated twice": lambda j: _generated(j, "Mood", "mood."),
    "origin": lambda j: setattr(j.dimensions[0], "origin", "generated"),
    "split not 10": lambda j: setattr(_crit(j, 0), "score_1", 11 - _crit(j, 0).score_2),
    "blank evidence 1": lambda j: setattr(_crit(j, 2), "evidence_1", "\u00a0"),
    "blank evidence": lambda j: setattr(j.dimensions[0].criteria[0], "evidence_2", " \u200b "),
    "empty evidence": lambda j: setattr(j.dimensions[1].criteria[0], "evidence_1", ""),
    "blank dimension analysis": lambda j: setattr(j.dimensions[0], "analysis", "\n"),
    "blank verdict analysis": lambda j: setattr(j.verdict, "analysis", "  "),
    "too few criteria": lambda j: setattr(j.dimensions[0], "criteria", j.dimensions[0].criteria[:2]),
    "dimension winner": lambda j: setattr(j.dimensions[0], "winner", 3 - j.dimensions[0].winner),
    "dimension tie": lambda j: setattr(j.dimensions[0], "winner", None),
    "verdict winner": lambda j: setattr(j.verdict, "winner", 3 - j.verdict.winner),
    "verdict tie": lambda j: setattr(j.verdict, "winner", None),
    "empty observations": lambda j: setattr(j, "evidence", [Evidence(candidate=1, observations=[])]),
    "blank observation": lambda j: setattr(j, "evidence", [Evidence(candidate=1, observations=["a", " "])]),
}  # fmt: skip


def test_the_example_is_clean_and_takes_the_fast_pass() -> None:
    clean = _judgment("flex_image.json")
    assert _clean(clean, clean.prompt, 3, 5, 2)
    assert flexjudge.check(clean, prompt=clean.prompt) == []


@pytest.mark.parametrize("rule", BREAKS)
def test_a_broken_rule_is_never_waved_through(rule: str) -> None:
    judgment = _judgment("flex_image.json")
    BREAKS[rule](judgment)
    assert not _clean(judgment, judgment.prompt, 3, 5, 2)
    assert flexjudge.check(judgment, prompt=judgment.prompt)  # the full walk names what broke


def test_a_different_prompt_is_never_waved_through() -> None:
    judgment = _judgment("flex_image.json")
    assert not _clean(judgment, judgment.prompt + " ", 3, 5, 2)
    assert flexjudge.check(judgment, prompt=judgment.prompt + " ")


def test_think_ratings_of_zero_are_never_waved_through() -> None:
    judgment = _judgment("think_image.txt")
    assert _clean(judgment, None, 3, 5, 2) == (flexjudge.check(judgment) == [])
    judgment.dimensions[0].criteria[0].score_1 = 0
    assert not _clean(judgment, None, 3, 5, 2)
    assert flexjudge.check(judgment)
