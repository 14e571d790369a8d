"""`flexjudge distill` against a real OpenAI-compatible server on 127.0.0.1 (tests/served.py) whose model is
a rule teacher of known behaviour: it prefers the image of higher quality (tests/simulated.py), and flags
in each prompt make it misbehave (answer the wrong way, break a rule, write no judgment, run out of
tokens). Faults are played by the server's `FaultInjector`; the kill test SIGKILLs a real `flexjudge
distill` process and resumes it."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from served import FaultInjector, running_server
from simulated import candidate, judgment_text, quality
from typer.testing import CliRunner

from flexjudge.backends._probe import PROBE_TOKENS
from flexjudge.backends.base import Generation, ImagePart, Request, TextPart, Usage
from flexjudge.cli import app
from flexjudge.errors import BackendError, UsageError
from flexjudge.evaluation.data import load_examples
from flexjudge.training.distill import DistillTotals, Teacher, distill, failures_path, trace_key

PROMPT_TOKENS = 100


class RuleTeacher:
    """A served teacher: prefers the image of higher quality, echoes the prompt, spends its token budget
    as a model does (about 4 characters a token, `finish_reason="length"` when it runs out) and reports
    usage. Flags in the prompt: `wrong` (the worse image wins when sampled greedily), `stubborn` (the
    worse image always wins), `breaks` (the first answer breaks the split rule, a re-ask is clean),
    `always-breaks`, `garbled` (no judgment at all), `long` (more than any small budget)."""

    name = "rule-teacher"
    model = "rule-teacher"

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.answers: list[Generation] = []

    async def generate(self, requests: list[Request]) -> list[Generation]:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        answers = [self._answer(r) for r in requests]
        self.answers += [
            a for r, a in zip(requests, answers, strict=True) if r.max_new_tokens != PROBE_TOKENS
        ]
        return answers

    def _answer(self, request: Request) -> Generation:
        if request.max_new_tokens == PROBE_TOKENS:
            return Generation('{"ok": true}', "stop", True)
        parts = request.messages[0].parts
        images = [p.image for p in parts if isinstance(p, ImagePart)]
        shown = "".join(p.text for p in parts if isinstance(p, TextPart))
        prompt = re.search(r"<<[^>]*>>", shown)
        assert prompt is not None
        flags = set(prompt[0][2:-2].split())
        better = 1 if quality(images[0]) > quality(images[1]) else 2
        reasked = len(request.messages) > 1
        wrong = "stubborn" in flags or ("wrong" in flags and request.temperature == 0)
        doc = json.loads(judgment_text(3 - better if wrong else better))
        doc["prompt"] = prompt[0]
        if "always-breaks" in flags or ("breaks" in flags and not reasked):
            doc["categories"][0]["dims"][0]["score_2"] += 1  # 7 + 4: not a split of 10
        if "long" in flags:
            doc["reason"] = "x" * 20_000  # past the default budget of 4096 tokens
        text = "I cannot decide between them." if "garbled" in flags else json.dumps(doc)
        finish: Any = "stop"
        if len(text) > 4 * request.max_new_tokens:
            text, finish = text[: 4 * request.max_new_tokens], "length"
        return Generation(text, finish, True, Usage(PROMPT_TOKENS, len(text) // 4), model=self.model)

    async def aclose(self) -> None:
        return None


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, RuleTeacher, FaultInjector]]:
    teacher = RuleTeacher()
    with running_server(teacher, model_name="rule-teacher") as (url, injector):
        yield url, teacher, injector


@pytest.fixture
def served(server: tuple[str, RuleTeacher, FaultInjector]) -> tuple[str, RuleTeacher, FaultInjector]:
    _, teacher, injector = server
    injector.reset()
    teacher.answers.clear()
    teacher.delay_s = 0.0
    return server


def write_data(folder: Path, rows: list[tuple[int, int, str]]) -> Path:
    """One row per (quality 1, quality 2, flags); the label is the better image."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, (one, two, flags) in enumerate(rows):
        for q in (one, two):
            if not (folder / f"q{q}.png").exists():
                candidate(q).save(folder / f"q{q}.png")
        row = {
            "id": f"e{k}",
            "prompt": f"<<e{k} {flags}>>",
            "candidates": [f"q{one}.png", f"q{two}.png"],
            "label": 1 if one > two else 2,
        }
        lines.append(json.dumps(row) + "\n")
    path = folder / "data.jsonl"
    path.write_text("".join(lines))
    return path


def clean_rows(n: int) -> list[tuple[int, int, str]]:
    return [(10 + k, 250 - k, "") if k % 2 else (250 - k, 10 + k, "") for k in range(n)]


def teacher(url: str, **options: Any) -> Teacher:
    return Teacher(
        base_url=url, model="rule-teacher", backend_options={"backoff_s": 0.01, "timeout_s": 1.0, **options}
    )


def run(data: Path, out: Path, url: str, **options: Any) -> DistillTotals:
    settings: dict[str, Any] = {"progress": False, "concurrency": 4, **options}
    backend_options = settings.pop("backend_options", {})
    return asyncio.run(distill(load_examples(data), teacher(url, **backend_options), out, **settings))


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def keys(path: Path) -> list[str]:
    return [trace_key(r["id"], r["order"]) for r in lines(path)]


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "FLEXJUDGE_BASE_URL": None})


def asks(teacher: RuleTeacher, ident: str) -> int:
    """How many answers the teacher gave for the row `ident`."""
    return sum(f"<<{ident} " in a.text for a in teacher.answers)


# -- the happy path, through the command -----------------------------------------------------------


def test_the_command_distils_every_pair_totals_usage_and_cost_and_the_output_validates(
    tmp_path: Path, served: tuple[str, RuleTeacher, FaultInjector]
) -> None:
    url, rule, _ = served
    data = write_data(tmp_path / "d", [*clean_rows(5), (60, 200, "breaks")])
    out = tmp_path / "traces.jsonl"
    result = cli(
        "distill", "--base-url", url, "--model", "rule-teacher", "--data", str(data), "--out", str(out),
        "--price-in", "2.5", "--price-out", "10", "--json", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    traces = lines(out)
    assert summary["written"] == len(traces) == 6 and summary["failed"] == 0 and not lines(failures_path(out))
    paid = rule.answers  # every answer the teacher gave, the re-ask included
    assert len(paid) == 8 == summary["requests"]
    prompt, completion = PROMPT_TOKENS * len(paid), sum(len(a.text) // 4 for a in paid)
    assert summary["usage"] == {"prompt_tokens": prompt, "completion_tokens": completion}
    assert summary["cost_usd"] == pytest.approx((prompt * 2.5 + completion * 10) / 1e6)
    folder = (tmp_path / "d").resolve()
    for trace in traces:
        k = int(trace["id"][1:])
        assert set(trace) == {
            "id", "prompt", "output", "label", "modality", "candidates", "order", "format", "agrees", "usage",
        }  # fmt: skip
        original = json.loads((data).read_text().splitlines()[k])["candidates"]
        assert trace["candidates"] == [str(folder / original[n - 1]) for n in trace["order"]]
        assert trace["agrees"] is True and trace["format"] == "flex" and trace["modality"] == "image"
        assert json.loads(trace["output"])["prompt"] == trace["prompt"]  # the raw teacher text
    assert {tuple(t["order"]) for t in traces} == {(1, 2), (2, 1)}  # seeded orders, both drawn
    (reasked,) = [t for t in traces if t["id"] == "e5"]
    answers = [a for a in paid if "<<e5 " in a.text]
    assert reasked["usage"] == {
        "prompt_tokens": 3 * PROMPT_TOKENS,
        "completion_tokens": sum(len(a.text) // 4 for a in answers),
    }  # every answer of the re-asked trace was paid for
    checked = cli("validate", str(out))
    assert checked.exit_code == 0, checked.output


def test_a_rule_breaking_trace_is_re_asked_with_the_findings(
    tmp_path: Path, served: tuple[str, RuleTeacher, FaultInjector]
) -> None:
    url, rule, injector = served
    data = write_data(tmp_path / "d", [(200, 40, "breaks"), (40, 200, "always-breaks")])
    out = tmp_path / "t.jsonl"
    totals = run(data, out, url, max_reasks=2)
    assert keys(out) == [trace_key("e0", lines(out)[0]["order"])]
    (failure,) = lines(failures_path(out))
    assert failure["id"] == "e1" and failure["attempts"] == 4 and failure["reason"].startswith("check: ")
    assert "split_sum" in failure["reason"]
    # A plain ask, then instructor: one more ask, and a re-ask with the findings per answer that breaks them.
    assert asks(rule, "e0") == 3 and asks(rule, "e1") == 4
    (re_ask,) = [b for b in injector.bodies if "<<e0 " in json.dumps(b) and len(b["messages"]) > 1]
    assert re_ask["messages"][-2]["role"] == "assistant" and "7 + 4 = 11" in json.dumps(
        re_ask["messages"][-1]
    )
    assert totals.written == 1 and totals.failed == 1 and dict(totals.failures) == {"check": 1}


# -- faults ------------------------------------------------------------------------------------------


def test_server_faults_are_retried_and_bad_outputs_become_failures(
    tmp_path: Path, served: tuple[str, RuleTeacher, FaultInjector]
) -> None:
    url, rule, injector = served
    rows = [*clean_rows(6), (30, 90, "garbled"), (90, 30, "long")]
    data = write_data(tmp_path / "d", rows)
    out = tmp_path / "t.jsonl"
    injector.faults = ["429", "500", "hang", "garbage", "empty", "503"]
    injector.hang_s = 2.0  # past the client's 0.5 s timeout: retried
    totals = run(data, out, url, max_reasks=1, backend_options={"timeout_s": 0.5, "max_attempts": 8})
    assert sorted(t["id"] for t in lines(out)) == [f"e{k}" for k in range(6)]  # each once
    failures = {f["id"]: f for f in lines(failures_path(out))}
    assert set(failures) == {"e6", "e7"}
    assert failures["e6"]["reason"].startswith("unreadable: ") and failures["e6"]["attempts"] == 3
    assert asks(rule, "e6") == 0 and len([a for a in rule.answers if "cannot decide" in a.text]) == 3
    assert failures["e7"]["reason"].startswith("truncated: ")
    assert totals.unfinished == 0 and dict(totals.failures) == {"unreadable": 1, "truncated": 1}
    assert cli("validate", str(out)).exit_code == 0


def test_a_truncating_server_fault_is_a_truncated_failure(
    tmp_path: Path, served: tuple[str, RuleTeacher, FaultInjector]
) -> None:
    url, _, injector = served
    data = write_data(tmp_path / "d", clean_rows(1))
    out = tmp_path / "t.jsonl"
    injector.faults = ["truncate"]  # the server cuts max_tokens to 24
    run(data, out, url)
    (failure,) = lines(failures_path(out))
    assert failure["reason"].startswith("truncated: ") and not out.read_text()


def test_server_failures_past_the_retries_are_left_for_a_rerun(
    tmp_path: Path, served: tuple[str, RuleTeacher, FaultInjector]
) -> None:
    url, _, injector = served
    data = write_data(tmp_path / "d", clean_rows(1))
    out = tmp_path / "t.jsonl"
    injector.faults = ["500", "500"]
    first = run(data, out, url, backend_options={"max_attempts": 2})
    assert first.unfinished == 1 and not out.read_text() and not failures_path(out).read_text()
    second = run(data, out, url, backend_options={"max_attempts": 2})
    assert second.written == 1 and len(lines(out)) == 1


def test_a_rejected_key_stops_the_run_and_records_nothing(
    tmp_path: Path, served: tuple[str, RuleTeacher, FaultInjector]
) -> None:
    url, _, injector = served
    data = write_data(tmp_path / "d", clean_rows(3))
    out = tmp_path / "t.jsonl"
    injector.faults = ["401"]
    with pytest.raises(BackendError) as info:
        run(data, out, url, concurrency=1)
    assert info.value.status_code == 401 and not out.read_text() and not failures_path(out).read_text()
    result = cli(
        "distill", "--base-url", url, "--model", "rule-teacher", "--data", str(data), "--out", str(out),
        "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0 and len(lines(out)) == 3  # the key is fine now: all asked again


# -- the label --------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["keep", "drop", "reask"])
def test_disagreeing_traces_follow_the_policy(
    policy: str, tmp_path: Path, served: tuple[str, RuleTeacher, FaultInjector]
) -> None:
    url, rule, _ = served
    data = write_data(tmp_path / "d", [(200, 40, ""), (200, 40, "wrong"), (40, 200, "stubborn")])
    out = tmp_path / "t.jsonl"
    totals = run(data, out, url, on_disagree=policy, max_reasks=2)
    traces = {t["id"]: t for t in lines(out)}
    failures = {f["id"]: f for f in lines(failures_path(out))}
    assert traces["e0"]["agrees"] is True
    if policy == "keep":
        assert traces["e1"]["agrees"] is False and traces["e2"]["agrees"] is False and not failures
        assert (totals.agree, totals.disagree) == (1, 2)
    elif policy == "drop":
        assert set(traces) == {"e0"} and set(failures) == {"e1", "e2"}
        assert all(f["reason"].startswith("disagrees: ") for f in failures.values())
        assert asks(rule, "e1") == asks(rule, "e2") == 1
    else:  # re-sampled: e1 agrees once sampled, e2 never does
        assert traces["e1"]["agrees"] is True and set(failures) == {"e2"}
        assert asks(rule, "e1") == 2 and asks(rule, "e2") == 3 and failures["e2"]["attempts"] == 3
        assert failures["e2"]["reason"].startswith("disagrees: the teacher chose 1, the label is 2")
    assert cli("validate", str(out)).exit_code == 0


def test_both_orders_are_distilled_and_keyed_apart(
    tmp_path: Path, served: tuple[str, RuleTeacher, FaultInjector]
) -> None:
    url, rule, _ = served
    data = write_data(tmp_path / "d", clean_rows(3))
    out = tmp_path / "t.jsonl"
    totals = run(data, out, url, both_orders=True)
    traces = lines(out)
    assert sorted(keys(out)) == sorted(trace_key(f"e{k}", o) for k in range(3) for o in ((1, 2), (2, 1)))
    by_key = {trace_key(t["id"], t["order"]): t for t in traces}
    for k in range(3):
        straight, swapped = by_key[f"e{k}#12"], by_key[f"e{k}#21"]
        assert swapped["candidates"] == straight["candidates"][::-1]
        assert straight["agrees"] is swapped["agrees"] is True
        # The teacher saw the better image in the other position: its raw winners differ.
        assert json.loads(straight["output"])["winner"] != json.loads(swapped["output"])["winner"]
    assert totals.written == 6 and len(rule.answers) == 6
    assert run(data, out, url, both_orders=True).skipped == 6 and len(rule.answers) == 6


# -- resuming -----------------------------------------------------------------------------------------


def test_a_torn_last_line_is_repaired_and_only_that_pair_is_asked_again(
    tmp_path: Path, served: tuple[str, RuleTeacher, FaultInjector]
) -> None:
    url, rule, _ = served
    data = write_data(tmp_path / "d", [*clean_rows(4), (60, 200, "drop-me stubborn")])
    out = tmp_path / "t.jsonl"
    run(data, out, url, on_disagree="drop")
    whole = out.read_bytes()
    last = whole.rindex(b"\n", 0, len(whole) - 1) + 1
    out.write_bytes(whole[: last + 30])  # the last trace half written, as a kill mid-write leaves it
    asked = len(rule.answers)
    totals = run(data, out, url, on_disagree="drop")
    assert [p for p, _ in totals.repaired] == [out] and totals.repaired[0][1].line == 4
    assert totals.written == 1 and totals.skipped == 4 and len(rule.answers) == asked + 1
    assert sorted(keys(out)) == sorted(set(keys(out))) and len(lines(out)) == 4
    assert len(lines(failures_path(out))) == 1  # the dropped pair is not asked again either


_CHILD = """
import sys
sys.argv = ["flexjudge", *sys.argv[1:]]
from flexjudge.cli import main
main()
"""


@pytest.mark.slow  # a child interpreter importing the SDK and openai: ~30 s on 2 shared cores
def test_a_killed_run_resumes_with_nothing_lost_and_nothing_twice(
    tmp_path: Path, served: tuple[str, RuleTeacher, FaultInjector]
) -> None:
    url, rule, _ = served
    rule.delay_s = 0.02
    n = 120
    data = write_data(tmp_path / "d", clean_rows(n))
    out = tmp_path / "t.jsonl"
    args = ["distill", "--base-url", url, "--model", "rule-teacher", "--data", str(data), "--out", str(out)]
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, *args, "--concurrency", "4", "--no-progress", "--both-orders"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and out.read_bytes().count(b"\n") >= 10):
            assert child.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run wrote nothing"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)  # mid-run: requests in flight, maybe a line half written
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    written = out.read_bytes()
    complete = written.count(b"\n")
    before = [trace_key(r["id"], r["order"]) for r in map(json.loads, written.splitlines()[:complete])]
    assert 10 <= complete < 2 * n
    rule.delay_s = 0.0
    result = cli(*args, "--both-orders", "--concurrency", "8", "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["skipped"] == complete and summary["written"] == 2 * n - complete
    expected = sorted(trace_key(f"e{k}", o) for k in range(n) for o in ((1, 2), (2, 1)))
    assert sorted(keys(out)) == expected  # nothing lost, none twice
    assert keys(out)[:complete] == before  # what was written stays as it was
    assert cli("validate", str(out)).exit_code == 0


# -- other inputs and settings ------------------------------------------------------------------------


def test_a_saved_datasets_dataset_with_images_is_distilled(
    tmp_path: Path, served: tuple[str, RuleTeacher, FaultInjector]
) -> None:
    datasets = pytest.importorskip("datasets")
    url, _, _ = served
    rows = {
        "id": ["a", "b"],
        "prompt": ["<<a >>", "<<b >>"],
        "candidates": [[candidate(200), candidate(20)], [candidate(30), candidate(220)]],
        "label": [1, 2],
    }
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "candidates": datasets.Sequence(datasets.Image()),
            "label": datasets.Value("int64"),
        }
    )
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "o" / "t.jsonl"
    result = cli(
        "distill", "--base-url", url, "--model", "rule-teacher", "--data", str(tmp_path / "ds"),
        "--out", str(out), "--no-progress", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    traces = lines(out)
    assert sorted(t["id"] for t in traces) == ["a", "b"] and all(t["agrees"] for t in traces)
    for trace in traces:
        assert all(
            Path(p).is_file() and Path(p).parent == out.parent / "t.jsonl.media" for p in trace["candidates"]
        )


def test_image_files_go_to_the_teacher_as_their_own_bytes_and_others_decoded(
    tmp_path: Path, served: tuple[str, RuleTeacher, FaultInjector]
) -> None:
    """A plain PNG travels as the file (no decode, no PNG encode: what bounds a run on few cores); a
    transparent one is decoded onto white and encoded, as `Judge` sends it; the teacher judges both."""
    from PIL.PngImagePlugin import PngInfo

    url, _, injector = served
    data = write_data(tmp_path / "d", clean_rows(2))
    files = {}
    for q in (10, 11, 249, 250):  # a text chunk that no re-encoding of the pixels would write
        path = tmp_path / "d" / f"q{q}.png"
        note = PngInfo()
        note.add_text("made-by", f"test {q}")
        candidate(q).save(path, pnginfo=note)
        files[path.read_bytes()] = q
    faded = Image.new("RGBA", (16, 16), (5, 40, 90, 255))  # opaque, yet an alpha band: decoded
    faded.save(tmp_path / "d" / "alpha.png")
    row = {"id": "t", "prompt": "<<t >>", "candidates": ["alpha.png", "q250.png"], "label": 2}
    data.write_text(data.read_text() + json.dumps(row) + "\n")
    out = tmp_path / "t.jsonl"
    totals = run(data, out, url)
    assert totals.written == 3 and all(t["agrees"] for t in lines(out))
    shown = [
        base64.b64decode(part["image_url"]["url"].partition(",")[2])
        for body in injector.bodies
        for part in body["messages"][0]["content"]
        if part["type"] == "image_url"
    ]
    assert len(shown) == 6 and sorted(files[s] for s in shown if s in files) == [10, 11, 249, 250, 250]
    (alpha,) = [s for s in shown if s not in files]
    assert alpha != (tmp_path / "d" / "alpha.png").read_bytes()  # decoded and encoded, as `Judge` sends it


def test_bad_data_and_flags_are_refused_before_the_teacher_is_asked(
    tmp_path: Path, served: tuple[str, RuleTeacher, FaultInjector]
) -> None:
    url, rule, _ = served
    data = write_data(tmp_path / "d", clean_rows(2))
    broken = tmp_path / "d" / "broken.jsonl"
    broken.write_text(data.read_text() + '{"id": "x", "prompt": "p", "candidates": ["nope.png", "q1.png"]}\n')
    out = tmp_path / "t.jsonl"
    base = ["distill", "--base-url", url, "--model", "rule-teacher", "--out", str(out), "--no-progress"]
    assert cli(*base, "--data", str(broken)).exit_code == 2
    assert cli(*base, "--data", str(data), "--on-disagree", "maybe").exit_code == 2
    assert cli(*base, "--data", str(data), "--price-in", "1").exit_code == 2
    assert cli(*base, "--data", str(data), "--format", "think").exit_code == 2
    assert rule.answers == [] and not out.exists()
    with pytest.raises(UsageError):
        run(data, out, url, concurrency=0)
    with pytest.raises(UsageError):
        run(data, out, url, on_disagree="maybe")


@pytest.mark.slow  # spawns two servers and a child process: ~30 s on 2 shared cores
def test_the_throughput_benchmark_runs() -> None:
    root = Path(__file__).parent.parent
    result = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "distill_throughput.py"), "--rows", "16", "--repeat", "1",
         "--memory", "50"],
        capture_output=True, text=True, timeout=300, cwd=root, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| flexjudge distill |" in result.stdout and "| 50 |" in result.stdout
