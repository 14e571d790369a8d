"""What keeps `flexjudge serve` standing under abuse: the limits, the key check, a body reader that stops
at the size limit and the read deadline, and an HTTP protocol that drops connections whose headers never
complete.

One served judge is shared by many training workers: a single request must not be able to take it
(a huge body, a thousand images, an endless token budget), and idle or half-open sockets must not pile
up. Every refusal here is an HTTP status with a JSON reason (`LimitExceeded.status`).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from flexjudge.errors import FlexjudgeError, UsageError

if TYPE_CHECKING:
    from fastapi.responses import JSONResponse
    from PIL.Image import Image as PILImage
    from starlette.requests import Request as HTTPRequest

    from flexjudge.backends.base import Request

__all__ = [
    "ClientLeft",
    "CountsPromptTokens",
    "LimitExceeded",
    "PixelBudget",
    "RequireKey",
    "ServeLimits",
    "authorized",
    "check_prompt_tokens",
    "guarded",
    "is_loopback",
    "protocol_with_deadline",
    "read_body",
    "unless_client_leaves",
]

T = TypeVar("T")
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ErrorResponse = Callable[..., "JSONResponse"]
"""`error(status, message, kind, headers=None)`: the server's JSON error answer."""


@dataclass(frozen=True)
class ServeLimits:
    """Per-request bounds of a served judge; the defaults are safe for a shared server."""

    max_body_bytes: int = 32 * 1024 * 1024
    """Largest request body (413), checked from Content-Length and again while the body streams in."""
    max_images: int = 16
    """Most images in one request (400)."""
    max_image_pixels: int = 40_000_000
    """Largest width x height of one image, from its header before decoding (400)."""
    max_total_pixels: int = 80_000_000
    """Most pixels over all images of one request, each checked before it is decoded (400)."""
    max_tokens: int = 4096
    """Largest `max_tokens` / `max_completion_tokens` a request may ask for (400 above); also the budget of
    a request that names none."""
    max_prompt_chars: int = 400_000
    """Most characters of text over all messages of one request (400): a cheap check before tokenizing."""
    max_prompt_tokens: int = 32_768
    """Most tokens of the prompt as the model sees it, chat template and image tokens included (400);
    counted where the backend can count them (`CountsPromptTokens`)."""
    max_groups: int = 64
    """Most groups in one `/v1/rewards` request (400)."""
    max_group_candidates: int = 32
    """Most candidates in one group of a rewards request (400): a round robin judges C(G, 2) pairs."""
    max_reward_images: int = 256
    """Most images (video frames counted) in one rewards request (400), counted before any is decoded."""
    max_reward_pixels: int = 128_000_000
    """Most pixels over all images of one rewards request (400), each checked before it is decoded."""
    max_queue: int = 64
    """Most requests waiting for or in generation at once; one more is answered 503 with Retry-After."""
    retry_after_s: int = 1
    """The Retry-After a full queue answers with."""
    body_timeout_s: float = 30.0
    """Deadline for a request's whole body once its headers are in (408)."""
    header_timeout_s: float = 10.0
    """Deadline for a connection's request headers to be complete; the connection is closed after it."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:  # also refuses NaN
                raise UsageError(f"ServeLimits.{name} must be positive, got {value!r}")


class LimitExceeded(FlexjudgeError):
    """A request beyond one of the server's limits; `status` is the HTTP status it is answered with."""

    def __init__(self, message: str, *, status: int) -> None:
        self.status = status
        super().__init__(message)


@runtime_checkable
class CountsPromptTokens(Protocol):
    """A backend that can say how many tokens a request's prompt takes on its model (transformers)."""

    def prompt_tokens(self, request: Request) -> int: ...


def check_prompt_tokens(request: Request, counter: CountsPromptTokens, limits: ServeLimits) -> None:
    """`LimitExceeded` (400) when the prompt takes more than `limits.max_prompt_tokens` on the model."""
    tokens = counter.prompt_tokens(request)
    if tokens > limits.max_prompt_tokens:
        raise LimitExceeded(
            f"the prompt takes {tokens} tokens, above this server's limit of {limits.max_prompt_tokens}"
            " (--max-prompt-tokens)",
            status=400,
        )


def authorized(headers: list[tuple[bytes, bytes]], api_key: str) -> bool:
    """Whether the headers carry `Authorization: Bearer <api_key>` (compared in constant time)."""
    expected = b"bearer " + api_key.encode()
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.partition(b" ")
            # Constant time over the token; the scheme word is public and case-insensitive by RFC 6750.
            return hmac.compare_digest(scheme.lower() + b" " + token.strip(), expected)
    return False


def is_loopback(host: str) -> bool:
    """Whether binding `host` listens on this machine only. A name other than localhost counts as not:
    it may resolve to any interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def read_body(
    receive: Receive, headers: list[tuple[bytes, bytes]], *, max_bytes: int, timeout_s: float
) -> bytes:
    """The request body, refused with 413 as soon as it is known to be too large (from Content-Length
    before reading, else at the chunk that crosses the limit) and with 408 when it is not complete within
    `timeout_s`. Raises `LimitExceeded`; a client that disconnects mid-body is `LimitExceeded(499)`."""
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise LimitExceeded("Content-Length is not a number", status=400) from None
            if declared > max_bytes:
                raise LimitExceeded(_too_large(max_bytes), status=413)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise LimitExceeded("the client went away before sending its body", status=499)
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > max_bytes:  # a chunked body has no Content-Length to check up front
                    raise LimitExceeded(_too_large(max_bytes), status=413)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise LimitExceeded(f"the request body was not complete within {timeout_s:g} s", status=408) from None


def _too_large(max_bytes: int) -> str:
    return f"the request body is larger than this server's limit of {max_bytes} bytes (--max-body-bytes)"


class RequireKey:
    """ASGI middleware: every HTTP path but `/health` needs `Authorization: Bearer <api_key>`, else 401.
    Plain ASGI (not Starlette's BaseHTTPMiddleware), so the endpoint still sees its client disconnect."""

    def __init__(self, app: Any, *, api_key: str) -> None:
        if not api_key:
            raise UsageError("the API key must not be empty")
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] == "/health"
            or authorized(scope["headers"], self.api_key)
        ):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": {
                    "message": "a valid 'Authorization: Bearer <key>' header is required",
                    "type": "authentication_error",
                    "code": 401,
                }
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@functools.cache
def protocol_with_deadline(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete in time, for
    `uvicorn.Config(http=...)`.

    uvicorn times out idle keep-alive connections but not a request whose headers never end: each
    half-open socket (or one trickling a byte at a time, which resets the keep-alive timer) would be held
    forever. The deadline runs from the connection's start and again from the end of each response, and
    is not reset by data arriving. A request whose headers are in is the body reader's to time out.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
            self._header_deadline = self.loop.call_later(header_timeout_s, self._headers_overdue)

        def _headers_overdue(self) -> None:
            # IDLE: no complete request line and headers since the connection or the last response began.
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol


async def guarded(
    http: HTTPRequest,
    state: Any,
    limits: ServeLimits,
    error: ErrorResponse,
    parse: Callable[[bytes], Any],
    refusals: tuple[type[Exception], ...],
    handle: Callable[[Any], Awaitable[JSONResponse]],
) -> JSONResponse:
    """What every model route does around its work: read the body within the size limit and deadline,
    `parse` it off the event loop (a `refusals` error is a 400, a `LimitExceeded` its own status, anything
    else a JSON 500), then hold a place in the bounded queue (`state.admitted`; full: 503 with
    Retry-After) while `handle` answers."""
    try:
        raw = await read_body(
            http.receive,
            http.scope["headers"],
            max_bytes=limits.max_body_bytes,
            timeout_s=limits.body_timeout_s,
        )
        parsed = await asyncio.to_thread(parse, raw)
    except LimitExceeded as exc:
        kind = "request_too_large" if exc.status == 413 else "invalid_request_error"
        return error(exc.status, str(exc), kind)
    except refusals as exc:
        return error(400, str(exc), "invalid_request_error")
    except Exception as exc:  # our own bug: still a JSON error body, never a bare 500 page
        return error(500, f"{type(exc).__name__}: {exc}", "server_error")
    if state.admitted >= limits.max_queue:
        return error(
            503,
            f"the server holds {limits.max_queue} requests already (--max-queue); retry later",
            "server_overloaded",
            {"Retry-After": str(limits.retry_after_s)},
        )
    state.admitted += 1
    try:
        return await handle(parsed)
    finally:
        state.admitted -= 1


class ClientLeft(Exception):
    """The client disconnected before its work was done (the work was cancelled; answered 499)."""


async def unless_client_leaves(http: HTTPRequest, work: Awaitable[T]) -> T:
    """`work`'s result, or `ClientLeft` once the client disconnects first: the work is then cancelled
    (a request still queued never reaches the model; one decoding is stopped at its next step)."""
    job = asyncio.ensure_future(work)
    # The body is read: the next message from the client side is its disconnect.
    disconnect = asyncio.ensure_future(http.receive())
    try:
        await asyncio.wait({job, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        if not job.done():
            job.cancel()
            await asyncio.wait({job})
            raise ClientLeft
        return job.result()
    finally:
        disconnect.cancel()


@dataclass
class PixelBudget:
    """One request's images, decoded against what is left of its pixel budget: each image's header is
    checked against the smaller of the per-image limit and what is left, before any pixel is decoded."""

    total: int
    per_image: int
    flag: str
    """The flag that sets `total`, named in refusals."""
    refusal: type[FlexjudgeError]
    """What a bad image raises (the route answers it 400)."""
    subject: str = "images"
    left: int = field(init=False)

    def __post_init__(self) -> None:
        self.left = self.total

    def decode(self, url: str) -> PILImage:
        from flexjudge.media import Limits, MediaError, load_image

        if not url.startswith("data:"):
            raise self.refusal(
                f"{self.subject} must be sent as data URLs; this server opens no paths or URLs"
            )
        if self.left <= 0:
            raise LimitExceeded(
                f"the request's images have more than {self.total} pixels in all ({self.flag})", status=400
            )
        budget = min(self.per_image, self.left)
        try:
            image = load_image(url, limits=Limits(max_pixels=budget))
        except MediaError as exc:
            left = f" ({budget} pixels left of the request's {self.total}, {self.flag})"
            raise self.refusal(f"{exc}{left if budget < self.per_image else ''}") from None
        self.left -= image.size[0] * image.size[1]
        return image
