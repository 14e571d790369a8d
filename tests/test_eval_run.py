"""`run_eval` against a real OpenAI-compatible server on 127.0.0.1 (tests/served.py) whose model is a rule
judge of known behaviour (tests/simulated.py: it prefers the image of higher quality, or, with
`first_bias`, whichever is shown first): seeded order, both orders in dataset numbering, each failure
kind with its status, resume after a torn line and after a real SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from served import running_server
from simulated import SimulatedJudge, candidate

from flexjudge.backends._probe import PROBE_TOKENS
from flexjudge.backends.base import Generation, Request
from flexjudge.errors import UsageError
from flexjudge.evaluation.data import Example, load_examples
from flexjudge.evaluation.results import ResultRow
from flexjudge.evaluation.runner import order_of, run_eval, run_eval_sync
from flexjudge.judging import Judge

PROMPT = json.loads((Path(__file__).parent.parent / "examples" / "outputs" / "flex_image.json").read_text())[
    "prompt"
]  # the prompt the rule judge's judgments echo (any other is a `prompt_mismatch` finding)
ANCHORS = {"semantic alignment and accuracy", "image quality and realism", "aesthetics and artistry"}


class RuleJudge(SimulatedJudge):
    """The simulated judge as a served model: it answers the SDK's capability probe, spends its token
    budget as a model does (about 4 characters a token, `finish_reason="length"` when it runs out), and
    waits `latency_s` per batch."""

    def __init__(self, *, latency_s: float = 0.0, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.latency_s = latency_s

    async def generate(self, requests: list[Request]) -> list[Generation]:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return [self._answer(r) for r in requests]

    def _answer(self, request: Request) -> Generation:
        if request.max_new_tokens == PROBE_TOKENS:
            return Generation('{"ok": true}', "stop", True)
        made = self._one(request)
        budget = 4 * request.max_new_tokens
        if len(made.text) > budget:
            return Generation(made.text[:budget], "length", False)
        return made


def write_data(folder: Path, qualities: list[tuple[int, int]]) -> Path:
    """One example per (quality 1, quality 2); the label is the better one (the rule judge's truth)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, (one, two) in enumerate(qualities):
        for q in (one, two):
            if not (folder / f"q{q}.png").exists():
                candidate(q).save(folder / f"q{q}.png")
        label = 1 if one > two else 2
        row = {"id": f"e{k}", "prompt": PROMPT, "candidates": [f"q{one}.png", f"q{two}.png"], "label": label}
        lines.append(json.dumps(row) + "\n")
    path = folder / "data.jsonl"
    path.write_text("".join(lines))
    return path


def read_rows(path: Path) -> list[ResultRow]:
    return [ResultRow.model_validate_json(line) for line in path.read_text().splitlines()]


@pytest.fixture
def served() -> Iterator[tuple[str, RuleJudge, object]]:
    backend = RuleJudge()
    with running_server(backend, model_name="simulated") as (url, injector):
        yield url, backend, injector


def _judge(url: str) -> Judge:
    return Judge("simulated", backend="openai", base_url=url, max_concurrency=16)


PAIRS = [(200, 40), (30, 220), (120, 60), (10, 250), (180, 90), (70, 160), (240, 20), (50, 140)]


def test_order_is_seeded_stable_and_what_the_judge_saw(tmp_path: Path, served: tuple) -> None:
    url, backend, _ = served
    data = write_data(tmp_path / "d", PAIRS)
    orders = {f"e{k}": order_of(f"e{k}", 0) for k in range(len(PAIRS))}
    assert set(orders.values()) == {(1, 2), (2, 1)}  # both orders drawn
    assert [order_of(f"e{k}", 1) for k in range(40)] != [order_of(f"e{k}", 0) for k in range(40)]
    with _judge(url) as judge:
        run_eval_sync(list(load_examples(data)), judge, tmp_path / "c3.jsonl", concurrency=3, progress=False)
        shown, count = set(backend.shown), len(backend.shown)
        run_eval_sync(list(load_examples(data)), judge, tmp_path / "c8.jsonl", concurrency=8, progress=False)
    three, eight = read_rows(tmp_path / "c3.jsonl"), read_rows(tmp_path / "c8.jsonl")
    assert {r.id: r.primary.order for r in three} == orders == {r.id: r.primary.order for r in eight}
    # Every quality is used once, so each shown pair names its example: the judge saw the drawn order
    # first, then the reverse.
    expected = set()
    for row, (q1, q2) in zip(three, PAIRS, strict=True):
        by_number = {1: q1, 2: q2}
        expected |= {
            tuple(by_number[n] for n in row.primary.order),
            tuple(by_number[n] for n in row.primary.order[::-1]),
        }
    assert shown == expected and count == 2 * len(PAIRS)


def test_both_orders_are_stored_in_dataset_numbering(tmp_path: Path, served: tuple) -> None:
    url, _, _ = served
    data = write_data(tmp_path / "d", PAIRS)
    with _judge(url) as judge:
        totals = run_eval_sync(list(load_examples(data)), judge, tmp_path / "r.jsonl", progress=False)
    assert (totals.written, totals.skipped, totals.statuses["ok"]) == (len(PAIRS), 0, 2 * len(PAIRS))
    for row in read_rows(tmp_path / "r.jsonl"):
        assert row.swapped is not None and row.swapped.order == row.primary.order[::-1]
        for run in (row.primary, row.swapped):
            assert run.winner == row.label  # the honest judge picks the better image, in dataset numbering
            assert run.judgment is not None and run.judgment["verdict"]["winner"] == row.label
            assert run.judgment["meta"]["candidate_order"] == list(run.order)
            assert run.dimension_winners == dict.fromkeys(ANCHORS, row.label)
            assert run.findings == [] and run.elapsed_s is not None
            assert run.confidence is not None and run.confidence == run.judgment["meta"]["confidence"]
        assert row.position_consistent and row.correct


def test_a_first_position_biased_judge_shows_as_inconsistent(tmp_path: Path) -> None:
    data = write_data(tmp_path / "d", PAIRS)
    with running_server(RuleJudge(first_bias=255), model_name="simulated") as (url, _), _judge(url) as judge:
        run_eval_sync(list(load_examples(data)), judge, tmp_path / "r.jsonl", progress=False)
    for row in read_rows(tmp_path / "r.jsonl"):
        assert row.swapped is not None
        assert row.primary.first_position_won and row.swapped.first_position_won
        assert row.position_consistent is False
        for run in (row.primary, row.swapped):
            assert run.dimension_winners == dict.fromkeys(ANCHORS, row.label)  # its dimensions stay honest
            # so a verdict for the worse image contradicts its own dimension wins, and check() says so
            assert bool(run.findings) == (run.winner != row.label)


def test_each_failure_kind_lands_with_its_status(tmp_path: Path) -> None:
    pairs = [(200, 40), (30, 220), (120, 60), (10, 250), (180, 90)]
    data = write_data(tmp_path / "d", pairs)
    examples = list(load_examples(data))
    (tmp_path / "d" / "q90.png").unlink()  # e4's second candidate disappears after loading
    with running_server(RuleJudge(broken={frozenset((10, 250))}), model_name="simulated") as (url, injector):
        injector.faults[:] = ["none", "401", "truncate"]  # e0 ok, e1 refused, e2 cut short; e3 is "broken"
        with _judge(url) as judge:
            totals = run_eval_sync(
                examples, judge, tmp_path / "r.jsonl", concurrency=1, consistency=False, progress=False
            )
    rows = {r.id: r for r in read_rows(tmp_path / "r.jsonl")}
    statuses = {k: (r.primary.status, (r.primary.error or "").split(":")[0]) for k, r in rows.items()}
    assert statuses == {
        "e0": ("ok", ""),
        "e1": ("error", "BackendError"),
        "e2": ("truncated", "TruncatedOutput"),
        "e3": ("parse_failure", "ParseError"),
        "e4": ("error", "MediaError"),
    }
    assert all(r.swapped is None for r in rows.values())
    assert (totals.statuses["ok"], totals.statuses["error"], totals.written) == (1, 2, 5)
    # The outage and the short budget are over: --retry-failed judges the failed examples again.
    healthy = RuleJudge(broken={frozenset((10, 250))})
    with running_server(healthy, model_name="simulated") as (url, _), _judge(url) as judge:
        again = run_eval_sync(
            examples, judge, tmp_path / "r.jsonl", consistency=False, progress=False, retry_failed=True
        )
    assert (again.retried, again.written, again.skipped) == (4, 4, 1)
    rows = {r.id: r for r in read_rows(tmp_path / "r.jsonl")}
    assert len(rows) == 5 == len((tmp_path / "r.jsonl").read_text().splitlines())
    assert {k: r.primary.status for k, r in rows.items()} == {
        "e0": "ok",
        "e1": "ok",
        "e2": "ok",
        "e3": "parse_failure",  # still no judgment: the rule judge cannot read that pair
        "e4": "error",  # still missing
    }


def test_a_rerun_repairs_a_torn_line_and_judges_only_what_is_missing(tmp_path: Path, served: tuple) -> None:
    url, backend, _ = served
    data = write_data(tmp_path / "d", PAIRS)
    out = tmp_path / "r.jsonl"
    with _judge(url) as judge:
        run_eval_sync(list(load_examples(data)), judge, out, progress=False)
        whole = out.read_text().splitlines(keepends=True)
        out.write_text("".join(whole[:3]) + whole[3][:40])  # three rows kept, the fourth torn by a "kill"
        calls = backend.calls
        totals = run_eval_sync(list(load_examples(data)), judge, out, progress=False)
        assert totals.repaired is not None and totals.repaired.line == 4
        assert (totals.skipped, totals.written) == (3, len(PAIRS) - 3)
        assert backend.calls - calls == 2 * (len(PAIRS) - 3)
        again = run_eval_sync(list(load_examples(data)), judge, out, progress=False)
    assert (again.skipped, again.written, again.repaired) == (len(PAIRS), 0, None)
    ids = [r.id for r in read_rows(out)]
    assert sorted(ids) == sorted(f"e{k}" for k in range(len(PAIRS))) and len(ids) == len(set(ids))


def test_repeated_ids_and_bad_settings_are_usage_errors(tmp_path: Path, served: tuple) -> None:
    url, _, _ = served
    data = write_data(tmp_path / "d", PAIRS[:2])
    (example,) = list(load_examples(data))[:1]
    with _judge(url) as judge:
        with pytest.raises(UsageError):
            run_eval_sync([example, example], judge, tmp_path / "r.jsonl", concurrency=1, progress=False)
        with pytest.raises(UsageError):
            run_eval_sync([example], judge, tmp_path / "s.jsonl", concurrency=0, progress=False)


_CHILD = """
import sys
sys.path[:0] = [{tests!r}]
from served import running_server
from test_eval_run import RuleJudge
from flexjudge.evaluation.data import load_examples
from flexjudge.evaluation.runner import run_eval_sync
from flexjudge.judging import Judge

with running_server(RuleJudge(latency_s=0.15), model_name="simulated") as (url, _):
    with Judge("simulated", backend="openai", base_url=url, max_concurrency=8) as judge:
        run_eval_sync(list(load_examples({data!r})), judge, {out!r}, concurrency=4, progress=False)
"""


@pytest.mark.slow  # a child interpreter that imports the SDK and starts a server: ~25 s on 2 shared cores
def test_a_killed_run_resumes_with_no_loss_and_no_duplicate(tmp_path: Path, served: tuple) -> None:
    url, _, _ = served
    pairs = [(10 + 7 * k % 230, 250 - 5 * k % 200) for k in range(60)]
    pairs = [(a, b) if a != b else (a, b + 1) for a, b in pairs]
    data = write_data(tmp_path / "d", pairs)
    out = tmp_path / "r.jsonl"
    script = _CHILD.format(tests=str(Path(__file__).parent), data=str(data), out=str(out))
    child = subprocess.Popen(
        [sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    )
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and out.read_bytes().count(b"\n") >= 5):
            assert child.poll() is None, "the child run ended before it could be killed"
            assert time.monotonic() < deadline, "the child run wrote nothing"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)  # mid-run: requests in flight, maybe a line half written
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    written = out.read_bytes().count(b"\n")
    assert 5 <= written < len(pairs)
    with _judge(url) as judge:
        totals = run_eval_sync(list(load_examples(data)), judge, out, concurrency=8, progress=False)
    assert totals.skipped == written and totals.written == len(pairs) - written
    rows = read_rows(out)
    assert sorted(r.id for r in rows) == sorted(
        f"e{k}" for k in range(len(pairs))
    )  # nothing lost, none twice
    assert all(r.primary.status == "ok" and r.correct for r in rows)


def test_run_eval_is_awaitable_inside_a_running_loop(tmp_path: Path, served: tuple) -> None:
    url, _, _ = served
    data = write_data(tmp_path / "d", PAIRS[:3])

    async def main() -> int:
        async with _judge(url) as judge:
            totals = await run_eval(load_examples(data), judge, tmp_path / "r.jsonl", progress=False)
        return totals.written

    assert asyncio.run(main()) == 3


def test_examples_need_not_come_from_a_file(tmp_path: Path, served: tuple) -> None:
    url, _, _ = served
    candidate(200).save(tmp_path / "a.png"), candidate(20).save(tmp_path / "b.png")
    example = Example("x", "p", (str(tmp_path / "a.png"), str(tmp_path / "b.png")), 1)
    with _judge(url) as judge:
        totals = run_eval_sync(iter([example]), judge, tmp_path / "r.jsonl", progress=True)
    assert totals.written == 1 and read_rows(tmp_path / "r.jsonl")[0].correct


# -- the command line ---------------------------------------------------------------------------------


def _cli(*args: str, base_url: str | None = None) -> Any:
    from typer.testing import CliRunner

    from flexjudge.cli import app

    return CliRunner().invoke(app, ["eval", *args], env={"COLUMNS": "120", "FLEXJUDGE_BASE_URL": base_url})


def test_cli_judges_resumes_summarises_and_compares(tmp_path: Path, served: tuple) -> None:
    url, backend, _ = served
    data = write_data(tmp_path / "d", PAIRS)
    out = tmp_path / "a.jsonl"
    common = ["--base-url", url, "--served-model", "simulated", "--out", str(out), "--no-progress"]
    result = _cli(str(data), *common, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (
        summary["n"] == len(PAIRS) and summary["accuracy"] == 1.0 and summary["position_consistency"] == 1.0
    )
    assert summary["parse_failure_rate"] == 0.0 and len(summary["accuracy_ci"]) == 2
    calls = backend.calls
    again = _cli(str(data), *common)  # resumed: nothing left to judge, the table is printed
    assert again.exit_code == 0 and backend.calls == calls and "accuracy" in again.stdout
    single = tmp_path / "b.jsonl"
    # The server named by FLEXJUDGE_BASE_URL, as the judging commands read it.
    plain = [
        "--served-model",
        "simulated",
        "--out",
        str(single),
        "--no-consistency",
        "--no-progress",
        "--json",
    ]
    assert _cli(str(data), *plain, base_url=url).exit_code == 0
    assert all(r.swapped is None for r in read_rows(single))
    compared = _cli("--compare", str(out), str(single), "--json")
    assert compared.exit_code == 0, compared.output
    assert json.loads(compared.stdout)["n"] == len(PAIRS)


def test_cli_refuses_wrong_command_lines_and_bad_data_before_judging(tmp_path: Path, served: tuple) -> None:
    url, backend, _ = served
    data = write_data(tmp_path / "d", PAIRS[:2])
    out = tmp_path / "r.jsonl"
    assert _cli(str(data), "--out", str(out)).exit_code == 2  # neither --model nor --base-url
    assert _cli(str(data), "--model", "m", "--base-url", url, "--out", str(out)).exit_code == 2
    assert _cli(str(data), "--base-url", url, "--layout", "nope", "--out", str(out)).exit_code == 2
    assert _cli("--compare", str(out), str(out), "--out", str(out)).exit_code == 2
    with data.open("a") as fh:
        fh.write('{"id": "bad", "prompt": "p", "candidates": ["q200.png"], "label": 1}\n')
    result = _cli(str(data), "--base-url", url, "--served-model", "simulated", "--out", str(out))
    assert result.exit_code == 2 and "data.jsonl:3" in result.output
    assert not out.exists() and backend.calls == 0  # refused before any judging


def test_cli_exits_1_when_every_run_fails(tmp_path: Path, served: tuple) -> None:
    url, _, injector = served
    data = write_data(tmp_path / "d", PAIRS[:2])
    injector.faults[:] = ["401"] * 4
    out = tmp_path / "r.jsonl"
    result = _cli(str(data), "--base-url", url, "--served-model", "simulated", "--out", str(out), "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error_rate"] == 1.0
    retried = _cli(
        str(data),
        "--base-url",
        url,
        "--served-model",
        "simulated",
        "--out",
        str(out),
        "--json",
        "--retry-failed",
    )
    assert retried.exit_code == 0, retried.output
    assert json.loads(retried.stdout)["error_rate"] == 0.0


def test_cli_fits_a_calibration_map_and_judges_with_it(tmp_path: Path, served: tuple) -> None:
    from flexjudge._cli_eval import calibration_path
    from flexjudge.evaluation.calibration import CalibrationMap

    url, _, _ = served
    data = write_data(tmp_path / "d", PAIRS)
    out = tmp_path / "raw.jsonl"
    common = ["--base-url", url, "--served-model", "simulated", "--no-progress", "--json"]
    result = _cli(str(data), *common, "--out", str(out), "--fit-calibration", "isotonic")
    assert result.exit_code == 0, result.output
    raw = read_rows(out)
    assert all(r.primary.confidence is not None and r.primary.confidence < 1.0 for r in raw)
    assert json.loads(result.stdout)["calibration"]["ece"] > 0  # this judge is always right, not sure
    fitted = CalibrationMap.load(calibration_path(out))
    assert fitted.method == "isotonic" and fitted.n == len(PAIRS)
    mapped = tmp_path / "calibrated.jsonl"
    again = _cli(str(data), *common, "--out", str(mapped), "--calibration", str(calibration_path(out)))
    assert again.exit_code == 0, again.output
    # Every judgment of the rule judge was right, so the fitted map sends each confidence it saw to 1.
    assert [r.primary.confidence for r in read_rows(mapped)] == [1.0] * len(PAIRS)
    assert json.loads(again.stdout)["calibration"]["ece"] == 0.0
    assert _cli(str(data), *common, "--out", str(out), "--fit-calibration", "magic").exit_code == 2


@pytest.mark.slow  # a local model's whole judgment: seconds, not the default run's budget
def test_cli_bounds_the_judgment_strings_as_the_judging_commands_do(tmp_path: Path) -> None:
    """--max-string-length reaches the constraint, as for `judge` and `dpo-pairs`: a random tiny model,
    which never closes an unbounded string, writes whole judgments of one-character strings."""
    data = write_data(tmp_path / "d", PAIRS[:1])
    out = tmp_path / "r.jsonl"
    common = ["--model", "tiny-random", "--device", "cpu", "--out", str(out), "--no-consistency"]
    result = _cli(str(data), *common, "--max-string-length", "1", "--max-new-tokens", "1024", "--no-progress")
    assert result.exit_code == 0, result.output
    (row,) = read_rows(out)
    assert row.primary.status == "ok" and row.primary.judgment is not None
    criteria = [c for d in row.primary.judgment["dimensions"] for c in d["criteria"]]
    assert criteria and all(len(c["evidence_1"]) <= 1 and len(c["evidence_2"]) <= 1 for c in criteria)
