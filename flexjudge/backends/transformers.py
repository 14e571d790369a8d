"""Local vision-language models through transformers, with constrained decoding.

`TransformersBackend` loads a model and its processor (`AutoModelForImageTextToText`, `AutoProcessor`),
renders each request with the model's chat template (images where their parts sit), and runs batched HF
`generate`.
A request with a JSON Schema is decoded under a token mask from one of three constraint engines:
llguidance (the default), outlines-core or xgrammar.

Choices, and why (the engine side lives in `_engines.py`):
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
import functools
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from flexjudge.backends._engines import (
    _ENGINE_MODULES,
    DEFAULT_ENGINE,
    CompileCacheStats,
    Engine,
    _AddBias,
    _cache_lock,
    _compile,
    _ConstraintProcessor,
    _fingerprint,
    _schema_hash,
    _TokenizerView,
    available_engines,
    clear_compile_cache,
    compile_cache_stats,
)
from flexjudge.backends._names import closers
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


# --------------------------------------------------------------------------- the backend


class TransformersBackend:
    """A local vision-language model (Qwen2.5-VL, Qwen3-VL, ...) run with transformers.

    `model` is a local directory or a hub id already in the local cache; `"tiny-random"` (or
    `"tiny-random-qwen3-vl"`) builds a tiny random-weight model, a smoke test of the machinery with
    meaningless output. `engine` picks the constraint engine (default: llguidance). `closing_bias` adds
    that much to the logits of tokens starting with `"` (and a third of it to `]` / `}`) under a schema,
    so random-weight models close strings and containers early; None means on (15) for tiny-random, off
    otherwise. Loading happens here, synchronously; `generate` runs off the event loop.

    `unique_names` keeps the criterion names of a dimension distinct while decoding a judgment (see
    `_names.py`: no grammar can); `Generation.extra["name_guard_masked"]` counts the tokens it masked.
    `overlap_masks` computes each step's mask on a worker thread while the forward pass runs (see
    `_ConstraintProcessor`); off, after the forward pass, as Outlines does. None (the default): on for
    accelerators, off on CPU, as measured (`benchmarks/constrained.py`).

    Each `Generation.extra` holds `engine` (None for free text) and, under a schema, `compile_s`,
    `compile_cached`, `mask_ms_per_step` (the grammar's own work per decode step),
    `mask_wait_ms_per_step` (what the decode loop paid for it per step), `mask_overlapped_steps` and, if
    the engine refused a token, `constraint_error` (then `constrained` is False: the text is not valid by
    construction).
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
        overlap_masks: bool | None = None,
        unique_names: bool = True,
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
        # Measured on 2 CPU cores: no gain on a compute-bound CPU model (1.02x either way at 150k tokens)
        # and a loss on the tiny one (the worker fights the forward pass for the GIL); on an accelerator
        # the host is free while the forward pass runs, which is what overlapping uses.
        self.overlap_masks = overlap_masks if overlap_masks is not None else device != "cpu"
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
        self.unique_names = unique_names
        self._closers = closers((self._tok.key, self._tok.width), lambda: _token_bytes(self._tok))

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
        digests: dict[int, str] = {}  # requests usually share one constraint object: hash it once
        for i, r in enumerate(requests):
            sampled = r.temperature > 0
            constraint = _constraint(r, self.engine)
            if constraint is not None and id(constraint) not in digests:
                digests[id(constraint)] = _schema_hash(constraint)
            key = (
                None if constraint is None else digests[id(constraint)],
                r.constraint.unique_names if r.constraint is not None else None,
                tuple(sorted((r.chat_template_kwargs or {}).items())),
                r.top_p,
                r.max_new_tokens,
                r.temperature if sampled else 0.0,
                r.seed if sampled else None,
            )
            groups.setdefault(key, []).append(i)
        out: list[Generation | None] = [None] * len(requests)
        with self._lock:
            for key, indices in groups.items():
                for start in range(0, len(indices), self.max_batch_size):
                    chunk = indices[start : start + self.max_batch_size]
                    batch = self._run_batch([requests[i] for i in chunk], digest=key[0])
                    for i, generation in zip(chunk, batch, strict=True):
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
        options = {k: v for k, v in (request.chat_template_kwargs or {}).items() if k in self._template_reads}
        text = self._processor.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True, **options
        )
        return str(text), images

    @functools.cached_property
    def _template_reads(self) -> frozenset[str]:
        """The variables the chat template reads. An option it does not read (`enable_thinking` on a
        Qwen2.5-VL template) means nothing to it, and transformers would pass it on to the processor with
        a warning; this is the rule transformers itself uses to tell the two apart."""
        from transformers.utils.chat_template_utils import _get_template_variables

        template = self._processor.chat_template
        texts = template.values() if isinstance(template, dict) else [template]
        return frozenset().union(*(_get_template_variables(t) for t in texts if t))

    def _run_batch(self, requests: Sequence[Request], *, digest: str | None) -> list[Generation]:
        """One batch of requests sharing a constraint (`digest`: its `_schema_hash`) and sampling."""
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
        constraint_spec = _constraint(first, self.engine)
        if constraint_spec is not None:
            digest = digest or _schema_hash(constraint_spec)
            artefact, seconds, cached = _compile(self.engine, self._tok, constraint_spec, digest=digest)
            constraint = _ConstraintProcessor(
                self.engine,
                artefact,
                self._tok.width,
                frozenset(self._tok.stops),
                overlap=self.overlap_masks,
                names=self._closers
                if self.unique_names and first.constraint is not None and first.constraint.unique_names
                else None,
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
            kwargs.update(do_sample=True, temperature=first.temperature, top_k=0, top_p=first.top_p)
        else:
            kwargs.update(do_sample=False)
        device = self._model.device
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        hook = None
        if constraint is not None:
            hook = self._model.register_forward_pre_hook(constraint.before_forward, with_kwargs=True)
        try:
            with torch.random.fork_rng(devices=rng_devices), torch.inference_mode():
                if first.temperature > 0 and first.seed is not None:
                    torch.manual_seed(first.seed)
                output = self._model.generate(**inputs, **kwargs)
        finally:
            if hook is not None:
                hook.remove()
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()

        generations = []
        for i, ids in enumerate(new_tokens):
            stop_at = next((k for k, t in enumerate(ids) if t in self._tok.stops), None)
            kept = ids if stop_at is None else ids[:stop_at]
            row_extra = dict(extra)
            error = constraint.errors.get(i) if constraint else None
            if error is not None:
                row_extra["constraint_error"] = error
            if constraint is not None and constraint.guard is not None:
                row_extra["name_guard_masked"] = constraint.guard.masked[i]
            if constraint is not None and constraint.steps:
                row_extra["mask_ms_per_step"] = 1000 * constraint.mask_seconds / constraint.steps
                row_extra["mask_wait_ms_per_step"] = 1000 * constraint.wait_seconds / constraint.steps
                row_extra["mask_overlapped_steps"] = constraint.overlapped_steps
            generations.append(
                Generation(
                    text=self._tok.hf.decode(kept, skip_special_tokens=True),
                    finish_reason="length" if stop_at is None else "stop",
                    constrained=constraint_spec is not None and error is None,
                    engine=self.engine if constraint_spec is not None else None,
                    enforced=None
                    if constraint_spec is None or error is not None
                    else ("grammar" if isinstance(constraint_spec, str) else "schema"),
                    usage=Usage(
                        prompt_tokens=int(prompt_tokens[i]),
                        completion_tokens=len(kept) + (stop_at is not None),
                    ),
                    model=self.model,
                    extra=row_extra,
                )
            )
        return generations


def _constraint(request: Request, engine: Engine) -> dict[str, Any] | str | None:
    """What this engine decodes a request under: the constraint's grammar where the engine takes Lark
    grammars (llguidance) and it has one, else its JSON Schema."""
    constraint = request.constraint
    if constraint is None:
        return None
    if constraint.grammar is not None and (engine == "llguidance" or constraint.schema is None):
        return constraint.grammar
    return constraint.schema


_bias_cache: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}
_text_cache: dict[tuple[Any, ...], list[str]] = {}


def _token_texts(tok: _TokenizerView) -> list[str]:
    """Each token's text by id ("" for special tokens and ids past the tokenizer), built once."""
    key = (tok.key, tok.width)
    with _cache_lock:
        if key in _text_cache:
            return _text_cache[key]
    texts = [""] * tok.width
    for token, token_id in tok.hf.get_vocab().items():
        if token_id < tok.width and token_id not in tok.special:
            texts[token_id] = tok.hf.convert_tokens_to_string([token])
    with _cache_lock:
        _text_cache[key] = texts
    return texts


def _token_bytes(tok: _TokenizerView) -> list[bytes]:
    """Each token's bytes by id (b"" for special tokens). Byte-level BPE vocabularies (Qwen, GPT-2,
    Llama 3) spell bytes as printable characters, so a token may hold part of a character: its text
    would be a replacement character. SentencePiece byte tokens are "<0xNN>"."""
    backend = getattr(tok.hf, "backend_tokenizer", None)
    byte_level = backend is not None and type(backend.decoder).__name__ == "ByteLevel"
    to_byte = _byte_level_decoder() if byte_level else {}
    added = set(tok.hf.get_added_vocab())
    texts = _token_texts(tok)
    out = [b""] * tok.width
    for token, token_id in tok.hf.get_vocab().items():
        if token_id >= tok.width or token_id in tok.special:
            continue
        if byte_level and token not in added and all(c in to_byte for c in token):
            out[token_id] = bytes(to_byte[c] for c in token)
        elif _BYTE_TOKEN.fullmatch(token):
            out[token_id] = bytes([int(token[3:5], 16)])
        else:
            out[token_id] = texts[token_id].encode()
    return out


_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _byte_level_decoder() -> dict[str, int]:
    """Byte-level BPE's printable character -> byte table (the inverse of GPT-2's `bytes_to_unicode`)."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = [b for b in range(256) if b not in kept]
    table = {chr(b): b for b in kept}
    table.update({chr(256 + i): b for i, b in enumerate(shifted)})
    return table


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
    texts = _token_texts(tok)
    for token_id in tok.hf.get_vocab().values():
        if token_id >= tok.width:
            continue
        if token_id in tok.stops or token_id not in tok.special:
            free[token_id] = schema[token_id] = 0.0
        if token_id in tok.special:
            continue
        text = texts[token_id]
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
