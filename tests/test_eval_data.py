"""`load_examples`: the flexjudge JSONL and dataset layouts and each public benchmark's own layout, on tiny
fixtures written here in that layout; and the resumable JSONL log under them."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flexjudge._jsonl import JsonlLog
from flexjudge.errors import DataError, LogFileError
from flexjudge.evaluation.data import load_examples

SEMANTIC = "semantic alignment and accuracy"


def _image(path: Path, red: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (red, 0, 0)).save(path)
    return path


def _video(path: Path) -> Path:
    """A real 4-frame MP4 (the judge's video reader must accept what the adapters point at)."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for k in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 40 * k, dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_rows_resolve_paths_and_canonicalise_dimensions(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.png"), _image(tmp_path / "img" / "b.png")
    row = {
        "id": 7,
        "prompt": "a red cube",
        "candidates": ["img/a.png", "img/b.png"],
        "label": "tie",
        "dimension_labels": {"A. Semantic Alignment & Accuracy": 2},
    }
    (example,) = load_examples(_jsonl(tmp_path / "data.jsonl", [row, ""]))
    assert example.id == "7" and example.label == "tie" and example.modality == "image"
    assert example.candidates == (str(tmp_path / "img" / "a.png"), str(tmp_path / "img" / "b.png"))
    assert example.dimension_labels == {SEMANTIC: 2}


@pytest.mark.parametrize(
    ("change", "line_text"),
    [
        ({"label": 3}, "label must be 1, 2"),
        ({"label": True}, "label must be 1, 2"),
        ({"candidates": ["a.png"]}, "exactly two"),
        ({"candidates": ["a.png", "missing.png"]}, "not found"),
        ({"prompt": ""}, "missing field"),
        ({"dimension_labels": {"Vibes": 1}}, "no image anchor"),
    ],
)
def test_bad_rows_are_refused_with_their_line(tmp_path: Path, change: dict[str, Any], line_text: str) -> None:
    _image(tmp_path / "a.png"), _image(tmp_path / "b.png")
    good = {"id": "g", "prompt": "p", "candidates": ["a.png", "b.png"], "label": 1}
    source = _jsonl(tmp_path / "d.jsonl", [good, {**good, "id": "bad", **change}])
    loaded = load_examples(source)
    assert next(loaded).id == "g"  # streamed: the good line comes before the bad one is read
    with pytest.raises(DataError) as caught:
        next(loaded)
    assert caught.value.row == 2 and caught.value.source == str(source)
    assert line_text in caught.value.reason


def test_repeated_ids_and_unknown_layouts_are_refused(tmp_path: Path) -> None:
    _image(tmp_path / "a.png"), _image(tmp_path / "b.png")
    row = {"id": "x", "prompt": "p", "candidates": ["a.png", "b.png"], "label": 2}
    with pytest.raises(DataError) as caught:
        list(load_examples(_jsonl(tmp_path / "d.jsonl", [row, row])))
    assert caught.value.row == 2
    with pytest.raises(DataError):
        list(load_examples(tmp_path / "d.jsonl", layout="nope"))
    with pytest.raises(DataError):
        list(load_examples(tmp_path / "absent.jsonl"))


def _saved(tmp_path: Path, columns: dict[str, list[Any]], images: tuple[str, ...] = ()) -> Path:
    import datasets

    features = {}
    for name in columns:
        if name in images:
            features[name] = datasets.Image()
        elif name == "candidates":
            features[name] = datasets.Sequence(datasets.Image())
    folder = tmp_path / "saved"
    ds = datasets.Dataset.from_dict(columns)
    for name, feature in features.items():
        ds = ds.cast_column(name, feature)
    datasets.DatasetDict({"test": ds}).save_to_disk(str(folder))
    return folder


def test_a_saved_dataset_with_images_writes_each_image_once(tmp_path: Path) -> None:
    red, blue = Image.new("RGB", (8, 8), (200, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 200))
    folder = _saved(
        tmp_path,
        {"id": ["a"], "prompt": ["p"], "candidates": [[red, blue]], "label": [2]},
    )
    media = tmp_path / "media"
    (example,) = load_examples(folder, media_dir=media)
    assert example.label == 2 and all(Path(c).parent == media for c in example.candidates)
    with Image.open(example.candidates[0]) as first:
        assert first.getpixel((0, 0)) == (200, 0, 0)
    stamp = Path(example.candidates[0]).stat().st_mtime_ns
    (again,) = load_examples(folder, media_dir=media, split="test")
    assert again == example and Path(again.candidates[0]).stat().st_mtime_ns == stamp
    with pytest.raises(DataError):
        list(load_examples(folder, split="train"))


def test_genai_bench_image_layout(tmp_path: Path) -> None:
    one, two = Image.new("RGB", (8, 8), (10, 0, 0)), Image.new("RGB", (8, 8), (20, 0, 0))
    folder = _saved(
        tmp_path,
        {
            "prompt": ["p0", "p1", "p2"],
            "left_image": [one, one, one],
            "right_image": [two, two, two],
            "vote_type": ["leftvote", "bothbad_vote", "rightvote"],
        },
        images=("left_image", "right_image"),
    )
    examples = list(load_examples(folder, layout="genai-bench-image", media_dir=tmp_path / "m"))
    assert [(e.id, e.prompt, e.label) for e in examples] == [
        ("0", "p0", 1),
        ("1", "p1", "tie"),
        ("2", "p2", 2),
    ]
    assert examples[0].candidates != examples[1].candidates  # one file per row's image, named by row


def test_genai_bench_video_layout_reads_urls_from_the_videos_folder(tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "genai-video"
    datasets.Dataset.from_dict(
        {
            "prompt": ["a dog runs"],
            "left_video": ["https://example.org/v/left.mp4"],
            "right_video": ["videos/right.mp4"],
            "vote_type": ["tievote"],
        }
    ).save_to_disk(str(folder))
    _video(folder / "videos" / "left.mp4"), _video(folder / "videos" / "right.mp4")
    (example,) = load_examples(folder, layout="genai-bench-video")
    assert example.modality == "video" and example.label == "tie"
    assert example.candidates == (str(folder / "videos" / "left.mp4"), str(folder / "videos" / "right.mp4"))


def test_mmrb2_layout(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "x_0.jpg"), _image(tmp_path / "images" / "x_1.jpg")

    def pair(ident: str, chosen: str, prompt: list[list[str]]) -> dict[str, Any]:
        side = {"model_name": "m", "response_content": [["image", "images/x_0.jpg"]]}
        other = {"model_name": "m", "response_content": [["image", "images/x_1.jpg"]]}
        return {
            "id": ident,
            "response_a": side,
            "response_b": other,
            "chosen": chosen,
            "prompt_content": prompt,
        }

    good = [pair("p1", "B", [["text", "a sign"]]), pair("p2", "A", [["text", "a"], ["text", "b"]])]
    (tmp_path / "t2i.json").write_text(json.dumps({"pairs": good}))
    examples = list(load_examples(tmp_path, layout="mmrb2"))
    assert [(e.id, e.label, e.prompt) for e in examples] == [("p1", 2, "a sign"), ("p2", 1, "a\nb")]
    assert examples[0].candidates[1] == str(tmp_path / "images" / "x_1.jpg")
    edit = pair("p3", "A", [["image", "input_images/s.jpg"], ["text", "make it blue"]])
    (tmp_path / "edit.json").write_text(json.dumps({"pairs": [edit]}))
    with pytest.raises(DataError) as caught:
        list(load_examples(tmp_path / "edit.json", layout="mmrb2"))
    assert caught.value.row == 1


def test_videogen_rewardbench_layout(tmp_path: Path) -> None:
    _video(tmp_path / "videos" / "a.mp4"), _video(tmp_path / "videos" / "b.mp4")
    fields = ["path_A", "path_B", "A_model", "B_model", "prompt", "VQ", "MQ", "TA", "Overall"]
    with (tmp_path / "videogen-rewardbench.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for values in (
            ["videos/a.mp4", "videos/b.mp4", "x", "y", "p", "A", "B", "B", "same"],
            ["videos/b.mp4", "videos/a.mp4", "y", "x", "q", "A", "A", "A", "A"],
            ["videos/b.mp4", "videos/a.mp4", "y", "x", "q", "A", "A", "A", "C"],
        ):
            writer.writerow(dict(zip(fields, values, strict=True)))
    loaded = load_examples(tmp_path, layout="videogen-rewardbench")
    first, second = next(loaded), next(loaded)
    assert (first.label, first.dimension_labels, first.modality) == ("tie", {SEMANTIC: 2}, "video")
    assert (second.label, second.candidates[0]) == (1, str(tmp_path / "videos" / "b.mp4"))
    with pytest.raises(DataError) as caught:
        next(loaded)
    assert caught.value.row == 4  # the file's own line number, header included


def test_mj_bench_layout_from_a_saved_split_and_from_its_parquet_file(tmp_path: Path) -> None:
    import datasets

    one, two = Image.new("RGB", (8, 8), (10, 0, 0)), Image.new("RGB", (8, 8), (20, 0, 0))
    columns = {
        "caption": ["c0", "c1"],
        "image0": [one] * 2,
        "image1": [two] * 2,
        "label": [0, 1],
        "info": ["", ""],
    }
    folder = _saved(tmp_path, columns, images=("image0", "image1"))
    examples = list(load_examples(folder, layout="mj-bench", media_dir=tmp_path / "m"))
    assert [(e.id, e.prompt, e.label) for e in examples] == [("0", "c0", 1), ("1", "c1", 2)]
    parquet = tmp_path / "alignment.parquet"
    datasets.load_from_disk(str(folder))["test"].to_parquet(str(parquet))
    from_file = list(load_examples(parquet, layout="mj-bench", media_dir=tmp_path / "p"))
    assert [(e.prompt, e.label) for e in from_file] == [("c0", 1), ("c1", 2)]
    with Image.open(from_file[0].candidates[1]) as second:
        assert second.getpixel((0, 0)) == (20, 0, 0)
    bad = datasets.Dataset.from_dict({**columns, "label": [0, 2]}).cast_column("image0", datasets.Image())
    bad.cast_column("image1", datasets.Image()).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError) as caught:
        list(load_examples(tmp_path / "bad.parquet", layout="mj-bench", media_dir=tmp_path / "b"))
    assert caught.value.row == 2


# -- the resumable log ------------------------------------------------------------------------------


def test_log_repairs_a_torn_line_and_never_duplicates_a_key(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with JsonlLog(path, key=lambda r: r["id"]) as log:
        assert log.repaired is None
        assert log.append({"id": "a", "v": 1}) and log.append({"id": "b", "v": 2})
        assert not log.append({"id": "a", "v": 3})
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"id": "c", "v"')  # a write cut short by a kill
    with JsonlLog(path, key=lambda r: r["id"]) as log:
        assert log.repaired is not None
        repaired = log.repaired
        assert (repaired.offset, repaired.dropped, repaired.line) == (len(whole), b'{"id": "c", "v"', 3)
        assert log.keys == {"a", "b"}
        assert log.append({"id": "c", "v": 4})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in lines] == ["a", "b", "c"]


def test_log_refuses_a_complete_line_that_is_no_record(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(LogFileError) as caught:
        JsonlLog(path, key=lambda r: r["id"])
    assert caught.value.line == 2
    assert path.read_text().count("\n") == 3  # nothing was cut: refusing is not repairing
    with pytest.raises(LogFileError):
        JsonlLog(tmp_path, key=lambda r: r["id"])


def test_log_drops_the_records_asked_so_they_can_be_written_again(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with JsonlLog(path, key=lambda r: r["id"]) as log:
        for k, ok in enumerate([True, False, True, False]):
            log.append({"id": f"r{k}", "ok": ok})
    with JsonlLog(path, key=lambda r: r["id"], drop=lambda r: not r["ok"]) as log:
        assert (log.dropped, log.keys) == (2, {"r0", "r2"})
        assert log.append({"id": "r1", "ok": True})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["r0", "r2", "r1"]
    assert [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]  # no temporary file left behind
    with JsonlLog(path, key=lambda r: r["id"], drop=lambda r: not r["ok"]) as log:
        assert log.dropped == 0 and len(log.keys) == 3
