"""DPO preference pairs from a judge's own samples (`flexjudge dpo-pairs`), by the paper's rule.

For each labelled example, K judgments are sampled (each with its own seed, derived from the base seed,
the id and the sample's number, so a rerun asks the same). A judgment is correct when its overall winner
equals the label. Some correct and some wrong: ("one_correct") the first correct is chosen, the first wrong
rejected. All (at least two) correct: ("both_correct") a tie-breaker picks between the first two:
`RuleTieBreaker` (fewer `check()` findings wins, compared as (errors, warnings, infos); equal counts are a
tie and the pair is dropped) or `JudgeTieBreaker` (a stronger judge behind an OpenAI-compatible server
reads both traces and answers `TraceChoice` under the constraint). All wrong: dropped. Fewer than two
readable samples: dropped. Examples labelled "tie" cannot be judged correct and are skipped.

Input rows are read by `flexjudge.evaluation.data.load_examples` (the rows `flexjudge eval` reads: JSONL
or a saved `datasets` dataset). Resumable: each finished example is appended to `out/samples.jsonl`
through `flexjudge._jsonl.JsonlLog` (one flushed, fsynced line, keyed by id); a rerun skips the ids there
and cuts a torn last line. The dataset (`out/train`, TRL's DPO format:
prompt, chosen, rejected, images, id, label, case, tie_breaker) is built from the log at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flexjudge._jsonl import JsonlLog
from flexjudge.backends.base import Constraint, ImagePart, Message, Request, TextPart
from flexjudge.checks import check
from flexjudge.errors import ParseError, UsageError
from flexjudge.evaluation.data import Example, load_examples
from flexjudge.training.sft_data import (
    completion,
    conversation,
    message_features,
    pair_request,
    save_split,
    template_kwargs_feature,
    template_kwargs_row,
)

if TYPE_CHECKING:
    from datasets import Features  # type: ignore[import-untyped]
    from PIL.Image import Image as PILImage

    from flexjudge.judging import Judge
    from flexjudge.schema import Judgment

__all__ = [
    "Decision",
    "JudgeTieBreaker",
    "RuleTieBreaker",
    "TieBreaker",
    "TraceChoice",
    "build_dpo_pairs",
    "judge_tie_breaker",
    "rule_tie_breaker",
    "sample_seed",
]

Case = Literal["one_correct", "both_correct", "both_correct_tied", "both_wrong", "unreadable"]


@dataclass(frozen=True)
class Tied:
    """Two correct judgments of one example, for a tie-breaker to choose between."""

    prompt: str
    images: list[PILImage]
    """The candidates' images (a video's sampled frames), candidate 1's first, as the judge saw them."""
    first: Judgment
    second: Judgment


@dataclass(frozen=True)
class Decision:
    better: Literal[1, 2] | None
    """Which of the two is chosen; None: neither is better, and the pair is dropped."""
    reason: str


class TieBreaker(Protocol):
    name: str

    async def __call__(self, tied: Tied) -> Decision: ...

    async def aclose(self) -> None: ...


class RuleTieBreaker:
    """Fewer `check()` findings wins, compared as (errors, warnings, infos); equal counts tie."""

    name = "rule"

    async def __call__(self, tied: Tied) -> Decision:
        one, two = (_severity_counts(j, tied.prompt) for j in (tied.first, tied.second))
        if one == two:
            return Decision(None, f"equal findings {one} (errors, warnings, infos)")
        return Decision(1 if one < two else 2, f"findings {one} vs {two} (errors, warnings, infos)")

    async def aclose(self) -> None:
        return None


def _severity_counts(judgment: Judgment, prompt: str) -> tuple[int, int, int]:
    found = Counter(f.severity for f in check(judgment, prompt=prompt))
    return found["error"], found["warning"], found["info"]


rule_tie_breaker = RuleTieBreaker()


class TraceChoice(BaseModel):
    """What the tie-breaking judge answers."""

    model_config = ConfigDict(extra="forbid")

    analysis: str = Field(description="Which judgment reasons more faithfully about the images, and why.")
    better: Literal[1, 2] = Field(description="The judgment (1 or 2) whose reasoning is better.")


TIE_PROMPT = """You are checking two judgments of the same pair of {modality}s, both of which picked the \
right winner. The images above are the candidates, candidate 1's first. The generation prompt was:
{prompt}

Judgment 1:
{first}

Judgment 2:
{second}

Which judgment reasons better: criteria that fit the prompt, observations true to the images, scores that \
follow the observations? Answer with JSON: "analysis" (a few sentences), then "better" (1 or 2)."""


class JudgeTieBreaker:
    """A stronger judge behind an OpenAI-compatible server reads both traces with the candidates and
    answers `TraceChoice`, constrained by its schema as the `openai` backend constrains judgments."""

    name = "judge"

    def __init__(self, base_url: str, model: str, *, max_new_tokens: int = 1024, **options: Any) -> None:
        from flexjudge.backends.openai import OpenAIBackend

        self.backend = OpenAIBackend(base_url, model=model, **options)
        schema = TraceChoice.model_json_schema()
        self.constraint = Constraint(schema=schema, strict_schema=schema)
        self.max_new_tokens = max_new_tokens

    async def __call__(self, tied: Tied) -> Decision:
        text = TIE_PROMPT.format(
            modality=tied.first.modality,
            prompt=tied.prompt,
            first=tied.first.meta.raw_text,
            second=tied.second.meta.raw_text,
        )
        parts: list[TextPart | ImagePart] = [ImagePart(i) for i in tied.images]
        request = Request(
            messages=(Message("user", (*parts, TextPart(text))),),
            constraint=self.constraint,
            max_new_tokens=self.max_new_tokens,
        )
        (generation,) = await self.backend.generate([request])
        try:
            choice = TraceChoice.model_validate_json(generation.text)
        except ValidationError as exc:
            raise ParseError(f"the tie-breaking judge's answer is no TraceChoice: {exc}", offset=0) from None
        return Decision(choice.better, choice.analysis)

    async def aclose(self) -> None:
        await self.backend.aclose()


def judge_tie_breaker(base_url: str, model: str, **options: Any) -> JudgeTieBreaker:
    return JudgeTieBreaker(base_url, model, **options)


def sample_seed(seed: int, ident: str, k: int) -> int:
    """The seed of sample `k` of example `ident`: fixed by the run's seed, distinct per sample."""
    digest = hashlib.sha256(f"{seed}\x00{ident}\x00{k}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


# -- the run --------------------------------------------------------------------------------------


def build_dpo_pairs(
    data: str | Path,
    judge: Judge,
    out: str | Path,
    *,
    samples: int = 2,
    seed: int = 0,
    tie_breaker: TieBreaker = rule_tie_breaker,
    concurrency: int | None = None,
) -> dict[str, int]:
    """Sample, pair and write `out/train` and `out/stats.json` (see the module docstring); the counts of each
    case. The judge samples at its own temperature, which must be above 0 (greedy samples are all alike)."""
    if samples < 2:
        raise UsageError(f"samples must be at least 2, not {samples}")
    if judge.temperature <= 0:
        raise UsageError("the judge decodes greedily (temperature 0): its samples would all be alike")
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    log = JsonlLog(target / "samples.jsonl", key=lambda record: str(record["id"]))
    skipped = Counter[str]()
    try:
        # On the judge's own loop: a served backend keeps one client per loop, closed with the judge.
        judge._run(_sample_all(data, judge, log, samples, seed, tie_breaker, concurrency, skipped))
    finally:
        log.close()
    counts = _write_dataset(log.path, judge, target)
    counts.update(skipped)
    counts["resumed_repaired_line"] = int(log.repaired is not None)
    (target / "stats.json").write_text(
        json.dumps(dict(sorted(counts.items())), indent=2) + "\n", encoding="utf-8"
    )
    return dict(counts)


async def _sample_all(
    data: str | Path,
    judge: Judge,
    log: JsonlLog,
    samples: int,
    seed: int,
    tie_breaker: TieBreaker,
    concurrency: int | None,
    skipped: Counter[str],
) -> None:
    gate = asyncio.Semaphore(concurrency or judge.max_concurrency)
    pending: set[asyncio.Task[None]] = set()
    failed: list[BaseException] = []

    async def one(example: Example) -> None:
        try:
            log.append(await _pair(example, judge, samples, seed, tie_breaker))
        except BaseException as exc:
            failed.append(exc)
            raise
        finally:
            gate.release()

    try:
        for example in _examples(Path(data), skipped):
            if example.id in log:
                continue
            await gate.acquire()  # streamed: only `concurrency` examples are held at once
            if failed:
                gate.release()
                break  # a failed example (the server, the media) ends the run; a rerun resumes
            task = asyncio.ensure_future(one(example))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending, return_exceptions=True)
        if failed:
            raise failed[0]
    finally:
        for task in pending:
            task.cancel()
        await tie_breaker.aclose()


async def _pair(
    example: Example, judge: Judge, samples: int, seed: int, breaker: TieBreaker
) -> dict[str, Any]:
    seeds = [sample_seed(seed, example.id, k) for k in range(samples)]
    made = await asyncio.gather(
        *(
            judge.ajudge(example.prompt, list(example.candidates), modality=example.modality, seed=s)
            for s in seeds
        ),
        return_exceptions=True,
    )
    read: list[Judgment] = []
    for result in made:
        if isinstance(result, ParseError):  # the model's output was unreadable (truncation included)
            continue
        if isinstance(result, BaseException):
            raise result  # a server or media failure ends the run; a rerun resumes
        read.append(result)
    correct = [j for j in read if j.verdict.winner == example.label]
    wrong = [j for j in read if j.verdict.winner != example.label]
    record: dict[str, Any] = {
        "id": example.id,
        "prompt": example.prompt,
        "candidates": list(example.candidates),
        "modality": example.modality,
        "label": example.label,
        "seeds": seeds,
        "winners": [None if isinstance(r, BaseException) else r.verdict.winner for r in made],
        "chosen": None,
        "rejected": None,
        "tie_breaker": None,
        "reason": None,
    }
    case: Case
    if len(read) < 2:
        case = "unreadable"
    elif correct and wrong:
        case = "one_correct"
        record.update(chosen=correct[0].meta.raw_text, rejected=wrong[0].meta.raw_text)
    elif correct:
        media, _ = await judge.load(list(example.candidates), example.modality)
        tied = Tied(example.prompt, [i for frames in media for i in frames], correct[0], correct[1])
        decision = await breaker(tied)
        record.update(tie_breaker=breaker.name, reason=decision.reason)
        if decision.better is None:
            case = "both_correct_tied"
        else:
            case = "both_correct"
            best, other = (correct[0], correct[1]) if decision.better == 1 else (correct[1], correct[0])
            record.update(chosen=best.meta.raw_text, rejected=other.meta.raw_text)
    else:
        case = "both_wrong"
    record["case"] = case
    return record


def _examples(source: Path, skipped: Counter[str]) -> Iterator[Example]:
    for example in load_examples(source):
        if example.label == "tie":  # no judgment can be correct: the judge has no tie verdict
            skipped["tie_label"] += 1
        else:
            yield example


def dpo_features(template_kwargs: dict[str, Any]) -> Features:
    from datasets import Features, Image, List, Value

    turn = message_features()
    return Features(
        {
            "prompt": turn,
            "chosen": turn,
            "rejected": turn,
            "images": List(Image()),
            "id": Value("string"),
            "label": Value("string"),
            "case": Value("string"),
            "tie_breaker": Value("string"),
            **template_kwargs_feature(template_kwargs),
        }
    )


def _write_dataset(log: Path, judge: Judge, target: Path) -> Counter[str]:
    from datasets.arrow_writer import ArrowWriter  # type: ignore[import-untyped]

    counts = Counter[str]()
    with tempfile.TemporaryDirectory(prefix=".building-", dir=target) as staging:
        arrow = Path(staging) / "train.arrow"
        with ArrowWriter(
            features=dpo_features(judge.chat_template_kwargs), path=str(arrow), writer_batch_size=64
        ) as writer:
            with log.open(encoding="utf-8") as lines:
                for line in lines:
                    record = json.loads(line)
                    counts[record["case"]] += 1
                    if record["chosen"] is None:
                        continue
                    request = pair_request(judge, record["prompt"], record["candidates"], record["modality"])
                    prompt, images = conversation(request.messages)
                    writer.write(
                        {
                            "prompt": prompt,
                            "chosen": completion(record["chosen"]),
                            "rejected": completion(record["rejected"]),
                            "images": images,
                            "id": record["id"],
                            "label": str(record["label"]),
                            "case": record["case"],
                            "tie_breaker": record["tie_breaker"],
                            **template_kwargs_row(request),
                        }
                    )
            writer.finalize()
        counts["pairs"] = save_split(arrow, target / "train")
    return counts
