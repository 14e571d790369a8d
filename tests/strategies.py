"""Hypothesis strategies for judgments each format can carry."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from flexjudge import Criterion, Dimension, Evidence, Intent, Judgment, Verdict
from flexjudge.anchors import anchor_position, anchors

# Reasons full of what breaks naive parsers: quotes, braces, newlines, unicode, and winner-like phrases.
_tricky = st.sampled_from(
    ['"', "{", "}", "[", "]", "\n", "\\", "Image 2", "Video 1", "```", "<think>", "é", "😀", ":", ";"]
)
any_text = st.lists(st.one_of(st.text(max_size=12), _tricky), max_size=6).map("".join)
scores = st.integers(min_value=0, max_value=10)
winners = st.sampled_from([1, 2])


@st.composite
def criteria(draw: st.DrawFn, names: st.SearchStrategy[str] = any_text) -> Criterion:
    return Criterion(
        name=draw(names),
        evidence_1=draw(any_text),
        evidence_2=draw(any_text),
        score_1=draw(scores),
        score_2=draw(scores),
    )


def _origin(name: str, modality: str, scoring: str) -> str:
    return "generated" if anchor_position(name, modality, scoring) is None else "predefined"  # type: ignore[arg-type]


@st.composite
def dimension_names(draw: st.DrawFn, modality: str, scoring: str) -> list[str]:
    names = [draw(st.sampled_from([a, f"{'ABC'[i]}. {a}"])) for i, a in enumerate(anchors(modality, scoring))]  # type: ignore[arg-type]
    return names + draw(st.lists(any_text, max_size=2))


@st.composite
def split_judgments(draw: st.DrawFn, ties: bool = False) -> Judgment:
    """Judgments the flex format can carry: split scoring, a winner everywhere."""
    modality = draw(st.sampled_from(["image", "video"]))
    winner = st.one_of(winners, st.none()) if ties else winners
    dims = [
        Dimension(
            name=name,
            origin=_origin(name, modality, "split"),
            criteria=draw(st.lists(criteria(), min_size=1, max_size=5)),
            analysis=draw(any_text),
            winner=draw(winner),
        )
        for name in draw(dimension_names(modality, "split"))
    ]
    return Judgment(
        prompt=draw(any_text),
        modality=modality,
        dimensions=dims,
        verdict=Verdict(analysis=draw(any_text), winner=draw(winner)),
    )


@st.composite
def native_judgments(draw: st.DrawFn) -> Judgment:
    """Anything the schema allows: ties, ratings, intent and evidence."""
    base = draw(split_judgments(ties=True))
    intent = draw(
        st.none() | st.builds(Intent, **{k: st.lists(any_text, max_size=3) for k in Intent.model_fields})
    )
    evidence = [Evidence(candidate=c, observations=draw(st.lists(any_text, max_size=3))) for c in (1, 2)]
    return base.model_copy(
        update={
            "scoring": draw(st.sampled_from(["split", "rating"])),
            "intent": intent,
            "evidence": draw(st.sampled_from([[], evidence])),
        }
    )


_line = (
    st.text(st.characters(blacklist_categories=["Cs", "Cc", "Zl", "Zp"]), max_size=40)
    .map(str.strip)
    .filter(lambda s: not any(t in s for t in ("<think>", "</think>", "<answer>", "</answer>")))
)
_think_name = _line.filter(lambda s: s and s == s.strip("*_") and s.casefold() != "total score")


@st.composite
def think_judgments(draw: st.DrawFn) -> Judgment:
    """Judgments the Think format can carry: one-line rationales, 1..10 ratings, winners that follow them."""
    modality = draw(st.sampled_from(["image", "video"]))
    names = [draw(st.sampled_from([a, a.lower()])) for a in anchors(modality, "rating")]  # type: ignore[arg-type]
    names += draw(st.lists(_think_name, max_size=2))
    dims = []
    for name in names:
        one, two = draw(st.integers(1, 10)), draw(st.integers(1, 10))
        crit = Criterion(name=name, evidence_1=draw(_line), evidence_2=draw(_line), score_1=one, score_2=two)
        dims.append(
            Dimension(
                name=name,
                origin=_origin(name, modality, "rating"),
                criteria=[crit],
                analysis="",
                winner=1 if one > two else 2 if two > one else None,
            )
        )
    return Judgment(
        prompt=draw(any_text),
        modality=modality,
        scoring="rating",
        dimensions=dims,
        verdict=Verdict(analysis="", winner=draw(winners)),
    )


@st.composite
def flex_objects(draw: st.DrawFn) -> dict[str, Any]:
    """Valid released-format objects, as a judge would emit them."""
    label = draw(st.sampled_from(["Image", "Video"]))
    modality = label.lower()
    win = st.sampled_from([f"{label} 1", f"{label} 2"])
    dim = st.fixed_dictionaries(
        {"name": any_text, "reason_1": any_text, "reason_2": any_text, "score_1": scores, "score_2": scores}
    )
    categories = [
        {
            "name": name,
            "dims": draw(st.lists(dim, min_size=1, max_size=5)),
            "cat_reason": draw(any_text),
            "cat_winner": draw(win),
        }
        for name in draw(dimension_names(modality, "split"))
    ]
    return {"prompt": draw(any_text), "categories": categories, "reason": draw(any_text), "winner": draw(win)}
