"""The judgment constraint as an Outlines output type, for people who already drive generation with Outlines.

    generator = outlines.Generator(model, flexjudge.outlines_type("pair", "image", "flex"))
    judgment = flexjudge.parse(generator(chat, max_new_tokens=4096), format="flex", modality="image")

By default it is the judgment grammar (`outlines.types.CFG`, a Lark grammar that Outlines decodes with
llguidance): everything the JSON Schema enforces, plus winners that follow their scores (pairs) or
dimension scores within their criteria's (pointwise, scales of up to 11 values). `grammar=False` gives the
same constraint as JSON Schema (`outlines.types.JsonSchema`) for Outlines' other backends (outlines-core,
xgrammar), which then enforce less; `flexjudge.check` reports what they let through. Unique criterion
names are kept by flexjudge's own decoding loop only (no Outlines type can say it).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal

from flexjudge.anchors import Modality
from flexjudge.constraints import OutputFormat, pair_constraint, point_constraint
from flexjudge.errors import UsageError
from flexjudge.grammar import lark_grammar
from flexjudge.schema import PointScale

if TYPE_CHECKING:
    from outlines.types import CFG, JsonSchema

__all__ = ["outlines_type"]


def outlines_type(
    mode: Literal["pair", "point"] = "pair",
    modality: Modality = "image",
    output_format: OutputFormat | None = None,
    *,
    scale: PointScale | None = None,
    custom_dimensions: tuple[str, ...] = (),
    grammar: bool = True,
    max_string_length: int | None = None,
) -> CFG | JsonSchema:
    """The judgment constraint of `mode` as an Outlines output type, for `outlines.Generator(model, ...)`.

    `output_format`: "flex" (the default for pairs: the released format) or "native"; pointwise judgments
    have one format, native.
    `custom_dimensions` are required after the anchors, as `Preferences.custom_dimensions` asks for them.
    `grammar=False`, or a pointwise scale wider than 11 values, gives JSON Schema instead of the grammar.
    `max_string_length` bounds every free string (random-weight test models only: a real judge closes its
    strings). Read the output with `flexjudge.parse` (pairs) or `flexjudge.parse_pointwise` (point).
    """
    from outlines.types import CFG, JsonSchema  # imported on use: `import flexjudge` stays light

    if mode not in ("pair", "point"):
        raise UsageError(f"mode must be 'pair' or 'point', got {mode!r} (a ranking is judged in pairs)")
    if modality not in ("image", "video"):
        raise UsageError(f"modality must be 'image' or 'video', got {modality!r}")
    fmt = output_format or ("flex" if mode == "pair" else "native")
    if fmt not in ("flex", "native") or (mode == "point" and fmt != "native"):
        allowed = "'flex' or 'native'" if mode == "pair" else "'native' (the one pointwise format)"
        raise UsageError(f"output_format for mode={mode!r} must be {allowed}, got {output_format!r}")
    if mode == "pair":
        schema = pair_constraint(
            modality, fmt, custom_dimensions=custom_dimensions, max_string_length=max_string_length
        )
    else:
        if scale is not None and not isinstance(scale, PointScale):
            raise UsageError(f"scale must be a flexjudge.PointScale, got {type(scale).__name__}")
        schema = point_constraint(
            modality, scale, custom_dimensions=custom_dimensions, max_string_length=max_string_length
        )
    lark = lark_grammar(schema) if grammar else None
    if lark is not None:
        return CFG(lark)
    # Compact JSON, as the grammar writes it: llguidance reads `x-guidance`, the other engines ignore it.
    return JsonSchema(json.dumps({**schema, "x-guidance": {"whitespace_flexible": False}}))
