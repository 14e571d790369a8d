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
    max_decoded_bytes: int = 512_000_000
    """Most bytes of pixel memory one candidate may take while it is decoded and converted to RGB: every
    frame kept, at the depth it decodes to (bands x bits per sample), the decoder's working frames and
    the copies made on the way to RGB. Estimated from the header before any pixel is decoded, and
    charged again when a decoded frame turns out larger than its header said. A compressed file can be
    tiny and still decode to gigabytes; `max_pixels` alone does not see bit depth or frame count. The
    default fits a 40-megapixel RGB photo and eight sampled frames of a 4K video."""
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
        numbers = ("max_pixels", "max_bytes", "max_video_seconds", "max_video_frames", "max_decoded_bytes")
        for name in (*numbers, "url_timeout_s"):
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
    return _load_image(source, limits, _Budget(limits, _describe(source)))


def _load_image(source: ImageSource, limits: Limits, budget: _Budget) -> PILImage:
    """`load_image`, charging `budget` (shared by the frames of one video candidate)."""
    from PIL import Image

    what = _describe(source)
    if isinstance(source, Image.Image):
        _check_pixels(source.size, limits, what)
        budget.charge(_image_cost(source), f"a {source.width}x{source.height} {source.mode} image")
        try:
            source.load()  # a lazily opened image still has its file to read
        except Exception as exc:
            raise MediaError(f"the image could not be decoded: {exc}", source=what) from exc
        return _to_rgb(source, what)
    if _is_array(source):
        return _from_array(source, limits, what, budget)
    with _open_bytes(source, limits, what) as fp:
        return _decode_image(fp, limits, what, budget)


def _decode_image(fp: BinaryIO, limits: Limits, what: str, budget: _Budget) -> PILImage:
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
        # Charged from the header (mode and size; only the first frame is read), before `load`
        # allocates anything: a GIF's canvas is its logical screen however small its frames are.
        declared = _image_cost(im)
        budget.charge(declared, f"a {im.width}x{im.height} {im.mode} image")
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise MediaError(f"refused as a decompression bomb: {exc}", source=what) from exc
        except Exception as exc:
            raise MediaError(f"corrupt or truncated {im.format} image: {exc}", source=what) from exc
        # Some plugins settle the mode only while decoding (a GIF frame can turn P into RGBA).
        budget.charge(max(0, _image_cost(im) - declared), f"a {im.width}x{im.height} {im.mode} image")
        try:
            rotated = im.getexif().get(ExifTags.Base.Orientation, 1) not in (1, None)
            if rotated:
                budget.charge(im.width * im.height * _bytes_per_pixel(im.mode), "the EXIF rotation")
            oriented = ImageOps.exif_transpose(im) if rotated else im
        except MediaError:
            raise
        except Exception:
            # A broken orientation tag is metadata, not pixels: show the image as stored.
            oriented = im
        return _to_rgb(oriented, what)


_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_CHUNK = 1 << 16  # elements per step when narrowing wide pixels: int64 temporaries stay under 1 MB


class _Budget:
    """What is left of `Limits.max_decoded_bytes` for one candidate; every charge is made before the
    memory it stands for is allocated, so a refusal costs nothing."""

    def __init__(self, limits: Limits, what: str) -> None:
        self.limit = limits.max_decoded_bytes
        self.used = 0
        self.what = what

    def charge(self, n_bytes: int, detail: str) -> None:
        if self.used + n_bytes > self.limit:
            raise MediaError(
                f"decoding needs about {self.used + n_bytes:,} bytes of pixel memory ({detail}), over "
                f"Limits.max_decoded_bytes ({self.limit:,}); refused before decoding it",
                source=self.what,
            )
        self.used += n_bytes


def _bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow stores per pixel of `mode`: multi-band modes take 4, one band its sample size."""
    from PIL import ImageMode

    try:
        info = ImageMode.getmode(mode)
    except KeyError:
        return 8  # a mode this table does not know: assume the widest
    return 4 if len(info.bands) > 1 else max(1, int(info.typestr[-1]))


def _has_alpha(im: PILImage) -> bool:
    return im.mode in _ALPHA_MODES or "transparency" in im.info


def _image_cost(im: PILImage) -> int:
    """Pixel bytes that decoding `im` (one frame) and `_to_rgb` hold at their peak."""
    depth = _bytes_per_pixel(im.mode)
    if im.mode in _WIDE_MODES:
        extra = depth + 1 + 1 + 4  # NumPy copy, 8-bit result, its image, RGB
    elif _has_alpha(im):
        extra = 4 * 4  # white canvas, RGBA copy, composite, RGB
    else:
        extra = 4  # the RGB copy
    return im.width * im.height * (depth + extra)


def _narrow(im: PILImage) -> PILImage:
    """16/32-bit greyscale to 8-bit, scaled (Pillow's convert would clip): ``round(v / 257)``."""
    import numpy as np
    from PIL import Image

    wide = np.asarray(im)
    out = np.empty(wide.shape, np.uint8)
    flat_in, flat_out = wide.reshape(-1), out.reshape(-1)
    for start in range(0, flat_in.size, _CHUNK):
        block = flat_in[start : start + _CHUNK].astype(np.int64)
        # (v + 128) // 257 is round(v / 257) exactly: v / 257 is never halfway between integers.
        flat_out[start : start + _CHUNK] = np.clip((block + 128) // 257, 0, 255)
    return Image.fromarray(out)


def _to_rgb(im: PILImage, what: str) -> PILImage:
    from PIL import Image

    try:
        if im.mode in _WIDE_MODES:
            im = _narrow(im)
        has_alpha = _has_alpha(im)
        if has_alpha:
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            out = Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
        else:
            out = im.convert("RGB")  # always a new image, even from RGB
    except Exception as exc:
        raise MediaError(f"cannot convert mode {im.mode} to RGB: {exc}", source=what) from exc
    out.format = "PNG"
    return out


def _from_array(arr: NDArray[Any], limits: Limits, what: str, budget: _Budget) -> PILImage:
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
    pixels_n = int(arr.shape[0]) * int(arr.shape[1])
    channels = 1 if arr.ndim == 2 else int(arr.shape[2])
    # A contiguous uint8 copy, the image over it, then `_to_rgb` (the alpha path when 4 channels).
    cost = pixels_n * (channels + 4 + (16 if channels == 4 else 4))
    if np.issubdtype(arr.dtype, np.floating):
        cost += pixels_n * channels * (arr.dtype.itemsize + 1)  # the isfinite mask and the scaled copy
    budget.charge(cost, f"a {arr.shape[1]}x{arr.shape[0]} array with {channels} channels")
    if arr.dtype == np.uint8:
        pixels = arr
    elif np.issubdtype(arr.dtype, np.floating):
        if not bool(np.isfinite(arr).all()):
            raise MediaError("float array holds NaN or infinity", source=what)
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise MediaError(f"float arrays must lie in 0..1, got {lo:g}..{hi:g}", source=what)
        scaled = np.multiply(arr, 255.0, dtype=arr.dtype)
        pixels = np.rint(scaled, out=scaled).astype(np.uint8)
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
    """A short, printable name for `source` in error messages: never a raw control character, terminal
    escape or lone surrogate (those would corrupt a log or fail to encode), never URL credentials."""
    if isinstance(source, str):
        if source[:5].lower() == "data:":
            return f"<data URL, {len(source):,} chars>"
        if _is_url(source):  # no credentials or signed query strings in error messages and logs
            try:
                parts = urllib.parse.urlsplit(source)
                host = parts.hostname or ""
                host = f"{host}:{parts.port}" if parts.port else host
            except ValueError:  # a malformed port or bracketed host
                return "<malformed URL>"
            source = f"{parts.scheme}://{host}{parts.path}{'?...' if parts.query else ''}"
        return _printable(source)
    if isinstance(source, os.PathLike):
        try:
            return _printable(os.fsdecode(source))
        except Exception:  # __fspath__ is caller code: it may return anything or raise
            return f"<{type(source).__name__}>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source):,} bytes>"
    if isinstance(source, (list, tuple)):
        return f"<{len(source)} frames>"
    if _is_array(source):
        return f"<array {tuple(source.shape)} {source.dtype}>"
    size = getattr(source, "size", None)
    mode = getattr(source, "mode", None)
    if isinstance(size, tuple) and isinstance(mode, str):
        return f"<PIL image {size[0]}x{size[1]} {_printable(mode)}>"
    return f"<{type(source).__name__}>"


def _printable(text: str, limit: int = 200) -> str:
    text = text[: limit * 2]  # a huge name is cut before escaping, which can only lengthen it
    if not text.isprintable():
        # ascii() of one character is its Python escape in quotes: '\x1b', '\udcff'.
        text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fs_path(source: str | os.PathLike[str], what: str) -> Path:
    """`source` as a path the OS can be asked about, or a `MediaError` saying why it cannot be one."""
    try:
        name = os.fspath(source)
    except TypeError as exc:
        raise MediaError(f"not a usable path: {exc}", source=what) from exc
    if not isinstance(name, str):
        raise MediaError("a path object must give a str path, not bytes", source=what)
    if "\x00" in name:
        raise MediaError("the path holds a NUL character, which no file name can hold", source=what)
    try:
        os.fsencode(name)
    except UnicodeError as exc:  # a lone surrogate that surrogateescape cannot map back to a byte
        raise MediaError(
            f"the path holds characters the file system encoding ({sys.getfilesystemencoding()}) cannot "
            "represent (a lone surrogate?)",
            source=what,
        ) from exc
    return Path(name)


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
        path = _fs_path(source, what)
        try:
            info = path.stat()
        except FileNotFoundError:
            raise MediaError("no such file", source=what) from None
        except OSError as exc:  # too long, permission denied on a parent, a loop of links
            raise MediaError(
                f"cannot access the file: {exc.strerror or type(exc).__name__}", source=what
            ) from exc
        except ValueError as exc:  # anything else the OS layer refuses to encode
            raise MediaError(f"not a usable path: {type(exc).__name__}", source=what) from exc
        if stat.S_ISDIR(info.st_mode):
            raise MediaError("is a directory, not a file", source=what)
        if not stat.S_ISREG(info.st_mode):
            raise MediaError("not a regular file (a device, pipe or socket)", source=what)
        _check_size(info.st_size, limits, what)
        try:
            return path.open("rb")
        except OSError as exc:
            raise MediaError(
                f"cannot open the file: {exc.strerror or type(exc).__name__}", source=what
            ) from exc
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
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "flexjudge"})  # parses the URL
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


# ------------------------------------------------------------------------------------- original bytes

UPLOAD_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
"""Image formats every OpenAI-compatible vision server reads, by Pillow format name: the MIME type of
their data URLs."""

ORIGINAL_ATTR = "_flexjudge_original"
"""The attribute of an `open_original` image holding ``(Pillow format, file bytes)``."""


def open_original(source: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> PILImage | None:
    """An image file whose own bytes can go to a server as they are, opened but not decoded; None when
    the file needs `load_image` (which decodes it, with every check, and reports what is wrong with it).

    Re-encoding an image the server will decode anyway costs milliseconds per image and a decode of
    our own; sending the file is what a plain `openai` script does. The file passes the same checks
    before any pixel is read: size (`Limits.max_bytes`), an allowed format, pixels
    (`Limits.max_pixels`) and the decoded-bytes budget (`Limits.max_decoded_bytes`), from the header;
    a failure of those raises `MediaError`. It is sent as is only where that shows the server the
    pixels `load_image` would give: a format in `UPLOAD_TYPES`, RGB or greyscale with no transparency
    (`load_image` puts transparent pixels on white), one frame, no EXIF orientation (which
    `load_image` applies and servers may not), and whole (a PNG's chunks and their CRCs to IEND, a
    JPEG's end marker, a WebP's RIFF length), so a truncated file still fails here as media, through
    `load_image`. Anything else is None.

    The bytes stand for the pixels only while none are decoded: changing an image's pixels loads it
    first, so `flexjudge.media.original_of` trusts them only while the image holds no pixels.
    """
    from PIL import ExifTags, Image

    what = _describe(source)
    if isinstance(source, str) and (source[:5].lower() == "data:" or "://" in source[:16]):
        return None
    with _open_bytes(source, limits, what) as fp:  # a regular file within Limits.max_bytes
        data = fp.read(limits.max_bytes + 1)
    _check_size(len(data), limits, what)  # it may have grown since it was looked at
    Image.init()
    formats = [f for f in limits.image_formats if f.upper() in UPLOAD_TYPES and f.upper() in Image.OPEN]
    try:
        im = Image.open(io.BytesIO(data), formats=formats)  # the header only
    except Exception:
        return None
    if im.format not in UPLOAD_TYPES or im.mode not in ("RGB", "L") or "transparency" in im.info:
        return None
    if getattr(im, "n_frames", 1) != 1:
        return None
    _check_pixels(im.size, limits, what)
    _Budget(limits, what).charge(_image_cost(im), f"a {im.width}x{im.height} {im.mode} image")
    if not _whole(im.format, data):
        return None
    # PNG keeps EXIF in an eXIf chunk that may follow the pixels: a file naming one is decoded (a false
    # match inside compressed data only costs that decode).
    if im.format == "PNG":
        if b"eXIf" in data:
            return None
    else:
        try:
            orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
        except Exception:
            return None
        if orientation not in (1, None):
            return None
    setattr(im, ORIGINAL_ATTR, (im.format, data))
    return im


def _whole(fmt: str, data: bytes) -> bool:
    """Whether an encoded file is complete, judged from its structure without decoding its pixels."""
    from PIL import Image

    if fmt == "PNG":
        try:
            with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
                im.verify()  # every chunk's CRC, through IEND
        except Exception:
            return False
        return True
    if fmt == "JPEG":
        return data.endswith(b"\xff\xd9")
    if fmt == "WEBP":
        return int.from_bytes(data[4:8], "little") + 8 == len(data)
    return False
