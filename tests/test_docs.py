"""Docs that run: every python and console block of every docs/*.md page executes and prints what the page
says it prints. A block marked `<!-- docs-test: needs gpu -->` or `needs vllm` cannot run on these machines:
it is compiled and its flexjudge names resolved (python), or its command line parsed by the real command
(`flexjudge ...`) or held to the installed program's `--help` where that program exists (see _docblocks)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Callable

import pytest

from tests._docblocks import (
    NEEDS,
    ROOT,
    Block,
    Ran,
    check_python_names,
    console_commands,
    docs_env,
    parse_cli,
    read_blocks,
    run_command,
    run_python,
    run_python_blocks,
)

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
BLOCKS = [block for page in PAGES for block in read_blocks(page)]
# Every language a page may use, and what happens to it: nothing is silently left unrun.
RUN = {"python", "console"}
SHOWN = {"text"}  # a block's shown output, or a diagram
WANTED = ("schema", "formats", "backends", "personalization", "evaluation", "training", "rewards")


def _param(block: Block) -> object:
    marks = [pytest.mark.slow] if "slow" in block.marks else []
    return pytest.param(block, id=block.id, marks=marks)


RUNNABLE = [_param(b) for b in BLOCKS if b.lang in RUN and b.needs is None]
CHECKED = [_param(b) for b in BLOCKS if b.lang in RUN and b.needs is not None]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return docs_env(tmp_path_factory.mktemp("cache"), quiet_loading=True)


def test_every_page_is_indexed_and_every_block_has_a_known_kind() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    assert {p.stem for p in PAGES} >= {*WANTED, "README"}
    for page in PAGES:
        if page.name != "README.md":
            assert f"({page.name})" in index, f"docs/README.md does not link {page.name}"
    assert "(docs/README.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    known = {"slow", *(f"needs {n}" for n in NEEDS)}
    for block in BLOCKS:
        assert block.lang in RUN | SHOWN, f"{block.page} block {block.index}: unknown kind {block.lang!r}"
        assert block.marks <= known, f"{block.page} block {block.index}: unknown mark {block.marks - known}"
    for page in PAGES:  # a fence without a language would be read as no block at all
        fences = page.read_text(encoding="utf-8").count("```")
        assert fences == 2 * len(read_blocks(page)), f"{page.name}: a fence without a language"
    assert len(RUNNABLE) >= 10 and len(CHECKED) >= 2


def test_links_between_pages_resolve() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to a missing {target}"


@pytest.fixture(scope="module")
def page_runs(env: dict[str, str]) -> Callable[[Block], Ran]:
    """A fast python block's run: all of its page's fast blocks run once, together (`run_python_blocks`)."""
    done: dict[str, dict[int, Ran]] = {}

    def ran(block: Block) -> Ran:
        if block.page not in done:
            fast = [b for b in BLOCKS if b.page == block.page and b.lang == "python" and not b.marks]
            done[block.page] = dict(
                zip([b.index for b in fast], run_python_blocks([b.code for b in fast], env), strict=True)
            )
        return done[block.page][block.index]

    return ran


@pytest.mark.parametrize("block", RUNNABLE)
def test_block_runs(block: Block, env: dict[str, str], page_runs: Callable[[Block], Ran]) -> None:
    if block.lang == "python":
        if block.marks:  # slow ones run alone, in their own interpreter
            alone = run_python(block.code, env)
            assert alone.returncode == 0, alone.stderr
            result = Ran(alone.stdout, alone.stderr, None)
        else:
            result = page_runs(block)
        assert result.error is None, result.error
        assert result.stderr == "", result.stderr  # no warnings either: a reader copies these
        if block.shows is not None:
            assert result.stdout == block.shows, f"{block.page} shows another output"
        return
    commands = console_commands(block.code)
    assert commands, f"{block.page} block {block.index} has no `$ ` line"
    for line, shown in commands:
        result = run_command(line, env)
        assert result.returncode == 0, f"{line}: {result.stderr}"
        assert result.stderr == "", result.stderr
        if shown is not None:
            assert result.stdout == shown, f"{line}: the page shows another output"


@pytest.mark.parametrize("block", CHECKED)
def test_block_that_needs_hardware_is_checked(block: Block) -> None:
    if block.lang == "python":
        assert check_python_names(block.code, "openai" if block.needs == "vllm" else "transformers") == []
        return
    lines = [shlex.split(line) for line, _ in console_commands(block.code)]
    assert lines and all(args[0] in ("flexjudge", "vllm") for args in lines), "only flexjudge and vllm lines"
    for args in lines:
        if args[0] == "flexjudge":
            parse_cli(args[1:])  # every flag exists and every value converts, as the real command reads it
    for args in lines:
        if args[0] == "vllm":
            _check_vllm(args)


def _check_vllm(args: list[str]) -> None:
    assert args[1] == "serve" and not args[2].startswith("-"), "vllm serve MODEL [flags]"
    if shutil.which("vllm") is None:
        pytest.skip("vLLM is not installed here (a CUDA wheel): its flags cannot be checked")
    shown = subprocess.run(["vllm", "serve", "--help=all"], capture_output=True, text=True, timeout=120)
    for flag in (a.split("=")[0].split(".")[0] for a in args if a.startswith("--")):
        assert flag in shown.stdout, f"vllm serve has no {flag}"


def test_hardware_checks_can_fail() -> None:
    # The checks above must refuse a wrong block, or marking a block would hide any mistake in it.
    with pytest.raises(Exception) as refused:
        parse_cli(["judge", "--modl", "x", "--prompt", "p", "a.png", "b.png"])
    assert type(refused.value).__name__ == "NoSuchOption"
    assert check_python_names("import flexjudge\nflexjudge.no_such_verb()") == ["flexjudge.no_such_verb"]
    assert check_python_names("from flexjudge.rewards import nothing_here") == [
        "flexjudge.rewards.nothing_here"
    ]
    assert check_python_names("import flexjudge\nflexjudge.Judge('m', devic='cuda')") == [
        "flexjudge.Judge(devic=)"
    ]
    options = "from flexjudge import Judge\nJudge('m', backend_options={'grammar': True})"
    assert check_python_names(options, "openai") == []
    assert check_python_names(options, "transformers") == ["backend_options['grammar']"]
