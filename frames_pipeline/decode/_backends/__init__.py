"""Decode backends, one module per mode. Each yields small RGB frames and their timestamps in batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from frames_pipeline.decode._options import DecodeOptions
from frames_pipeline.decode._probe import VideoInfo


@dataclass(frozen=True)
class FrameBatch:
    """Consecutive output frames (N, H, W, 3) uint8 and their presentation times in seconds."""

    frames: NDArray[np.uint8]
    pts_s: NDArray[np.float64]


class DamagedStream(Exception):
    """Raised after a multi-threaded decode met damage: frame threads can lose the frames around it,
    so the caller decodes the video again on one thread (damaged files are rare; the retry is cheap)."""


class Backend(Protocol):
    """A decoder for one mode; instances are reused across videos within a process."""

    mode: str

    def unsupported(self, info: VideoInfo) -> str | None:
        """Why this backend cannot take ``info``'s video, or None if it can."""

    def decode(
        self, info: VideoInfo, options: DecodeOptions, deadline: float, warnings: list[str]
    ) -> Iterator[FrameBatch]:
        """Decode every frame of the main stream; append decoder messages to ``warnings``."""

    def close(self) -> None:
        """Release decoders and devices."""


def create_backend(mode: str, options: DecodeOptions) -> Backend:
    """Instantiate the backend for a concrete mode (not "auto")."""
    if mode == "ffmpeg_cpu":
        from frames_pipeline.decode._backends.ffmpeg_cpu import FFmpegCPUBackend

        return FFmpegCPUBackend(options)
    if mode == "ffmpeg_gpu":
        from frames_pipeline.decode._backends.ffmpeg_gpu import FFmpegGPUBackend

        return FFmpegGPUBackend(options)
    if mode == "pynvc":
        from frames_pipeline.decode._backends.pynvc import PyNvcBackend

        return PyNvcBackend(options)
    raise ValueError(f"no backend for mode {mode!r}")
