"""Local vision-language models through transformers, with constrained decoding.

`TransformersBackend` loads a model and its processor (`AutoModelForImageTextToText`, `AutoProcessor`),
renders each request with the model's chat template (images where their parts sit), and runs batched HF
`generate`.
A request with a JSON Schema is decoded under a token mask from one of three constraint engines:
llguidance (the default), outlines-core or xgrammar.

Choices, and why:
- Compiled constraints are cached per process, keyed by (engine, tokenizer fingerprint, schema hash): a second
  backend on the same tokenizer never compiles the same schema again. `compile_cache_stats` counts.
- The engines are driven directly, one mask per batch row, filled for the whole batch per step and applied
  eagerly. Outlines' own logits processors compile their mask kernel with `torch.compile` (15-20 s on the
  first call in a process on CPU) and its llguidance processor feeds padding to finished rows, which warns
  on every batch whose rows end at different steps. The outlines-core vocabulary is still built the way
  Outlines builds it.
- JSON whitespace is bounded on every engine (llguidance `whitespace_flexible` off unless the schema sets
  it, xgrammar `any_whitespace=False`, outlines-core's single optional space): a model that likes
  whitespace, a random one above all, otherwise emits it until the budget runs out.
- Under a schema, tokens holding control characters are banned: JSON strings cannot carry them raw, and
  xgrammar lets them through in length-bounded strings. Special tokens other than the stop tokens are
  banned everywhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from flexjudge.backends.base import Generation, ImagePart, Request, TextPart, Usage
from flexjudge.errors import BackendError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_ENGINE",
    "CompileCacheStats",
    "Engine",
    "TransformersBackend",
    "available_engines",
    "clear_compile_cache",
    "compile_cache_stats",
]

Engine = Literal["llguidance", "outlines_core", "xgrammar"]
DEFAULT_ENGINE: Engine = "llguidance"
"""Chosen by measurement (`benchmarks/constrained.py`, 2-core CPU, ~150k-token vocabulary): ready in ~1.5 s
cold and ~2 ms per further schema, under a millisecond of mask per row per step with or without `maxLength`,
and one small wheel. xgrammar masks unbounded schemas faster but is optional (it pulls triton) and its masks
cost ~8x more once strings carry `maxLength`; outlines-core needs seconds per schema, and ran out of memory
(over 23 GB) compiling the pairwise schema with every string bounded."""

_ENGINE_MODULES = {"llguidance": "llguidance", "outlines_core": "outlines_core", "xgrammar": "xgrammar"}
_TINY_ALIASES: dict[str, Literal["qwen2_5_vl", "qwen3_vl"]] = {
    "tiny-random": "qwen2_5_vl",
    "tiny-random-qwen2.5-vl": "qwen2_5_vl",
    "tiny-random-qwen3-vl": "qwen3_vl",
}
_LOAD_HINT = (
    "Point `model=` at a local directory holding the weights (config.json, *.safetensors and the processor "
    "files), or at a hub id already in the local cache (`hf download <id>` on a machine with network "
    "access, then copy the cache); `model='tiny-random'` runs a tiny random-weight model to test the "
    "machinery."
)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _untyped(module: str) -> Any:
    # outlines-core ships no type information and xgrammar is optional: typed as Any in every setup.
    return importlib.import_module(module)


def available_engines() -> list[Engine]:
    """The constraint engines importable here, in order of preference."""
    return [e for e in get_args(Engine) if importlib.util.find_spec(_ENGINE_MODULES[e]) is not None]


# --------------------------------------------------------------------------- compile cache


@dataclass(frozen=True)
class CompileCacheStats:
    """Counters of the process-wide constraint cache (never reset except by `clear_compile_cache`)."""

    compiles: int
    """Schemas compiled (cache misses)."""
    hits: int
    """Requests for a compiled schema answered from the cache."""
    tokenizer_builds: int
    """Engine-side tokenizer tables built (one per engine and tokenizer)."""
    disk_hits: int
    """Compiles skipped because an earlier process left the result on disk (outlines-core)."""
    entries: int


_cache_lock = threading.Lock()
_engine_tokenizers: dict[tuple[Any, ...], Any] = {}
_compiled: dict[tuple[Any, ...], tuple[Any, float]] = {}
_stats = {"compiles": 0, "hits": 0, "tokenizer_builds": 0, "disk_hits": 0}


def compile_cache_stats() -> CompileCacheStats:
    with _cache_lock:
        return CompileCacheStats(entries=len(_compiled), **_stats)


def clear_compile_cache() -> None:
    """Forget every compiled constraint and engine tokenizer (the counters are kept)."""
    with _cache_lock:
        _engine_tokenizers.clear()
        _compiled.clear()


@dataclass(frozen=True)
class _TokenizerView:
    """What the engines need to know about a tokenizer; `key` identifies it by content, not object."""

    hf: Any
    key: str
    width: int
    """Logits width: the model's vocabulary, often padded beyond the tokenizer's."""
    eos: int
    stops: tuple[int, ...]
    special: frozenset[int]


def _fingerprint(tokenizer: Any) -> str:
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return digest.hexdigest()[:24]


def _schema_hash(schema: dict[str, Any]) -> str:
    text = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _engine_tokenizer(engine: Engine, tok: _TokenizerView) -> Any:
    """The engine's tokenizer table, built once per (engine, tokenizer, width, stops); hold the lock."""
    key = (engine, tok.key, tok.width, tok.stops)
    if key in _engine_tokenizers:
        return _engine_tokenizers[key]
    if engine == "llguidance":
        import llguidance.hf

        table: Any = llguidance.hf.from_tokenizer(tok.hf, n_vocab=tok.width, eos_token=list(tok.stops))
    elif engine == "xgrammar":
        xgrammar = _untyped("xgrammar")
        info = xgrammar.TokenizerInfo.from_huggingface(
            tok.hf, vocab_size=tok.width, stop_token_ids=list(tok.stops)
        )
        table = xgrammar.GrammarCompiler(info)
    else:
        from outlines.models.transformers import TransformerTokenizer

        vocabulary_cls = _untyped("outlines_core").Vocabulary

        # Outlines' token -> text conversion, minus special tokens: they must never match text inside a
        # JSON string (a second stop token there would end the output mid-string).
        to_text = TransformerTokenizer(tok.hf).convert_token_to_string
        table_map: dict[str, list[int]] = {}
        for token, token_id in tok.hf.get_vocab().items():
            if token_id not in tok.special and token_id < tok.width:
                table_map.setdefault(to_text(token), []).append(token_id)
        table = vocabulary_cls(tok.eos, table_map)
    _stats["tokenizer_builds"] += 1
    _engine_tokenizers[key] = table
    return table


def _compile(engine: Engine, tok: _TokenizerView, schema: dict[str, Any]) -> tuple[Any, float, bool]:
    """The compiled constraint for `schema`: (artefact, seconds the compile took, whether it was cached)."""
    key = (engine, tok.key, tok.width, tok.stops, _schema_hash(schema))
    with _cache_lock:
        if key in _compiled:
            _stats["hits"] += 1
            artefact, seconds = _compiled[key]
            return artefact, seconds, True
        start = time.perf_counter()
        on_disk = _disk_path(key) if engine == "outlines_core" else None
        if on_disk is not None and on_disk.is_file():
            artefact = _load_index(on_disk)
            if artefact is not None:
                _stats["disk_hits"] += 1
                seconds = time.perf_counter() - start
                _compiled[key] = (artefact, seconds)
                return artefact, seconds, True
        table = _engine_tokenizer(engine, tok)
        text = json.dumps(schema)
        try:
            artefact = _compile_with(engine, table, text)
        except BackendError:
            raise
        except Exception as exc:  # engines raise assorted types for unsupported schemas
            raise BackendError(
                f"the {engine} engine cannot compile this JSON Schema: {exc}", retryable=False, original=exc
            ) from None
        seconds = time.perf_counter() - start
        _stats["compiles"] += 1
        _compiled[key] = (artefact, seconds)
        if on_disk is not None:
            _save_index(on_disk, artefact)
        return artefact, seconds, False


# outlines-core indexes take seconds to minutes to build at a real vocabulary and pickle cleanly, so they
# are kept on disk for the next process. (llguidance and xgrammar compile a schema in milliseconds; their
# one-off cost is the tokenizer table, ~1.5 s at 150k tokens, which their APIs cannot serialise.)
def _disk_path(key: tuple[Any, ...]) -> Path:
    from flexjudge.backends.tiny import cache_root

    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
    return cache_root() / "constraints" / f"outlines_core-{digest}.pickle"


def _load_index(path: Path) -> Any:
    import pickle

    try:
        with path.open("rb") as fh:
            return pickle.load(fh)  # our own cache directory, written by `_save_index`
    except Exception:  # a damaged or foreign file: compile again and overwrite it
        return None


def _save_index(path: Path, artefact: Any) -> None:
    import pickle

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps(artefact))
        tmp.replace(path)  # atomic: a concurrent reader never sees half an index
    except OSError:
        pass  # a read-only cache only costs the next process a compile


def _compile_with(engine: Engine, table: Any, schema_json: str) -> Any:
    if engine == "llguidance":
        from llguidance import LLMatcher

        grammar = LLMatcher.grammar_from_json_schema(schema_json, defaults={"whitespace_flexible": False})
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, table)
        if is_error:
            raise BackendError(
                f"the llguidance engine rejects this JSON Schema: {messages[0]}", retryable=False
            )
        # Rows start from copies of this matcher: a copy costs microseconds, a new matcher milliseconds.
        return LLMatcher(table, grammar, log_level=0)
    if engine == "xgrammar":
        return table.compile_json_schema(schema_json, any_whitespace=False)
    regex = _untyped("outlines_core.json_schema").build_regex_from_schema(schema_json, None)
    return _untyped("outlines_core").Index(regex, table)


# --------------------------------------------------------------------------- masking


class _Rows:
    """Grammar state for each row of a batch, for one engine."""

    def __init__(self, engine: Engine, artefact: Any, batch: int) -> None:
        self.engine = engine
        if engine == "llguidance":
            self.m: list[Any] = [artefact.deep_copy() for _ in range(batch)]
        elif engine == "xgrammar":
            xgrammar = _untyped("xgrammar")
            self.m = [xgrammar.GrammarMatcher(artefact) for _ in range(batch)]
            self._batch_fill = xgrammar.BatchGrammarMatcher()
        else:
            guide = _untyped("outlines_core").Guide
            self.m = [guide(artefact) for _ in range(batch)]

    def advance(self, row: int, token: int) -> str | None:
        """Feed the sampled token; returns an error message when the engine refuses it."""
        m = self.m[row]
        if self.engine == "llguidance":
            return None if m.consume_token(token) else (m.get_error() or f"token {token} refused")
        if self.engine == "xgrammar":
            return None if m.accept_token(token) else f"token {token} refused"
        try:
            m.advance(token_id=token, return_tokens=False)
        except ValueError as exc:
            return str(exc)
        return None

    def fill(self, bitmask: torch.Tensor, rows: list[int]) -> None:
        width = bitmask.shape[1]
        if self.engine == "llguidance":
            if len(rows) > 1 and _PARALLEL_MASKS:
                _executor().unsafe_compute_mask_ptr(
                    [(self.m[i], i) for i in rows], bitmask.data_ptr(), width * 4, bitmask.shape[0]
                )
            else:
                for i in rows:
                    self.m[i].unsafe_compute_mask_ptr(bitmask[i].data_ptr(), width * 4)
        elif self.engine == "xgrammar":
            self._batch_fill.batch_fill_next_token_bitmask([self.m[i] for i in rows], bitmask, indices=rows)
        else:
            for i in rows:
                self.m[i].write_mask_into(bitmask[i].data_ptr(), width, 4)


_executor_instance: Any = None
# llguidance's thread pool only pays off with cores to spare beside torch's own threads (measured: on 2
# cores it is slower than filling the rows one after the other).
_PARALLEL_MASKS = (os.cpu_count() or 1) >= 8


def _executor() -> Any:
    global _executor_instance
    if _executor_instance is None:
        from llguidance import LLExecutor

        _executor_instance = LLExecutor()
    return _executor_instance


def _apply_bitmask(scores: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set to -inf every logit whose bit is 0 (bit j of int32 word k is token 32k + j)."""
    import torch

    vocab = scores.shape[1]
    if scores.device.type == "cpu":
        import numpy as np

        bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, count=vocab, bitorder="little")
        np.logical_not(bits, out=bits)
        forbidden = torch.from_numpy(bits).view(torch.bool)
    else:
        mask = bitmask.to(scores.device, non_blocking=True)
        shifts = torch.arange(32, device=scores.device, dtype=torch.int32)
        forbidden = (((mask.unsqueeze(-1) >> shifts) & 1) == 0).view(mask.shape[0], -1)[:, :vocab]
    scores.masked_fill_(forbidden, float("-inf"))


class _ConstraintProcessor:
    """A HF logits processor that keeps every row of the batch inside the grammar."""

    def __init__(self, engine: Engine, artefact: Any, width: int, stops: frozenset[int]) -> None:
        self.engine, self.artefact, self.width, self.stops = engine, artefact, width, stops
        self.rows: _Rows | None = None
        self.done: list[bool] = []
        self.errors: dict[int, str] = {}
        self.mask_seconds = 0.0
        self.steps = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        start = time.perf_counter()
        batch = input_ids.shape[0]
        if self.rows is None:
            self.rows = _Rows(self.engine, self.artefact, batch)
            self.done = [False] * batch
            self.bitmask = torch.full((batch, (self.width + 31) // 32), -1, dtype=torch.int32)
        else:
            for i, token in enumerate(input_ids[:, -1].tolist()):
                if self.done[i]:
                    continue
                error = None if token in self.stops else self.rows.advance(i, token)
                if token in self.stops or error is not None:
                    # Finished (or broken) rows get padding from `generate`; an all-ones mask keeps their
                    # logits finite so sampling never sees a row of -inf.
                    self.done[i] = True
                    self.bitmask[i].fill_(-1)
                    if error is not None:
                        self.errors[i] = error
        live = [i for i in range(batch) if not self.done[i]]
        if live:
            self.rows.fill(self.bitmask, live)
        _apply_bitmask(scores, self.bitmask)
        self.mask_seconds += time.perf_counter() - start
        self.steps += 1
        return scores


class _AddBias:
    """A HF logits processor adding a fixed vector (-inf bans a token)."""

    def __init__(self, bias: torch.Tensor) -> None:
        self.bias = bias

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores + self.bias.to(scores.device)


# --------------------------------------------------------------------------- the backend


class TransformersBackend:
    """A local vision-language model (Qwen2.5-VL, Qwen3-VL, ...) run with transformers.

    `model` is a local directory or a hub id already in the local cache; `"tiny-random"` (or
    `"tiny-random-qwen3-vl"`) builds a tiny random-weight model, a smoke test of the machinery with
    meaningless output. `engine` picks the constraint engine (default: llguidance). `closing_bias` adds
    that much to the logits of tokens starting with `"` (and a third of it to `]` / `}`) under a schema,
    so random-weight models close strings and containers early; None means on (15) for tiny-random, off
    otherwise. Loading happens here, synchronously; `generate` runs off the event loop.

    Each `Generation.extra` holds `engine` (None for free text) and, under a schema, `compile_s`,
    `compile_cached`, `mask_ms_per_step` (the constraint's own cost per decode step) and, if the engine
    refused a token, `constraint_error` (then `constrained` is False: the text is not valid by construction).
    Seeded sampling is reproducible for the same batch composition: requests sharing schema, budget,
    temperature and seed run as one batch seeded once.
    """

    name = "transformers"

    def __init__(
        self,
        model: str | Path,
        *,
        engine: Engine | None = None,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        max_batch_size: int = 8,
        closing_bias: float | None = None,
    ) -> None:
        if engine is not None and engine not in get_args(Engine):
            raise ValueError(
                f"unknown constraint engine {engine!r}: use one of {', '.join(get_args(Engine))}"
            )
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.engine: Engine = engine or DEFAULT_ENGINE
        if self.engine not in available_engines():
            raise BackendError(
                f"the {self.engine} constraint engine is not installed: `pip install "
                f"{_ENGINE_MODULES[self.engine]}` or pick one of: {', '.join(available_engines()) or 'none'}",
                retryable=False,
            )
        self.model = str(model)
        self.device = device
        self.max_batch_size = max_batch_size
        self._lock = threading.Lock()
        path = self._resolve(self.model)
        self._processor, self._model = _load(self.model, path, device, dtype)
        tokenizer = self._processor.tokenizer
        generation = self._model.generation_config
        configured = generation.eos_token_id
        stops = {tokenizer.eos_token_id} | set(configured if isinstance(configured, list) else [configured])
        stops.discard(None)
        width = int(self._model.get_output_embeddings().weight.shape[0])
        self._tok = _TokenizerView(
            hf=tokenizer,
            key=_fingerprint(tokenizer),
            width=width,
            eos=int(tokenizer.eos_token_id),
            stops=tuple(sorted(stops)),
            special=frozenset(tokenizer.all_special_ids),
        )
        pad = generation.pad_token_id if generation.pad_token_id is not None else tokenizer.pad_token_id
        self._pad = int(pad if pad is not None else self._tok.eos)
        if closing_bias is None:
            closing_bias = 15.0 if self.model in _TINY_ALIASES else 0.0
        self._free_bias, self._json_bias = _biases(self._tok, closing_bias)

    @staticmethod
    def _resolve(model: str) -> Path | str:
        if model in _TINY_ALIASES:
            from flexjudge.backends.tiny import tiny_model_dir

            return tiny_model_dir(0, arch=_TINY_ALIASES[model])
        path = Path(model).expanduser()
        if path.exists():
            return path
        if _HUB_ID.fullmatch(model) and not model.startswith("."):
            return model
        raise BackendError(f"no model directory at {model}. {_LOAD_HINT}", retryable=False)

    def compile(self, schema: dict[str, Any]) -> float:
        """Compile `schema` for this backend's engine and tokenizer ahead of time; returns the seconds it
        took (0 when it was cached). `generate` compiles on first use anyway."""
        _, seconds, cached = _compile(self.engine, self._tok, schema)
        return 0.0 if cached else seconds

    async def generate(self, requests: list[Request]) -> list[Generation]:
        """One `Generation` per request, in order. Requests that share a schema and sampling settings run
        together in batches of up to `max_batch_size`."""
        if not requests:
            return []
        return await asyncio.to_thread(self._generate_sync, list(requests))

    async def aclose(self) -> None:
        self._model = None
        self._processor = None

    # ---------------------------------------------------------------- internals

    def _generate_sync(self, requests: list[Request]) -> list[Generation]:
        if self._model is None:
            raise BackendError("this TransformersBackend is closed", retryable=False)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, r in enumerate(requests):
            sampled = r.temperature > 0
            key = (
                None if r.schema is None else _schema_hash(r.schema),
                r.max_new_tokens,
                r.temperature if sampled else 0.0,
                r.seed if sampled else None,
            )
            groups.setdefault(key, []).append(i)
        out: list[Generation | None] = [None] * len(requests)
        with self._lock:
            for indices in groups.values():
                for start in range(0, len(indices), self.max_batch_size):
                    chunk = indices[start : start + self.max_batch_size]
                    for i, generation in zip(
                        chunk, self._run_batch([requests[i] for i in chunk]), strict=True
                    ):
                        out[i] = generation
        return [g for g in out if g is not None]

    def _render(self, request: Request) -> tuple[str, list[Any]]:
        conversation, images = [], []
        for message in request.messages:
            content: list[dict[str, str]] = []
            for part in message.parts:
                if isinstance(part, TextPart):
                    content.append({"type": "text", "text": part.text})
                elif isinstance(part, ImagePart):
                    content.append({"type": "image"})
                    images.append(part.image)
            conversation.append({"role": message.role, "content": content})
        text = self._processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return str(text), images

    def _run_batch(self, requests: Sequence[Request]) -> list[Generation]:
        import torch

        first = requests[0]
        texts, images = [], []
        for request in requests:
            text, request_images = self._render(request)
            texts.append(text)
            images.extend(request_images)
        inputs = self._processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        inputs = inputs.to(self._model.device)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()

        constraint: _ConstraintProcessor | None = None
        extra: dict[str, Any] = {"engine": None}
        processors: list[Callable[..., Any]] = []
        if first.schema is not None:
            artefact, seconds, cached = _compile(self.engine, self._tok, first.schema)
            constraint = _ConstraintProcessor(
                self.engine, artefact, self._tok.width, frozenset(self._tok.stops)
            )
            processors = [_AddBias(self._json_bias), constraint]
            extra = {"engine": self.engine, "compile_s": 0.0 if cached else seconds, "compile_cached": cached}
        else:
            processors = [_AddBias(self._free_bias)]

        from transformers import LogitsProcessorList

        kwargs: dict[str, Any] = {
            "max_new_tokens": first.max_new_tokens,
            "eos_token_id": list(self._tok.stops),
            "pad_token_id": self._pad,
            "logits_processor": LogitsProcessorList(processors),
        }
        if first.temperature > 0:
            # Neutralise a checkpoint's top-k / top-p: HF applies them before custom processors, and a
            # top-k that keeps only grammar-forbidden tokens leaves nothing to sample.
            kwargs.update(do_sample=True, temperature=first.temperature, top_k=0, top_p=1.0)
        else:
            kwargs.update(do_sample=False)
        device = self._model.device
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices), torch.inference_mode():
            if first.temperature > 0 and first.seed is not None:
                torch.manual_seed(first.seed)
            output = self._model.generate(**inputs, **kwargs)
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()

        generations = []
        for i, ids in enumerate(new_tokens):
            stop_at = next((k for k, t in enumerate(ids) if t in self._tok.stops), None)
            kept = ids if stop_at is None else ids[:stop_at]
            row_extra = dict(extra)
            error = constraint.errors.get(i) if constraint else None
            if error is not None:
                row_extra["constraint_error"] = error
            if constraint is not None and constraint.steps:
                row_extra["mask_ms_per_step"] = 1000 * constraint.mask_seconds / constraint.steps
            generations.append(
                Generation(
                    text=self._tok.hf.decode(kept, skip_special_tokens=True),
                    finish_reason="length" if stop_at is None else "stop",
                    constrained=first.schema is not None and error is None,
                    usage=Usage(
                        prompt_tokens=int(prompt_tokens[i]),
                        completion_tokens=len(kept) + (stop_at is not None),
                    ),
                    model=self.model,
                    extra=row_extra,
                )
            )
        return generations


_bias_cache: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}


def _biases(tok: _TokenizerView, closing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive logit vectors (free text, under a schema), built once per tokenizer and bias."""
    import torch

    key = (tok.key, tok.width, tok.stops, closing)
    with _cache_lock:
        if key in _bias_cache:
            return _bias_cache[key]
    inf = float("-inf")
    # Ids past the tokenizer (a padded embedding matrix) are no tokens at all; special tokens other
    # than the stop tokens never belong in an answer.
    free = [inf] * tok.width
    schema = [inf] * tok.width
    for token, token_id in tok.hf.get_vocab().items():
        if token_id >= tok.width:
            continue
        if token_id in tok.stops or token_id not in tok.special:
            free[token_id] = schema[token_id] = 0.0
        if token_id in tok.special:
            continue
        text = tok.hf.convert_tokens_to_string([token])
        if any(ord(c) < 0x20 for c in text):
            schema[token_id] = inf
        elif closing and text.startswith('"'):
            schema[token_id] = closing
        elif closing and text[:1] in ("]", "}"):
            schema[token_id] = closing / 3
    result = torch.tensor(free), torch.tensor(schema)
    with _cache_lock:
        _bias_cache[key] = result
    return result


def _load(name: str, path: Path | str, device: str, dtype: str | torch.dtype | None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import flexjudge.backends.tiny as tiny  # registers the image-only processors

    if dtype is None:
        dtype = torch.float32 if device == "cpu" else "auto"
    elif isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    auto_model: Any = AutoModelForImageTextToText  # untyped
    auto_processor: Any = AutoProcessor
    try:
        model = auto_model.from_pretrained(
            path, dtype=dtype, device_map=None if device == "cpu" else device
        ).eval()
    except Exception as exc:  # transformers and the hub raise OSError, ValueError, KeyError, ...
        reason = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        raise BackendError(
            f"cannot load model {name!r}: {reason}. {_LOAD_HINT}", retryable=False, original=exc
        ) from None
    processor: Any = None
    try:
        processor = auto_processor.from_pretrained(path)
    except Exception:  # stock Qwen-VL processors need torchvision for their video processor
        processor = None
    if processor is None or not hasattr(processor, "image_processor"):
        image_only = tiny.image_only_processor_class(getattr(model.config, "model_type", ""))
        try:
            processor = image_only.from_pretrained(path) if image_only is not None else None
        except Exception as exc:
            raise BackendError(
                f"cannot load the processor of {name!r}: {exc}", retryable=False, original=exc
            ) from None
    if processor is None:
        raise BackendError(
            f"{name!r} has no image processor: flexjudge needs a vision-language model. {_LOAD_HINT}",
            retryable=False,
        )
    processor.tokenizer.padding_side = "left"  # batched generation continues every row from its end
    return processor, model
