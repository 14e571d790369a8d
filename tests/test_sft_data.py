"""`flexjudge sft-data` on traces written by a rule judge served over real HTTP (tests/served.py,
tests/simulated.py) and on the bundled example judgments: the completion parses back to the trace's
judgment, the prompt is the one `judge()` sends (compared after the tiny model's chat template), the split
keeps a pair's orders together, and every skipped line is counted by reason."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from served import running_server
from simulated import SimulatedJudge, candidate
from typer.testing import CliRunner

from flexjudge.backends._probe import PROBE_TOKENS
from flexjudge.backends.base import Generation, Request
from flexjudge.cli import app
from flexjudge.errors import FlexjudgeError, RenderError
from flexjudge.formats import Format, parse, render
from flexjudge.judging import Judge
from flexjudge.reading import pair_request_constraint
from flexjudge.schema import Verdict
from flexjudge.training.sft_data import build_sft_data, has_tie_verdict, in_eval

pytest.importorskip("datasets")
from datasets import load_from_disk

EXAMPLES = Path(__file__).parent.parent / "examples" / "outputs"
FLEX = json.loads((EXAMPLES / "flex_image.json").read_text())
PROMPT = FLEX["prompt"]  # what the rule judge's judgments echo
PAIRS = [(200, 40), (30, 220), (120, 60), (10, 250), (180, 90), (70, 160)]


class RuleJudge(SimulatedJudge):
    """The simulated judge as a served model (answers the capability probe); keeps every request."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    async def generate(self, requests: list[Request]) -> list[Generation]:
        out = []
        for r in requests:
            if r.max_new_tokens == PROBE_TOKENS:
                out.append(Generation('{"ok": true}', "stop", True))
            else:
                self.requests.append(r)
                out.append(self._one(r))
        return out


def _write_video(path: Path, n: int) -> Path:
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """A trace file as distillation writes it: flex traces from the served rule judge in both orders, a
    native and a fenced video example, and lines that must be skipped (tie, invalid, think, bad)."""
    folder = tmp_path_factory.mktemp("traces")
    for q in {q for pair in PAIRS for q in pair}:
        candidate(q).save(folder / f"q{q}.png")
    records: list[dict[str, Any]] = []
    served = running_server(RuleJudge(), model_name="simulated")
    with served as (url, _), Judge("simulated", backend="openai", base_url=url) as judge:
        for k, (one, two) in enumerate(PAIRS):
            label = 1 if one > two else 2
            for order in ([1, 2], [2, 1]):
                paths = [str(folder / f"q{q}.png") for q in (one, two)]
                shown = paths if order == [1, 2] else paths[::-1]
                judgment = judge.judge(PROMPT, shown)
                winner = judgment.verdict.winner if order == [1, 2] else 3 - judgment.verdict.winner  # type: ignore[operator]
                records.append(
                    {"id": f"p{k}", "prompt": PROMPT, "output": judgment.meta.raw_text, "label": label,
                     "modality": "image", "candidates": shown, "order": order, "format": "flex",
                     "agrees": winner == label, "usage": None}
                )  # fmt: skip
    images = [str(folder / "q200.png"), str(folder / "q40.png")]
    native = json.loads((EXAMPLES / "native_image.json").read_text())
    _write_video(folder / "a.mp4", 12), _write_video(folder / "b.mp4", 5)
    fenced = (EXAMPLES / "flex_video_fenced.txt").read_text()
    video_prompt = parse(fenced).prompt
    base = {"modality": "image", "order": [1, 2], "agrees": True, "usage": None}
    records += [
        {**base, "id": "nat", "prompt": native["prompt"], "output": json.dumps(native), "label": 1,
         "candidates": images, "format": "native"},
        {**base, "id": "vid", "prompt": video_prompt, "output": fenced, "label": 2, "modality": "video",
         "candidates": ["a.mp4", "b.mp4"], "format": "flex"},
        {**base, "id": "tie", "prompt": PROMPT, "output": json.dumps(FLEX), "label": "tie",
         "candidates": images, "format": "flex"},
        {**base, "id": "broken", "prompt": PROMPT, "output": "I cannot decide.", "label": 1,
         "candidates": images, "format": "flex"},
        {**base, "id": "think", "prompt": PROMPT, "output": (EXAMPLES / "think_image.txt").read_text(),
         "label": 1, "candidates": images, "format": "think"},
        {**base, "id": "nocand", "prompt": PROMPT, "output": json.dumps(FLEX), "label": 1, "format": "flex"},
        {**base, "id": "gone", "prompt": PROMPT, "output": json.dumps(FLEX), "label": 1,
         "candidates": [images[0], str(folder / "missing.png")], "format": "flex"},
    ]  # fmt: skip
    path = folder / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    yield path, records


def _rows(out: Path) -> list[dict[str, Any]]:
    return [row for split in ("train", "eval") for row in load_from_disk(str(out / split))]


def test_completions_parse_back_to_the_traced_judgments(tmp_path: Path, traces: tuple[Path, list]) -> None:
    path, records = traces
    build_sft_data(path, tmp_path / "sft", eval_fraction=0.3)
    rows = _rows(tmp_path / "sft")
    by_key = {(r["id"], tuple(r["candidates"])): r for r in records if "candidates" in r}
    assert {r["id"] for r in rows} == {f"p{k}" for k in range(len(PAIRS))} | {"nat", "vid"}
    for row in rows:
        (turn,) = row["completion"]
        assert turn["role"] == "assistant"
        text = turn["content"][0]["text"]
        shown = [r for r in records if r["id"] == row["id"]]
        fmt = shown[0]["format"]
        written = parse(text, format=fmt, strict=True, prompt=shown[0]["prompt"])
        traced = {json.dumps(parse(r["output"], format=fmt).content(), sort_keys=True) for r in shown}
        assert json.dumps(written.content(), sort_keys=True) in traced
    assert len(by_key) == len(records) - 1


def test_the_prompt_is_the_one_judge_sends_after_the_chat_template(
    tmp_path: Path, traces: tuple[Path, list]
) -> None:
    from trl.data_utils import apply_chat_template

    from flexjudge.backends.transformers import TransformersBackend

    path, records = traces
    build_sft_data(path, tmp_path / "sft", eval_fraction=0.0, frames_per_video=3)
    rows = {(r["id"], r["label"], len(r["images"])): r for r in _rows(tmp_path / "sft")}
    local = TransformersBackend(_thinking_model(tmp_path))
    recorder = RuleJudge()
    checked = 0
    for record in records:
        if record["id"] not in {"p0", "p1", "nat", "vid"}:
            continue
        folder = path.parent
        paths = [str(folder / c) for c in record["candidates"]]
        judge = Judge("rule", backend=recorder, output_format=record["format"], frames_per_video=3)
        # The rule judge reads images and writes flex: its answer to a video or a native request does not
        # parse, and is not what this test is after (the request is).
        with judge, contextlib.suppress(FlexjudgeError):
            judge.judge(record["prompt"], paths)
        sent = recorder.requests[-1]
        shown = 3 - record["label"] if record["order"] == [2, 1] else record["label"]
        count = 6 if record["modality"] == "video" else 2
        matches = [
            r for (i, lab, n), r in rows.items() if i == record["id"] and lab == str(shown) and n == count
        ]
        row = next(r for r in matches if _same_images(r["images"], sent))
        expected, images = local._render(sent)
        assert images and len(images) == len(row["images"])
        # As TRL's trainers render a row: its chat_template_kwargs reach the template (thinking off).
        example = {"prompt": row["prompt"], "chat_template_kwargs": row["chat_template_kwargs"]}
        rendered = apply_chat_template(example, local._processor)["prompt"]
        assert rendered == expected and expected.endswith(_THINK_OFF)
        checked += 1
    assert checked == 6  # p0 and p1 in both orders, the native trace, the video (3 frames per video)


_THINK_OFF = "<think>\n\n</think>\n\n"


def _thinking_model(tmp_path: Path) -> Path:
    """The tiny model with a chat template that, like Qwen3.5's, writes an empty think block after the
    generation prompt when `enable_thinking` is false."""
    import shutil

    from flexjudge.backends.tiny import tiny_model_dir

    folder = tmp_path / "thinking-model"
    shutil.copytree(tiny_model_dir(), folder)
    template = folder / "chat_template.jinja"
    switch = "{% if add_generation_prompt and enable_thinking is defined and not enable_thinking %}"
    template.write_text(template.read_text() + switch + _THINK_OFF + "{% endif %}")
    return folder


def test_rows_keep_the_chat_template_arguments_a_template_reads(
    tmp_path: Path, traces: tuple[Path, list]
) -> None:
    from flexjudge.backends.tiny import tiny_model_dir
    from flexjudge.backends.transformers import TransformersBackend
    from training._common import fit_template_kwargs

    path, _ = traces
    build_sft_data(path, tmp_path / "sft", eval_fraction=0.0)
    train = load_from_disk(str(tmp_path / "sft" / "train"))
    assert {tuple(r.items()) for r in train["chat_template_kwargs"]} == {(("enable_thinking", False),)}
    thinking = TransformersBackend(_thinking_model(tmp_path))._processor
    assert fit_template_kwargs(train, thinking)["chat_template_kwargs"] == train["chat_template_kwargs"]
    # The stock tiny template (Qwen2.5-VL's) reads no such switch: the column goes, so transformers is
    # never handed an argument it would only warn about.
    stock = TransformersBackend(tiny_model_dir())._processor
    assert "chat_template_kwargs" not in fit_template_kwargs(train, stock).column_names


def _same_images(row_images: list[Any], request: Request) -> bool:
    from flexjudge.backends.base import ImagePart

    sent = [p.image for m in request.messages for p in m.parts if isinstance(p, ImagePart)]
    return len(sent) == len(row_images) and all(
        a.convert("RGB").tobytes() == b.tobytes() for a, b in zip(row_images, sent, strict=True)
    )


def test_split_statistics_and_skips(tmp_path: Path, traces: tuple[Path, list]) -> None:
    path, _ = traces
    out = tmp_path / "sft"
    result = CliRunner().invoke(
        app, ["sft-data", str(path), "--out", str(out), "--eval-fraction", "0.5", "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    stats = json.loads((out / "stats.json").read_text())
    assert stats["skipped"] == {
        "bad_record": 1, "invalid": 1, "media": 1, "think_format": 1, "tie_without_tie_verdict": 1,
    }  # fmt: skip
    assert stats["lines"] == len(PAIRS) * 2 + 7
    train, evals = load_from_disk(str(out / "train")), load_from_disk(str(out / "eval"))
    assert stats["rows"] == {"train": len(train), "eval": len(evals)} and len(train) + len(evals) == 14
    assert len(evals) > 0 and len(train) > 0
    for split, rows in (("train", train), ("eval", evals)):
        assert all(in_eval(i, 3, 0.5) == (split == "eval") for i in rows["id"])  # a pair's orders together
    assert stats["formats"] == {"flex": 13, "native": 1} and stats["modalities"] == {"image": 13, "video": 1}
    assert sum(stats["labels"].values()) == 14
    assert "train" in result.output and "tie_without_tie_verdict" in result.output
    invalid = next(s for s in stats["skipped_lines"] if s["reason"] == "invalid")
    assert invalid["id"] == "broken" and "parse_error" in invalid["detail"]


@pytest.mark.parametrize(("example", "fmt"), [("flex_image.json", "flex"), ("native_image.json", "native")])
def test_has_tie_verdict_agrees_with_the_decoding_constraint(example: str, fmt: Format) -> None:
    """A tie label is kept only where a tie verdict could be decoded: the example's judgment passes the
    constraint judge() decodes under, and the same judgment with a tie verdict either has no rendering in
    the format or is refused by the constraint, exactly when `has_tie_verdict` says no."""
    import jsonschema

    judgment = parse((EXAMPLES / example).read_text(), format=fmt)
    schema = pair_request_constraint("image", fmt, (), None).schema
    checker = jsonschema.Draft202012Validator(schema)
    assert checker.is_valid(json.loads(render(judgment, fmt)))
    tie = judgment.model_copy(update={"verdict": Verdict(analysis=judgment.verdict.analysis, winner=None)})
    try:
        decodable = checker.is_valid(json.loads(render(tie, fmt)))
    except RenderError:
        decodable = False
    assert has_tie_verdict(fmt, "image") is decodable


@pytest.mark.slow  # two TRL steps on the tiny model, on CPU
@pytest.mark.filterwarnings("ignore::FutureWarning")  # TRL 1.16 calls transformers' deprecated names
def test_trl_sft_trainer_takes_the_dataset(tmp_path: Path, traces: tuple[Path, list]) -> None:
    torch = pytest.importorskip("torch")
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from flexjudge.backends.tiny import tiny_model_dir

    path, _ = traces
    build_sft_data(path, tmp_path / "sft", eval_fraction=0.0, frames_per_video=2)
    rows = load_from_disk(str(tmp_path / "sft" / "train"))
    picked = rows.select([i for i, r in enumerate(rows["id"]) if r in ("p0", "vid", "nat")])
    model_dir = tiny_model_dir()
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "run"), max_length=None, per_device_train_batch_size=1, max_steps=2,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False,
        dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    trainer = trl.SFTTrainer(
        model=AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32),
        args=args,
        train_dataset=picked,
        processing_class=AutoProcessor.from_pretrained(model_dir),
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(loss == loss and 0 < loss < 100 for loss in losses)
