"""The compile cache: compiled constraints and engine tokenizer tables, bounded, each built once.

Keys are (engine, tokenizer fingerprint, logits width, stop tokens[, constraint hash]): a second backend
on the same tokenizer never compiles the same constraint again. Both maps are `BoundedCache`s: a schema
asked for twice at once is compiled once, an unrelated compile never waits on it, and a server that sees
one schema per client keeps only the most recent ones. Artefacts of `persistent` engines (outlines-core
indexes) are also kept on disk for the next process, the oldest files pruned past a bound.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexjudge.backends._cache import BoundedCache, cache_root
from flexjudge.backends.engines import ConstraintEngine, TokenizerView
from flexjudge.errors import BackendError, ConstraintError

__all__ = [
    "CompileCacheStats",
    "clear_compile_cache",
    "compile_cache_stats",
    "compiled",
    "constraint_hash",
    "set_compile_cache_size",
]

COMPILED_ENTRIES = 32
"""Compiled constraints kept per process. A judge uses a handful (one per output format, modality and
scale); an outlines-core index at 150k tokens weighs hundreds of MB, so this is no place for thousands."""
COMPILED_SOURCE_CHARS = 16 << 20
"""Most characters of constraint source (schema JSON, grammar text) behind the compiled constraints kept:
what a compiled artefact weighs grows with its source, so a stream of huge served constraints cannot hold
32 huge artefacts at once."""
TABLE_ENTRIES = 4
"""Engine tokenizer tables kept per process (one per engine and tokenizer in use)."""
DISK_ENTRIES = 64
"""outlines-core indexes kept on disk; the least recently written go first."""


@dataclass(frozen=True)
class CompileCacheStats:
    """Counters of the process-wide constraint cache (never reset except by `clear_compile_cache`)."""

    compiles: int
    """Constraints compiled (cache misses)."""
    hits: int
    """Requests for a compiled constraint answered from the cache."""
    tokenizer_builds: int
    """Engine-side tokenizer tables built (one per engine and tokenizer)."""
    disk_hits: int
    """Compiles skipped because an earlier process left the result on disk (outlines-core)."""
    entries: int
    """Compiled constraints held now (at most `limit`)."""
    evictions: int = 0
    """Compiled constraints dropped to stay within `limit`."""
    limit: int = COMPILED_ENTRIES


_compiled: BoundedCache[tuple[Any, ...], tuple[Any, float]] = BoundedCache(
    COMPILED_ENTRIES, max_weight=COMPILED_SOURCE_CHARS
)
_tables: BoundedCache[tuple[Any, ...], Any] = BoundedCache(TABLE_ENTRIES)
_stats_lock = threading.Lock()
_stats = {"compiles": 0, "hits": 0, "tokenizer_builds": 0, "disk_hits": 0}


def _count(name: str) -> None:
    with _stats_lock:
        _stats[name] += 1


def compile_cache_stats() -> CompileCacheStats:
    with _stats_lock:
        counts = dict(_stats)
    return CompileCacheStats(
        entries=len(_compiled), evictions=_compiled.evictions, limit=_compiled.maxsize, **counts
    )


def clear_compile_cache() -> None:
    """Forget every compiled constraint and engine tokenizer table (the counters are kept)."""
    _compiled.clear()
    _tables.clear()


def set_compile_cache_size(entries: int) -> None:
    """Keep at most `entries` compiled constraints in this process (the least recently used go first)."""
    _compiled.maxsize = entries


def constraint_hash(constraint: dict[str, Any] | str) -> str:
    """A content hash of a JSON Schema, or of a grammar's text."""
    if isinstance(constraint, str):
        return "grammar-" + hashlib.sha256(constraint.encode()).hexdigest()[:24]
    text = json.dumps(constraint, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _source_chars(constraint: dict[str, Any] | str) -> int:
    return len(constraint) if isinstance(constraint, str) else len(json.dumps(constraint))


def _table(engine: ConstraintEngine, tok: TokenizerView) -> Any:
    def build() -> Any:
        table = engine.tokenizer_table(tok)
        _count("tokenizer_builds")
        return table

    table, _ = _tables.get_or_build((engine.name, tok.key, tok.width, tok.stops), build)
    return table


def compiled(
    engine: ConstraintEngine,
    tok: TokenizerView,
    constraint: dict[str, Any] | str,
    *,
    digest: str | None = None,
) -> tuple[Any, float, bool]:
    """`constraint` (a JSON Schema, or a Lark grammar for engines that take them) compiled by `engine`:
    (artefact, seconds the compile took, whether it was cached). `digest` is its `constraint_hash` when
    the caller has it."""
    if isinstance(constraint, str) and not engine.takes_grammars:
        raise ConstraintError(f"the {engine.name} engine takes JSON Schemas, not grammars")
    key = (engine.name, tok.key, tok.width, tok.stops, digest or constraint_hash(constraint))
    on_disk = _disk_path(key) if engine.persistent else None
    from_disk = False

    def build() -> tuple[Any, float]:
        nonlocal from_disk
        start = time.perf_counter()
        artefact = _load(on_disk) if on_disk is not None else None
        if artefact is not None:
            from_disk = True
            _count("disk_hits")
            return artefact, time.perf_counter() - start
        table = _table(engine, tok)
        try:
            artefact = engine.compile(table, constraint)
        except BackendError:
            raise
        except Exception as exc:  # engines raise assorted types for constraints they cannot take
            what = "grammar" if isinstance(constraint, str) else "JSON Schema"
            raise ConstraintError(
                f"the {engine.name} engine cannot compile this {what}: {exc}", original=exc
            ) from None
        _count("compiles")
        if on_disk is not None:
            _save(on_disk, artefact)
        return artefact, time.perf_counter() - start

    (artefact, seconds), cached = _compiled.get_or_build(key, build, lambda _: _source_chars(constraint))
    if cached:
        _count("hits")
    return artefact, seconds, cached or from_disk


def _disk_path(key: tuple[Any, ...]) -> Path:
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
    return cache_root() / "constraints" / f"{key[0]}-{digest}.pickle"


def _load(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        with path.open("rb") as fh:
            return pickle.load(fh)  # our own cache directory, written by `_save`
    except Exception:  # a damaged or foreign file: compile again and overwrite it
        return None


def _save(path: Path, artefact: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(pickle.dumps(artefact))
        tmp.replace(path)  # atomic: a concurrent reader never sees half an index
        _prune(path.parent)
    except OSError:
        pass  # a read-only cache only costs the next process a compile


def _prune(directory: Path) -> None:
    files = sorted(directory.glob("*.pickle"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in files[DISK_ENTRIES:]:
        old.unlink(missing_ok=True)
