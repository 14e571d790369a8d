"""`flexjudge.judge` end to end on a tiny random-weight Qwen2.5-VL built here, decoding under the constraint.

The model's words are meaningless; what is tested is the machinery: media in, constraint enforced,
judgment read, metadata recorded, order swap, preferences, video frames, pointwise and ranking modes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import flexjudge
from flexjudge.constraints import ENFORCED_FINDINGS, enforced_findings
from flexjudge.judging import Judge

pytest.importorskip("transformers")
av = pytest.importorskip("av")
from flexjudge.backends.transformers import TransformersBackend  # noqa: E402


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> TransformersBackend:
    import os

    os.environ["FLEXJUDGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    return TransformersBackend("tiny-random")


@pytest.fixture
def judge(backend: TransformersBackend) -> Iterator[Judge]:
    with Judge("tiny-random", backend=backend, max_string_length=6, max_new_tokens=900) as j:
        yield j


def _images(n: int = 2) -> list[Image.Image]:
    colours = [(200, 30, 30), (30, 30, 200), (30, 200, 30), (200, 200, 30)]
    return [Image.new("RGB", (32, 32), colours[i]) for i in range(n)]


def _grammar_breaks(judgment: flexjudge.Judgment) -> list[flexjudge.Finding]:
    """Findings the default engine's grammar rules out (llguidance: winners follow scores too)."""
    return [f for f in flexjudge.check(judgment) if f.code in enforced_findings("llguidance")]


def test_pair_judgment_is_valid_and_reproducible(judge: Judge) -> None:
    first = judge.judge("a red square", _images(), seed=7)
    again = judge.judge("a red square", _images(), seed=7)
    assert _grammar_breaks(first) == []
    assert first.content() == again.content()
    meta = first.meta
    assert (meta.backend, meta.constrained, meta.candidate_order, meta.source_format) == (
        "transformers",
        True,
        [1, 2],
        "flex",
    )
    assert meta.usage is not None and meta.usage.completion_tokens > 0
    assert [d.origin for d in first.dimensions[:3]] == ["predefined"] * 3
    # Enough to make it again: the template by name and content, the constraint, the sampling settings.
    assert (meta.template, meta.engine, meta.enforced, meta.attempts) == (
        "flex_image",
        "llguidance",
        "grammar",
        1,
    )
    assert meta.template_digest and len(meta.template_digest) == 16 and meta.constraint_digest
    assert meta.sampling == flexjudge.Sampling(temperature=0.0, top_p=1.0, seed=7, max_new_tokens=900)
    assert meta.frames_per_video is None  # images
    assert first.findings == flexjudge.check(first, prompt="a red square")


def test_native_format_carries_intent_and_evidence(backend: TransformersBackend) -> None:
    with Judge(
        "tiny-random", backend=backend, output_format="native", max_string_length=5, max_new_tokens=1400
    ) as judge:
        judgment = judge.judge("a red square", _images(), seed=1)
    assert judgment.intent is not None and [e.candidate for e in judgment.evidence] == [1, 2]
    assert judgment.meta.source_format == "native" and _grammar_breaks(judgment) == []


def test_swap_judges_both_orders_and_records_them(judge: Judge) -> None:
    judgment = judge.judge("a red square", _images(), swap=True, seed=3)
    report = judgment.meta.swap
    assert report is not None and judgment.meta.verdict_rule == "swap"
    assert report.first.meta.candidate_order == [1, 2] and report.second.meta.candidate_order == [2, 1]
    assert set(report.dimension_agreement) == {d.name for d in report.first.dimensions}
    assert report.resolution in ("agreed", "dimension_majority", "tie")
    serious = [f for f in flexjudge.check(judgment) if f.code in ENFORCED_FINDINGS]
    assert serious == []


def test_preferences_shape_the_constraint_and_the_verdict(judge: Judge) -> None:
    prefs = flexjudge.Preferences(
        profile="muted palettes",
        custom_dimensions=("Text Legibility",),
        weights={"Text Legibility": 10.0},
        weighted_verdict=True,
    )
    judgment = judge.judge("a poster saying SALE", _images(), preferences=prefs, seed=2)
    assert (
        judgment.dimensions[3].name == "D. Text Legibility" and judgment.dimensions[3].origin == "generated"
    )
    assert judgment.meta.preferences == prefs and judgment.meta.verdict_rule == "weighted"
    legibility = judgment.dimensions[3].winner
    assert legibility is None or judgment.verdict.winner == legibility  # weight 10 outvotes the other three
    assert not [f for f in flexjudge.check(judgment) if f.code == "verdict_contradicts_dimensions"]


def _write_video(path: Path, colour_step: int) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(
                np.full((32, 32, 3), (i * colour_step) % 255, dtype=np.uint8), format="rgb24"
            )
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_video_pair_sends_eight_frames_each(judge: Judge, tmp_path: Path) -> None:
    videos = [_write_video(tmp_path / "a.mp4", 10), _write_video(tmp_path / "b.mp4", 5)]
    judgment = judge.judge("a fading square", videos, seed=4)
    image_pair = judge.judge("a fading square", _images(), seed=4)
    assert judgment.modality == "video"
    assert judgment.dimensions[1].name == "B. Video Quality & Dynamic Realism"
    assert judgment.meta.usage is not None and image_pair.meta.usage is not None
    assert (
        judgment.meta.usage.prompt_tokens > image_pair.meta.usage.prompt_tokens + 8 * 4
    )  # 16 frames, not 2 images


def test_score_and_rank(judge: Judge) -> None:
    point = judge.score("a red square", _images(1)[0], seed=5)
    # The pointwise constraint fixes the anchors in order and 3-5 criteria per dimension.
    assert [d.name for d in point.dimensions[:3]] == list(flexjudge.anchor_dimensions("image"))
    assert all(3 <= len(d.criteria) <= 5 for d in point.dimensions) and len(point.dimensions) <= 5
    assert point.findings == flexjudge.check(point, prompt="a red square")
    assert point.meta.template == "native_point" and point.meta.sampling is not None
    custom = flexjudge.Preferences(custom_dimensions=("Kite Shape",))
    shaped = judge.score("a red kite", _images(1)[0], preferences=custom, seed=5)
    assert [d.name for d in shaped.dimensions[3:4]] == ["Kite Shape"]  # fixed by the constraint
    ranking = judge.rank("a red square", _images(3), seed=6)
    assert sorted(ranking.order) == [1, 2, 3]
    assert [(p.first, p.second) for p in ranking.pairs] == [(1, 2), (1, 3), (2, 3)]
    assert sum(ranking.win_rate) == pytest.approx(1.5)
    for pair in ranking.pairs:
        assert pair.judgment.findings == flexjudge.check(pair.judgment, prompt="a red square")


def test_wrong_candidate_counts_and_media_are_clear_errors(judge: Judge, tmp_path: Path) -> None:
    with pytest.raises(flexjudge.UsageError, match=r"exactly 2 candidate.*got 3.*rank"):
        judge.judge("p", _images(3))
    with pytest.raises(flexjudge.UsageError, match="at least 2"):
        judge.rank("p", _images(1))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(flexjudge.MediaError):
        judge.judge("p", [broken, _images(1)[0]])


def test_missing_weights_say_how_to_point_at_a_model() -> None:
    with pytest.raises(flexjudge.BackendError) as info:
        Judge("CodeGoat24/UnifiedReward-Flex-qwen3vl-8b", backend="transformers")
    assert not info.value.retryable
    assert "base_url" in str(info.value) or "directory" in str(info.value)


@pytest.mark.parametrize("engine", ["llguidance", "outlines_core", "xgrammar"])
def test_judge_end_to_end_under_each_installed_engine(engine: str) -> None:
    from flexjudge.backends.transformers import available_engines

    if engine not in available_engines():
        pytest.skip(f"{engine} is not installed here")
    with Judge(
        "tiny-random", backend="transformers", engine=engine, max_string_length=6, max_new_tokens=900
    ) as judge:
        judgment = judge.judge("a red square", _images(), seed=9)
    assert _grammar_breaks(judgment) == [] and judgment.meta.constrained is True
    assert flexjudge.parse(judgment.meta.raw_text or "", strict=True).content() == judgment.content()


def test_criterion_names_stay_unique_while_decoding(backend: TransformersBackend) -> None:
    """Seeds on which the random model repeats a criterion name when nothing stops it."""
    seeds = (23, 26, 53)
    images = [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (30, 30, 200))]

    def repeats(judge_backend: TransformersBackend) -> list[int]:
        with Judge(
            "tiny-random",
            backend=judge_backend,
            temperature=1.0,
            max_string_length=8,
            max_new_tokens=1500,
        ) as judge:
            judgments = [judge.judge("a red square beside a blue one", images, seed=s) for s in seeds]
        return [
            seed
            for seed, judgment in zip(seeds, judgments, strict=True)
            if any(f.code == "duplicate_name" for f in flexjudge.check(judgment))
        ]

    assert repeats(TransformersBackend("tiny-random", unique_names=False)) == list(seeds)
    assert repeats(backend) == []


def test_chat_template_options_reach_the_model(backend: TransformersBackend) -> None:
    prompt_tokens = {}
    for kwargs in (None, {"add_vision_id": True}):
        with Judge(
            "tiny-random",
            backend=backend,
            max_string_length=6,
            max_new_tokens=900,
            chat_template_kwargs=kwargs,
        ) as judge:
            usage = judge.judge("a red square", _images(), seed=7).meta.usage
        assert usage is not None
        prompt_tokens[kwargs is not None] = usage.prompt_tokens
    assert prompt_tokens[True] > prompt_tokens[False]  # the template wrote "Picture 1: ", "Picture 2: "


@pytest.mark.slow  # README's group_rewards block runs the same path in the default run
def test_group_rewards_on_the_local_model(judge: Judge) -> None:
    """A group of three through the tiny model: three constrained judgments, rewards from their outcomes
    exactly (the random model's verdicts are whatever they are; the arithmetic must follow them)."""
    from flexjudge.rewards import from_outcomes, group_rewards, outcome_of

    result = group_rewards("a red square", _images(3), judge, seed=5)
    assert result.failures == [] and [(p.first, p.second) for p in result.judgments] == [
        (0, 1),
        (0, 2),
        (1, 2),
    ]
    assert result.outcomes == [outcome_of(p.judgment, p.first, p.second) for p in result.judgments]
    assert all(len(categories) == 3 for _, _, _, categories in result.outcomes)  # the anchors were found
    assert result.rewards == from_outcomes(3, result.outcomes)
    assert all(p.judgment.meta.constrained for p in result.judgments)
