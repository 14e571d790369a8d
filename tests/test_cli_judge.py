"""`flexjudge judge | score | rank` through the real command line: the tiny model end to end, and every
mistake a newcomer makes refused in the flags' own words before any model loads.

Runs that load a model go through a subprocess (what a user's shell sees, stderr included); checks that
stop before any model use typer's in-process runner, which runs the same app in a fraction of the time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

import flexjudge
from flexjudge.cli import app

ROOT = Path(__file__).parent.parent
KITES = [str(ROOT / "examples" / "images" / f"kite_{i}.png") for i in (1, 2)]
TINY = ["--model", "tiny-random", "--max-string-length", "8"]
# A model that cannot load: a check that passes with it happened before any model loads (a command that
# went on to load it would fail with exit 1 and a message about the model).
NO_MODEL = ["--model", "/nonexistent/model/dir"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the module (the tiny model is built once), never the user's own."""
    return tmp_path_factory.mktemp("cache")


def _cli(*args: str, cache: Path, columns: int = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLEXJUDGE_BASE_URL"}
    env.update({"FLEXJUDGE_CACHE_DIR": str(cache), "COLUMNS": str(columns)})
    return subprocess.run(
        [sys.executable, "-m", "flexjudge.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=cache,
    )


def _run(*args: str, columns: int = 120) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns), "FLEXJUDGE_BASE_URL": None})


# ------------------------------------------------------------------------------------- the tiny model


def test_judge_prints_a_valid_constrained_judgment(cache: Path) -> None:
    result = _cli("judge", *TINY, "--seed", "3", "--json", "--prompt", "a red kite", *KITES, cache=cache)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # the happy path is quiet: no warnings, no progress bars
    judgment = flexjudge.Judgment.model_validate(json.loads(result.stdout))
    assert judgment.verdict.winner in (1, 2) and judgment.meta.constrained
    assert judgment.meta.candidate_order == [1, 2]


def test_score_prints_one_candidate_on_the_scale_asked(cache: Path) -> None:
    args = ("score", *TINY, "--scale", "1..5", "--json", "--prompt", "a red kite", KITES[0])
    result = _cli(*args, cache=cache)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    judgment = flexjudge.PointwiseJudgment.model_validate(json.loads(result.stdout))
    assert (judgment.scale.low, judgment.scale.high) == (1, 5)
    scores = [judgment.verdict.score] + [c.score for d in judgment.dimensions for c in d.criteria]
    assert all(1 <= s <= 5 for s in scores), scores


def test_rank_judges_every_pair(cache: Path) -> None:
    # Two candidates, one pair: the cheap run of the command; three are in the slow test below.
    result = _cli("rank", *TINY, "--json", "--prompt", "a red kite", *KITES, cache=cache)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    ranking = flexjudge.Ranking.model_validate(json.loads(result.stdout))
    assert sorted(ranking.order) == [1, 2] and [(p.first, p.second) for p in ranking.pairs] == [(1, 2)]


@pytest.mark.slow
def test_rank_of_three_shows_the_users_prompt(tmp_path: Path, cache: Path) -> None:
    third = tmp_path / "kite_3.png"
    shutil.copy(KITES[0], third)
    result = _cli("rank", *TINY, "--prompt", "a red kite", *KITES, str(third), cache=cache)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("a red kite")
    assert sum(" vs " in line for line in lines) == 3  # every pair of three


# ---------------------------------------------------------------------------- the top level and help


def test_version() -> None:
    result = _run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"flexjudge {flexjudge.__version__}"


def _commands() -> dict[str, Any]:
    """The app's click commands by name ("" for the top level); typer vendors its own click."""
    group: Any = typer.main.get_command(app)
    return {"": group, **group.commands}


@pytest.mark.parametrize("name", list(_commands()))
def test_help_is_readable_at_80_columns(name: str, cache: Path) -> None:
    # A real process: in-process runners lay help out differently from what a terminal gets.
    result = _cli(*([name] if name else []), "--help", cache=cache, columns=80)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "…" not in text  # nothing cut short
    for param in _commands()[name].params:
        for flag in param.opts if param.param_type_name == "option" else []:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{flag} cut in:\n{text}"


def test_every_judging_command_has_the_shared_flags() -> None:
    commands = _commands()
    shared = {"--device", "--dtype", "--seed", "--temperature", "--json", "--prompt", "--model"}
    for name in ("judge", "score", "rank"):
        flags = {flag for param in commands[name].params for flag in param.opts}
        assert shared <= flags, (name, shared - flags)
        assert ("--swap" in flags) == (name != "score")  # one candidate has no order to swap


# ----------------------------------------------------------- mistakes, refused before any model loads


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--frames-per-video", "0"), "--frames-per-video"),
        (("--temperature", "-1"), "--temperature"),
        (("--top-p", "2"), "--top-p"),
        (("--top-p", "0"), "--top-p"),
        (("--temperature", "nan"), "--temperature"),
        (("--max-new-tokens", "0"), "--max-new-tokens"),
        (("--device", "tpu"), "--device"),
        (("--dtype", "fp8"), "--dtype"),
        (("--backend", "vllm"), "--backend"),
        (("--format", "yaml"), "--format"),
        (("--base-url", "localhost:8000"), "--base-url"),
        (("--backend", "openai"), "--base-url"),
        (("--weight", "Aesthetics"), "--weight"),
        (("--weight", "Aesthetics=-1"), "--weight"),
        (tuple(x for name in "abc" for x in ("--custom-dimension", name)), "--custom-dimension"),
        (("--prompt", "   "), "--prompt"),
    ],
)
def test_a_bad_flag_is_named(args: tuple[str, ...], flag: str) -> None:
    result = _run("judge", *NO_MODEL, "--prompt", "a red kite", *args, *KITES)
    assert result.exit_code == 2, result.output
    assert flag in result.stderr, result.stderr
    # Never pydantic's report or a traceback: one line in the user's terms.
    for internal in ("Traceback", "validation error", "errors.pydantic.dev", "input_value"):
        assert internal not in result.output, result.output


def test_a_bad_scale_is_named() -> None:
    result = _run("score", *NO_MODEL, "--prompt", "a red kite", "--scale", "10..1", KITES[0])
    assert result.exit_code == 2 and "--scale" in result.stderr, result.output


@pytest.mark.parametrize(
    ("command", "count", "other"),
    [("judge", 3, "rank"), ("judge", 1, "score"), ("score", 2, "judge"), ("rank", 1, "score")],
)
def test_a_wrong_candidate_count_points_at_the_right_command(command: str, count: int, other: str) -> None:
    files = (KITES * 2)[:count]
    result = _run(command, *NO_MODEL, "--prompt", "a red kite", *files)
    assert result.exit_code == 2, result.output
    assert f"flexjudge {other}" in result.stderr and str(count) in result.stderr


def test_a_missing_file_fails_before_the_model_loads(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_kite.png"
    result = _run("judge", *NO_MODEL, "--prompt", "a red kite", KITES[0], str(missing))
    assert result.exit_code == 2 and str(missing) in result.stderr, result.output
    assert "model" not in result.stderr  # the model was never reached


def test_a_broken_image_fails_before_the_model_loads(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(Path(KITES[0]).read_bytes()[:100])  # a PNG header, then nothing
    result = _run("judge", *NO_MODEL, "--prompt", "a red kite", KITES[0], str(broken))
    assert result.exit_code == 2 and str(broken) in result.stderr, result.output


def test_a_model_that_cannot_load_is_a_failure_naming_the_flag(cache: Path) -> None:
    # Everything on the command line is right: the model is what fails, with exit 1 and --model named.
    result = _cli("judge", *NO_MODEL, "--prompt", "a red kite", *KITES, cache=cache)
    assert result.returncode == 1, result.stderr
    assert "--model /nonexistent/model/dir" in result.stderr and "Traceback" not in result.stderr


def test_an_unreachable_server_is_named(cache: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on once this closes
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    result = _cli("judge", "--base-url", url, "--prompt", "a red kite", *KITES, cache=cache)
    assert result.returncode == 1 and url in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
