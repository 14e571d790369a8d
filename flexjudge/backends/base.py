"""The contract between the judge and any model backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

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


@dataclass(frozen=True)
class Request:
    """One generation: the conversation, the output constraint and the sampling settings."""

    messages: tuple[Message, ...]
    schema: dict[str, Any] | None
    """JSON Schema the output must follow; None for free text."""
    portable_schema: dict[str, Any] | None = None
    """The same output in OpenAI's strict subset (no `const`, `prefixItems`): for servers that take only
    that subset. It enforces less (anchor order and the split are then left to `check`)."""
    response_model: Any = None
    """A pydantic model whose validators check the output; a backend that can re-ask with the
    validation errors (`openai` with `instructor_retries`) uses it, the others ignore it."""
    grammar: str | None = None
    """An llguidance Lark grammar the output must follow, taking the place of `schema` where set (what a
    vLLM server running the guidance backend takes as `structured_outputs.grammar`)."""
    max_new_tokens: int = 4096
    temperature: float = 0.0
    seed: int | None = None


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
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """Runs a model. `generate` takes a batch and returns one `Generation` per request, in order."""

    name: str
    model: str

    async def generate(self, requests: list[Request]) -> list[Generation]: ...

    async def aclose(self) -> None: ...
