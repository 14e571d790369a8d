"""The transformers backend against a tiny random-weight Qwen-VL built here: real tokenizer, real processor,
real constrained decoding under every installed engine. No network, no hub."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
jsonschema = pytest.importorskip("jsonschema")

from PIL import Image  # noqa: E402

from flexjudge.backends.base import Constraint, ImagePart, Message, Request, TextPart  # noqa: E402
from flexjudge.backends.engines import constraint_form, engine_names, get_engine  # noqa: E402
from flexjudge.backends.tiny import build_tiny_model, tiny_model_dir  # noqa: E402
from flexjudge.backends.transformers import (  # noqa: E402
    TransformersBackend,
    available_engines,
    compile_cache_stats,
    set_compile_cache_size,
)
from flexjudge.errors import BackendError  # noqa: E402

CUDA = pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)"
)

ENGINES = [
    pytest.param(e, marks=pytest.mark.skipif(e not in available_engines(), reason=f"{e} not installed"))
    for e in ("llguidance", "outlines_core", "xgrammar")
]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "maxLength": 24},
        "winner": {"enum": ["Image 1", "Image 2"]},
        "criteria": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 12},
                    "score": {"enum": [0, 1, 2, 3, 4, 5]},
                },
                "required": ["name", "score"],
                "additionalProperties": False,
            },
            "minItems": 1,
            "maxItems": 3,
        },
    },
    "required": ["summary", "winner", "criteria"],
    "additionalProperties": False,
}


def _image(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, color)


def _request(
    text: str = "Which image is better?",
    *,
    images: int = 1,
    schema: dict[str, Any] | None = SCHEMA,
    unique_names: frozenset[str] = frozenset(),
    max_new_tokens: int = 400,
    temperature: float = 0.0,
    seed: int | None = None,
) -> Request:
    parts: list[TextPart | ImagePart] = [TextPart("Candidates:")]
    parts += [ImagePart(_image((40 * k, 90, 200 - 40 * k))) for k in range(images)]
    parts.append(TextPart(text))
    return Request(
        messages=(
            Message("system", (TextPart("You are a judge. Answer in JSON."),)),
            Message("user", tuple(parts)),
        ),
        constraint=Constraint(schema=schema, unique_names=unique_names) if schema is not None else None,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
    )


def _generate(backend: TransformersBackend, requests: list[Request]) -> list[Any]:
    return asyncio.run(backend.generate(requests))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2_5_vl", seed=0)


@pytest.fixture(scope="module")
def backends(tiny_dir: Path) -> dict[str, TransformersBackend]:
    return {e: TransformersBackend(tiny_dir, engine=e) for e in available_engines()}


@pytest.fixture(scope="module")
def backend(backends: dict[str, TransformersBackend]) -> TransformersBackend:
    return next(iter(backends.values()))


# ------------------------------------------------------------------ the tiny model


def test_build_is_deterministic_and_vocab_matches(tmp_path: Path) -> None:
    from transformers import AutoProcessor

    a = build_tiny_model(tmp_path / "a", seed=3)
    b = build_tiny_model(tmp_path / "b", seed=3)
    c = build_tiny_model(tmp_path / "c", seed=4)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    config = json.loads((a / "config.json").read_text())
    processor = AutoProcessor.from_pretrained(a)
    assert config["text_config"]["vocab_size"] == len(processor.tokenizer)


def test_json_keys_are_single_tokens(tiny_dir: Path) -> None:
    from transformers import AutoProcessor

    tokenizer = AutoProcessor.from_pretrained(tiny_dir).tokenizer
    for key in ("reason_1", "score_2", "cat_winner", "categories", "evidence"):
        assert len(tokenizer.tokenize(f'"{key}"')) == 1, key
    text = '{"winner":"Image 2","reason":"ünïcödé \t text"}'
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_auto_classes_load_it_with_at_most_16_image_tokens(tiny_dir: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    assert type(processor).__name__ == "Qwen2_5_VLImageOnlyProcessor"
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = processor(text=[text], images=[_image((1, 2, 3), (1024, 768))], return_tensors="pt")
    assert 1 <= int((inputs["input_ids"] == processor.image_token_id).sum()) <= 16


def test_tiny_model_dir_builds_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEXJUDGE_CACHE_DIR", str(tmp_path))
    first = tiny_model_dir(5)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_dir(5) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert first.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary build left behind


def test_qwen3_vl_judges_under_a_schema(tmp_path: Path) -> None:
    directory = build_tiny_model(tmp_path / "q3", arch="qwen3_vl", seed=1)
    backend = TransformersBackend(directory, engine=available_engines()[0])
    (generation,) = _generate(backend, [_request(images=2)])
    jsonschema.validate(json.loads(generation.text), SCHEMA)


def test_stock_processor_without_torchvision_falls_back_to_image_only(tiny_dir: Path, tmp_path: Path) -> None:
    import shutil

    stock = tmp_path / "stock"
    shutil.copytree(tiny_dir, stock)
    config = stock / "processor_config.json"
    config.write_text(config.read_text().replace("Qwen2_5_VLImageOnlyProcessor", "Qwen2_5_VLProcessor"))
    backend = TransformersBackend(stock, engine=available_engines()[0])
    assert type(backend._processor).__name__ == "Qwen2_5_VLImageOnlyProcessor"


# ------------------------------------------------------------------ generation


@pytest.mark.parametrize("engine", ENGINES)
def test_schema_output_is_valid_for_five_seeds(backends: dict[str, TransformersBackend], engine: str) -> None:
    backend = backends[engine]
    requests = [_request(images=2, temperature=1.0, seed=seed) for seed in range(5)]
    for generation in _generate(backend, requests):
        assert generation.constrained
        assert generation.finish_reason == "stop"
        jsonschema.validate(json.loads(generation.text), SCHEMA)
        assert generation.extra["engine"] == engine
        assert generation.usage is not None and 0 < generation.usage.completion_tokens <= 400


def test_seeded_sampling_is_reproducible(backend: TransformersBackend) -> None:
    first = _generate(backend, [_request(temperature=1.0, seed=11)])[0].text
    again = _generate(backend, [_request(temperature=1.0, seed=11)])[0].text
    assert first == again


def test_free_text(backend: TransformersBackend) -> None:
    (generation,) = _generate(backend, [_request(schema=None, max_new_tokens=12)])
    assert isinstance(generation.text, str)
    assert not generation.constrained
    assert generation.extra["engine"] is None
    assert generation.usage is not None and 1 <= generation.usage.completion_tokens <= 12
    assert generation.finish_reason in ("stop", "length")


@pytest.mark.parametrize("schema", [SCHEMA, None], ids=["schema", "free"])
def test_finish_reason_length_when_the_budget_runs_out(
    backend: TransformersBackend, schema: dict[str, Any] | None
) -> None:
    (generation,) = _generate(backend, [_request(schema=schema, max_new_tokens=3)])
    assert generation.finish_reason == "length"
    assert generation.usage is not None and generation.usage.completion_tokens == 3
    if schema is not None:
        with pytest.raises(json.JSONDecodeError):
            json.loads(generation.text)


@pytest.mark.parametrize("engine", ENGINES)
def test_batch_returns_generations_in_order(tiny_dir: Path, engine: str) -> None:
    backend = TransformersBackend(tiny_dir, engine=engine, max_batch_size=2)  # type: ignore[arg-type]
    same_group = [_request(f"prompt {i}", images=i) for i in range(3)]
    generations = _generate(backend, same_group)
    assert len(generations) == 3
    prompt_tokens = [g.usage.prompt_tokens for g in generations]
    alone = [_generate(backend, [r])[0].usage.prompt_tokens for r in same_group]
    assert prompt_tokens == alone
    for generation in generations:  # rows that finish early must not disturb the others
        jsonschema.validate(json.loads(generation.text), SCHEMA)

    mixed = [_request(), _request(schema=None, max_new_tokens=5), _request(max_new_tokens=3)]
    first, free, short = _generate(backend, mixed)
    jsonschema.validate(json.loads(first.text), SCHEMA)
    assert not free.constrained and free.usage.completion_tokens <= 5
    assert short.constrained and short.finish_reason == "length" and short.usage.completion_tokens == 3


def test_images_reach_the_model(backend: TransformersBackend) -> None:
    counts = [
        _generate(backend, [_request(images=n, max_new_tokens=2)])[0].usage.prompt_tokens for n in range(3)
    ]
    assert counts[0] < counts[1] < counts[2]
    # Each 64x48 image adds its image tokens plus the vision start / end markers, the same for each.
    assert counts[2] - counts[1] == counts[1] - counts[0] > 2


@pytest.mark.parametrize("engine", ENGINES)
def test_padded_vocabulary_never_yields_padding_ids(tmp_path: Path, engine: str) -> None:
    """Real checkpoints pad the embedding matrix past the tokenizer (151665 -> 151936 for Qwen)."""
    import torch
    from transformers import AutoModelForImageTextToText

    directory = build_tiny_model(tmp_path / "padded", seed=0)
    model = AutoModelForImageTextToText.from_pretrained(directory)
    width = model.get_output_embeddings().weight.shape[0]
    model.resize_token_embeddings(width + 54, mean_resizing=False)
    with torch.no_grad():
        model.get_output_embeddings().weight[width:] = 50.0  # padding would win every step if allowed
    model.save_pretrained(directory)
    backend = TransformersBackend(directory, engine=engine)  # type: ignore[arg-type]
    constrained, free = _generate(
        backend, [_request(max_new_tokens=200), _request(schema=None, max_new_tokens=8)]
    )
    jsonschema.validate(json.loads(constrained.text), SCHEMA)
    assert free.text  # greedy would pick a padding id (which decodes to nothing) at every step


def test_compile_cache_is_shared_across_backends(tiny_dir: Path) -> None:
    engine = available_engines()[0]
    schema = dict(SCHEMA, description="compiled by this test only")
    before = compile_cache_stats()
    assert TransformersBackend(tiny_dir, engine=engine).compile(schema) > 0
    middle = compile_cache_stats()
    assert middle.compiles == before.compiles + 1

    second = TransformersBackend(tiny_dir, engine=engine)
    assert second.compile(schema) == 0.0
    (generation,) = _generate(second, [_request(schema=schema, max_new_tokens=5)])
    assert generation.extra["compile_cached"] is True
    after = compile_cache_stats()
    assert after.compiles == middle.compiles
    assert after.hits >= middle.hits + 2


def test_generate_runs_off_the_event_loop(backend: TransformersBackend) -> None:
    async def main() -> int:
        ticks = 0
        task = asyncio.create_task(backend.generate([_request(schema=None, max_new_tokens=150)]))
        while not task.done():
            await asyncio.sleep(0.001)
            ticks += 1
        await task
        return ticks

    assert asyncio.run(main()) > 1


def test_empty_batch(backend: TransformersBackend) -> None:
    assert _generate(backend, []) == []


def test_tiny_random_alias_builds_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEXJUDGE_CACHE_DIR", str(tmp_path))
    backend = TransformersBackend("tiny-random", engine=available_engines()[0])
    assert backend.model == "tiny-random"
    assert any(p.name.startswith("tiny-qwen2_5_vl-0-") for p in tmp_path.iterdir())


# ------------------------------------------------------------------ errors


def test_missing_model_path_is_a_clear_backend_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(BackendError) as caught:
        TransformersBackend(missing)
    assert not caught.value.retryable
    assert str(missing) in str(caught.value)
    assert "tiny-random" in str(caught.value)


def test_unloadable_directory_is_a_clear_backend_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BackendError) as caught:
        TransformersBackend(tmp_path)
    assert not caught.value.retryable
    assert caught.value.original is not None
    assert "Point `model=`" in str(caught.value)


def test_hub_id_offline_is_a_clear_backend_error() -> None:
    # conftest sets HF_HUB_OFFLINE=1: the hub is never asked.
    with pytest.raises(BackendError) as caught:
        TransformersBackend("flexjudge-tests/no-such-model")
    assert "flexjudge-tests/no-such-model" in str(caught.value)
    assert not caught.value.retryable


def test_unknown_engine_is_refused(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown constraint engine"):
        TransformersBackend(tiny_dir, engine="regex")  # type: ignore[arg-type]


# ------------------------------------------------------------------ the judgment schemas


@pytest.mark.parametrize("engine", ENGINES)
def test_released_flex_schema_decodes_valid(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repository's flex wire schema (unbounded strings) under the tiny-random default closing bias."""
    monkeypatch.setenv("FLEXJUDGE_CACHE_DIR", str(tmp_path))
    schema_file = Path(__file__).parent.parent / "schemas" / "flex-image.schema.json"
    schema = json.loads(schema_file.read_text())
    backend = TransformersBackend("tiny-random", engine=engine)  # type: ignore[arg-type]
    requests = [
        _request(images=2, schema=schema, max_new_tokens=1500, temperature=1.0, seed=s) for s in range(4)
    ]
    for generation in _generate(backend, requests):
        assert generation.finish_reason == "stop", generation.text[-200:]
        jsonschema.validate(json.loads(generation.text), schema)


def test_outlines_core_index_is_reused_by_a_new_process(tmp_path: Path) -> None:
    pytest.importorskip("outlines_core")
    code = (
        "import json; from flexjudge.backends.transformers import TransformersBackend, compile_cache_stats;"
        "from flexjudge.constraints import pair_constraint;"
        "b = TransformersBackend('tiny-random', engine='outlines_core');"
        "b.compile(pair_constraint('image', 'flex', max_string_length=6));"
        "s = compile_cache_stats(); print(json.dumps([s.compiles, s.disk_hits]))"
    )
    env = {**os.environ, "FLEXJUDGE_CACHE_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", code]
    runs = [
        subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=True)
        for _ in range(2)
    ]
    first, second = (json.loads(r.stdout.strip().splitlines()[-1]) for r in runs)
    assert first == [1, 0] and second == [0, 1]


@pytest.mark.parametrize("engine", ENGINES)
def test_overlapped_masks_give_the_same_tokens(tiny_dir: Path, engine: str) -> None:
    """Masks computed on the worker during the forward pass decode exactly what masks computed after it do,
    with rows finishing at different steps."""
    outputs = {}
    for overlap in (False, True):
        backend = TransformersBackend(tiny_dir, engine=engine, overlap_masks=overlap)  # type: ignore[arg-type]
        requests = [_request(f"prompt {i}", images=2, temperature=1.0, seed=5) for i in range(3)]
        generations = _generate(backend, requests)
        steps = max(g.usage.completion_tokens for g in generations)
        overlapped = generations[0].extra["mask_overlapped_steps"]
        assert overlapped == (steps if overlap else 0)
        outputs[overlap] = [g.text for g in generations]
        for generation in generations:
            assert generation.constrained
            jsonschema.validate(json.loads(generation.text), SCHEMA)
    assert outputs[True] == outputs[False]
    assert len(set(len(t) for t in outputs[True])) > 1  # the rows did finish at different steps


def test_overlap_defaults_off_on_cpu(tiny_dir: Path) -> None:
    assert TransformersBackend(tiny_dir).overlap_masks is False


def test_text_overrides_widen_the_language_model(tmp_path: Path) -> None:
    directory = build_tiny_model(
        tmp_path / "wide",
        text_overrides={
            "hidden_size": 128,
            "num_attention_heads": 4,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
        },
    )
    config = json.loads((directory / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == 128
    assert config["vision_config"]["out_hidden_size"] == 128  # the vision merger feeds the wider text stack
    (generation,) = _generate(TransformersBackend(directory), [_request(images=2)])
    jsonschema.validate(json.loads(generation.text), SCHEMA)


def test_a_grammar_constrains_the_output_on_llguidance_only(tiny_dir: Path) -> None:
    import dataclasses

    grammar = 'start: "{\\"ok\\":" ("1" | "2") "}"'
    request = dataclasses.replace(_request(), constraint=Constraint(schema=None, grammar=grammar))
    (generation,) = _generate(TransformersBackend(tiny_dir, engine="llguidance"), [request])
    assert generation.constrained and generation.text in ('{"ok":1}', '{"ok":2}')
    other = [e for e in available_engines() if e != "llguidance"]
    if other:
        with pytest.raises(BackendError, match="llguidance"):
            _generate(TransformersBackend(tiny_dir, engine=other[0]), [request])


# ------------------------------------------------------------------ engines: one protocol, one module each


def test_every_engine_gets_the_form_of_the_constraint_it_takes() -> None:
    grammar = 'start: "{\\"ok\\":" ("1" | "2") "}"'
    both = Constraint(schema=SCHEMA, grammar=grammar)
    assert set(engine_names()) >= {"llguidance", "outlines_core", "xgrammar"}
    for name in engine_names():
        engine = get_engine(name)
        expected = (grammar, "grammar") if engine.takes_grammars else (SCHEMA, "schema")
        assert constraint_form(engine, both) == expected, name
        assert constraint_form(engine, Constraint(schema=SCHEMA)) == (SCHEMA, "schema")


@pytest.mark.parametrize("engine", ENGINES)
def test_generation_records_the_engine_and_the_form_it_enforced(tiny_dir: Path, engine: str) -> None:
    grammar = 'start: "{\\"summary\\":\\"g\\",\\"winner\\":\\"Image 1\\",\\"criteria\\":[]}"'
    request = dataclasses.replace(_request(), constraint=Constraint(schema=SCHEMA, grammar=grammar))
    backend = TransformersBackend(tiny_dir, engine=engine)
    (generation,) = _generate(backend, [request])
    assert generation.engine == engine and generation.constrained
    if get_engine(engine).takes_grammars:
        assert generation.enforced == "grammar" and json.loads(generation.text)["criteria"] == []
    else:
        assert generation.enforced == "schema"
        jsonschema.validate(json.loads(generation.text), SCHEMA)
    (free,) = _generate(backend, [_request(schema=None, max_new_tokens=4)])
    assert free.engine is None and free.enforced is None and not free.constrained


# ------------------------------------------------------------------ the compile cache, bounded


@pytest.fixture
def blocked_compiles(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, list[str]]]:
    """llguidance compiles of schemas described "blocked" wait for the event; every compile is logged."""
    engine = get_engine("llguidance")
    release, calls = threading.Event(), []
    real = engine.compile

    def compile(table: Any, constraint: dict[str, Any] | str) -> Any:
        description = constraint.get("description", "") if isinstance(constraint, dict) else ""
        calls.append(description)
        if description.startswith("blocked"):
            assert release.wait(30), "never released"
        return real(table, constraint)

    monkeypatch.setattr(engine, "compile", compile)
    yield release, calls
    release.set()


def _wait_for(condition: Any, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "the threads never got there"
        time.sleep(0.005)


def test_a_schema_requested_twice_at_once_compiles_once(
    backends: dict[str, TransformersBackend], blocked_compiles: tuple[threading.Event, list[str]]
) -> None:
    from flexjudge.backends.engines import _compiled

    release, calls = blocked_compiles
    backend = backends["llguidance"]
    schema = dict(SCHEMA, description="blocked: twice at once")
    before = compile_cache_stats()
    seconds: list[float] = []
    threads = [threading.Thread(target=lambda: seconds.append(backend.compile(schema))) for _ in range(2)]
    for thread in threads:
        thread.start()
    # Both threads are in: one compiling (held by the event), one waiting on that key's lock.
    _wait_for(lambda: any(w.users == 2 for w in _compiled._compiled._building.values()))
    release.set()
    for thread in threads:
        thread.join(30)
    after = compile_cache_stats()
    assert calls.count(schema["description"]) == 1
    assert (after.compiles - before.compiles, after.hits - before.hits) == (1, 1)
    assert sorted(s == 0.0 for s in seconds) == [False, True]  # the second got the first's result


def test_an_unrelated_compile_does_not_wait_for_another(
    backends: dict[str, TransformersBackend], blocked_compiles: tuple[threading.Event, list[str]]
) -> None:
    release, calls = blocked_compiles
    backend = backends["llguidance"]
    backend.compile(SCHEMA)  # the tokenizer table exists: only the compiles themselves remain
    slow = threading.Thread(target=backend.compile, args=(dict(SCHEMA, description="blocked: slow"),))
    slow.start()
    _wait_for(lambda: "blocked: slow" in calls)
    assert backend.compile(dict(SCHEMA, description="unrelated")) > 0
    assert slow.is_alive()  # the blocked compile is still in progress
    release.set()
    slow.join(30)
    assert not slow.is_alive()


def test_compiled_constraints_are_evicted_past_the_bound(backends: dict[str, TransformersBackend]) -> None:
    backend = backends["llguidance"]
    limit = compile_cache_stats().limit
    schemas = [dict(SCHEMA, description=f"evicted {i}") for i in range(3)]
    try:
        set_compile_cache_size(2)
        before = compile_cache_stats()
        for schema in schemas:
            assert backend.compile(schema) > 0
        middle = compile_cache_stats()
        assert middle.entries == 2 and middle.evictions >= before.evictions + 1
        assert backend.compile(schemas[2]) == 0.0  # still held
        assert backend.compile(schemas[0]) > 0  # the least recently used was dropped: compiled again
        assert compile_cache_stats().compiles == middle.compiles + 1
    finally:
        set_compile_cache_size(limit)


# ------------------------------------------------------------------ unique names, as the constraint says


def _pointwise_schema() -> dict[str, Any]:
    """The pointwise shape (dimensions holding criteria) with names of one to three letters from a-d, so
    that a random model repeats them often when nothing stops it."""
    criterion = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "pattern": "^[a-d]{1,3}$"},
            "evidence": {"type": "string", "maxLength": 2},
            "score": {"enum": [1, 2, 3]},
        },
        "required": ["name", "evidence", "score"],
        "additionalProperties": False,
    }
    dimension = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 3},
            "criteria": {"type": "array", "items": criterion, "minItems": 5, "maxItems": 5},
            "score": {"enum": [1, 2, 3]},
        },
        "required": ["name", "criteria", "score"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"dimensions": {"type": "array", "items": dimension, "minItems": 1, "maxItems": 1}},
        "required": ["dimensions"],
        "additionalProperties": False,
    }


def test_pointwise_criterion_names_stay_unique_when_the_constraint_asks(tiny_dir: Path) -> None:
    from flexjudge.anchors import canonical_name

    backend = TransformersBackend(tiny_dir, closing_bias=15.0)  # short names: repeats come quickly
    schema = _pointwise_schema()

    def repeats(unique: frozenset[str]) -> list[int]:
        requests = [
            dataclasses.replace(
                _request(schema=None, max_new_tokens=300, temperature=1.0, seed=1),
                constraint=Constraint(schema=schema, unique_names=unique),
            )
            for _ in range(4)
        ]
        counts = []
        for generation in _generate(backend, requests):
            assert generation.finish_reason == "stop"
            (dimension,) = json.loads(generation.text)["dimensions"]
            names = [canonical_name(c["name"]) for c in dimension["criteria"]]
            counts.append(len(names) - len(set(names)))
        return counts

    assert sum(repeats(frozenset())) > 0  # nothing asked: the random model repeats itself
    assert repeats(frozenset({"dims"})) == repeats(frozenset())  # another array's key changes nothing
    assert repeats(frozenset({"criteria"})) == [0, 0, 0, 0]


# ------------------------------------------------------------------ hub ids: the cache first, no waiting


HUB_ID = "CodeGoat24/UnifiedReward-Flex-qwen3vl-8b"


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _online(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)


def _assert_points_elsewhere(error: BackendError) -> None:
    message = str(error)
    assert HUB_ID in message and not error.retryable
    assert "base_url=" in message and "--base-url" in message and "local directory" in message


def test_an_uncached_hub_id_offline_fails_at_once(empty_hub_cache: Path) -> None:
    with pytest.raises(BackendError) as caught:
        TransformersBackend(HUB_ID)
    _assert_points_elsewhere(caught.value)
    assert "HF_HUB_OFFLINE" in str(caught.value)


def test_an_uncached_hub_id_with_the_hub_refusing_connections_fails_at_once(
    empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: connections are refused
    _online(monkeypatch, f"http://127.0.0.1:{port}")
    with pytest.raises(BackendError) as caught:
        TransformersBackend(HUB_ID)
    _assert_points_elsewhere(caught.value)
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_an_uncached_hub_id_with_a_silent_hub_fails_at_once(
    empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub that accepts connections and never answers (a proxy or firewall that holds them)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        _online(monkeypatch, f"http://127.0.0.1:{silent.getsockname()[1]}")
        with pytest.raises(BackendError) as caught:
            TransformersBackend(HUB_ID)
    _assert_points_elsewhere(caught.value)


def test_a_cached_hub_id_loads_from_the_cache(
    empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch, tiny_dir: Path
) -> None:
    import shutil

    repo = empty_hub_cache / "models--flexjudge-tests--cached-tiny"
    shutil.copytree(tiny_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    with socket.socket() as hub:  # a hub that would take connections: none may come
        hub.bind(("127.0.0.1", 0))
        hub.listen(8)
        hub.setblocking(False)
        _online(monkeypatch, f"http://127.0.0.1:{hub.getsockname()[1]}")
        backend = TransformersBackend("flexjudge-tests/cached-tiny")
        with pytest.raises(BlockingIOError):
            hub.accept()  # nobody asked the hub
    (generation,) = _generate(backend, [_request(max_new_tokens=300)])
    jsonschema.validate(json.loads(generation.text), SCHEMA)


# ------------------------------------------------------------------ devices and dtypes


def test_device_and_dtype_default_to_the_machine(tiny_dir: Path) -> None:
    import torch

    backend = TransformersBackend(tiny_dir)
    expected = ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
    assert (backend.device.split(":")[0], backend.dtype) == expected
    assert next(backend._model.parameters()).dtype == expected[1]


def test_bfloat16_loads_and_decodes_under_a_schema(tiny_dir: Path) -> None:
    import torch

    backend = TransformersBackend(tiny_dir, device="cpu", dtype="bfloat16")
    assert next(backend._model.parameters()).dtype == torch.bfloat16
    (generation,) = _generate(backend, [_request(images=2)])
    jsonschema.validate(json.loads(generation.text), SCHEMA)


def test_an_unknown_dtype_is_refused(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown dtype"):
        TransformersBackend(tiny_dir, dtype="float7")


# ------------------------------------------------------------------ CUDA branches (benchmarks/gpu_check.sh)


@CUDA
def test_bitmask_apply_on_cuda_matches_the_cpu() -> None:
    import torch

    from flexjudge.backends.engines._masking import apply_bitmask

    generator = torch.Generator().manual_seed(0)
    vocab = 1000
    words = (3, (vocab + 31) // 32)
    bitmask = torch.randint(-(2**31), 2**31 - 1, words, dtype=torch.int32, generator=generator)
    scores = torch.randn(3, vocab, generator=generator)
    on_cpu, on_gpu = scores.clone(), scores.cuda()
    apply_bitmask(on_cpu, bitmask)
    apply_bitmask(on_gpu, bitmask)
    assert torch.equal(on_gpu.cpu(), on_cpu)
    allowed = [bool(int(bitmask[1, t >> 5]) >> (t & 31) & 1) for t in range(vocab)]
    assert [bool(torch.isfinite(on_cpu[1, t])) for t in range(vocab)] == allowed


@CUDA
@pytest.mark.parametrize("engine", ENGINES)
def test_overlapped_masks_on_cuda_give_the_same_tokens(tiny_dir: Path, engine: str) -> None:
    outputs = {}
    for overlap in (False, True):
        backend = TransformersBackend(tiny_dir, engine=engine, device="cuda", overlap_masks=overlap)
        requests = [_request(f"prompt {i}", images=2, temperature=1.0, seed=5) for i in range(3)]
        generations = _generate(backend, requests)
        steps = max(g.usage.completion_tokens for g in generations)
        assert generations[0].extra["mask_overlapped_steps"] == (steps if overlap else 0)
        outputs[overlap] = [g.text for g in generations]
        for generation in generations:
            assert generation.constrained
            jsonschema.validate(json.loads(generation.text), SCHEMA)
    assert outputs[True] == outputs[False]


@CUDA
def test_bfloat16_is_the_default_on_a_gpu(tiny_dir: Path) -> None:
    import torch

    backend = TransformersBackend(tiny_dir)
    assert backend.device == "cuda" and backend.overlap_masks
    if torch.cuda.is_bf16_supported():
        assert next(backend._model.parameters()).dtype == torch.bfloat16
    (generation,) = _generate(backend, [_request(images=2)])
    jsonschema.validate(json.loads(generation.text), SCHEMA)
