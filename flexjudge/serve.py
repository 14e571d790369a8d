"""`flexjudge serve`: an OpenAI-compatible chat-completions endpoint over a local backend.

For machines where vLLM does not run (CPU, Apple silicon) and for tests: it speaks the subset of the
OpenAI API the `openai` backend uses, with real constrained decoding through the local backend.
Requests that arrive together are decoded as one batch (`flexjudge.batching`, the mechanism local judging
uses). Bodies are validated by typed models: anything malformed (a wrong type, an unknown field, a
non-finite number) is a 400 with a JSON error, never a 500. Images are accepted only as data URLs: a
served judge never opens a path or URL named in a request. The legacy `guided_json` field is refused
loudly rather than ignored as vLLM does. Constraints arrive as `response_format` json_schema,
`structured_outputs.json`, or `structured_outputs.grammar` (an llguidance Lark grammar, as vLLM's guidance
backend takes it; the local backend's engine must be llguidance); `structured_outputs.unique_names`, a
flexjudge extension, names the arrays whose items' names must stay distinct (`Constraint.unique_names`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flexjudge._serve_limits import (
    ClientLeft,
    CountsPromptTokens,
    LimitExceeded,
    PixelBudget,
    RequireKey,
    ServeLimits,
    check_prompt_tokens,
    guarded,
    is_loopback,
    protocol_with_deadline,
    unless_client_leaves,
)
from flexjudge.backends.base import Backend, Constraint, Generation, ImagePart, Message, Request, TextPart
from flexjudge.batching import BatchingBackend
from flexjudge.errors import ConstraintError, FlexjudgeError, UsageError

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.requests import Request as HTTPRequest

    from flexjudge.judging import Judge

__all__ = [
    "ChatRequest",
    "LimitExceeded",
    "RequestError",
    "ServeLimits",
    "create_app",
    "parse_chat_request",
    "serve",
    "server_config",
]

DEFAULT_SERVE_LIMITS = ServeLimits()

_GREEDY_BELOW = 1e-5  # as vLLM: a smaller temperature is greedy (dividing logits by it overflows)
_INT32 = 2**31 - 1
# `apply_chat_template`'s own parameters: a template variable must not rebind them.
# fmt: off
_RESERVED_TEMPLATE_KEYS = frozenset((
    "conversation", "chat_template", "tools", "documents", "add_generation_prompt", "continue_final_message",
    "tokenize", "padding", "truncation", "max_length", "return_tensors", "return_dict", "tokenizer_kwargs",
    "return_assistant_tokens_mask", "processor_kwargs", "load_audio_from_video", "sanitize_control_tokens",
))
# fmt: on


class RequestError(FlexjudgeError):
    """A chat-completion request this server cannot honour (HTTP 400)."""


class _Body(BaseModel):
    # strict: JSON types as sent ("4" is not a number, 4.0 not a token count); forbid: an option this
    # server does not know is refused, not silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


class TextContent(_Body):
    type: Literal["text"]
    text: str


class ImageURL(_Body):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImageContent(_Body):
    type: Literal["image_url"]
    image_url: ImageURL


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant"]
    content: str | list[Annotated[TextContent | ImageContent, Field(discriminator="type")]]


class JsonSchemaSpec(_Body):
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class TextFormat(_Body):
    type: Literal["text"]


class JsonSchemaFormat(_Body):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


class StructuredOutputs(_Body):
    """vLLM's `structured_outputs`: one of `json` (a JSON Schema) or `grammar` (llguidance Lark)."""

    json_schema: dict[str, Any] | None = Field(None, alias="json")
    grammar: str | None = None
    unique_names: list[str] = []

    @model_validator(mode="after")
    def _one_form(self) -> StructuredOutputs:
        if (self.json_schema is None) == (self.grammar is None):
            raise ValueError("structured_outputs takes one of 'json' or 'grammar' (llguidance Lark)")
        return self


_Scalar = str | int | float | bool | None
_Temperature = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
_Tokens = Annotated[int, Field(ge=1, le=_INT32)]


class ChatRequest(_Body):
    """The chat-completions body this server honours."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: _Tokens | None = None
    max_completion_tokens: _Tokens | None = None
    temperature: _Temperature | None = None
    top_p: _TopP | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    response_format: Annotated[TextFormat | JsonSchemaFormat, Field(discriminator="type")] | None = None
    structured_outputs: StructuredOutputs | None = None
    chat_template_kwargs: dict[str, _Scalar] | None = None
    stream: Literal[False] | None = None
    n: Literal[1] | None = None
    logprobs: bool | None = None
    """Return the generated tokens' log-probabilities, where the backend computes them (else null)."""

    @model_validator(mode="before")
    @classmethod
    def _no_legacy_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and "guided_json" in data:
            raise ValueError(
                "'guided_json' is not supported: send response_format json_schema or structured_outputs"
            )
        return data

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_variables(cls, kwargs: dict[str, _Scalar] | None) -> dict[str, _Scalar] | None:
        for key in kwargs or {}:
            if not key.isidentifier() or key.startswith("_") or key in _RESERVED_TEMPLATE_KEYS:
                raise ValueError(f"{key!r} is not a chat template variable this server passes on")
        return kwargs

    @model_validator(mode="after")
    def _one_constraint(self) -> ChatRequest:
        if self.structured_outputs is not None and self.response_format is not None:
            raise ValueError("send response_format or structured_outputs, not both")
        return self


def parse_chat_request(body: bytes | str, *, limits: ServeLimits = DEFAULT_SERVE_LIMITS) -> Request:
    """A chat-completions body (raw JSON) -> a backend `Request`, or `RequestError` saying what is wrong
    (`LimitExceeded` when it is beyond one of `limits`)."""
    try:
        chat = ChatRequest.model_validate_json(body)
    except ValidationError as exc:
        raise RequestError(_describe(exc)) from None
    return to_request(chat, limits=limits)


def to_request(chat: ChatRequest, *, limits: ServeLimits = DEFAULT_SERVE_LIMITS) -> Request:
    """A validated body -> a backend `Request` (decoding its images, which may be refused), within
    `limits`: token budget, prompt characters, image count and pixels (each image checked against what
    is left of the request's pixel budget before it is decoded)."""

    asked = chat.max_completion_tokens or chat.max_tokens
    if asked is not None and asked > limits.max_tokens:
        raise LimitExceeded(
            f"max_tokens {asked} is above this server's limit of {limits.max_tokens} (--max-tokens)",
            status=400,
        )
    items_of = [[TextContent(type="text", text=m.content)] if isinstance(m.content, str) else m.content
                for m in chat.messages]  # fmt: skip
    chars = sum(len(item.text) for items in items_of for item in items if isinstance(item, TextContent))
    if chars > limits.max_prompt_chars:
        raise LimitExceeded(
            f"the prompt has {chars} characters, above this server's limit of {limits.max_prompt_chars}"
            " (--max-prompt-chars)",
            status=400,
        )
    images = sum(isinstance(item, ImageContent) for items in items_of for item in items)
    if images > limits.max_images:
        raise LimitExceeded(
            f"the request has {images} images, above this server's limit of {limits.max_images}"
            " (--max-images)",
            status=400,
        )
    budget = PixelBudget(limits.max_total_pixels, limits.max_image_pixels, "--max-total-pixels", RequestError)
    messages = []
    for message, items in zip(chat.messages, items_of, strict=True):
        parts: list[TextPart | ImagePart] = []
        for item in items:
            if isinstance(item, TextContent):
                parts.append(TextPart(item.text))
            elif isinstance(item, ImageContent):
                image = budget.decode(item.image_url.url)
                parts.append(ImagePart(image))
        messages.append(Message(role=message.role, parts=tuple(parts)))
    temperature = 1.0 if chat.temperature is None else chat.temperature
    structured = chat.structured_outputs
    schema = structured.json_schema if structured is not None else None
    if isinstance(chat.response_format, JsonSchemaFormat):
        schema = chat.response_format.json_schema.json_schema
    grammar = structured.grammar if structured is not None else None
    constraint = None
    if schema is not None or grammar is not None:
        names = frozenset(structured.unique_names if structured is not None else ())
        constraint = Constraint(schema=schema, grammar=grammar, unique_names=names)
    return Request(
        messages=tuple(messages),
        constraint=constraint,
        max_new_tokens=asked or min(1024, limits.max_tokens),
        temperature=0.0 if temperature < _GREEDY_BELOW else temperature,
        top_p=1.0 if chat.top_p is None else chat.top_p,
        seed=chat.seed,
        chat_template_kwargs=chat.chat_template_kwargs,
        logprobs=bool(chat.logprobs),
    )


def _describe(exc: ValidationError) -> str:
    """pydantic's errors as `where: what`, without echoing the input back or naming union branches."""
    problems: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"] if not _branch(p)) or "body"
        what = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
        if f"{where}: {what}" not in problems:
            problems.append(f"{where}: {what}")
    more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
    return "invalid request: " + "; ".join(problems[:3]) + more


def _branch(part: str | int) -> bool:
    """A union's branch in an error location: a type name ("str", "list[...]"), not a field."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)


def create_app(
    backend: Backend,
    *,
    model_name: str,
    max_batch: int | None = None,
    window_s: float = 0.01,
    limits: ServeLimits = DEFAULT_SERVE_LIMITS,
    api_key: str | None = None,
    judge: Judge | None = None,
) -> FastAPI:
    """The ASGI app; run it with uvicorn (`server_config` sets the protocol that drops connections whose
    headers never complete). `max_batch` defaults to the backend's `max_batch_size` (8 when it has none);
    `app.state.batcher` is the `BatchingBackend` in front of it and `app.state.admitted` the number of
    requests waiting for or in generation (chat and rewards alike). With `api_key`, every path but
    `/health` needs `Authorization: Bearer <api_key>`.

    `POST /v1/rewards` (`flexjudge.rewards.server`) judges through `judge`; by default a `Judge` over the
    batcher, so reward pairs batch with chat requests. Pass a `Judge` over another backend (an
    OpenAI-compatible server: `flexjudge serve --base-url`) to front that instead."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from flexjudge.judging import Judge
    from flexjudge.rewards.server import rewards_endpoint

    # No /docs or /openapi.json: nothing is served that the key check would have to know about.
    app = FastAPI(title="flexjudge judge server", docs_url=None, redoc_url=None, openapi_url=None)
    if isinstance(backend, BatchingBackend):
        batcher = backend
    else:
        batch = max_batch if max_batch is not None else int(getattr(backend, "max_batch_size", 8))
        batcher = BatchingBackend(backend, max_batch=batch, window_s=window_s)
    app.state.batcher = batcher
    app.state.admitted = 0
    counter = batcher.backend if isinstance(batcher.backend, CountsPromptTokens) else None

    def parsed(raw: bytes) -> Request:
        request = parse_chat_request(raw, limits=limits)
        if counter is not None:  # after the cheap checks: only a request within them is tokenized
            check_prompt_tokens(request, counter, limits)
        return request

    def error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
        body = {"error": {"message": message, "type": kind, "code": status}}
        return JSONResponse(body, status_code=status, headers=headers)

    if api_key is not None:
        app.add_middleware(RequireKey, api_key=api_key)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "flexjudge"}]}

    async def chat(http: HTTPRequest) -> JSONResponse:
        # A plain Starlette endpoint: the body is validated here, so that every refusal is this server's
        # 4xx (FastAPI's own validation would answer 422 with its own error shape).
        async def handle(request: Request) -> JSONResponse:
            return await _generate(http, batcher, request, error, model_name)

        return await guarded(http, app.state, limits, error, parsed, (RequestError,), handle)

    app.router.add_route("/v1/chat/completions", chat, methods=["POST"])
    # The served model is greedy and bounded by the server's token limit, as its chat requests are.
    reward_judge = judge or Judge(model_name, backend=batcher, max_new_tokens=limits.max_tokens)
    app.state.judge = reward_judge
    app.router.add_route("/v1/rewards", rewards_endpoint(app, reward_judge, limits, error), methods=["POST"])
    return app


async def _generate(
    http: HTTPRequest,
    batcher: BatchingBackend,
    request: Request,
    error: Callable[..., JSONResponse],
    model_name: str,
) -> JSONResponse:
    """Generate for one request, abandoning it when its client disconnects: a request still queued is
    dropped before it reaches the model; one already decoding is stopped at its next decoding step (the
    batcher sets its `Request.stop`), and its batch mates go on."""
    from fastapi.responses import JSONResponse

    try:
        (generation,) = await unless_client_leaves(http, batcher.generate([request]))
    except ClientLeft:
        return error(499, "the client disconnected", "client_closed_request")
    except ConstraintError as exc:  # a schema or grammar this backend cannot compile
        return error(400, str(exc), "invalid_request_error")
    except Exception as exc:
        return error(500, f"{type(exc).__name__}: {exc}", "server_error")
    return JSONResponse(_completion(generation, model_name))


def _completion(generation: Generation, model_name: str) -> dict[str, Any]:
    usage = generation.usage
    prompt_tokens = usage.prompt_tokens if usage else 0
    completion_tokens = usage.completion_tokens if usage else 0
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": generation.text},
                "finish_reason": generation.finish_reason,
                "logprobs": _logprobs(generation),
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _logprobs(generation: Generation) -> dict[str, Any] | None:
    """OpenAI's `choice.logprobs`: each token with its log-probability; null when there are none."""
    if generation.token_logprobs is None:
        return None
    content = [
        {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()), "top_logprobs": []}
        for t in generation.token_logprobs
    ]
    return {"content": content}


def server_config(
    app: FastAPI, *, host: str, port: int, limits: ServeLimits = DEFAULT_SERVE_LIMITS, log_level: str = "info"
) -> uvicorn.Config:
    """uvicorn's configuration for the app: h11 with a header deadline, and short keep-alive."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="off",
        http=protocol_with_deadline(limits.header_timeout_s),
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=64 * 1024,  # request line and headers; the body is read_body's
        # On SIGTERM / should_exit uvicorn stops accepting and closes idle connections, then waits for the
        # requests it holds: a trainer's accepted rewards batch is answered, not cut (no deadline here;
        # the process manager's own kill timeout bounds it).
        timeout_graceful_shutdown=None,
    )


def serve(
    backend: Backend,
    *,
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits = DEFAULT_SERVE_LIMITS,
    api_key: str | None = None,
    insecure_no_auth: bool = False,
    judge: Judge | None = None,
) -> None:
    """Run the server until interrupted (SIGINT / SIGTERM: accepted requests are answered first).
    Listening beyond loopback without `api_key` is refused (`UsageError`) unless `insecure_no_auth`.
    `judge`: see `create_app`."""
    import uvicorn

    if api_key is None and not is_loopback(host) and not insecure_no_auth:
        raise UsageError(
            f"refusing to serve on {host} without --api-key (anyone who reaches it could use the judge);"
            " pass --insecure-no-auth to do it anyway"
        )
    app = create_app(backend, model_name=model_name, limits=limits, api_key=api_key, judge=judge)
    uvicorn.Server(server_config(app, host=host, port=port, limits=limits)).run()
