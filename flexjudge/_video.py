"""Video candidates: uniform frame sampling and single-pass decoding with PyAV.

Split from `flexjudge.media`, which re-exports `load_video` and `sample_frame_indices`; the limits,
the byte sources and the error type are shared with it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from flexjudge._images import (
    DEFAULT_LIMITS,
    ImageSource,
    Limits,
    VideoSource,
    _Budget,
    _check_pixels,
    _describe,
    _is_array,
    _load_image,
    _open_bytes,
)
from flexjudge.errors import MediaError, UsageError

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.stream import VideoStream
    from numpy.typing import NDArray
    from PIL.Image import Image as PILImage


def sample_frame_indices(n_frames: int, k: int = 8) -> list[int]:
    """The `k` frame indices the judge sees: ``numpy.round(numpy.linspace(0, n_frames - 1, k))``.

    Uniform spacing, first and last frame included, as in UnifiedReward-Flex. Computed in plain
    Python with the same float operations and half-to-even rounding as NumPy, so the indices are
    identical to the expression above for every `n_frames` and `k`. When ``n_frames < k`` frames
    repeat: each index is still the frame nearest its evenly spaced position, so every frame appears
    and its copies sit next to it (5 frames, k=8: ``[0, 1, 1, 2, 2, 3, 3, 4]``; 1 frame: k zeros).
    """
    if k < 1:
        raise UsageError(f"k must be at least 1, got {k}")
    if n_frames < 0:
        raise UsageError(f"n_frames must not be negative, got {n_frames}")
    if n_frames == 0:
        raise MediaError("a video with no frames cannot be sampled", source="<video>")
    if k == 1:
        return [0]
    step = (n_frames - 1) / (k - 1)
    return [round(i * step) for i in range(k - 1)] + [n_frames - 1]


def load_video(source: VideoSource, *, frames: int = 8, limits: Limits = DEFAULT_LIMITS) -> list[PILImage]:
    """Return `frames` RGB frames sampled with `sample_frame_indices`, in time order.

    An encoded video (path, URL, ``data:`` URL or bytes) in an indexed container (MP4/MOV, Matroska)
    with a codec that shows one frame per packet is read by timestamp: a demux-only pass orders the
    packet timestamps, and each sampled frame is decoded from the keyframe before it and taken only
    if its timestamp is exactly the one expected, so decode time follows the frames sampled. Any
    other video, or any surprise on the way, is decoded in one forward pass; only the sampled frames
    are converted to RGB. The frame count comes from the container or, when it does not say, from a
    demux-only pass; if decoding then yields a different count, the video is sampled again with the
    true count. Pixel memory is charged to `Limits.max_decoded_bytes` before decoding. The display
    rotation of phone videos is applied. A list/tuple of frames (anything `load_image` accepts) or
    a TxHxW(xC) array is sampled the same way and only the chosen frames are loaded.
    """
    from PIL import Image

    if frames < 1:
        raise UsageError(f"frames must be at least 1, got {frames}")
    what = _describe(source)
    if isinstance(source, (list, tuple)):
        return _sample_frames(source, len(source), frames, limits, what)
    if _is_array(source):
        if source.ndim not in (3, 4):
            raise MediaError(f"a video array is TxHxW or TxHxWxC, got shape {source.shape}", source=what)
        return _sample_frames(source, int(source.shape[0]), frames, limits, what)
    if isinstance(source, Image.Image):
        raise MediaError("a single PIL image is not a video: pass the file path or a frame list", source=what)
    with _open_bytes(source, limits, what) as fp:
        return _decode_video(fp, frames, limits, what)


def _sample_frames(
    items: Sequence[ImageSource] | NDArray[Any], n: int, k: int, limits: Limits, what: str
) -> list[PILImage]:
    if n > limits.max_video_frames:
        raise MediaError(
            f"{n} frames is over Limits.max_video_frames ({limits.max_video_frames})", source=what
        )
    try:
        indices = sample_frame_indices(n, k)
    except MediaError as exc:
        raise MediaError(exc.reason, source=what) from None
    loaded: dict[int, PILImage] = {}
    budget = _Budget(limits, what)  # one budget for all the frames of this candidate
    for i in indices:
        if i not in loaded:
            loaded[i] = _load_image(items[i], limits, budget)
    return [loaded[i] for i in indices]


def _decode_video(fp: BinaryIO, k: int, limits: Limits, what: str) -> list[PILImage]:
    import av

    try:
        with _open_container(fp, limits, what) as container:
            stream = _video_stream(container, limits, what)
            declared = stream.frames
            nominal = declared or _count_packets(container, stream, limits, what)
        fp.seek(0)
        sought = _seek_pass(fp, k, limits, what)
        if sought is not None:
            return sought
        fp.seek(0)
        picked, decoded, packets = _decode_pass(fp, sample_frame_indices(max(nominal, 1), k), limits, what)
        if declared and packets < declared:
            raise MediaError(
                f"truncated: the container lists {declared} frames but holds data for {packets}", source=what
            )
        if decoded == 0:
            raise MediaError("the video stream holds no decodable frames", source=what)
        if decoded != nominal:
            # Edit lists and invisible frames make the decoder show another count: sample what it shows.
            picked = []  # released before the second pass, which has the whole budget to itself
            fp.seek(0)
            picked, _, _ = _decode_pass(fp, sample_frame_indices(decoded, k), limits, what)
    except av.FFmpegError as exc:
        raise MediaError(f"corrupt or undecodable video: {_ffmpeg_reason(exc)}", source=what) from exc
    return picked


def _ffmpeg_reason(exc: Exception) -> str:
    reason = getattr(exc, "strerror", None)
    return reason if isinstance(reason, str) and reason else str(exc)


def _open_container(fp: BinaryIO, limits: Limits, what: str) -> InputContainer:
    import av

    try:
        return av.open(
            fp,
            mode="r",
            container_options={"format_whitelist": ",".join(limits.video_containers)},
            io_open=_refuse_nested_open,
            metadata_errors="ignore",
        )
    except (av.FFmpegError, OSError) as exc:
        allowed = ", ".join(limits.video_containers)
        raise MediaError(
            f"not a readable video in an allowed container (Limits.video_containers: {allowed}): "
            f"{_ffmpeg_reason(exc)}",
            source=what,
        ) from exc


def _refuse_nested_open(url: str, flags: int, options: dict[str, str]) -> BinaryIO:
    raise PermissionError(f"the video tried to open another resource ({url!r}); refused")


def _video_stream(container: InputContainer, limits: Limits, what: str) -> VideoStream:
    import av

    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        raise MediaError("no video stream in the file", source=what)
    stream = streams[0]
    ctx = stream.codec_context
    if ctx is None:
        raise MediaError("no decoder for this video codec in the installed FFmpeg", source=what)
    _check_pixels((ctx.width, ctx.height), limits, what)
    seconds: float | None = None
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base
    if seconds is not None and seconds > limits.max_video_seconds:
        raise MediaError(
            f"{seconds:.1f} s is over Limits.max_video_seconds ({limits.max_video_seconds:g})",
            source=what,
        )
    if stream.frames > limits.max_video_frames:
        raise MediaError(
            f"{stream.frames} frames is over Limits.max_video_frames ({limits.max_video_frames})",
            source=what,
        )
    return stream


def _count_packets(container: InputContainer, stream: VideoStream, limits: Limits, what: str) -> int:
    count = 0
    for packet in container.demux(stream):
        if packet.size:
            count += 1
            if count > limits.max_video_frames:
                raise MediaError(
                    f"more than Limits.max_video_frames ({limits.max_video_frames}) frames", source=what
                )
    return count


_INDEXED_CONTAINERS = frozenset({"mov", "matroska"})
"""Containers with a sample index, where a seek lands on the keyframe it names (MPEG-TS, AVI and the
like seek by byte estimate or not at all)."""
_SEEKABLE_CODECS = frozenset({"h264", "hevc", "mpeg4", "mpeg1video", "mpeg2video", "mjpeg"})
"""Codecs in which every packet shows exactly one frame, carrying the packet's timestamp: frame i is
then the packet with the i-th smallest timestamp. VP8/VP9/AV1 hide frames and are decoded in full."""


def _seek_pass(fp: BinaryIO, k: int, limits: Limits, what: str) -> list[PILImage] | None:
    """The sampled frames, each decoded from the keyframe before it, so the work follows the frames
    sampled rather than the frames in the file; None when an exact seek cannot be trusted (unknown
    codec, missing or repeated timestamps, discarded packets, too few keyframes to gain anything)
    or any frame comes out other than expected: the caller then decodes every frame once."""
    import bisect

    import av

    with _open_container(fp, limits, what) as container:
        stream = _video_stream(container, limits, what)
        ctx = stream.codec_context
        indexed = container.format.name.split(",")[0] in _INDEXED_CONTAINERS
        if ctx.name not in _SEEKABLE_CODECS or not indexed or not stream.time_base:
            return None
        stamps: list[int] = []
        keys: list[int] = []
        for packet in container.demux(stream):  # demuxing only: no pixel is decoded
            if not packet.size:
                continue
            if packet.pts is None or packet.is_discard or packet.is_corrupt:
                return None
            stamps.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
            if len(stamps) > limits.max_video_frames:
                return None  # the full pass reports it
        order = sorted(stamps)
        if not keys or len(set(order)) != len(order) or (stream.frames and len(order) != stream.frames):
            return None
        if float((order[-1] - order[0]) * stream.time_base) > limits.max_video_seconds:
            return None
        indices = sample_frame_indices(len(order), k)
        targets = sorted(set(indices))
        key_positions = sorted(bisect.bisect_left(order, key) for key in keys)
        plan: list[tuple[int, bool]] = []  # (target, seek first?) and the frames that costs
        position, work = -1, 0
        for target in targets:
            before = bisect.bisect_right(key_positions, target) - 1
            if before < 0:
                return None  # no keyframe at or before this frame: only a full pass can show it
            key = key_positions[before]
            seek = key > position + 1  # a keyframe lies ahead: jump to it instead of decoding up to it
            work += target - (key if seek else position)
            plan.append((target, seek))
            position = target
        if work * 2 > len(order):
            return None  # keyframes too sparse to save anything: one pass is as fast and proven
        budget = _Budget(limits, what)
        budget.charge(_frame_cost(ctx.pix_fmt, ctx.width, ctx.height, len(targets)), "the sampled frames")
        stream.thread_type = av.codec.context.ThreadType.AUTO
        stream.thread_count = _THREADS
        try:
            picked = _decode_planned(container, stream, plan, order)
        except av.FFmpegError:
            return None  # the full pass decides whether the file is corrupt
    return None if picked is None else [picked[i] for i in indices]


def _decode_planned(
    container: InputContainer, stream: VideoStream, plan: list[tuple[int, bool]], order: list[int]
) -> dict[int, PILImage] | None:
    """Decode the planned targets (presentation positions, by timestamp); None on any surprise."""
    ctx = stream.codec_context
    picked: dict[int, PILImage] = {}
    frames = None
    for target, seek in plan:
        if seek or frames is None:
            container.seek(order[target], stream=stream, backward=True)
            frames = container.decode(stream)
        for frame in frames:
            if frame.pts is None or frame.pts > order[target] or frame.is_corrupt:
                return None  # the frame we counted on never came, or came damaged
            if frame.pts == order[target]:
                if (frame.width, frame.height) != (ctx.width, ctx.height):
                    return None  # the stream changed size: the full pass charges and checks it
                picked[target] = _rotate(frame.to_image(), frame.rotation)  # type: ignore[no-untyped-call]
                break
        else:
            return None
    return picked


def _decode_pass(
    fp: BinaryIO, indices: list[int], limits: Limits, what: str
) -> tuple[list[PILImage], int, int]:
    """Decode every frame once, converting those in `indices`: (picks, frames decoded, packets read)."""
    import av

    wanted = set(indices)
    picked: dict[int, PILImage] = {}
    count = packets = 0
    start: float | None = None
    with _open_container(fp, limits, what) as container:
        stream = _video_stream(container, limits, what)
        stream.thread_type = av.codec.context.ThreadType.AUTO
        stream.thread_count = _THREADS  # frames in flight are counted in the budget: keep them few
        ctx = stream.codec_context
        budget = _Budget(limits, what)
        largest = ctx.width * ctx.height
        cost = _frame_cost(ctx.pix_fmt, ctx.width, ctx.height, len(wanted))
        per_pixel = -(-cost // largest)  # for frames that outgrow the header
        budget.charge(cost, f"{len(wanted)} frames of {ctx.width}x{ctx.height} and the decoder's")
        for packet in container.demux(stream):
            if packet.size:
                packets += 1
            for frame in packet.decode():
                if count >= limits.max_video_frames:
                    raise MediaError(
                        f"more than Limits.max_video_frames ({limits.max_video_frames}) frames", source=what
                    )
                if frame.time is not None:
                    start = frame.time if start is None else start
                if frame.time is not None and frame.time - start > limits.max_video_seconds:
                    raise MediaError(
                        f"runs past Limits.max_video_seconds ({limits.max_video_seconds:g})", source=what
                    )
                if frame.width * frame.height > largest:  # the stream grew past its header: charge the rest
                    _check_pixels((frame.width, frame.height), limits, what)
                    grown = frame.width * frame.height
                    budget.charge(
                        (grown - largest) * per_pixel, f"frames grown to {frame.width}x{frame.height}"
                    )
                    largest = grown
                if count in wanted:
                    _check_pixels((frame.width, frame.height), limits, what)
                    picked[count] = _rotate(frame.to_image(), frame.rotation)  # type: ignore[no-untyped-call]
                count += 1
    if not wanted <= picked.keys():
        return [], count, packets
    return [picked[i] for i in indices], count, packets


_THREADS = min(os.cpu_count() or 1, 4)
_DECODER_FRAMES = _THREADS + 4  # frames in flight plus typical reference frames (an estimate)


def _frame_cost(pix_fmt: str | None, width: int, height: int, kept: int) -> int:
    """Pixel bytes one decoding pass holds at its peak: the `kept` RGB frames (Pillow stores RGB in 4
    bytes a pixel), one frame being converted (its array and its rotated copy), and the decoder's
    frames at their real depth (planes, chroma subsampling and bits per sample from the pixel format)."""
    import av

    pixels = width * height
    decoded = pixels * 8  # an unknown pixel format: assume 16-bit RGBA
    if pix_fmt:
        try:
            fmt = av.VideoFormat(pix_fmt, width, height)
            decoded = sum(c.width * c.height * -(-c.bits // 8) for c in fmt.components)
        except (ValueError, av.FFmpegError):
            pass
    return kept * pixels * 4 + pixels * (3 + 4) + _DECODER_FRAMES * decoded


def _rotate(image: PILImage, degrees: int) -> PILImage:
    from PIL import Image

    # `degrees` is the counter-clockwise turn the display matrix asks for; non-right angles are left alone.
    turn = {90: Image.Transpose.ROTATE_90, -90: Image.Transpose.ROTATE_270, 270: Image.Transpose.ROTATE_270}
    turn |= {180: Image.Transpose.ROTATE_180, -180: Image.Transpose.ROTATE_180}
    out = image.transpose(turn[degrees]) if degrees in turn else image
    out.format = "PNG"
    return out
