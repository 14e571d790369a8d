"""flexjudge.media against hostile input built here: files that decode to far more than they weigh, and
paths no file system can hold. Every refusal is a MediaError with a printable source and a reason."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flexjudge.errors import MediaError
from flexjudge.media import Limits, guess_modality, load_candidate, load_image, load_video

MB = 1_000_000


def png16(side: int, *, ramp: bool = False) -> bytes:
    """A 16-bit greyscale PNG, decoded at 2 bytes a pixel: black compresses to almost nothing (6000
    squared: about 70 KB, the size of the file that decoded to 947 MB), a ramp holds every level."""
    if ramp:
        pixels = (np.arange(side * side, dtype=np.uint32) % 65536).astype(np.uint16).reshape(side, side)
    else:
        pixels = np.zeros((side, side), np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def png8(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side), 90).save(buffer, "PNG")
    return buffer.getvalue()


def canvas_gif(canvas: int, n_frames: int) -> bytes:
    """An animated GIF of tiny distinct frames whose logical screen (the canvas every frame is drawn
    on) is `canvas` squared: a few hundred bytes that decoders expand to canvas-sized frames."""
    frames = [Image.new("L", (2, 2), i * 8) for i in range(n_frames)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=40)
    data = bytearray(buffer.getvalue())
    data[6:10] = canvas.to_bytes(2, "little") * 2  # logical screen width and height
    return bytes(data)


def test_hostile_files_are_as_small_as_claimed() -> None:
    assert len(png16(6000)) < 100_000
    gif = canvas_gif(6000, 30)
    assert len(gif) < 2_000
    with Image.open(io.BytesIO(gif)) as im:  # the header alone announces the whole canvas
        assert im.size == (6000, 6000)
        assert getattr(im, "n_frames", 1) == 30


def test_sixteen_bit_pixels_are_counted_at_their_depth() -> None:
    # 1000x1000: 8-bit costs 1 byte a pixel plus the RGB copy, 16-bit 2 bytes plus its narrowing.
    limits = Limits(max_decoded_bytes=7 * MB)
    assert load_image(png8(1000), limits=limits).size == (1000, 1000)
    with pytest.raises(MediaError) as caught:
        load_image(png16(1000), limits=limits)
    assert caught.value.reason
    # The same file fits a budget that covers its real depth, and decodes to the right grey levels.
    image = load_image(png16(1000), limits=Limits(max_decoded_bytes=12 * MB))
    assert np.asarray(image)[0, 0].tolist() == [0, 0, 0]


def test_sixteen_bit_narrowing_does_not_amplify() -> None:
    # NumPy allocations are traced: widening to float64 (8 bytes a pixel, several copies) would show.
    data = png16(2000, ramp=True)
    limits = Limits()
    tracemalloc.start()
    try:
        image = load_image(data, limits=limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    pixels = 2000 * 2000
    assert image.size == (2000, 2000)
    # Pillow's bytes and NumPy's uint16 copy of them, the uint8 result, one chunk: about 5 bytes a
    # pixel; the float64 path this replaced took over 24.
    assert peak < pixels * 6
    levels = np.asarray(image)[:, :, 0].reshape(-1)
    expected = np.rint((np.arange(pixels) % 65536) / 257.0).astype(np.uint8)
    assert np.array_equal(levels, expected)  # the exact rounding of the float path it replaced


def test_a_huge_gif_canvas_is_refused_before_it_is_allocated() -> None:
    gif = canvas_gif(6000, 30)
    assert guess_modality(gif) == "video"
    for call in (
        lambda: load_candidate(gif),  # as the video it is: 8 sampled canvas-sized frames
        lambda: load_image(gif, limits=Limits(max_decoded_bytes=64 * MB)),  # as an image: one canvas
    ):
        with pytest.raises(MediaError) as caught:
            call()
        assert caught.value.reason
    # A small canvas with the same frames is an ordinary video.
    assert len(load_candidate(canvas_gif(64, 30))) == 8


def test_a_frame_list_shares_one_budget() -> None:
    frames = [np.full((1000, 1000, 3), i * 20, np.uint8) for i in range(8)]  # about 11 MB each to load
    assert len(load_video(frames, limits=Limits(max_decoded_bytes=100 * MB))) == 8
    with pytest.raises(MediaError):
        load_video(frames, limits=Limits(max_decoded_bytes=50 * MB))


def test_peak_memory_of_refused_files_stays_within_the_budget(tmp_path: Path) -> None:
    # Pillow and FFmpeg allocate outside tracemalloc, so the whole process is measured, in a child:
    # its peak resident size after the hostile calls against its peak before them.
    script = tmp_path / "probe.py"
    script.write_text(
        "import io, json, resource, sys\n"
        "from flexjudge.errors import MediaError\n"
        "from flexjudge.media import Limits, load_candidate, load_image\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_media_hostile import canvas_gif, png8, png16\n"
        "budget = Limits(max_decoded_bytes=64_000_000)\n"
        "load_image(png8(64), limits=budget); load_candidate(canvas_gif(64, 30), limits=budget)\n"
        "hostile = [png16(6000), canvas_gif(6000, 30)]\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "refused = 0\n"
        "for data in hostile:\n"
        "    try:\n"
        "        load_candidate(data, limits=budget)\n"
        "    except MediaError:\n"
        "        refused += 1\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'refused': refused, 'grown_kb': after - before}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, str(script), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=120,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["refused"] == 2
    # Building the 6000x6000 test PNG itself takes NumPy memory before `before`; decoding would add
    # hundreds of MB (the files expand to 0.4 and 2 GB unbounded).
    assert result["grown_kb"] * 1024 < 64 * MB


HOSTILE_NAMES = ["a\x00b.png", "\udcff.png", "\ud800.png", "\x1b[31mred\x1b[0m.png", "x" * 5000 + ".png"]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=["nul", "escaped-byte", "surrogate", "ansi", "long"])
def test_hostile_paths_are_media_errors_with_printable_sources(name: str, tmp_path: Path) -> None:
    for source in (name, str(tmp_path / name), tmp_path / name, name[:-4], name[:-4] + ".mp4"):
        for call in (load_image, load_video, load_candidate, guess_modality):
            if call is guess_modality and str(source).endswith((".png", ".mp4")):
                continue  # decided by the extension alone, no file touched
            with pytest.raises(MediaError) as caught:
                call(source)  # type: ignore[operator]
            error = caught.value
            assert error.reason
            assert str(error).isprintable()  # no NUL, escape sequence or lone surrogate echoed
            str(error).encode("utf-8")
            assert len(error.source) <= 200


def test_a_directory_and_an_unreadable_file(tmp_path: Path) -> None:
    folder = tmp_path / "frames.png"
    folder.mkdir()
    for call in (load_image, load_video, load_candidate):
        with pytest.raises(MediaError):
            call(folder)  # type: ignore[operator]
    with pytest.raises(MediaError):
        guess_modality(tmp_path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_permission_denied_is_a_media_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.write_bytes(png8(8))
    locked.chmod(0)
    try:
        for call in (load_image, guess_modality, load_candidate):
            with pytest.raises(MediaError):
                call(locked)  # type: ignore[operator]
    finally:
        locked.chmod(0o600)


def test_default_budget_admits_large_ordinary_media() -> None:
    # The default must not refuse what max_pixels admits for an ordinary 8-bit RGB photo.
    photo = np.zeros((5000, 8000, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "PNG", compress_level=1)
    assert load_image(buffer.getvalue()).size == (8000, 5000)


@pytest.mark.parametrize("url", ["http://[::1/x.png", "https://[bad]/x.mp4", "http://\x1b[2Jhost/x.png"])
def test_malformed_urls_are_media_errors(url: str) -> None:
    for call in (guess_modality, load_image, load_candidate):
        with pytest.raises(MediaError) as caught:
            call(url)  # type: ignore[operator]
        assert str(caught.value).isprintable()
    with pytest.raises(MediaError):
        load_image(url, limits=Limits(allow_urls=True, url_timeout_s=2.0))


def test_the_budget_must_be_positive() -> None:
    from flexjudge.errors import UsageError

    for bad in (0, -1):
        with pytest.raises(UsageError):
            Limits(max_decoded_bytes=bad)


def write_numbered_video(path: Path, n: int, gop: int, size: tuple[int, int] = (320, 240)) -> Path:
    """Frame i shows i in binary as 10 black or white vertical bands, readable after lossy coding."""
    av = pytest.importorskip("av")
    width, height = size
    # Noise makes each frame cost real decoding work, as camera footage does; the bands survive it.
    noise = np.random.default_rng(0).integers(-40, 40, (8, height, width, 1), dtype=np.int16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 4_000_000
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {"sc_threshold": "1000000000"}  # keyframes only every `gop`
        for i in range(n):
            bits = np.array([(i >> b) & 1 for b in range(10)], np.uint8) * 255
            row = np.repeat(bits, width // 10)
            flat = np.repeat(np.repeat(row[None, :, None], height, 0), 3, 2).astype(np.int16)
            pixels = np.clip(flat + noise[i % 8], 0, 255).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def numbers(images: list[Image.Image]) -> list[int]:
    out = []
    for im in images:
        bands = np.asarray(im)[:, :, 0].reshape(im.height, 10, -1).mean(axis=(0, 2))
        out.append(sum(1 << b for b, level in enumerate(bands) if level > 127))
    return out


def test_seeking_decodes_the_sampled_frames_not_the_whole_file(tmp_path: Path) -> None:
    import time

    from flexjudge.media import sample_frame_indices

    n = 600
    sparse = write_numbered_video(tmp_path / "keys10.mp4", n, gop=10)  # a keyframe every 10 frames
    dense = write_numbered_video(tmp_path / "keys600.mp4", n, gop=600)  # one keyframe: no seek helps
    expected = sample_frame_indices(n, 8)
    assert numbers(load_video(sparse)) == expected
    assert numbers(load_video(dense)) == expected
    # Same pixels as decoding every frame (an independent pass with PyAV directly).
    import av

    with av.open(str(sparse)) as container:
        every = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    for index, image in zip(expected, load_video(sparse), strict=True):
        assert np.array_equal(np.asarray(image), every[index])

    def best_of_three(path: Path) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            load_video(path)
            times.append(time.perf_counter() - start)
        return min(times)

    # 8 samples from keyframes 10 apart decode about 80 frames of 600; the single pass decodes 600.
    assert best_of_three(sparse) < 0.5 * best_of_three(dense)


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_seeking_with_b_frames_gives_the_exact_frames(tmp_path: Path, ext: str) -> None:
    # B-frames put decode order and display order apart: the frame taken must be the one displayed
    # at the sampled position, pixel for pixel what a full decode shows.
    av = pytest.importorskip("av")
    try:
        av.Codec("libx264", "w")
    except Exception:
        pytest.skip("no H.264 encoder in this FFmpeg")
    path = tmp_path / f"b.{ext}"
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.codec_context.gop_size = 12
        stream.codec_context.options = {"bf": "3", "sc_threshold": "0"}
        for _ in range(240):
            pixels = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        every = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    from flexjudge.media import sample_frame_indices

    for k in (8, 13):
        images = load_video(path, frames=k)
        for index, image in zip(sample_frame_indices(len(every), k), images, strict=True):
            assert np.array_equal(np.asarray(image), every[index])
