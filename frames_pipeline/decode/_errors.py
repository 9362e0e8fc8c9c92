"""Typed decode failures: every failed video carries one reason code a user can act on."""

from __future__ import annotations

import re
from enum import StrEnum

# Lone surrogates; U+DC80..U+DCFF are the bytes 0x80..0xFF of a file name that is not UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


class Reason(StrEnum):
    """Why a video produced no frames (or only some)."""

    NOT_FOUND = "not_found"
    NOT_A_VIDEO = "not_a_video"
    NO_VIDEO_STREAM = "no_video_stream"
    UNSUPPORTED_CODEC = "unsupported_codec"
    CORRUPT = "corrupt"
    TIMEOUT = "timeout"
    ZERO_FRAMES = "zero_frames"
    TOO_LARGE = "too_large"
    REMOTE_INPUT = "remote_input"
    OUTSIDE_ALLOWED_ROOTS = "outside_allowed_roots"
    GPU_UNAVAILABLE = "gpu_unavailable"
    WORKER_CRASHED = "worker_crashed"
    WRITE_FAILED = "write_failed"
    INTERNAL_ERROR = "internal_error"

    @property
    def hint(self) -> str:
        """What a user can do about a video that failed for this reason."""
        return _HINTS[self]


_HINTS: dict[Reason, str] = {
    Reason.NOT_FOUND: "check the path (relative manifest paths resolve against the manifest's folder)",
    Reason.NOT_A_VIDEO: "the file is not a container FFmpeg can read as video",
    Reason.NO_VIDEO_STREAM: "the file has no video stream (audio only, or only cover art)",
    Reason.UNSUPPORTED_CODEC: "use mode='ffmpeg_cpu' or 'auto', which decode every codec FFmpeg knows",
    Reason.CORRUPT: "the bitstream is damaged; re-encode or re-download the source",
    Reason.TIMEOUT: "raise timeout_s, or split the video",
    Reason.ZERO_FRAMES: "the video stream holds no decodable frame",
    Reason.TOO_LARGE: "the declared picture size exceeds max_pixels; raise it if the video is genuine",
    Reason.REMOTE_INPUT: "playlists, concat scripts and URLs are refused unless allow_remote=True",
    Reason.OUTSIDE_ALLOWED_ROOTS: "move the file under an allowed root or extend allowed_roots",
    Reason.GPU_UNAVAILABLE: "no usable CUDA device: use mode='auto' or 'ffmpeg_cpu'",
    Reason.WORKER_CRASHED: "the decoder process died; the video was retried and failed again",
    Reason.WRITE_FAILED: "the output could not be written (disk full or not writable)",
    Reason.INTERNAL_ERROR: "a bug in frames_pipeline: please report it with the video",
}


def printable(text: str) -> str:
    """``text`` as valid UTF-8, for logs, Parquet and the UI: the raw bytes of a non-UTF-8 file name
    are shown as ``\\xNN``, any other lone surrogate as U+FFFD."""
    return _SURROGATE.sub(lambda m: f"\\x{ord(m[0]) - 0xDC00:02x}" if "\udc80" <= m[0] <= "\udcff" else "\ufffd", text)


class DecodeError(Exception):
    """A video could not be decoded; ``reason`` says why in one stable word."""

    def __init__(self, reason: Reason | str, message: str, *, path: str | None = None) -> None:
        self.reason = Reason(reason)
        # FFmpeg's messages quote the file name: keep them storable whatever bytes it has.
        self.message = printable(message)
        self.path = None if path is None else printable(path)
        super().__init__(str(self))

    @property
    def hint(self) -> str:
        """What the user can do about it."""
        return self.reason.hint

    def __str__(self) -> str:
        where = f" [{self.path}]" if self.path else ""
        return f"{self.reason.value}: {self.message}{where} ({self.hint})"

    def __reduce__(self) -> tuple[object, ...]:
        # Worker processes send errors back through pickle; keep the keyword argument.
        return (_rebuild, (self.reason.value, self.message, self.path))


def _rebuild(reason: str, message: str, path: str | None) -> DecodeError:
    return DecodeError(reason, message, path=path)
