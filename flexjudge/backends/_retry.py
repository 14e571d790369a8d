"""The openai backend's one retry policy (tenacity): which failures are the server's, and how long to wait.

A call is retried when the server was at fault or unreachable: HTTP 408, 409, 429 and 5xx (honouring
`Retry-After`), timeouts, dropped connections, and a 2xx body that is not a chat completion. Everything
else propagates at once: a 4xx is the request's fault, and an exception from our own code (a TypeError
while building the body, say) is a bug, never a server error to retry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential, wait_random

from flexjudge.errors import BackendError

if TYPE_CHECKING:
    from openai import AsyncOpenAI
    from openai._legacy_response import LegacyAPIResponse
    from openai.types.chat import ChatCompletion

RETRY_AFTER_CAP_S = 60.0
_RAW_RESPONSE = "X-Stainless-Raw-Response"  # what `with_raw_response` sets: parse the body ourselves, below
_RETRIED_STATUS = frozenset({408, 409, 429})  # a timeout, a lock conflict, a rate limit; plus any 5xx

T = TypeVar("T")

__all__ = [
    "RETRY_AFTER_CAP_S",
    "client_post",
    "complete",
    "complete_raw",
    "json_fields",
    "retryable_status",
    "retrying",
]


class HttpStatus(Exception):
    """An HTTP error status, as the `original` of its `BackendError`; `headers` (case-insensitive: aiohttp's
    or httpx's) carry `Retry-After`."""

    def __init__(self, status: int, headers: Mapping[str, str]) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers


async def complete(
    client: AsyncOpenAI, body: dict[str, Any], *, url: str, attempts: int, backoff_s: float
) -> ChatCompletion:
    """One chat completion under the retry policy; a failure that remains is a `BackendError`."""
    return await retrying(attempts, backoff_s)(_once, client, body, url)


async def complete_raw(
    post: Callable[[bytes], Awaitable[bytes]],
    content: bytes,
    read: Callable[[bytes], T],
    *,
    attempts: int,
    backoff_s: float,
) -> T:
    """`complete` for a body encoded already (JSON bytes), sent by `post` (`client_post` or `_direct`),
    which raises `BackendError`s as `complete` does: the answer's bytes go to `read`, which raises a
    retryable `BackendError` for a body that is not a chat completion, so it is asked again like any
    other server fault."""

    async def once() -> T:
        return read(await post(content))

    return await retrying(attempts, backoff_s)(once)


def client_post(client: AsyncOpenAI, url: str) -> Callable[[bytes], Awaitable[bytes]]:
    """A `post` for `complete_raw` through the client's raw route: its auth, headers, timeouts and errors."""

    async def post(content: bytes) -> bytes:
        with _http_errors(url):
            # Not streamed: the client reads the whole body inside `post`, so a body cut short is a
            # connection error there, never half an answer here.
            return await client.post("/chat/completions", cast_to=bytes, content=content)

    return post


def retryable_status(status: int) -> bool:
    """Whether an HTTP error status is the server's fault: a timeout, a lock conflict, a rate limit, a 5xx."""
    return status in _RETRIED_STATUS or status >= 500


def retrying(attempts: int, backoff_s: float) -> AsyncRetrying:
    """The policy as a tenacity runner: `await retrying(n, b)(fn, *args)` calls `fn` until it succeeds,
    raises something not retryable, or has been called `attempts` times."""
    return AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=_wait(backoff_s),
        retry=retry_if_exception(lambda exc: isinstance(exc, BackendError) and exc.retryable),
        reraise=True,
    )


@contextmanager
def _http_errors(url: str) -> Iterator[None]:
    """The client's status and connection errors as `BackendError`s, retryable when the server was at
    fault or unreachable."""
    import openai

    try:
        yield
    except openai.APIStatusError as exc:
        status = exc.status_code
        raise BackendError(
            f"HTTP {status} from {url}: {exc.message}",
            retryable=retryable_status(status),
            status_code=status,
            original=exc,
        ) from exc
    except openai.APIConnectionError as exc:  # timeouts included
        raise BackendError(f"cannot reach {url}: {exc}", retryable=True, original=exc) from exc


async def _once(client: AsyncOpenAI, body: dict[str, Any], url: str) -> ChatCompletion:
    import openai
    from openai.types.chat import ChatCompletion, ChatCompletionMessage

    with _http_errors(url):
        raw = await client.post(
            "/chat/completions",
            cast_to=ChatCompletion,
            body=json_fields(body),
            options={"headers": {_RAW_RESPONSE: "true"}},
        )
    try:
        # Reading the body happens here and only here: JSON that does not parse and bytes that do not
        # decode raise ValueError (JSONDecodeError, UnicodeDecodeError), a body the client rejects
        # APIResponseValidationError. Both are the server's fault, worth asking again.
        response = cast("LegacyAPIResponse[ChatCompletion]", raw).parse()
    except (ValueError, openai.APIResponseValidationError) as exc:
        raise BackendError(
            f"{url} answered with a body that is not JSON: {exc}", retryable=True, original=exc
        ) from exc
    # The client reads bodies leniently: a non-JSON content type comes back as text, and a JSON object of
    # another shape as a ChatCompletion with missing or raw fields.
    choices = getattr(response, "choices", None)
    if (
        not isinstance(response, ChatCompletion)
        or not isinstance(choices, list)
        or not choices
        or not isinstance(getattr(choices[0], "message", None), ChatCompletionMessage)
    ):
        raise BackendError(f"{url} answered with a body that is not a chat completion", retryable=True)
    return response


def json_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of `chat.completions.create(**body)`, its `extra_body` merged in as the client does.

    Requests go through `client.post`, the client's documented route for requests it does not type: the
    client's auth, headers, timeouts and errors all apply, but not `create`'s recursive transform of the
    parameters, which walks every key of the ~25 KB response schema on every call (about 1.5 ms of CPU a
    request: at high concurrency on a few cores, more than the rest of a judgment costs). The body here
    is plain JSON already, with nothing for that transform to rename or drop.
    """
    payload = {key: value for key, value in body.items() if key != "extra_body"}
    payload.update(body.get("extra_body") or {})
    return payload


def _wait(backoff_s: float) -> Callable[[RetryCallState], float]:
    # Exponential backoff; the jitter spreads retries that a shared outage synchronized.
    backoff = wait_exponential(multiplier=backoff_s, max=30.0) + wait_random(0, backoff_s)

    def wait(state: RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome is not None else None
        after = _retry_after(getattr(failure, "original", None))
        return after if after is not None else backoff(state)

    return wait


def _retry_after(exc: BaseException | None) -> float | None:
    """The wait a server asked for (`retry-after-ms` or `Retry-After` in seconds), capped. The headers are
    the client's error's (`exc.response.headers`) or `HttpStatus`'s (`exc.headers`)."""
    headers = getattr(exc, "headers", None) or getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        try:
            seconds = float(value) * scale if value is not None else None
        except ValueError:  # an HTTP date: the backoff applies instead
            seconds = None
        if seconds is not None and seconds >= 0:
            return min(seconds, RETRY_AFTER_CAP_S)
    return None
