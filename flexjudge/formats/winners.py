"""Read a winner the way judges write it, and refuse to guess when it is ambiguous."""

from __future__ import annotations

import re

from flexjudge.anchors import Modality

_LABEL = {"image": "Image", "video": "Video"}
_REF = r"(?:image|video|candidate|picture|clip|option)\s*#?\s*(\d+)"
_LEADING_REF = re.compile(rf"^(?:the\s+)?(?:{_REF}|(\d+))(?![\d/])\b(?P<rest>.*)$", re.S)
_ORDINAL = re.compile(
    r"^(?:the\s+)?(first|second)\s+(?:image|video|candidate|one|picture|clip)\b(?P<rest>.*)$", re.S
)
_ANY_REF = re.compile(rf"\b{_REF}\b")
_COMPARATIVE = re.compile(r"\b(?:than|over|versus|vs\.?|compared\s+(?:to|with))\s*(?:the\s+)?$")
_DOUBT = re.compile(
    r"\b(?:worse|not|n't|inferior|loses?|lost|tie|tied|equal|equally|both|neither|either|same)\b"
    r"|(?:\b(?:and|or)\b|[/&])\s*(?:the\s+)?(?:(?:image|video|candidate|picture|clip|option)\s*#?\s*)?\d"
)
_SLASHED = re.compile(rf"^(?:{_REF}|\d+)\s*/")  # "Image 1/2"
_DOUBT_ALONE = re.compile(r"^\s*(?:tie|tied|draw|both|neither|equal|none|n/?a)\b")


class WinnerError(ValueError):
    """A winner that names no candidate, several candidates, or one that does not exist."""


def label(modality: Modality) -> str:
    """The word the released formats put before a candidate number ("Image" or "Video")."""
    return _LABEL[modality]


def winner_text(candidate: int, modality: Modality) -> str:
    """The exact released spelling of a winner: "Image 2", "Video 1"."""
    return f"{_LABEL[modality]} {candidate}"


def read_winner(value: object, *, candidates: int = 2) -> int:
    """Lenient reading: "Image 2", "image 2", 2, "2", "Video 1", "Image 2 is clearly better"."""
    if isinstance(value, bool):
        raise WinnerError(f"a boolean ({value}) is not a candidate")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        number = _read_text(value)
    else:
        raise WinnerError(f"expected a candidate such as 'Image 1', got {type(value).__name__}")
    if not 1 <= number <= candidates:
        raise WinnerError(f"candidate {number} does not exist (there are {candidates})")
    return number


def _read_text(value: str) -> int:
    text = " ".join(value.strip().strip("*_`'\".!:").split()).lower()
    if _DOUBT_ALONE.match(text) or _SLASHED.match(text):
        raise WinnerError(f"ambiguous winner {value!r}: names no single candidate")
    match = _LEADING_REF.match(text)
    if match is not None:
        number = int(match.group(1) or match.group(2))
    else:
        ordinal = _ORDINAL.match(text)
        if ordinal is None:
            raise WinnerError(f"no candidate named in winner {value!r}")
        match = ordinal
        number = 1 if ordinal.group(1) == "first" else 2
    rest = match.group("rest")
    _reject_doubt(value, rest)
    return number


def _reject_doubt(value: str, rest: str) -> None:
    # Another candidate may only appear as the one beaten: "Image 2 is better than Image 1".
    for other in _ANY_REF.finditer(rest):
        if not _COMPARATIVE.search(rest[: other.start()]):
            raise WinnerError(f"ambiguous winner {value!r}: names more than one candidate")
    stripped = _ANY_REF.sub("", rest)
    if _DOUBT.search(stripped):
        raise WinnerError(f"ambiguous winner {value!r}: qualified in a way that does not name one winner")
