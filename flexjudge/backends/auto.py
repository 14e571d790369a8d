"""Backend selection: `backend="auto"` uses a server when a base URL is set, else a local model."""

from __future__ import annotations

import os
from typing import Any

from flexjudge.backends.base import Backend
from flexjudge.errors import FlexjudgeError

BASE_URL_ENV = "FLEXJUDGE_BASE_URL"

__all__ = ["BASE_URL_ENV", "make_backend"]


def make_backend(
    backend: str | Backend,
    model: str,
    base_url: str | None,
    api_key: str | None,
    engine: str | None,
    options: dict[str, Any],
) -> Backend:
    if not isinstance(backend, str):
        return backend
    url = base_url or os.environ.get(BASE_URL_ENV)
    name = backend if backend != "auto" else ("openai" if url else "transformers")
    if name == "openai":
        if not url:
            raise FlexjudgeError(
                f"backend 'openai' needs base_url= or the {BASE_URL_ENV} environment variable"
            )
        from flexjudge.backends.openai import OpenAIBackend

        return OpenAIBackend(url, model=model, api_key=api_key, **options)
    if name == "transformers":
        from flexjudge.backends.transformers import TransformersBackend

        options.pop("max_concurrency", None)  # one process, one model: batching replaces concurrency
        return TransformersBackend(model, engine=engine, **options)  # type: ignore[arg-type]
    raise FlexjudgeError(f"unknown backend {backend!r}; expected 'auto', 'transformers' or 'openai'")
