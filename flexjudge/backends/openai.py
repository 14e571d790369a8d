"""Any OpenAI-compatible server: vLLM, SGLang, OpenAI itself, or `flexjudge serve`.

Images travel as data URLs. The output constraint travels as a strict `json_schema` response format:
the full constraint for vLLM and SGLang, OpenAI's strict subset for api.openai.com (or with
`portable_schema=True`). With `structured="structured_outputs"` it goes as vLLM's
`extra_body={"structured_outputs": {"json": ...}}`, and with `grammar=True` as well judgment constraints go
as `{"grammar": ...}`, the Lark form in which winners follow the scores (`flexjudge.grammar`), for a vLLM
server running the guidance backend (`--structured-outputs-config.backend guidance`). Never as the legacy
`guided_json`, which vLLM silently ignores. Calls run on `AsyncOpenAI` under a semaphore, with our own
retries: exponential backoff with jitter on 429, 5xx, timeouts, dropped connections and malformed
bodies, honouring `Retry-After`. A server that refuses structured outputs (HTTP 400 naming them) is
asked again prompt-only, and the generation says `constrained=False`.

Scale-out is the server's business: one vLLM endpoint with tensor or data parallelism behind it.
"""

from __future__ import annotations

import asyncio
import os
import random
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from flexjudge.backends.base import Generation, ImagePart, Message, Request, Usage
from flexjudge.errors import BackendError, ConstraintError

if TYPE_CHECKING:
    from openai import AsyncOpenAI

Structured = Literal["response_format", "structured_outputs", "none"]
_STRUCTURED_WORDS = ("response_format", "json_schema", "structured", "guided")

__all__ = ["OpenAIBackend"]


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
        portable_schema: bool | None = None,
        instructor_retries: int = 0,
        grammar: bool = False,
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
            raise ValueError("max_concurrency and max_attempts must be at least 1")
        self.model = model
        self.base_url = base_url
        if grammar and structured != "structured_outputs":
            raise ValueError(
                "grammar=True sends structured_outputs.grammar: it needs structured='structured_outputs'"
            )
        self.structured: Structured = structured
        self.grammar = grammar
        # OpenAI itself accepts only the strict subset of JSON Schema; vLLM and SGLang take it all.
        self.portable_schema = "api.openai.com" in base_url if portable_schema is None else portable_schema
        self.max_attempts = max_attempts
        self.instructor_retries = instructor_retries
        self.backoff_s = backoff_s
        self.max_concurrency = max_concurrency
        self._given = client
        self._client_options: dict[str, Any] = {
            "base_url": base_url,
            "api_key": api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            "max_retries": 0,  # retries are ours: one policy, visible in one place
            "timeout": timeout_s,
        }
        # Connection pools and semaphores belong to one event loop: each loop that calls this backend
        # (a Judge's sync facade runs its own) gets its own client and concurrency bound.
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

            client = self._given or AsyncOpenAI(**self._client_options)
            state = self._loops[loop] = _LoopState(client, asyncio.Semaphore(self.max_concurrency))
        return state

    async def _generate_one(self, request: Request) -> Generation:
        messages = await asyncio.to_thread(_messages, request.messages)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        given = request.constraint
        if given is not None and given.schema is None and self.structured != "structured_outputs":
            raise ConstraintError(
                "a grammar travels only as structured_outputs: set structured='structured_outputs'"
            )
        constrained = given is not None and self.structured != "none"
        enforced: Literal["grammar", "schema", "strict_schema"] | None = None
        if constrained:
            assert given is not None
            if (
                self.structured == "structured_outputs"
                and given.grammar is not None
                and (self.grammar or given.schema is None)
            ):
                body["extra_body"] = {"structured_outputs": {"grammar": given.grammar}}
                enforced = "grammar"
            elif self.portable_schema and given.strict_schema is not None:
                body.update(_structured_body(self.structured, given.strict_schema))
                enforced = "strict_schema"
            else:
                assert given.schema is not None
                body.update(_structured_body(self.structured, given.schema))
                enforced = "schema"
        if self.instructor_retries > 0 and request.response_model is not None:
            async with self._state().semaphore:
                return await self._with_instructor(body, request.response_model)
        async with self._state().semaphore:
            try:
                response = await self._call(body)
            except BackendError as exc:
                if not (constrained and exc.status_code == 400 and _about_structured(exc)):
                    raise
                # The server has no structured outputs: prompt-only, lenient parsing, and say so.
                for key in ("response_format", "extra_body"):
                    body.pop(key, None)
                constrained, enforced = False, None
                response = await self._call(body)
        generation = _generation(response, constrained, self.model)
        if constrained:
            generation.engine, generation.enforced = "server", enforced
        return generation

    async def _with_instructor(self, body: dict[str, Any], response_model: Any) -> Generation:
        """Re-ask with the validation errors (instructor, Mode.JSON_SCHEMA) until the output passes.

        instructor sends the response model's own JSON Schema as the response format. When every
        attempt fails, the last output is returned as it is: the caller's checks report what is wrong.
        """
        import instructor
        from instructor.core.exceptions import InstructorRetryException

        client = instructor.from_openai(self._state().client, mode=instructor.Mode.JSON_SCHEMA)
        kwargs = {k: v for k, v in body.items() if k not in ("response_format", "extra_body")}
        try:
            _, completion = await client.chat.completions.create_with_completion(
                response_model=response_model, max_retries=self.instructor_retries, **kwargs
            )
            attempts, passed = None, True
        except InstructorRetryException as exc:
            completion, attempts, passed = exc.last_completion, exc.n_attempts, False
        if completion is None:
            raise BackendError("instructor returned no completion", retryable=True)
        generation = _generation(completion, True, self.model)
        generation.extra.update({"validated": passed, "attempts": attempts})
        return generation

    async def _call(self, body: dict[str, Any]) -> Any:
        import openai

        for attempt in range(1, self.max_attempts + 1):
            try:
                response = await self._state().client.chat.completions.create(**body)
                if not getattr(response, "choices", None):
                    raise _Malformed("the response has no choices")
                return response
            except (openai.RateLimitError, openai.InternalServerError) as exc:
                error = _translate(exc, retryable=True)
                wait = _retry_after(exc)
            except (
                openai.APITimeoutError,
                openai.APIConnectionError,
                _Malformed,
                openai.APIResponseValidationError,
            ) as exc:
                error = _translate(exc, retryable=True)
                wait = None
            except openai.APIStatusError as exc:
                if exc.status_code >= 500:
                    error, wait = _translate(exc, retryable=True), _retry_after(exc)
                else:
                    raise _translate(exc, retryable=False) from exc
            except (ValueError, TypeError, KeyError) as exc:  # a body the client could not read
                error, wait = _translate(exc, retryable=True), None
            if attempt == self.max_attempts:
                raise error
            delay = wait if wait is not None else self.backoff_s * 2 ** (attempt - 1)
            await asyncio.sleep(delay * (1 + 0.25 * random.random()))  # jitter spreads synchronized retries
        raise AssertionError("unreachable")  # pragma: no cover


class _Malformed(Exception):
    """A 2xx answer that is not a usable chat completion."""


@dataclass
class _LoopState:
    client: AsyncOpenAI
    semaphore: asyncio.Semaphore


def _structured_body(mode: Structured, schema: dict[str, Any]) -> dict[str, Any]:
    if mode == "structured_outputs":
        return {"extra_body": {"structured_outputs": {"json": schema}}}
    return {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "judgment", "schema": schema, "strict": True},
        }
    }


def _messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    from flexjudge.media import to_data_url

    out = []
    for message in messages:
        content: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, ImagePart):
                content.append({"type": "image_url", "image_url": {"url": to_data_url(part.image)}})
            else:
                content.append({"type": "text", "text": part.text})
        out.append({"role": message.role, "content": content})
    return out


def _generation(response: Any, constrained: bool, model: str) -> Generation:
    choice = response.choices[0]
    text = choice.message.content
    if not isinstance(text, str):
        raise BackendError("the server returned a choice without text content", retryable=False)
    usage = None
    reported = getattr(response, "usage", None)
    prompt_tokens = getattr(reported, "prompt_tokens", None)
    completion_tokens = getattr(reported, "completion_tokens", None)
    if isinstance(prompt_tokens, int) and isinstance(completion_tokens, int):  # null counts: no usage
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    finish: Literal["stop", "length"] = "length" if choice.finish_reason == "length" else "stop"
    return Generation(
        text=text, finish_reason=finish, constrained=constrained, usage=usage, model=response.model or model
    )


def _translate(exc: BaseException, *, retryable: bool) -> BackendError:
    status = getattr(exc, "status_code", None)
    detail = str(exc).strip() or type(exc).__name__
    where = f"HTTP {status}: " if status is not None else ""
    return BackendError(f"{where}{detail}", retryable=retryable, status_code=status, original=exc)


def _retry_after(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return min(float(value), 60.0) if value is not None else None
    except ValueError:
        return None


def _about_structured(exc: BackendError) -> bool:
    return any(word in str(exc).lower() for word in _STRUCTURED_WORDS)
