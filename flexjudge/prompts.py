"""Prompt templates: shipped in the wheel under `flexjudge/prompts/`, kept at `prompts/` in the repository.

Templates are `str.format` strings (literal braces doubled). A user may pass a file of their own.
"""

from __future__ import annotations

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
        return candidate.read_text(encoding="utf-8")
    bundled = _directory() / f"{name_or_path}.md"
    if not bundled.is_file():
        raise FileNotFoundError(
            f"no prompt template {name_or_path!r}; bundled: {', '.join(template_names())}"
        )
    return bundled.read_text(encoding="utf-8")


def _directory() -> Path:
    # In a wheel the templates sit inside the package; in an editable install, at the repository top.
    packaged = resources.files("flexjudge") / "prompts"
    if packaged.is_dir():
        return Path(str(packaged))
    return _SOURCE_TREE
