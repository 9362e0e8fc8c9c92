"""Turn one video into frames: pick the mode, decode, fall back to CPU when a GPU cannot take it."""

from __future__ import annotations

import os
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


_backends: dict[tuple[str, int, str | None, int], Backend] = {}


def backend_for(mode: str, options: DecodeOptions) -> Backend:
    """The process-wide backend for ``mode``: decoders are reused across videos (start-up is costly)."""
    key = (mode, options.gpu_id, options.ffmpeg_binary, options.threads)
    if key not in _backends:
        _backends[key] = create_backend(mode, options)
    return _backends[key]


def close_backends() -> None:
    """Release every cached decoder of this process."""
    while _backends:
        _backends.popitem()[1].close()


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
            pts = _run_backend(backend_for(mode, options), info, options, deadline, warnings, sink)
            return _Decoded(info, mode, fallback_reason, warnings, pts, sink)
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
) -> NDArray[np.float64]:
    stamps: list[NDArray[np.float64]] = []
    batch: FrameBatch
    for batch in backend.decode(info, options, deadline, warnings):
        sink.write(batch.frames)
        stamps.append(batch.pts_s)
    pts = np.concatenate(stamps) if stamps else np.empty(0, dtype=np.float64)
    if pts.size == 0:
        detail = f": {warnings[0]}" if warnings else ""
        raise DecodeError(Reason.CORRUPT, f"no frame could be decoded{detail}", path=info.path)
    return pts


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
    out.parent.mkdir(parents=True, exist_ok=True)

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
