"""The streaming .npy writer: batches in, one valid file out on commit, nothing at all otherwise."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from frames_pipeline.decode import DecodeError, Reason
from frames_pipeline.decode._npy import NpyStreamWriter, _header, save_npy_atomic

FRAME = (27, 48, 3)


def batches(sizes: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (n, *FRAME), dtype=np.uint8) for n in sizes]


def test_batches_stream_into_one_loadable_file(tmp_path: Path) -> None:
    out = tmp_path / "video.npy"
    parts = batches([64, 1, 17])
    writer = NpyStreamWriter(out, FRAME)
    for part in parts:
        writer.write(part)
    assert not out.exists()  # nothing is published before commit
    assert writer.commit() == out
    expected = np.concatenate(parts)
    np.testing.assert_array_equal(np.load(out), expected)
    np.testing.assert_array_equal(np.load(out, mmap_mode="r"), expected)
    assert [p.name for p in tmp_path.iterdir()] == ["video.npy"]


def test_commit_with_no_frames_writes_an_empty_array(tmp_path: Path) -> None:
    out = tmp_path / "empty.npy"
    NpyStreamWriter(out, FRAME).commit()
    loaded = np.load(out)
    assert loaded.shape == (0, *FRAME) and loaded.dtype == np.uint8


def test_commit_replaces_an_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "video.npy"
    np.save(out, np.zeros(3))
    writer = NpyStreamWriter(out, FRAME)
    writer.write(batches([2])[0])
    writer.commit()
    assert np.load(out).shape == (2, *FRAME)


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    writer = NpyStreamWriter(tmp_path / "video.npy", FRAME)
    writer.write(batches([5])[0])
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_exception_inside_the_with_block_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), NpyStreamWriter(tmp_path / "video.npy", FRAME) as writer:
        writer.write(batches([5])[0])
        raise RuntimeError("decoder died")
    assert list(tmp_path.iterdir()) == []


def test_leaving_the_with_block_without_commit_leaves_nothing(tmp_path: Path) -> None:
    with NpyStreamWriter(tmp_path / "video.npy", FRAME) as writer:
        writer.write(batches([5])[0])
    assert list(tmp_path.iterdir()) == []


def test_mismatched_batch_is_refused(tmp_path: Path) -> None:
    writer = NpyStreamWriter(tmp_path / "video.npy", FRAME)
    with pytest.raises(ValueError):
        writer.write(np.zeros((2, 48, 27, 3), np.uint8))
    with pytest.raises(ValueError):
        writer.write(np.zeros((2, *FRAME), np.float32))
    writer.abort()


def test_unwritable_folder_is_a_write_failure(tmp_path: Path) -> None:
    with pytest.raises(DecodeError) as caught:
        NpyStreamWriter(tmp_path / "no_such_folder" / "video.npy", FRAME)
    assert caught.value.reason == Reason.WRITE_FAILED


@pytest.mark.parametrize("count", [0, 10**9, 2**40])
def test_header_holds_large_counts(count: int) -> None:
    # Days of 60 fps video or more: the reserved header slot must still fit the shape.
    header = _header(np.dtype(np.uint8), (count, 1080, 1920, 3))
    assert len(header) % 64 == 0
    stream = io.BytesIO(header)
    assert np.lib.format.read_magic(stream) == (1, 0)
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    assert (shape, fortran, dtype) == ((count, 1080, 1920, 3), False, np.dtype(np.uint8))
    assert stream.tell() == len(header)


def test_save_npy_atomic_round_trips_timestamps(tmp_path: Path) -> None:
    pts = np.array([0.0, 1 / 30, 0.1, 0.2])
    out = save_npy_atomic(tmp_path / "video.pts.npy", pts)
    np.testing.assert_array_equal(np.load(out), pts)
    assert [p.name for p in tmp_path.iterdir()] == ["video.pts.npy"]
