"""Local vision-language models through transformers, with constrained decoding.

`TransformersBackend` loads a model and its processor (`AutoModelForImageTextToText`, `AutoProcessor`;
see `_loading.py` for hub ids, devices and dtypes), renders each request with the model's chat template
(images where their parts sit), and runs batched HF `generate`. A request with a constraint is decoded
under a token mask from one of the constraint engines (`engines/`: llguidance, the default,
outlines-core or xgrammar), under the constraint's grammar where the engine takes grammars and the
constraint has one, else under its JSON Schema (`engines.constraint_form`).

Choices, and why:
- Compiled constraints are cached per process in a bounded LRU, keyed by (engine, tokenizer fingerprint,
  constraint hash): a second backend on the same tokenizer never compiles the same schema again, and a
  schema asked for twice at once is compiled once. `compile_cache_stats` counts.
- The engines are driven directly, one mask per batch row, filled for the whole batch per step and applied
  eagerly (`engines/_masking.py` says why not Outlines' processors).
- JSON whitespace is bounded on every engine: a model that likes whitespace, a random one above all,
  otherwise emits it until the budget runs out.
- Under a constraint, tokens holding control characters are banned, and special tokens other than the
  stop tokens are banned everywhere (`_tokens.biases`).
- Names that must stay distinct (`Constraint.unique_names`) are kept so by `_names.NameGuard` beside the
  engine's mask: no grammar can say it.
- Log-probabilities (`Request.logprobs`) are those of the distribution the token was chosen from, after
  the constraint's mask and biases (before temperature): a processor placed last keeps one step's
  log-softmax and reads the chosen token's entry at the next step, so memory stays one row per request
  instead of HF's `output_scores`, which holds every step's whole vocabulary.
- Decoding runs in a worker thread, which asyncio cannot cancel: a cancelled caller (or a request whose
  `Request.stop` is set) ends its rows at the next decoding step through a stopping criterion, and a
  stopped row is never returned as a (cut-short) generation (`Stopped`).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexjudge.backends._loading import TINY_ALIASES, auto_device, auto_dtype, load, resolve
from flexjudge.backends._names import closers
from flexjudge.backends._tokens import biases, token_bytes
from flexjudge.backends.base import Generation, Request, Stopped, TokenLogprob, Usage, chat_template_messages
from flexjudge.backends.engines import (
    DEFAULT_ENGINE,
    Engine,
    TokenizerView,
    available_engines,
    constraint_form,
    fingerprint,
    get_engine,
)
from flexjudge.backends.engines._compiled import (
    CompileCacheStats,
    clear_compile_cache,
    compile_cache_stats,
    compiled,
    constraint_hash,
    set_compile_cache_size,
)
from flexjudge.backends.engines._masking import AddBias, ConstraintProcessor
from flexjudge.errors import BackendError, UsageError

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
    "set_compile_cache_size",
    "template_variables",
]


# --------------------------------------------------------------------------- the backend


class TransformersBackend:
    """A local vision-language model (Qwen2.5-VL, Qwen3-VL, ...) run with transformers.

    `model` is a local directory or a hub id (looked up in the local cache first; without hub access an
    uncached id fails at once, saying how to point at weights or a server); `"tiny-random"` (or
    `"tiny-random-qwen3-vl"`) builds a tiny random-weight model, a smoke test of the machinery with
    meaningless output. `engine` picks the constraint engine (default: llguidance). `device` None means
    the first GPU when torch sees one, else the CPU; `dtype` None means bfloat16 on a GPU that supports
    it (float16 on an older one), float32 on the CPU, and "auto" the checkpoint's own. `closing_bias` adds
    that much to the logits of tokens starting with `"` (and a third of it to `]` / `}`) under a schema,
    so random-weight models close strings and containers early; None means on (15) for tiny-random, off
    otherwise. Loading happens here, synchronously; `generate` runs off the event loop.

    `unique_names` (on by default) keeps the item names of the arrays a constraint lists in its
    `unique_names` distinct while decoding (see `_names.py`: no grammar can);
    `Generation.extra["name_guard_masked"]` counts the tokens it masked.
    `overlap_masks` computes each step's mask on a worker thread while the forward pass runs (see
    `engines._masking.ConstraintProcessor`); off, after the forward pass, as Outlines does. None (the
    default): on for accelerators, off on CPU, as measured (`benchmarks/constrained.py`).

    Each `Generation` records the engine and the form of the constraint it enforced (`enforced`:
    "grammar" or "schema"; None, and `constrained` False, when the engine refused a token). Its `extra`
    holds `engine` (None for free text) and, under a constraint, `compile_s`,
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
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        max_batch_size: int = 8,
        closing_bias: float | None = None,
        overlap_masks: bool | None = None,
        unique_names: bool = True,
    ) -> None:
        self._engine = get_engine(engine or DEFAULT_ENGINE)
        if max_batch_size < 1:
            raise UsageError("max_batch_size must be at least 1")
        self.engine: Engine = self._engine.name
        if self.engine not in available_engines():
            raise BackendError(
                f"the {self.engine} constraint engine is not installed: `pip install "
                f"{self._engine.requires}` or pick one of: {', '.join(available_engines()) or 'none'}",
                retryable=False,
            )
        self.model = str(model)
        path = resolve(self.model)  # before torch looks for a GPU: a missing model fails at once
        self.device = auto_device(device)
        self.dtype = auto_dtype(self.device, dtype)
        self.max_batch_size = max_batch_size
        # Measured on 2 CPU cores: no gain on a compute-bound CPU model (1.02x either way at 150k tokens)
        # and a loss on the tiny one (the worker fights the forward pass for the GIL); on an accelerator
        # the host is free while the forward pass runs, which is what overlapping uses.
        self.overlap_masks = overlap_masks if overlap_masks is not None else self.device != "cpu"
        self._lock = threading.Lock()
        # The processor's fast tokenizer is not safe to call from two threads at once (padding settings
        # are state); prompts are counted (`prompt_tokens`) while a batch decodes.
        self._processor_lock = threading.Lock()
        self._processor, self._model = load(self.model, path, self.device, self.dtype)
        tokenizer = self._processor.tokenizer
        generation = self._model.generation_config
        configured = generation.eos_token_id
        stops = {tokenizer.eos_token_id} | set(configured if isinstance(configured, list) else [configured])
        stops.discard(None)
        width = int(self._model.get_output_embeddings().weight.shape[0])
        self._tok = TokenizerView(
            hf=tokenizer,
            key=fingerprint(tokenizer),
            width=width,
            eos=int(tokenizer.eos_token_id),
            stops=tuple(sorted(stops)),
            special=frozenset(tokenizer.all_special_ids),
        )
        pad = generation.pad_token_id if generation.pad_token_id is not None else tokenizer.pad_token_id
        self._pad = int(pad if pad is not None else self._tok.eos)
        if closing_bias is None:
            closing_bias = 15.0 if self.model in TINY_ALIASES else 0.0
        self._free_bias, self._json_bias = biases(self._tok, closing_bias)
        self.unique_names = unique_names
        self._closers = closers((self._tok.key, self._tok.width), lambda: token_bytes(self._tok))

    def compile(self, constraint: dict[str, Any] | str) -> float:
        """Compile a JSON Schema (or a grammar, on an engine that takes grammars) for this backend's engine
        and tokenizer ahead of time; returns the seconds it took (0 when it was cached). `generate`
        compiles on first use anyway."""
        _, seconds, cached = compiled(self._engine, self._tok, constraint)
        return 0.0 if cached else seconds

    async def generate(self, requests: list[Request]) -> list[Generation]:
        """One `Generation` per request, in order. Requests that share a schema and sampling settings run
        together in batches of up to `max_batch_size`."""
        if not requests:
            return []
        stop = threading.Event()
        work = asyncio.ensure_future(asyncio.to_thread(self._generate_sync, list(requests), stop))
        # The caller may be gone by the time the worker fails: its error is retrieved here, reported to none.
        work.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # The thread cannot be cancelled, only told to stop: it ends within one decoding step, and
            # waiting for that keeps the model free for whoever comes next.
            stop.set()
            await asyncio.wait({work})
            raise

    def prompt_tokens(self, request: Request) -> int:
        """How many tokens `request`'s prompt takes on this model: rendered with the chat template and
        tokenized with its images expanded, as `generate` feeds it."""
        if self._processor is None:
            raise BackendError("this TransformersBackend is closed", retryable=False)
        text, images = self._render(request)
        with self._processor_lock:
            inputs = self._processor(text=[text], images=images or None)
        return len(inputs["input_ids"][0])

    async def aclose(self) -> None:
        self._model = None
        self._processor = None

    # ---------------------------------------------------------------- internals

    def _generate_sync(self, requests: list[Request], stop: threading.Event) -> list[Generation]:
        """Every request's generation, or `Stopped` when `stop` (the whole call) or a request's own
        `Request.stop` was set before its generation ended."""
        if self._model is None:
            raise BackendError("this TransformersBackend is closed", retryable=False)
        groups: dict[tuple[Any, ...], list[int]] = {}
        digests: dict[int, str] = {}  # requests usually share one constraint object: hash it once
        for i, r in enumerate(requests):
            sampled = r.temperature > 0
            constraint = None if r.constraint is None else constraint_form(self._engine, r.constraint)[0]
            if constraint is not None and id(constraint) not in digests:
                digests[id(constraint)] = constraint_hash(constraint)
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
                    # A request stopped before its batch starts is not decoded at all.
                    chunk = [i for i in indices[start : start + self.max_batch_size]
                             if not (stop.is_set() or _is_set(requests[i].stop))]  # fmt: skip
                    if not chunk:
                        continue
                    batch = self._run_batch([requests[i] for i in chunk], digest=key[0], stop=stop)
                    for i, generation in zip(chunk, batch, strict=True):
                        out[i] = generation
        done = [g for g in out if g is not None]
        if len(done) < len(requests):
            raise Stopped(out)
        return done

    def _render(self, request: Request) -> tuple[str, list[Any]]:
        conversation, images = chat_template_messages(request.messages)
        options = {k: v for k, v in (request.chat_template_kwargs or {}).items() if k in self._template_reads}
        text = self._processor.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True, **options
        )
        return str(text), images

    @functools.cached_property
    def _template_reads(self) -> frozenset[str]:
        return template_variables(self._processor)

    def _run_batch(
        self, requests: Sequence[Request], *, digest: str | None, stop: threading.Event
    ) -> list[Generation | None]:
        """One batch of requests sharing a constraint (`digest`: its `constraint_hash`) and sampling; None
        for each row stopped (by `stop` or its request's own) before it ended."""
        import torch

        first = requests[0]
        texts, images = [], []
        for request in requests:
            text, request_images = self._render(request)
            texts.append(text)
            images.extend(request_images)
        with self._processor_lock:
            inputs = self._processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        inputs = inputs.to(self._model.device)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()

        constraint: ConstraintProcessor | None = None
        extra: dict[str, Any] = {"engine": None}
        processors: list[Callable[..., Any]] = []
        form = None
        if first.constraint is not None:
            spec, form = constraint_form(self._engine, first.constraint)
            digest = digest or constraint_hash(spec)
            artefact, seconds, cached = compiled(self._engine, self._tok, spec, digest=digest)
            unique = first.constraint.unique_names if self.unique_names else frozenset()
            constraint = ConstraintProcessor(
                self._engine,
                artefact,
                self._tok.width,
                frozenset(self._tok.stops),
                overlap=self.overlap_masks,
                names=(self._closers, unique) if unique else None,
            )
            processors = [AddBias(self._json_bias), constraint]
            extra = {"engine": self.engine, "compile_s": 0.0 if cached else seconds, "compile_cached": cached}
        else:
            processors = [AddBias(self._free_bias)]

        from transformers import LogitsProcessorList, StoppingCriteriaList

        recorder = _ChosenLogprobs() if any(r.logprobs for r in requests) else None
        if recorder is not None:
            processors = [*processors, recorder]
        halt = _StopRows([r.stop for r in requests], stop)
        kwargs: dict[str, Any] = {
            "max_new_tokens": first.max_new_tokens,
            "eos_token_id": list(self._tok.stops),
            "pad_token_id": self._pad,
            "logits_processor": LogitsProcessorList(processors),
            "stopping_criteria": StoppingCriteriaList([halt]),
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
        chosen = recorder.finish(output) if recorder is not None else None

        generations: list[Generation | None] = []
        for i, ids in enumerate(new_tokens):
            if i in halt.stopped:
                generations.append(None)
                continue
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
                    constrained=constraint is not None and error is None,
                    engine=self.engine if constraint is not None else None,
                    enforced=form if error is None else None,
                    usage=Usage(
                        prompt_tokens=int(prompt_tokens[i]),
                        completion_tokens=len(kept) + (stop_at is not None),
                    ),
                    model=self.model,
                    token_logprobs=self._token_logprobs(kept, chosen[i])
                    if chosen and requests[i].logprobs
                    else None,
                    extra=row_extra,
                )
            )
        return generations

    def _token_logprobs(self, ids: list[int], logprobs: list[float]) -> tuple[TokenLogprob, ...]:
        return tuple(
            TokenLogprob(self._tok.hf.decode([t], skip_special_tokens=True), lp)
            for t, lp in zip(ids, logprobs, strict=False)
        )


class _ChosenLogprobs:
    """A logits processor, placed last: keeps this step's log-softmax and, at the next step (whose
    `input_ids` end with the token chosen), reads the chosen token's log-probability from it; `finish`
    reads the last step's from the output. One row of scores per request is held at a time, and the
    values stay on the device until `finish` (a copy to the host each step would wait for the device)."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []
        self._last: torch.Tensor | None = None

    def _read(self, chosen: torch.Tensor) -> None:
        if self._last is not None:
            self.steps.append(self._last.gather(1, chosen[:, None].to(self._last.device)).squeeze(1))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._read(input_ids[:, -1])
        self._last = scores.float().log_softmax(dim=-1)
        return scores

    def finish(self, output: torch.Tensor) -> list[list[float]]:
        """Per row, the log-probability of each generated token, in order."""
        import torch

        self._read(output[:, -1])
        self._last = None
        if not self.steps:
            return []
        rows: list[list[float]] = torch.stack(self.steps, dim=1).tolist()
        return rows


def template_variables(processor: Any) -> frozenset[str]:
    """The variables `processor`'s chat template reads. An option it does not read (`enable_thinking` on a
    Qwen2.5-VL template) means nothing to it, and transformers would pass it on to the processor with a
    warning; this is the rule transformers itself uses to tell the two apart. The training scripts apply
    it to the `chat_template_kwargs` of their data, so a model is trained on the prompt it is asked."""
    from transformers.utils.chat_template_utils import _get_template_variables

    template = processor.chat_template
    texts = template.values() if isinstance(template, dict) else [template]
    return frozenset().union(*(_get_template_variables(t) for t in texts if t))


def _is_set(event: threading.Event | None) -> bool:
    return event is not None and event.is_set()


class _StopRows:
    """A stopping criterion (called by HF `generate` after each decoding step): ends the rows whose request's
    `stop` is set, or every row once the call's `stop` is. `stopped` keeps the rows it ended, whose text
    is then cut short and must not be returned."""

    def __init__(self, rows: list[threading.Event | None], call: threading.Event) -> None:
        self.rows = rows
        self.call = call
        self.stopped: set[int] = set()
        self._none: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        flags = [self.call.is_set() or _is_set(row) for row in self.rows]
        if not any(flags):
            # One tensor made once: copying a fresh one to an accelerator each step would wait for the
            # device, undoing HF's deferred stop check.
            if self._none is None:
                self._none = torch.zeros(len(flags), dtype=torch.bool, device=input_ids.device)
            return self._none
        self.stopped.update(i for i, flag in enumerate(flags) if flag)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)
