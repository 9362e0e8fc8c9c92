"""The benchmark's deterministic corpus: textured, moving clips that cost a decoder what real video does."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from frames_pipeline.demo.clips import pattern_frame, write_video


@dataclass(frozen=True)
class ClipSpec:
    name: str
    codec: str
    height: int
    width: int
    frames: int
    count: int = 1
    fps: int = 30
    copies: int = 1  # each clip listed this many times: a many-video set at the cost of one encode
    files: str | None = None  # the set whose encoded clips these are (None: its own)

    @property
    def many_videos(self) -> bool:
        """Whether this set is many videos, what a shard is (the pool's sets), rather than one."""
        return self.count * self.copies > 1


def copies_of(spec: ClipSpec, copies: int) -> ClipSpec:
    """``spec``'s clips, each listed ``copies`` times, as the set ``<name>_x<copies>``."""
    return replace(spec, name=f"{spec.name}_x{copies}", copies=copies, files=spec.name)


_FULL_SINGLE = (
    ClipSpec("h264_1080p", "libx264", 1080, 1920, 600),
    ClipSpec("h264_720p", "libx264", 720, 1280, 600),
    ClipSpec("hevc_1080p", "libx265", 1080, 1920, 600),
)
FULL: tuple[ClipSpec, ...] = (
    *_FULL_SINGLE,
    ClipSpec("short_360p", "libx264", 360, 640, 60, count=200),
    ClipSpec("steady_360p", "libx264", 360, 640, 1200),
    ClipSpec("long_360p", "libx264", 360, 640, 18000),
    *(copies_of(spec, 8) for spec in _FULL_SINGLE),
)
# Same shapes, a fraction of the work: for trying the harness, not for figures.
_QUICK_SINGLE = (
    ClipSpec("h264_1080p", "libx264", 1080, 1920, 60),
    ClipSpec("h264_720p", "libx264", 720, 1280, 60),
    ClipSpec("hevc_1080p", "libx265", 1080, 1920, 60),
)
QUICK: tuple[ClipSpec, ...] = (
    *_QUICK_SINGLE,
    ClipSpec("short_360p", "libx264", 360, 640, 30, count=10),
    ClipSpec("steady_360p", "libx264", 360, 640, 300),
    ClipSpec("long_360p", "libx264", 360, 640, 900),
    *(copies_of(spec, 8) for spec in _QUICK_SINGLE),
)


# What bench.shard runs through the real shard job: ten-second 1080p clips. A shard lists each distinct
# clip several times (decoding costs the same; encoding 100 distinct 1080p clips would cost minutes).
SHARD_CLIPS: tuple[ClipSpec, ...] = (
    ClipSpec("shard_h264_1080p", "libx264", 1080, 1920, 300, count=10),
    ClipSpec("shard_hevc_1080p", "libx265", 1080, 1920, 300, count=10),
)


def quick_shard_clip(spec: ClipSpec) -> ClipSpec:
    """A shard clip cut to a second, four distinct: for trying the harness, not for figures."""
    return replace(spec, frames=30, count=4)


def textured_frames(count: int, height: int, width: int, seed: int) -> Iterator[NDArray[np.uint8]]:
    """The orientation pattern blended with a scrolling noise texture: detail and motion to decode."""
    rng = np.random.default_rng(seed)
    cell = 8
    texture = rng.integers(0, 256, (height // cell + 2, width // cell + 2, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(texture, cell, axis=0), cell, axis=1)
    for i in range(count):
        dy, dx = (i * 2) % cell, (i * 3) % (cell * 4)
        moving = np.roll(texture, dx, axis=1)[dy : dy + height, :width]
        base = pattern_frame(i, height, width).astype(np.uint16)
        yield ((base * 3 + moving) // 4).astype(np.uint8)


def build(directory: Path, specs: tuple[ClipSpec, ...]) -> dict[str, list[Path]]:
    """Write every clip once (kept between runs); returns clip paths by spec name, copies listed as often."""
    corpus: dict[str, list[Path]] = {}
    for spec in specs:
        stem = spec.files or spec.name
        folder = directory / f"{stem}-{spec.frames}f"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index in range(spec.count):
            path = folder / f"{stem}_{index:03d}.mp4"
            if not path.exists():
                partial = path.with_suffix(".partial.mp4")
                frames = textured_frames(spec.frames, spec.height, spec.width, seed=index)
                write_video(
                    partial,
                    frames,
                    size=(spec.height, spec.width),
                    fps=spec.fps,
                    codec=spec.codec,
                    crf=23,
                    preset="veryfast",
                    threads=0,
                )
                partial.rename(path)
            paths.append(path)
        corpus[spec.name] = paths * spec.copies
    return corpus
