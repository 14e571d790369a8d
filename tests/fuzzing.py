"""Fuzz harness for the readers: mutated example outputs, an independent verdict oracle, watched workers.

It lives in tests/ (not benchmarks/) because the default suite imports it directly, next to the Hypothesis
strategies it is used with; `benchmarks/fuzz.py` puts tests/ on sys.path and imports it, which is one line
there instead of a path hack in every test.

The oracle is deliberately simple and shares nothing with flexjudge's winner reader: every fuzz input is
one splice of a seed text (`text[a:b] = r`), and the seed's winner value has a known span. A splice that
does not touch that span must read the seed's winner or fail; one that touches it must fail or read the one
candidate number the changed value region still holds (after NFKC, so fullwidth digits count as digits).
A splice that adds a winner elsewhere (a duplicated key, a second judgment) adds the numbers it names.
Anything else read is an invented verdict; any exception that is not a `FlexjudgeError` is a crash.
What it does not judge, by design (it counts candidates, it does not read English): negation or doubt
in a value naming one candidate ("Image 1 isn't better"; tests/test_winners.py holds those), the
dimension winners, and pointwise scores (pointwise inputs are checked for crashes and hangs only).
"""

from __future__ import annotations

import json
import multiprocessing
import random
import re
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import flexjudge

ROOT = Path(__file__).parent.parent
Kind = Literal["pair", "point"]
Reader = Callable[[str, bool], int | None]


# ---------------------------------------------------------------- seeds and the oracle


@dataclass(frozen=True)
class Seed:
    name: str
    text: str
    kind: Kind
    winner: int | None  # the overall winner of a pairwise seed; None for pointwise (crash checks only)
    span: tuple[int, int]  # the winner value's characters in `text`; (0, 0) when there is none


_JSON_WINNER = re.compile(r'"winner"\s*:\s*')
_NUMBER = re.compile(r"[0-9]+")
_JSON_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def names(region: str) -> frozenset[int]:
    """The candidate numbers a piece of winner text names: its digit runs, after NFKC (fullwidth １ is 1);
    a bare JSON number names its value (2.0 and 2e0 are 2, 2.5 names none)."""
    region = unicodedata.normalize("NFKC", region)
    if _JSON_NUMBER.fullmatch(region.strip()):
        value = float(region)
        return frozenset({int(value)}) if value.is_integer() else frozenset()
    return frozenset(int(n) for n in _NUMBER.findall(region))


def winner_span(text: str, think: bool) -> tuple[int, int]:
    """Where the overall winner's value lies: the <answer> body in Think text, else the last "winner" value
    (every writer and example puts the top-level winner, or native's verdict, last)."""
    if think:
        start = text.rindex("<answer>") + len("<answer>")
        return start, text.index("</answer>", start)
    key = list(_JSON_WINNER.finditer(text))[-1]
    start = key.end()
    if text[start] == '"':
        return start + 1, text.index('"', start + 1)
    return start, start + len(_NUMBER.match(text, start).group())  # type: ignore[union-attr]


def seed_from_text(name: str, text: str, winner: int, *, think: bool = False) -> Seed:
    span = winner_span(text, think)
    # The oracle is only as good as its spans: a span that does not name the winner is a harness bug.
    if names(text[span[0] : span[1]]) != {winner}:
        raise AssertionError(f"{name}: winner span {text[span[0] : span[1]]!r} does not name {winner}")
    return Seed(name, text, "pair", winner, span)


def _pointwise_seed() -> Seed:
    """The examples hold no pointwise output (the released judges have none), so one is written here."""
    crit = [flexjudge.PointCriterion(name=f"Criterion {i}", evidence="Visible, \"quoted\" {x}", score=i + 3)
            for i in range(3)]  # fmt: skip
    judgment = flexjudge.PointwiseJudgment(
        prompt="An owl-shaped teapot on a windowsill",
        modality="image",
        observations=["A glazed owl teapot", "Soft light from the left"],
        dimensions=[
            flexjudge.PointDimension(name=n, origin="predefined", criteria=crit, analysis="Fine.", score=5)
            for n in flexjudge.anchor_dimensions("image")
        ],
        verdict=flexjudge.PointVerdict(analysis="Good overall.", score=6),
    )
    return Seed("pointwise(native)", flexjudge.render_pointwise(judgment), "point", None, (0, 0))


def load_seeds() -> list[Seed]:
    """Every example output, each re-rendered in every format that can carry it, and one pointwise text."""
    seeds: list[Seed] = []
    for path in sorted((ROOT / "examples" / "outputs").iterdir()):
        text = path.read_text(encoding="utf-8")
        judgment = flexjudge.parse(text)
        winner = judgment.verdict.winner
        assert winner is not None
        seeds.append(seed_from_text(path.name, text, winner, think=path.name.startswith("think")))
        for fmt in flexjudge.formats.FORMATS:
            try:
                rendered = flexjudge.render(judgment, fmt)
            except flexjudge.RenderError:
                continue
            if rendered != text:
                seeds.append(seed_from_text(f"{fmt}({path.name})", rendered, winner, think=fmt == "think"))
    seeds.append(_pointwise_seed())
    return seeds


@dataclass(frozen=True)
class Case:
    seed: Seed
    mutation: str  # what was done, for the record ("truncate@120", "run '{'x2048@300")
    text: str
    allowed: frozenset[int | None]  # what a reader may return; empty: it must fail


def splice(seed: Seed, a: int, b: int, r: str, mutation: str, adds_winner: str | None = None) -> Case:
    """Replace `seed.text[a:b]` with `r`; the oracle's expectation comes from where that lands."""
    text = seed.text[:a] + r + seed.text[b:]
    s, e = seed.span
    if seed.kind == "point":
        return Case(seed, mutation, text, frozenset())
    if a <= e and b >= s:  # overlaps or abuts the value: judge the changed value region itself
        region = text[min(a, s) : max(e, b) - (b - a) + len(r)]
        named: set[int | None] = set(names(region))
        if not named and region.strip().strip('"').lower() == "null":
            named = {None}  # an explicit null is a tie as written, not an invention
    else:
        named = {seed.winner}
    if adds_winner is not None:
        named |= names(adds_winner)
    return Case(seed, mutation, text, frozenset(named) if len(named) == 1 else frozenset())


# ---------------------------------------------------------------- mutations

_CONFUSABLES = {
    "I": "\u0406\u0399\uff29",  # Cyrillic І, Greek Ι, fullwidth Ｉ
    "O": "\u041e\u039f",
    "o": "\u043e\u03bf",
    "a": "\u0430",
    "e": "\u0435",
    "i": "\u0456",
    "1": "\uff11\u0661",  # fullwidth １, Arabic-Indic ١
    "2": "\uff12\u0662",
    "V": "\u0474",
}
_WINNER_KEYS = ('"winner"', '"winn\\u0065r"', '"\\u0077inner"', '"w\\u0069nn\\u0065r"')
_RUNS = (" ", "\n", "\t ", "{", "[", '"', "\\", "}", ": ", "Image 2 ", "Image 1 is better than Image 2. ")
_KEY_SCALAR = re.compile(r'"([A-Za-z_0-9]+)"\s*:\s*("(?:[^"\\]|\\.)*"|-?[0-9]+|true|false|null)')


def _winner_value(seed: Seed, candidate: int) -> str:
    """`candidate` written the way this seed writes its winner ("Image 1", "1")."""
    return _NUMBER.sub(str(candidate), seed.text[seed.span[0] : seed.span[1]])


def _truncate(seed: Seed, rng: random.Random) -> Case:
    p = rng.randrange(len(seed.text) + 1)
    return splice(seed, p, len(seed.text), "", f"truncate@{p}")


def _flip(seed: Seed, rng: random.Random) -> Case:
    p, bit = rng.randrange(len(seed.text)), rng.randrange(8)
    return splice(seed, p, p + 1, chr(ord(seed.text[p]) ^ (1 << bit)), f"flip@{p}^{bit}")


def _punct(seed: Seed, rng: random.Random) -> Case:
    if rng.random() < 0.5:
        p, c = rng.randrange(len(seed.text) + 1), rng.choice('"{}[]:,\\')
        return splice(seed, p, p, c, f"insert {c!r}@{p}")
    spots = [i for i, c in enumerate(seed.text) if c in '"{}[]']
    p = rng.choice(spots) if spots else 0
    return splice(seed, p, p + 1, "", f"delete {seed.text[p : p + 1]!r}@{p}")


def _delete(seed: Seed, rng: random.Random) -> Case:
    p = rng.randrange(len(seed.text))
    q = min(len(seed.text), p + rng.randint(1, 40))
    return splice(seed, p, q, "", f"delete[{p}:{q}]")


def _duplicate(seed: Seed, rng: random.Random) -> Case:
    """A second member after an existing one; the winner's, often with an escaped key spelling."""
    if seed.kind == "pair" and seed.text[seed.span[0] - len("<answer>") : seed.span[0]] == "<answer>":
        other = f"<answer>Image {rng.choice((1, 2))} is better</answer>"
        p = rng.choice((seed.text.rindex("<answer>"), len(seed.text)))
        return splice(seed, p, p, other, f"second answer {other!r}@{p}", adds_winner=other)
    members = list(_KEY_SCALAR.finditer(seed.text))
    winner = [m for m in members if m.end(2) >= seed.span[1] >= m.start(2) and seed.kind == "pair"]
    m = winner[0] if winner and rng.random() < 0.5 else rng.choice(members)
    if winner and m is winner[0]:
        key = rng.choice(_WINNER_KEYS)
        value = rng.choice([_winner_value(seed, 1), _winner_value(seed, 2)])
        value = f'"{value}"' if seed.text[m.start(2)] == '"' else value
        member = f", {key}: {value}"
        return splice(seed, m.end(), m.end(), member, f"duplicate {member!r}@{m.end()}", adds_winner=value)
    member = f', "{m.group(1)}": {m.group(2)}'
    return splice(seed, m.end(), m.end(), member, f"duplicate {member!r}@{m.end()}")


def _confusable(seed: Seed, rng: random.Random) -> Case:
    s, e = seed.span
    spots = [i for i in range(s, e) if seed.text[i] in _CONFUSABLES] if rng.random() < 0.5 else []
    spots = spots or [i for i, c in enumerate(seed.text) if c in _CONFUSABLES]
    p = rng.choice(spots)
    c = rng.choice(_CONFUSABLES[seed.text[p]])
    return splice(seed, p, p + 1, c, f"confusable {c!r} for {seed.text[p]!r}@{p}")


def _run(seed: Seed, rng: random.Random) -> Case:
    unit, n = rng.choice(_RUNS), rng.choice((16, 256, 2048, 8192))
    p = rng.choice((rng.randrange(len(seed.text) + 1), seed.span[0], seed.span[1]))
    reps = max(1, n // len(unit))
    return splice(seed, p, p, unit * reps, f"run {unit!r}x{reps}@{p}")


def _second(seed: Seed, rng: random.Random) -> Case:
    """A second judgment after the first, naming the other candidate, complete or cut short."""
    if seed.kind == "point":
        return _truncate(seed, rng)
    other = 3 - (seed.winner or 1)
    s, e = seed.span
    copy = seed.text[:s] + _winner_value(seed, other) + seed.text[e:]
    cut = rng.choice((len(copy), rng.randrange(len(copy) + 1)))
    written = copy[:cut]
    holds = cut >= s + len(_winner_value(seed, other))  # the copy still names its (other) winner
    return splice(
        seed, len(seed.text), len(seed.text), "\n" + written, f"second judgment cut@{cut}",
        adds_winner=str(other) if holds else None,
    )  # fmt: skip


# Winner values a judge might write that settle on no single candidate, or on one in an odd spelling.
_REWRITES = (
    "Image 1 vs Image 2", "Image 1 or 2", "1/2", "tie", "both", "neither", "true", "false", "null", "Image 3",
    "Image 0", "Image 12", "Image 2?", "Image 1 isn't better", "not Image 1", "Image 2 is probably better",
    "Image \uff12", "\u0399mage 1", "Image 1, Image 2", "2.0", "1e0", "2.5", "-1", "[1]", "{}", "",
)  # fmt: skip
# Raw (unquoted) values that start with a number and go on, in JSON whose value is a string: lenient flex
# read the leading number (`"winner": 1 or 2` -> 1) until _recovery.py was fixed (see test_fuzz.py).
# `open_bugs=False` leaves them out, for a run that must tell a new finding from this one.
OPEN_RAW = ("1/2", "2 vs 1", "1 or 2", '"Image 1" or "Image 2"', "1,2")


def _rewrite(seed: Seed, rng: random.Random, open_bugs: bool = True) -> Case:
    """The winner value written over with another phrase, inside its quotes or in place of them."""
    s, e = seed.span
    quoted = seed.text[s - 1 : s] == '"' and seed.text[e : e + 1] == '"'
    raw = quoted and rng.random() < 0.3
    phrases = _REWRITES
    if raw:  # the open bug's inputs come only from OPEN_RAW, so that open_bugs=False leaves every one out
        phrases = tuple(p for p in _REWRITES if p not in OPEN_RAW) + (OPEN_RAW if open_bugs else ())
    phrase = rng.choice(phrases)
    if raw:
        return splice(seed, s - 1, e + 1, phrase, f"rewrite raw {phrase!r}")
    return splice(seed, s, e, phrase, f"rewrite {phrase!r}")


MUTATIONS: dict[str, Callable[[Seed, random.Random], Case]] = {
    "truncate": _truncate,
    "flip": _flip,
    "punct": _punct,
    "delete": _delete,
    "duplicate": _duplicate,
    "confusable": _confusable,
    "run": _run,
    "second": _second,
    "rewrite": _rewrite,
}


def _mutate(kind: str, seed: Seed, rng: random.Random, open_bugs: bool) -> Case:
    return _rewrite(seed, rng, open_bugs) if kind == "rewrite" else MUTATIONS[kind](seed, rng)


def every_mutation(seed: Seed, rng: random.Random, open_bugs: bool = True) -> list[Case]:
    """One input of each mutation kind, for a seed the caller brings (Hypothesis renders them)."""
    return [_mutate(kind, seed, rng, open_bugs) for kind in MUTATIONS]


def case_at(seeds: list[Seed], index: int, salt: int = 0, open_bugs: bool = True) -> Case:
    """The `index`-th fuzz input: deterministic, so a worker regenerates it and a report can name it."""
    rng = random.Random(salt * 1_000_003 + index)
    seed = seeds[index % len(seeds)]
    kind = list(MUTATIONS)[(index // len(seeds)) % len(MUTATIONS)]
    # One splice per input, never two composed: that keeps the oracle's span bookkeeping exact.
    return _mutate(kind, seed, rng, open_bugs)


# ---------------------------------------------------------------- readers and judging one case


def read_parse(text: str, strict: bool) -> int | None:
    """The real reader: parse (auto-detected format), then check the judgment it read."""
    judgment = flexjudge.parse(text, strict=strict)
    flexjudge.check(judgment)
    return judgment.verdict.winner


def read_pointwise(text: str, strict: bool) -> int | None:
    flexjudge.check(flexjudge.parse_pointwise(text, strict=strict))
    return None


def read_always_one(text: str, strict: bool) -> int | None:
    """A wrong reader, to prove the oracle catches inventions: it answers 1 whatever the text says."""
    return 1


def read_sleeping(text: str, strict: bool) -> int | None:
    """A reader that hangs on inputs of odd length, to prove the watchdog kills and carries on."""
    if len(text) % 2:
        time.sleep(60)
    return read_parse(text, strict)


_NAIVE = re.compile(r'"winner"\s*:\s*"?[A-Za-z ]*([0-9])|<answer>[^0-9<]*([0-9])')


def read_naive(text: str, strict: bool) -> int | None:
    """A plausible but wrong reader: the first winner it finds by regex, blind to duplicates and to what
    follows. Proves the oracle catches the subtle inventions, not only a constant answer."""
    found = _NAIVE.search(text)
    if found is None:
        raise flexjudge.ParseError("no winner", offset=0)
    return int(found.group(1) or found.group(2))


READERS: dict[str, Reader] = {
    "parse": read_parse,
    "always_one": read_always_one,
    "naive": read_naive,
    "sleeping": read_sleeping,
}


@dataclass
class Finding:
    what: Literal["crash", "invented", "hang"]
    index: int
    seed: str
    mutation: str
    strict: bool | None
    detail: str
    size: int


@dataclass
class Tally:
    inputs: int = 0
    read: int = 0  # reader calls that returned a verdict (two calls per input: strict and lenient)
    refused: int = 0
    crashes: int = 0
    invented: int = 0
    hangs: int = 0
    seconds: float = 0.0
    bytes: int = 0
    slowest_us_per_kb: float = 0.0
    slowest: str = ""
    findings: list[Finding] = field(default_factory=list)  # the first 50, in full
    kinds: dict[str, int] = field(default_factory=dict)  # every finding, counted by what and mutation kind

    def found(self, finding: Finding) -> None:
        if len(self.findings) < 50:
            self.findings.append(finding)
        key = f"{finding.what}: {finding.mutation.split('@')[0]}"
        self.kinds[key] = self.kinds.get(key, 0) + 1

    def add(self, other: Tally) -> None:
        for name in ("inputs", "read", "refused", "crashes", "invented", "hangs", "seconds", "bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.slowest_us_per_kb > self.slowest_us_per_kb:
            self.slowest_us_per_kb, self.slowest = other.slowest_us_per_kb, other.slowest
        self.findings += other.findings[: max(0, 50 - len(self.findings))]
        for key, n in other.kinds.items():
            self.kinds[key] = self.kinds.get(key, 0) + n


def judge_case(case: Case, reader: Reader, index: int, tally: Tally) -> None:
    """Read `case` strictly and leniently; count crashes and inventions, and the time per KB."""
    if case.seed.kind == "point" and reader is read_parse:
        reader = read_pointwise
    size = len(case.text.encode("utf-8", "surrogatepass"))
    # CPU time of this process, not wall time: on shared cores a descheduled worker would otherwise record
    # the machine's load as the parser's slope. (The watchdog, which catches hangs, goes by wall time.)
    start = time.process_time()
    _read_both(case, reader, index, tally, size)
    elapsed = time.process_time() - start
    # Inputs under 1 KB count as 1 KB: per-call overhead is not a slope, and would otherwise lead the record.
    kb = max(size / 1024, 1.0)
    if elapsed * 1e6 / kb > tally.slowest_us_per_kb:
        # A new slowest is timed twice more and the fastest run kept (a GC pass is not the parser's slope).
        best = elapsed
        for _ in range(2):
            again = time.process_time()
            _read_both(case, reader, index, Tally(), size)
            best = min(best, time.process_time() - again)
        per_kb = best * 1e6 / kb
        if per_kb > tally.slowest_us_per_kb:
            tally.slowest_us_per_kb = per_kb
            tally.slowest = f"#{index} {case.seed.name} {case.mutation} ({size} B)"
    tally.inputs += 1
    tally.seconds += elapsed
    tally.bytes += size


def _read_both(case: Case, reader: Reader, index: int, tally: Tally, size: int) -> None:
    for strict in (True, False):
        try:
            got = reader(case.text, strict)
        except flexjudge.FlexjudgeError:
            tally.refused += 1
            continue
        except Exception as exc:  # the finding this harness exists for: an untyped error
            tally.crashes += 1
            detail = f"{type(exc).__name__}: {exc}"[:300]
            tally.found(Finding("crash", index, case.seed.name, case.mutation, strict, detail, size))
            continue
        tally.read += 1
        if case.seed.kind == "pair" and got not in case.allowed:
            tally.invented += 1
            detail = f"read {got}, allowed {sorted(case.allowed, key=str) or 'none (must fail)'}"
            tally.found(Finding("invented", index, case.seed.name, case.mutation, strict, detail, size))


def fuzz_inline(cases: list[tuple[int, Case]], reader: Reader = read_parse) -> Tally:
    """Judge cases in this process (no watchdog): for small runs and for proving the oracle can fail."""
    tally = Tally()
    for index, case in cases:
        judge_case(case, reader, index, tally)
    return tally


# ---------------------------------------------------------------- watched worker pool

_FLUSH = 256  # inputs between reports to the parent: what a killed worker loses and must redo


def _worker(
    conn: Connection,
    state: Any,
    lo: int,
    hi: int,
    skip: frozenset[int],
    reader: str,
    salt: int,
    open_bugs: bool,
) -> None:
    seeds = load_seeds()
    read = READERS[reader]
    tally = Tally()
    for index in range(lo, hi):
        if index in skip:
            continue
        case = case_at(seeds, index, salt, open_bugs)
        with state.get_lock():  # the parent reads index, start and size together
            state[0], state[1], state[2] = index, time.monotonic(), len(case.text)
        judge_case(case, read, index, tally)
        if (index + 1 - lo) % _FLUSH == 0:
            conn.send((index + 1, tally))
            tally = Tally()
    with state.get_lock():
        state[0] = -1
    conn.send((hi, tally))
    conn.close()


@dataclass
class _Slot:
    lo: int
    hi: int
    skip: set[int]
    process: Any = None
    conn: Connection | None = None
    state: Any = None
    done: bool = False


def fuzz_pool(
    count: int,
    workers: int = 2,
    *,
    reader: str = "parse",
    salt: int = 0,
    limit_s: float = 2.0,
    limit_s_per_kb: float = 0.02,
    open_bugs: bool = True,
    progress: Callable[[Tally], None] | None = None,
) -> Tally:
    """Judge inputs 0..count-1 on `workers` processes. An input that runs past `limit_s` (plus
    `limit_s_per_kb` per KB) has its worker killed: it is recorded as a hang, and a fresh worker picks up
    after it. Spawned, not forked: a fork of a threaded parent (pytest, Hypothesis) may deadlock."""
    ctx = multiprocessing.get_context("spawn")
    seeds = load_seeds()
    total = Tally()
    step = -(-count // workers)
    slots = [_Slot(lo, min(lo + step, count), set()) for lo in range(0, count, step)]

    def start(slot: _Slot) -> None:
        parent, child = ctx.Pipe(duplex=False)
        slot.state = ctx.Array("d", [-1.0, 0.0, 0.0])
        args = (child, slot.state, slot.lo, slot.hi, frozenset(slot.skip), reader, salt, open_bugs)
        slot.process = ctx.Process(target=_worker, args=args, daemon=True)
        slot.process.start()
        child.close()
        slot.conn = parent

    def drain(slot: _Slot) -> None:
        assert slot.conn is not None
        while slot.conn.poll():
            try:
                upto, part = slot.conn.recv()
            except EOFError:
                return
            total.add(part)
            slot.lo = upto
            slot.done = upto >= slot.hi
            if progress is not None:
                progress(total)

    for slot in slots:
        start(slot)
    while not all(slot.done for slot in slots):
        time.sleep(0.05)
        for slot in slots:
            if slot.done:
                continue
            drain(slot)
            with slot.state.get_lock():
                index, began, size = int(slot.state[0]), slot.state[1], int(slot.state[2])
            late = index >= 0 and time.monotonic() - began > limit_s + limit_s_per_kb * size / 1024
            died = not slot.process.is_alive() and not slot.done
            if died:
                drain(slot)  # it may have finished between the two looks
                died = not slot.done
            if not (late or died):
                continue
            slot.process.kill()
            slot.process.join()
            drain(slot)
            case = case_at(seeds, index, salt, open_bugs)
            if late:
                total.hangs += 1
                what: Literal["crash", "hang"] = "hang"
                detail = f"killed after {time.monotonic() - began:.1f} s"
            else:  # the process itself died (a segfault, an out-of-memory kill): a crash of this input
                total.crashes += 1
                what, detail = "crash", f"worker died with exit code {slot.process.exitcode}"
            total.found(Finding(what, index, case.seed.name, case.mutation, None, detail, size))
            slot.skip.add(index)
            start(slot)  # picks up at the last report, skipping the inputs that hung
    return total


def summary(tally: Tally) -> dict[str, Any]:
    return {
        "inputs": tally.inputs + tally.hangs,
        "crashes": tally.crashes,
        "invented": tally.invented,
        "hangs": tally.hangs,
        "slowest_us_per_kb": round(tally.slowest_us_per_kb, 1),
        "slowest": tally.slowest,
        "findings": [json.dumps(f.__dict__, ensure_ascii=True) for f in tally.findings[:10]],
    }
