"""Where candidate media comes from and how images are decoded, safely: `Limits`, reading bytes from a
path, data URL, URL or buffer, and image decoding within the limits. `flexjudge.media` is the public door
(it re-exports what callers need); `_video.py` decodes videos on top of this module.
"""

from __future__ import annotations

import base64
import http.client
import io
import os
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, TypeAlias, TypeGuard

from flexjudge.errors import MediaError, UsageError

if TYPE_CHECKING:
    from numpy.typing import NDArray
    from PIL.Image import Image as PILImage

ImageSource: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | PILImage | NDArray[Any]"
"""A path, an http(s) or data URL, encoded bytes, a PIL image, or an HxW / HxWx3 / HxWx4 array."""

VideoSource: TypeAlias = (
    "str | os.PathLike[str] | bytes | bytearray | memoryview | Sequence[ImageSource] | NDArray[Any]"
)
"""A path, URL or bytes of an encoded video, a list/tuple of frames, or a TxHxW(xC) array."""

Modality: TypeAlias = Literal["image", "video"]

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF", "QOI")
"""Pillow plugins allowed by default: common, maintained formats with no external helpers."""

VIDEO_CONTAINERS = ("mov", "mp4", "matroska", "webm", "gif", "apng", "avi", "mpeg", "mpegts", "flv", "ogg")
"""FFmpeg demuxers allowed by default. Playlist demuxers (hls, dash, concat) are left out: they open
files and URLs named inside the file, which the caller never gave."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what `load_image` / `load_video` accept; every check raises `MediaError`."""

    max_pixels: int = 40_000_000
    """Largest width x height of one image or frame, checked from the header before decoding."""
    max_bytes: int = 200_000_000
    """Largest file, byte string or download."""
    max_video_seconds: float = 600.0
    """Longest video, from the container's duration and again from frame timestamps while decoding."""
    max_video_frames: int = 100_000
    """Most frames decoded from one video (every frame is decoded once; only the sampled ones converted)."""
    allow_urls: bool = False
    """Fetch http(s) URLs. Off by default: a URL lets whoever supplies candidates make this machine
    send requests (to internal addresses too)."""
    url_timeout_s: float = 30.0
    """Deadline for one whole download, connection included."""
    image_formats: tuple[str, ...] = IMAGE_FORMATS
    """Pillow format names that may be parsed."""
    video_containers: tuple[str, ...] = VIDEO_CONTAINERS
    """FFmpeg demuxer names that may be parsed."""

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_bytes", "max_video_seconds", "max_video_frames", "url_timeout_s"):
            if not getattr(self, name) > 0:
                raise UsageError(f"Limits.{name} must be positive, got {getattr(self, name)!r}")


DEFAULT_LIMITS = Limits()


# --------------------------------------------------------------------------------------------- images


def load_image(source: ImageSource, *, limits: Limits = DEFAULT_LIMITS) -> PILImage:
    """Decode one image to RGB, within `limits`.

    Transparent pixels are composited onto white (dropping alpha would expose whatever colour the
    encoder left under them); EXIF orientation is applied; 16-bit greyscale is scaled, not clipped;
    of an animated file only the first frame is read. Float arrays must lie in 0..1.
    """
    from PIL import Image

    what = _describe(source)
    if isinstance(source, Image.Image):
        _check_pixels(source.size, limits, what)
        try:
            source.load()  # a lazily opened image still has its file to read
        except Exception as exc:
            raise MediaError(f"the image could not be decoded: {exc}", source=what) from exc
        return _to_rgb(source, what)
    if _is_array(source):
        return _from_array(source, limits, what)
    with _open_bytes(source, limits, what) as fp:
        return _decode_image(fp, limits, what)


def _decode_image(fp: BinaryIO, limits: Limits, what: str) -> PILImage:
    from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

    Image.init()
    formats = [f for f in limits.image_formats if f.upper() in Image.OPEN]
    try:
        im = Image.open(fp, formats=formats)  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaError(f"refused as a decompression bomb: {exc}", source=what) from exc
    except UnidentifiedImageError as exc:
        raise MediaError(
            f"not an image in an allowed format ({', '.join(formats)}), or its header is corrupt",
            source=what,
        ) from exc
    except Exception as exc:
        raise MediaError(f"unreadable image header: {exc}", source=what) from exc
    with im:
        _check_pixels(im.size, limits, what)
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise MediaError(f"refused as a decompression bomb: {exc}", source=what) from exc
        except Exception as exc:
            raise MediaError(f"corrupt or truncated {im.format} image: {exc}", source=what) from exc
        try:
            rotated = im.getexif().get(ExifTags.Base.Orientation, 1) not in (1, None)
            oriented = ImageOps.exif_transpose(im) if rotated else im
        except Exception:
            # A broken orientation tag is metadata, not pixels: show the image as stored.
            oriented = im
        return _to_rgb(oriented, what)


def _to_rgb(im: PILImage, what: str) -> PILImage:
    from PIL import Image

    try:
        if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            import numpy as np

            wide = np.asarray(im).astype(np.float64) / 257.0  # 16-bit range to 8-bit, Pillow would clip
            im = Image.fromarray(np.clip(np.rint(wide), 0, 255).astype(np.uint8))
        has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
        if has_alpha:
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            out = Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
        else:
            out = im.convert("RGB")  # always a new image, even from RGB
    except Exception as exc:
        raise MediaError(f"cannot convert mode {im.mode} to RGB: {exc}", source=what) from exc
    out.format = "PNG"
    return out


def _from_array(arr: NDArray[Any], limits: Limits, what: str) -> PILImage:
    import numpy as np
    from PIL import Image

    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] not in (3, 4):
        hint = " (channels first? transpose to HxWxC)" if arr.shape[0] in (1, 3, 4) else ""
        raise MediaError(f"expected HxW, HxWx3 or HxWx4, got shape {arr.shape}{hint}", source=what)
    if arr.ndim not in (2, 3):
        raise MediaError(f"expected HxW, HxWx3 or HxWx4, got shape {arr.shape}", source=what)
    _check_pixels((arr.shape[1], arr.shape[0]), limits, what)
    if arr.dtype == np.uint8:
        pixels = arr
    elif np.issubdtype(arr.dtype, np.floating):
        if not bool(np.isfinite(arr).all()):
            raise MediaError("float array holds NaN or infinity", source=what)
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise MediaError(f"float arrays must lie in 0..1, got {lo:g}..{hi:g}", source=what)
        pixels = np.rint(arr * 255.0).astype(np.uint8)
    else:
        raise MediaError(f"array dtype {arr.dtype} not supported: use uint8 or float in 0..1", source=what)
    return _to_rgb(Image.fromarray(np.ascontiguousarray(pixels)), what)


def _check_pixels(size: tuple[int, int], limits: Limits, what: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise MediaError(f"empty image ({width}x{height})", source=what)
    if width * height > limits.max_pixels:
        raise MediaError(
            f"{width}x{height} = {width * height:,} pixels is over Limits.max_pixels "
            f"({limits.max_pixels:,}); refused before decoding (possible decompression bomb)",
            source=what,
        )


# ------------------------------------------------------------------------------------------ candidates


def _is_array(source: object) -> TypeGuard[NDArray[Any]]:
    numpy = sys.modules.get("numpy")  # whoever holds an ndarray has imported numpy already
    return numpy is not None and isinstance(source, numpy.ndarray)


def _is_url(text: str) -> bool:
    return text[:8].lower().startswith(("http://", "https://"))


def _describe(source: object) -> str:
    if isinstance(source, str):
        if source[:5].lower() == "data:":
            return f"<data URL, {len(source):,} chars>"
        if _is_url(source):  # no credentials or signed query strings in error messages and logs
            parts = urllib.parse.urlsplit(source)
            host = parts.hostname or ""
            host = f"{host}:{parts.port}" if parts.port else host
            source = f"{parts.scheme}://{host}{parts.path}{'?...' if parts.query else ''}"
        return source if len(source) <= 200 else source[:197] + "..."
    if isinstance(source, os.PathLike):
        return os.fsdecode(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source):,} bytes>"
    if isinstance(source, (list, tuple)):
        return f"<{len(source)} frames>"
    if _is_array(source):
        return f"<array {tuple(source.shape)} {source.dtype}>"
    size = getattr(source, "size", None)
    mode = getattr(source, "mode", None)
    if isinstance(size, tuple) and isinstance(mode, str):
        return f"<PIL image {size[0]}x{size[1]} {mode}>"
    return f"<{type(source).__name__}>"


def _open_bytes(source: object, limits: Limits, what: str) -> BinaryIO:
    """A readable, seekable binary stream over an encoded file, after the size and URL checks."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        _check_size(len(source), limits, what)
        return io.BytesIO(bytes(source))
    if isinstance(source, str) and source[:5].lower() == "data:":
        return io.BytesIO(_decode_data_url(source, limits, what))
    if isinstance(source, str) and "://" in source[:16]:
        if not _is_url(source):
            raise MediaError("only http(s) URLs can be fetched; pass local files as paths", source=what)
        if not limits.allow_urls:
            raise MediaError(
                "URLs are not fetched unless allowed: pass limits=Limits(allow_urls=True), or download "
                "the file and pass its path",
                source=what,
            )
        return io.BytesIO(_fetch(source, limits, what))
    if isinstance(source, (str, os.PathLike)):
        path = Path(os.fspath(source))
        try:
            info = path.stat()
        except FileNotFoundError:
            raise MediaError("no such file", source=what) from None
        except OSError as exc:
            raise MediaError(f"cannot access the file: {exc.strerror or exc}", source=what) from exc
        if stat.S_ISDIR(info.st_mode):
            raise MediaError("is a directory, not a file", source=what)
        if not stat.S_ISREG(info.st_mode):
            raise MediaError("not a regular file (a device, pipe or socket)", source=what)
        _check_size(info.st_size, limits, what)
        try:
            return path.open("rb")
        except OSError as exc:
            raise MediaError(f"cannot open the file: {exc.strerror or exc}", source=what) from exc
    raise MediaError(f"unsupported source type {type(source).__name__}", source=what)


def _check_size(n_bytes: int, limits: Limits, what: str) -> None:
    if n_bytes > limits.max_bytes:
        raise MediaError(f"{n_bytes:,} bytes is over Limits.max_bytes ({limits.max_bytes:,})", source=what)
    if n_bytes == 0:
        raise MediaError("empty file", source=what)


def _decode_data_url(url: str, limits: Limits, what: str) -> bytes:
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise MediaError("malformed data URL (no comma)", source=what)
    _check_size(len(payload) * 3 // 4, limits, what)
    try:
        if header.lower().endswith(";base64"):
            return base64.b64decode(payload, validate=True)
        return urllib.parse.unquote_to_bytes(payload)
    except ValueError as exc:
        raise MediaError(f"malformed data URL: {exc}", source=what) from exc


def _fetch(url: str, limits: Limits, what: str) -> bytes:
    # Only http(s) handlers: a redirect to file:// or ftp:// fails instead of reading local files.
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    deadline = time.monotonic() + limits.url_timeout_s
    request = urllib.request.Request(url, headers={"User-Agent": "flexjudge"})
    try:
        with opener.open(request, timeout=limits.url_timeout_s) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit():
                _check_size(int(declared), limits, what)
            chunks: list[bytes] = []
            received = 0
            while chunk := response.read(1 << 16):
                received += len(chunk)
                _check_size(received, limits, what)
                if time.monotonic() > deadline:
                    raise MediaError(
                        f"download took over Limits.url_timeout_s ({limits.url_timeout_s:g} s)", source=what
                    )
                chunks.append(chunk)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response
        raise MediaError(f"HTTP {exc.code} {exc.reason}", source=what) from exc
    except urllib.error.URLError as exc:
        raise MediaError(f"cannot fetch: {exc.reason}", source=what) from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:  # timeouts, resets, bad responses
        raise MediaError(f"cannot fetch: {exc}", source=what) from exc
    data = b"".join(chunks)
    _check_size(len(data), limits, what)
    return data
