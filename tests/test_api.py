"""The public surface: one typed verb per result, options defined once and checked, typed errors that name
the fix, and every judgment carrying its findings. Calls that must fail before anything loads are made
with a model that does not exist: reaching the model would be a different error."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import flexjudge
from flexjudge.backends.base import Generation, Request
from flexjudge.options import JudgeSettings, PairOptions, PointOptions, RankOptions

NO_MODEL = "/nonexistent/model/dir"
EXAMPLE = Path(__file__).parent.parent / "examples" / "outputs" / "flex_image.json"


class CannedBackend:
    """A `Backend` of the caller's own (a supported extension point) that answers every request with one
    fixed text: the judge layer's handling is under test here, not a model."""

    name = "canned"
    model = "canned"

    def __init__(self, text: str) -> None:
        self.text = text
        self.requests: list[Request] = []

    async def generate(self, requests: list[Request]) -> list[Generation]:
        self.requests += requests
        return [Generation(text=self.text, finish_reason="stop", constrained=False) for _ in requests]

    async def aclose(self) -> None:
        pass


def _images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (16, 16), (40 * i, 90, 200 - 40 * i)) for i in range(n)]


def _pair(**options: Any) -> flexjudge.Judgment:
    return flexjudge.judge("a fox", _images(2), **{"model": NO_MODEL, **options})


def test_public_names_are_exported_and_shadow_no_module() -> None:
    for name in ("judge", "ajudge", "score", "ascore", "rank", "arank", "Limits", "Backend", "UsageError"):
        assert name in flexjudge.__all__
    assert callable(flexjudge.judge) and callable(flexjudge.score) and callable(flexjudge.rank)
    import importlib.util

    for name in flexjudge.__all__:
        assert importlib.util.find_spec(f"flexjudge.{name}") is None, f"flexjudge.{name} shadows a module"


def test_judge_settings_typeddict_matches_the_constructor() -> None:
    parameters = inspect.signature(flexjudge.Judge.__init__).parameters
    assert set(JudgeSettings.__annotations__) == set(parameters) - {"self"}


@pytest.mark.parametrize(
    ("method", "options"),
    [("judge", PairOptions), ("score", PointOptions), ("rank", RankOptions), ("batch", PairOptions)],
)
def test_help_shows_every_keyword(method: str, options: Any) -> None:
    shown = inspect.signature(getattr(flexjudge.Judge, method)).parameters
    assert set(options.__annotations__) <= set(shown)
    one_off = inspect.signature(getattr(flexjudge, method if method != "batch" else "judge")).parameters
    assert set(JudgeSettings.__annotations__) <= set(one_off) and "options" not in one_off


def test_unknown_option_is_a_usage_error_naming_the_fix() -> None:
    with pytest.raises(flexjudge.UsageError, match="did you mean 'temperature'"):
        flexjudge.judge("a fox", _images(2), model=NO_MODEL, tempreature=0.5)  # type: ignore[call-arg]
    judge = flexjudge.Judge(backend=CannedBackend(""))
    with pytest.raises(flexjudge.UsageError, match="did you mean 'swap'"):
        judge.judge("a fox", _images(2), swapp=True)  # type: ignore[call-arg]
    with pytest.raises(flexjudge.UsageError, match="scale"):
        judge.judge("a fox", _images(2), scale=flexjudge.PointScale())  # type: ignore[call-arg]
    with pytest.raises(flexjudge.UsageError, match="did you mean 'max_batch_size'"):
        flexjudge.Judge("tiny-random", backend_options={"max_batch_sizes": 2})


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: flexjudge.judge("a fox", _images(3), model=NO_MODEL), "exactly 2 .*rank"),
        (lambda: flexjudge.judge("a fox", _images(1), model=NO_MODEL), "exactly 2 .*score"),
        (lambda: flexjudge.rank("a fox", _images(1), model=NO_MODEL), "at least 2"),
        (lambda: flexjudge.score("   ", _images(1)[0], model=NO_MODEL), "non-empty prompt"),
        (lambda: flexjudge.judge("a fox", "a.png", model=NO_MODEL), "as a list"),
        (
            lambda: flexjudge.judge("a fox", _images(2), model=NO_MODEL, frames_per_video=0),
            "frames_per_video",
        ),
        (lambda: flexjudge.judge("a fox", _images(2), model=NO_MODEL, temperature=-1), "temperature"),
        (lambda: flexjudge.judge("a fox", _images(2), model=NO_MODEL, on_findings="x"), "on_findings"),
        (lambda: flexjudge.judge("a fox", _images(2), model=NO_MODEL, output_format="json"), "output_format"),
        (
            lambda: flexjudge.judge("a fox", _images(2), base_url="http://127.0.0.1:9", device="cuda"),
            "device",
        ),
    ],
)
def test_bad_calls_fail_before_any_model_loads(call: Any, match: str) -> None:
    with pytest.raises(flexjudge.UsageError, match=match):
        call()


def test_media_is_checked_before_the_model_loads(tmp_path: Path) -> None:
    with pytest.raises(flexjudge.MediaError):
        flexjudge.judge("a fox", [tmp_path / "missing.png", _images(1)[0]], model=NO_MODEL)


def test_every_judgment_carries_its_findings_and_raise_refuses_errors() -> None:
    text = json.loads(EXAMPLE.read_text())
    first = text["categories"][0]
    first["cat_winner"] = "Image 2" if first["cat_winner"] == "Image 1" else "Image 1"  # against its scores
    backend = CannedBackend(json.dumps(text))
    with flexjudge.Judge(backend=backend) as judge:
        judgment = judge.judge(text["prompt"], _images(2))
        codes = {f.code for f in judgment.findings}
        assert "dimension_winner_contradicts_scores" in codes
        assert judgment.findings == flexjudge.check(judgment, prompt=text["prompt"])
        assert "findings" not in judgment.content()  # not wire content
        assert "findings" not in flexjudge.render(judgment, "native")
        with pytest.raises(flexjudge.ValidationFailed) as info:
            judge.judge(text["prompt"], _images(2), on_findings="raise")
        assert {f.code for f in info.value.findings} == {
            f.code for f in judgment.findings if f.severity == "error"
        }
        ranking = judge.rank(text["prompt"], _images(3))
        assert all(p.judgment.findings for p in ranking.pairs)


def test_a_users_template_is_recorded_by_path_and_content(tmp_path: Path) -> None:
    from flexjudge.prompts import load_template

    template = tmp_path / "mine.md"
    template.write_text(load_template("flex_image") + "\nBe brief.\n")
    example = EXAMPLE.read_text()
    with flexjudge.Judge(backend=CannedBackend(example), template=template) as judge:
        mine = judge.judge("a fox", _images(2))
    with flexjudge.Judge(backend=CannedBackend(example)) as judge:
        bundled = judge.judge("a fox", _images(2))
    assert mine.meta.template == str(template) and bundled.meta.template == "flex_image"
    assert mine.meta.template_digest != bundled.meta.template_digest
    with pytest.raises(flexjudge.UsageError, match="template"):
        flexjudge.Judge(backend=CannedBackend(example), template=tmp_path / "absent.md")


def test_chat_template_options_reach_the_request() -> None:
    backend = CannedBackend(EXAMPLE.read_text())
    with flexjudge.Judge(backend=backend) as judge:
        judge.judge("a fox", _images(2))
    with flexjudge.Judge(backend=backend, chat_template_kwargs={"custom": 1}) as judge:
        judge.judge("a fox", _images(2))
    assert [r.chat_template_kwargs for r in backend.requests] == [{"enable_thinking": False}, {"custom": 1}]


def test_limits_errors_are_typed() -> None:
    with pytest.raises(flexjudge.UsageError, match="max_pixels"):
        flexjudge.Limits(max_pixels=0)
