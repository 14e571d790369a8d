"""`flexjudge.rewards.group_rewards`: a group's pairs judged through one `Judge`, every failure counted.

The simulated judge (tests/simulated.py) knows each image's true quality, so rewards can be held to the
truth; the same calls then run through the real server on 127.0.0.1 with injected faults.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import random
import threading
from collections.abc import Callable, Iterator

import pytest
from PIL import Image

from flexjudge import Judge, MediaError, ParseError, UsageError
from flexjudge.rewards import (
    GroupResult,
    Outcome,
    RandomGraph,
    RoundRobin,
    Swiss,
    agroup_rewards,
    group_rewards,
)
from flexjudge.rewards.schedules import Active, Posterior
from tests.simulated import SimulatedJudge, candidate

QUALITIES = [120, 200, 40, 160, 80]  # true order, best first: 1, 3, 0, 4, 2
TRUE_ORDER = sorted(range(len(QUALITIES)), key=lambda k: -QUALITIES[k])


def _judge(sim: SimulatedJudge) -> Iterator[Judge]:
    with Judge("simulated", backend=sim) as judge:
        yield judge


@pytest.fixture
def sim() -> SimulatedJudge:
    return SimulatedJudge()


@pytest.fixture
def judge(sim: SimulatedJudge) -> Iterator[Judge]:
    yield from _judge(sim)


def _order(rates: list[float | None]) -> list[int]:
    return sorted(range(len(rates)), key=lambda k: -(rates[k] or 0.0))


def test_round_robin_rewards_follow_the_truth(judge: Judge, sim: SimulatedJudge) -> None:
    result = group_rewards("a red fox", [candidate(q) for q in QUALITIES], judge)
    assert sim.calls == 10 and len(result.judgments) == 10 and result.failures == []
    assert (
        all(a < b for a, b in sim.shown) is False
    )  # shown as (lower index, higher index), not sorted by quality
    assert [(p.first, p.second) for p in result.judgments] == [(i, j) for i, j, _, _ in result.outcomes]
    r = result.rewards
    assert _order(r.overall) == TRUE_ORDER and _order(r.advantages) == TRUE_ORDER  # type: ignore[arg-type]
    assert r.overall == [0.5, 1.0, 0.0, 0.75, 0.25]  # wins / 4: exact points, not a model
    assert result.matrix()[1][0] == 1.0 and result.matrix()[0][1] == 0.0 and result.matrix()[0][0] is None


def test_the_async_twin_matches(judge: Judge) -> None:
    images = [candidate(q) for q in QUALITIES]
    sync = group_rewards("a red fox", images, judge)
    asynchronous = asyncio.run(agroup_rewards("a red fox", images, judge))
    assert asynchronous.rewards == sync.rewards


def test_first_position_bias_leaks_without_swap_and_swap_cancels_it() -> None:
    """Every pair is close (bias 255): the overall winner is whoever is shown first, so candidate 0 (always
    first in round robin) wins overall everywhere. Swap merges both orders by the judge's rule (the
    dimension vote, which is honest here) and recovers the truth."""
    biased = SimulatedJudge(first_bias=255)
    for judge in _judge(biased):
        plain = group_rewards("a red fox", [candidate(q) for q in QUALITIES], judge).rewards
        merged = group_rewards("a red fox", [candidate(q) for q in QUALITIES], judge, swap=True)
        both = group_rewards("a red fox", [candidate(q) for q in QUALITIES], judge, swap="both")
    assert plain.overall == [1.0, 0.75, 0.5, 0.25, 0.0]  # index order: pure position
    assert _order(merged.rewards.overall) == TRUE_ORDER and len(merged.judgments) == 10
    assert both.rewards.overall == [0.5] * 5 and both.rewards.comparisons == [8] * 5  # two orders, two games
    assert _order(both.rewards.dimension) == TRUE_ORDER  # the honest categories still rank


def test_failures_are_counted_and_returned_in_every_mode() -> None:
    broken = SimulatedJudge(broken={frozenset((120, 200)), frozenset((40, 80))})
    images = [candidate(q) for q in QUALITIES]
    for judge in _judge(broken):
        dropped = group_rewards("a red fox", images, judge, on_failure="drop")
        tied = group_rewards("a red fox", images, judge, on_failure="tie")
        with pytest.raises(ParseError):
            group_rewards("a red fox", images, judge, on_failure="raise")
    for result in (dropped, tied):
        assert sorted((f.first, f.second) for f in result.failures) == [(0, 1), (2, 4)]
        assert all(isinstance(f.error, ParseError) for f in result.failures)
        assert len(result.judgments) == 8
    assert len(dropped.outcomes) == 8 and dropped.rewards.comparisons == [3, 3, 3, 4, 3]
    assert len(tied.outcomes) == 10 and (0, 1, None, ()) in tied.outcomes
    assert tied.rewards.overall[0] == (0.5 + 1 + 0 + 1) / 4  # vs 1 failed: a tie; beat 2 and 4; lost to 3
    assert tied.rewards.anchors[0][0] == 2 / 3  # the failed pair adds no anchor comparison


@pytest.mark.parametrize(
    "schedule",
    [RandomGraph(k=4), Swiss(rounds=4), Active(fraction=0.5), Posterior(fraction=0.5)],
    ids=["random-graph", "swiss", "active", "posterior"],
)
def test_cheaper_schedules_judge_fewer_pairs_and_still_rank(schedule: object) -> None:
    sim = SimulatedJudge()
    images = [candidate(q) for q in (10, 30, 50, 70, 90, 110, 130, 150, 170)]
    for judge in _judge(sim):
        result = group_rewards("a red fox", images, judge, schedule=schedule, seed=3)  # type: ignore[arg-type]
    assert sim.calls <= 18 and len({(i, j) for i, j, _, _ in result.outcomes}) == sim.calls  # half of 36
    rates = result.rewards.overall
    concordant = sum((rates[j] or 0) > (rates[i] or 0) for i, j in itertools.combinations(range(9), 2))
    assert concordant >= 0.9 * 36  # Bradley-Terry on half the pairs still orders a perfect judge's group


class _WhereItRuns:
    """A schedule that records, at each call, whether it runs on the event loop's thread."""

    def __init__(self, inner: RoundRobin | Active) -> None:
        self.inner = inner
        self.complete = inner.complete
        self.on_loop: list[bool] = []

    def next_pairs(self, g: int, outcomes: list[Outcome], rng: random.Random) -> list[tuple[int, int]]:
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:  # no loop runs in this thread: a worker's
            self.on_loop.append(False)
        return self.inner.next_pairs(g, outcomes, rng)


def test_an_incomplete_schedule_thinks_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model fit at G = 16 takes about 30 ms: in a worker thread, the loop keeps serving
    the other groups' requests meanwhile. Round robin's one cheap call stays on the loop."""
    import flexjudge.rewards._group as group_module

    rewards_on_loop: list[bool] = []
    original = group_module.from_outcomes

    def recording(*args: object, **kwargs: object) -> object:
        rewards_on_loop.append(threading.current_thread() is threading.main_thread())
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(group_module, "from_outcomes", recording)
    images = [candidate(q) for q in (10, 30, 50, 70, 90, 110)]
    cheap, adaptive = _WhereItRuns(RoundRobin()), _WhereItRuns(Active(fraction=0.5, per_round=1))

    async def both() -> None:
        async with Judge("simulated", backend=SimulatedJudge()) as judge:
            await agroup_rewards("a red fox", images, judge, schedule=cheap, seed=1)  # type: ignore[arg-type]
            await agroup_rewards("a red fox", images, judge, schedule=adaptive, seed=1)  # type: ignore[arg-type]

    asyncio.run(both())  # on this, the main thread
    assert cheap.on_loop == [True, True]
    assert len(adaptive.on_loop) >= 4 and not any(adaptive.on_loop)
    assert rewards_on_loop == [True, False]


def test_round_robin_is_complete_and_the_cheaper_ones_are_not() -> None:
    assert RoundRobin().complete and not RandomGraph().complete and not Swiss().complete
    assert not Active().complete and not Posterior().complete


def _play(schedule: Active, g: int, seed: int) -> list[list[tuple[int, int]]]:
    """The rounds `schedule` asks for when the better quality (the higher index) always wins."""
    outcomes: list[Outcome] = []
    rounds = []
    rng = random.Random(seed)
    while pairs := schedule.next_pairs(g, outcomes, rng):
        rounds.append(pairs)
        outcomes.extend((i, j, j, (j, j, j)) for i, j in pairs)
    return rounds


@pytest.mark.parametrize(
    ("g", "fraction", "calls"), [(9, 0.5, 18), (16, 0.5, 60), (5, 1.0, 10), (6, 0.25, 3)]
)
def test_active_spends_its_budget_once_per_pair_in_concurrent_rounds(
    g: int, fraction: float, calls: int
) -> None:
    rounds = _play(Active(fraction=fraction), g, seed=1)
    pairs = [p for r in rounds for p in r]
    assert len(pairs) == calls and len(set(pairs)) == calls  # the budget, no pair twice
    assert all(0 <= i < j < g for i, j in pairs)
    for r in rounds:  # a matching: no candidate waits on itself within a round
        members = [c for p in r for c in p]
        assert len(members) == len(set(members)) and len(r) <= g // 2
    assert _play(Active(fraction=fraction), g, seed=1) == rounds  # deterministic given the rng
    assert any(_play(Active(fraction=fraction), g, seed=s) != rounds for s in range(2, 6)) or fraction == 1.0


def test_active_asks_the_pairs_the_fit_cannot_order_yet() -> None:
    """0 beat 1 and 2 beat 3 on every decision: 0 and 2 stand level, as do 1 and 3, and those are the
    pairs worth a call; 0 against 3 (a winner against a loser) is nearly settled."""
    outcomes: list[Outcome] = [(0, 1, 0, (0, 0, 0)), (2, 3, 2, (2, 2, 2))]
    for seed in range(5):
        assert Active(fraction=1.0).next_pairs(4, outcomes, random.Random(seed)) == [(0, 2), (1, 3)]


def test_active_rejects_a_budget_outside_0_1() -> None:
    for fraction in (0.0, -0.5, 1.5):
        with pytest.raises(UsageError):
            Active(fraction=fraction).next_pairs(9, [], random.Random(0))


def test_a_group_call_that_cannot_be_judged_is_refused_before_anything_loads(judge: Judge) -> None:
    from flexjudge import UsageError

    with pytest.raises(UsageError, match="at least 2 candidate"):
        group_rewards("a red fox", [candidate(1)], judge)
    with pytest.raises(UsageError, match="non-empty prompt"):
        group_rewards("  ", [candidate(1), candidate(2)], judge)
    with pytest.raises(UsageError, match="on_failure"):
        group_rewards("a red fox", [candidate(1), candidate(2)], judge, on_failure="guess")  # type: ignore[arg-type]


class _LateFile(io.BytesIO):
    """An image file whose pixel data arrives late, as from a slow disk: once `arm`ed (after the header
    has been read), every read waits for `arrived`."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.armed = False
        self.arrived = threading.Event()

    def read(self, size: int | None = -1, /) -> bytes:
        if self.armed and not self.arrived.wait(timeout=60):
            raise TimeoutError("the test never let the pixels arrive")
        return super().read(size)


def _png(quality: int, *, corrupt: bool = False) -> bytes:
    """A PNG file of true quality `quality`; `corrupt` keeps its header and breaks its pixel data."""
    buffer = io.BytesIO()
    candidate(quality).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    if corrupt:
        start = data.index(b"IDAT") + 4
        data[start : start + 16] = bytes(16)  # the deflate stream's first bytes: no longer a stream
    return bytes(data)


def _late_image(quality: int, *, corrupt: bool = False) -> tuple[Image.Image, _LateFile]:
    """A lazily opened PNG of true quality `quality` whose pixels wait for `file.arrived`; `corrupt` breaks
    its pixel data, so that decoding fails once it arrives."""
    file = _LateFile(_png(quality, corrupt=corrupt))
    image = Image.open(file)  # reads the header only
    file.armed = True
    return image, file


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(6000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held within 60 s")


def test_a_pair_is_judged_as_soon_as_its_two_candidates_have_loaded() -> None:
    """The third candidate's pixels are late: the pair of the first two is judged before they arrive (it
    would wait for them if the group loaded every candidate first), and the group completes after."""
    sim = SimulatedJudge()
    late, file = _late_image(40)

    async def scenario() -> GroupResult:
        with Judge("simulated", backend=sim) as judge:
            group = asyncio.create_task(
                agroup_rewards("a red fox", [candidate(120), candidate(200), late], judge)
            )
            await _until(lambda: sim.calls > 0)
            assert sim.shown == [(120, 200)] and not group.done()
            file.arrived.set()
            return await group

    result = asyncio.run(scenario())
    assert sim.calls == 3 and result.failures == [] and result.rewards.overall == [0.5, 1.0, 0.0]


def test_a_candidate_that_cannot_load_stops_the_group_and_its_requests() -> None:
    """The late candidate turns out corrupt while the first pair is with the (slow) judge: the group
    raises its MediaError, and the pair's request is cancelled, not left running behind the caller."""
    sim = SimulatedJudge(latency_s=60)
    late, file = _late_image(40, corrupt=True)

    async def scenario() -> None:
        with Judge("simulated", backend=sim) as judge:
            group = asyncio.create_task(
                agroup_rewards("a red fox", [candidate(120), candidate(200), late], judge)
            )
            await _until(lambda: sim.calls > 0)
            file.arrived.set()
            with pytest.raises(MediaError, match="decoded"):
                await group
            assert asyncio.all_tasks() == {asyncio.current_task()}  # nothing left judging

    asyncio.run(scenario())


def test_on_failure_raise_cancels_the_rest_of_the_round() -> None:
    """With on_failure="raise" the first failed pair stops the group: the round's slower pairs are
    cancelled with it, not left running behind the caller."""
    sim = SimulatedJudge(broken={frozenset((200, 40))}, latency_s=60)  # the last pair fails, at once

    async def scenario() -> None:
        with Judge("simulated", backend=sim) as judge:
            group = agroup_rewards(
                "a red fox", [candidate(120), candidate(200), candidate(40)], judge, on_failure="raise"
            )
            with pytest.raises(ParseError):
                await group
            assert sim.calls == 3 and asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(scenario())


class _FirstPairOnly:
    """A schedule that judges candidates 0 and 1 only, whatever the group."""

    complete = False

    def next_pairs(
        self, num_candidates: int, outcomes: list[Outcome], rng: random.Random
    ) -> list[tuple[int, int]]:
        return [] if outcomes else [(0, 1)]


def test_a_candidate_no_pair_shows_must_still_load(judge: Judge) -> None:
    """Loading is the caller's contract for every candidate: one that cannot be decoded raises even when
    the schedule never shows it (it is not quietly left unscored)."""
    with pytest.raises(MediaError):
        group_rewards(
            "a red fox",
            [candidate(120), candidate(200), _png(40, corrupt=True)],
            judge,
            schedule=_FirstPairOnly(),
        )
    result = group_rewards(
        "a red fox", [candidate(120), candidate(200), candidate(40)], judge, schedule=_FirstPairOnly()
    )
    assert len(result.judgments) == 1 and result.rewards.unscored == [2]
