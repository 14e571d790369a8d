"""Candidate thumbnails for the report: each image once, at most `MAX_SIDE` px, as base64 WebP (or JPEG).

Candidates are decoded through `flexjudge.media` (its limits, format allow-lists, no URL fetching), so a
report built from hostile results opens nothing the judging itself would not. A candidate that cannot be
loaded is shown as such, with the reason, rather than failing the whole report or being left out.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from flexjudge.errors import MediaError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

MAX_SIDE = 256
"""Longest side of an image thumbnail, in pixels."""
FRAME_SIDE = 128
"""Longest side of one frame in a video's strip: four of them sit where one image thumbnail would."""
STRIP_FRAMES = 4
"""Frames shown per video, sampled as the judge samples them (first and last included)."""
QUALITY = 50
"""Encoder quality: with WebP's method 2, ~4 KB per 256 px thumbnail in ~4 ms (method 4, the default, saves
~5 % more for four times the time): 20,000 thumbnails take ~110 MB of a 10,000-pair report, and the time
Chromium takes to open the page follows its size."""


@dataclass
class Thumbnails:
    """Thumbnails keyed by source, stored once per distinct encoded image (`images[i]` is base64)."""

    images: list[str] = field(default_factory=list)
    """Base64 of each distinct encoded thumbnail; a candidate refers to them by index."""
    mime: str = ""
    failures: int = 0
    """Candidates that could not be loaded."""
    _by_digest: dict[str, int] = field(default_factory=dict)
    _by_source: dict[tuple[str, str], tuple[list[int], str | None]] = field(default_factory=dict)
    _encoded: dict[tuple[str, str], tuple[list[bytes], str | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from PIL import features

        # WebP is about a third smaller than JPEG at the same look; Pillow builds without it fall back.
        self._format: Literal["WEBP", "JPEG"] = "WEBP" if features.check("webp") else "JPEG"
        self.mime = f"image/{self._format.lower()}"

    def prefetch(self, keys: Iterable[tuple[str, Literal["image", "video"]]]) -> None:
        """Decode and encode these candidates ahead, on a thread per CPU (Pillow and PyAV release the GIL
        while they decode, resize and encode, so this scales with cores); `candidate` then only numbers
        them, in the order the page asks, so the file is the same however the threads ran."""
        todo = list(dict.fromkeys(k for k in keys if k not in self._encoded and k not in self._by_source))
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for key, encoded in zip(todo, pool.map(lambda k: self._encode(*k), todo), strict=True):
                self._encoded[key] = encoded

    def candidate(self, source: str, modality: Literal["image", "video"]) -> tuple[list[int], str | None]:
        """The image indices of one candidate (one image, or a video's frame strip) and, when it could
        not be loaded, why (with no images)."""
        key = (source, modality)
        if key not in self._by_source:
            frames, error = self._encoded.pop(key) if key in self._encoded else self._encode(source, modality)
            self.failures += int(error is not None)
            self._by_source[key] = ([self._number(data) for data in frames], error)
        return self._by_source[key]

    def _encode(self, source: str, modality: Literal["image", "video"]) -> tuple[list[bytes], str | None]:
        from flexjudge.media import load_candidate

        try:
            frames = load_candidate(source, modality=modality, frames=STRIP_FRAMES)
        except MediaError as exc:
            return [], exc.reason
        side = MAX_SIDE if modality == "image" else FRAME_SIDE
        options = {"method": 2} if self._format == "WEBP" else {}
        encoded = []
        for frame in frames:
            buffer = io.BytesIO()
            _shrink(frame, side).save(buffer, format=self._format, quality=QUALITY, **options)
            encoded.append(buffer.getvalue())
        return encoded, None

    def _number(self, data: bytes) -> int:
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self._by_digest:
            self._by_digest[digest] = len(self.images)
            self.images.append(base64.b64encode(data).decode("ascii"))
        return self._by_digest[digest]


def _shrink(image: PILImage, side: int) -> PILImage:
    """A copy no longer than `side` on its long side, aspect kept (never enlarged)."""
    small = image.copy()
    small.thumbnail((side, side), reducing_gap=2.0)
    return small
