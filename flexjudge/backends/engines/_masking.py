"""Masks applied while decoding: the logits processor that keeps every batch row inside its constraint.

One engine's `Matchers` hold the rows' grammar state; the bitmask (int32 words, bit j of word k is token
32k + j) is filled for the whole batch at each step on the CPU and applied to the logits where they are.
Outlines' own logits processors compile their mask kernel with `torch.compile` (15-20 s on the first call
in a process on CPU) and its llguidance processor feeds padding to finished rows, which warns on every
batch whose rows end at different steps: hence this one.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from flexjudge.backends._names import Closers, NameGuard
from flexjudge.errors import BackendError

if TYPE_CHECKING:
    import torch

    from flexjudge.backends.engines import ConstraintEngine, Matchers

__all__ = ["AddBias", "ConstraintProcessor", "apply_bitmask", "forbidden_tokens"]


def forbidden_tokens(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """A (batch, vocab) bool tensor on the CPU, True where the bit is 0."""
    import numpy as np
    import torch

    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, count=vocab, bitorder="little")
    np.logical_not(bits, out=bits)
    return torch.from_numpy(bits).view(torch.bool)


def apply_bitmask(scores: torch.Tensor, bitmask: torch.Tensor, forbidden: torch.Tensor | None = None) -> None:
    """Set to -inf every logit whose bit is 0; `forbidden` is `forbidden_tokens(bitmask)` if already built
    (CPU logits only). On an accelerator the bits are unpacked there, after one small copy."""
    import torch

    vocab = scores.shape[1]
    if scores.device.type == "cpu":
        if forbidden is None:
            forbidden = forbidden_tokens(bitmask, vocab)
    else:
        mask = bitmask.to(scores.device, non_blocking=True)
        shifts = torch.arange(32, device=scores.device, dtype=torch.int32)
        forbidden = (((mask.unsqueeze(-1) >> shifts) & 1) == 0).view(mask.shape[0], -1)[:, :vocab]
    scores.masked_fill_(forbidden, float("-inf"))


_pool_lock = threading.Lock()
_pool: Any = None


def _mask_worker() -> Any:
    global _pool
    with _pool_lock:
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="flexjudge-mask")
        return _pool


class ConstraintProcessor:
    """A HF logits processor that keeps every row of the batch inside the constraint.

    The mask for step t depends only on the tokens up to t-1, which the model's forward pass for step t
    receives as input. `before_forward` (a forward pre-hook on the model) therefore starts the grammar
    work (feed the new tokens, fill the next mask) on a worker thread while the forward pass runs, and
    `__call__` only waits for it and applies the mask: the mask's cost hides behind the forward pass
    instead of adding to it. Without the hook (or with `overlap=False`) the work runs in `__call__`.
    """

    def __init__(
        self,
        engine: ConstraintEngine,
        artefact: Any,
        width: int,
        stops: frozenset[int],
        *,
        overlap: bool = True,
        names: tuple[Closers, frozenset[str]] | None = None,
    ) -> None:
        self.engine, self.artefact, self.width, self.stops = engine, artefact, width, stops
        self.overlap = overlap
        self.names = names
        """The tokenizer's name-guard table and the arrays whose item names stay unique (`NameGuard`)."""
        self.guard: NameGuard | None = None
        self.rows: Matchers | None = None
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
            self.rows = self.engine.matchers(self.artefact, batch)
            self.guard = NameGuard(self.names[0], batch, self.names[1]) if self.names is not None else None
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
        self._forbidden = forbidden_tokens(self.bitmask, self.width) if on_cpu else None
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
        apply_bitmask(scores, self.bitmask, forbidden)
        self.wait_seconds += time.perf_counter() - start
        self.steps += 1
        return scores


class AddBias:
    """A HF logits processor adding a fixed vector (-inf bans a token)."""

    def __init__(self, bias: torch.Tensor) -> None:
        self.bias = bias

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.bias.device != scores.device:
            self.bias = self.bias.to(scores.device)  # once, not one host-to-device copy per step
        return scores + self.bias
