"""One safe door for candidate media: images and videos in, decoded RGB images out.

Every image this module returns is fully decoded (no open file behind it), in RGB, within
`Limits`, a new object (a caller's image is never modified) and has ``.format == "PNG"``:
Outlines' ``outlines.inputs.Image`` refuses an image whose ``format`` is unset and re-encodes the image
in that format before the model sees it. Naming PNG (lossless) means a JPEG source is not recompressed
a second time on its way to the model; pixels decoded from a file or a video carry no format of their
own, so setting the attribute is all the "re-encoding" they need (an in-memory PNG round trip would
give the same pixels at a cost of tens of milliseconds per frame).

Safety: sizes are checked from the header before any pixel is decoded (decompression bombs), files
and downloads are size-capped, only the image formats and video containers listed in `Limits` are
parsed (Pillow's EPS plugin, for one, runs Ghostscript; FFmpeg's playlist demuxers open other files
and URLs), URLs are fetched only with ``Limits(allow_urls=True)``, and every failure is a
`MediaError` naming the source and the reason. Pillow, NumPy and PyAV are imported inside the
functions that need them, so importing this module is cheap.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, cast

from flexjudge._images import (
    DEFAULT_LIMITS,
    IMAGE_FORMATS,
    ORIGINAL_ATTR,
    UPLOAD_TYPES,
    VIDEO_CONTAINERS,
    ImageSource,
    Limits,
    Modality,
    VideoSource,
    _decode_data_url,
    _describe,
    _fs_path,
    _is_array,
    _is_url,
    _to_rgb,
    load_image,
    open_original,
)
from flexjudge._video import load_video, sample_frame_indices
from flexjudge.errors import MediaError, UsageError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "DEFAULT_LIMITS",
    "IMAGE_FORMATS",
    "VIDEO_CONTAINERS",
    "ImageSource",
    "Limits",
    "MediaError",
    "VideoSource",
    "guess_modality",
    "image_digest",
    "load_candidate",
    "load_image",
    "load_video",
    "open_original",
    "original_of",
    "sample_frame_indices",
    "to_data_url",
]


_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".avif"}
_IMAGE_EXTS |= {".pgm", ".pbm", ".pnm", ".qoi", ".mpo"}
_VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".ogv"}
_VIDEO_EXTS |= {".3gp", ".apng"}


def guess_modality(source: ImageSource | VideoSource) -> Modality:
    """Tell an image from a video by type, extension or, failing those, the first bytes.

    A list/tuple of frames or a 4-d array is a video; a PIL image or a 2/3-d array an image; a GIF
    file is a video when it is animated and an image otherwise (a GIF URL, which is not fetched to
    look, counts as a video).
    """
    from PIL import Image

    what = _describe(source)
    if isinstance(source, (list, tuple)):
        return "video"
    if isinstance(source, Image.Image):
        return "image"
    if _is_array(source):
        return "video" if source.ndim == 4 else "image"
    if isinstance(source, str) and source[:5].lower() == "data:":
        source = _decode_data_url(source, DEFAULT_LIMITS, what)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _sniff(data[:64], lambda: io.BytesIO(data), what)
    if isinstance(source, str) and _is_url(source):
        try:
            ext = Path(urllib.parse.urlsplit(source).path).suffix.lower()
        except ValueError as exc:  # a malformed host or port
            raise MediaError("malformed URL", source=what) from exc
        if ext in _IMAGE_EXTS or ext in _VIDEO_EXTS or ext == ".gif":
            return "image" if ext in _IMAGE_EXTS else "video"
        raise MediaError(
            "cannot tell image from video by the URL: pass modality='image' or 'video'", source=what
        )
    if isinstance(source, (str, os.PathLike)):
        path = _fs_path(source, what)
        ext = path.suffix.lower()
        if ext in _IMAGE_EXTS:
            return "image"
        if ext in _VIDEO_EXTS:
            return "video"
        try:
            with path.open("rb") as fp:
                head = fp.read(64)
        except OSError as exc:
            raise MediaError(
                f"cannot read the file: {exc.strerror or type(exc).__name__}", source=what
            ) from exc
        return _sniff(head, lambda: path.open("rb"), what)
    raise MediaError(f"unsupported source type {type(source).__name__}", source=what)


def _sniff(head: bytes, reopen: Callable[[], BinaryIO], what: str) -> Modality:
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "video" if _gif_is_animated(reopen) else "image"
    images = (b"\x89PNG", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"qoif", b"P6", b"P5")
    if head.startswith(images) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if head[4:8] == b"ftyp":
        return "image" if head[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1") else "video"
    videos = (b"\x1aE\xdf\xa3", b"FLV", b"OggS", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")
    if head.startswith(videos) or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return "video"
    raise MediaError("cannot tell image from video: unknown file type; pass modality=", source=what)


def _gif_is_animated(reopen: Callable[[], BinaryIO]) -> bool:
    from PIL import Image

    try:
        with reopen() as fp, Image.open(fp, formats=["GIF"]) as im:
            return bool(getattr(im, "is_animated", False))
    except Exception:
        return False  # loading it as an image will report what is wrong with it


def load_candidate(
    source: ImageSource | VideoSource,
    *,
    modality: Modality | Literal["auto"] = "auto",
    frames: int = 8,
    limits: Limits = DEFAULT_LIMITS,
) -> list[PILImage]:
    """One candidate as the images the model sees: ``[image]`` for an image, `frames` frames for a video."""
    kind = guess_modality(source) if modality == "auto" else modality
    if kind == "video":
        return load_video(cast("VideoSource", source), frames=frames, limits=limits)
    if isinstance(source, (list, tuple)) or (_is_array(source) and source.ndim == 4):
        what = _describe(source)
        raise MediaError("a frame list is a video, not an image: use modality='video'", source=what)
    return [load_image(cast("ImageSource", source), limits=limits)]


# -------------------------------------------------------------------------------------------- encoding


def original_of(image: PILImage) -> tuple[str, bytes] | None:
    """``(Pillow format, file bytes)`` of an image from `open_original` whose pixels are still the file's;
    None for any other image. Every change to an image's pixels decodes it first (`load` gives it its
    pixel store, Pillow's `_im`), so bytes held by an image that was loaded since are never trusted
    (nor where that attribute is missing: another Pillow, which then costs an encode, never a wrong
    image)."""
    original = getattr(image, ORIGINAL_ATTR, None)
    if original is None or getattr(image, "_im", True) is not None:
        return None
    fmt, data = original
    return (fmt, data) if isinstance(fmt, str) and isinstance(data, bytes) else None


def to_data_url(image: PILImage, *, format: Literal["PNG", "JPEG"] | None = None, quality: int = 90) -> str:
    """A base64 ``data:`` URL for OpenAI-compatible servers. `quality` (1..95) applies to JPEG only.

    `format` None: the file's own bytes for an untouched `open_original` image (no decode, no
    re-encode), PNG for any other; "PNG" takes a PNG file's own bytes too (the same pixels)."""
    if format not in ("PNG", "JPEG", None):
        raise UsageError(f"format must be 'PNG' or 'JPEG', got {format!r}")
    if not 1 <= quality <= 95:
        raise UsageError(f"quality must be in 1..95, got {quality}")
    original = original_of(image)
    if original is not None and (format is None or format == original[0]) and format != "JPEG":
        return f"data:{UPLOAD_TYPES[original[0]]};base64,{base64.b64encode(original[1]).decode('ascii')}"
    buffer = io.BytesIO()
    if format == "JPEG":
        rgb = image if image.mode in ("RGB", "L") else _to_rgb(image, "<image>")
        rgb.save(buffer, format="JPEG", quality=quality)
        return f"data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
    # zlib level 1: 2-7x faster than Pillow's default 6 on photographs (26 against 175 ms for a 512x512
    # one here) for 10-20% more bytes, the trade OpenCV makes by default; a reward group encodes G images
    # on the request path, where encoding costs more than the bytes do on a local network.
    image.save(buffer, format="PNG", compress_level=1)
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def image_digest(image: PILImage) -> str:
    """SHA-256 (hex) of the mode, size and pixels: equal for equal pixels whatever file they came from.

    An untouched `open_original` image is not decoded to be hashed: its digest is that of its file's
    bytes (under a prefix no pixel digest starts with), equal for equal files."""
    original = original_of(image)
    if original is not None:
        return hashlib.sha256(b"file " + original[0].encode() + b"\n" + original[1]).hexdigest()
    digest = hashlib.sha256(f"{image.mode} {image.width}x{image.height}\n".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


_CALL_DIGEST = "_flexjudge_call_digest"
"""The attribute holding an image's digest for the call that loaded it (see `mark_loaded`)."""


def mark_loaded(image: PILImage) -> None:
    """Note that a call has just loaded `image` (the judge's loader does, once per call and candidate):
    `call_digest` then hashes it once for the whole call, not once per request, however many pairs it
    appears in (a group of G images is in G - 1 pairs). Marking afresh on every load forgets a digest
    from an earlier call, so pixels changed in place between calls are hashed again; a copy of the image
    carries no mark."""
    setattr(image, _CALL_DIGEST, None)


def call_digest(image: PILImage) -> str:
    """`image_digest`, computed once per loading call for an image `mark_loaded` marked, else every time."""
    if not hasattr(image, _CALL_DIGEST):
        return image_digest(image)
    digest: str | None = getattr(image, _CALL_DIGEST)
    if digest is None:  # two threads may both hash it: the same digest, set twice
        digest = image_digest(image)
        setattr(image, _CALL_DIGEST, digest)
    return digest


def known_digest(image: PILImage) -> str | None:
    """The digest `call_digest` already computed for this call, without hashing; None when there is none."""
    digest: str | None = getattr(image, _CALL_DIGEST, None)
    return digest


# ---------------------------------------------------------------------------------------------- input
