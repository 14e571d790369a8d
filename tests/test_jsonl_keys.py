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
