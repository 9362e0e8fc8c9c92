"""Which ffmpeg executable to run: the caller's, or the static one bundled with imageio-ffmpeg."""

from __future__ import annotations

import shutil
from pathlib import Path

from frames_pipeline.decode._errors import DecodeError, Reason


def find_ffmpeg(binary: str | None = None) -> str:
    """Path of ``binary`` (a path or a name on PATH), or of the bundled ffmpeg when None."""
    if binary:
        found = shutil.which(binary) or (binary if Path(binary).is_file() else None)
        if found is None:
            raise DecodeError(Reason.NOT_FOUND, f"ffmpeg binary {binary!r} not found")
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()
