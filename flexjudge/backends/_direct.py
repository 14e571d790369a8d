"""The openai backend's plain requests posted with aiohttp directly, without the `openai` client.

Every judgment is one POST of an already encoded JSON body to `{base_url}/chat/completions` whose answer
is read from its bytes (`openai_wire.read`): the client adds nothing there but its request machinery,
which costs about 1 ms of CPU a call here (option models copied, the URL parsed, headers built, a
request id drawn) against 0.35-0.5 ms for the same POST through an aiohttp session. At a reward
group's concurrency on a few cores that difference is most of the client's cost. The probe and
instructor's re-asks, which are few, still go through the client.

What the client would do is kept: the same headers (the key as a bearer token, `OpenAI-Organization`
and `OpenAI-Project` from the same environment variables), the timeout applied to connecting and to
each read, the proxy the environment names, and its errors as ours: an HTTP status is a
`BackendError` with `status_code` and the server's message, retryable when the server was at fault
(`_retry.retryable_status`), its `Retry-After` honoured; a timeout or a dropped connection is a
retryable `BackendError`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from flexjudge import __version__
from flexjudge.backends._retry import HttpStatus, retryable_status
from flexjudge.errors import BackendError

__all__ = ["DirectPost"]

_MESSAGE_CHARS = 500  # of a non-JSON error body, in the error's message


class DirectPost:
    """POSTs encoded chat bodies over one aiohttp session (one event loop's: create and close it there)."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float) -> None:
        import aiohttp
        from aiohttp.helpers import get_env_proxy_for_url
        from yarl import URL

        self.url = base_url.rstrip("/") + "/chat/completions"
        self._base_url = base_url
        headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"flexjudge/{__version__}",
        }
        for header, variable in (
            ("OpenAI-Organization", "OPENAI_ORG_ID"),
            ("OpenAI-Project", "OPENAI_PROJECT_ID"),
        ):
            if os.environ.get(variable):
                headers[header] = os.environ[variable]
        # The proxy the environment names for this URL (HTTP(S)_PROXY, NO_PROXY), found once: aiohttp's
        # `trust_env` looks it (and ~/.netrc) up again in a worker thread on every request, and a netrc
        # entry for the host would clash with the key's Authorization header.
        self._proxy: URL | None
        self._proxy_auth: aiohttp.BasicAuth | None
        try:
            self._proxy, self._proxy_auth = get_env_proxy_for_url(URL(self.url))
        except LookupError:  # none for this URL
            self._proxy, self._proxy_auth = None, None
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s),
            connector=aiohttp.TCPConnector(limit=0),  # the backend's semaphore bounds the requests
        )

    async def __call__(self, content: bytes) -> bytes:
        """The answer's bytes (a 2xx); failing to reach the server, a redirect or an error status raises."""
        import aiohttp

        try:
            # Redirects are not followed, as the client does not: a POST re-sent elsewhere (or turned
            # into a GET) is not what the caller configured.
            async with self._session.post(
                self.url, data=content, proxy=self._proxy, proxy_auth=self._proxy_auth, allow_redirects=False
            ) as response:
                raw = await response.read()  # whole: a body cut short raises here, never half an answer
                status = response.status
                if 300 <= status < 400:
                    where = response.headers.get("location", "nowhere")
                    raise BackendError(
                        f"HTTP {status} from {self._base_url}: a redirect to {where} (not followed: point "
                        "base_url at the server itself)",
                        retryable=False,
                        status_code=status,
                    )
                if status >= 400:
                    raise BackendError(
                        f"HTTP {status} from {self._base_url}: {_message(raw)}",
                        retryable=retryable_status(status),
                        status_code=status,
                        original=HttpStatus(status, response.headers),
                    )
                return raw
        except (TimeoutError, aiohttp.ClientError) as exc:  # timeouts, refused and dropped connections
            raise BackendError(
                f"cannot reach {self._base_url}: {exc!r}", retryable=True, original=exc
            ) from exc

    async def close(self) -> None:
        await self._session.close()


def _message(raw: bytes) -> str:
    """The server's error message: OpenAI's `{"error": {"message": ...}}`, FastAPI's `{"detail": ...}`, or
    the start of the body."""
    try:
        body: Any = json.loads(raw)
    except ValueError:
        return raw[:_MESSAGE_CHARS].decode("utf-8", "replace")
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        for key in ("message", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return json.dumps(body)[:_MESSAGE_CHARS]
