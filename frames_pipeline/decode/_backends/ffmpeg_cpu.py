"""``ffmpeg_cpu``: FFmpeg's software decoders in-process through PyAV (no per-video process start-up).

Frames are never converted to RGB at full size: their Y'CbCr planes are read in place and reduced
by ``resize.FrameShrinker`` as they arrive, then finished to RGB many frames at a time
(``resize.ShrinkBatch``), which costs a fraction of swscale's full-size conversion.

Every frame the decoder returns is kept, in the order it returns them (presentation order), as the
ffmpeg CLI does. Packets go through the probe's ``PacketClock`` first, so a stream whose timestamps
restart comes out on one increasing timeline; a frame without a timestamp keeps its place and gets
one from ``_extract.steady_timestamps``, which every mode finishes with.
"""

from __future__ import annotations

import contextlib
import heapq
import queue
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

import av
import av.error
import av.logging
import numpy as np
from numpy.typing import NDArray

from frames_pipeline.decode._backends import DamagedStream, FrameBatch
from frames_pipeline.decode._errors import DecodeError, Reason
from frames_pipeline.decode._options import DecodeOptions
from frames_pipeline.decode._probe import FFMPEG_LOG, PacketClock, VideoInfo, main_video_stream, open_container
from frames_pipeline.decode._resize import ColourSpec, FrameShrinker, ShrinkBatch

# Planar Y'CbCr layouts read directly; anything else is converted to yuv444p first.
_DIRECT = {
    "yuv420p": np.uint8, "yuvj420p": np.uint8, "yuv422p": np.uint8, "yuvj422p": np.uint8,
    "yuv444p": np.uint8, "yuvj444p": np.uint8, "yuv440p": np.uint8, "yuvj440p": np.uint8,
    "yuv411p": np.uint8, "yuv410p": np.uint8,
    "yuv420p10le": np.uint16, "yuv422p10le": np.uint16, "yuv444p10le": np.uint16,
    "yuv420p12le": np.uint16, "yuv422p12le": np.uint16, "yuv444p12le": np.uint16,
    "yuv420p16le": np.uint16, "yuv444p16le": np.uint16,
}  # fmt: skip
_MAX_WARNINGS = 50


class FFmpegCPUBackend:
    mode = "ffmpeg_cpu"

    def __init__(self, options: DecodeOptions) -> None:
        self.threads = options.threads

    def unsupported(self, info: VideoInfo) -> str | None:
        return None

    def decode(
        self, info: VideoInfo, options: DecodeOptions, deadline: float, warnings: list[str]
    ) -> Iterator[FrameBatch]:
        batch = _Batcher(options, info, warnings)
        threaded = self.threads != 1
        previous_level = av.logging.get_level()
        av.logging.set_level(av.logging.WARNING)
        try:
            # One decoding thread logs only on this thread, so its capture is this video's alone whatever
            # else the process decodes or probes at the same time (decoder threads in a GPU worker).
            with (
                FFMPEG_LOG if threaded else contextlib.nullcontext(),
                open_container(info.path, allow_remote=options.allow_remote) as container,
                av.logging.Capture(local=not threaded) as log,
            ):
                stream = main_video_stream(container, info.path)
                stream.thread_type = "AUTO" if threaded else "SLICE"
                stream.thread_count = self.threads if threaded else 1
                stream.codec_context.options = _codec_options(options)
                damage_before = len(warnings)
                clock = PacketClock(stream)
                frames = _frames(container, stream, clock, deadline, warnings, info.path)
                with _decoded_ahead(frames) if threaded else contextlib.nullcontext(frames) as ahead:
                    for frame in ahead:
                        batch.add(frame)
                        while batch.ready:
                            yield batch.take()
                batch.drain()
                while batch.pending:
                    yield batch.take()
                if threaded and (len(warnings) > damage_before or _errors(log)):
                    raise DamagedStream(info.path)
                warnings.extend(clock.restarts)
                warnings.extend(_messages(log))
        finally:
            av.logging.set_level(previous_level)

    def close(self) -> None:
        """Nothing is held between videos: PyAV opens a decoder per container."""


_AHEAD_FRAMES = 8
_END = object()


@contextlib.contextmanager
def _decoded_ahead(frames: Generator[av.VideoFrame, None, None]) -> Iterator[Iterator[av.VideoFrame]]:
    """``frames``, pulled on a thread of their own up to ``_AHEAD_FRAMES`` ahead of the caller.

    FFmpeg's frame threads only decode packets someone hands them; handed over between the
    shrinking of one frame and the next, they wait on it. Here a feeding thread keeps them busy
    (PyAV decodes without the GIL) while the caller shrinks. Errors of ``frames`` reach the caller;
    the feeding thread is stopped and joined before the container can close.
    """
    handed: queue.Queue[Any] = queue.Queue(_AHEAD_FRAMES)
    stop = threading.Event()

    def hand(item: object) -> bool:
        while not stop.is_set():
            try:
                handed.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def feed() -> None:
        try:
            for frame in frames:
                if not hand(frame):
                    return
            hand(_END)
        except BaseException as exc:  # handed to the caller, who raises it
            hand(exc)
        finally:
            frames.close()

    def take() -> Iterator[av.VideoFrame]:
        while (item := handed.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    feeder = threading.Thread(target=feed, name="ffmpeg_cpu-feed", daemon=True)
    feeder.start()
    try:
        yield take()
    finally:
        stop.set()
        feeder.join()


def _codec_options(options: DecodeOptions) -> dict[str, str]:
    """The decoder's AVOptions for ``options``."""
    codec = {"max_pixels": str(options.max_pixels)}
    if options.skip_loop_filter:
        codec["skip_loop_filter"] = "all"
    return codec


def _frames(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    clock: PacketClock,
    deadline: float,
    warnings: list[str],
    path: str,
) -> Iterator[av.VideoFrame]:
    packets = container.demux(stream)
    flushed = False
    while True:
        if time.monotonic() > deadline:
            raise DecodeError(Reason.TIMEOUT, "decode ran past its time limit", path=path)
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as exc:
            warnings.append(f"input ends early: {exc}")
            break
        flushed = packet.size == 0  # demux ends with an empty packet, which drains the decoder
        clock.place(packet)
        try:
            yield from packet.decode()
        except av.error.FFmpegError as exc:
            warnings.append(f"damaged packet at pts {packet.pts}: {exc}")
    if not flushed:
        try:
            yield from stream.codec_context.decode(None)
        except av.error.EOFError:
            pass
        except av.error.FFmpegError as exc:
            warnings.append(f"decoder flush failed: {exc}")


class _Batcher:
    """Shrinks frames as they arrive, restores presentation order around damage, and groups them into batches.

    Frames are reduced on arrival and finished to RGB in arrival order, a ``ShrinkBatch`` at a time.
    Decoders can emit a frame or two out of order around damage; a small window sorted by pts puts
    the finished frames back. A frame without a timestamp sorts right after the frame that arrived
    before it and leaves with NaN, for ``steady_timestamps`` to fill. No frame is dropped.
    """

    _WINDOW = 16

    def __init__(self, options: DecodeOptions, info: VideoInfo, warnings: list[str]) -> None:
        self.options = options
        self.info = info
        self.warnings = warnings
        self.frames: list[NDArray[np.uint8]] = []
        self.pts: list[float] = []
        # (sort key, arrival, pts or NaN, frame): the key of a frame without pts is its predecessor's.
        self._window: list[tuple[float, int, float, NDArray[np.uint8]]] = []
        self._arrivals = 0
        self._last_key = -np.inf
        self._shape: tuple[str, int, int] | None = None
        self._shrink: ShrinkBatch | None = None
        self._shrinking: list[tuple[float, int, float]] = []  # (key, arrival, pts) of the frames in ``_shrink``

    @property
    def pending(self) -> bool:
        return bool(self.frames)

    @property
    def ready(self) -> bool:
        return len(self.frames) >= self.options.batch_size

    def add(self, frame: av.VideoFrame) -> None:
        name = frame.format.name
        if name not in _DIRECT and name != "gray":
            frame = frame.reformat(format="yuv444p")
        shrink = self._shrink_for(frame)
        shrink.add(*_planes(frame))
        pts = np.nan if frame.time is None else frame.time
        if frame.time is not None:
            self._last_key = pts
        self._shrinking.append((self._last_key, self._arrivals, pts))
        self._arrivals += 1
        if shrink.full:
            self._finish()

    def drain(self) -> None:
        self._finish()
        while self._window:
            self._emit(heapq.heappop(self._window))

    def take(self) -> FrameBatch:
        size = self.options.batch_size
        batch = FrameBatch(np.stack(self.frames[:size]), np.asarray(self.pts[:size], dtype=np.float64))
        del self.frames[:size], self.pts[:size]
        return batch

    def _finish(self) -> None:
        if self._shrink is None or not self._shrinking:
            return
        for (key, arrival, pts), small in zip(self._shrinking, self._shrink.finish(), strict=True):
            heapq.heappush(self._window, (key, arrival, pts, small))
            if len(self._window) > self._WINDOW:
                self._emit(heapq.heappop(self._window))
        self._shrinking = []

    def _emit(self, item: tuple[float, int, float, NDArray[np.uint8]]) -> None:
        _, _, pts, small = item
        self.frames.append(small)
        self.pts.append(pts)

    def _shrink_for(self, frame: av.VideoFrame) -> ShrinkBatch:
        # Streams may change size or format mid-way (resolution switches): finish the frames reduced
        # with the old plan, then rebuild it.
        shape = (frame.format.name, frame.width, frame.height)
        if shape != self._shape or self._shrink is None:
            self._finish()
            fmt = frame.format
            bits = fmt.components[0].bits
            shrinker = FrameShrinker(
                luma_hw=(frame.height, frame.width),
                chroma_hw=(fmt.chroma_height(frame.height), fmt.chroma_width(frame.width)),
                output_hw=self.options.output_hw,
                colour=ColourSpec.from_ffmpeg(frame.colorspace, frame.color_range, bits),
                rotation=self.info.rotation,
                mirrored=self.info.mirrored,
            )
            self._shrink = ShrinkBatch(shrinker)
            self._shape = shape
        return self._shrink


def _planes(frame: av.VideoFrame) -> tuple[NDArray, NDArray, NDArray]:
    dtype = _DIRECT.get(frame.format.name, np.uint8)
    planes = [_plane_array(p, dtype) for p in frame.planes]
    if len(planes) == 1:  # gray: neutral chroma at the luma's bit depth
        mid = np.full_like(planes[0], 1 << (frame.format.components[0].bits - 1))
        return planes[0], mid, mid
    return planes[0], planes[1], planes[2]


def _plane_array(plane: av.video.plane.VideoPlane, dtype: type[np.number]) -> NDArray:
    itemsize = np.dtype(dtype).itemsize
    rows = np.frombuffer(plane, dtype=dtype).reshape(plane.height, plane.line_size // itemsize)
    return rows[:, : plane.width]


def _errors(log: list[tuple[int, str, str]]) -> bool:
    return any(level <= av.logging.ERROR for level, _, _ in log)


def _messages(log: list[tuple[int, str, str]]) -> list[str]:
    lines = [f"{name}: {message.strip()}" for level, name, message in log if level <= av.logging.WARNING]
    if len(lines) > _MAX_WARNINGS:
        lines = [*lines[:_MAX_WARNINGS], f"... {len(lines) - _MAX_WARNINGS} more decoder messages"]
    return lines
