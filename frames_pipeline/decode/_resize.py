"""The one antialiased resize and colour conversion every backend finishes with.

Backends hand over Y'CbCr planes (full size on CPU, already shrunk by the GPU elsewhere); this
module area-averages each plane to the output size, converts to RGB with the stream's own matrix
and range, and applies the display orientation (a rotation, then a mirror). Scaling before the
colour conversion is what FFmpeg's swscale does too; doing it here, on small arrays, keeps every
mode's pixels the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

# (Kr, Kb) of the Y'CbCr matrices FFmpeg knows by these colorspace names.
_MATRICES: dict[str, tuple[float, float]] = {
    "bt709": (0.2126, 0.0722),
    "bt601": (0.299, 0.114),
    "smpte240m": (0.212, 0.087),
    "fcc": (0.30, 0.11),
    "bt2020": (0.2627, 0.0593),
}
# AVColorSpace numbers as FFmpeg (and PyAV's frame.colorspace) report them.
_AVCOL_SPC: dict[int, str] = {
    1: "bt709",
    4: "fcc",
    5: "bt601",
    6: "bt601",
    7: "smpte240m",
    9: "bt2020",
    10: "bt2020",
}


@dataclass(frozen=True)
class ColourSpec:
    """How to read the Y'CbCr samples of one stream."""

    matrix: str = "bt601"
    full_range: bool = False
    bit_depth: int = 8

    @classmethod
    def from_ffmpeg(cls, colorspace: int | None, color_range: int | None, bit_depth: int) -> ColourSpec:
        """From FFmpeg's AVColorSpace/AVColorRange numbers; unspecified is BT.601 limited, as in swscale."""
        return cls(
            matrix=_AVCOL_SPC.get(int(colorspace or 0), "bt601"),
            full_range=int(color_range or 0) == 2,
            bit_depth=bit_depth,
        )


_GROUPS_PER_CELL = 2
# Sums of frames waiting for ``ShrinkBatch.finish``: 64 frames at the default output size (any input
# size: groups scale with it), fewer for large outputs, so memory stays bounded.
_BATCH_BYTES = 8 << 20


@lru_cache(maxsize=256)
def _area_plan(n_in: int, n_out: int) -> tuple[int, NDArray[np.float32]]:
    """Group size and weights that area-resample ``n_in`` samples to ``n_out``.

    Samples are first summed in groups of ``group`` (exact integer boxes over the big array),
    then a small matrix spreads the group sums over the output cells by their overlap: the exact
    area average of the piecewise-constant group means. Groups are half an output cell or less,
    so the extra blur stays under half a cell (none when the ratio is a whole number).
    """
    group = max(1, n_in // (_GROUPS_PER_CELL * n_out))
    starts = np.arange(0, n_in, group, dtype=np.float64)
    sizes = np.minimum(starts + group, n_in) - starts
    scale = n_in / n_out
    cell_lo = np.arange(n_out, dtype=np.float64)[:, None] * scale
    overlap = np.minimum(cell_lo + scale, starts + sizes) - np.maximum(cell_lo, starts)
    weights = np.clip(overlap, 0.0, None) / scale / sizes
    return group, weights.astype(np.float32)


class FrameShrinker:
    """Area-resize planes of one stream to ``output_hw`` RGB, in two steps that batch well.

    ``reduce`` is the only pass over full-size planes (exact group sums, per frame as frames arrive);
    ``finish`` turns a batch of reduced planes into RGB with a few small matrix products, so the
    per-frame Python cost stays low even at thousands of frames per second (see ``ShrinkBatch``).
    """

    def __init__(
        self,
        luma_hw: tuple[int, int],
        chroma_hw: tuple[int, int],
        output_hw: tuple[int, int],
        colour: ColourSpec,
        rotation: int = 0,
        mirrored: bool = False,
    ) -> None:
        self.luma_hw = luma_hw
        self.output_hw = output_hw
        self.colour = colour
        self.rotation = rotation
        self.mirrored = mirrored
        out_h, out_w = coded_size(output_hw, rotation)
        peak = (1 << colour.bit_depth) - 1
        self._luma = _PlanePlan(luma_hw, out_h, out_w, peak)
        self._chroma = _PlanePlan(chroma_hw, out_h, out_w, peak)

    @property
    def sums_shapes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The (rows, columns) of one frame's reduced luma and chroma planes."""
        return self._luma.sums_hw, self._chroma.sums_hw

    def reduce(
        self, y: NDArray, u: NDArray, v: NDArray, out: tuple[NDArray[np.float32], ...] | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """Group sums of planes shaped (..., h, w), into ``out`` when given; the input of ``finish``."""
        sy, su, sv = out if out is not None else (None, None, None)
        return self._luma.reduce(y, sy), self._chroma.reduce(u, su), self._chroma.reduce(v, sv)

    def finish(self, y: NDArray[np.float32], u: NDArray[np.float32], v: NDArray[np.float32]) -> NDArray[np.uint8]:
        """Reduced planes (N, rows, columns) -> (N, H, W, 3) RGB in display orientation."""
        rgb = yuv_to_rgb(self._luma.finish(y), self._chroma.finish(u), self._chroma.finish(v), self.colour)
        return orient(rgb, self.rotation, self.mirrored)

    def __call__(self, y: NDArray, u: NDArray, v: NDArray) -> NDArray[np.uint8]:
        """Both steps at once, for planes already small (GPU paths) or a single batch."""
        return self.finish(*self.reduce(y, u, v))


class ShrinkBatch:
    """Frames reduced one at a time into reused buffers, then finished together.

    ``finish`` makes some twenty numpy calls whatever the batch size; made per frame, their fixed
    cost was a fifth of the CPU path's own time on 360p video, which decodes at over a thousand frames/s.
    """

    def __init__(self, shrinker: FrameShrinker, max_frames: int = 64) -> None:
        self.shrinker = shrinker
        luma_hw, chroma_hw = shrinker.sums_shapes
        frame_bytes = 4 * (luma_hw[0] * luma_hw[1] + 2 * chroma_hw[0] * chroma_hw[1])
        capacity = max(1, min(max_frames, _BATCH_BYTES // frame_bytes))
        self._sums = tuple(np.empty((capacity, *hw), np.float32) for hw in (luma_hw, chroma_hw, chroma_hw))
        self.count = 0

    @property
    def full(self) -> bool:
        return self.count == len(self._sums[0])

    def add(self, y: NDArray, u: NDArray, v: NDArray) -> None:
        """Reduce one frame's (h, w) planes; the caller finishes the batch when ``full``."""
        self.shrinker.reduce(y, u, v, out=tuple(sums[self.count] for sums in self._sums))
        self.count += 1

    def finish(self) -> NDArray[np.uint8]:
        """RGB (N, H, W, 3) of the frames added since the last call, in the order they came."""
        count, self.count = self.count, 0
        return self.shrinker.finish(*(sums[:count] for sums in self._sums))


class _PlanePlan:
    """Groups and weights for one plane size; the heavy pass is integer, the matrices tiny.

    Keeping every matrix product small matters: a large one would wake the BLAS thread pool,
    whose spinning threads take the cores the video decoder needs. One frame's planes (2-D) are
    reduced in buffers kept between frames, so a plan serves one thread at a time (each decoder
    has its own).
    """

    def __init__(self, in_hw: tuple[int, int], out_h: int, out_w: int, peak: int) -> None:
        self.in_hw = in_hw
        self.rows_group, self.rows_weights = _area_plan(in_hw[0], out_h)
        self.cols_group, cols_weights = _area_plan(in_hw[1], out_w)
        self.cols_weights_t = np.ascontiguousarray(cols_weights.T)
        self.sums_hw = (self.rows_weights.shape[1], cols_weights.shape[1])
        # The narrowest types that hold the sums exactly: integers below 2**16 and 2**24 (float32).
        self.rows_dtype = np.uint16 if self.rows_group * peak <= np.iinfo(np.uint16).max else np.uint32
        exact_f32 = self.rows_group * self.cols_group * peak < 1 << 24
        self._cols_ones = np.ones(self.cols_group, np.float32 if exact_f32 else np.float64)
        self._full_rows = (in_hw[0] // self.rows_group) * self.rows_group
        self._frame_rows, self._frame_padded = self._buffers(())

    def reduce(self, plane: NDArray, out: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
        """Exact sums of ``rows_group`` x ``cols_group`` boxes of planes shaped (..., h, w), into ``out`` when given."""
        if plane.shape[-2:] != self.in_hw:
            raise ValueError(f"plane is {plane.shape[-2:]}, expected {self.in_hw}")
        lead = plane.shape[:-2]
        if out is None:
            out = np.empty((*lead, *self.sums_hw), np.float32)
        if self.cols_group == 1:  # large outputs: no columns to sum
            out[...] = self._row_sums(plane, np.empty((*lead, self.sums_hw[0], self.in_hw[1]), self.rows_dtype))
            return out
        rows, padded = (self._frame_rows, self._frame_padded) if not lead else self._buffers(lead)
        # Columns past the plane's width stay zero, so the last, partial group sums in the same product.
        padded[..., : self.in_hw[1]] = self._row_sums(plane, rows)
        # A product with ones sums the column groups in BLAS, exactly (whole numbers the float type holds):
        # twice as fast as numpy's reductions of short runs along the contiguous axis.
        np.matmul(padded.reshape((*padded.shape[:-1], -1, self.cols_group)), self._cols_ones, out=out)
        return out

    def finish(self, sums: NDArray[np.float32]) -> NDArray[np.float32]:
        return self.rows_weights @ sums @ self.cols_weights_t

    def _buffers(self, lead: tuple[int, ...]) -> tuple[NDArray, NDArray]:
        """Row sums and their zero-padded float copy for planes with leading dimensions ``lead``."""
        groups, width = self.sums_hw[0], self.in_hw[1]
        padded_width = self.sums_hw[1] * self.cols_group
        rows = np.empty((*lead, groups, width), self.rows_dtype)
        return rows, np.zeros((*lead, groups, padded_width), self._cols_ones.dtype)

    def _row_sums(self, plane: NDArray, out: NDArray) -> NDArray:
        """Sum runs of ``rows_group`` rows (axis -2) into ``out``: one reshape pass, the fastest way numpy
        reads a big plane."""
        group, full = self.rows_group, self._full_rows
        if group == 1:
            return plane
        head = plane[..., :full, :].reshape((*plane.shape[:-2], full // group, group, plane.shape[-1]))
        np.add.reduce(head, axis=-2, dtype=self.rows_dtype, out=out[..., : full // group, :])
        if full < plane.shape[-2]:
            np.add.reduce(plane[..., full:, :], axis=-2, dtype=self.rows_dtype, out=out[..., -1, :])
        return out


def yuv_to_rgb(
    y: NDArray[np.float32], u: NDArray[np.float32], v: NDArray[np.float32], colour: ColourSpec
) -> NDArray[np.uint8]:
    """Convert same-sized Y'CbCr sample arrays (in code values) to RGB uint8, channels last."""
    kr, kb = _MATRICES[colour.matrix]
    kg = 1.0 - kr - kb
    unit = float(1 << (colour.bit_depth - 8))
    if colour.full_range:
        top = float((1 << colour.bit_depth) - 1)
        luma = y / top
        cb = (u - 128.0 * unit) / top
        cr = (v - 128.0 * unit) / top
    else:
        luma = (y - 16.0 * unit) / (219.0 * unit)
        cb = (u - 128.0 * unit) / (224.0 * unit)
        cr = (v - 128.0 * unit) / (224.0 * unit)
    r = luma + 2.0 * (1.0 - kr) * cr
    b = luma + 2.0 * (1.0 - kb) * cb
    g = (luma - kr * r - kb * b) / kg
    rgb = np.stack([r, g, b], axis=-1) * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def orient(frames: NDArray[np.uint8], rotation: int, mirrored: bool = False) -> NDArray[np.uint8]:
    """Apply a display orientation to (N, H, W, 3) frames: turn ``rotation`` degrees counter-clockwise
    (FFmpeg's sign), then mirror left to right if ``mirrored`` (``probe.display_orientation``)."""
    turns = (round(rotation / 90) % 4) if rotation else 0
    if turns == 0 and not mirrored:
        return frames
    turned = np.rot90(frames, k=turns, axes=(1, 2))
    return np.ascontiguousarray(turned[:, :, ::-1] if mirrored else turned)


def coded_size(output_hw: tuple[int, int], rotation: int) -> tuple[int, int]:
    """The (height, width) to resize to before rotating, so the rotated result is ``output_hw``."""
    h, w = output_hw
    return (w, h) if round(rotation / 90) % 2 else (h, w)
