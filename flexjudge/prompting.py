"""From a judging request to the prompt text: templates, anchors, frames, and the user's preferences.

How preferences act (the whole contract, also in README.md):

- `profile` (free text) is quoted in the prompt as the user's stated preferences; the native format asks
  the judge to list those it applied in `intent.preferences`, and every result records the preferences
  it was judged under in `meta.preferences`.
- `custom_dimensions` are required generated dimensions: the prompt names them, and the decoding
  constraint fixes them right after the three anchors, in the given order.
- `weights` map dimension names (matched like anchors: no prefixes, case or punctuation) to weights
  (default 1.0). They are stated in the prompt; with `weighted_verdict=True` the overall winner is the
  candidate with the larger sum of weights over the dimensions it won, replacing the judge's own
  verdict (the judge's analysis is kept, and `meta.verdict_rule` says "weighted").
"""

from __future__ import annotations

import hashlib
import string
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from flexjudge.anchors import Modality
from flexjudge.constraints import OutputFormat, anchor_names, custom_names
from flexjudge.errors import UsageError
from flexjudge.prompts import load_template
from flexjudge.schema import Preferences

Mode = Literal["pair", "point"]

__all__ = ["PromptSpec", "render_prompt", "template_identity"]


class PromptSpec(BaseModel):
    """Everything that decides the prompt text; recorded so a judgment can be reproduced."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = "pair"
    modality: Modality = "image"
    output_format: OutputFormat = "flex"
    frames_per_video: int = 8
    template: str | None = None
    """A template file of the user's own; None for the bundled one."""


def template_name(spec: PromptSpec) -> str:
    if spec.mode == "point":
        return "native_point"
    return f"flex_{spec.modality}" if spec.output_format == "flex" else "native_pair"


def template_identity(spec: PromptSpec) -> tuple[str, str]:
    """(the template's name, or the path of the user's own; a digest of the text used): what a judgment
    records so that it can be reproduced. The digest follows the text, so an edited template is told apart
    from the one it was copied from without anyone bumping a version."""
    text = _template_text(spec)
    return spec.template or template_name(spec), hashlib.sha256(text.encode()).hexdigest()[:16]


def _template_text(spec: PromptSpec) -> str:
    return load_template(Path(spec.template)) if spec.template else load_template(template_name(spec))


def render_prompt(
    spec: PromptSpec, prompt: str, preferences: Preferences | None = None, *, low: int = 1, high: int = 10
) -> str:
    """The prompt text for one request (the images are passed separately, candidate 1 first)."""
    template = _template_text(spec)
    preferences = preferences or Preferences()
    output_format: OutputFormat = "native" if spec.mode == "point" else spec.output_format
    fields = {
        "prompt": prompt,
        "modality": spec.modality,
        "frames_per_video": spec.frames_per_video,
        "frames_note": _frames_note(spec),
        "preferences_note": _preferences_note(preferences),
        "anchors": ", ".join(f'"{a}"' for a in anchor_names(spec.modality, output_format)),
        "custom_dimensions": _custom_note(preferences, output_format),
        "low": low,
        "high": high,
    }
    used = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    unknown = used - fields.keys()
    if unknown:
        raise UsageError(f"template uses unknown field(s) {sorted(unknown)}; available: {sorted(fields)}")
    return template.format_map(fields)


def _frames_note(spec: PromptSpec) -> str:
    if spec.modality != "video":
        return ""
    if spec.mode == "point":
        return f" You see {spec.frames_per_video} frames sampled uniformly from the video, in order."
    n = spec.frames_per_video
    return (
        f" You see {n} frames sampled uniformly from each video:"
        f" frames 1-{n} are video 1, frames {n + 1}-{2 * n} are video 2."
    )


def _preferences_note(preferences: Preferences) -> str:
    lines = []
    if preferences.profile.strip():
        lines.append(
            f"The user's stated preferences: {preferences.profile.strip()}."
            " Let them guide which criteria you choose and how you weigh them."
        )
    if preferences.weights:
        listed = ", ".join(f"{name} (weight {weight:g})" for name, weight in preferences.weights.items())
        lines.append(
            f"The user weights these dimensions: {listed}; a weight above 1 matters more than usual."
        )
    return "\n" + "\n".join(lines) + "\n" if lines else ""


def _custom_note(preferences: Preferences, output_format: OutputFormat) -> str:
    if not preferences.custom_dimensions:
        return ""
    names = ", ".join(f'"{n}"' for n in custom_names(preferences.custom_dimensions, output_format))
    return f" The user requires these dimensions after the three above, in this order: {names}."
