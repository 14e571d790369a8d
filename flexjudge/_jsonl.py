"""A resumable JSON Lines log: one complete record per line, each flushed to disk before the next.

Long runs (`flexjudge eval`, distillation) write one record per finished item. A run killed at any
instant leaves at most one torn line at the end (the write that was under way): opening the log again
cuts that line away (reported, so the caller can say so), reads the keys already written, and appends
after them. A key is never written twice. The file is read as a stream, one line at a time, so opening
a large log holds only its keys, and those in flat memory (`KeySet`: a compact table up to a few
thousand keys, a temporary on-disk index past that).

Why a line without its newline counts as torn even when it parses: each record is written with its
newline in one call, so a missing newline means the write did not finish; redoing that one record is
cheap, trusting half a write is not.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from flexjudge.errors import LogFileError, UsageError

__all__ = ["JsonlLog", "KeySet", "Repair"]

Key = Callable[[Any], str]
"""The key of a parsed record (for results: its `id`)."""


class KeySet:
    """A set of string keys held as 16-byte BLAKE2b digests: exact membership in memory that stays flat
    however many keys a run holds (resuming, refusing a repeated id: one key per item of a stream of any
    length).

    The first `in_memory` keys live in one open-addressed table (a quarter to half full: 32 to 64 bytes
    a key, where a Python set of short strings takes about 100). Past that the digests move to a
    private temporary SQLite database on disk (deleted when the set is closed or collected), whose page
    cache is capped at 256 KiB: a lookup then costs a few microseconds, and memory no longer grows with
    the keys (a set of 10 million strings would take about 1 GB). Two distinct keys share a digest with
    probability about n^2 / 2^129: never, at any size a log reaches. Safe to use from several threads
    (a log's keys are added by its writer thread and looked up on the event loop)."""

    _WIDTH = 16
    _EMPTY = bytes(_WIDTH)
    _CACHE_KIB = 256

    def __init__(self, keys: Iterable[str] = (), *, in_memory: int = 4096) -> None:
        self._in_memory = in_memory
        self._slots = 1024
        self._table = bytearray(self._slots * self._WIDTH)
        self._count = 0
        self._disk: sqlite3.Connection | None = None
        self._lock = threading.RLock()  # re-entrant: `keys == keys` takes it twice
        for key in keys:
            self.add(key)

    @classmethod
    def _digest(cls, key: str) -> bytes:
        # surrogatepass: a key read back from JSON may hold a lone surrogate; it still has one digest
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=cls._WIDTH).digest()
        return digest if digest != cls._EMPTY else b"\x01" + digest[1:]  # all zeros marks a free slot

    def _find(self, digest: bytes) -> tuple[int, bool]:
        """The slot holding `digest`, or the free one it would go to; and whether it is there."""
        width, table, mask = self._WIDTH, self._table, self._slots - 1
        slot = int.from_bytes(digest[:8], "little") & mask
        while True:
            held = table[slot * width : (slot + 1) * width]
            if held == digest:
                return slot, True
            if held == self._EMPTY:
                return slot, False
            slot = (slot + 1) & mask  # linear probing: the table is at most half full

    def _holds(self, digest: bytes) -> bool:
        if self._disk is not None:
            return self._on_disk("SELECT 1 FROM keys WHERE digest = ?", digest).fetchone() is not None
        return self._find(digest)[1]

    def _on_disk(self, sql: str, digest: bytes) -> sqlite3.Cursor:
        assert self._disk is not None
        try:
            return self._disk.execute(sql, (digest,))
        except sqlite3.Error as exc:  # a full or vanished temporary directory
            raise LogFileError(
                f"the key set's temporary database failed ({exc})", path=tempfile.gettempdir()
            ) from exc

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        digest = self._digest(key)
        with self._lock:
            return self._holds(digest)

    def __len__(self) -> int:
        return self._count

    def _digests(self) -> Iterator[bytes]:
        if self._disk is not None:
            yield from (row[0] for row in self._disk.execute("SELECT digest FROM keys"))
            return
        width = self._WIDTH
        for start in range(0, len(self._table), width):
            digest = bytes(self._table[start : start + width])
            if digest != self._EMPTY:
                yield digest

    def __eq__(self, other: object) -> bool:
        """Equal to a set of strings holding the same keys (a digest set cannot list its keys, but it
        can tell whether it holds exactly those)."""
        if isinstance(other, KeySet):
            with other._lock:
                theirs = list(other._digests())
            with self._lock:
                return len(theirs) == self._count and all(self._holds(d) for d in theirs)
        if isinstance(other, (set, frozenset)):
            return len(other) == self._count and all(key in self for key in other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like set

    def add(self, key: str) -> None:
        digest = self._digest(key)
        with self._lock:
            if self._disk is not None:
                self._count += self._on_disk("INSERT OR IGNORE INTO keys VALUES (?)", digest).rowcount
                return
            slot, present = self._find(digest)
            if present:
                return
            self._table[slot * self._WIDTH : (slot + 1) * self._WIDTH] = digest
            self._count += 1
            if self._count >= self._in_memory:
                self._spill()
            elif 2 * self._count > self._slots:
                self._grow()

    def _grow(self) -> None:
        digests = list(self._digests())
        self._slots *= 2
        self._table = bytearray(self._slots * self._WIDTH)
        for digest in digests:
            slot, _ = self._find(digest)
            self._table[slot * self._WIDTH : (slot + 1) * self._WIDTH] = digest

    def _spill(self) -> None:
        """Move every digest to the temporary database; the table is freed."""
        disk = sqlite3.connect("", isolation_level=None, check_same_thread=False)  # "": private, on disk
        try:
            # A scratch index: no journal, no fsync (a crash loses nothing the log cannot rebuild).
            disk.executescript(
                "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
                f" PRAGMA cache_size = -{self._CACHE_KIB};"
                " CREATE TABLE keys (digest BLOB PRIMARY KEY) WITHOUT ROWID;"
            )
            disk.executemany("INSERT INTO keys VALUES (?)", ((d,) for d in self._digests()))
        except sqlite3.Error as exc:
            disk.close()
            reason = f"the key set cannot move to a temporary database ({exc})"
            raise LogFileError(reason, path=tempfile.gettempdir()) from exc
        self._disk = disk
        self._closer = weakref.finalize(self, disk.close)
        self._table = bytearray()
        self._slots = 0

    def close(self) -> None:
        """Delete the temporary database, if any (the set is empty afterwards)."""
        with self._lock:
            if self._disk is not None:
                self._closer()
                self._disk = None
            self._slots, self._count = 1024, 0
            self._table = bytearray(self._slots * self._WIDTH)


@dataclass(frozen=True)
class Repair:
    """A torn last line that was cut away on opening."""

    offset: int
    """Byte offset where the torn line began (the file's new length)."""
    dropped: bytes
    """The partial line that was removed."""
    line: int
    """Its 1-based line number."""


class JsonlLog:
    """Open (or create) `path` for appending records keyed by `key`; see the module docstring.

    - `keys`: the keys already in the file, and those appended since.
    - `repaired`: the torn line cut away on opening, or None.
    - `drop`: records it accepts are removed on opening (the file is rewritten without them, then
      atomically replaced), so their keys can be written again; `dropped` counts them. For redoing
      the items that failed.
    - `append(record)`: write one record as one flushed and fsynced line; False (nothing written) when
      its key is already in the file.
    """

    def __init__(self, path: str | Path, key: Key, *, drop: Callable[[Any], bool] | None = None) -> None:
        self.path = Path(path)
        self._key = key
        self.keys = KeySet()
        self.repaired: Repair | None = None
        self.dropped = 0
        if self.path.exists() and not self.path.is_file():
            raise LogFileError("is not a regular file", path=str(self.path))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a+b")
        except OSError as exc:
            raise LogFileError(
                f"cannot be opened for appending ({exc.strerror})", path=str(self.path)
            ) from exc
        try:
            self._scan()
            if drop is not None:
                self._drop(drop)
        except BaseException:
            self._file.close()
            raise

    def _scan(self) -> None:
        """Read every complete line's key; cut a torn last line away."""
        self._file.seek(0)
        offset = 0
        number = 0
        for raw in self._file:  # binary iteration: one line at a time, newline kept
            number += 1
            if not raw.endswith(b"\n"):
                self._file.truncate(offset)
                self._file.flush()
                os.fsync(self._file.fileno())
                self.repaired = Repair(offset=offset, dropped=raw, line=number)
                break
            offset += len(raw)
            if not raw.strip():
                continue  # a blank line holds no record; harmless
            try:
                record = json.loads(raw)
                found = self._key(record)
            except (ValueError, KeyError, TypeError) as exc:
                # A complete line that is not a record is not a crash's trace: refuse rather than guess.
                raise LogFileError(
                    f"line is not a record of this log ({type(exc).__name__}: {exc})",
                    path=str(self.path),
                    line=number,
                ) from exc
            self.keys.add(found)
        self._file.seek(0, os.SEEK_END)

    def _drop(self, drop: Callable[[Any], bool]) -> None:
        """Rewrite the (already repaired and checked) file without the records `drop` accepts."""
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        kept = KeySet()
        self._file.seek(0)
        with partial.open("wb") as out:
            for raw in self._file:
                if raw.strip():
                    record = json.loads(raw)
                    if drop(record):
                        self.dropped += 1
                        continue
                    kept.add(self._key(record))
                out.write(raw)
            out.flush()
            os.fsync(out.fileno())
        if not self.dropped:
            partial.unlink()
            self._file.seek(0, os.SEEK_END)
            return
        os.replace(partial, self.path)  # atomic: a kill leaves the old file or the new one, never half
        self._file.close()
        self._file = self.path.open("a+b")
        self.keys.close()
        self.keys = kept

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def append(self, record: Any, *, sync: bool = True) -> bool:
        """Write `record` (anything `json.dumps` takes) as one line, flushed and fsynced (see
        `append_line` for `sync`); returns False without writing when its key is already in the log."""
        found = self._key(record)
        if found in self.keys:
            return False
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        return self.append_line(found, line, sync=sync)

    def append_line(self, key: str, line: str, *, sync: bool = True) -> bool:
        """Write an already-serialised one-line record under `key` (e.g. a pydantic model's JSON).
        `sync=False` flushes it to the OS (a killed process loses nothing) but leaves the fsync (a
        machine that loses power may) to a later `sync()`: one for a batch of lines."""
        if key in self.keys:
            return False
        if "\n" in line or "\r" in line:  # one record, one line: what resuming relies on
            raise UsageError("a log record must be one line of JSON")
        data = line.encode("utf-8") + b"\n"
        try:
            self._file.write(data)  # one call: a crash leaves a prefix of this line, never of two
            self._file.flush()
            if sync:
                os.fsync(self._file.fileno())
        except OSError as exc:
            raise LogFileError(f"cannot be written ({exc.strerror})", path=str(self.path)) from exc
        self.keys.add(key)
        return True

    def sync(self) -> None:
        """fsync what `append_line(..., sync=False)` wrote."""
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise LogFileError(f"cannot be written ({exc.strerror})", path=str(self.path)) from exc

    def close(self) -> None:
        self._file.close()
        self.keys.close()

    def __enter__(self) -> JsonlLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
