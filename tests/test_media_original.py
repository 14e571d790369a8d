"""`media.open_original`: an image file a server can read as it is goes as its own bytes (no decode, no
re-encode), only after the media checks, and only where the server would see the pixels `load_image`
gives; anything else is left to `load_image` (None), and an image whose pixels were touched is never
sent as its old file."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from flexjudge.errors import MediaError
from flexjudge.media import Limits, image_digest, load_image, open_original, original_of, to_data_url


def save(path: Path, image: Image.Image, **options: object) -> Path:
    image.save(path, **options)
    return path


def sent(url: str) -> tuple[str, bytes]:
    header, _, payload = url.partition(",")
    return header, base64.b64decode(payload)


def gradient(size: int = 64) -> Image.Image:
    return Image.frombytes(
        "RGB", (size, size), bytes((x * 7 + y * 3) % 256 for y in range(size) for x in range(size * 3))
    )


@pytest.mark.parametrize(
    ("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_a_plain_file_goes_as_its_own_bytes_undecoded_and_shows_the_pixels_load_image_gives(
    tmp_path: Path, fmt: str, mime: str
) -> None:
    path = save(tmp_path / f"a.{fmt.lower()}", gradient(), format=fmt)
    image = open_original(path)
    assert image is not None and original_of(image) is not None
    header, data = sent(to_data_url(image))
    assert header == f"data:{mime};base64" and data == path.read_bytes()
    assert original_of(image) is not None  # sending it decoded nothing
    with Image.open(io.BytesIO(data)) as shown:  # what the server decodes is what load_image gives
        assert shown.convert("RGB").tobytes() == load_image(path).tobytes()
    twin = save(tmp_path / f"b.{fmt.lower()}", Image.open(path), format=fmt) if fmt == "PNG" else None
    if twin is not None and twin.read_bytes() == path.read_bytes():
        other = open_original(twin)
        assert other is not None and image_digest(other) == image_digest(image)  # by the file's bytes


def test_an_image_whose_pixels_changed_is_encoded_afresh_never_sent_as_its_old_file(tmp_path: Path) -> None:
    path = save(tmp_path / "a.png", gradient())
    image = open_original(path)
    assert image is not None
    before = image_digest(image)
    image.putpixel((0, 0), (255, 0, 255))
    assert original_of(image) is None
    header, data = sent(to_data_url(image))
    assert data != path.read_bytes() and header == "data:image/png;base64"
    with Image.open(io.BytesIO(data)) as shown:
        assert shown.convert("RGB").getpixel((0, 0)) == (255, 0, 255)
    assert image_digest(image) != before


def _exif_rotated(path: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    return save(path, gradient(), format="JPEG", exif=exif.tobytes())


def test_what_a_server_would_show_differently_or_that_may_be_broken_is_left_to_load_image(
    tmp_path: Path,
) -> None:
    whole = save(tmp_path / "whole.png", gradient()).read_bytes()
    jpeg = save(tmp_path / "whole.jpg", gradient(), format="JPEG").read_bytes()
    cases = {
        "alpha.png": save(tmp_path / "alpha.png", Image.new("RGBA", (8, 8), (255, 0, 0, 0))),
        "keyed.png": save(tmp_path / "keyed.png", Image.new("RGB", (8, 8)), transparency=(0, 0, 0)),
        "wide.png": save(tmp_path / "wide.png", Image.new("I;16", (8, 8), 40000)),
        "cmyk.jpg": save(tmp_path / "cmyk.jpg", Image.new("CMYK", (8, 8)), format="JPEG"),
        "rotated.jpg": _exif_rotated(tmp_path / "rotated.jpg"),
        "exif.png": save(tmp_path / "exif.png", gradient(), exif=Image.Exif().tobytes()),
        "short.png": tmp_path / "short.png",
        "half.png": tmp_path / "half.png",
        "crc.png": tmp_path / "crc.png",
        "short.jpg": tmp_path / "short.jpg",
        "frames.webp": tmp_path / "frames.webp",
        "a.bmp": save(tmp_path / "a.bmp", gradient(), format="BMP"),
    }
    cases["short.png"].write_bytes(whole[:-12])  # no IEND: Pillow would decode it, the server may not
    cases["half.png"].write_bytes(whole[: len(whole) // 2])
    cases["crc.png"].write_bytes(whole[:60] + bytes([whole[60] ^ 1]) + whole[61:])
    cases["short.jpg"].write_bytes(jpeg[: len(jpeg) // 2])
    gradient().save(cases["frames.webp"], save_all=True, append_images=[Image.new("RGB", (64, 64))])
    for name, path in cases.items():
        assert open_original(path) is None, name
    with pytest.raises(MediaError):  # and load_image says what is wrong with the broken ones
        load_image(cases["half.png"])
    with pytest.raises(MediaError):
        load_image(cases["short.jpg"])
    assert open_original(f"data:image/png;base64,{base64.b64encode(whole).decode()}") is None


def test_the_media_checks_apply_before_anything_is_sent(tmp_path: Path) -> None:
    path = save(tmp_path / "a.png", gradient(64))
    for limits in (Limits(max_pixels=64 * 63), Limits(max_decoded_bytes=64 * 64 * 7), Limits(max_bytes=100)):
        with pytest.raises(MediaError):
            open_original(path, limits)
    assert open_original(path, Limits(image_formats=("JPEG",))) is None  # a format not allowed: not parsed
    with pytest.raises(MediaError):
        open_original(tmp_path / "missing.png")
    with pytest.raises(MediaError):
        open_original(tmp_path)
    assert open_original(path, Limits(max_pixels=64 * 64, max_decoded_bytes=64 * 64 * 8)) is not None
