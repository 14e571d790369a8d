#!/usr/bin/env python
"""Pair schedules for group rewards: calls per group against ranking quality, with simulated judges.

No model and no text: a judge is simulated at the outcome level. Each group has G true qualities (drawn
from a standard normal). Shown a pair (first, second), a judge returns the overall winner and the winners
of the three anchor dimensions; each of these four decisions is right with probability 1 - err,
independently (errors at random, whatever the quality gap). The judges:

- `err 10%` and `err 25%`: errors at random only.
- `err 10% + first bias`: as err 10%, and on 20% of *close* pairs its whole judgment (overall and anchors)
  prefers whichever candidate was shown first. A pair is close when its quality gap |q_a - q_b| lies below
  the median gap of the group's C(G, 2) pairs (so half the pairs of every group are close).

A judge is deterministic, like a greedy-decoding model: its answer to a pair shown in one order is drawn
once per group, so every schedule that asks that pair in that order gets the same answer as round robin
did. The schedules differ only in which pairs they ask, and the correlation with round robin's
advantages measures what skipping pairs loses.

Each schedule is driven exactly as `flexjudge.rewards.agroup_rewards` drives it: `next_pairs` in rounds,
each pair shown lower index first, outcomes fed back, then `from_outcomes(..., estimate=estimate_of(
schedule))`: points for round robin, the exact posterior for `Bayesian`, Bradley-Terry for the other
incomplete ones. `Posterior` and `Bayesian` run where they apply (their posterior sums over the 2^G
subsets, G <= 16): both at G = 9, and `Bayesian(per_round=4)` at G = 16 (see `SEQUENTIAL_UP_TO`).
Besides the library's schedules:

- `round robin + swap`: every pair in both orders (2 C(G, 2) calls) merged as the judge's swap rule does
  (`flexjudge.swap`), on outcomes: an anchor both orders agree on keeps that winner, an anchor they
  disagree on is a dead heat (a tie: the simulated judge's scores are symmetric); the overall winner is
  the two verdicts' when they agree, else the majority of the merged anchor winners, a tie when even.
- `pointwise`: G calls, each candidate scored alone: an overall score and three anchor scores, each its
  quality plus independent normal noise of standard deviation s. Two candidates compared by a score err
  when the noise difference outweighs the quality gap; with qualities N(0, 1) that happens on a fraction
  arctan(s) / pi of pairs, so s = tan(pi * err) makes the pointwise judge err on the same share of pairs
  as the pairwise one (s = 0.325 at 10%, 1.0 at 25%). A pointwise judge sees no order, so the biased
  judge's pointwise twin is plain err 10%. The scores are turned into outcomes for every pair (higher
  score wins) and rewarded by `from_outcomes` with points, as round robin is.

- `ScoreFirst`: the pointwise judge's G calls first (its scores, as `pointwise` draws them), then the
  rest of the half budget on pairs of the pairwise judge (`flexjudge.rewards.ScoreFirst`; 4 pairs a round
  above `SEQUENTIAL_UP_TO`), rewarded by the latent posterior of both.

- `oracle: true order (bound)`: not a schedule (it reads the true order): the budget's pairs nearest in
  the true order (rank distance 1, then 2, ...), rewarded like any incomplete schedule. What half the
  calls reach with this estimator when the pairs are chosen as well as the truth allows.

Reported per schedule, over the same groups: calls and rounds per group (a round's calls run
concurrently, rounds run one after another), the mean Kendall tau (tau-b) of the ranking the advantages
induce against the true order, its gap to round robin's with the standard error of the mean per-group
gap (the groups are shared), and the mean Pearson correlation of the advantages with round robin's on
the same group. The goal (issue 9): at most half of round robin's calls at a
Kendall tau within 0.02 of round robin's.

    python benchmarks/schedules.py                  # 1,000 groups per setting, G = 9 and 16
    python benchmarks/schedules.py --groups 50      # quick
    python benchmarks/schedules.py --record         # append the table to benchmarks/RESULTS.md
    python benchmarks/schedules.py --only ScoreFirst   # round robin and the named schedules only
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import math
import multiprocessing
import os
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flexjudge.rewards import Outcome, RandomGraph, RoundRobin, Schedule, Swiss, from_outcomes
from flexjudge.rewards.schedules import MAX_EXACT, Active, Bayesian, Posterior, ScoreFirst, estimate_of

sys.path.insert(0, str(Path(__file__).parent))  # run from anywhere: the shared machine line
from _machine import machine

Decision = tuple[int, tuple[int, int, int]]
"""A judgment at the outcome level: the overall winner and the three anchor winners (group indices)."""


@dataclass(frozen=True)
class JudgeModel:
    name: str
    err: float
    first_bias: float = 0.0
    """The probability that a close pair's judgment prefers the first-shown candidate outright."""


JUDGES = (
    JudgeModel("err 10%", 0.10),
    JudgeModel("err 25%", 0.25),
    JudgeModel("err 10% + first bias", 0.10, first_bias=0.20),
)


class Group:
    """One group's truth and its judge's fixed answers to every ordered pair."""

    def __init__(self, g: int, judge: JudgeModel, rng: random.Random) -> None:
        self.g = g
        self.judge = judge
        self.quality = [rng.gauss(0.0, 1.0) for _ in range(g)]
        gaps = [abs(self.quality[a] - self.quality[b]) for a, b in itertools.combinations(range(g), 2)]
        median_gap = statistics.median(gaps)
        self.answers: dict[tuple[int, int], Decision] = {}
        for first, second in itertools.permutations(range(g), 2):
            better, worse = (first, second) if self.quality[first] > self.quality[second] else (second, first)
            close = abs(self.quality[first] - self.quality[second]) < median_gap
            if close and rng.random() < judge.first_bias:
                self.answers[first, second] = (first, (first, first, first))
                continue
            picks = [better if rng.random() >= judge.err else worse for _ in range(4)]
            self.answers[first, second] = (picks[0], (picks[1], picks[2], picks[3]))
        self.noise = [[rng.gauss(0.0, 1.0) for _ in range(4)] for _ in range(g)]  # the pointwise judge's
        self.calls = 0
        self.rounds = 0

    def ask(self, first: int, second: int) -> Outcome:
        self.calls += 1
        overall, anchors = self.answers[first, second]
        return min(first, second), max(first, second), overall, anchors

    def ask_swapped(self, i: int, j: int) -> Outcome:
        """Both orders merged by the swap rule (see the module docstring); two calls."""
        _, _, one, one_anchors = self.ask(i, j)
        _, _, two, two_anchors = self.ask(j, i)
        anchors = tuple(a if a == b else None for a, b in zip(one_anchors, two_anchors, strict=True))
        if one == two:
            return i, j, one, anchors
        votes_i, votes_j = anchors.count(i), anchors.count(j)
        return i, j, (i if votes_i > votes_j else j if votes_j > votes_i else None), anchors

    def scores(self) -> list[list[float]]:
        """The pointwise judge's four scores of every candidate (see `pointwise`); G calls."""
        self.calls += self.g
        s = math.tan(math.pi * self.judge.err)
        return [[q + s * e for e in noise] for q, noise in zip(self.quality, self.noise, strict=True)]

    def pointwise(self) -> list[Outcome]:
        """Every pair compared by its candidates' noisy scores; G calls."""
        self.calls += self.g
        s = math.tan(math.pi * self.judge.err)
        score = [[q + s * e for e in noise] for q, noise in zip(self.quality, self.noise, strict=True)]
        outcomes: list[Outcome] = []
        for i, j in itertools.combinations(range(self.g), 2):
            won = [i if score[i][d] > score[j][d] else j for d in range(4)]
            outcomes.append((i, j, won[0], (won[1], won[2], won[3])))
        return outcomes


def drive(schedule: Schedule, group: Group, rng: random.Random, swap: bool = False) -> list[float]:
    """Advantages from `schedule`, driven as `flexjudge.rewards.agroup_rewards` drives it (`ScoreFirst`
    first gets every candidate's scores: G calls in one round)."""
    outcomes: list[Outcome] = []
    scores = None
    if isinstance(schedule, ScoreFirst):
        scores = group.scores()
        group.rounds += 1
        schedule = schedule.with_scores(scores)
    while pairs := schedule.next_pairs(group.g, outcomes, rng):
        group.rounds += 1
        outcomes.extend(group.ask_swapped(i, j) if swap else group.ask(i, j) for i, j in pairs)
    rewards = from_outcomes(group.g, outcomes, estimate=estimate_of(schedule), scores=scores)
    return rewards.advantages


@dataclass(frozen=True)
class Oracle:
    """Not a schedule: it reads the true order, which no schedule can. Its `budget` pairs are the nearest
    in the true order (rank distance 1, then 2, ...), in one round; rewarded as an incomplete schedule is.
    The reference for what half the calls could reach with this estimator when the pairs are well chosen."""

    quality: tuple[float, ...]
    budget: int
    complete: bool = False

    def next_pairs(
        self, num_candidates: int, outcomes: Sequence[Outcome], rng: random.Random
    ) -> list[tuple[int, int]]:
        if outcomes:
            return []
        order = sorted(range(num_candidates), key=lambda c: -self.quality[c])
        near = [(order[p], order[p + d]) for d in range(1, num_candidates) for p in range(num_candidates - d)]
        return [(min(a, b), max(a, b)) for a, b in near[: self.budget]]


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    concordant = discordant = ties_x = ties_y = 0
    for a, b in itertools.combinations(range(len(x)), 2):
        dx, dy = x[a] - x[b], y[a] - y[b]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif (dx > 0) == (dy > 0):
            concordant += 1
        else:
            discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """None when either side is constant (the correlation is undefined; such groups are left out)."""
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


Runner = Callable[[Group, random.Random], list[float]]


SEQUENTIAL_UP_TO = 12
"""Up to this G, `Posterior` and `Bayesian` run as their defaults do (two pairs a round, one pair a round);
above it, up to `MAX_EXACT`, only `Bayesian` with 4 pairs a round: at G = 16 one exact posterior costs
about 30 ms, so one pair a round (53 posteriors a group) would take 1.3 CPU-hours over 3,000 groups.
Exploratory, 150 groups at G = 16, err 25% (not recorded): 1, 2 and 4 pairs a round gave +0.059, +0.064
and +0.054 tau over round robin (s.e. 0.006-0.007)."""


def runners(g: int, only: tuple[str, ...] = ()) -> list[tuple[str, Runner]]:
    """The schedules at G, the cheaper ones sized to at most half of round robin's C(G, 2) calls; with
    `only`, round robin (the reference) and those whose name contains one of its strings."""
    half = g * (g - 1) // 4
    score_first_per_round = 1 if g <= SEQUENTIAL_UP_TO else 4
    score_first_rounds = "" if score_first_per_round == 1 else f", per_round={score_first_per_round}"
    k = max(k for k in range(1, g) if g * k // 2 <= half and (g * k) % 2 == 0)
    rounds = half // (g // 2)
    table: list[tuple[str, Runner]] = [
        ("round robin", lambda grp, rng: drive(RoundRobin(), grp, rng)),
        ("round robin + swap", lambda grp, rng: drive(RoundRobin(), grp, rng, swap=True)),
        (f"RandomGraph(k={k})", lambda grp, rng: drive(RandomGraph(k=k), grp, rng)),
        (f"Swiss(rounds={rounds})", lambda grp, rng: drive(Swiss(rounds=rounds), grp, rng)),
        ("Active(fraction=0.5)", lambda grp, rng: drive(Active(fraction=0.5), grp, rng)),
        ("Active(fraction=0.5, per_round=2)", lambda grp, rng: drive(Active(0.5, per_round=2), grp, rng)),
        *(
            [
                ("Posterior(fraction=0.5)", lambda grp, rng: drive(Posterior(fraction=0.5), grp, rng)),
                ("Bayesian(fraction=0.5)", lambda grp, rng: drive(Bayesian(fraction=0.5), grp, rng)),
            ]
            if g <= SEQUENTIAL_UP_TO
            else [
                (
                    "Bayesian(fraction=0.5, per_round=4)",
                    lambda grp, rng: drive(Bayesian(fraction=0.5, per_round=4), grp, rng),
                )
            ]
            if g <= MAX_EXACT
            else []
        ),
        (
            f"ScoreFirst(fraction=0.5{score_first_rounds})",
            lambda grp, rng: drive(ScoreFirst(fraction=0.5, per_round=score_first_per_round), grp, rng),
        ),
        ("pointwise", lambda grp, rng: from_outcomes(grp.g, grp.pointwise(), estimate="points").advantages),
        ("oracle: true order (bound)", lambda grp, rng: drive(Oracle(tuple(grp.quality), half), grp, rng)),
    ]
    if only:
        table = [(n, r) for n, r in table if n == "round robin" or any(o in n for o in only)]
    return table


@dataclass
class Row:
    g: int
    judge: str
    schedule: str
    calls: float
    rounds: float
    tau: float
    tau_gap_se: float
    """The standard error of the mean per-group difference from round robin's tau (the groups are shared)."""
    corr: float
    undefined_corr: int


Samples = dict[str, tuple[list[int], list[int], list[float], list[float], int]]
"""Per schedule: calls, rounds, Kendall taus, correlations with round robin, and groups with that
undefined."""


def measure(
    g: int, judge: JudgeModel, first: int, stop: int, seed: int, only: tuple[str, ...] = ()
) -> Samples:
    """Groups `first` to `stop - 1` of a setting; each group seeds its own rng, so chunks can run anywhere."""
    named = runners(g, only)
    samples: Samples = {name: ([], [], [], [], 0) for name, _ in named}
    for n in range(first, stop):
        group = Group(g, judge, random.Random(f"{seed}:{g}:{judge.name}:{n}"))
        reference: list[float] = []
        for name, runner in named:
            group.calls = group.rounds = 0
            advantages = runner(group, random.Random(f"{seed}:{n}:{name}"))
            reference = reference or advantages  # round robin runs first
            calls, rounds, taus, corrs, undefined = samples[name]
            calls.append(group.calls)
            rounds.append(max(1, group.rounds))  # pointwise: its G calls in one round
            taus.append(kendall_tau_b(advantages, group.quality))
            r = pearson(advantages, reference)
            if r is None:
                samples[name] = (calls, rounds, taus, corrs, undefined + 1)
            else:
                corrs.append(r)
    return samples


def run(sizes: list[int], groups: int, seed: int, jobs: int, only: tuple[str, ...] = ()) -> list[Row]:
    chunk = max(1, groups // 8)
    tasks = [
        (g, judge, first, min(first + chunk, groups), seed, only)
        for g in sizes
        for judge in JUDGES
        for first in range(0, groups, chunk)
    ]
    if jobs > 1:
        with multiprocessing.Pool(jobs) as pool:
            results = pool.starmap(measure, tasks)
    else:
        results = [measure(*task) for task in tasks]
    rows: list[Row] = []
    for g in sizes:
        for judge in JUDGES:
            parts = [r for task, r in zip(tasks, results, strict=True) if task[0] == g and task[1] == judge]
            base = [t for part in parts for t in part["round robin"][2]]
            for name, _ in runners(g, only):
                calls = [c for part in parts for c in part[name][0]]
                rounds = [c for part in parts for c in part[name][1]]
                taus = [t for part in parts for t in part[name][2]]
                corrs = [c for part in parts for c in part[name][3]]
                gaps = [t - b for t, b in zip(taus, base, strict=True)]
                rows.append(
                    Row(
                        g,
                        judge.name,
                        name,
                        statistics.fmean(calls),
                        statistics.fmean(rounds),
                        statistics.fmean(taus),
                        statistics.stdev(gaps) / math.sqrt(len(gaps)) if len(gaps) > 1 else math.nan,
                        statistics.fmean(corrs) if corrs else math.nan,
                        sum(part[name][4] for part in parts),
                    )
                )
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| G | judge | schedule | calls / group | rounds / group | Kendall tau | tau - round robin (± s.e.) "
        "| corr. with round robin | goal |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        base = next(r for r in rows if r.g == row.g and r.judge == row.judge and r.schedule == "round robin")
        cheap = row.calls <= row.g * (row.g - 1) / 4
        goal = ("met" if row.tau >= base.tau - 0.02 else "not met") if cheap else "—"
        goal = "(bound, not a schedule)" if row.schedule.startswith("oracle") else goal
        gap = f"{row.tau - base.tau:+.3f}" + (
            f" ± {row.tau_gap_se:.3f}" if row.schedule != "round robin" else ""
        )
        corr = f"{row.corr:.3f}" + (f" ({row.undefined_corr} undefined)" if row.undefined_corr else "")
        lines.append(
            f"| {row.g} | {row.judge} | {row.schedule} | {row.calls:.1f} | {row.rounds:.1f} "
            f"| {row.tau:.3f} | "
            f"{gap} | {corr} | {goal} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--groups", type=int, default=1000, help="groups per setting (G x judge)")
    ap.add_argument("--sizes", default="9,16", help="comma-separated group sizes G")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    ap.add_argument(
        "--only", default="", help="comma-separated parts of schedule names to run (round robin always runs)"
    )
    default_record = str(Path(__file__).with_name("RESULTS.md"))
    ap.add_argument("--record", nargs="?", const=default_record, metavar="PATH", help="append to RESULTS.md")
    args = ap.parse_args()
    if args.groups < 1:
        ap.error("--groups must be at least 1")

    only = tuple(part for part in args.only.split(",") if part)
    rows = run([int(s) for s in args.sizes.split(",")], args.groups, args.seed, args.jobs, only)
    stamp = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}"
    info = (
        f"{stamp}; {machine()}\n\n`python benchmarks/schedules.py --groups {args.groups} --seed {args.seed}"
        + (f" --only {args.only}" if only else "")
        + "`"
    )
    text = table(rows)
    print(info + "\n\n" + text)
    if args.record:
        out = Path(args.record)
        section = f"\n## schedules ({datetime.date.today()})\n\n{info}\n\n{text}\n"
        with out.open("a", encoding="utf-8") as fh:
            fh.write(section)
        print(f"recorded in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
