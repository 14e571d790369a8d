"""Does a server enforce structured outputs? One trivial request tells, by what the server does.

The probe sends a schema every structured-output engine takes (and OpenAI's strict subset too) with a
prompt that does not ask for JSON: only a server that applies the constraint answers `{"ok": ...}`. A
4xx refusal means the server has no structured outputs in this transport; a 200 whose text breaks the
schema means it ignored the constraint (as vLLM does with the legacy `guided_json`). Nothing here reads
error text.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from flexjudge.backends.base import Constraint
from flexjudge.errors import BackendError

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
PROBE_CONSTRAINT = Constraint(schema=_SCHEMA, strict_schema=_SCHEMA)
PROBE_PROMPT = "Say hello."
PROBE_TOKENS = 48
"""Room for `{"ok": false}` under any tokenizer, and for whitespace a lax engine lets through."""

__all__ = ["PROBE_CONSTRAINT", "PROBE_PROMPT", "PROBE_TOKENS", "probe", "refused"]


_REFUSALS = frozenset({400, 422})
"""How OpenAI-compatible servers refuse a request body they cannot honour (vLLM and OpenAI answer 400,
FastAPI-style servers 422). Other 4xx are about something else (access, a missing model, a size limit,
a client that left) and stay ordinary `BackendError`s."""


def refused(exc: BackendError) -> bool:
    """The server refused the request as sent and will not take it however often it is asked."""
    return exc.status_code in _REFUSALS and not exc.retryable


async def probe(
    send: Callable[[dict[str, Any]], Awaitable[ChatCompletion]], body: dict[str, Any]
) -> str | None:
    """Send the probe `body` (the trivial constraint already in it); None when the server enforced the
    schema, else what it did instead. Access, rate and server failures propagate as `BackendError`."""
    try:
        response = await send(body)
    except BackendError as exc:
        if not refused(exc):
            raise
        return f"it refused a trivial schema ({exc})"
    text = response.choices[0].message.content
    if not _follows(text):
        shown = text if text is None or len(text) <= 80 else text[:80] + "..."
        return f"it answered a trivial schema with {shown!r}, which breaks it (the constraint was ignored)"
    return None


def _follows(text: str | None) -> bool:
    if not isinstance(text, str):
        return False
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and set(value) == {"ok"} and isinstance(value["ok"], bool)
