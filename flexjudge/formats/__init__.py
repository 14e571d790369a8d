"""Read and write judgments in each wire format: `flex` (released JSON), `think` (tagged text), `native`.

`parse` raises `ParseError` for text that is not a judgment, and nothing else: a caller can always tell
"unreadable" (and where, and why) from a judgment. Only expected failures become `ParseError`; a bug
(a `TypeError`, a `KeyError`) surfaces as itself instead of passing for unreadable text, and a property
test feeds random text, JSON-ish text and decoded bytes to every format to show there are none.
Clean text takes each format's fast path; only text that fails it pays for lenient recovery, and a
recovered judgment says so in `meta.recovered` and `meta.recovery_notes`.
"""

from __future__ import annotations

import re
from typing import Literal

from flexjudge.anchors import Modality
from flexjudge.errors import ParseError, RenderError, TruncatedOutput
from flexjudge.formats._recovery import NoObject, extract_object
from flexjudge.formats.flex import parse_flex, render_flex
from flexjudge.formats.native import parse_native, render_native
from flexjudge.formats.pointwise import parse_pointwise, render_pointwise
from flexjudge.formats.think import parse_think, render_think
from flexjudge.schema import Judgment

Format = Literal["flex", "think", "native"]
FORMATS: tuple[Format, ...] = ("flex", "think", "native")

__all__ = ["FORMATS", "Format", "detect_format", "parse", "parse_pointwise", "render", "render_pointwise"]

# The first flex or native key decides (group 1 is set for flex): one search, not one per format.
_JSON_KEY = re.compile(r'"(?:(categories|cat_winner|dims)|dimensions|verdict|criteria)"\s*:')
# Think marks: a tag, or "Image 1 (7/10)" in any case. Both searches open with a character class the
# regex engine skips to in C; `re.I` on the rating (with its leading `\b`) tried every position in
# turn, several times slower. The classes are exactly what `re.I` matches (i also matches İ and ı);
# the lookbehind after the first letter is the `\b` before it (nothing of a word just before).
_THINK_TAG = re.compile(r"<(?:think|answer)>", re.I)
_I = "[iI\u0130\u0131]"
_THINK_RATING = re.compile(
    rf"[iI\u0130\u0131vV](?<!\w.)(?:(?<={_I})[mM][aA][gG][eE]|(?<=[vV]){_I}[dD][eE][oO])"
    r"\s*1\s*\(\s*\d+\s*/\s*10\s*\)"
)


def detect_format(text: str) -> Format:
    """Which format `text` is written in; raises `ParseError` when it looks like none of them."""
    # JSON keys decide first: thinking backbones (Qwen3, Qwen3.5) write <think>...</think> before the JSON,
    # and Think text never holds a quoted key followed by a colon.
    key = _JSON_KEY.search(text)
    if key is not None:
        return "flex" if key.group(1) is not None else "native"
    if _THINK_TAG.search(text) or _THINK_RATING.search(text):
        return "think"
    brace = text.find("{")
    if brace >= 0 and _cut_short(text):
        raise TruncatedOutput(
            "output ends before any key that tells flex from native", offset=len(text), partial_text=text
        )
    raise ParseError("cannot tell the format: no flex or native JSON keys and no Think tags", offset=0)


def _cut_short(text: str) -> bool:
    try:
        found = extract_object(text)
    except NoObject:
        return False
    return not found.complete and found.hit_end


def parse(
    text: str,
    format: Format | Literal["auto"] = "auto",
    modality: Modality | None = None,
    strict: bool = False,
    *,
    prompt: str = "",
) -> Judgment:
    """Read a pairwise judgment from model output.

    `format="auto"` detects it. `modality` is the caller's truth when given; otherwise the winners'
    labels say it. `strict=True` accepts only the exact format (no fences, prose, repairs or loose
    winners). `prompt` fills `Judgment.prompt` for formats that do not echo it (think).
    Raises `ParseError` (`TruncatedOutput` when the text stops before the verdict), and nothing else.
    """
    if not isinstance(text, str):
        raise ParseError(f"expected text, got {type(text).__name__}", offset=0)
    if modality not in (None, "image", "video"):
        raise ParseError(f"unknown modality {modality!r}; expected 'image', 'video' or None", offset=0)
    try:
        chosen = detect_format(text) if format == "auto" else format
        if chosen == "flex":
            return parse_flex(text, modality=modality, strict=strict)
        if chosen == "native":
            return parse_native(text, modality=modality, strict=strict)
        if chosen == "think":
            return parse_think(text, modality=modality, strict=strict, prompt=prompt)
        raise ParseError(
            f"unknown format {format!r}; expected one of {', '.join(FORMATS)} or 'auto'", offset=0
        )
    except RecursionError:  # the one expected failure the codecs do not turn into ParseError themselves
        raise ParseError("nested too deeply", offset=0, format=None if format == "auto" else format) from None


def render(judgment: Judgment, format: Format) -> str:
    """Write `judgment` in a wire format; raises `RenderError` when the format cannot carry it."""
    if format == "flex":
        return render_flex(judgment)
    if format == "native":
        return render_native(judgment)
    if format == "think":
        return render_think(judgment)
    raise RenderError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
