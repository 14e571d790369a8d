"""`POST /v1/rewards` over real HTTP on 127.0.0.1: the rewards equal `agroup_rewards` in-process on the
same inputs (a simulated judge with a known truth behind the app), the client rebuilds the same
`GroupResult`, the adapters run against the server, every limit and malformed body is a 4xx with a JSON
reason, the key is required, a full queue answers 503, a client that leaves cancels its judging,
accepted work is answered through a graceful shutdown (SIGTERM to `flexjudge serve --base-url` fronting a
second server), the tiny local model serves rewards, and 500 mixed requests leave the server standing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

import uvicorn
from served import free_port, serving
from simulated import SimulatedJudge, candidate
from test_serve_hostile import call, wait_until

from flexjudge import Judge
from flexjudge.backends._probe import PROBE_TOKENS
from flexjudge.backends.base import Generation, Request
from flexjudge.batching import BatchingBackend
from flexjudge.errors import BackendError
from flexjudge.media import to_data_url
from flexjudge.rewards import Active, GroupResult, Posterior, RandomGraph, Swiss, agroup_rewards
from flexjudge.rewards.adapters import FlowGRPOReward, GroupReward
from flexjudge.rewards.client import RemotePairError, RewardClient
from flexjudge.serve import ServeLimits, create_app, server_config

KEY = "reward-key"
QUALITIES = [200, 40, 120, 160, 80, 10]
BROKEN = {frozenset((120, 160))}  # this pair's judgment is no judgment: a ParseError, counted


class Sim(SimulatedJudge):
    """The simulated judge, also answering the openai backend's capability probe (as a server that
    enforces schemas does), and able to hold every generation at a gate the test opens."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = 0
        self.held: list[Request] = []

    async def generate(self, requests: list[Request]) -> list[Generation]:
        # The probe is answered as it comes, whatever it is batched with; judgments wait at the gate.
        judged = [r for r in requests if r.max_new_tokens != PROBE_TOKENS]
        self.entered += len(judged)
        self.held += judged
        while judged and not self.gate.is_set():  # polled: a thread blocked on an Event cannot be cancelled
            await asyncio.sleep(0.01)
        answers = iter(await super().generate(judged))
        probe = Generation('{"ok": true}', "stop", True)
        return [probe if r.max_new_tokens == PROBE_TOKENS else next(answers) for r in requests]

    def stopped(self) -> int:
        """Held requests whose callers are gone (the batcher sets their `stop`, as a model reads it)."""
        return sum(r.stop is not None and r.stop.is_set() for r in self.held)


@contextmanager
def running(app: Any, limits: ServeLimits | None = None) -> Iterator[tuple[str, uvicorn.Server]]:
    """Serve `app` with the configuration `flexjudge serve` uses; yields (base url, server)."""
    port = free_port()
    config = server_config(
        app, host="127.0.0.1", port=port, limits=limits or ServeLimits(), log_level="warning"
    )
    server = uvicorn.Server(config)
    with serving(server):
        yield f"http://127.0.0.1:{port}", server


def urls(qualities: list[int]) -> list[str]:
    return [to_data_url(candidate(q)) for q in qualities]


def body(**settings: Any) -> dict[str, Any]:
    groups = [
        {"prompt": "a red fox", "candidates": urls(QUALITIES)},
        {"prompt": "a blue bird", "candidates": urls([30, 250, 90, 170])},
    ]
    return {"groups": groups, **settings}


def in_process(prompt: str, qualities: list[int], **settings: Any) -> GroupResult:
    async def run() -> GroupResult:
        async with Judge("simulated", backend=SimulatedJudge(broken=BROKEN)) as judge:
            return await agroup_rewards(prompt, [candidate(q) for q in qualities], judge, **settings)

    return asyncio.run(run())


@pytest.fixture(scope="module")
def sim_server() -> Iterator[tuple[str, Sim]]:
    sim = Sim(broken=BROKEN)
    with running(create_app(sim, model_name="sim", api_key=KEY)) as (url, _):
        yield url, sim


SETTINGS = [
    ({}, {}),
    ({"swap": True, "on_failure": "tie", "alpha": 0.5, "category_weights": [1.0, 0.7, 0.7]},
     {"swap": True, "on_failure": "tie", "alpha": 0.5, "category_weights": [1.0, 0.7, 0.7]}),
    ({"swap": "both", "schedule": {"kind": "random_graph", "k": 2}, "seed": 7},
     {"swap": "both", "schedule": RandomGraph(2), "seed": 7}),
    ({"schedule": {"kind": "swiss", "rounds": 2}, "seed": 3}, {"schedule": Swiss(2), "seed": 3}),
    ({"schedule": {"kind": "active", "fraction": 0.6}, "seed": 5}, {"schedule": Active(0.6), "seed": 5}),
    ({"schedule": {"kind": "posterior", "fraction": 0.6, "per_round": 1, "error": 0.2}, "seed": 4},
     {"schedule": Posterior(0.6, per_round=1, error=0.2), "seed": 4}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("wire", "local"), SETTINGS, ids=["default", "swap-tie", "graph-both", "swiss", "active", "posterior"]
)
def test_served_rewards_equal_agroup_rewards_in_process(
    sim_server: tuple[str, Sim], wire: dict[str, Any], local: dict[str, Any]
) -> None:
    url, _ = sim_server
    status, answer, _ = call(url, "/v1/rewards", body(**wire), key=KEY)
    assert status == 200, answer
    fox, bird = answer["groups"]
    expected = in_process("a red fox", QUALITIES, **local)
    rewards = expected.rewards
    assert fox["advantages"] == rewards.advantages
    assert fox["overall"] == rewards.overall
    assert fox["dimension"] == rewards.dimension
    assert fox["anchors"] == rewards.anchors
    assert fox["reward"] == rewards.reward()  # JSON floats round-trip exactly: equal, not close
    assert (fox["comparisons"], fox["unscored"]) == (rewards.comparisons, rewards.unscored)
    assert [(*o[:3], tuple(o[3])) for o in fox["outcomes"]] == [
        (i, j, w, tuple(c)) for i, j, w, c in expected.outcomes
    ]
    failed = [(f.first, f.second, type(f.error).__name__) for f in expected.failures]
    assert [(f["first"], f["second"], f["type"]) for f in fox["failures"]] == failed
    assert failed or "schedule" in wire  # round robin meets the broken pair; a cheaper schedule may not
    assert all(f["message"] for f in fox["failures"]) and "judgments" not in fox
    other = in_process("a blue bird", [30, 250, 90, 170], **local).rewards
    assert bird["advantages"] == pytest.approx(other.advantages) and not bird["failures"]


def test_the_client_rebuilds_the_same_result_sync_and_async(sim_server: tuple[str, Sim]) -> None:
    url, _ = sim_server
    expected = in_process("a red fox", QUALITIES, swap=True)
    images = [candidate(q) for q in QUALITIES]
    with RewardClient(url, api_key=KEY) as client:
        got = client.group("a red fox", images, swap=True, return_judgments=True)
    assert got.rewards == expected.rewards
    assert got.outcomes == expected.outcomes and got.matrix() == expected.matrix()
    assert [(f.first, f.second) for f in got.failures] == [(f.first, f.second) for f in expected.failures]
    assert all(isinstance(f.error, RemotePairError) and f.error.kind == "ParseError" for f in got.failures)
    assert [(p.first, p.second, p.judgment.content()) for p in got.judgments] == [
        (p.first, p.second, p.judgment.content()) for p in expected.judgments
    ]

    async def both() -> list[GroupResult]:
        client = RewardClient(url + "/v1", api_key=KEY)
        try:
            return await client.arewards([("a red fox", images), ("a blue bird", images[:3])])
        finally:
            await client.aclose()

    fox, bird = asyncio.run(both())
    assert fox.rewards.advantages == pytest.approx(in_process("a red fox", QUALITIES).rewards.advantages)
    assert len(bird.rewards.advantages) == 3 and not bird.judgments


def test_flow_grpo_reward_runs_against_the_server(sim_server: tuple[str, Sim]) -> None:
    url, _ = sim_server
    images = [candidate(q) for q in [*QUALITIES[:4], 30, 250, 90, 170]]
    prompts = ["a red fox"] * 4 + ["a blue bird"] * 4
    with Judge("simulated", backend=SimulatedJudge(broken=BROKEN)) as judge:
        local, local_info = FlowGRPOReward(GroupReward(judge), group_size=4)(images, prompts)
    with RewardClient(url, api_key=KEY) as client:
        remote, info = FlowGRPOReward(GroupReward(client), group_size=4)(images, prompts)
        assert remote == pytest.approx(local) and info["overall"] == local_info["overall"]
        assert len(info["failures"][0]) == 1  # the broken pair, reported by the server
        with pytest.raises(RemotePairError):
            GroupReward(client, on_failure="raise")("a red fox", images[:4])


def test_client_errors_are_typed_with_the_server_reason(sim_server: tuple[str, Sim]) -> None:
    url, _ = sim_server
    images = [candidate(q) for q in QUALITIES]
    with RewardClient(url, api_key="wrong") as client, pytest.raises(BackendError) as denied:
        client.group("a red fox", images)
    assert denied.value.status_code == 401 and not denied.value.retryable
    with RewardClient(url, api_key=KEY) as client, pytest.raises(BackendError) as refused:
        client.group("a red fox", images[:5], schedule={"kind": "random_graph", "k": 3}, alpha=0.5)
    assert refused.value.status_code == 400 and "RandomGraph" in str(refused.value)
    with RewardClient(f"http://127.0.0.1:{free_port()}") as client, pytest.raises(BackendError) as gone:
        client.group("a red fox", images)
    assert gone.value.retryable and gone.value.status_code is None


def test_a_wrong_or_missing_token_is_401(sim_server: tuple[str, Sim]) -> None:
    url, sim = sim_server
    calls = sim.calls
    for key in (None, "wrong", KEY + "x", ""):
        status, answer, _ = call(url, "/v1/rewards", body(), key=key)
        assert status == 401 and answer["error"]["type"] == "authentication_error"
    assert sim.calls == calls  # nothing was judged


# ---------------------------------------------------------------- limits and malformed bodies

LIMITS = ServeLimits(
    max_body_bytes=40_000, max_groups=2, max_group_candidates=4, max_reward_images=8,
    max_image_pixels=32 * 32, max_reward_pixels=6 * 16 * 16 + 10,
)  # fmt: skip


@pytest.fixture(scope="module")
def limited() -> Iterator[tuple[str, Sim]]:
    sim = Sim()
    with running(create_app(sim, model_name="sim", limits=LIMITS), LIMITS) as (url, _):
        yield url, sim


def group(n: int = 2, size: int = 16, prompt: str = "p") -> dict[str, Any]:
    return {"prompt": prompt, "candidates": [to_data_url(candidate(10 * k, size)) for k in range(n)]}


BAD: list[tuple[Any, int, str]] = [
    ({"groups": [group()] * 3}, 400, "--max-groups"),
    ({"groups": [group(5)]}, 400, "--max-group-candidates"),
    ({"groups": [group(4), {"prompt": "v", "candidates": [[group(1)["candidates"][0]] * 3] * 2}]}, 400,
     "--max-reward-images"),
    ({"groups": [group(4), group(3)]}, 400, "--max-reward-pixels"),
    ({"groups": [group(2, size=33)]}, 400, "pixels"),
    ({"groups": [{"prompt": "p", "candidates": ["x" * 45_000, "y"]}]}, 413, "--max-body-bytes"),
    ({"groups": [{"prompt": "p", "candidates": ["/etc/passwd", "https://example.com/a.png"]}]}, 400,
     "data URLs"),
    ({"groups": [{"prompt": "p", "candidates": ["data:image/png;base64,AAAA", "data:,"]}]}, 400, ""),
    ({"groups": [group()], "alpha": 1.5}, 400, "alpha"),
    (b'{"groups": [], "alpha": NaN}', 400, "groups"),
    ({"groups": [group()], "alpha": "0.5"}, 400, "alpha"),
    ({"groups": [group()], "seed": -1}, 400, "seed"),
    ({"groups": [group()], "category_weights": [1, 2]}, 400, "category_weights"),
    ({"groups": [group()], "category_weights": [0, 0, 0]}, 400, "category_weights"),
    ({"groups": [group()], "on_failure": "raise"}, 400, "on_failure"),
    ({"groups": [group()], "schedule": {"kind": "elo"}}, 400, "schedule"),
    ({"groups": [group()], "schedule": {"kind": "swiss", "rounds": 0}}, 400, "rounds"),
    ({"groups": [group()], "schedule": {"kind": "active", "fraction": 0}}, 400, "fraction"),
    ({"groups": [group()], "schedule": {"kind": "posterior", "error": 0.5}}, 400, "error"),
    ({"groups": [group()], "schedule": {"kind": "bayesian", "per_round": 0}}, 400, "per_round"),
    ({"groups": [group(3)], "schedule": {"kind": "random_graph", "k": 1}}, 400, "RandomGraph"),
    ({"groups": [group(1)]}, 400, "candidates"),
    ({"groups": [group(prompt="")]}, 400, "prompt"),
    ({"groups": [group()], "path": "/tmp"}, 400, "path"),
    (b'{"groups": [', 400, "invalid"),
    (b"\xff\xfe not json", 400, "invalid"),
]  # fmt: skip


@pytest.mark.parametrize(("payload", "status", "reason"), BAD)
def test_each_limit_and_malformed_body_is_a_4xx_with_a_json_reason(
    limited: tuple[str, Sim], payload: Any, status: int, reason: str
) -> None:
    url, sim = limited
    calls = sim.calls
    got, answer, _ = call(url, "/v1/rewards", payload)
    assert got == status and reason in answer["error"]["message"] and answer["error"]["message"]
    assert sim.calls == calls


def test_requests_at_each_limit_are_answered(limited: tuple[str, Sim]) -> None:
    url, _ = limited
    mixed = {"prompt": "p", "candidates": [to_data_url(candidate(1, 32)), to_data_url(candidate(2, 16))]}
    for payload in ({"groups": [group(4), group(2)]}, {"groups": [mixed]}):
        status, answer, _ = call(url, "/v1/rewards", payload)
        assert status == 200 and len(answer["groups"]) == len(payload["groups"])


# ---------------------------------------------------------------- the queue, disconnects, shutdown


def test_a_full_queue_answers_503_with_retry_after_not_a_timeout() -> None:
    sim = Sim()
    sim.gate.clear()
    limits = ServeLimits(max_queue=2)
    app = create_app(sim, model_name="sim", limits=limits)
    with running(app, limits) as (url, _), ThreadPoolExecutor(4) as pool:
        held = [pool.submit(call, url, "/v1/rewards", {"groups": [group()]}) for _ in range(2)]
        wait_until(lambda: app.state.admitted == 2, "two admitted requests")
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        for path, payload in (("/v1/rewards", {"groups": [group()]}), ("/v1/chat/completions", chat)):
            status, answer, headers = call(url, path, payload)
            assert status == 503 and answer["error"]["type"] == "server_overloaded"
            assert headers["retry-after"] == "1"
        sim.gate.set()
        assert [f.result()[0] for f in held] == [200, 200]
        assert call(url, "/v1/rewards", {"groups": [group()]})[0] == 200


def test_a_client_that_leaves_cancels_its_groups_judging() -> None:
    sim = Sim()
    sim.gate.clear()
    app = create_app(sim, model_name="sim")
    with running(app) as (url, _):
        payload = json.dumps({"groups": [group(4), group(3)]}).encode()
        port = int(url.rsplit(":", 1)[1])
        head = b"POST /v1/rewards HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(payload)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head + payload)
            # A batch of 8 of the 9 pairs is at the judge (held at the gate); the ninth waits its turn.
            wait_until(lambda: sim.entered == 8, "a full batch of pairs in the judge")
        wait_until(lambda: app.state.admitted == 0, "the request to be let go")
        wait_until(lambda: sim.stopped() == 8, "every pair at the judge told to stop")
        sim.gate.set()
        time.sleep(0.2)
        assert sim.entered == 8  # the ninth pair, still queued, was dropped before reaching the judge


def test_graceful_shutdown_answers_accepted_work_in_process() -> None:
    sim = Sim()
    sim.gate.clear()
    app = create_app(sim, model_name="sim")
    with running(app) as (url, server), ThreadPoolExecutor(1) as pool:
        pending = pool.submit(call, url, "/v1/rewards", {"groups": [group(3)]})
        wait_until(lambda: sim.entered == 3, "the group in the judge")
        server.should_exit = True  # what uvicorn's SIGTERM handler sets
        time.sleep(0.5)  # the server is shutting down, the request still held
        sim.gate.set()
        status, answer, _ = pending.result(timeout=30)
        assert status == 200 and len(answer["groups"][0]["advantages"]) == 3


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, Sim]]:
    """A second real server on 127.0.0.1: the judge a fronting `flexjudge serve --base-url` talks to."""
    sim = Sim(broken=BROKEN)
    with running(create_app(sim, model_name="sim", api_key="upstream-key")) as (url, _):
        yield url, sim


@contextmanager
def flexjudge_serve(*args: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parent.parent),
        "FLEXJUDGE_JUDGE_API_KEY": "upstream-key",
    }
    command = [sys.executable, "-m", "flexjudge.cli", "serve", "--port", str(port), *args]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "flexjudge serve did not start"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def test_serve_base_url_fronts_a_judge_server_and_sigterm_finishes_accepted_work(
    upstream: tuple[str, Sim],
) -> None:
    upstream_url, sim = upstream
    with flexjudge_serve("--model", "sim", "--base-url", upstream_url + "/v1", "--api-key", KEY) as (
        url,
        proc,
    ):
        status, answer, _ = call(url, "/v1/rewards", body(), key=KEY)
        assert status == 200, answer
        expected = in_process("a red fox", QUALITIES)
        assert answer["groups"][0]["advantages"] == pytest.approx(expected.rewards.advantages)
        assert [f["type"] for f in answer["groups"][0]["failures"]] == ["ParseError"]
        sim.gate.clear()
        entered = sim.entered
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(call, url, "/v1/rewards", {"groups": [group(3)]}, KEY)
            # One pair at the upstream judge shows the request accepted and in progress; the others may
            # wait behind it (the upstream batches what arrives together, and under load that is one).
            wait_until(lambda: sim.entered > entered or pending.done(), "the group at the upstream judge")
            assert not pending.done(), pending.result()
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert proc.poll() is None  # still finishing the accepted request
            sim.gate.set()
            status, answer, _ = pending.result(timeout=30)
        assert status == 200 and len(answer["groups"][0]["advantages"]) == 3
        # uvicorn re-raises the signal once it has shut down, so the exit reads as SIGTERM's.
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)


def test_serve_base_url_refuses_local_model_flags() -> None:
    from typer.testing import CliRunner

    from flexjudge.cli import app as cli_app

    result = CliRunner().invoke(
        cli_app, ["serve", "--model", "m", "--base-url", "http://x/v1", "--device", "cpu"]
    )
    assert result.exit_code == 2 and "--device" in result.output


# ---------------------------------------------------------------- the tiny local model


@pytest.mark.slow  # 20 to 80 s on the shared cores (model build, constraint compile); the README's
# reward-server block runs the same path (tiny model, served, RewardClient) in the default run
def test_rewards_through_the_tiny_local_model() -> None:
    pytest.importorskip("transformers")
    from flexjudge.backends.transformers import TransformersBackend

    batcher = BatchingBackend(
        TransformersBackend("tiny-random", max_batch_size=8), max_batch=8, window_s=0.01
    )
    # Random weights: strings are bounded so each judgment ends (`max_string_length`, tests only).
    judge = Judge("tiny-random", backend=batcher, max_string_length=8, max_new_tokens=1024)
    app = create_app(batcher, model_name="tiny-random", judge=judge)
    with running(app) as (url, _), RewardClient(url) as client:
        result = client.group(
            "a red fox", [candidate(q, 32) for q in (10, 120, 240)], seed=0, return_judgments=True
        )
    assert len(result.judgments) + len(result.failures) == 3
    assert len(result.rewards.advantages) == 3
    assert sorted(result.rewards.unscored) == sorted(
        k for k in range(3) if all(k not in (p.first, p.second) for p in result.judgments)
    )


# ---------------------------------------------------------------- load


@pytest.mark.slow
def test_500_requests_10_percent_malformed_every_valid_one_answered(sim_server: tuple[str, Sim]) -> None:
    """450 valid rewards requests and 50 malformed ones from 16 threads: every valid one 200 with its
    groups, every malformed one a 4xx with a reason, and the server still answers afterwards. Peak
    resident memory of the process is printed."""
    import random
    import resource

    url, _ = sim_server
    valid = {"groups": [group(4), group(3)], "swap": True}
    malformed: list[Any] = [
        b'{"groups": [',
        {"groups": [group()], "alpha": 2},
        {"groups": [{"prompt": "p", "candidates": ["file:///etc/passwd", "x"]}]},
        {"groups": [group()], "schedule": {"kind": "random_graph", "k": 0}},
        {"groups": [group()], "swap": "sometimes"},
        {"groups": [{"prompt": "p", "candidates": ["data:image/png;base64,!!!!", "data:image/png;base64,"]}]},
        b"\x00" * 100,
        {"groups": "all of them"},
        {"groups": [group()] * 65},
        {"groups": [group(3)], "schedule": {"kind": "random_graph", "k": 1}},
    ]
    kinds = ["bad"] * 50 + ["valid"] * 450
    random.Random(0).shuffle(kinds)

    def one(k: int) -> tuple[str, int, dict[str, Any]]:
        payload = valid if kinds[k] == "valid" else malformed[k % len(malformed)]
        status, answer, _ = call(url, "/v1/rewards", payload, key=KEY)
        return kinds[k], status, answer

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(len(kinds))))
    good = [(s, a) for kind, s, a in results if kind == "valid"]
    bad = [(s, a) for kind, s, a in results if kind == "bad"]
    assert len(good) == 450 and all(s == 200 and len(a["groups"]) == 2 for s, a in good)
    assert len(bad) == 50 and all(400 <= s < 500 and a["error"]["message"] for s, a in bad)
    assert call(url, "/health")[0] == 200 and call(url, "/v1/rewards", valid, key=KEY)[0] == 200
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS {peak_kib / 1024:.0f} MiB")


def test_the_client_asks_again_when_the_server_is_overloaded_or_fails() -> None:
    """A 503 with Retry-After, then a 500: both asked again; with one attempt allowed, the first is the
    error. (A dropped connection is retryable the same way: see the unreachable server above.)"""
    sim = Sim()
    app = create_app(sim, model_name="sim")
    faults: list[int] = []
    seen: list[int] = []

    async def flaky(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/rewards":
            status = faults.pop(0) if faults else 200
            seen.append(status)
            if status != 200:
                head = [(b"content-type", b"application/json"), (b"retry-after", b"0")]
                await send({"type": "http.response.start", "status": status, "headers": head})
                await send({"type": "http.response.body", "body": b'{"error": {"message": "busy"}}'})
                return
        await app(scope, receive, send)

    images = [candidate(q) for q in QUALITIES[:3]]
    with running(flaky) as (url, _):
        faults[:] = [503, 500]
        with RewardClient(url, backoff_s=0.01) as client:
            result = client.group("a red fox", images)
        assert seen == [503, 500, 200] and len(result.outcomes) == 3 and not result.failures
        faults[:] = [503]
        with RewardClient(url, max_attempts=1) as client, pytest.raises(BackendError) as info:
            client.group("a red fox", images)
        assert info.value.status_code == 503 and info.value.retryable and seen[-1] == 503
