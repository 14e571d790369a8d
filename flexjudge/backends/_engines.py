"""Constraint engines for the transformers backend: compile cache, per-row grammar state, batched masks.

llguidance (the default), outlines-core and xgrammar are driven directly, one matcher per batch row, the
mask filled for the whole batch at each step. Compiled constraints are cached per process, keyed by
(engine, tokenizer fingerprint, schema hash); outlines-core indexes are also kept on disk.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from flexjudge.backends._names import Closers, NameGuard
from flexjudge.errors import BackendError, ConstraintError

if TYPE_CHECKING:
    import torch

Engine = Literal["llguidance", "outlines_core", "xgrammar"]
DEFAULT_ENGINE: Engine = "llguidance"
"""Chosen by measurement (`benchmarks/constrained.py`, 2-core CPU, ~150k-token vocabulary) and by what it
enforces: ready in ~1.5 s cold and ~3 ms per further schema, about 0.4 ms of mask per row per step with or
without `maxLength`, one small wheel, and the only engine here that takes the judgment grammar in which
winners follow the scores (`flexjudge.grammar`). xgrammar masks unbounded schemas faster (0.1 ms) but is
optional (it pulls triton), enforces only the JSON Schema, and its masks cost ~8x more once strings carry
`maxLength`; outlines-core needs seconds per schema, and ran out of memory (over 23 GB) compiling the pairwise
schema with every string bounded."""

_ENGINE_MODULES = {"llguidance": "llguidance", "outlines_core": "outlines_core", "xgrammar": "xgrammar"}


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


def _schema_hash(schema: dict[str, Any] | str) -> str:
    """A content hash of a JSON Schema, or of a grammar's text."""
    if isinstance(schema, str):
        return "grammar-" + hashlib.sha256(schema.encode()).hexdigest()[:24]
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


def _compile(
    engine: Engine, tok: _TokenizerView, constraint: dict[str, Any] | str, *, digest: str | None = None
) -> tuple[Any, float, bool]:
    """The compiled `constraint`, a JSON Schema or (llguidance only) a Lark grammar: (artefact, seconds the
    compile took, whether it was cached). `digest` is its `_schema_hash` when the caller has it."""
    if isinstance(constraint, str) and engine != "llguidance":
        raise ConstraintError(
            f"the {engine} engine takes JSON Schemas, not grammars: use engine='llguidance'"
        )
    key = (engine, tok.key, tok.width, tok.stops, digest or _schema_hash(constraint))
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
        try:
            artefact = _compile_with(engine, table, constraint)
        except BackendError:
            raise
        except Exception as exc:  # engines raise assorted types for unsupported schemas
            what = "grammar" if isinstance(constraint, str) else "JSON Schema"
            raise ConstraintError(
                f"the {engine} engine cannot compile this {what}: {exc}", original=exc
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


def _llguidance_grammar(constraint: dict[str, Any] | str) -> str:
    """llguidance's grammar for a Lark grammar or a JSON Schema."""
    from llguidance import LLMatcher

    if isinstance(constraint, str):
        return str(LLMatcher.grammar_from_lark(constraint))
    text = json.dumps(constraint)
    return str(LLMatcher.grammar_from_json_schema(text, defaults={"whitespace_flexible": False}))


def _compile_with(engine: Engine, table: Any, constraint: dict[str, Any] | str) -> Any:
    if engine == "llguidance":
        from llguidance import LLMatcher

        grammar = _llguidance_grammar(constraint)
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, table)
        if is_error:
            raise ConstraintError(f"the llguidance engine rejects this constraint: {messages[0]}")
        # Rows start from copies of this matcher: a copy costs microseconds, a new matcher milliseconds.
        return LLMatcher(table, grammar, log_level=0)
    assert isinstance(constraint, dict)  # `_compile` sends grammars to llguidance only
    schema_json = json.dumps(constraint)
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


def _forbidden(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """A (batch, vocab) bool tensor on the CPU, True where the bit is 0 (bit j of int32 word k is token
    32k + j)."""
    import numpy as np
    import torch

    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, count=vocab, bitorder="little")
    np.logical_not(bits, out=bits)
    return torch.from_numpy(bits).view(torch.bool)


def _apply_bitmask(
    scores: torch.Tensor, bitmask: torch.Tensor, forbidden: torch.Tensor | None = None
) -> None:
    """Set to -inf every logit whose bit is 0; `forbidden` is `_forbidden(bitmask)` if already built."""
    import torch

    vocab = scores.shape[1]
    if scores.device.type == "cpu":
        if forbidden is None:
            forbidden = _forbidden(bitmask, vocab)
    else:
        mask = bitmask.to(scores.device, non_blocking=True)
        shifts = torch.arange(32, device=scores.device, dtype=torch.int32)
        forbidden = (((mask.unsqueeze(-1) >> shifts) & 1) == 0).view(mask.shape[0], -1)[:, :vocab]
    scores.masked_fill_(forbidden, float("-inf"))


_mask_pool: Any = None


def _mask_worker() -> Any:
    global _mask_pool
    with _cache_lock:
        if _mask_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _mask_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="flexjudge-mask")
    return _mask_pool


class _ConstraintProcessor:
    """A HF logits processor that keeps every row of the batch inside the grammar.

    The mask for step t depends only on the tokens up to t-1, which the model's forward pass for step t
    receives as input. `before_forward` (a forward pre-hook on the model) therefore starts the grammar
    work (feed the new tokens, fill the next mask) on a worker thread while the forward pass runs, and
    `__call__` only waits for it and applies the mask: the mask's cost hides behind the forward pass
    instead of adding to it. Without the hook (or with `overlap=False`) the work runs in `__call__`.
    """

    def __init__(
        self,
        engine: Engine,
        artefact: Any,
        width: int,
        stops: frozenset[int],
        *,
        overlap: bool = True,
        names: Closers | None = None,
    ) -> None:
        self.engine, self.artefact, self.width, self.stops = engine, artefact, width, stops
        self.overlap = overlap
        self.names = names
        """Set for judgment schemas: criterion names are kept unique (`_names.NameGuard`)."""
        self.guard: NameGuard | None = None
        self.rows: _Rows | None = None
        self.done: list[bool] = []
        self.errors: dict[int, str] = {}
        self.mask_seconds = 0.0
        """Grammar work per step, summed (feeding tokens, filling masks; on the worker when overlapped)."""
        self.wait_seconds = 0.0
        """Time the decode loop itself spent in this processor (waiting for the mask, applying it)."""
        self.steps = 0
        self.overlapped_steps = 0
        """Steps whose mask was ready from the worker (0 when the hook never ran)."""
        self._pending: Any = None  # the worker's Future for the next mask
        self._fed: list[int] | None = None  # the tokens it fed, checked against the ones `generate` kept
        self._forbidden: torch.Tensor | None = None

    def before_forward(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook (`register_forward_pre_hook(..., with_kwargs=True)`): start the next mask."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if not self.overlap or input_ids is None or self._pending is not None:
            return
        batch, device = int(input_ids.shape[0]), input_ids.device
        if self.rows is None:
            self._fed = None
            self._pending = _mask_worker().submit(self._step, None, batch, device.type == "cpu")
        elif device.type == "cpu":
            self._fed = input_ids[:, -1].tolist()
            self._pending = _mask_worker().submit(self._step, self._fed, batch, True)
        elif device.type == "cuda":
            import torch

            # The copy is queued before this forward pass's kernels, so it waits only for the step that
            # sampled the tokens; the worker waits for it, the host goes on queueing the forward pass.
            host = input_ids[:, -1].to("cpu", non_blocking=True)
            copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
            copied.record()
            self._fed = None  # read back after the forward pass only by a sync: not checked
            self._pending = _mask_worker().submit(self._step_after, copied, host, batch)

    def _step_after(self, copied: Any, host: torch.Tensor, batch: int) -> None:
        copied.synchronize()
        self._step(host.tolist(), batch, False)

    def _step(self, tokens: list[int] | None, batch: int, on_cpu: bool) -> None:
        """Feed `tokens` (None on the first step), fill the bitmask of the rows still going."""
        import torch

        start = time.perf_counter()
        if self.rows is None:
            self.rows = _Rows(self.engine, self.artefact, batch)
            self.guard = NameGuard(self.names, batch) if self.names is not None else None
            self.done = [False] * batch
            self.bitmask = torch.full((batch, (self.width + 31) // 32), -1, dtype=torch.int32)
        else:
            for i, token in enumerate(tokens or ()):
                if self.done[i]:
                    continue
                error = None if token in self.stops else self.rows.advance(i, token)
                if error is None and self.guard is not None:
                    self.guard.feed(i, token)
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
            if self.guard is not None:
                self.guard.restrict(self.bitmask, live)
        self._forbidden = _forbidden(self.bitmask, self.width) if on_cpu else None
        self.mask_seconds += time.perf_counter() - start

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        if self._pending is not None:
            pending, fed, self._pending = self._pending, self._fed, None
            pending.result()
            self.overlapped_steps += 1
            if fed is not None and fed != input_ids[:, -1].tolist():
                raise BackendError(
                    "constrained decoding fell out of step: the grammar was fed other tokens than "
                    "generate kept",
                    retryable=False,
                )
        else:
            tokens = None if self.rows is None else input_ids[:, -1].tolist()
            self._step(tokens, int(input_ids.shape[0]), scores.device.type == "cpu")
        forbidden = self._forbidden if scores.shape[1] == self.width else None
        _apply_bitmask(scores, self.bitmask, forbidden)
        self.wait_seconds += time.perf_counter() - start
        self.steps += 1
        return scores


class _AddBias:
    """A HF logits processor adding a fixed vector (-inf bans a token)."""

    def __init__(self, bias: torch.Tensor) -> None:
        self.bias = bias

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores + self.bias.to(scores.device)
