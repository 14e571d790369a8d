"""The shortcuts of the parse + check hot path build the same objects and answers as the slow way.

`Judgment`'s default metadata is built without validation (`_unset_meta`), and `anchor_position` is a
dict lookup; both must equal what pydantic and the anchor tuples give, down to fresh mutable defaults.
"""

from __future__ import annotations

import pytest

from flexjudge import Judgment, Verdict
from flexjudge.anchors import Modality, Scoring, anchor_position, anchors
from flexjudge.schema import JudgmentMeta


def _judgment() -> Judgment:
    return Judgment(prompt="p", modality="image", dimensions=[], verdict=Verdict(analysis="a", winner=1))


def test_default_meta_is_an_unset_judgment_meta() -> None:
    made, plain = _judgment().meta, JudgmentMeta()
    assert made == plain
    assert repr(made) == repr(plain)  # same fields in the same order
    assert made.model_fields_set == plain.model_fields_set == set()
    assert made.model_dump(exclude_unset=True) == {}
    other = _judgment().meta
    assert other.candidate_order is not made.candidate_order  # mutable defaults are never shared
    assert other.recovery_notes is not made.recovery_notes
    made.recovery_notes.append("x")
    assert _judgment().meta.recovery_notes == []


CASES: list[tuple[Modality, Scoring]] = [(m, s) for m in ("image", "video") for s in ("split", "rating")]


@pytest.mark.parametrize(("modality", "scoring"), CASES)
def test_anchor_position_matches_the_anchor_order(modality: Modality, scoring: Scoring) -> None:
    for i, name in enumerate(anchors(modality, scoring)):
        assert anchor_position(f"**{chr(65 + i)}. {name.upper()}:**", modality, scoring) == i
    assert anchor_position("D. Narrative & Interaction", modality, scoring) is None
    assert anchor_position("", modality, scoring) is None
