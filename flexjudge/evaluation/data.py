"""Labelled preference data for `flexjudge eval`: `Example` and `load_examples`.

The flexjudge layout, one example per JSON line (or per row of a `datasets` dataset saved with
`save_to_disk`)::

    {"id": "a1", "prompt": "a red cube", "candidates": ["img/a.png", "img/b.png"], "label": 1,
     "dimension_labels": {"Aesthetics & Artistry": 2}, "modality": "image"}

`label` is 1, 2 or "tie"; `dimension_labels` (optional) names anchor dimensions of the modality (any
spelling `flexjudge.anchors.canonical_name` matches); `modality` (optional) is guessed from the first
candidate. Relative candidate paths are resolved against the JSONL file's folder (a saved dataset's: its
folder). Every problem is a `DataError` naming the file and the line (or row) to fix.

Datasets that hold images rather than paths (a PIL image per candidate) have each image written once, as
PNG, under `media_dir` (default: `$FLEXJUDGE_CACHE_DIR/eval-media/<dataset>`; the CLI passes
`<results>.media/` beside the results file), and the example refers to that path, so results and reports
name files that exist.

The public benchmarks are read in their own layouts with `layout=` (each function's docstring says what
it expects on disk): `genai-bench-image`, `genai-bench-video`, `mmrb2`, `videogen-rewardbench`,
`mj-bench`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from flexjudge._jsonl import KeySet
from flexjudge.anchors import Modality, canonical_anchors, canonical_name
from flexjudge.errors import DataError, MediaError
from flexjudge.evaluation.results import Label

__all__ = ["LAYOUTS", "Example", "load_examples"]


@dataclass(frozen=True)
class Example:
    """One labelled pair: what `run_eval` judges and scores."""

    id: str
    prompt: str
    candidates: tuple[str, str]
    """Absolute paths (or URLs), candidate 1 first, as the data ordered them."""
    label: Label
    dimension_labels: dict[str, Label] = field(default_factory=dict)
    """Human labels per anchor dimension, keyed by canonical name."""
    modality: Modality = "image"


def load_examples(
    source: str | Path,
    *,
    layout: str = "flexjudge",
    split: str | None = None,
    media_dir: str | Path | None = None,
) -> Iterator[Example]:
    """Stream the examples of `source` in `layout` (see the module docstring); `split` picks one split
    of a saved `DatasetDict`. Ids must be unique: a repeated id is a `DataError`."""
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; one of: {', '.join(LAYOUTS)}", source=str(source))
    path = Path(source)
    if not path.exists():
        raise DataError("no such file or folder", source=str(source))
    seen = KeySet()  # one key per row of a stream of any length, in flat memory
    try:
        for row, example in LAYOUTS[layout](path, split, _Media(path, media_dir)):
            if example.id in seen:
                raise DataError(
                    f"id {example.id!r} appears twice (ids must be unique)", source=str(path), row=row
                )
            seen.add(example.id)
            yield example
    finally:
        seen.close()


Rows = Iterator[tuple[int, Example]]


class _Media:
    """Where in-memory images of a dataset are written, once each, as PNG files."""

    def __init__(self, source: Path, media_dir: str | Path | None) -> None:
        if media_dir is None:
            from flexjudge.backends._cache import cache_root

            digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
            media_dir = cache_root() / "eval-media" / f"{source.name}-{digest}"
        self.folder = Path(media_dir)

    def path_of(self, value: Any, key: str, source: Path, row: int) -> str:
        """A candidate as a path: an image is written (once) and its path returned; a string is a path."""
        if isinstance(value, str):
            return value
        from PIL import Image

        if isinstance(value, Mapping) and value.get("bytes"):  # an undecoded `datasets` Image
            import io

            value = Image.open(io.BytesIO(value["bytes"]))
        if not isinstance(value, Image.Image):
            raise DataError(
                f"a candidate is neither a path nor an image ({type(value).__name__})",
                source=str(source),
                row=row,
            )
        target = self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.png"
        if not target.is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.tmp")
            value.save(partial, format="PNG")
            partial.replace(target)  # atomic: a killed run never leaves half an image to be reused
        return str(target)


# -- checks shared by every layout ----------------------------------------------------------------


def _label(value: Any, what: str, source: Path, row: int) -> Label:
    if value in (1, 2) and not isinstance(value, bool):
        return cast(Label, int(value))
    if value == "tie":
        return "tie"
    raise DataError(f'{what} must be 1, 2 or "tie", not {value!r}', source=str(source), row=row)


def _dimension_labels(value: Any, modality: Modality, source: Path, row: int) -> dict[str, Label]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DataError(
            "dimension_labels must be an object {anchor name: label}", source=str(source), row=row
        )
    known = canonical_anchors(modality, "split") + canonical_anchors(modality, "rating")
    labels: dict[str, Label] = {}
    for name, label in value.items():
        key = canonical_name(str(name))
        if key not in known:
            raise DataError(
                f"dimension_labels names {name!r}, which is no {modality} anchor dimension",
                source=str(source),
                row=row,
            )
        labels[key] = _label(label, f"dimension_labels[{name!r}]", source, row)
    return labels


def _candidate(value: str, base: Path, source: Path, row: int) -> str:
    if re.match(r"[a-z][a-z0-9+.-]*://", value, re.IGNORECASE):
        return value  # a URL: fetched (or refused) by the judge's media rules, not here
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise DataError(f"candidate file not found: {path}", source=str(source), row=row)
    return str(path.resolve())


def _modality(value: Any, first: str, source: Path, row: int) -> Modality:
    if value is not None:
        if value not in ("image", "video"):
            raise DataError(
                f'modality must be "image" or "video", not {value!r}', source=str(source), row=row
            )
        return cast(Modality, value)
    from flexjudge.media import guess_modality

    try:
        return guess_modality(first)
    except MediaError as exc:
        raise DataError(
            f"cannot tell the candidates' modality: {exc.reason}", source=str(source), row=row
        ) from exc


def _example(raw: Mapping[str, Any], base: Path, source: Path, row: int, media: _Media, key: str) -> Example:
    """A row of the flexjudge layout, checked field by field; `key` names its in-memory images."""
    missing = [f for f in ("id", "prompt", "candidates", "label") if raw.get(f) in (None, "")]
    if missing:
        raise DataError(f"missing field(s): {', '.join(missing)}", source=str(source), row=row)
    ident = raw["id"]
    if not isinstance(ident, str | int) or isinstance(ident, bool):
        raise DataError(f"id must be a string or an integer, not {ident!r}", source=str(source), row=row)
    prompt = raw["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError("prompt must be a non-empty string", source=str(source), row=row)
    values = raw["candidates"]
    if isinstance(values, str | bytes) or not isinstance(values, list | tuple) or len(values) != 2:
        count = len(values) if isinstance(values, list | tuple) else "not a list"
        raise DataError(f"candidates must list exactly two candidates ({count})", source=str(source), row=row)
    paths = [media.path_of(v, f"{key}/{k}", source, row) for k, v in enumerate(values)]
    one, two = (_candidate(p, base, source, row) for p in paths)
    modality = _modality(raw.get("modality"), one, source, row)
    return Example(
        id=str(ident),
        prompt=prompt,
        candidates=(one, two),
        label=_label(raw["label"], "label", source, row),
        dimension_labels=_dimension_labels(raw.get("dimension_labels"), modality, source, row),
        modality=modality,
    )


# -- the flexjudge layout ---------------------------------------------------------------------------


def _flexjudge(path: Path, split: str | None, media: _Media) -> Rows:
    if path.is_dir():
        for index, raw in _dataset_rows(path, split):
            key = f"flexjudge/{raw.get('id')}"
            yield index + 1, _example(raw, path, path, index + 1, media, key)
        return
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataError(f"cannot be read ({exc.strerror})", source=str(path)) from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except ValueError as exc:
                raise DataError(f"not a JSON line ({exc})", source=str(path), row=number) from exc
            if not isinstance(raw, dict):
                raise DataError("a line must be a JSON object", source=str(path), row=number)
            yield number, _example(raw, path.parent, path, number, media, "")


def _dataset_rows(path: Path, split: str | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a `datasets` dataset saved with `save_to_disk` (a Dataset, or one split of a DatasetDict),
    or of a parquet file as a dataset repository holds it."""
    import datasets  # type: ignore[import-untyped]  # the `eval` extra; no type information

    try:
        if path.is_file() and path.suffix == ".parquet":
            loaded = datasets.Dataset.from_parquet(str(path))
        else:
            loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(
            f"not a dataset saved with save_to_disk, nor a parquet file ({exc})", source=str(path)
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        if split is None and len(names) == 1:
            split = names[0]
        if split not in loaded:
            raise DataError(f"choose a split with --split: {', '.join(names)}", source=str(path))
        loaded = loaded[split]
    elif split is not None:
        raise DataError(f"--split {split}: this dataset has no splits", source=str(path))
    for index, row in enumerate(loaded):
        yield index, dict(row)


# -- the public benchmarks' own layouts --------------------------------------------------------------


_GENAI_VOTES: dict[str, Label] = {"leftvote": 1, "rightvote": 2, "tievote": "tie", "bothbad_vote": "tie"}


def _genai_label(vote: Any, path: Path, row: int) -> Label:
    if vote not in _GENAI_VOTES:
        raise DataError(
            f"vote_type must be one of {', '.join(_GENAI_VOTES)}, not {vote!r}", source=str(path), row=row
        )
    return _GENAI_VOTES[vote]


def genai_bench_image(path: Path, split: str | None, media: _Media) -> Rows:
    """GenAI-Bench, image generation (TIGER-Lab/GenAI-Bench, config `image_generation`).

    On disk: the dataset saved with `datasets.load_dataset("TIGER-Lab/GenAI-Bench", "image_generation")
    .save_to_disk(DIR)`; DIR is the source (`--split` picks a split when it has several), or one of the
    dataset repository's parquet files. Columns used:
    `prompt`, `left_image` and `right_image` (images; written once under `media_dir`), `vote_type`
    (`leftvote` -> 1, `rightvote` -> 2, `tievote` and `bothbad_vote` -> "tie", the paper's ties). The id
    is the row's 0-based index, as GenAI-Bench's own `idx`.
    """
    for index, raw in _dataset_rows(path, split):
        row = index + 1
        label = _genai_label(raw.get("vote_type"), path, row)
        candidates = [raw.get("left_image"), raw.get("right_image")]
        flex = {
            "id": index,
            "prompt": raw.get("prompt"),
            "candidates": candidates,
            "label": label,
            "modality": "image",
        }
        yield row, _example(flex, _folder(path), path, row, media, f"genai-image/{index}")


def genai_bench_video(path: Path, split: str | None, media: _Media) -> Rows:
    """GenAI-Bench, video generation (TIGER-Lab/GenAI-Bench, config `video_generation`).

    On disk: the dataset saved with `save_to_disk` as DIR (the source), and its videos downloaded into
    `DIR/videos/`: the dataset's `left_video` / `right_video` are URLs, each read from
    `DIR/videos/<the URL's file name>` (a relative path is read from DIR). Columns used: `prompt`,
    `left_video`, `right_video`, `vote_type` (as the image layout). The id is the row's 0-based index.
    """
    for index, raw in _dataset_rows(path, split):
        row = index + 1
        label = _genai_label(raw.get("vote_type"), path, row)
        candidates = [_local_video(raw.get(k), path) for k in ("left_video", "right_video")]
        flex = {
            "id": index,
            "prompt": raw.get("prompt"),
            "candidates": candidates,
            "label": label,
            "modality": "video",
        }
        yield row, _example(flex, path, path, row, media, "")


def _local_video(value: Any, folder: Path) -> Any:
    if isinstance(value, str) and re.match(r"https?://", value):
        name = value.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        return str(folder / "videos" / name)
    return value


def mmrb2(path: Path, split: str | None, media: _Media) -> Rows:
    """MMRB2 (Multimodal RewardBench 2, facebookresearch/MMRB2), its text-to-image task.

    On disk: the built release, `t2i.json` beside its `images/` folder (the repository's
    `benchmark/run_release.sh` makes both); the source is `t2i.json` or the folder holding it. Read:
    `pairs[*]` with `id`, `prompt_content` (its text parts joined form the prompt), `response_a` /
    `response_b` (`response_content`: one `["image", "images/..."]` each, relative to the JSON's
    folder) and `chosen` ("A" -> 1, "B" -> 2). The file is one JSON document, read whole. Pairs of the
    other tasks (editing, interleaved, reasoning: images in the prompt, or text in a response) are
    refused: a Flex judge compares generated images for a text prompt.
    """
    file = path / "t2i.json" if path.is_dir() else path
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
        pairs = document["pairs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"not an MMRB2 release file with 'pairs' ({type(exc).__name__}: {exc})", source=str(file)
        ) from exc
    for index, pair in enumerate(pairs):
        row = index + 1
        try:
            parts = pair["prompt_content"]
            if any(kind != "text" for kind, _ in parts):
                raise DataError(
                    "its prompt holds an image: not a text-to-image pair", source=str(file), row=row
                )
            prompt = "\n".join(text for _, text in parts)
            candidates = [
                _only_image(pair[side]["response_content"], file, row)
                for side in ("response_a", "response_b")
            ]
            chosen = {"A": 1, "B": 2}.get(pair["chosen"])
            ident = pair["id"]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"pair {index} lacks an MMRB2 field ({type(exc).__name__}: {exc})", source=str(file), row=row
            ) from exc
        if chosen is None:
            raise DataError(f'chosen must be "A" or "B", not {pair["chosen"]!r}', source=str(file), row=row)
        flex = {"id": ident, "prompt": prompt, "candidates": candidates, "label": chosen, "modality": "image"}
        yield row, _example(flex, file.parent, file, row, media, "")


def _only_image(content: Any, file: Path, row: int) -> str:
    if len(content) != 1 or content[0][0] != "image":
        raise DataError(
            "a response is not exactly one image: not a text-to-image pair", source=str(file), row=row
        )
    return str(content[0][1])


_VIDEOGEN_LABELS: dict[str, Label] = {"A": 1, "B": 2, "same": "tie"}


def videogen_rewardbench(path: Path, split: str | None, media: _Media) -> Rows:
    """VideoGen-RewardBench (KwaiVGI/VideoGen-RewardBench, evaluated by KwaiVGI/VideoAlign).

    On disk: `videogen-rewardbench.csv` with the videos under the same folder (the CSV's `path_A` /
    `path_B` are relative to it, as VideoAlign's `eval_videogen_rewardbench.py` reads them); the source
    is the CSV or its folder. Columns used: `prompt`, `path_A`, `path_B`, the overall label `Overall`
    (or `ALL`) with `A` -> 1, `B` -> 2, `same` -> "tie", and `TA` (text alignment) as the label of the
    anchor "Semantic Alignment & Accuracy". `VQ` and `MQ` (visual and motion quality) are not used: the
    Flex anchor "Video Quality & Dynamic Realism" covers both, so neither alone is its label. The id is
    the row's 0-based index. The CSV is streamed.
    """
    file = path / "videogen-rewardbench.csv" if path.is_dir() else path
    semantic = canonical_anchors("video", "split")[0]
    try:
        handle = file.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot be read ({exc.strerror})", source=str(file)) from exc
    with handle:
        for index, raw in enumerate(csv.DictReader(handle)):
            row = index + 2  # the header is line 1
            overall = raw.get("Overall", raw.get("ALL"))
            if overall not in _VIDEOGEN_LABELS:
                raise DataError(f"Overall must be A, B or same, not {overall!r}", source=str(file), row=row)
            dims = {semantic: _VIDEOGEN_LABELS[raw["TA"]]} if raw.get("TA") in _VIDEOGEN_LABELS else {}
            flex = {
                "id": index,
                "prompt": raw.get("prompt"),
                "candidates": [raw.get("path_A"), raw.get("path_B")],
                "label": _VIDEOGEN_LABELS[overall],
                "dimension_labels": dims,
                "modality": "video",
            }
            yield row, _example(flex, file.parent, file, row, media, "")


def mj_bench(path: Path, split: str | None, media: _Media) -> Rows:
    """MJ-Bench (MJ-Bench/MJ-Bench: its subsets `alignment`, `safety`, `quality`, `bias`).

    On disk: a subset's parquet file as the dataset repository holds it (`data/alignment.parquet`), or
    the dataset saved with `save_to_disk` (its splits are the subsets: `--split alignment`). Columns
    used: `caption` (the prompt), `image0` and `image1` (images, written once under `media_dir`, or
    paths relative to the source's folder), `label` (the 0-based index of the preferred image, as
    MJ-Bench's evaluation code reads it: 0 -> 1, 1 -> 2). The id is the row's 0-based index.
    """
    for index, raw in _dataset_rows(path, split):
        row = index + 1
        if raw.get("label") not in (0, 1) or isinstance(raw.get("label"), bool):
            raise DataError(
                f"label must be 0 or 1 (the preferred image), not {raw.get('label')!r}",
                source=str(path),
                row=row,
            )
        candidates = [raw.get("image0"), raw.get("image1")]
        flex = {
            "id": index,
            "prompt": raw.get("caption"),
            "candidates": candidates,
            "label": raw["label"] + 1,
            "modality": "image",
        }
        yield row, _example(flex, _folder(path), path, row, media, f"mj-bench/{index}")


def _folder(path: Path) -> Path:
    return path if path.is_dir() else path.parent


Layout = Callable[[Path, "str | None", _Media], Rows]

LAYOUTS: dict[str, Layout] = {
    "flexjudge": _flexjudge,
    "genai-bench-image": genai_bench_image,
    "genai-bench-video": genai_bench_video,
    "mmrb2": mmrb2,
    "videogen-rewardbench": videogen_rewardbench,
    "mj-bench": mj_bench,
}
"""Every layout `load_examples` reads, by the name `--layout` takes."""
