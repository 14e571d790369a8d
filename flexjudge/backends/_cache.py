"""Process-wide state of the local backend, bounded: a small LRU whose entries are built once, and where
built artefacts are kept on disk.

Everything the transformers backend keeps between calls (compiled constraints, engine tokenizer tables,
logit biases, token texts, the name guard's tables) lives in a `BoundedCache`: a long-running
`flexjudge serve` that sees one schema per client must not grow without bound, and two threads that ask
for the same missing entry must not build it twice, while a build never holds up an unrelated one.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["BoundedCache", "cache_root"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def cache_root() -> Path:
    """Where flexjudge keeps built artefacts: `$FLEXJUDGE_CACHE_DIR`, else `$XDG_CACHE_HOME/flexjudge`,
    else `~/.cache/flexjudge`."""
    explicit = os.environ.get("FLEXJUDGE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "flexjudge"


class _KeyLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class BoundedCache(Generic[K, V]):
    """A least-recently-used map of at most `maxsize` entries, each built once by `get_or_build`.

    One short-held lock guards the map; each key being built has a lock of its own, dropped once no
    thread waits on it (so the locks are bounded by the builds in progress, not by the keys ever seen).
    """

    def __init__(self, maxsize: int, *, max_weight: int | None = None) -> None:
        if maxsize < 1:
            raise ValueError("a BoundedCache holds at least one entry")
        self._maxsize = maxsize
        self.max_weight = max_weight
        """Most total weight (each entry's, as `put` was told it; e.g. bytes) kept; the newest entry is
        kept whatever it weighs. None: bounded in entries only."""
        self._weights: dict[K, int] = {}
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[K, _KeyLock] = {}
        self.evictions = 0
        """Entries dropped to stay within `maxsize` (a clear does not count)."""

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        if value < 1:
            raise ValueError("a BoundedCache holds at least one entry")
        with self._lock:
            self._maxsize = value
            self._trim()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def get(self, key: K) -> V | None:
        with self._lock:
            if key not in self._entries:
                return None
            self._entries.move_to_end(key)
            return self._entries[key]

    def put(self, key: K, value: V, weight: int = 0) -> None:
        with self._lock:
            self._entries[key] = value
            self._weights[key] = weight
            self._entries.move_to_end(key)
            self._trim()

    @property
    def weight(self) -> int:
        """The total weight of the entries held."""
        with self._lock:
            return sum(self._weights.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._weights.clear()

    def get_or_build(
        self, key: K, build: Callable[[], V], weigh: Callable[[V], int] | None = None
    ) -> tuple[V, bool]:
        """(the entry for `key`, whether it was already there), building it with `build` when missing;
        a built entry counts `weigh(entry)` towards `max_weight` (asked only on a build).

        Concurrent callers for the same missing key wait for the one build; callers for other keys do
        not. A build that raises caches nothing, and the next caller tries again."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key], True
            waiter = self._building.setdefault(key, _KeyLock())
            waiter.users += 1
        try:
            with waiter.lock:
                with self._lock:
                    if key in self._entries:  # built by the thread this one waited for
                        self._entries.move_to_end(key)
                        return self._entries[key], True
                value = build()
                self.put(key, value, weigh(value) if weigh is not None else 0)
                return value, False
        finally:
            with self._lock:
                waiter.users -= 1
                if waiter.users == 0:
                    del self._building[key]

    def _trim(self) -> None:
        total = sum(self._weights.values())
        while len(self._entries) > self._maxsize or (
            self.max_weight is not None and total > self.max_weight and len(self._entries) > 1
        ):
            oldest, _ = self._entries.popitem(last=False)
            total -= self._weights.pop(oldest, 0)
            self.evictions += 1
