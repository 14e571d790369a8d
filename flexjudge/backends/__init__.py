"""Who runs the model: one module per backend, chosen by name (`transformers`, `openai`).

Backends know nothing of judgments, rewards or training: they turn a `Request` (chat messages with
images, an optional JSON Schema to constrain the output, sampling settings) into a `Generation`
(text, why it stopped, token usage, whether the output was constrained). Heavy libraries are imported
inside each backend module, never here.
"""

from flexjudge.backends.base import Backend, Generation, ImagePart, Message, Request, TextPart, Usage

__all__ = ["Backend", "Generation", "ImagePart", "Message", "Request", "TextPart", "Usage"]
