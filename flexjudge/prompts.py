"""Prompt templates: shipped in the wheel under `flexjudge/prompts/`, kept at `prompts/` in the repository.

Templates are `str.format` strings (literal braces doubled). A user may pass a file of their own.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

_SOURCE_TREE = Path(__file__).resolve().parent.parent / "prompts"


def template_names() -> list[str]:
    """Names of the bundled templates (file stems)."""
    return sorted(p.name.removesuffix(".md") for p in _directory().iterdir() if p.name.endswith(".md"))


def load_template(name_or_path: str | Path) -> str:
    """A bundled template by name ("flex_image") or any template file by path."""
    candidate = Path(name_or_path)
    if candidate.suffix and candidate.exists():
        # Every judgment renders its template: read a file again only when it changed on disk.
        stat = candidate.stat()
        return _read(str(candidate.resolve()), stat.st_mtime_ns, stat.st_size)
    return _bundled(str(name_or_path))


@functools.lru_cache(maxsize=32)
def _read(path: str, mtime_ns: int, size: int) -> str:
    return Path(path).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=32)
def _bundled(name: str) -> str:
    # Bundled templates do not change while the package is installed; failures are not cached.
    bundled = _directory() / f"{name}.md"
    if not bundled.is_file():
        raise FileNotFoundError(f"no prompt template {name!r}; bundled: {', '.join(template_names())}")
    return bundled.read_text(encoding="utf-8")


@functools.cache
def _directory() -> Path:
    # In a wheel the templates sit inside the package; in an editable install, at the repository top.
    packaged = resources.files("flexjudge") / "prompts"
    if packaged.is_dir():
        return Path(str(packaged))
    return _SOURCE_TREE
