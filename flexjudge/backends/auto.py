"""Backend selection: `backend="auto"` uses a server when a base URL is set, else a local model.

A local model is wrapped in `BatchingBackend`, so concurrent calls decode together in model batches.
Options are checked against the chosen backend's constructor before it is built, so a misspelt
`backend_options` key or a local-only setting sent to a server is a `UsageError` naming the fix.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from flexjudge.backends.base import Backend
from flexjudge.errors import UsageError
from flexjudge.options import keywords

BASE_URL_ENV = "FLEXJUDGE_BASE_URL"

__all__ = ["BASE_URL_ENV", "make_backend"]


def make_backend(
    backend: str | Backend,
    model: str,
    *,
    base_url: str | None,
    api_key: str | None,
    engine: str | None,
    device: str | None,
    dtype: str | None,
    max_concurrency: int,
    options: dict[str, Any],
) -> Backend:
    if not isinstance(backend, str):
        given = {"engine": engine, "device": device, "dtype": dtype, "backend_options": options or None}
        _refuse([k for k, v in given.items() if v is not None], "a Backend you built yourself")
        return backend
    url = base_url or os.environ.get(BASE_URL_ENV)
    if backend not in ("auto", "transformers", "openai"):
        raise UsageError(f"unknown backend {backend!r}; expected 'auto', 'transformers' or 'openai'")
    name = backend if backend != "auto" else ("openai" if url else "transformers")
    if name == "openai":
        if not url:
            raise UsageError(f"backend 'openai' needs base_url= or the {BASE_URL_ENV} environment variable")
        _refuse([k for k, v in (("engine", engine), ("device", device), ("dtype", dtype)) if v], "a server")
        from flexjudge.backends.openai import OpenAIBackend

        _check_options(OpenAIBackend.__init__, options, "openai")
        return OpenAIBackend(url, model=model, api_key=api_key, max_concurrency=max_concurrency, **options)
    from flexjudge.backends.transformers import TransformersBackend

    _check_options(TransformersBackend.__init__, options, "transformers")
    local: dict[str, Any] = {"engine": engine, "device": device, "dtype": dtype}
    from flexjudge.batching import BatchingBackend

    # Concurrent calls (a batch's items, parallel judge() calls) coalesce into model batches; a server
    # needs no wrapper: it already receives a batch's requests concurrently.
    loaded = TransformersBackend(model, **{k: v for k, v in local.items() if v is not None}, **options)
    return BatchingBackend(loaded, max_batch=loaded.max_batch_size)


def _refuse(names: list[str], what: str) -> None:
    if names:
        raise UsageError(
            f"{', '.join(names)} cannot be set for {what}: they apply to local models built here"
        )


def _check_options(constructor: Any, options: dict[str, Any], backend: str) -> None:
    # Settings that Judge passes itself are not backend options.
    judge_given = {"model", "base_url", "api_key", "engine", "device", "dtype", "max_concurrency"}
    valid = sorted(set(keywords(constructor)) - judge_given)
    for name in options:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = (
                f"did you mean {close[0]!r}?" if close else f"the {backend} backend takes: {', '.join(valid)}"
            )
            raise UsageError(f"unknown backend_options key {name!r}; {hint}")
