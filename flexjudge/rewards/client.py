"""A client of a reward server (`flexjudge serve`'s `POST /v1/rewards`), answering with the same
`GroupResult` that `flexjudge.rewards.agroup_rewards` gives in-process:

    client = RewardClient("http://127.0.0.1:8000", api_key=...)
    result = client.group("a red fox", images)          # or: await client.agroup(...)
    result.rewards.advantages

Candidates are sent inline (images as PNG data URLs, a video as a list of frame data URLs). A failed
pair comes back as a `PairFailure` whose error is a `RemotePairError` with the server's error type and
message. An HTTP error is a `BackendError` with the status and the server's JSON reason, retryable for
408, 409, 429, 5xx, timeouts and dropped connections; those are asked again under the openai backend's
policy (`max_attempts` in all, exponential backoff from `backoff_s`, the server's `Retry-After`
honoured: a full queue answers 503 with one), so a kept-alive connection the server closed as a
request went out on it, or a moment of overload, does not end a training run. Needs the `server` extra
(the HTTP client comes with `openai`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from flexjudge._preflight import Candidate
from flexjudge._sync import LoopThread
from flexjudge.backends._retry import HttpStatus, retryable_status, retrying
from flexjudge.errors import BackendError, FlexjudgeError, UsageError
from flexjudge.rewards._formula import GroupRewards, Outcome
from flexjudge.rewards._group import GroupResult, JudgedPair, OnFailure, PairFailure, SwapMode
from flexjudge.schema import Judgment

__all__ = ["RemotePairError", "RewardClient"]

T = TypeVar("T")

Schedule = dict[str, Any]
"""A schedule as the server takes it: {"kind": "round_robin"}, {"kind": "random_graph", "k": 4},
{"kind": "swiss", "rounds": 4}, {"kind": "active", "fraction": 0.5},
{"kind": "posterior", "fraction": 0.5, "per_round": 2, "error": 0.15},
{"kind": "bayesian", "fraction": 0.5, "per_round": 1},
{"kind": "score_first", "fraction": 0.5, "per_round": 1}
(`flexjudge.rewards.adapters.schedule_spec` turns a `Schedule` into one)."""


class RemotePairError(FlexjudgeError):
    """A pair the reward server failed to judge; `kind` is the server's error class name (`ParseError`,
    `BackendError`, ...) and `message` its message."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(f"{kind}: {message}")


class RewardClient:
    """Talks to one reward server; sync methods run on a loop thread of their own, async ones on the
    caller's loop (one HTTP connection pool per loop)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        frames_per_video: int = 8,
        max_attempts: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        if not timeout > 0:
            raise UsageError(f"timeout must be positive, got {timeout!r}")
        if max_attempts < 1 or not backoff_s >= 0:
            raise UsageError(
                f"max_attempts must be at least 1 and backoff_s at least 0, got {max_attempts}, {backoff_s}"
            )
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        if frames_per_video < 1:
            raise UsageError(f"frames_per_video must be at least 1, got {frames_per_video}")
        self.frames_per_video = frames_per_video
        self.url = base_url.rstrip("/").removesuffix("/v1") + "/v1/rewards"
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}
        self._loop: LoopThread | None = None

    async def arewards(
        self,
        groups: Sequence[tuple[str, Sequence[Candidate]]],
        *,
        schedule: Schedule | None = None,
        swap: SwapMode = False,
        on_failure: OnFailure = "drop",
        alpha: float = 0.7,
        category_weights: Sequence[float] | None = None,
        seed: int | None = None,
        return_judgments: bool = False,
    ) -> list[GroupResult]:
        """Each `(prompt, candidates)` group's result, in order, from one request."""
        encoded = await _encode_groups(groups, self.frames_per_video)
        body: dict[str, Any] = {
            "groups": encoded,
            "swap": swap,
            "on_failure": on_failure,
            "alpha": alpha,
            "return_judgments": return_judgments,
        }
        if schedule is not None:
            body["schedule"] = schedule
        if seed is not None:
            body["seed"] = seed
        if category_weights is not None:
            body["category_weights"] = list(category_weights)
        answer = await self._post(body)
        try:
            return [_result(group) for group in answer["groups"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"the reward server's answer is malformed: {exc!r}", retryable=False) from None

    async def agroup(self, prompt: str, candidates: Sequence[Candidate], **options: Any) -> GroupResult:
        """One group's result (the keywords of `arewards`)."""
        (result,) = await self.arewards([(prompt, candidates)], **options)
        return result

    def rewards(self, groups: Sequence[tuple[str, Sequence[Candidate]]], **options: Any) -> list[GroupResult]:
        """Synchronous `arewards`."""
        return self.run(self.arewards(groups, **options))

    def group(self, prompt: str, candidates: Sequence[Candidate], **options: Any) -> GroupResult:
        """Synchronous `agroup`."""
        return self.run(self.agroup(prompt, candidates, **options))

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of this client on its loop thread (safe inside a running loop)."""
        if self._loop is None:
            self._loop = LoopThread()
        return self._loop.run(coroutine)

    async def aclose(self) -> None:
        """Close the connection pool of the running loop."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def close(self) -> None:
        """Close the loop thread's connection pool and stop the thread."""
        if self._loop is not None:
            self._loop.run(self.aclose())
            self._loop.stop()
            self._loop = None

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _post(self, body: dict[str, Any]) -> Any:
        import httpx2

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = httpx2.AsyncClient(timeout=self.timeout)
        return await retrying(self.max_attempts, self.backoff_s)(self._post_once, client, body)

    async def _post_once(self, client: Any, body: dict[str, Any]) -> Any:
        import httpx2

        try:
            response = await client.post(self.url, json=body, headers=self.headers)
        except httpx2.TimeoutException as exc:
            raise BackendError(f"the reward server did not answer in {self.timeout:g} s", retryable=True,
                               original=exc) from None  # fmt: skip
        except httpx2.TransportError as exc:
            raise BackendError(f"could not reach the reward server: {exc!r}", retryable=True,
                               original=exc) from None  # fmt: skip
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code != 200:
            reason = _reason(answer) or response.text[:200]
            status = response.status_code
            raise BackendError(
                f"the reward server answered {status}: {reason}",
                retryable=retryable_status(status),
                status_code=status,
                original=HttpStatus(status, response.headers),  # its Retry-After, for the policy
            )
        if not isinstance(answer, dict):
            raise BackendError("the reward server's answer is not a JSON object", retryable=False)
        return answer


def _reason(answer: Any) -> str | None:
    error = answer.get("error") if isinstance(answer, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else None


async def _encode_groups(
    groups: Sequence[tuple[str, Sequence[Candidate]]], frames: int
) -> list[dict[str, Any]]:
    """Each candidate as the server takes it: an image as a PNG data URL, a video as the data URLs of
    `frames` frames sampled here (the server's judge samples as many, so it keeps them all). Decoded
    here, where the paths are; encoded in worker threads, one candidate each (zlib runs without the GIL,
    and PNG encoding is most of a client's cost)."""
    for _, candidates in groups:
        if isinstance(candidates, str | bytes) or not isinstance(candidates, Sequence):
            raise UsageError("a group's candidates must be a list")
    encoded = await asyncio.gather(
        *(asyncio.to_thread(_encode, c, frames) for _, candidates in groups for c in candidates)
    )
    out, start = [], 0
    for prompt, candidates in groups:
        out.append({"prompt": prompt, "candidates": encoded[start : start + len(candidates)]})
        start += len(candidates)
    return out


def _encode(candidate: Candidate, frames: int) -> str | list[str]:
    from flexjudge import media

    if media.guess_modality(candidate) == "video":
        sampled = media.load_candidate(candidate, modality="video", frames=frames)
        return [media.to_data_url(f) for f in sampled]
    return media.to_data_url(media.load_image(candidate))


def _result(group: dict[str, Any]) -> GroupResult:
    rewards = GroupRewards(
        overall=list(group["overall"]),
        dimension=list(group["dimension"]),
        anchors=[list(a) for a in group["anchors"]],
        advantages=[float(a) for a in group["advantages"]],
        comparisons=[int(c) for c in group["comparisons"]],
        alpha=float(group["alpha"]),
    )
    outcomes: list[Outcome] = [(int(i), int(j), w, tuple(c)) for i, j, w, c in group["outcomes"]]
    failures = [
        PairFailure(int(f["first"]), int(f["second"]), RemotePairError(str(f["type"]), str(f["message"])))
        for f in group["failures"]
    ]
    judgments = [
        JudgedPair(int(p["first"]), int(p["second"]), Judgment.model_validate(p["judgment"]))
        for p in group.get("judgments", [])
    ]
    return GroupResult(rewards=rewards, judgments=judgments, outcomes=outcomes, failures=failures)
