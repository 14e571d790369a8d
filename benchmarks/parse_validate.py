#!/usr/bin/env python
"""Throughput of reading judge output: bare `json.loads` vs `flexjudge.parse` vs parse + `check`.

A GRPO reward server reads every judged pair (C(9,2) = 36 per prompt at G = 9), so the full path must
stay a small multiple of `json.loads`. Traces are synthetic but shaped like released UnifiedReward-Flex
output: indent=2, 3-4 categories x 3-5 criteria, reasons with unicode, commas and escaped quotes.

    python benchmarks/parse_validate.py --n 10000 --format all [--messy 0.1] [--record]
    python benchmarks/parse_validate.py --n 2000 --profile      # cProfile of the full path instead
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import gc
import json
import pstats
import random
import sys
from collections.abc import Callable
from pathlib import Path
from time import process_time

import pydantic
import pydantic_core
from _machine import machine

import flexjudge


def _pool(text: str) -> list[str]:  # "|"-separated pools keep the vocabulary compact and greppable
    return text.split("|")


ANCHORS = _pool("A. Semantic Alignment & Accuracy|B. Image Quality & Realism|C. Aesthetics & Artistry")
CRITERIA = [  # per category A, B, C, D
    _pool("Subject Completeness|Attribute Binding|Action Accuracy|Spatial Relation|Count Accuracy|Style Fit"),
    _pool("Anatomical Correctness|Lighting Physics|Texture Detail|Edge Clarity|Artifact Absence|Materials"),
    _pool("Colour Harmony|Composition|Mood & Atmosphere|Visual Storytelling|Depth & Layering|Cohesion"),
    _pool("Character Interaction|Gesture Expressiveness|Cultural Detail|Implied Motion|Story Clarity"),
]
GENERATED = _pool("D. Narrative & Interaction|D. Action Dynamics & Physics|D. Cultural Authenticity|D. Mood")
THINK_CORE = _pool("Semantic consistency|Aesthetics|Authenticity")
THINK_EXTRA = _pool("Text rendering|Spatial accuracy|Style fidelity|Detail richness")
SUBJECTS = _pool("fox|child|astronaut|barista|heron|robot|grandmother|dragon|cat|cyclist")
OBJECTS = _pool("lantern|kirin|horse|espresso machine|koi|bonsai|samovar|lighthouse|typewriter|tram")
ADJ = _pool("red|silver|tiny|ancient|neon-lit|paper|weathered|crystal|velvet|rusted")
VERBS = _pool("holding|riding|chasing|repairing|sitting beside|reading to|guarding")
SETTINGS = _pool(
    "in a snowy bamboo forest|on a rain-soaked Tokyo street at night|inside a café in Montmartre|"
    "under the aurora over Tromsø|in a souk in Marrakech|on a misty lake at dawn|in a Victorian study"
)
STYLES = _pool(
    "ukiyo-e woodblock print|35mm film photograph|watercolour illustration|Pixar-style 3D render|"
    "oil painting à la Vermeer|isometric pixel art|cinematic still, anamorphic lens"
)
SIGNS = _pool('a sign reading "OPEN 24/7"|a banner that says “Bonne Année”|a mug printed "Café Noir"')
PARTS = _pool("paws|face|hands|silhouette|reflection|shadow|fur|fabric folds|eyes|outline")
GOOD = _pool("crisp|convincing|well-balanced|faithful|naturally lit|cohesive|finely detailed")
BAD = _pool("muddy|smeared|slightly warped|over-saturated|flat|duplicated|half-melted|naïve")
OPENERS = _pool(
    "The {s} is rendered with {q} detail|The {s}'s {p} look {q}|Overall the {o} reads as {q}|"
    "Compared with the prompt, the {o} is {q}|Lighting on the {s} feels {q}|Its {p} are {q}"
)
CLAUSES = _pool(
    "||, although the {p} are {b}|; the {o} is partly cropped|, which matches the prompt|"
    ' — a clear miss on the prompt\'s "{st}" request|, with a stray artefact near the {p}|'
    " (the 'glow' is {b}, not warm)|, roughly 3×4 cm in frame, at ~20° tilt"
)


def sentences(r: random.Random, s: str, o: str, st: str, k: int) -> str:
    """k sentences of judge-like evidence; varied so the JSON scanner sees realistic strings."""
    out = []
    for _ in range(k):
        f = {"s": s, "o": o, "st": st, "p": r.choice(PARTS), "q": r.choice(GOOD + BAD), "b": r.choice(BAD)}
        out.append((r.choice(OPENERS) + r.choice(CLAUSES)).format(**f) + ".")
    return " ".join(out)


def make_scene(r: random.Random) -> tuple[str, str, str, str]:
    s, o, st = r.choice(SUBJECTS), r.choice(OBJECTS), r.choice(STYLES)
    prompt = f"A {r.choice(ADJ)} {s} {r.choice(VERBS)} a {r.choice(ADJ)} {o} {r.choice(SETTINGS)}, {st}"
    return prompt + (f", with {r.choice(SIGNS)}" if r.random() < 0.3 else ""), s, o, st


def flex_trace(r: random.Random) -> tuple[str, str]:
    prompt, s, o, st = make_scene(r)
    lean = r.choice((1, 2))  # real judges mostly favour one candidate, with dissenting criteria
    foci = [f"{s} & {o}".title(), s.title(), o.title(), st.split(",")[0].title(), r.choice(PARTS).title()]
    names = ANCHORS + ([r.choice(GENERATED)] if r.random() < 0.4 else [])
    categories, wins = [], []
    for i, name in enumerate(names):
        crits = r.sample(CRITERIA[i], r.randint(3, 5))  # without replacement: duplicate names are an error
        splits = []
        for _ in crits:
            a = r.choice((10, 9, 8, 8, 7, 7, 7, 6, 6, 5, 5, 4, 3))  # the favoured side's share
            side = lean if r.random() < 0.75 else 3 - lean
            splits.append([a, 10 - a] if side == 1 else [10 - a, a])
        if sum(a for a, _ in splits) * 2 == 10 * len(splits):  # a tie: move one point so someone leads
            k = 0 if splits[0][0] < 10 else 1
            splits[0][k], splits[0][1 - k] = splits[0][k] + 1, splits[0][1 - k] - 1
        t1 = sum(a for a, _ in splits)
        t2 = 10 * len(splits) - t1
        wins.append(1 if t1 > t2 else 2)
        dims = [
            {"name": f"{c} ({r.choice(foci)})", "reason_1": sentences(r, s, o, st, r.randint(1, 3)),
             "reason_2": sentences(r, s, o, st, r.randint(1, 3)), "score_1": a, "score_2": b}
            for c, (a, b) in zip(crits, splits, strict=True)
        ]  # fmt: skip
        lead = f"Image {wins[-1]} leads {max(t1, t2)} to {min(t1, t2)} here. "
        cat_reason = lead + sentences(r, s, o, st, r.randint(1, 2))
        winner = f"Image {wins[-1]}"
        categories.append({"name": name, "dims": dims, "cat_reason": cat_reason, "cat_winner": winner})
    ones = wins.count(1) * 2
    overall = 1 if ones > len(wins) else 2 if ones < len(wins) else wins[0]  # 2-2: alignment decides
    reason = f"Image {overall} wins {wins.count(overall)} of {len(wins)}. {sentences(r, s, o, st, 2)}"
    body = {"prompt": prompt, "categories": categories, "reason": reason, "winner": f"Image {overall}"}
    return json.dumps(body, indent=2, ensure_ascii=False), prompt


def think_trace(r: random.Random) -> tuple[str, str]:
    prompt, s, o, st = make_scene(r)
    names = [*THINK_CORE, *r.sample(THINK_EXTRA, r.randint(0, 2))]
    lines, ones, twos = ["<think>"], [], []
    for i, name in enumerate(names, 1):
        ones.append(r.randint(3, 10))
        twos.append(r.randint(3, 10))
        lines += [
            f"{i}. {name}:",
            f"    Image 1 ({ones[-1]}/10) - {sentences(r, s, o, st, r.randint(1, 2))[:-1]};",  # ';' ends it
            f"    Image 2 ({twos[-1]}/10) - {sentences(r, s, o, st, r.randint(1, 2))}",
        ]
    lines.append("Total score:")
    lines += [f"Image {n}: {'+'.join(map(str, xs))}={sum(xs)}" for n, xs in ((1, ones), (2, twos))]
    winner = 1 if sum(ones) >= sum(twos) else 2  # Think decides by total score
    return "\n".join([*lines, "</think>", f"<answer>Image {winner} is better</answer>"]), prompt


def messy(r: random.Random, text: str) -> str:
    """Wrappers seen in the wild (fences, open fences, prose) that force the lenient path."""
    return r.choice([
        f"```json\n{text}\n```",
        f"```json\n{text}",
        f"Here is my evaluation:\n\n{text}\n\nDone.",
        f"Sure! Comparing both images.\n```json\n{text}\n```\nImage {r.choice((1, 2))} is better.",
    ])  # fmt: skip


def sanity(fmt: str, texts: list[str], prompts: list[str], recovered: bool, clean: list[str] | None) -> None:
    """Abort before timing if a trace does not take the path it is meant to measure."""
    for i, (text, prompt) in enumerate(zip(texts, prompts, strict=True)):
        j = flexjudge.parse(text, prompt=prompt)
        bad = [f for f in flexjudge.check(j, prompt=prompt) if f.severity != "info"]
        if j.meta.recovered != recovered or j.meta.source_format != fmt or bad:
            sys.exit(
                f"sanity: {fmt} trace {i}: recovered={j.meta.recovered} {j.meta.recovery_notes}, "
                f"format={j.meta.source_format}, findings={bad}\n{text[:400]}"
            )
        if clean is not None and j.content() != flexjudge.parse(clean[i]).content():
            sys.exit(f"sanity: messy {fmt} trace {i} does not read as its clean original")


def best(loops: dict[str, Callable[[], None]], repeat: int, gc_on: bool) -> dict[str, float]:
    """Best-of-`repeat` seconds per path, the paths interleaved: each round times every path once, so a
    burst of load from other processes lands on all of them alike and the ratios stay comparable (timing
    one path's repeats back to back let a slow stretch inflate one path only). Time is this process's CPU
    time, not wall time, so waiting for a core that other processes hold does not count. The minimum is
    the least noisy estimate of what the code costs."""
    times: dict[str, float] = dict.fromkeys(loops, float("inf"))
    for _ in range(repeat):
        for name, loop in loops.items():
            gc.collect()
            if not gc_on:
                gc.disable()  # cyclic GC pauses land on whichever trace triggers them: noise here
            try:
                t0 = process_time()
                loop()
                times[name] = min(times[name], process_time() - t0)
            finally:
                gc.enable()
    return times


def loops(texts: list[str], prompts: list[str], think: bool) -> dict[str, Callable[[], None]]:
    parse, check = flexjudge.parse, flexjudge.check
    # Think does not echo the prompt, so callers pass it; "" is parse's default for the JSON formats.
    pairs = list(zip(texts, prompts, prompts if think else [""] * len(texts), strict=True))

    def loads() -> None:
        for t in texts:
            json.loads(t)

    def parse_only() -> None:
        for t, _, q in pairs:
            parse(t, prompt=q)

    def full() -> None:
        for t, p, q in pairs:
            check(parse(t, prompt=q), prompt=p)

    return {"json.loads": loads, "parse": parse_only, "parse+check": full}


HEADER = """# Benchmark results

Appended by `benchmarks/*.py --record`; newest last. Timings are best of `--repeat` runs, one process,
the same texts for every path. Compare numbers only within one section (one machine, one date).

- `parse_validate.py`: reading judge output. `json.loads` is the floor (the released reward code's parser);
  `parse` is `flexjudge.parse(text)` (format detection, schema validation, `Judgment` built);
  `parse+check` adds `flexjudge.check(judgment, prompt=...)`, the full path a reward server runs.
  `(messy)` rows time wrapped traces (fences, prose) that take the lenient recovery path; their ratio is to
  json.loads of the clean traces. Think text is not JSON, so its ratio column is empty.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="traces per format")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--format", choices=("flex", "native", "think", "all"), default="flex")
    ap.add_argument("--messy", type=float, default=0.0, help="extra fraction of wrapped flex/native traces")
    ap.add_argument("--profile", action="store_true", help="cProfile the full path (top 25 by tottime)")
    default_record = str(Path(__file__).with_name("RESULTS.md"))
    ap.add_argument("--record", nargs="?", const=default_record, metavar="PATH", help="append to RESULTS.md")
    args = ap.parse_args()

    r = random.Random(args.seed)
    flex = [flex_trace(r) for _ in range(args.n)]
    data = {"flex": ([t for t, _ in flex], [p for _, p in flex])}
    if args.format in ("native", "all"):  # the same judgments, so flex and native rows are comparable
        data["native"] = ([flexjudge.render(flexjudge.parse(t), "native") for t, _ in flex], data["flex"][1])
    if args.format in ("think", "all"):
        think = [think_trace(r) for _ in range(args.n)]
        data["think"] = ([t for t, _ in think], [p for _, p in think])
    if args.format not in ("flex", "all"):
        del data["flex"]

    rows: list[tuple[str, str, float, float | None, float]] = []  # format, path, µs, ratio, µs with gc on
    floor: dict[str, float] = {}  # json.loads µs per trace, per format
    for fmt, (texts, prompts) in data.items():
        sanity(fmt, texts, prompts, recovered=False, clean=None)
        n_messy = int(len(texts) * args.messy) if fmt != "think" else 0  # Think has no separate lenient path
        wrapped = [messy(r, t) for t in texts[:n_messy]]
        sanity(fmt, wrapped, prompts[:n_messy], recovered=True, clean=texts[:n_messy])
        size = sum(map(len, texts)) / len(texts)
        print(f"{fmt}: {len(texts)} clean traces (mean {size:,.0f} chars), {n_messy} messy", file=sys.stderr)
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(loops(texts, prompts, fmt == "think")["parse+check"])
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            continue
        sets = [("", texts, prompts)] + ([(" (messy)", wrapped, prompts[:n_messy])] if wrapped else [])
        for tag, ts, ps in sets:
            paths = loops(ts, ps, fmt == "think")
            if tag or fmt == "think":
                del paths["json.loads"]
            gc_off, gc_on = best(paths, args.repeat, False), best(paths, args.repeat, True)
            for path in paths:
                us, us_gc = gc_off[path] / len(ts) * 1e6, gc_on[path] / len(ts) * 1e6
                if path == "json.loads":
                    floor[fmt] = us
                base = floor.get(fmt)
                rows.append((fmt, path + tag, us, us / base if base else None, us_gc))
    if args.profile:
        return

    table = [
        "| format | path | traces/s | µs/trace | × json.loads | gc on: µs/trace |",
        "|---|---|" + "---:|" * 4,
    ]
    for f, p, us, ratio, g in rows:
        x = "—" if ratio is None else f"{ratio:.1f}"
        table.append(f"| {f} | {p} | {1e6 / us:,.0f} | {us:,.1f} | {x} | {g:,.1f} |")
    info = (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}; {machine()}; pydantic {pydantic.VERSION} "
        f"(core {pydantic_core.__version__}); flexjudge {flexjudge.__version__}\n\n"
        f"`--n {args.n} --seed {args.seed} --repeat {args.repeat} --messy {args.messy}`"
    )
    print(info + "\n\n" + "\n".join(table))
    if args.record:
        out = Path(args.record)
        section = f"\n## parse_validate ({datetime.date.today()})\n\n{info}\n\n" + "\n".join(table) + "\n"
        with out.open("a", encoding="utf-8") as fh:
            fh.write(("" if out.exists() and out.stat().st_size else HEADER) + section)
        print(f"recorded in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
