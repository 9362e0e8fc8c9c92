"""Unit tests of the area resize, colour conversion and rotation every backend finishes with."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from frames_pipeline.decode._resize import ColourSpec, FrameShrinker, ShrinkBatch, coded_size, orient, yuv_to_rgb

# (Kr, Kb) from the standards themselves, independent of the module under test.
STANDARD_K = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593)}


def shrink_grey(y: NDArray, output_hw: tuple[int, int], bit_depth: int = 8) -> NDArray[np.uint8]:
    """Area-resize one luma plane with neutral chroma through FrameShrinker; full range makes RGB == Y."""
    mid = 1 << (bit_depth - 1)
    chroma_hw = (y.shape[0] // 2, y.shape[1] // 2) if y.shape[0] % 2 == y.shape[1] % 2 == 0 else y.shape
    uv = np.full(chroma_hw, mid, dtype=y.dtype)
    shrinker = FrameShrinker(y.shape, chroma_hw, output_hw, ColourSpec("bt601", full_range=True, bit_depth=bit_depth))
    rgb = shrinker(y[None], uv[None], uv[None])[0]
    assert rgb.shape == (*output_hw, 3)
    # Neutral chroma gives grey; G is computed from R and B, so it may round the other way.
    assert np.abs(rgb.astype(np.int16) - rgb[..., :1]).max() <= 1
    return rgb[..., 0]


def encode_yuv(rgb: NDArray[np.float64], matrix: str, full_range: bool, bit_depth: int) -> NDArray[np.float64]:
    """RGB (0..255) to Y'CbCr code values by the standard's forward equations."""
    kr, kb = STANDARD_K[matrix]
    r, g, b = np.moveaxis(rgb / 255.0, -1, 0)
    y = kr * r + (1 - kr - kb) * g + kb * b
    cb = (b - y) / (2 * (1 - kb))
    cr = (r - y) / (2 * (1 - kr))
    unit = 1 << (bit_depth - 8)
    if full_range:
        top = (1 << bit_depth) - 1
        return np.stack([y * top, 128 * unit + cb * top, 128 * unit + cr * top], axis=-1)
    return np.stack([(16 + 219 * y) * unit, (128 + 224 * cb) * unit, (128 + 224 * cr) * unit], axis=-1)


def decode_rgb(yuv: NDArray[np.float64], colour: ColourSpec) -> NDArray[np.uint8]:
    planes = [yuv[..., i].astype(np.float32) for i in range(3)]
    return yuv_to_rgb(*planes, colour)


@pytest.mark.parametrize("in_hw", [(1080, 1920), (144, 256), (37, 65), (27, 48), (10, 20)])
def test_constant_plane_stays_constant(in_hw: tuple[int, int]) -> None:
    for value in (0, 77, 255):
        assert (shrink_grey(np.full(in_hw, value, np.uint8), (27, 48)) == value).all()


def test_constant_10bit_plane_stays_constant() -> None:
    out = shrink_grey(np.full((144, 256), 700, np.uint16), (27, 48), bit_depth=10)
    assert (out == round(700 / 1023 * 255)).all()


def test_integer_ratio_is_the_block_mean() -> None:
    y = np.random.default_rng(1).integers(0, 256, (108, 192), dtype=np.uint8)
    expected = y.reshape(27, 4, 48, 4).mean(axis=(1, 3))
    diff = np.abs(shrink_grey(y, (27, 48)).astype(np.float64) - expected)
    assert diff.max() <= 0.5 + 1e-3
    # Off a rounding tie the result is exactly the rounded block mean.
    clear = np.abs(expected % 1 - 0.5) > 0.01
    assert (diff[clear] < 0.5).all()


@pytest.mark.parametrize(("in_hw", "out_hw"), [((144, 256), (27, 48)), ((37, 65), (27, 48)), ((1080, 1920), (27, 48))])
def test_non_integer_ratio_preserves_the_mean(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(2)
    ramp = np.linspace(0, 200, in_hw[1])[None, :]
    y = np.clip(ramp + rng.integers(0, 56, in_hw), 0, 255).astype(np.uint8)
    out = shrink_grey(y, out_hw)
    assert abs(out.mean() - y.mean()) < 0.1
    assert y.min() <= out.min() and out.max() <= y.max()


def test_fine_stripes_average_instead_of_aliasing() -> None:
    y = np.zeros((144, 256), np.uint8)
    y[:, ::2] = 255
    out = shrink_grey(y, (27, 48))
    # Each output cell covers 5.33 columns: between 2.33 and 3 of them are bright.
    assert out.min() >= 255 * 2.33 / 5.33 - 1
    assert out.max() <= 255 * 3 / 5.33 + 1


def test_batched_frames_resize_like_single_frames() -> None:
    y = np.random.default_rng(3).integers(16, 236, (3, 144, 256), dtype=np.uint8)
    uv = np.random.default_rng(4).integers(16, 241, (3, 72, 128), dtype=np.uint8)
    shrinker = FrameShrinker((144, 256), (72, 128), (27, 48), ColourSpec())
    batched = shrinker(y, uv, uv[::-1])
    singles = np.concatenate([shrinker(y[i : i + 1], uv[i : i + 1], uv[2 - i : 3 - i]) for i in range(3)])
    np.testing.assert_array_equal(batched, singles)


def test_shrink_batch_finishes_like_one_call() -> None:
    y = np.random.default_rng(6).integers(16, 236, (5, 144, 256), dtype=np.uint8)
    uv = np.random.default_rng(7).integers(16, 241, (5, 72, 128), dtype=np.uint8)
    shrinker = FrameShrinker((144, 256), (72, 128), (27, 48), ColourSpec())
    batch = ShrinkBatch(shrinker, max_frames=2)
    finished = []
    for i in range(5):
        batch.add(y[i], uv[i], uv[4 - i])
        if batch.full:
            finished.append(batch.finish())
    finished.append(batch.finish())
    assert [len(f) for f in finished] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(finished), shrinker(y, uv, uv[::-1]))


def test_wrong_plane_size_is_refused() -> None:
    shrinker = FrameShrinker((144, 256), (72, 128), (27, 48), ColourSpec())
    plane = np.zeros((1, 144, 256), np.uint8)
    with pytest.raises(ValueError):
        shrinker(plane, plane, plane)


@pytest.mark.parametrize(
    ("yuv", "colour", "rgb"),
    [
        ((16, 128, 128), ColourSpec("bt601"), (0, 0, 0)),
        ((235, 128, 128), ColourSpec("bt601"), (255, 255, 255)),
        ((126, 128, 128), ColourSpec("bt709"), (128, 128, 128)),
        ((81.481, 90.221, 240), ColourSpec("bt601"), (255, 0, 0)),
        ((62.559, 102.338, 240), ColourSpec("bt709"), (255, 0, 0)),
        ((172.633, 41.662, 26.268), ColourSpec("bt709"), (0, 255, 0)),
        ((0, 128, 128), ColourSpec("bt601", full_range=True), (0, 0, 0)),
        ((255, 128, 128), ColourSpec("bt601", full_range=True), (255, 255, 255)),
        ((64, 512, 512), ColourSpec("bt709", bit_depth=10), (0, 0, 0)),
        ((940, 512, 512), ColourSpec("bt709", bit_depth=10), (255, 255, 255)),
        ((250.236, 409.352, 960), ColourSpec("bt709", bit_depth=10), (255, 0, 0)),
    ],
)
def test_yuv_to_rgb_known_values(
    yuv: tuple[float, float, float], colour: ColourSpec, rgb: tuple[int, int, int]
) -> None:
    out = decode_rgb(np.asarray(yuv, dtype=np.float64)[None], colour)[0]
    assert np.abs(out.astype(int) - rgb).max() <= 1, out


def test_the_matrix_matters() -> None:
    bt709_red = np.asarray([[62.559, 102.338, 240]])
    assert np.abs(decode_rgb(bt709_red, ColourSpec("bt601")).astype(int) - (255, 0, 0)).max() > 10


@pytest.mark.parametrize("matrix", sorted(STANDARD_K))
@pytest.mark.parametrize("full_range", [False, True])
@pytest.mark.parametrize("bit_depth", [8, 10])
def test_yuv_to_rgb_inverts_the_standard_encoding(matrix: str, full_range: bool, bit_depth: int) -> None:
    rgb = np.random.default_rng(5).integers(0, 256, (500, 3)).astype(np.float64)
    yuv = encode_yuv(rgb, matrix, full_range, bit_depth)
    out = decode_rgb(yuv, ColourSpec(matrix, full_range=full_range, bit_depth=bit_depth))
    assert np.abs(out.astype(int) - rgb).max() <= 1


@pytest.mark.parametrize(
    ("colorspace", "color_range", "bits", "expected"),
    [
        (1, 1, 8, ColourSpec("bt709", False, 8)),
        (5, 2, 8, ColourSpec("bt601", True, 8)),
        (9, 1, 10, ColourSpec("bt2020", False, 10)),
        (None, None, 8, ColourSpec("bt601", False, 8)),
        (2, 0, 10, ColourSpec("bt601", False, 10)),  # unspecified: BT.601 limited, as swscale assumes
    ],
)
def test_colour_spec_from_ffmpeg_numbers(
    colorspace: int | None, color_range: int | None, bits: int, expected: ColourSpec
) -> None:
    assert ColourSpec.from_ffmpeg(colorspace, color_range, bits) == expected


def test_orient_turns_counter_clockwise_then_mirrors() -> None:
    frames = np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(2, 2, 3, 3)
    assert orient(frames, 0) is frames
    turned = orient(frames, 90)
    assert turned.shape == (2, 3, 2, 3)
    # Counter-clockwise: the top-right corner comes to the top-left.
    np.testing.assert_array_equal(turned[:, 0, 0], frames[:, 0, -1])
    np.testing.assert_array_equal(turned, np.rot90(frames, 1, axes=(1, 2)))
    np.testing.assert_array_equal(orient(frames, -90), orient(frames, 270))
    np.testing.assert_array_equal(orient(frames, 180), frames[:, ::-1, ::-1])
    assert turned.flags.c_contiguous
    mirrored = orient(frames, 90, mirrored=True)  # the turn first, then left and right swap
    np.testing.assert_array_equal(mirrored, turned[:, :, ::-1])
    np.testing.assert_array_equal(orient(frames, 0, mirrored=True), frames[:, :, ::-1])
    assert mirrored.flags.c_contiguous


def test_coded_size_swaps_for_quarter_turns() -> None:
    assert coded_size((27, 48), 0) == (27, 48)
    assert coded_size((27, 48), 90) == (48, 27)
    assert coded_size((27, 48), -90) == (48, 27)
    assert coded_size((27, 48), 180) == (27, 48)


def test_shrinker_rotates_to_the_requested_output_size() -> None:
    y = np.zeros((144, 256), np.uint8)
    y[:36, :64] = 255  # bright top-left corner
    uv = np.full((72, 128), 128, np.uint8)
    shrinker = FrameShrinker((144, 256), (72, 128), (48, 27), ColourSpec(full_range=True), rotation=90)
    out = shrinker(y[None], uv[None], uv[None])[0, ..., 0]
    assert out.shape == (48, 27)
    # A quarter turn counter-clockwise takes the top-left corner to the bottom-left.
    assert out[-6:, :3].min() > 200
    assert out[:6, :3].max() < 50
