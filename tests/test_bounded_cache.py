"""The bounded, build-once LRU behind every process-wide cache of the local backend (`backends/_cache.py`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from flexjudge.backends._cache import BoundedCache


def test_least_recently_used_entries_go_first() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and "a" in cache and "c" in cache
    assert len(cache) == 2 and cache.evictions == 1
    cache.maxsize = 1
    assert list(k for k in "abc" if k in cache) == ["c"] and cache.evictions == 2


def test_a_key_asked_for_at_once_is_built_once() -> None:
    cache: BoundedCache[str, object] = BoundedCache(4)
    builds: list[object] = []
    release = threading.Event()

    def build() -> object:
        release.wait(10)
        builds.append(object())
        return builds[-1]

    results: list[tuple[object, bool]] = []
    ask = lambda: results.append(cache.get_or_build("k", build))  # noqa: E731
    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    _wait_for(lambda: cache._building.get("k") is not None and cache._building["k"].users == 3)
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(builds) == 1
    assert sorted(cached for _, cached in results) == [False, True, True]
    assert all(value is builds[0] for value, _ in results)
    assert cache._building == {}  # the key's lock is dropped once nobody waits on it


def test_an_unrelated_build_does_not_wait() -> None:
    cache: BoundedCache[str, int] = BoundedCache(4)
    release = threading.Event()
    slow = threading.Thread(target=cache.get_or_build, args=("slow", lambda: int(release.wait(10))))
    slow.start()
    _wait_for(lambda: "slow" in cache._building)
    assert cache.get_or_build("fast", lambda: 7) == (7, False)
    assert slow.is_alive()  # still building when the other key was done
    release.set()
    slow.join(10)
    assert cache.get("slow") == 1


def test_a_failed_build_caches_nothing() -> None:
    cache: BoundedCache[str, int] = BoundedCache(4)

    def broken() -> int:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        cache.get_or_build("k", broken)
    assert "k" not in cache and cache._building == {}
    assert cache.get_or_build("k", lambda: 2) == (2, False)


def _wait_for(condition: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "the threads never got there"
        time.sleep(0.005)


def test_a_weight_bound_drops_the_oldest_and_keeps_the_newest_whatever_it_weighs() -> None:
    cache: BoundedCache[str, str] = BoundedCache(10, max_weight=100)
    for key in "abc":
        cache.get_or_build(key, lambda k=key: k, lambda _: 40)
    assert "a" not in cache and "b" in cache and "c" in cache and cache.weight == 80
    cache.put("huge", "h", weight=500)
    assert len(cache) == 1 and "huge" in cache and cache.weight == 500
    assert cache.evictions == 3


def test_compiled_constraints_are_bounded_by_their_source_size() -> None:
    from flexjudge.backends.engines import _compiled

    assert _compiled._compiled.max_weight == _compiled.COMPILED_SOURCE_CHARS
    assert _compiled._source_chars({"type": "string"}) == len('{"type": "string"}')
