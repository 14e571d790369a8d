"""flexjudge.media against real files written here: encoded videos, crafted bombs, broken images."""

from __future__ import annotations

import base64
import http.server
import io
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flexjudge.errors import FlexjudgeError, MediaError
from flexjudge.media import (
    Limits,
    guess_modality,
    image_digest,
    load_candidate,
    load_image,
    load_video,
    sample_frame_indices,
    to_data_url,
)

av = pytest.importorskip("av", reason="PyAV is needed to write and read test videos")

STEP = 12  # grey level step between consecutive frames: wide enough to survive lossy codecs
TOLERANCE = 5


def _can_encode(codec: str) -> bool:
    try:
        av.Codec(codec, "w")
    except Exception:
        return False
    return True


def write_video(path: Path, codec: str, n: int, *, size: tuple[int, int] = (64, 48), rate: int = 10) -> Path:
    """Frame i is flat grey at level i * STEP."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "mpeg4":
            stream.bit_rate = 4_000_000
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(
                np.full((height, width, 3), i * STEP, np.uint8), format="rgb24"
            )
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_gif(path: Path, n: int) -> Path:
    frames = [Image.new("L", (32, 24), i * STEP) for i in range(n)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def levels(images: list[Image.Image]) -> list[int]:
    """Which frame each image shows, read back from its grey level."""
    return [round(float(np.asarray(im).mean()) / STEP) for im in images]


def assert_clean(images: list[Image.Image]) -> None:
    for im in images:
        assert im.mode == "RGB"
        assert im.format == "PNG"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int, *, rows: int | None = None) -> bytes:
    """A 1-bit greyscale PNG claiming width x height; `rows` all-zero rows of data (all when None)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    block = packer.compress(row * 1000)
    body = [block] * ((height if rows is None else rows) // 1000) + [packer.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------ sampling


def test_indices_match_numpy_round_linspace() -> None:
    for n in range(1, 120):
        for k in range(1, 24):
            expected = np.round(np.linspace(0, n - 1, k)).astype(int).tolist()
            assert sample_frame_indices(n, k) == expected, (n, k)


def test_indices_repeat_frames_when_the_video_is_short() -> None:
    assert sample_frame_indices(20) == [0, 3, 5, 8, 11, 14, 16, 19]
    assert sample_frame_indices(5) == [0, 1, 1, 2, 2, 3, 3, 4]
    assert sample_frame_indices(1) == [0] * 8
    with pytest.raises(MediaError, match="no frames"):
        sample_frame_indices(0)
    with pytest.raises(ValueError):
        sample_frame_indices(10, 0)


# ------------------------------------------------------------------------------------ encoded videos

VIDEO_CASES = [
    ("mp4", "libx264"),
    ("mp4", "mpeg4"),
    ("mkv", "libx264"),
    ("webm", "libvpx"),
    ("webm", "libvpx-vp9"),
]


@pytest.mark.parametrize(
    ("ext", "codec"),
    [
        pytest.param(
            e, c, marks=pytest.mark.skipif(not _can_encode(c), reason=f"no {c} encoder in this PyAV")
        )
        for e, c in VIDEO_CASES
    ],
)
def test_encoded_video_yields_the_uniformly_sampled_frames(tmp_path: Path, ext: str, codec: str) -> None:
    path = write_video(tmp_path / f"clip.{ext}", codec, 20)
    frames = load_video(path)
    assert len(frames) == 8
    assert levels(frames) == [0, 3, 5, 8, 11, 14, 16, 19]
    means = [float(np.asarray(im).mean()) for im in frames]
    assert all(abs(m - STEP * i) <= TOLERANCE for m, i in zip(means, levels(frames), strict=True))
    assert_clean(frames)
    assert frames[0].size == (64, 48)
    assert guess_modality(path) == "video"


def test_video_shorter_than_the_sample_repeats_frames(tmp_path: Path) -> None:
    frames = load_video(write_video(tmp_path / "short.mp4", "libx264", 5))
    assert levels(frames) == [0, 1, 1, 2, 2, 3, 3, 4]
    assert len({id(f) for f in frames}) == 5  # each distinct frame converted once


def test_frame_count_and_bytes_input(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.webm", "libvpx-vp9", 20)  # webm declares no frame count
    assert levels(load_video(path, frames=4)) == [0, 6, 13, 19]
    assert levels(load_video(path.read_bytes(), frames=1)) == [0]
    assert len(load_video(str(path), frames=30)) == 30


def test_animated_gif_is_a_video(tmp_path: Path) -> None:
    path = write_gif(tmp_path / "anim.gif", 20)
    assert guess_modality(path) == "video"
    frames = load_video(path)
    assert levels(frames) == [0, 3, 5, 8, 11, 14, 16, 19]
    assert_clean(frames)
    still = tmp_path / "still.gif"
    Image.new("L", (8, 8), 7).save(still)
    assert guess_modality(still) == "image"
    assert guess_modality(still.read_bytes()) == "image"


def test_display_rotation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "portrait.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(90)
        pixels = np.full((32, 64, 3), 255, np.uint8)
        pixels[:, :32] = 0  # left half dark
        for _ in range(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    frame = np.asarray(load_video(path, frames=1)[0])
    assert frame.shape == (64, 32, 3)  # turned a quarter counter-clockwise: the left half is at the bottom
    assert frame[:24].mean() > 200 and frame[40:].mean() < 50


def test_decoder_count_wins_over_the_container_count(tmp_path: Path) -> None:
    # Timestamps starting at -4 make the muxer write an edit list that hides the first 4 frames:
    # the container lists 20 frames, the decoder shows 16, and those 16 are what gets sampled.
    path = tmp_path / "edited.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = Fraction(1, 10)
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * STEP, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i - 4, Fraction(1, 10)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 20
    shown = [4 + i for i in sample_frame_indices(16)]
    assert levels(load_video(path)) == shown == [4, 6, 8, 10, 13, 15, 17, 19]


def test_truncated_video_with_its_index_up_front(tmp_path: Path) -> None:
    path = tmp_path / "fast.mp4"
    noise = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(20):
            pixels = noise.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    assert len(load_video(path)) == 8
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(MediaError, match="truncated"):
        load_video(cut)


def test_video_limits(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4", "libx264", 20, rate=10)  # 2 s
    with pytest.raises(MediaError, match="max_video_frames"):
        load_video(path, limits=Limits(max_video_frames=10))
    with pytest.raises(MediaError, match="max_video_seconds"):
        load_video(path, limits=Limits(max_video_seconds=1))
    with pytest.raises(MediaError, match="max_pixels"):
        load_video(path, limits=Limits(max_pixels=1000))
    with pytest.raises(MediaError, match="max_bytes"):
        load_video(path, limits=Limits(max_bytes=100))
    webm = write_video(tmp_path / "clip.webm", "libvpx", 20)  # no declared count: counted by demuxing
    with pytest.raises(MediaError, match="max_video_frames"):
        load_video(webm, limits=Limits(max_video_frames=10))


def test_broken_and_foreign_files_are_media_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    noise = tmp_path / "noise.webm"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    good = write_video(tmp_path / "clip.mp4", "libx264", 20).read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good[: len(good) // 2])  # the index (moov) is at the end: it is gone
    image = tmp_path / "picture.png"
    Image.new("RGB", (8, 8)).save(image)
    for bad in (text, noise, truncated, image):
        with pytest.raises(MediaError) as info:
            load_video(bad)
        assert str(bad) in str(info.value)
    with pytest.raises(MediaError, match="no such file"):
        load_video(tmp_path / "missing.mp4")
    with pytest.raises(MediaError, match="directory"):
        load_video(tmp_path)
    with pytest.raises(MediaError, match="empty file"):
        load_video(b"")


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "sound.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        samples = np.zeros((1, 1024), np.float32)
        for _ in range(4):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 8000
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(MediaError, match="no video stream"):
        load_video(path)


def test_playlists_cannot_pull_in_other_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # FFmpeg's concat and HLS demuxers open the files a playlist names; a candidate must not.
    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "private.mp4", "libx264", 5)
    concat = tmp_path / "innocent.mp4"
    concat.write_text("ffconcat version 1.0\nfile private.mp4\n")
    hls = tmp_path / "list.m3u8"
    hls.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\nprivate.mp4\n#EXT-X-ENDLIST\n")
    for playlist in (concat, hls):
        with pytest.raises(MediaError, match="allowed container"):
            load_video(playlist)


# ---------------------------------------------------------------------------------------- frame lists


def test_frame_lists_sample_the_same_way(tmp_path: Path) -> None:
    arrays = [np.full((6, 8, 3), i * STEP, np.uint8) for i in range(20)]
    assert levels(load_video(arrays)) == [0, 3, 5, 8, 11, 14, 16, 19]
    images = tuple(Image.fromarray(a) for a in arrays)
    assert levels(load_video(images, frames=3)) == [0, 10, 19]
    paths = []
    for i in (0, 1, 2):
        paths.append(tmp_path / f"f{i}.png")
        Image.fromarray(arrays[i]).save(paths[-1])
    mixed = [paths[0], str(paths[1]), arrays[2], images[3]]
    picked = load_video(mixed)
    assert levels(picked) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert_clean(picked)
    stack = np.stack(arrays)
    assert levels(load_video(stack)) == [0, 3, 5, 8, 11, 14, 16, 19]
    assert guess_modality(mixed) == "video" and guess_modality(stack) == "video"
    with pytest.raises(MediaError, match="no frames"):
        load_video([])
    with pytest.raises(MediaError, match="max_video_frames"):
        load_video(arrays, limits=Limits(max_video_frames=5))
    with pytest.raises(MediaError, match="not a video"):
        load_video(images[0])


def test_only_the_sampled_frames_are_loaded(tmp_path: Path) -> None:
    # Unsampled entries are never opened: a missing path there does not matter.
    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4), (STEP, STEP, STEP)).save(good)
    items = [good, tmp_path / "missing.png", good]
    assert len(load_video(items, frames=2)) == 2
    with pytest.raises(MediaError, match="no such file"):
        load_video(items, frames=3)


# --------------------------------------------------------------------------------------------- images


def test_decompression_bomb_refused_before_decoding(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(30000, 30000))  # 900 million pixels in about 100 kB
    assert bomb.stat().st_size < 500_000
    with pytest.raises(MediaError, match="decompression bomb"):
        load_image(bomb)
    # Below Pillow's own threshold our limit decides, from the header: the pixel data is cut short,
    # so decoding would have failed differently.
    small_bomb = png_header_only(5000, 5000, rows=1000)
    with pytest.raises(MediaError, match="max_pixels") as info:
        load_image(small_bomb, limits=Limits(max_pixels=1_000_000))
    assert "decompression bomb" in str(info.value)
    with pytest.raises(MediaError, match="max_pixels"):
        load_image(np.zeros((2000, 1000, 3), np.uint8), limits=Limits(max_pixels=1_000_000))
    with pytest.raises(MediaError, match="max_pixels"):
        load_image(Image.new("RGB", (2000, 1000)), limits=Limits(max_pixels=1_000_000))


def test_truncated_corrupt_and_foreign_images(tmp_path: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png = png_bytes(Image.fromarray(noise))
    jpeg_buffer = io.BytesIO()
    Image.fromarray(noise).save(jpeg_buffer, format="JPEG")
    jpeg = jpeg_buffer.getvalue()
    cases = {
        "half.png": png[: len(png) // 2],
        "half.jpg": jpeg[: len(jpeg) // 2],
        "header.png": png[:30],
        "random.png": np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "text.png": b"hello, I am text\n" * 20,
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(MediaError) as info:
            load_image(path)
        assert info.value.source == str(path)
        assert isinstance(info.value, FlexjudgeError)
        with pytest.raises(MediaError):
            load_image(data)
    with pytest.raises(MediaError, match="truncated"):
        load_image(png[: len(png) // 2])
    with pytest.raises(MediaError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(MediaError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(MediaError, match="max_bytes"):
        load_image(png, limits=Limits(max_bytes=100))


def test_formats_outside_the_allow_list_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "picture.pcx"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)  # Pillow reads PCX, but it is not allowed by default
    with pytest.raises(MediaError, match="allowed format"):
        load_image(path)
    assert load_image(path, limits=Limits(image_formats=("PCX",))).getpixel((0, 0)) == (1, 2, 3)


def test_arrays_become_rgb() -> None:
    ramp = np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
    grey = load_image(ramp)
    assert grey.size == (4, 3)
    assert np.asarray(grey)[:, :, 0].tolist() == np.rint(ramp * 255).astype(np.uint8).tolist()
    rgb = np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(load_image(rgb)), rgb)
    assert np.array_equal(np.asarray(load_image(rgb.astype(np.float64) / 255.0)), rgb)
    assert load_image(np.zeros((5, 7, 1), np.uint8)).size == (7, 5)
    assert_clean([load_image(ramp), load_image(rgb)])
    with pytest.raises(MediaError, match=r"0\.\.1"):
        load_image(ramp * 2)
    with pytest.raises(MediaError, match="NaN"):
        load_image(np.full((2, 2), np.nan))
    with pytest.raises(MediaError, match="channels first"):
        load_image(np.zeros((3, 5, 7), np.uint8))
    with pytest.raises(MediaError, match="dtype"):
        load_image(np.zeros((5, 7), np.int64))


def test_transparency_is_composited_on_white() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque
    rgba[0, 1] = (10, 20, 30, 0)  # fully transparent
    rgba[1, 0] = (0, 0, 0, 128)  # half black over white
    out = np.asarray(load_image(rgba))
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert abs(int(out[1, 0, 0]) - 127) <= 1
    from_png = load_image(png_bytes(Image.fromarray(rgba)))
    assert np.array_equal(np.asarray(from_png), out)
    assert from_png.mode == "RGB" and from_png.format == "PNG"
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert np.asarray(load_image(png_bytes(palette))).tolist() == [[[255, 255, 255], [0, 255, 0]]]


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    wide = np.array([[0, 32768, 65535]], dtype=np.uint16)
    out = np.asarray(load_image(png_bytes(Image.fromarray(wide))))
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((2, 4, 3), np.uint8)
    pixels[:, :2] = 255  # left half white
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # stored turned: the viewer rotates it a quarter clockwise
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    out = np.asarray(load_image(buffer.getvalue()))
    assert out.shape == (4, 2, 3)
    assert out[:2].mean() == 255 and out[2:].mean() == 0


def test_every_result_is_a_new_png_tagged_rgb_image(tmp_path: Path) -> None:
    jpeg = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8), (200, 100, 50)).save(jpeg, quality=95)
    mine = Image.new("RGBA", (3, 3), (1, 2, 3, 255))
    sources: list[object] = [jpeg, str(jpeg), jpeg.read_bytes(), mine, Image.open(jpeg)]
    for source in sources:
        out = load_image(source)  # type: ignore[arg-type]
        assert out.mode == "RGB" and out.format == "PNG"
        assert out is not source
    assert mine.mode == "RGBA" and mine.format is None  # the caller's image is untouched


def test_urls_are_refused_unless_allowed() -> None:
    with pytest.raises(MediaError, match=r"allow_urls=True"):
        load_image("https://example.invalid/cat.png")
    with pytest.raises(MediaError, match=r"allow_urls=True"):
        load_video("http://example.invalid/clip.mp4")
    with pytest.raises(MediaError, match="only http"):
        load_image("file:///etc/hostname", limits=Limits(allow_urls=True))
    with pytest.raises(MediaError) as info:
        load_image("https://user:hunter2@example.invalid/a.png?signature=SECRET")
    assert info.value.source == "https://example.invalid/a.png?..."
    assert "hunter2" not in str(info.value) and "SECRET" not in str(info.value)


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    files = {"/cat.png": png_bytes(Image.new("RGB", (5, 4), (9, 8, 7))), "/big.png": b"\x00" * 50_000}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/to-file":
                self.send_response(302)
                self.send_header("Location", "file:///etc/hostname")
                self.end_headers()
                return
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_urls_fetched_when_allowed(http_server: str) -> None:
    allowed = Limits(allow_urls=True, url_timeout_s=5)
    image = load_image(f"{http_server}/cat.png", limits=allowed)
    assert image.size == (5, 4) and image.getpixel((0, 0)) == (9, 8, 7)
    assert guess_modality(f"{http_server}/cat.png") == "image"
    with pytest.raises(MediaError, match="404"):
        load_image(f"{http_server}/nope.png", limits=allowed)
    with pytest.raises(MediaError, match="max_bytes"):
        load_image(f"{http_server}/big.png", limits=Limits(allow_urls=True, max_bytes=10_000))
    with pytest.raises(MediaError, match=r"cannot fetch|HTTP"):
        load_image(f"{http_server}/to-file", limits=allowed)


# ------------------------------------------------------------------------------------------ candidates


def test_load_candidate_and_guess_modality(tmp_path: Path) -> None:
    picture = tmp_path / "a.png"
    Image.new("RGB", (6, 6), (1, 1, 1)).save(picture)
    clip = write_video(tmp_path / "b.mp4", "libx264", 20)
    assert [im.size for im in load_candidate(picture)] == [(6, 6)]
    assert levels(load_candidate(clip, frames=2)) == [0, 19]
    assert len(load_candidate(clip, modality="video")) == 8
    assert guess_modality(np.zeros((4, 4, 3), np.uint8)) == "image"
    assert guess_modality(Image.new("RGB", (1, 1))) == "image"
    renamed = tmp_path / "clip.bin"
    renamed.write_bytes(clip.read_bytes())
    assert guess_modality(renamed) == "video"
    assert guess_modality(picture.read_bytes()) == "image"
    assert guess_modality(to_data_url(Image.new("RGB", (1, 1)))) == "image"
    unknown = tmp_path / "mystery.bin"
    unknown.write_bytes(b"\x01\x02\x03" * 10)
    with pytest.raises(MediaError, match="cannot tell"):
        guess_modality(unknown)
    with pytest.raises(MediaError, match="frame list is a video"):
        load_candidate([picture, picture], modality="image")


# ------------------------------------------------------------------------------------------- encoding


def test_png_data_url_round_trip() -> None:
    pixels = np.random.default_rng(4).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    image = load_image(pixels)
    url = to_data_url(image)
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.format == "PNG"
    assert np.array_equal(np.asarray(decoded.convert("RGB")), pixels)
    assert np.array_equal(np.asarray(load_image(url)), pixels)
    jpeg = to_data_url(image, format="JPEG", quality=80)
    assert jpeg.startswith("data:image/jpeg;base64,")
    assert load_image(jpeg).size == (11, 9)
    with pytest.raises(ValueError):
        to_data_url(image, format="JPEG", quality=0)


def test_digest_depends_on_pixels_only(tmp_path: Path) -> None:
    pixels = np.random.default_rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path = tmp_path / "p.png"
    Image.fromarray(pixels).save(path)
    from_file, from_array = load_image(path), load_image(pixels)
    assert image_digest(from_file) == image_digest(from_array)
    assert len(image_digest(from_file)) == 64
    changed = pixels.copy()
    changed[0, 0, 0] ^= 1
    assert image_digest(load_image(changed)) != image_digest(from_array)
    assert image_digest(load_image(pixels.reshape(4, 16, 3))) != image_digest(from_array)


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        Limits(max_pixels=0)


def test_import_is_cheap() -> None:
    # What flexjudge.media adds to the imports of the package itself: none of the heavy libraries.
    code = (
        "import sys, flexjudge; before = set(sys.modules); import flexjudge.media; "
        "added = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(added & {'PIL', 'numpy', 'av', 'torch'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
