"""From a request to a judgment: the constraint each request carries, and reading what comes back.

Constraints are built once per shape and shared (backends treat request schemas as read-only). Reading
turns a generation into a typed judgment: a token budget that ran out is reported as `TruncatedOutput`
whatever broke, and instructor re-asks against `checked_model`, the wire model plus the method's rules.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from flexjudge.anchors import Modality
from flexjudge.backends.base import Constraint, Generation
from flexjudge.constraints import OutputFormat, pair_constraint, point_constraint
from flexjudge.errors import ParseError, TruncatedOutput
from flexjudge.formats import parse, parse_pointwise
from flexjudge.grammar import lark_grammar
from flexjudge.schema import Judgment, PointScale, PointwiseJudgment, Preferences, Verdict
from flexjudge.votes import dimension_votes, leader
from flexjudge.wire_schemas import flex_schema, native_pair_schema, native_point_schema

T = TypeVar("T")

__all__ = [
    "checked_model",
    "pair_request_constraint",
    "point_request_constraint",
    "point_with_scale",
    "portable_schema",
    "read_generation",
    "weighted_verdict",
]


@functools.lru_cache(maxsize=64)
def pair_request_constraint(
    modality: Modality, output_format: OutputFormat, custom: tuple[str, ...], max_string_length: int | None
) -> Constraint:
    """The constraint every pairwise request of this shape carries: the full schema, its OpenAI-strict
    subset, the grammar in which winners follow the scores, and the criteria arrays whose names must stay
    distinct. Built once per shape and shared (backends treat it as read-only): building one deep-copies
    a few hundred nodes and derives a grammar, which would otherwise be paid on every judgment."""
    schema = pair_constraint(
        modality, output_format, custom_dimensions=custom, max_string_length=max_string_length
    )
    criteria = "dims" if output_format == "flex" else "criteria"
    return Constraint(
        schema=schema,
        strict_schema=portable_schema(modality, output_format),
        grammar=lark_grammar(schema),
        unique_names=frozenset({criteria}),
    )


@functools.lru_cache(maxsize=64)
def point_request_constraint(
    modality: Modality, low: int, high: int, max_string_length: int | None, custom: tuple[str, ...] = ()
) -> Constraint:
    """The constraint of a pointwise request on the scale low..high (a PointScale is not hashable): the
    anchors, custom dimensions, criteria counts and scale fixed as for pairs, and a grammar in which each
    dimension score lies within its criteria's scores (on scales of up to 11 values)."""
    scale = PointScale(low=low, high=high)
    schema = point_constraint(modality, scale, custom_dimensions=custom, max_string_length=max_string_length)
    return Constraint(
        schema=schema,
        strict_schema=native_point_schema(modality, scale),
        grammar=lark_grammar(schema),
        unique_names=frozenset({"criteria"}),
    )


@functools.lru_cache(maxsize=4)
def checked_model(output_format: OutputFormat, modality: Modality) -> type[BaseModel]:
    """The wire model plus the method's rules as a validator: what instructor re-asks against.

    Only its validation is used: every ask carries the request's own decoding constraint (the backend
    sends it in place of the schema instructor would derive from this model, which is looser)."""
    from pydantic import model_validator

    from flexjudge.checks import check
    from flexjudge.formats.flex import FlexOutput

    base: type[BaseModel] = FlexOutput if output_format == "flex" else Judgment

    class Checked(base):  # type: ignore[valid-type, misc]
        @model_validator(mode="after")
        def _method_rules(self) -> Any:
            try:
                text = self.model_dump_json(exclude={"meta", "findings"})
                judgment = parse(text, format=output_format, modality=modality)
            except ParseError as exc:  # a ValueError is what instructor feeds back to the model
                raise ValueError(f"unreadable judgment: {exc}") from None
            errors = [f"{f.path}: {f.message}" for f in check(judgment) if f.severity == "error"]
            if errors:
                raise ValueError("the judgment breaks the method's rules: " + "; ".join(errors))
            return self

    Checked.__name__ = f"Checked{base.__name__}"
    return Checked


@functools.lru_cache(maxsize=8)
def portable_schema(modality: Modality, output_format: OutputFormat) -> dict[str, Any]:
    return flex_schema(modality) if output_format == "flex" else native_pair_schema(modality)


def point_with_scale(text: str, scale: PointScale) -> PointwiseJudgment:
    return parse_pointwise(text, scale=scale)  # the wire format leaves the scale out: it is the caller's


def read_generation(read: Callable[[], T], generation: Generation) -> T:
    """Parse a generation; a token budget that ran out is reported as truncation, whatever broke."""
    try:
        return read()
    except TruncatedOutput:
        raise
    except ParseError as exc:
        if generation.finish_reason == "length":
            raise TruncatedOutput(
                f"the token budget ran out before the judgment was complete ({exc.reason})",
                offset=exc.offset,
                partial_text=generation.text,
                format=exc.format,
            ) from exc
        raise


def weighted_verdict(judgment: Judgment, prefs: Preferences) -> Judgment:
    """The judgment with its overall winner decided by the weighted dimension vote (the judge's analysis
    is kept; `meta.verdict_rule` says "weighted")."""
    winner = leader(*dimension_votes(judgment.dimensions, prefs))
    return judgment.model_copy(
        update={
            "verdict": Verdict(analysis=judgment.verdict.analysis, winner=winner),
            "meta": judgment.meta.model_copy(update={"verdict_rule": "weighted"}),
        }
    )
