"""The released UnifiedReward-Flex wire format: one JSON object of categories, dims and winners.

``{"prompt", "categories": [{"name", "dims": [{"name", "reason_1", "reason_2", "score_1", "score_2"}],
"cat_reason", "cat_winner"}], "reason", "winner"}`` with winners "Image 1"/"Image 2" ("Video ..." for video).
"""

from __future__ import annotations

import json
from typing import Any, Final, cast

from pydantic import BaseModel, ConfigDict, ValidationError

from flexjudge.anchors import Modality, anchor_position
from flexjudge.errors import ParseError, RenderError
from flexjudge.formats import _common
from flexjudge.formats._recovery import NoObject, extract_object
from flexjudge.formats.winners import WinnerError, read_winner, winner_text
from flexjudge.schema import Candidate, Criterion, Dimension, Judgment, JudgmentMeta, Score, Verdict

FORMAT: Final = "flex"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class FlexDim(_Wire):
    """A sub-dimension (criterion) of a category."""

    name: str
    """Criterion name."""
    reason_1: str
    """Evidence for candidate 1."""
    reason_2: str
    """Evidence for candidate 2."""
    score_1: Score
    """Candidate 1's share of 10 points."""
    score_2: Score
    """Candidate 2's share of 10 points."""


class FlexCategory(_Wire):
    """A category: an anchor ("A. Semantic Alignment & Accuracy") or a generated one ("D. ...")."""

    name: str
    """Category name, usually with a letter prefix."""
    dims: list[FlexDim]
    """The category's 3 to 5 sub-dimensions."""
    cat_reason: str
    """Category-level analysis."""
    cat_winner: str | int
    """"Image 1" or "Image 2" ("Video 1" or "Video 2" for video)."""


class FlexOutput(_Wire):
    """A whole judgment as the released checkpoints emit it."""

    prompt: str
    """The generation prompt, echoed."""
    categories: list[FlexCategory]
    """Anchor categories first, in order, then any generated category."""
    reason: str
    """Overall analysis."""
    winner: str | int
    """"Image 1" or "Image 2" ("Video 1" or "Video 2" for video)."""


def parse_flex(text: str, *, modality: Modality | None, strict: bool) -> Judgment:
    try:
        wire = FlexOutput.model_validate_json(text, strict=True)
    except ValidationError:
        wire = None
    if wire is not None:
        exact = _exact_modality(wire)
        if exact is not None and (modality is None or modality == exact):
            return _build(wire, text, exact, [], recovered=False)
    if strict:
        raise _strict_failure(text, wire, modality)
    return _parse_lenient(text, modality)


def _exact_modality(wire: FlexOutput) -> Modality | None:
    """The modality when every winner is spelled exactly as released, else None."""
    winners = [wire.winner, *(c.cat_winner for c in wire.categories)]
    for modality in ("image", "video"):
        if all(w in (winner_text(1, modality), winner_text(2, modality)) for w in winners):
            return modality
    return None


def _strict_failure(text: str, wire: FlexOutput | None, modality: Modality | None) -> ParseError:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return ParseError(f"not a single JSON object: {exc.msg}", offset=exc.pos, format=FORMAT)
    except RecursionError:
        return ParseError("JSON nested too deeply", offset=0, format=FORMAT)
    base = len(text) - len(text.lstrip())
    if wire is None:
        try:
            FlexOutput.model_validate(value, strict=True)
        except ValidationError as exc:
            return _common.schema_error(exc, text, value, base, FORMAT)
    expected = f"{winner_text(1, modality or 'image')!r} or {winner_text(2, modality or 'image')!r}"
    for loc, winner in _winner_locs(value):
        if winner not in ((winner_text(1, modality), winner_text(2, modality)) if modality else _ALL_EXACT):
            return ParseError(
                f"winner {winner!r} is not exactly {expected}",
                offset=_common.locate(text, value, loc, base),
                path=_common.format_path(loc),
                format=FORMAT,
            )
    return ParseError("winners mix 'Image' and 'Video'", offset=base, format=FORMAT)


_ALL_EXACT = ("Image 1", "Image 2", "Video 1", "Video 2")


def _winner_locs(value: dict[str, Any]) -> list[tuple[_common.Loc, Any]]:
    locs: list[tuple[_common.Loc, Any]] = [
        (("categories", i, "cat_winner"), c.get("cat_winner"))
        for i, c in enumerate(value.get("categories", []))
    ]
    return [*locs, (("winner",), value.get("winner"))]


def _parse_lenient(text: str, modality: Modality | None) -> Judgment:
    try:
        found = extract_object(text)
    except NoObject as exc:
        raise ParseError(exc.reason, offset=exc.offset, format=FORMAT) from None
    except RecursionError:
        raise ParseError("JSON nested too deeply", offset=0, format=FORMAT) from None
    notes = list(found.notes)
    value = _common.prune(found.value, FlexOutput, notes)
    try:
        wire = FlexOutput.model_validate(value, strict=True)
    except ValidationError:
        try:
            wire = FlexOutput.model_validate(value)
        except ValidationError as exc:
            if not found.complete:
                raise _common.incomplete_error(text, found, FORMAT) from None
            raise _common.schema_error(exc, text, value, found.start, FORMAT) from None
        notes.append("coerced values to their expected types")
    resolved = _lenient_modality(wire, modality, notes)
    winners: list[int] = []
    for loc, winner in _winner_locs(value):
        try:
            winners.append(read_winner(winner))
        except WinnerError as exc:
            offset = _common.locate(text, value, loc, found.start)
            raise ParseError(str(exc), offset=offset, path=_common.format_path(loc), format=FORMAT) from None
        if winner not in (winner_text(1, resolved), winner_text(2, resolved)):
            notes.append(f"read winner {winner!r} at {_common.format_path(loc)} as candidate {winners[-1]}")
    return _build(wire, text, resolved, notes, recovered=True, winners=winners)


def _lenient_modality(wire: FlexOutput, modality: Modality | None, notes: list[str]) -> Modality:
    said = {
        m
        for w in (wire.winner, *(c.cat_winner for c in wire.categories))
        if isinstance(w, str)
        for m in ("image", "video")
        if m in w.lower()
    }
    if modality is not None:
        if said and said != {modality}:
            notes.append(f"winners name {sorted(said)} but the caller said {modality}")
        return modality
    if len(said) == 1:
        return said.pop()  # type: ignore[return-value]
    names = [c.name for c in wire.categories]
    guess: Modality = "video" if any(anchor_position(n, "video") == 1 for n in names) else "image"
    notes.append(f"modality not stated by the winners; read as {guess}")
    return guess


def _build(
    wire: FlexOutput,
    text: str,
    modality: Modality,
    notes: list[str],
    *,
    recovered: bool,
    winners: list[int] | None = None,
) -> Judgment:
    if winners is None:  # exact spelling: the number is the last character
        winners = [int(str(c.cat_winner)[-1]) for c in wire.categories] + [int(str(wire.winner)[-1])]
    dimensions = [
        Dimension.model_construct(
            name=category.name,
            origin="generated" if anchor_position(category.name, modality) is None else "predefined",
            criteria=[
                Criterion.model_construct(
                    name=d.name,
                    evidence_1=d.reason_1,
                    evidence_2=d.reason_2,
                    score_1=d.score_1,
                    score_2=d.score_2,
                )
                for d in category.dims
            ],
            analysis=category.cat_reason,
            winner=cast(Candidate, winners[i]),
        )
        for i, category in enumerate(wire.categories)
    ]
    meta = JudgmentMeta.model_construct(
        source_format=FORMAT, candidate_order=[1, 2], raw_text=text, recovered=recovered, recovery_notes=notes
    )
    return Judgment.model_construct(
        prompt=wire.prompt,
        modality=modality,
        scoring="split",
        intent=None,
        evidence=[],
        dimensions=dimensions,
        verdict=Verdict.model_construct(analysis=wire.reason, winner=cast(Candidate, winners[-1])),
        meta=meta,
    )


def to_flex_dict(judgment: Judgment) -> dict[str, Any]:
    """The released wire object for `judgment` (intent and evidence are not part of it and are left out)."""
    if judgment.scoring != "split":
        raise RenderError(
            "flex scores split 10 points per criterion; this judgment holds independent ratings"
        )

    def winner(value: int | None, where: str) -> str:
        if value is None:
            raise RenderError(f"flex has no ties, but {where} is a tie")
        return winner_text(value, judgment.modality)

    return {
        "prompt": judgment.prompt,
        "categories": [
            {
                "name": d.name,
                "dims": [
                    {
                        "name": c.name,
                        "reason_1": c.evidence_1,
                        "reason_2": c.evidence_2,
                        "score_1": c.score_1,
                        "score_2": c.score_2,
                    }
                    for c in d.criteria
                ],
                "cat_reason": d.analysis,
                "cat_winner": winner(d.winner, f"dimensions[{i}]"),
            }
            for i, d in enumerate(judgment.dimensions)
        ],
        "reason": judgment.verdict.analysis,
        "winner": winner(judgment.verdict.winner, "the verdict"),
    }


def render_flex(judgment: Judgment) -> str:
    return json.dumps(to_flex_dict(judgment), ensure_ascii=False)
