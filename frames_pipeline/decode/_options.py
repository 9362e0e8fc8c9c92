"""Decode settings shared by the library, the command line, the NeMo stage and the Dagster resource."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

DecodeMode = Literal["auto", "pynvc", "ffmpeg_gpu", "ffmpeg_cpu"]
DECODE_MODES: tuple[str, ...] = get_args(DecodeMode)
GPU_MODES = ("pynvc", "ffmpeg_gpu")
# Larger than any codec's level limit (8192x8192 HEVC/AV1); a header above this is a decompression bomb.
DEFAULT_MAX_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class DecodeOptions:
    """How to turn one video into frames. Frozen and picklable: worker processes receive it as is."""

    output_hw: tuple[int, int] = (27, 48)
    mode: str = "auto"
    gpu_id: int = 0
    batch_size: int = 64
    timeout_s: float = 600.0
    threads: int = 0
    fallback_to_cpu: bool = True
    ffmpeg_binary: str | None = None
    allow_remote: bool = False
    allowed_roots: tuple[str, ...] = field(default=())
    max_pixels: int = DEFAULT_MAX_PIXELS
    # FFmpeg's H.264/HEVC software decoders skip their in-loop deblocking filter (``-skip_loop_filter
    # all``): 15-20% less decoding CPU, slightly blockier frames. GPU decoders filter in hardware
    # and ignore it; bench/results/transnet.md measures what it does to TransNetV2's cuts.
    skip_loop_filter: bool = False

    def __post_init__(self) -> None:
        if self.mode not in DECODE_MODES:
            raise ValueError(f"unknown decode mode {self.mode!r}; valid modes: {', '.join(DECODE_MODES)}")
        h, w = self.output_hw
        if h < 1 or w < 1:
            raise ValueError(f"output_hw must be two positive ints (height, width), got {self.output_hw!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        object.__setattr__(self, "output_hw", (int(h), int(w)))
        object.__setattr__(self, "allowed_roots", tuple(str(r) for r in self.allowed_roots))


def with_overrides(options: DecodeOptions | None, overrides: Mapping[str, Any]) -> DecodeOptions:
    """``options`` (default: ``DecodeOptions()``) with the fields named in ``overrides`` replaced."""
    base = options or DecodeOptions()
    return replace(base, **overrides) if overrides else base
