"""Prompt rendering: the method's facts, the user's preferences and the frame layout reach the text."""

from __future__ import annotations

from pathlib import Path

import pytest

import flexjudge
from flexjudge.prompting import PromptSpec, render_prompt


def test_flex_prompts_name_the_anchors_and_the_split() -> None:
    for modality in ("image", "video"):
        text = render_prompt(PromptSpec(modality=modality), "a fox in snow")
        assert "a fox in snow" in text and "10" in text and "3 to 5" in text
        for i, anchor in enumerate(flexjudge.anchor_dimensions(modality)):
            assert f'"{"ABC"[i]}. {anchor}"' in text


def test_video_prompt_says_which_frames_belong_to_which_video() -> None:
    text = render_prompt(PromptSpec(modality="video", output_format="native", frames_per_video=6), "p")
    assert "frames 1-6 are video 1, frames 7-12 are video 2" in text
    assert "the first 6 frames belong to Video 1" in render_prompt(
        PromptSpec(modality="video", frames_per_video=6), "p"
    )


def test_preferences_reach_the_prompt() -> None:
    prefs = flexjudge.Preferences(
        profile="muted palettes", weights={"Aesthetics & Artistry": 2}, custom_dimensions=("Text Legibility",)
    )
    flex = render_prompt(PromptSpec(), "p", prefs)
    assert (
        "muted palettes" in flex
        and "Aesthetics & Artistry (weight 2)" in flex
        and '"D. Text Legibility"' in flex
    )
    native = render_prompt(PromptSpec(output_format="native"), "p", prefs)
    assert '"Text Legibility"' in native and "intent" in native
    assert "muted palettes" not in render_prompt(PromptSpec(), "p")


def test_user_templates(tmp_path: Path) -> None:
    template = tmp_path / "mine.md"
    template.write_text("Judge {prompt} with {anchors}.", encoding="utf-8")
    text = render_prompt(PromptSpec(template=str(template)), "a fox")
    assert text.startswith("Judge a fox with") and "Semantic Alignment" in text
    template.write_text("Judge {prompt} by {mood}.", encoding="utf-8")
    with pytest.raises(ValueError, match="mood"):
        render_prompt(PromptSpec(template=str(template)), "a fox")


def test_preferences_validate() -> None:
    with pytest.raises(ValueError):
        flexjudge.Preferences(custom_dimensions=("a", "b", "c"))
    with pytest.raises(ValueError):
        flexjudge.Preferences(weights={"x": -1})
    with pytest.raises(ValueError, match="control characters"):
        flexjudge.Preferences(custom_dimensions=("Text\x7fLegibility",))
    prefs = flexjudge.Preferences(weights={"A. Semantic Alignment & Accuracy": 3})
    assert prefs.weight("semantic alignment and accuracy") == 3 and prefs.weight("other") == 1.0


def test_a_template_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    """Templates are cached for speed, by path, modification time and size: an edit still shows."""
    from flexjudge.prompts import load_template

    path = tmp_path / "mine.md"
    path.write_text("first {prompt}", encoding="utf-8")
    assert load_template(path) == "first {prompt}"
    path.write_text("second, longer {prompt}", encoding="utf-8")
    assert load_template(path) == "second, longer {prompt}"
    assert load_template("flex_image") is load_template("flex_image")  # bundled: read once
