"""`KeySet`, the compact key set of resumable logs and of the repeated-id check: exact membership over
many keys (through the table's growth), any string (a lone surrogate too), and far less memory than a
set of strings."""

from __future__ import annotations

import tracemalloc

from flexjudge._jsonl import KeySet


def test_membership_is_exact_through_growth_and_for_any_string() -> None:
    keys = KeySet()
    added = [f"r{k}#12" for k in range(5000)] + ["", "\udcff lone", "é#21", "x" * 10_000]
    for key in added:
        keys.add(key)
    keys.add("r7#12")  # again: still one key
    assert len(keys) == len(added)
    assert all(key in keys for key in added)
    assert not any(f"r{k}#21" in keys for k in range(5000))  # the other order: never there
    assert "r5000#12" not in keys and 3 not in keys and "\udcfe lone" not in keys
    assert "r42#12" in KeySet(["r42#12"])


def test_memory_per_key_is_a_fraction_of_a_set_of_strings() -> None:
    n = 4000
    tracemalloc.start()
    try:
        keys = KeySet(f"r{k}#12" for k in range(n))
        compact = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        del keys
        start = tracemalloc.get_traced_memory()[0]
        strings = {f"r{k}#12" for k in range(n)}
        plain = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert len(strings) == n
    assert compact < 64 * n < plain  # at most 64 bytes a key


def test_it_equals_the_set_of_strings_it_holds() -> None:
    keys = KeySet(["a", "b"])
    assert keys == {"a", "b"} and keys == frozenset({"b", "a"}) and keys == KeySet(["b", "a"])
    assert keys != {"a"} and keys != {"a", "c"} and keys != {"a", "b", "c"} and keys != KeySet(["a"])
    assert keys != ["a", "b"]


def test_past_its_memory_budget_it_moves_to_disk_and_stays_exact() -> None:
    keys = KeySet(in_memory=64)
    added = [f"r{k}#12" for k in range(3000)] + ["\udcff lone"]
    for key in added:
        keys.add(key)
    keys.add("r7#12")  # again, on disk: still one key
    assert len(keys) == len(added)
    assert all(key in keys for key in added) and not any(f"r{k}#21" in keys for k in range(3000))
    assert keys == set(added) and keys == KeySet(added) and KeySet(added, in_memory=64) == KeySet(added)
    assert keys != set(added[:-1]) and keys == keys
    keys.close()
    assert len(keys) == 0 and "r7#12" not in keys


def test_memory_stays_flat_past_the_budget() -> None:
    """Python's share of the set (the table) stops growing at the budget; SQLite's page cache, outside
    tracemalloc's view, is capped at 256 KiB by the set itself."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        keys = KeySet(in_memory=1000)
        sizes = []
        for k in range(20_000):
            keys.add(f"r{k}#12")
            if k + 1 in (2_000, 20_000):
                sizes.append(tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    assert len(keys) == 20_000 and "r19999#12" in keys
    assert sizes[1] - sizes[0] < 16 * 1024 < 32 * 1000  # not one more table byte per key
    keys.close()


def test_a_log_reads_and_writes_its_keys_from_several_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    keys = KeySet(in_memory=100)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(keys.add, (f"k{n}" for n in range(2000))))
        found = list(pool.map(keys.__contains__, (f"k{n}" for n in range(2000))))
    assert all(found) and len(keys) == 2000
    keys.close()
