"""The released UnifiedReward-Flex wire format: one JSON object of categories, dims and winners.

``{"prompt", "categories": [{"name", "dims": [{"name", "reason_1", "reason_2", "score_1", "score_2"}],
"cat_reason", "cat_winner"}], "reason", "winner"}`` with winners "Image 1"/"Image 2" ("Video ..." for video).
"""

from __future__ import annotations

import json
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import CoreSchema, SchemaValidator
from pydantic_core import core_schema as cs

from flexjudge.anchors import Modality, anchor_position
from flexjudge.errors import ParseError, RenderError
from flexjudge.formats import _common
from flexjudge.formats._recovery import NoObject, extract_object
from flexjudge.formats.winners import WinnerError, read_winner, winner_text
from flexjudge.schema import Candidate, Criterion, Dimension, Judgment, Score, Verdict

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


def _record(fields: dict[str, CoreSchema], **aliases: str) -> CoreSchema:
    return cs.typed_dict_schema(
        {
            name: cs.typed_dict_field(schema, validation_alias=aliases.get(name))
            for name, schema in fields.items()
        },
        extra_behavior="forbid",
        config=cs.CoreConfig(validate_by_alias=True),
    )


# The fast path: FlexOutput's exact shape, read by pydantic-core straight into the dictionaries that
# become Criterion and Dimension objects (flex names mapped to ours by alias). Clean text pays for one
# JSON pass and a few object shells; anything else falls back to FlexOutput and the lenient reader.
def _refuse_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a score")
    return value


def _validator(strict: bool) -> SchemaValidator:
    text = cs.str_schema(strict=strict)
    score: CoreSchema = cs.int_schema(ge=0, le=10, strict=strict)  # strict ints refuse booleans themselves
    if not strict:
        score = cs.no_info_before_validator_function(_refuse_bool, score)
    criterion = _record(
        {"name": text, "evidence_1": text, "evidence_2": text, "score_1": score, "score_2": score},
        evidence_1="reason_1",
        evidence_2="reason_2",
    )
    category = _record(
        {"name": text, "criteria": cs.list_schema(criterion), "analysis": text, "winner": text},
        criteria="dims",
        analysis="cat_reason",
        winner="cat_winner",
    )
    return SchemaValidator(
        _record({"prompt": text, "categories": cs.list_schema(category), "reason": text, "winner": text})
    )


_FAST = _validator(strict=True)
_KEYS = frozenset(FlexOutput.model_fields)
_LAX = _validator(strict=False)  # the lenient reader's second try: "7" and 7.0 read as 7, and noted
_CRITERION_FIELDS = set(Criterion.model_fields)
_DIMENSION_FIELDS = set(Dimension.model_fields)
_VERDICT_FIELDS = set(Verdict.model_fields)
_JUDGMENT_FIELDS = set(Judgment.model_fields)
_EXACT_WINNERS: dict[str, tuple[Modality, Candidate]] = {
    "Image 1": ("image", 1),
    "Image 2": ("image", 2),
    "Video 1": ("video", 1),
    "Video 2": ("video", 2),
}


def _parse_fast(text: str, modality: Modality | None) -> Judgment | None:
    """The judgment when `text` is exactly the released format, else None."""
    try:
        raw = _FAST.validate_json(text)
    except ValidationError:
        return None
    # pydantic-core keeps the last of duplicated keys: a text with any repeated member (however its
    # name is escaped) is not the exact format; strict mode refuses it, the lenient reader refuses
    # repeated winners and notes other repeats. Each object holds exactly its fields once validated.
    members = 4 + sum(4 + 5 * len(category["criteria"]) for category in raw["categories"])
    if not _common.members_once(text, members):
        return None
    return _assemble(raw, text, modality, notes=None)


def _assemble(
    raw: dict[str, Any], text: str, modality: Modality | None, notes: list[str] | None
) -> Judgment | None:
    """Turn validated fast-path data into a Judgment; None when a winner is not spelled exactly.

    `notes` is None on the fast path (nothing was repaired) and the lenient reader's notes otherwise.
    """
    try:
        said, winner = _EXACT_WINNERS[raw["winner"]]
        dimensions = []
        for category in raw["categories"]:
            category_modality, category["winner"] = _EXACT_WINNERS[category["winner"]]
            if category_modality != said:
                return None
            category["criteria"] = _common.trusted_many(Criterion, category["criteria"], _CRITERION_FIELDS)
            category["origin"] = (
                "generated" if anchor_position(category["name"], said) is None else "predefined"
            )
            dimensions.append(_common.trusted(Dimension, category, _DIMENSION_FIELDS))
    except KeyError:
        return None
    if modality is not None and modality != said:
        return None
    judgment = {
        "prompt": raw["prompt"],
        "modality": said,
        "scoring": "split",
        "intent": None,
        "evidence": [],
        "dimensions": dimensions,
        "verdict": _common.trusted(Verdict, {"analysis": raw["reason"], "winner": winner}, _VERDICT_FIELDS),
        "meta": _common.fresh_meta(FORMAT, text, notes),
    }
    return _common.trusted(Judgment, judgment, _JUDGMENT_FIELDS)


def parse_flex(text: str, *, modality: Modality | None, strict: bool) -> Judgment:
    fast = _parse_fast(text, modality)
    if fast is not None:
        return fast
    if strict:
        raise _strict_failure(text, modality)
    return _parse_lenient(text, modality)


def _strict_failure(text: str, modality: Modality | None) -> ParseError:
    """Why `text` is not exactly the released format (the fast path said no; say where and why)."""
    try:
        value, base = _common.load_strict(text, FORMAT)
    except ParseError as exc:
        return exc
    try:
        FlexOutput.model_validate(value, strict=True)
    except ValidationError as exc:
        return _common.schema_error(exc, text, value, base, FORMAT)
    expected = f"{winner_text(1, modality or 'image')!r} or {winner_text(2, modality or 'image')!r}"
    for loc, winner in _winner_locs(value):
        if winner not in (
            (winner_text(1, modality), winner_text(2, modality)) if modality else tuple(_EXACT_WINNERS)
        ):
            return ParseError(
                f"winner {winner!r} is not exactly {expected}",
                offset=_common.locate(text, value, loc, base),
                path=_common.format_path(loc),
                format=FORMAT,
            )
    duplicate = _common.duplicated_key(text)
    if duplicate is not None:
        return ParseError(f"the member {duplicate!r} appears twice in one object", offset=base, format=FORMAT)
    return ParseError("winners mix 'Image' and 'Video'", offset=base, format=FORMAT)


def _winner_locs(value: dict[str, Any]) -> list[tuple[_common.Loc, Any]]:
    categories = value.get("categories")
    locs: list[tuple[_common.Loc, Any]] = []
    if isinstance(categories, list):
        locs = [
            (("categories", i, "cat_winner"), c.get("cat_winner"))
            for i, c in enumerate(categories)
            if isinstance(c, dict)
        ]
    return [*locs, (("winner",), value.get("winner"))]


def _parse_lenient(text: str, modality: Modality | None) -> Judgment:
    try:
        found = extract_object(text, _KEYS)
    except NoObject as exc:
        raise ParseError(exc.reason, offset=exc.offset, format=FORMAT) from None
    notes = list(found.notes)
    value = _common.prune(found.value, FlexOutput, notes)
    resolved = _lenient_modality(value, modality, notes)
    # Winners are read first, so a bad one is reported as such; then they are spelled exactly,
    # and the data goes through the same validator and assembly as the fast path.
    for loc, winner in _winner_locs(value):
        if winner is None:
            continue  # missing: validation reports it (or the truncation that lost it)
        try:
            number = read_winner(winner)
        except WinnerError as exc:
            offset = _common.locate(text, found.value, loc, found.start)
            raise ParseError(str(exc), offset=offset, path=_common.format_path(loc), format=FORMAT) from None
        exact = winner_text(number, resolved)
        if winner != exact:
            notes.append(f"read winner {winner!r} at {_common.format_path(loc)} as candidate {number}")
            holder = value if loc == ("winner",) else value["categories"][loc[1]]
            holder[loc[-1]] = exact
    try:
        raw = _FAST.validate_python(value, strict=True)
    except ValidationError:
        try:
            raw = _LAX.validate_python(value)
        except ValidationError as exc:
            if not found.complete:
                raise _common.incomplete_error(text, found, FORMAT) from None
            raise _common.schema_error(exc, text, found.value, found.start, FORMAT) from None
        notes.append("coerced values to their expected types")
    judgment = _assemble(raw, text, resolved, notes)
    assert judgment is not None  # every winner was rewritten to the exact spelling of `resolved`
    return judgment


def _lenient_modality(value: dict[str, Any], modality: Modality | None, notes: list[str]) -> Modality:
    said = {
        m for _, w in _winner_locs(value) if isinstance(w, str) for m in ("image", "video") if m in w.lower()
    }
    if modality is not None:
        if said and said != {modality}:
            notes.append(f"winners name {sorted(said)} but the caller said {modality}")
        return modality
    if len(said) == 1:
        return "video" if "video" in said else "image"
    categories = value.get("categories")
    names = [c.get("name") for c in categories if isinstance(c, dict)] if isinstance(categories, list) else []
    guess: Modality = (
        "video" if any(isinstance(n, str) and anchor_position(n, "video") == 1 for n in names) else "image"
    )
    notes.append(f"modality not stated by the winners; read as {guess}")
    return guess


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
