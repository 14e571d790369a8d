"""Any OpenAI-compatible server: vLLM, SGLang, OpenAI itself, or `flexjudge serve`.

Images travel as data URLs. The output constraint travels as a strict `json_schema` response format, or
with `structured="structured_outputs"` as vLLM's `extra_body={"structured_outputs": {"json": ...}}`; with
`grammar=True` as well, constraints that have a grammar go as `{"grammar": ...}` (the Lark form in which
a judgment's winners follow its scores, for a vLLM server running the guidance backend). Never as the
legacy `guided_json`, which vLLM silently ignores.

Which schema a server gets is `schema_variant`: "full" (the whole constraint, what vLLM and SGLang
take), "strict" (OpenAI's strict subset, which enforces less: `check` reports the rest), or "auto":
strict for the hosts that accept only that subset (api.openai.com and *.openai.azure.com), full for
any other.

Whether the server enforces structured outputs at all is found out once per backend by a probe
(`_probe.py`) before the first constrained request. A server without them raises `ConstraintError`
unless `allow_unconstrained=True`, in which case requests go prompt-only and every generation says
`constrained=False`. A server that takes the probe but refuses a request's constraint raises
`ConstraintError` with its message: nothing falls back. Calls retry under one policy (`_retry.py`).

With `logprobs=True`, requests that ask for log-probabilities (`Request.logprobs`; the judge asks for them
on every pair) send `"logprobs": true`, and the tokens the server returns come back as
`Generation.token_logprobs` (None when the server sends none). Off by default: not every
OpenAI-compatible server takes the field (vLLM, SGLang, OpenAI and `flexjudge serve` do).

Requests travel as JSON bytes, the constant part of each body (the schema, the model, template
options) encoded once per constraint, and answers are read from their JSON (`openai_wire.py`) rather
than through the client's response models. The transport is aiohttp where it is installed, unless the
environment names a proxy (the client's aiohttp transport ignores HTTP(S)_PROXY), else httpx2;
`transport="httpx"` or `"aiohttp"` chooses. With aiohttp, plain requests are posted by an aiohttp
session of our own (`_direct.py`: the client's headers, timeout and errors, a third of its CPU a
call) and the client (on its `DefaultAioHttpClient`) sends the rest: the probe and instructor's
re-asks. With httpx2, or a `client` handed in, everything goes through the client's raw route
(`client.post`).

Scale-out is the server's business: one vLLM endpoint with tensor or data parallelism behind it.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import urllib.request
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

from flexjudge.backends._cache import BoundedCache
from flexjudge.backends._direct import DirectPost
from flexjudge.backends._probe import PROBE_CONSTRAINT, PROBE_PROMPT, PROBE_TOKENS, probe, refused
from flexjudge.backends._retry import client_post, complete, complete_raw, json_fields
from flexjudge.backends.base import Constraint, Generation, ImagePart, Message, Request
from flexjudge.backends.openai_wire import Answer, Encoded, Tail, encode, plain, read, read_data
from flexjudge.errors import BackendError, ConstraintError, UsageError

if TYPE_CHECKING:
    import httpx2
    from openai import AsyncOpenAI
    from openai.types.chat import ChatCompletion
    from PIL.Image import Image as PILImage

_TAILS_KEPT = 64
"""Encoded constant body ends (one per constraint and template options), least recently used out."""
_REFUSALS_KEPT = 256
"""Constraints a server refused, kept by digest so they are not sent again (least recently used out)."""

T = TypeVar("T")
Structured = Literal["response_format", "structured_outputs", "none"]
SchemaVariant = Literal["auto", "full", "strict"]
Enforced = Literal["grammar", "schema", "strict_schema"]
Transport = Literal["auto", "aiohttp", "httpx"]
_STRICT_HOSTS = ("api.openai.com",)
_STRICT_DOMAINS = (".openai.azure.com",)

__all__ = ["OpenAIBackend", "SchemaVariant", "Structured", "Transport", "schema_variant_for"]


def schema_variant_for(base_url: str) -> Literal["full", "strict"]:
    """The automatic rule: "strict" for OpenAI's own hosts (api.openai.com, *.openai.azure.com), which
    refuse anything outside their strict subset; "full" for any other server."""
    host = (urlsplit(base_url).hostname or "").lower().rstrip(".")
    return "strict" if host in _STRICT_HOSTS or host.endswith(_STRICT_DOMAINS) else "full"


class OpenAIBackend:
    """A model behind an OpenAI-compatible HTTP endpoint."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api_key: str | None = None,
        max_concurrency: int = 8,
        max_attempts: int = 4,
        timeout_s: float = 300.0,
        backoff_s: float = 0.5,
        structured: Structured = "response_format",
        schema_variant: SchemaVariant = "auto",
        allow_unconstrained: bool = False,
        instructor_retries: int = 0,
        grammar: bool = False,
        logprobs: bool = False,
        transport: Transport = "auto",
        client: AsyncOpenAI | None = None,
    ) -> None:
        try:
            import openai  # noqa: F401  (fail here, with the install hint, not at the first call)
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BackendError(
                "the openai backend needs the 'server' extra: pip install 'flexjudge[server]'",
                retryable=False,
            ) from exc
        if max_concurrency < 1 or max_attempts < 1:
            raise UsageError("max_concurrency and max_attempts must be at least 1")
        if grammar and structured != "structured_outputs":
            raise UsageError(
                "grammar=True sends structured_outputs.grammar: it needs structured='structured_outputs'"
            )
        if schema_variant not in ("auto", "full", "strict"):
            raise UsageError(f"schema_variant must be 'auto', 'full' or 'strict', not {schema_variant!r}")
        self.transport: Literal["aiohttp", "httpx"] = _transport(transport)
        self.model = model
        self.base_url = base_url
        self.structured: Structured = structured
        self.grammar = grammar
        self.logprobs = logprobs
        self.schema_variant: Literal["full", "strict"] = (
            schema_variant_for(base_url) if schema_variant == "auto" else schema_variant
        )
        self.allow_unconstrained = allow_unconstrained
        self.max_attempts = max_attempts
        self.instructor_retries = instructor_retries
        self.backoff_s = backoff_s
        self.max_concurrency = max_concurrency
        self._given = client
        self._client_options: dict[str, Any] = {
            "base_url": base_url,
            "api_key": api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            "max_retries": 0,  # retries are ours (_retry.py): one policy, malformed bodies included
            "timeout": timeout_s,
        }
        self._no_structured: str | None = None
        """Why the server does not enforce structured outputs, once the probe found out."""
        self._probed = False
        self._tails: BoundedCache[tuple[str | None, str], Tail] = BoundedCache(_TAILS_KEPT)
        """Encoded constant body ends by (constraint digest, template options): see `_tail`."""
        self._refused: BoundedCache[str, str] = BoundedCache(_REFUSALS_KEPT)  # constraints come from anywhere
        """Digests of constraints the server refused, with its message: refused again without a call."""
        # Connection pools, semaphores and locks belong to one event loop: each loop that calls this
        # backend (a Judge's sync facade runs its own) gets its own.
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )

    async def generate(self, requests: list[Request]) -> list[Generation]:
        return list(await asyncio.gather(*(self._generate_one(r) for r in requests)))

    async def aclose(self) -> None:
        """Close the clients of this loop and of loops already closed (their connections went with them);
        a client handed in is closed too."""
        current = asyncio.get_running_loop()
        for loop, state in list(self._loops.items()):
            if loop is current and state.direct is not None:
                await state.direct.close()
            if loop is current and state.client is not self._given:
                await state.client.close()
            if loop is current or loop.is_closed():
                del self._loops[loop]
        if self._given is not None:
            await self._given.close()

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        for gone in [other for other in self._loops if other.is_closed()]:
            del self._loops[gone]  # a semaphore that was waited on keeps its loop alive: drop it here
        state = self._loops.get(loop)
        if state is None:
            from openai import AsyncOpenAI

            client = self._given or AsyncOpenAI(**self._client_options, http_client=self._http_client())
            direct = None
            if self._given is None and self.transport == "aiohttp":  # a client handed in is used for all
                options = self._client_options
                direct = DirectPost(options["base_url"], options["api_key"], options["timeout"])
            post = direct or client_post(client, self.base_url)
            state = self._loops[loop] = _LoopState(
                client, asyncio.Semaphore(self.max_concurrency), post, direct
            )
        return state

    def _http_client(self) -> httpx2.AsyncClient | None:
        """The client's HTTP transport: its aiohttp one when chosen, else None (its httpx2 default)."""
        if self.transport == "httpx":
            return None
        from openai import DefaultAioHttpClient

        return DefaultAioHttpClient()

    async def _generate_one(self, request: Request) -> Generation:
        # Every image of a group is in G - 1 pairs: once its URL is built, no thread hop (hashing and
        # encoding, the costly part, happen off the loop the first time only).
        messages = _messages(request.messages, _DATA_URLS.ready)
        if messages is None:
            messages = await asyncio.to_thread(_messages, request.messages)
        body: dict[str, Any] = {
            "messages": messages,
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if self.logprobs and request.logprobs:
            body["logprobs"] = True
        fields, enforced = await self._constraint_fields(request)
        async with self._state().semaphore:
            if self.instructor_retries > 0 and request.response_model is not None:
                body = {"model": self.model, **plain(body), **self._template_fields(request)}
                generation = await self._with_instructor(body, fields, request)
            else:
                content = encode(body, self._tail(request, fields))
                answer = await self._send(lambda: self._post(content), fields, request.constraint)
                generation = _generation(answer, bool(fields))
        generation.model = generation.model or self.model
        if fields:
            generation.engine, generation.enforced = "server", enforced
        return generation

    def prepare_image(self, image: PILImage) -> None:
        """Build the image's data URL (in the loader's worker thread): the requests then find it ready."""
        _DATA_URLS.get(image)

    def _tail(self, request: Request, fields: dict[str, Any]) -> Tail:
        """The body's fields that are the same on every request with this constraint and these template
        options (the model, the constraint, the options), encoded once: the schema is most of a request."""
        constraint = request.constraint.digest if fields and request.constraint is not None else None
        options = (
            json.dumps(request.chat_template_kwargs, sort_keys=True) if request.chat_template_kwargs else ""
        )
        tail, _ = self._tails.get_or_build(
            (constraint, options),
            lambda: Tail.of(
                json_fields(_merged({"model": self.model, **self._template_fields(request)}, fields))
            ),
        )
        return tail

    def _template_fields(self, request: Request) -> dict[str, Any]:
        """Chat-template options as vLLM and SGLang take them (`chat_template_kwargs`); never to OpenAI's own
        hosts (api.openai.com, *.openai.azure.com), which refuse fields they do not know."""
        if not request.chat_template_kwargs or schema_variant_for(self.base_url) == "strict":
            return {}
        return {"extra_body": {"chat_template_kwargs": dict(request.chat_template_kwargs)}}

    async def _constraint_fields(self, request: Request) -> tuple[dict[str, Any], Enforced | None]:
        """The body fields that carry the request's constraint, and which form of it they carry; none
        when the request is free text or unconstrained requests were chosen."""
        given = request.constraint
        if given is None or self.structured == "none":
            return {}, None
        if given.schema is None and self.structured != "structured_outputs":
            raise ConstraintError(
                "a grammar travels only as structured_outputs: set structured='structured_outputs'"
            )
        refusal = self._refused.get(given.digest)
        if refusal is not None:
            raise ConstraintError(refusal)
        if not await self._enforces_structured(request):
            if self.allow_unconstrained:
                return {}, None
            raise ConstraintError(
                f"{self.base_url} does not enforce structured outputs (sent as {self.structured}): "
                f"{self._no_structured}. Judgments from it would not be valid by construction; pass "
                "backend_options={'allow_unconstrained': True} to judge unconstrained anyway (each "
                "judgment then says meta.constrained=False), or serve the model with structured outputs"
            )
        return self._fields(given)

    def _fields(self, given: Constraint) -> tuple[dict[str, Any], Enforced]:
        grammar = given.grammar if self.grammar or given.schema is None else None
        if self.structured == "structured_outputs" and grammar is not None:
            return {"extra_body": {"structured_outputs": {"grammar": grammar}}}, "grammar"
        enforced: Enforced
        if self.schema_variant == "strict" and given.strict_schema is not None:
            schema, enforced = given.strict_schema, "strict_schema"
        else:
            assert given.schema is not None  # a grammar-only constraint returned above
            schema, enforced = given.schema, "schema"
        if self.structured == "structured_outputs":
            return {"extra_body": {"structured_outputs": {"json": schema}}}, enforced
        strict = {"name": "judgment", "schema": schema, "strict": True}
        return {"response_format": {"type": "json_schema", "json_schema": strict}}, enforced

    async def _enforces_structured(self, request: Request) -> bool:
        """Probe the server once per backend; concurrent first requests wait for one probe."""
        if not self._probed:
            async with self._state().probe_lock:
                if not self._probed:
                    body: dict[str, Any] = {
                        "model": self.model,
                        "messages": [{"role": "user", "content": PROBE_PROMPT}],
                        "max_tokens": PROBE_TOKENS,
                        "temperature": 0.0,
                    }
                    body.update(self._template_fields(request))  # a thinking model must answer in budget
                    fields, _ = self._fields(PROBE_CONSTRAINT)
                    self._no_structured = await probe(self._call, _merged(body, fields))
                    self._probed = True
        return self._no_structured is None

    async def _send(
        self, ask: Callable[[], Awaitable[T]], fields: dict[str, Any], constraint: Constraint | None
    ) -> T:
        """One completion (`ask`); a refusal of the constraint (not of the request) is a `ConstraintError`."""
        try:
            return await ask()
        except BackendError as exc:
            if not fields or constraint is None or not refused(exc):
                raise
            # The refusal may be about the prompt (too long, too many images): the same constraint on a
            # one-token request tells which, by what the server does.
            check = {"model": self.model, "messages": [{"role": "user", "content": PROBE_PROMPT}]}
            try:
                await self._call(_merged({**check, "max_tokens": 1, "temperature": 0.0}, fields))
            except BackendError as again:
                if not refused(again):
                    raise exc from None
                message = f"{self.base_url} takes structured outputs but refuses this constraint: {exc}"
                self._refused.put(constraint.digest, message)
                raise ConstraintError(message, original=exc) from exc
            raise

    async def _call(self, body: dict[str, Any]) -> ChatCompletion:
        """One completion of a body as `create` takes it, read into the client's models (the probe and
        instructor's re-asks, which are few)."""
        client = self._state().client
        return await complete(
            client, body, url=self.base_url, attempts=self.max_attempts, backoff_s=self.backoff_s
        )

    async def _post(self, content: bytes) -> Answer:
        """One completion of an encoded body, read from its JSON (every plain request)."""
        post, url = self._state().post, self.base_url
        return await complete_raw(
            post, content, lambda raw: read(raw, url), attempts=self.max_attempts, backoff_s=self.backoff_s
        )

    async def _with_instructor(
        self, body: dict[str, Any], fields: dict[str, Any], request: Request
    ) -> Generation:
        """Re-ask with the rule violations (instructor, Mode.JSON_SCHEMA) until the output passes.

        Every ask carries the request's own constraint (the fields the plain path sends), in place of the
        schema instructor derives from the response model, and goes through `_send` and so through the
        retry policy. When the re-asks run out, the last answer comes back with `validated=False` in
        `extra`; a truncated answer comes back with finish_reason "length", which reading reports as
        `TruncatedOutput`. Failures of ours or of the server propagate as they are.
        """
        import instructor
        from instructor.core.exceptions import InstructorError
        from pydantic import ValidationError

        answers: list[ChatCompletion] = []
        failures: list[BaseException] = []

        async def create(**kwargs: Any) -> ChatCompletion:
            kwargs.pop("response_format", None)  # instructor's, from the response model's looser schema
            try:
                answer = await self._send(
                    lambda: self._call(_merged(kwargs, fields)), fields, request.constraint
                )
            except BaseException as exc:  # instructor wraps it; it is re-raised as it was below
                failures.append(exc)
                raise
            answers.append(answer)
            return answer

        patched = instructor.patch(create=create, mode=instructor.Mode.JSON_SCHEMA)
        try:
            await patched(response_model=request.response_model, max_retries=self.instructor_retries, **body)
            validated = True
        except (InstructorError, ValidationError) as exc:
            if failures:
                raise failures[-1] from None
            if not answers:
                raise BackendError(f"instructor failed before any answer: {exc}", retryable=False) from exc
            # Re-asks ran out, or the answer was cut short (IncompleteOutputException): the last answer
            # goes back to be read, marked as not passing the response model's checks.
            validated = False
        # The models the client built, back to the JSON they were read from (as sent: unset fields
        # stay out), read by the same rules as every other answer.
        last = read_data(answers[-1].to_dict(mode="json", warnings=False), self.base_url)
        generation = _generation(last, bool(fields))
        generation.attempts = len(answers)
        generation.extra["validated"] = validated
        return generation


@dataclass
class _LoopState:
    client: AsyncOpenAI
    semaphore: asyncio.Semaphore
    post: Callable[[bytes], Awaitable[bytes]]
    """How plain requests go: `direct`, or the client's raw route."""
    direct: DirectPost | None
    probe_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _merged(body: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """`body` with the constraint `fields`; both may carry `extra_body` (template options, structured
    outputs), which are merged rather than replaced."""
    out = {**body, **fields}
    if "extra_body" in body and "extra_body" in fields:
        out["extra_body"] = {**body["extra_body"], **fields["extra_body"]}
    return out


def _messages(
    messages: tuple[Message, ...], url_of: Callable[[PILImage], Encoded | None] | None = None
) -> list[dict[str, Any]] | None:
    """The messages as the API takes them, images as data URLs from `url_of` (default: built as needed),
    encoded already (`openai_wire.plain` decodes them for the client's own paths); None as soon as
    `url_of` has none for an image (`_DataUrls.ready`: the caller then builds them off the loop)."""
    url_of = url_of or _DATA_URLS.get
    out = []
    for message in messages:
        content: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, ImagePart):
                url = url_of(part.image)
                if url is None:
                    return None
                content.append({"type": "image_url", "image_url": {"url": url}})
            else:
                content.append({"type": "text", "text": part.text})
        out.append({"role": message.role, "content": content})
    return out


class _DataUrls:
    """Data URLs by pixel content, as JSON strings encoded once (`Encoded`), so an image is PNG-, base64-
    and JSON-encoded once while it is in use: a group reward sends each of G images in G - 1 pairs,
    often at the same moment, and encoding costs far more than hashing the pixels (about 20x for a
    1024x1024 photo). Keyed by content, not by object, so an image changed in place is encoded afresh.
    A `BoundedCache` (64 entries, 256 MB): threads asking for an image being encoded wait for that
    encoding instead of starting their own."""

    def __init__(self) -> None:
        self.encodings = 0
        self._counting = threading.Lock()  # builds of different images run at once
        self._urls: BoundedCache[str, Encoded] = BoundedCache(64, max_weight=256 << 20)

    def get(self, image: PILImage) -> Encoded:
        from flexjudge.media import call_digest

        url, _ = self._urls.get_or_build(call_digest(image), lambda: self._encode(image), _size)
        return url

    def ready(self, image: PILImage) -> Encoded | None:
        """The URL when it costs nothing: the image's digest known for this call and its URL built."""
        from flexjudge.media import known_digest

        digest = known_digest(image)
        return self._urls.get(digest) if digest is not None else None

    def _encode(self, image: PILImage) -> Encoded:
        from flexjudge.media import to_data_url

        url = Encoded.of(to_data_url(image))
        with self._counting:
            self.encodings += 1
        return url


def _size(url: Encoded) -> int:
    return len(url.json)


_DATA_URLS = _DataUrls()


def _transport(chosen: Transport) -> Literal["aiohttp", "httpx"]:
    if chosen not in ("auto", "aiohttp", "httpx"):
        raise UsageError(f"transport must be 'auto', 'aiohttp' or 'httpx', not {chosen!r}")
    if chosen == "httpx":
        return "httpx"
    if chosen == "auto" and urllib.request.getproxies():
        # The client's aiohttp transport ignores HTTP(S)_PROXY and the like, which httpx2 follows: behind
        # a proxy, "auto" keeps the transport that goes where the environment says.
        return "httpx"
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        if chosen == "aiohttp":
            raise UsageError("transport='aiohttp' needs aiohttp: pip install 'openai[aiohttp]'") from None
        return "httpx"
    return "aiohttp"


def _generation(answer: Answer, constrained: bool) -> Generation:
    return Generation(
        text=answer.text,
        finish_reason=answer.finish_reason,
        constrained=constrained,
        usage=answer.usage,
        model=answer.model,
        token_logprobs=answer.token_logprobs,
    )
