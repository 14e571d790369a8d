"""training/README.md walks the recipe (data -> distill -> validate -> sft-data -> SFT -> dpo-pairs -> DPO
-> export -> eval); this runs it. Fast tests hold every block of the page to its mark and every line to
what a CPU can check (tests/_recipe.py); the slow test runs the page's steps, chained, as written, at tiny
scale: a tiny Qwen2.5-VL for `$BASE`, a rule teacher behind a real OpenAI-compatible server on
127.0.0.1 for the teacher, and only the flags `TINY` declares appended."""

from __future__ import annotations

import json
import os
import resource
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from served import running_server

from tests._docblocks import ROOT
from tests._recipe import (
    CHAINS,
    JUDGE_CHAIN,
    REQUIRED,
    RecipeTeacher,
    Step,
    chain_steps,
    check_line,
    check_vllm,
    declaration_problems,
    read_steps,
    shell_words,
    tiny_command,
    write_pairs,
)

STEPS = read_steps()
# The user's inputs, as the test writes them in the data step's format: (quality 1, quality 2) per pair.
INPUTS = {
    "prefs.jsonl": [(220, 40), (30, 200), (180, 60), (50, 240), (210, 20), (70, 230)],
    "held-out.jsonl": [(230, 30), (40, 190), (200, 50)],
    "test.jsonl": [(240, 20), (25, 215)],
}


SHOWN_INPUTS = {"data": "json", "prompts": "text"}
"""Run steps that show the user's input files rather than commands (the test writes those files)."""


def _run_steps() -> list[Step]:
    return [step for step in STEPS if step.kind == "run"]


def test_the_page_walks_the_recipe_in_order_and_declares_every_change() -> None:
    names = [step.name for step in _run_steps()]
    assert len(names) == len(set(names)), names
    assert [name for name in names if name in REQUIRED] == list(REQUIRED), names
    assert all(
        step.lang == "console" and step.lines for step in _run_steps() if step.name not in SHOWN_INPUTS
    )
    assert {step.name: step.lang for step in _run_steps() if step.name in SHOWN_INPUTS} == SHOWN_INPUTS
    assert declaration_problems(STEPS) == []
    # Every run step is in exactly one chain, and each chain has a command to run.
    chains = [JUDGE_CHAIN, *CHAINS]
    assert sorted(s.name for chain in chains for s in chain_steps(STEPS, chain)) == sorted(names)
    assert all(any(s.lines for s in chain_steps(STEPS, chain)) for chain in chains)
    checked = [step for step in STEPS if step.kind != "run"]
    assert {step.kind for step in checked} == {"alternative", "needs gpu", "needs vllm"}
    assert all(step.lang == "console" and step.lines for step in checked)


def test_the_data_step_shows_rows_that_load_as_the_commands_read_them(tmp_path: Path) -> None:
    from flexjudge.evaluation.data import load_examples

    (data,) = [step for step in STEPS if step.name == "data"]
    assert data.lang == "json"
    shown = [json.loads(line) for line in data.code.splitlines()]
    for row in shown:
        for candidate in row["candidates"]:  # the loader needs the files, not their content
            (tmp_path / candidate).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / candidate).touch()
    (tmp_path / "prefs.jsonl").write_text(data.code, encoding="utf-8")
    loaded = list(load_examples(tmp_path / "prefs.jsonl"))
    assert [(e.id, e.label, e.modality) for e in loaded] == [
        (row["id"], row["label"], "video" if row["candidates"][0].endswith(".mp4") else "image")
        for row in shown
    ]
    # The rows the chained test writes have the shown rows' keys: the format it runs is the one shown.
    written = write_pairs(tmp_path / "written", "prefs.jsonl", INPUTS["prefs.jsonl"])
    assert {key for line in written.read_text().splitlines() for key in json.loads(line)} == set(shown[0])


LINES = [
    pytest.param(line, id=f"{step.name}-{i}")
    for step in STEPS
    if step.lang == "console"
    for i, line in enumerate(step.lines)
]


@pytest.mark.parametrize("line", LINES)
def test_every_line_holds_to_what_a_cpu_checks(line: str) -> None:
    # The run steps too: a wrong flag fails here in seconds, before the slow chain would find it.
    check_line(line)


SCRIPT_LINES = [p for p in LINES if "training/" in p.values[0]]  # type: ignore[attr-defined]


@pytest.mark.slow  # TRL's import, once
@pytest.mark.parametrize("line", SCRIPT_LINES)
def test_every_training_line_resolves_into_trls_arguments(line: str) -> None:
    check_line(line, dry_run=True)


def _wrong_lines() -> list[object]:
    from training._config import ConfigError

    return [
        pytest.param(
            "flexjudge distill --base-url http://localhost:8000/v1 --model t --data p --out o --both-order",
            Exception, id="flexjudge-flag",
        ),
        pytest.param(
            "python training/sft.py --model $BASE --data d --output-dir o --set lerning_rate=1",
            ConfigError, id="config-key",
        ),
        pytest.param(
            "python training/export.py runs/sft --out o --dtype float16", SystemExit, id="script-value"
        ),
        pytest.param(
            "accelerate launch --config_file training/accelerate/ddp.yaml training/dpo.py --model m --data d",
            ConfigError, id="launched-script-without-output-dir",
        ),
        pytest.param("vllm serve --port 8000", AssertionError, id="vllm-shape"),
        pytest.param(
            "python training/grpo_diffusion.py --model m --prompts p --output-dir o --set group_sise=4",
            ConfigError, id="grpo-config-key",
        ),
        pytest.param(
            "CUDA_VISIBLE_DEVICES=0,1 accelerate launch --multi_gpu --num_processes 2"
            " training/grpo_diffusion.py --model m --prompts p --output-dir o"
            " --set prompts_per_step=3 --set groups_per_reward_batch=2 &",
            ConfigError, id="launched-grpo-layout",
        ),
        pytest.param(
            "accelerate launch --num_processes 1 training/grpo_diffusion.py"
            " --model m --prompts p --output-dir o",
            AssertionError, id="launch-of-one-process",
        ),
        pytest.param(
            "accelerate launch --multi-gpus training/grpo_diffusion.py --model m --prompts p --output-dir o",
            SystemExit, id="launch-flag",
        ),
    ]  # fmt: skip


@pytest.mark.parametrize(("line", "refusal"), _wrong_lines())
def test_a_wrong_line_fails_its_check(line: str, refusal: type[BaseException]) -> None:
    with pytest.raises(refusal) as caught:
        check_line(line)
    assert not (isinstance(caught.value, SystemExit) and caught.value.code == 0)
    if line.startswith("flexjudge"):
        assert type(caught.value).__name__ == "NoSuchOption"  # click's refusal, not some other error


def test_a_page_with_an_unmarked_block_or_an_undeclared_placeholder_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "README.md"
    page.write_text("```console\n$ flexjudge validate t.jsonl\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="no recipe mark"):
        read_steps(page)
    line = "python training/sft.py --model $MODEL --data d --output-dir o"
    page.write_text(f"<!-- recipe: sft -->\n```console\n$ {line}\n```\n", encoding="utf-8")
    problems = declaration_problems(read_steps(page))
    assert any("$MODEL is not in PLACEHOLDERS" in p for p in problems)
    assert any("TINY['flexjudge eval'] matches no run step" in p for p in problems)


@pytest.mark.parametrize(
    "line", [line for step in STEPS for line in step.lines if shell_words(line)[0] == "vllm"]
)
def test_vllm_lines_hold_to_the_installed_vllm(line: str) -> None:
    if shutil.which("vllm") is None:
        pytest.skip("vLLM is not installed here (a CUDA wheel): its flags are checked where it is")
    check_vllm(line)


# ------------------------------------------------------------------------------------ the chained run


def _files(work: Path) -> set[str]:
    return {
        str(path.relative_to(work))
        for path in work.rglob("*")
        if path.is_file() and path.relative_to(work).parts[0] != "training"
    }


def _reads(words: list[str], work: Path) -> set[str]:
    """The paths a command names that exist in the working directory before it runs (the scripts and
    their configs under training/ aside)."""
    named = {w.rstrip("/") for w in words if not w.startswith(("-", "training/")) and w.strip("./")}
    return {w for w in named if (work / w).exists()}


def _children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _run_chain(
    chain: str, work: Path, values: dict[str, str], env: dict[str, str], written_by: dict[str, str]
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run the chain's steps in page order in `work`, each line as `tiny_command` makes it; `written_by`
    (path -> the step that wrote it) starts with the user's files and gains each step's outputs."""
    ran: dict[str, subprocess.CompletedProcess[str]] = {}
    for step in chain_steps(STEPS, chain):
        for line in step.lines:
            command = tiny_command(line, values)
            reads = _reads(shlex.split(line)[1:], work)  # the page's words: $BASE is the user's
            # Each step reads what the steps before it wrote (the scripts under training/ aside), and
            # nothing else: a step whose input no earlier step wrote breaks the chain here.
            assert reads, f"{line!r} reads nothing an earlier step wrote"
            for path in reads:
                assert any(p == path or p.startswith(path + "/") for p in written_by), (
                    f"{line!r} reads {path}, which no earlier step wrote"
                )
            before, cpu = _files(work), _children_cpu()
            result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"{line!r} exited {result.returncode}:\n{result.stderr[-3000:]}"
            written_by.update({path: step.name for path in _files(work) - before})
            ran[line] = result
            print(f"{step.name}: {_children_cpu() - cpu:.1f} s CPU")  # shown when the test fails
    return ran


def _work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "training").symlink_to(ROOT / "training")  # the page's commands run from the repository root
    return work


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FLEXJUDGE_BASE_URL"}
    env.update(
        PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", FLEXJUDGE_CACHE_DIR=str(cache),
        ACCELERATE_USE_CPU="1", COLUMNS="120",
        # One thread a process: the tiny model gains nothing from more, and on a shared 2-core machine
        # torch's spinning threads cost 2.5 times the CPU (8.4 s against 21 s for one `flexjudge judge`).
        OMP_NUM_THREADS="1",
    )  # fmt: skip
    return env


@pytest.mark.slow
def test_the_recipe_runs_chained_at_tiny_scale(tmp_path: Path) -> None:
    from flexjudge.backends.tiny import build_tiny_model

    work, cache = _work(tmp_path), tmp_path / "cache"
    for name, pairs in INPUTS.items():
        write_pairs(work, name, pairs)
    for name, quality in (("a.png", 60), ("b.png", 210)):
        from simulated import candidate

        candidate(quality).save(work / name)
    base = build_tiny_model(cache / "tiny-base")

    written_by: dict[str, str] = {path: "data" for path in _files(work)}  # the user's files: step 1
    with running_server(RecipeTeacher(), model_name="teacher") as (url, _):
        values = {"$BASE": str(base), "http://localhost:8000/v1": url}
        ran = _run_chain(JUDGE_CHAIN, work, values, _env(cache), written_by)

    # What the chain made: each stage's outputs, and the exported model judged under the constraint.
    steps_that_wrote = set(written_by.values())
    assert steps_that_wrote >= {
        "data",
        "distill",
        "sft-data",
        "sft",
        "dpo-pairs",
        "dpo",
        "export",
        "eval",
        "grpo-judge",
    }
    traces = (work / "runs" / "traces.jsonl").read_text().splitlines()
    assert len(traces) == 2 * len(INPUTS["prefs.jsonl"])  # both orders, none dropped by this teacher
    summary = json.loads((work / "runs" / "dpo" / "train_summary.json").read_text())
    assert summary["global_step"] == 2 and len(summary["losses"]) == 2 and summary["finite"], summary
    results = [json.loads(line) for line in (work / "runs" / "eval.jsonl").read_text().splitlines()]
    assert len(results) == len(INPUTS["test.jsonl"])
    assert any(row["primary"]["status"] == "ok" for row in results), results
    judged = next(result for line, result in ran.items() if line.startswith("flexjudge judge"))
    assert "Image" in judged.stdout, judged.stdout
    grpo = json.loads((work / "runs" / "grpo-judge" / "train_summary.json").read_text())
    assert grpo["global_step"] == 2 and len(grpo["losses"]) == 2 and grpo["finite"], grpo
    assert (work / "runs" / "grpo-judge" / "grpo-data" / "stats.json").is_file()  # the pairs, rendered


@pytest.mark.slow
def test_the_generator_recipe_runs_chained_at_tiny_scale(tmp_path: Path) -> None:
    """Step 10 as written: the page's prompt file, `grpo_diffusion.py` on a tiny random FLUX pipeline
    for the paper's FLUX.1-dev, rewarded through a real reward server (`/v1/rewards`) on 127.0.0.1 whose
    rule judge prefers the redder image."""
    from safetensors.torch import load_file

    from tests.served import running_server as serve
    from tests.tiny_flow import RednessJudge, build_flux

    work, cache = _work(tmp_path), tmp_path / "cache"
    (prompts,) = [step for step in STEPS if step.name == "prompts"]
    (work / "prompts.txt").write_text(prompts.code, encoding="utf-8")
    flux = build_flux(cache / "tiny-flux")
    written_by: dict[str, str] = {path: "prompts" for path in _files(work)}
    judge = RednessJudge()
    with serve(judge, model_name="redness-judge") as (url, _):
        values = {"black-forest-labs/FLUX.1-dev": str(flux), "http://127.0.0.1:8000": url.removesuffix("/v1")}
        _run_chain("generator", work, values, _env(cache), written_by)

    out = work / "runs" / "grpo-flux"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 2 and summary["finite"], summary
    assert all(entry["failed_pairs"] == 0 for entry in summary["log"]), summary["log"]
    assert judge.calls == 2 * 3  # 2 steps, one group of 3 a step: C(3, 2) pairs, judged through the server
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0: it trained
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
