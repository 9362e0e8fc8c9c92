"""Turn one video into frames: pick the mode, decode, fall back to CPU when a GPU cannot take it."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from frames_pipeline.decode._backends import Backend, DamagedStream, FrameBatch, create_backend
from frames_pipeline.decode._cuda import cuda_unavailable_reason
from frames_pipeline.decode._errors import DecodeError, Reason, printable
from frames_pipeline.decode._input_policy import VideoSource, readable_path, source_name
from frames_pipeline.decode._npy import NpyStreamWriter, pts_path, save_npy_atomic
from frames_pipeline.decode._options import GPU_MODES, DecodeOptions, with_overrides
from frames_pipeline.decode._probe import VideoInfo, probe_readable


@dataclass(frozen=True)
class FrameResult:
    """Frames of one video and how they were made.

    ``frames`` is (N, H, W, 3) uint8 RGB, or None when they were streamed to ``output_path``.
    """

    frames: NDArray[np.uint8] | None
    pts_s: NDArray[np.float64]
    requested_mode: str
    decode_mode: str
    fallback_reason: str | None
    warnings: tuple[str, ...]
    info: VideoInfo
    decode_s: float
    # From the call to the first batch of frames (at most batch_size): probe, decoder start-up, first decode.
    first_frame_s: float
    output_path: str | None = None

    @property
    def num_frames(self) -> int:
        return int(self.pts_s.shape[0])


class _Sink(Protocol):
    def write(self, frames: NDArray[np.uint8]) -> None: ...


class _MemorySink:
    def __init__(self) -> None:
        self.batches: list[NDArray[np.uint8]] = []

    def write(self, frames: NDArray[np.uint8]) -> None:
        self.batches.append(frames)


# Per thread: a decoder serves one video at a time, and a worker process may run several decoder threads.
_local = threading.local()


def _backends() -> dict[tuple[str, int, str | None, int], Backend]:
    if not hasattr(_local, "backends"):
        _local.backends = {}
    return _local.backends


def backend_for(mode: str, options: DecodeOptions) -> Backend:
    """This thread's backend for ``mode``: decoders are reused across videos (start-up is costly)."""
    backends = _backends()
    key = (mode, options.gpu_id, options.ffmpeg_binary, options.threads)
    if key not in backends:
        backends[key] = create_backend(mode, options)
    return backends[key]


def close_backends() -> None:
    """Release every cached decoder of this thread."""
    backends = _backends()
    while backends:
        backends.popitem()[1].close()


def preferred_mode(options: DecodeOptions) -> tuple[str, str | None]:
    """The mode this host gives ``options.mode`` before seeing a video, and why if it is not the one asked."""
    if options.mode == "ffmpeg_cpu":
        return "ffmpeg_cpu", None
    no_gpu = cuda_unavailable_reason(options.gpu_id)
    reasons = [no_gpu] if no_gpu else []
    for mode in () if no_gpu else (GPU_MODES if options.mode == "auto" else (options.mode,)):
        try:
            backend_for(mode, options)
            return mode, None
        except DecodeError as exc:
            reasons.append(f"{mode}: {exc.message}")
    return "ffmpeg_cpu", "; ".join(reasons)


def choose_mode(options: DecodeOptions, info: VideoInfo) -> tuple[str, str | None]:
    """The mode to use for this video and, when it is not the one asked for, why."""
    mode, reason = preferred_mode(options)
    if mode in GPU_MODES:
        refusal = backend_for(mode, options).unsupported(info)
        if refusal is not None:
            mode, reason = "ffmpeg_cpu", f"{mode}: {refusal}"
    if mode != options.mode and options.mode != "auto" and not options.fallback_to_cpu:
        raise DecodeError(Reason.GPU_UNAVAILABLE, reason or "", path=info.path)
    return mode, reason


@dataclass
class _Decoded:
    """One finished decode, before its sink is committed (a file) or gathered (memory)."""

    info: VideoInfo
    mode: str
    fallback_reason: str | None
    warnings: list[str]
    pts: NDArray[np.float64]
    sink: Any
    first_frame_at: float  # perf_counter() when the first batch arrived

    def result(
        self, options: DecodeOptions, started: float, frames: NDArray[np.uint8] | None, output: str | None
    ) -> FrameResult:
        return FrameResult(
            frames=frames,
            pts_s=self.pts,
            requested_mode=options.mode,
            decode_mode=self.mode,
            fallback_reason=self.fallback_reason,
            # FFmpeg's messages quote file names: keep them storable whatever bytes a name has.
            warnings=tuple(printable(w) for w in self.warnings),
            info=self.info,
            decode_s=time.perf_counter() - started,
            first_frame_s=self.first_frame_at - started,
            output_path=output,
        )


def _decode(source: VideoSource, options: DecodeOptions, open_sink: Any) -> _Decoded:
    with readable_path(source, allow_remote=options.allow_remote, allowed_roots=options.allowed_roots) as path:
        decoded = _decode_readable(path, options, open_sink)
    decoded.info = replace(decoded.info, path=source_name(source, decoded.info.path))
    decoded.warnings = [source_name(source, line) for line in decoded.warnings]
    return decoded


def _decode_readable(path: str, options: DecodeOptions, open_sink: Any) -> _Decoded:
    deadline = time.monotonic() + options.timeout_s
    info = probe_readable(path, options)
    mode, fallback_reason = choose_mode(options, info)
    while True:
        warnings: list[str] = []
        sink = open_sink(info)
        try:
            pts, first_frame_at = _run_backend(backend_for(mode, options), info, options, deadline, warnings, sink)
            return _Decoded(info, mode, fallback_reason, warnings, pts, sink, first_frame_at)
        except DamagedStream:
            _discard(sink)
            options = replace(options, threads=1)
            continue
        except DecodeError as exc:
            _discard(sink)
            if mode in GPU_MODES and options.fallback_to_cpu and exc.reason != Reason.TIMEOUT:
                fallback_reason = f"{mode} failed: {exc.message}"
                mode = "ffmpeg_cpu"
                continue
            raise
        except BaseException:
            _discard(sink)
            raise


def _run_backend(
    backend: Backend,
    info: VideoInfo,
    options: DecodeOptions,
    deadline: float,
    warnings: list[str],
    sink: _Sink,
) -> tuple[NDArray[np.float64], float]:
    """The timestamps of every frame the backend decoded into ``sink``, and when its first batch came."""
    stamps: list[NDArray[np.float64]] = []
    first_at = 0.0
    batch: FrameBatch
    for batch in backend.decode(info, options, deadline, warnings):
        first_at = first_at or time.perf_counter()
        sink.write(batch.frames)
        stamps.append(batch.pts_s)
    pts = np.concatenate(stamps) if stamps else np.empty(0, dtype=np.float64)
    if pts.size == 0:
        detail = f": {warnings[0]}" if warnings else ""
        raise DecodeError(Reason.CORRUPT, f"no frame could be decoded{detail}", path=info.path)
    if backend.mode in GPU_MODES and pts.size < info.num_frames_from_content:
        # NVDEC and FFmpeg's CUDA path drop damaged pictures without a word (seen on an H200 with
        # flipped bytes and a cut-off file); FFmpeg on CPU conceals them and says what it saw.
        shortfall = (
            f"{backend.mode} decoded {pts.size} of the {info.num_frames_from_content} frames the stream holds: "
            "damaged or cut off"
        )
        if options.fallback_to_cpu:
            raise DecodeError(Reason.CORRUPT, shortfall, path=info.path)
        warnings.append(shortfall)
    steady, notes = steady_timestamps(pts, 1 / info.fps_from_content)
    warnings.extend(notes)
    return steady, first_at


def steady_timestamps(pts: NDArray[np.float64], step_s: float) -> tuple[NDArray[np.float64], list[str]]:
    """A timestamp for every frame, strictly increasing, and notes saying what had to change.

    Frames come in presentation order (every backend returns them as its decoder does) and none is
    dropped; only their times are fixed: a frame without one (NaN) is placed ``step_s`` after the
    frame before (before the first timed frame, counted back from it); a frame timed no later than
    the one before is, when the frames after it go on above, a lone late frame (damage) and is timed
    between its neighbours, and otherwise a restart of the stream's clock, which it and every later
    frame are shifted past. Well-formed streams come back unchanged.
    """
    missing = np.isnan(pts)
    if not missing.any() and bool(np.all(np.diff(pts) > 0)):
        return pts, []
    notes = []
    filled = pts.copy()
    if missing.all():
        filled = np.arange(pts.size) * step_s
        notes.append(f"no frame has a timestamp (a raw stream): frames are {step_s:.4f} s apart from 0")
    elif missing.any():
        first = int(np.argmax(~missing))
        filled[:first] = filled[first] - step_s * np.arange(first, 0, -1)
        for i in np.flatnonzero(missing[first:]) + first:
            filled[i] = filled[i - 1] + step_s
        notes.append(
            f"{int(missing.sum())} frame(s) had no timestamp: each is placed {step_s:.4f} s after the frame before it"
        )
    out = filled.copy()
    offset, late, restarts = 0.0, 0, []
    for i in range(1, out.size):
        out[i] = filled[i] + offset
        if out[i] > out[i - 1]:
            continue
        following = filled[i + 1] + offset if i + 1 < out.size else -np.inf
        if following > out[i - 1]:
            out[i] = (out[i - 1] + following) / 2
            late += 1
        else:
            restarts.append(f"at frame {i}, to {filled[i]:.3f} s from {out[i - 1]:.3f} s")
            offset = out[i - 1] + step_s - filled[i]
            out[i] = out[i - 1] + step_s
    if late:
        notes.append(f"{late} frame(s) came after later ones (damaged stream): kept in order, timed between neighbours")
    if restarts:
        notes.append(
            f"timestamps jump back {len(restarts)} time(s) (first {restarts[0]}): "
            "later frames are shifted to keep time increasing"
        )
    return out, notes


def _discard(sink: Any) -> None:
    if isinstance(sink, NpyStreamWriter):
        sink.abort()


def extract_frames(source: VideoSource, *, options: DecodeOptions | None = None, **overrides: Any) -> FrameResult:
    """Decode ``source`` (a path, or ``VideoBytes``) into memory. Keyword arguments override fields of ``options``
    (``output_hw``, ``mode``, ``gpu_id``, ``timeout_s``, ...). Raises DecodeError with a reason."""
    opts = with_overrides(options, overrides)
    started = time.perf_counter()
    decoded = _decode(source, opts, lambda _info: _MemorySink())
    return decoded.result(opts, started, np.concatenate(decoded.sink.batches), None)


def extract_to_file(
    source: VideoSource,
    out_path: str | os.PathLike[str],
    *,
    options: DecodeOptions | None = None,
    **overrides: Any,
) -> FrameResult:
    """Stream frames of ``source`` to ``out_path`` (.npy) and timestamps to ``<stem>.pts.npy``.

    Memory stays bounded by one batch whatever the video's length. The timestamps are published
    first and the frames last, so an existing frames file always has its timestamps beside it.
    """
    opts = with_overrides(options, overrides)
    started = time.perf_counter()
    out = Path(out_path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        name_max = os.pathconf(out.parent, "PC_NAME_MAX")
    except OSError as exc:
        raise DecodeError(Reason.WRITE_FAILED, f"cannot create {out.parent}: {exc}") from None
    # Known before decoding: the longer of the two names must fit the file system.
    name_bytes = len(os.fsencode(pts_path(out).name))
    if name_bytes > name_max:
        raise DecodeError(
            Reason.WRITE_FAILED, f"{pts_path(out).name} is {name_bytes} bytes; names here hold at most {name_max}"
        )

    def open_writer(_info: VideoInfo) -> NpyStreamWriter:
        return NpyStreamWriter(out, (*opts.output_hw, 3))

    decoded = _decode(source, opts, open_writer)
    try:
        save_npy_atomic(pts_path(out), decoded.pts)
        decoded.sink.commit()
    except BaseException:
        decoded.sink.abort()
        raise
    return decoded.result(opts, started, None, str(out))
