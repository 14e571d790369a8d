"""The code blocks of a markdown page, as the docs tests run them (README.md and docs/*.md alike).

A page marks what a block needs with an HTML comment directly above its fence (invisible when rendered):

    <!-- docs-test: needs gpu -->     hardware these test machines lack: checked, not run (see test_docs)
    <!-- docs-test: needs vllm -->    a vLLM server: checked, not run
    <!-- docs-test: slow -->          runs only under `pytest -m slow`

A python block followed by a ```text block, with at most one word between ("prints"), prints exactly that.
A ```console block holds `$ command` lines; lines under a command (up to the next `$`) are its exact stdout.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import itertools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parent.parent
_FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)
_MARK = re.compile(r"<!--\s*docs-test:\s*([\w ]+?)\s*-->\s*\Z")
NEEDS = ("gpu", "vllm")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    page: str
    """The page's path relative to the repository root."""
    index: int
    """Its position among the page's blocks."""
    lang: str
    code: str
    marks: frozenset[str]
    """What the comment above it says: `slow`, `needs gpu`, `needs vllm`."""
    shows: str | None
    """For a python block: the exact stdout the page says it prints, when it says so."""

    @property
    def needs(self) -> str | None:
        """The hardware or server it needs that the tests cannot provide, if any."""
        found = [m.removeprefix("needs ") for m in self.marks if m.startswith("needs ")]
        return found[0] if found else None

    @property
    def id(self) -> str:
        return f"{Path(self.page).stem}-{self.index}-{self.lang}"


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of a page, in order, with its marks and shown output."""
    text = path.read_text(encoding="utf-8")
    fences = list(_FENCE.finditer(text))
    shown = {
        block.start(): after[2]
        for block, after in itertools.pairwise(fences)
        if block[1] == "python" and after[1] == "text" and len(text[block.end() : after.start()].split()) <= 1
    }
    blocks = []
    for i, fence in enumerate(fences):
        before = text[fences[i - 1].end() if i else 0 : fence.start()]
        mark = _MARK.search(before)
        marks = frozenset(m.strip() for m in mark[1].split(",")) if mark else frozenset()
        page = str(path.relative_to(ROOT))
        blocks.append(Block(page, i, fence[1], fence[2], marks, shown.get(fence.start())))
    return blocks


def console_commands(code: str) -> list[tuple[str, str | None]]:
    """The `$ command` lines of a console block, each with the stdout shown under it (None: none shown)."""
    commands: list[tuple[str, list[str]]] = []
    for line in code.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
    return [(cmd, "\n".join(out) + "\n" if out else None) for cmd, out in commands]


def docs_env(cache: Path, *, quiet_loading: bool = False) -> dict[str, str]:
    """One model cache for all blocks (the tiny model is built once), never the user's own; the repository
    on the path so a block runs against this checkout. `quiet_loading` turns off transformers' weight-loading
    progress bar (its own, on stderr), so that a block's stderr holds only what flexjudge writes."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "COLUMNS": "120", "FLEXJUDGE_CACHE_DIR": str(cache), "PYTHONPATH": path}
    if quiet_loading:
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    return env


def run_python(code: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


# Runs a page's blocks one after another in one interpreter, each in a fresh namespace with its own stdout and
# stderr: the imports are paid once per page instead of once per block. Every warning is shown, never
# deduplicated across blocks, and a block's leaked objects are collected before its output is taken.
_RUNNER = r"""
import contextlib, gc, io, json, sys, traceback, warnings
results = []
for code in json.load(sys.stdin):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("always")
        try:
            exec(compile(code, "<block>", "exec"), {"__name__": "__main__"})
            error = None
        except BaseException:
            error = traceback.format_exc()
        gc.collect()
    results.append({"stdout": out.getvalue(), "stderr": err.getvalue(), "error": error})
json.dump(results, sys.__stdout__)
"""


@dataclass(frozen=True)
class Ran:
    stdout: str
    stderr: str
    error: str | None
    """The traceback when the block raised."""


def run_python_blocks(codes: list[str], env: dict[str, str], cwd: Path = ROOT) -> list[Ran]:
    """Each block run in order in one fresh interpreter (see `_RUNNER`)."""
    import json

    done = subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=json.dumps(codes),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return [Ran(**r) for r in json.loads(done.stdout)]


def run_cli(args: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flexjudge.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def run_command(line: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """A console line as a user types it: `flexjudge ...` or `python ...`, with this interpreter."""
    args = shlex.split(line)
    if args[0] == "flexjudge":
        return run_cli(args[1:], env, cwd)
    assert args[0] == "python", f"a console line runs flexjudge or python, not {args[0]!r}"
    return subprocess.run(
        [sys.executable, *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def parse_cli(args: list[str]) -> None:
    """Parse a `flexjudge` command line as the real command does, without running it (raises on a bad one)."""
    import typer.main

    from flexjudge.cli import app

    group = typer.main.get_command(app)
    with group.make_context("flexjudge", list(args)) as ctx:
        # click keeps the subcommand and its arguments apart from the group's own (`_protected_args`).
        name, command, rest = group.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert command is not None, f"no command {name!r}"
        command.make_context(name or "", rest, parent=ctx).close()


def check_python_names(code: str, backend: str = "transformers") -> list[str]:
    """Compile a block that cannot run here and resolve every flexjudge name it imports or reads; every
    keyword of a call to a flexjudge callable must be one of its parameters, and every literal
    `backend_options` key one of `backend`'s options ("transformers" or "openai")."""
    tree = ast.parse(code)
    compile(tree, "<block>", "exec")
    missing = []
    names: dict[str, object] = {}  # local name -> the flexjudge object it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flexjudge"):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                if hasattr(module, alias.name):
                    names[alias.asname or alias.name] = getattr(module, alias.name)
                else:
                    missing.append(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("flexjudge"):
                    names[alias.asname or alias.name] = importlib.import_module(alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in names:
            if not hasattr(names[node.value.id], node.attr):
                missing.append(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.Call):
            missing += _unknown_keywords(node, names, backend)
    return missing


def _resolve(node: ast.expr, names: dict[str, object]) -> object | None:
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, names)
        return getattr(owner, node.attr, None) if owner is not None else None
    return None


def _parameters(function: object) -> set[str] | None:
    """The keyword names `function` takes; None when it takes any (`**options`)."""
    params = inspect.signature(function).parameters.values()  # type: ignore[arg-type]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _unknown_keywords(call: ast.Call, names: dict[str, object], backend: str) -> list[str]:
    function = _resolve(call.func, names)
    if function is None or not callable(function):
        return []
    taken = _parameters(function)
    wrong = [
        f"{ast.unparse(call.func)}({k.arg}=)" for k in call.keywords if k.arg and taken and k.arg not in taken
    ]
    for keyword in call.keywords:
        if keyword.arg == "backend_options" and isinstance(keyword.value, ast.Dict):
            if backend == "openai":
                from flexjudge.backends.openai import OpenAIBackend as chosen
            else:
                from flexjudge.backends.transformers import TransformersBackend as chosen  # type: ignore[assignment]
            options = _parameters(chosen.__init__) or set()
            wrong += [
                f"backend_options[{key.value!r}]"
                for key in keyword.value.keys
                if isinstance(key, ast.Constant) and key.value not in options
            ]
    return wrong
