"""`flexjudge dpo-pairs` against a real OpenAI-compatible server on 127.0.0.1 (tests/served.py) whose model
answers each sample as scripted by its seed (the seeds are the run's own, `sample_seed`): every case, both
tie-breakers (the judge tie-breaker served too), resuming after a torn line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from served import FaultInjector, running_server
from simulated import candidate, judgment_text
from typer.testing import CliRunner

import flexjudge
from flexjudge.backends._probe import PROBE_TOKENS
from flexjudge.backends.base import Generation, Request, TextPart
from flexjudge.cli import app
from flexjudge.judging import Judge
from flexjudge.training.dpo_pairs import build_dpo_pairs, sample_seed
from flexjudge.training.sft_data import prompt_judge

pytest.importorskip("datasets")
from datasets import load_from_disk

PROMPT = json.loads((Path(__file__).parent.parent / "examples" / "outputs" / "flex_image.json").read_text())[
    "prompt"
]
CLEAN, WARNED, WRONG = judgment_text(1), judgment_text(2, overall=1), judgment_text(2)
# WARNED names the right winner (1) against its own dimensions, and `check` warns of it.
SCRIPT = {
    "one": [WRONG, CLEAN],
    "both": [WARNED, CLEAN],
    "tied": [CLEAN, CLEAN],
    "wrong": [WRONG, WRONG],
}


class ScriptedJudge:
    """A served model whose answer to sample k of example e is SCRIPT[e][k], found by the request's seed;
    a tie-break request (its schema asks for "better") is answered with `better`."""

    name = "scripted"
    model = "scripted"

    def __init__(self, better: int = 1) -> None:
        self.by_seed = {
            sample_seed(0, e, k): text for e, texts in SCRIPT.items() for k, text in enumerate(texts)
        }
        self.better = better
        self.samples = 0
        self.tie_breaks: list[Request] = []

    async def generate(self, requests: list[Request]) -> list[Generation]:
        out = []
        for r in requests:
            if r.max_new_tokens == PROBE_TOKENS:
                out.append(Generation('{"ok": true}', "stop", True))
            elif r.constraint is not None and "better" in (r.constraint.schema or {}).get("properties", {}):
                self.tie_breaks.append(r)
                out.append(
                    Generation(
                        json.dumps({"analysis": f"{self.better} reads better", "better": self.better}),
                        "stop",
                        True,
                    )
                )
            else:
                self.samples += 1
                assert r.seed is not None and r.temperature == 0.7
                out.append(Generation(self.by_seed[r.seed], "stop", True))
        return out

    async def aclose(self) -> None:
        return None


@pytest.fixture
def data(tmp_path: Path) -> Path:
    candidate(200).save(tmp_path / "a.png")
    candidate(40).save(tmp_path / "b.png")
    rows = [{"id": e, "prompt": PROMPT, "candidates": ["a.png", "b.png"], "label": 1} for e in SCRIPT]
    rows.append({"id": "tie", "prompt": PROMPT, "candidates": ["a.png", "b.png"], "label": "tie"})
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def served_with_faults() -> Iterator[tuple[str, ScriptedJudge, FaultInjector]]:
    backend = ScriptedJudge()
    with running_server(backend, model_name="scripted") as (url, injector):
        yield url, backend, injector


@pytest.fixture
def served(served_with_faults: tuple[str, ScriptedJudge, FaultInjector]) -> tuple[str, ScriptedJudge]:
    return served_with_faults[0], served_with_faults[1]


def _judge(url: str) -> Judge:
    return Judge("scripted", backend="openai", base_url=url, temperature=0.7)


def _chosen(row: dict) -> str:
    return str(row["chosen"][0]["content"][0]["text"])


def test_rule_tie_breaker_every_case_and_resume(tmp_path: Path, data: Path, served: tuple) -> None:
    url, backend = served
    out = tmp_path / "dpo"
    with _judge(url) as judge:
        counts = build_dpo_pairs(data, judge, out, samples=2)
    assert counts["one_correct"] == 1 and counts["both_correct"] == 1 and counts["pairs"] == 2
    assert counts["both_correct_tied"] == 1 and counts["both_wrong"] == 1 and counts["tie_label"] == 1
    rows = {r["id"]: r for r in load_from_disk(str(out / "train"))}
    assert set(rows) == {"one", "both"}
    assert _chosen(rows["one"]) == CLEAN and rows["one"]["rejected"][0]["content"][0]["text"] == WRONG
    assert rows["one"]["case"] == "one_correct" and rows["one"]["tie_breaker"] is None
    assert _chosen(rows["both"]) == CLEAN and rows["both"]["tie_breaker"] == "rule"  # fewer findings wins
    assert len(rows["one"]["images"]) == 2 and rows["one"]["prompt"][0]["content"][2]["type"] == "text"
    assert backend.samples == 8
    # Resume: a record lost and a torn line left by a kill are redone, nothing else is asked again.
    log = out / "samples.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-1]) + lines[-1][:30])
    with _judge(url) as judge:
        again = build_dpo_pairs(data, judge, out, samples=2)
    assert backend.samples == 10 and again["resumed_repaired_line"] == 1
    assert {k: again[k] for k in counts if k != "resumed_repaired_line"} == {
        k: v for k, v in counts.items() if k != "resumed_repaired_line"
    }
    ids = [json.loads(x)["id"] for x in log.read_text().splitlines()]
    assert sorted(ids) == sorted(SCRIPT)  # no loss, no duplicate
    assert json.loads((out / "stats.json").read_text()) == dict(sorted(again.items()))


def test_greedy_sampling_is_refused(tmp_path: Path, data: Path) -> None:
    with pytest.raises(flexjudge.UsageError), prompt_judge("flex") as judge:
        build_dpo_pairs(data, judge, tmp_path / "dpo")
    assert not (tmp_path / "dpo").exists()


def test_judge_tie_breaker_through_a_served_judge(tmp_path: Path, data: Path, served: tuple) -> None:
    url, backend = served
    out = tmp_path / "dpo"
    result = CliRunner().invoke(
        app,
        ["dpo-pairs", "--data", str(data), "--base-url", url, "--served-model", "scripted", "--out", str(out),
         "--tie-breaker", "judge", "--judge-url", url, "--judge-model", "scripted"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in load_from_disk(str(out / "train"))}
    # The judge said 1: the first correct sample (WARNED) is chosen, where the rule would choose CLEAN; and
    # "tied" is no tie for it.
    assert _chosen(rows["both"]) == WARNED and rows["both"]["tie_breaker"] == "judge"
    assert _chosen(rows["tied"]) == CLEAN and rows["tied"]["case"] == "both_correct"
    assert len(backend.tie_breaks) == 2
    texts = [p.text for r in backend.tie_breaks for p in r.messages[0].parts if isinstance(p, TextPart)]
    assert any(WARNED in t and CLEAN in t and PROMPT in t for t in texts)  # both traces and the prompt, read
    record = json.loads(next(x for x in (out / "samples.jsonl").read_text().splitlines() if '"both"' in x))
    assert record["reason"] == "1 reads better"
    assert "both_wrong" in result.output


def test_a_server_failure_ends_the_run_and_a_rerun_finishes_it(
    tmp_path: Path, data: Path, served_with_faults: tuple
) -> None:
    url, backend, injector = served_with_faults
    out = tmp_path / "dpo"
    injector.faults = ["500"]  # the first sample asked fails, with no retry left
    with Judge(
        "scripted", backend="openai", base_url=url, temperature=0.7, backend_options={"max_attempts": 1}
    ) as judge:
        with pytest.raises(flexjudge.BackendError) as info:
            build_dpo_pairs(data, judge, out, samples=2)
        assert info.value.status_code == 500
        assert not (out / "train").exists()
        done = [json.loads(x)["id"] for x in (out / "samples.jsonl").read_text().splitlines()]
        assert len(done) == len(SCRIPT) - 1  # the others finished and were kept
        counts = build_dpo_pairs(data, judge, out, samples=2)
    ids = [json.loads(x)["id"] for x in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(SCRIPT) and counts["pairs"] == 2
    assert backend.samples == 2 * len(SCRIPT) + 1  # the failed example's other sample was asked again


@pytest.mark.slow  # the tiny random model samples on CPU
def test_a_local_model_samples_through_the_cli(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "dpo"
    result = CliRunner().invoke(
        app,
        ["dpo-pairs", "--data", str(data), "--model", "tiny-random", "--out", str(out),
         "--max-new-tokens", "700", "--max-string-length", "6"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(SCRIPT)
    assert len(load_from_disk(str(out / "train"))) == sum(r["chosen"] is not None for r in records)
    assert all(len(set(r["seeds"])) == 2 for r in records)
