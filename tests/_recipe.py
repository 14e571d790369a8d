"""training/README.md's recipe as the tests run it: its marked blocks, the declared tiny-scale changes, the
command lines made from them, and the served rule teacher the distillation step asks.

A block is marked with an HTML comment directly above its fence (the page's "How this page is tested"):

    <!-- recipe: NAME -->                 a step of the chain, run in page order
    <!-- recipe: NAME, alternative -->    another way to do a step: checked, not run
    <!-- recipe: NAME, needs gpu -->      hardware the tests lack: checked, not run
    <!-- recipe: NAME, needs vllm -->     a vLLM server: checked, not run

The test changes a command only through `PLACEHOLDERS` (text standing for what the user has, replaced by
what the test built) and `TINY` (flags appended to make a command tiny), and checks both are complete and
used (`declaration_problems`), so a step added to the page runs, or fails, without touching the test.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests._docblocks import ROOT, console_commands

PAGE = ROOT / "training" / "README.md"
_FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)
_MARK = re.compile(r"<!--\s*recipe:\s*([\w-]+)\s*(?:,\s*([\w ]+?))?\s*-->\s*\Z")
KINDS = ("run", "alternative", "needs gpu", "needs vllm")

# The steps issue 11 asks the page to walk, in this order (others may come between and after them).
REQUIRED = ("data", "distill", "validate", "sft-data", "sft", "dpo-pairs", "dpo", "export", "eval")

PLACEHOLDERS = {
    "$BASE": "a tiny random-weight Qwen2.5-VL built in the test (flexjudge.backends.tiny)",
    "http://localhost:8000/v1": "the rule teacher served on 127.0.0.1, an ephemeral port",
    "black-forest-labs/FLUX.1-dev": "a tiny random-weight FluxPipeline built in the test (tests/tiny_flow)",
    "http://127.0.0.1:8000": "a reward server (/v1/rewards), a rule judge, on 127.0.0.1, an ephemeral port",
}
"""Text of the page standing for what the user has -> what the test puts in its place."""

_TRAIN_TINY = (
    "--set", "use_cpu=true",
    "--set", "max_steps=2",
    "--set", "gradient_accumulation_steps=1",
    "--set", "save_steps=2",
    "--set", "logging_steps=1",
)  # fmt: skip
TINY: dict[str, tuple[str, ...]] = {
    "python training/sft.py": _TRAIN_TINY,
    "python training/dpo.py": _TRAIN_TINY,
    # One group of 2 judgments a step, each at most 64 tokens (a random-weight model's do not read: the
    # reward is `unreadable` for all, which the chain accepts; tests/test_grpo_judge.py shows it learn).
    "python training/grpo_judge.py": (
        *_TRAIN_TINY,
        "--set",
        "per_device_train_batch_size=2",
        "--set",
        "num_generations=2",
        "--set",
        "max_completion_length=64",
    ),
    # A random-weight model closes no string on its own under sampling: bound them, and the budget.
    "flexjudge dpo-pairs": ("--max-string-length", "6", "--max-new-tokens", "700"),
    "flexjudge judge": ("--max-string-length", "8", "--max-new-tokens", "700"),
    "flexjudge eval": ("--max-new-tokens", "700", "--no-consistency", "--no-progress"),
    "flexjudge distill": ("--no-progress",),
}
"""A command's first words -> the flags appended to it in the chained run."""

# The generator's GRPO at tiny scale: one group of 3 a step (3 judged pairs), 2 sampling steps of a 32x32
# image, a rank-4 LoRA, on the CPU in fp32; a checkpoint at each of the 2 steps.
TINY["python training/grpo_diffusion.py"] = tuple(
    word
    for setting in (
        "use_cpu=true", "max_steps=2", "save_steps=1", "group_size=3", "prompts_per_step=1",
        "num_inference_steps=2", "height=32", "width=32", "max_sequence_length=16",
        "gradient_accumulation_steps=3", "mixed_precision=fp32", "model_dtype=float32",
        "gradient_checkpointing=false", "lora.r=4", "lora.alpha=8",
    )
    for word in ("--set", setting)
)  # fmt: skip

CHAINS = {"generator": ("prompts", "grpo-flux")}
"""Run steps that form a chain of their own, in their own working directory, because they read nothing the
judge's recipe writes (the generator's GRPO: a prompt file, a pipeline, a reward server). Every other run
step belongs to the judge's chain, `JUDGE_CHAIN`."""
JUDGE_CHAIN = "judge"


@dataclass(frozen=True)
class Step:
    """One marked block of the page."""

    name: str
    kind: str
    """One of KINDS."""
    lang: str
    code: str

    @property
    def lines(self) -> list[str]:
        """The `$ command` lines of a console block."""
        return [line for line, _ in console_commands(self.code)]


def read_steps(page: Path = PAGE) -> list[Step]:
    """Every fenced block of the page, in order, each with its mark; an unmarked block is an error, so a
    command cannot sit on the page untested."""
    text = page.read_text(encoding="utf-8")
    fences = list(_FENCE.finditer(text))
    assert text.count("```") == 2 * len(fences), f"{page.name}: a fence without a language"
    steps = []
    for i, fence in enumerate(fences):
        before = text[fences[i - 1].end() if i else 0 : fence.start()]
        mark = _MARK.search(before)
        assert mark is not None, f"{page.name}: block {i} ({fence[2][:60]!r}) has no recipe mark"
        kind = mark[2] or "run"
        assert kind in KINDS, f"{page.name}: block {i} has an unknown kind {kind!r}"
        steps.append(Step(mark[1], kind, fence[1], fence[2]))
    return steps


def chain_steps(steps: list[Step], chain: str) -> list[Step]:
    """The run steps of one chain (see CHAINS), in page order."""
    runs = [step for step in steps if step.kind == "run"]
    if chain == JUDGE_CHAIN:
        others = {name for names in CHAINS.values() for name in names}
        return [step for step in runs if step.name not in others]
    return [step for step in runs if step.name in CHAINS[chain]]


def shell_words(line: str) -> list[str]:
    """A page line's words without what the shell does around the command: leading environment
    assignments (`CUDA_VISIBLE_DEVICES=0,1`) and a trailing `&` (started in the background)."""
    words = shlex.split(line)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]
    return words[:-1] if words[-1:] == ["&"] else words


def command_key(words: list[str]) -> str:
    """The first words that name what a line runs: `flexjudge eval`, `python training/sft.py`."""
    return " ".join(words[:2])


def declaration_problems(steps: list[Step]) -> list[str]:
    """What is wrong with PLACEHOLDERS and TINY against the page's runnable steps: a `$NAME` nobody
    fills, a placeholder or a TINY entry that no run line uses (stale), a run line's unknown program."""
    problems = []
    lines = [line for step in steps if step.kind == "run" for line in step.lines]
    for line in lines:
        for name in re.findall(r"\$\w+", line):
            if name not in PLACEHOLDERS:
                problems.append(f"{line!r}: {name} is not in PLACEHOLDERS")
        program = shlex.split(line)[0]
        if program not in ("flexjudge", "python"):
            problems.append(f"{line!r}: a run step runs flexjudge or python, not {program!r}")
    for placeholder in PLACEHOLDERS:
        if not any(placeholder in line for line in lines):
            problems.append(f"PLACEHOLDERS[{placeholder!r}] appears in no run step")
    keys = {command_key(shlex.split(line)) for line in lines}
    problems += [f"TINY[{key!r}] matches no run step" for key in TINY if key not in keys]
    names = {step.name for step in steps if step.kind == "run"}
    problems += [
        f"CHAINS[{chain!r}] names {name!r}, no run step"
        for chain, chained in CHAINS.items()
        for name in chained
        if name not in names
    ]
    return problems


def tiny_command(line: str, values: dict[str, str]) -> list[str]:
    """A page line as the chained test runs it: placeholders filled from `values` (PLACEHOLDERS entries:
    every one the line holds), its TINY flags appended, `flexjudge` and `python` run by this interpreter."""
    assert set(values) <= set(PLACEHOLDERS), set(values) - set(PLACEHOLDERS)
    unfilled = [p for p in PLACEHOLDERS if p in line and p not in values]
    assert not unfilled, f"{line!r}: nothing given for {unfilled}"
    for placeholder, value in values.items():
        line = line.replace(placeholder, shlex.quote(value))
    words = shlex.split(line)
    words += TINY.get(command_key(words), ())
    if words[0] == "flexjudge":
        return [sys.executable, "-m", "flexjudge.cli", *words[1:]]
    assert words[0] == "python", words
    return [sys.executable, *words[1:]]


# ----------------------------------------------------------------------------- the data and the teacher

PROMPTS = ("a red kite over the sea", "a lighthouse at night", "two cats on a sofa", "a bowl of ramen")


def write_pairs(folder: Path, name: str, qualities: list[tuple[int, int]]) -> Path:
    """`folder/name`: one labelled pair per (quality 1, quality 2), in the page's row format; the better
    image (tests/simulated.py: quality in the red channel) is the label."""
    from simulated import candidate

    stem = Path(name).stem
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (one, two) in enumerate(qualities):
        paths = [f"images/{stem}-{k}-{side}.png" for side in "ab"]
        for path, q in zip(paths, (one, two), strict=True):
            candidate(q).save(folder / path)
        label = 1 if one > two else 2
        rows.append(
            {"id": f"{stem}-{k}", "prompt": PROMPTS[k % len(PROMPTS)], "candidates": paths, "label": label}
        )
    path = folder / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


class RecipeTeacher:
    """The teacher of the chain, a `Backend` behind a real OpenAI-compatible server: it prefers the image
    of higher quality (tests/simulated.py) in every category, echoes the pair's prompt (one of PROMPTS,
    found in the message), and writes a valid flex judgment, so every trace validates and agrees."""

    name = "recipe-teacher"
    model = "teacher"

    async def generate(self, requests: list[Any]) -> list[Any]:
        return [self._answer(request) for request in requests]

    def _answer(self, request: Any) -> Any:
        from simulated import judgment_text, quality

        from flexjudge.backends.base import Generation, ImagePart, TextPart

        parts = [part for message in request.messages for part in message.parts]
        images = [part.image for part in parts if isinstance(part, ImagePart)]
        if not images:  # the openai backend's structured-output probe
            return Generation('{"ok": true}', "stop", True)
        shown = "".join(part.text for part in parts if isinstance(part, TextPart))
        doc = json.loads(judgment_text(1 if quality(images[0]) > quality(images[1]) else 2))
        doc["prompt"] = next(p for p in PROMPTS if p in shown)
        return Generation(json.dumps(doc), "stop", True)

    async def aclose(self) -> None:
        return None


# ------------------------------------------------------------------------ checking a line without running it

CHECK_VALUES = {"$BASE": "base-model"}
"""What the placeholders become where a line is checked, not run (nothing is loaded or asked)."""


def check_line(line: str, *, dry_run: bool = False) -> None:
    """Hold a line to what can be checked on a CPU without running it; raises when it is wrong.

    `flexjudge ...`: parsed by the real command. `python training/X.py ...`: the script's own parser and
    its config resolved (file, flags, `--set`), as the script resolves them; with `dry_run`, the script's
    own `--dry-run` too (the config turned into TRL's arguments: TRL imported, no model loaded).
    `accelerate launch [--config_file F] [flags] training/X.py ...`: parsed by accelerate's own launch
    parser, F loaded with its reader, and together they ask for several processes; then the script's line
    as above. `vllm serve MODEL ...`: its shape here; its flags by `check_vllm`, where vLLM is installed.
    Leading environment assignments and a trailing `&` are the shell's (`shell_words`).
    """
    from tests._docblocks import parse_cli

    for placeholder, value in CHECK_VALUES.items():
        line = line.replace(placeholder, value)
    words = shell_words(line)
    if words[0] == "flexjudge":
        parse_cli(words[1:])
    elif words[0] == "python":
        _check_script(words[1], words[2:], dry_run)
    elif words[:2] == ["accelerate", "launch"]:
        from accelerate.commands.config.config_args import load_config_from_file
        from accelerate.commands.launch import launch_command_parser

        launch = launch_command_parser().parse_args(words[2:])  # a wrong launch flag exits 2
        processes = launch.num_processes
        if launch.config_file is not None:
            config = load_config_from_file(str(ROOT / launch.config_file))
            processes = processes or config.num_processes
        assert (processes or 1) >= 2, f"{line!r}: a multi-GPU launch of one process"
        _check_script(launch.training_script, launch.training_script_args, dry_run)
    elif words[0] == "vllm":
        assert words[1] == "serve" and not words[2].startswith("-"), f"{line!r}: vllm serve MODEL [flags]"
    else:
        raise AssertionError(f"{line!r}: no check for {words[0]!r}")


def _check_script(path: str, args: list[str], dry_run: bool) -> None:
    import contextlib
    import importlib
    import io

    from pydantic import BaseModel

    from training._config import TrainSettings, load_settings

    assert path.startswith("training/") and (ROOT / path).is_file(), f"no script {path}"
    module: Any = importlib.import_module(f"training.{Path(path).stem}")
    parser = module.build_parser()
    parsed = parser.parse_args(args)  # every flag exists and every value converts (argparse exits 2)
    # The settings class the script resolves its config with: the settings model it imports that has an
    # `output_dir` (SFT's and DPO's TrainSettings subclass, GRPO's own); a script without one (export) is
    # held to its parser here, and to its --dry-run when slow.
    found = {
        v
        for v in vars(module).values()
        if isinstance(v, type)
        and issubclass(v, BaseModel)
        and "output_dir" in v.model_fields
        and v is not TrainSettings
    }
    assert len(found) <= 1, f"{path}: which settings? {found}"
    if found and "overrides" in vars(parsed):
        # The flags as the scripts merge them (the config's keys of the same names).
        flags = {k: vars(parsed).get(k) for k in ("model", "data", "prompts", "output_dir")}
        load_settings(found.pop(), parsed.config, parsed.overrides, flags)  # a ConfigError names every error
    has_dry_run = any("--dry-run" in action.option_strings for action in parser._actions)
    if dry_run and has_dry_run:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            module.main([*args, "--dry-run"] if "--dry-run" not in args else args)
        json.loads(printed.getvalue())  # the resolved settings and TRL arguments


def check_vllm(line: str) -> None:
    """Every flag of a `vllm serve` line is one the installed vLLM lists (the caller skips, saying so,
    where vLLM is not installed)."""
    import subprocess

    shown = subprocess.run(["vllm", "serve", "--help=all"], capture_output=True, text=True, timeout=120)
    for flag in (w.split("=")[0].split(".")[0] for w in shell_words(line) if w.startswith("--")):
        assert flag in shown.stdout, f"vllm serve has no {flag}"
