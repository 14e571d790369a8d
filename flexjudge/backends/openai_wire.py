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
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from flexjudge.backends.base import TokenLogprob, Usage
from flexjudge.errors import BackendError

__all__ = ["Answer", "Encoded", "Tail", "encode", "plain", "read", "read_data"]

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


@dataclass(frozen=True)
class Encoded:
    """A JSON value encoded already, for `encode` to put in place as it is: an image's data URL is
    megabytes of base64, the same in every request of its group, and encoding it again on every request
    cost more than the rest of the request (17 ms a 1024x1024 photograph here, on the event loop)."""

    json: bytes

    @classmethod
    def of(cls, value: Any) -> Encoded:
        return cls(_ENCODER.encode(value).encode())

    def value(self) -> Any:
        """The value back, for the paths that hand the client a plain dict (the probe, instructor)."""
        return json.loads(self.json)


def plain(value: Any) -> Any:
    """`value` with every `Encoded` in it decoded back (dicts and lists rebuilt, the rest as is)."""
    if isinstance(value, Encoded):
        return value.value()
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


# Where an `Encoded` goes, `encode` writes this string first and then cuts the text there. A random part
# keeps it out of any text a caller can write (prompts are encoded in the same text).
_HOLE = f"flexjudge-encoded-{secrets.token_hex(16)}"
_HOLE_JSON = _ENCODER.encode(_HOLE)


def encode(head: Mapping[str, Any], tail: Tail) -> bytes:
    """The JSON bytes of `{**head, **tail}`: the per-request fields encoded now, the tail as it was, any
    `Encoded` value in head as its bytes."""
    spliced: list[bytes] = []

    def hole(value: object) -> str:
        if not isinstance(value, Encoded):
            raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
        spliced.append(value.json)
        return _HOLE

    front = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=hole).encode(
        dict(head)
    )
    if tail.encoded == "}":
        end = ""
    elif front == "{}":
        front, end = "{", tail.encoded
    else:
        front, end = front[:-1], "," + tail.encoded
    if not spliced:
        return (front + end).encode()
    pieces = front.split(_HOLE_JSON)
    if len(pieces) != len(spliced) + 1:  # a text held the random hole itself: encode it all, slowly
        return encode(plain(head), tail)
    out = [pieces[0].encode()]
    for value, piece in zip(spliced, pieces[1:], strict=True):
        out += (value, piece.encode())
    out.append(end.encode())
    return b"".join(out)


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
