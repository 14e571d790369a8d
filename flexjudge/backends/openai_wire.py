"""The openai backend's request bytes and its reading of answers, without the client's models.

A judge request is ~25 KB of JSON, most of it the response schema, the same on every request of a
judge. `encode` writes the schema and the other constant fields once (`Tail`) and splices the
per-request part in front: the bytes are exactly what the client's own encoder (`openapi_dumps`:
`ensure_ascii=False`, compact separators, no NaN) makes of the same dict in the same key order, so a
server sees the body `chat.completions.create` sends (`tests/test_openai_wire.py` holds both).

`read` turns an answer's bytes into the few fields a `Generation` needs (text, finish reason, usage,
model, token log-probabilities), checked by type, instead of building the client's `ChatCompletion`
models (about 1 ms of CPU a request). A body that is not a chat completion is the server's fault and
worth asking again (`BackendError(retryable=True)`); a choice without text is not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from flexjudge.backends.base import TokenLogprob, Usage
from flexjudge.errors import BackendError

__all__ = ["Answer", "Tail", "encode", "read", "read_data"]

# The client's JSON settings (openai._utils._json.openapi_dumps, the same as httpx's): a body spliced
# from parts encoded this way is byte for byte the body the client would encode.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class Tail:
    """The constant end of a request body, encoded once: `{"k": v, ...}` without its opening brace."""

    encoded: str

    @classmethod
    def of(cls, fields: Mapping[str, Any]) -> Tail:
        if not fields:
            return cls("}")
        return cls(_ENCODER.encode(dict(fields))[1:])


def encode(head: Mapping[str, Any], tail: Tail) -> bytes:
    """The JSON bytes of `{**head, **tail}`: the per-request fields encoded now, the tail as it was."""
    front = _ENCODER.encode(dict(head))
    if tail.encoded == "}":
        return front.encode()
    if front == "{}":
        return ("{" + tail.encoded).encode()
    return (front[:-1] + "," + tail.encoded).encode()


@dataclass(frozen=True)
class Answer:
    """What the backend reads of a chat completion."""

    text: str
    finish_reason: Literal["stop", "length"]
    usage: Usage | None
    model: str
    token_logprobs: tuple[TokenLogprob, ...] | None


def read(raw: bytes, url: str) -> Answer:
    """The first choice of a chat completion's JSON bytes, checked by type."""
    try:
        data = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both
        raise BackendError(
            f"{url} answered with a body that is not JSON: {exc}", retryable=True, original=exc
        ) from exc
    return read_data(data, url)


def read_data(data: Any, url: str) -> Answer:
    """The first choice of a chat completion's decoded JSON, checked by type."""
    choices = data.get("choices") if isinstance(data, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or not isinstance(message, dict):
        raise BackendError(f"{url} answered with a body that is not a chat completion", retryable=True)
    text = message.get("content")
    if not isinstance(text, str):
        raise BackendError("the server returned a choice without text content", retryable=False)
    model = data.get("model")
    return Answer(
        text=text,
        finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
        usage=_usage(data.get("usage")),
        model=model if isinstance(model, str) else "",
        token_logprobs=_token_logprobs(choice.get("logprobs")),
    )


def _usage(reported: Any) -> Usage | None:
    """Token counts, or None when the server sent none or null ones (never a made-up zero)."""
    if not isinstance(reported, dict):
        return None
    prompt, completion = reported.get("prompt_tokens"), reported.get("completion_tokens")
    if type(prompt) is not int or type(completion) is not int:  # null counts (or true): no usage
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def _token_logprobs(logprobs: Any) -> tuple[TokenLogprob, ...] | None:
    """The choice's per-token log-probabilities, or None when the server sent none (or none usable: a
    token without a finite, non-positive log-probability makes the whole list untrustworthy)."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content:
        return None
    out = []
    for item in content:
        token = item.get("token") if isinstance(item, dict) else None
        logprob = item.get("logprob") if isinstance(item, dict) else None
        if (
            not isinstance(token, str)
            or not isinstance(logprob, int | float)
            or isinstance(logprob, bool)
            or not math.isfinite(logprob)
            or logprob > 0.0
        ):
            return None
        out.append(TokenLogprob(token, float(logprob)))
    return tuple(out)
