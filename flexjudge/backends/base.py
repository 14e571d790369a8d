"""The contract between the judge and any model backend."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from flexjudge.errors import BackendError, UsageError

if TYPE_CHECKING:  # Pillow is imported by the media loader and the backends, never by `import flexjudge`
    from PIL.Image import Image as PILImage


@dataclass(frozen=True)
class TextPart:
    """Plain text inside a message."""

    text: str


@dataclass(frozen=True)
class ImagePart:
    """One image (a still, or one video frame), already decoded, size-checked and in RGB."""

    image: PILImage


@dataclass(frozen=True)
class Message:
    """One chat message; a user message mixes text and images in the order the model sees them."""

    role: Literal["system", "user", "assistant"]
    parts: tuple[TextPart | ImagePart, ...]


def chat_template_messages(
    messages: Sequence[Message],
) -> tuple[list[dict[str, Any]], list[PILImage]]:
    """`messages` as a processor's chat template (and TRL's conversational data) takes them: an image part
    becomes `{"type": "image"}` where it sits and its image joins the list, in that order. The local
    backend renders its prompts with this and `flexjudge sft-data` writes its rows with it, so a judge is
    trained on exactly the prompt it is later asked."""
    conversation: list[dict[str, Any]] = []
    images: list[PILImage] = []
    for message in messages:
        content: list[dict[str, str]] = []
        for part in message.parts:
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                content.append({"type": "image"})
                images.append(part.image)
        conversation.append({"role": message.role, "content": content})
    return conversation, images


@dataclass(frozen=True)
class Constraint:
    """What a generation must follow, built once by the judge layer and handed to the backend as it is.

    Backends and engines apply what they are given (the grammar where their engine takes one, else the
    schema; the strict schema where a server takes only OpenAI's subset) and never look inside it for
    judgment fields: what the output means is the judge layer's business.
    """

    schema: dict[str, Any] | None
    """The full JSON Schema (what the local engines and vLLM / SGLang take); None for a constraint given as
    a grammar alone. Treated as read-only."""
    strict_schema: dict[str, Any] | None = None
    """The same output in OpenAI's strict subset (no `const`, `prefixItems`), for servers that take only
    that subset; it enforces less (anchor order and the split are then left to `check`)."""
    grammar: str | None = None
    """An llguidance Lark grammar for the same output that enforces more than `schema` (a judgment's winners
    follow its scores); engines and servers that take Lark grammars use it in place of `schema`."""
    unique_names: frozenset[str] = frozenset()
    """JSON keys of arrays whose items' `name` values must stay distinct while decoding (compared as
    `flexjudge.check` compares names); no grammar can say it, so the transformers backend enforces it."""
    digest: str = field(init=False, compare=False)
    """A content hash of everything above: the key of compile caches, recorded with each judgment."""

    def __post_init__(self) -> None:
        if self.schema is None and self.grammar is None:
            raise UsageError("a Constraint needs a schema, a grammar or both")
        payload = json.dumps(
            [self.schema, self.strict_schema, self.grammar, sorted(self.unique_names)],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        object.__setattr__(self, "digest", hashlib.sha256(payload.encode()).hexdigest()[:24])


@dataclass(frozen=True)
class Request:
    """One generation: the conversation, the output constraint and the sampling settings."""

    messages: tuple[Message, ...]
    constraint: Constraint | None = None
    """What the output must follow; None for free text."""
    response_model: Any = None
    """A pydantic model whose validators check the output; a backend that can re-ask with the
    validation errors (`openai` with `instructor_retries`) uses it, the others ignore it."""
    max_new_tokens: int = 4096
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    """Extra arguments for the model's chat template (`{"enable_thinking": False}` for Qwen3.5-based
    judges, as the released checkpoint is served); the transformers backend passes them to
    `apply_chat_template`, the openai backend sends them as vLLM's `chat_template_kwargs`."""
    logprobs: bool = False
    """Return each generated token's log-probability (`Generation.token_logprobs`) where the backend can:
    the judge sets it to read the winner token's probability; a backend that cannot ignores it."""
    stop: threading.Event | None = field(default=None, compare=False, repr=False)
    """Set by whoever no longer wants this generation (the batcher sets it when its caller is cancelled):
    the transformers backend then stops decoding it at its next step and returns no `Generation` for it
    (`Stopped`). Backends that cannot stop a request mid-way ignore it."""


class Stopped(BackendError):
    """Some requests of a `generate` call were stopped through their `Request.stop`: no text is returned for
    them (a cut-short generation would read as a short answer). `generations` holds, in request order, the
    complete generations of the others and None for each stopped one."""

    def __init__(self, generations: list[Generation | None]) -> None:
        self.generations = generations
        stopped = sum(g is None for g in generations)
        super().__init__(f"{stopped} of {len(generations)} generations were stopped", retryable=False)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token, as text, and the natural-log probability the model gave it."""

    token: str
    logprob: float


@dataclass
class Usage:
    """Token counts reported by the backend."""

    prompt_tokens: int
    completion_tokens: int


@dataclass
class Generation:
    """What the model produced for one request."""

    text: str
    finish_reason: Literal["stop", "length"]
    """`length` when the token budget ran out: the text is cut short."""
    constrained: bool
    """True when decoding was constrained by the request's schema (valid by construction)."""
    usage: Usage | None = None
    model: str = ""
    engine: str | None = None
    """Who enforced the constraint: a local engine (`llguidance`, ...) or `server`; None for free text."""
    enforced: Literal["grammar", "schema", "strict_schema"] | None = None
    """Which form of the request's constraint was applied; None when the output was not constrained."""
    attempts: int = 1
    """Generations it took (more than 1 when the backend re-asked with the rule violations)."""
    token_logprobs: tuple[TokenLogprob, ...] | None = None
    """The generated tokens with their log-probabilities, in order, when the request asked for them and the
    backend returned them (as the model saw them: under a constraint, after its mask); None otherwise. Each
    token is decoded on its own, so a character split across tokens does not read back whole (servers
    write such pieces as bytes); text that is whole in the tokens spells `text`."""
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """Runs a model. `generate` takes a batch and returns one `Generation` per request, in order.

    A backend that does work per image before sending it may also offer `prepare_image(image) -> None`
    (the `openai` backend builds the image's data URL there): the judge calls it in the worker thread that
    loaded the image, so a call's images are prepared in parallel, once, before its requests fan out."""

    name: str
    model: str

    async def generate(self, requests: list[Request]) -> list[Generation]: ...

    async def aclose(self) -> None: ...
