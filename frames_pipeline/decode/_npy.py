"""Streaming ``.npy`` output: frames go to disk in chunks and the file appears only when complete.

The array header is written last (its shape is not known until the stream ends), into a fixed-size
slot reserved at the start, and the finished file is renamed into place in one step: a reader sees
either no file or a whole, valid one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType

import numpy as np
from numpy.typing import NDArray

from frames_pipeline.decode._errors import DecodeError, Reason

_MAGIC = b"\x93NUMPY\x01\x00"
_HEADER_BYTES = 128  # magic + length + dict, padded; a multiple of 64 as the format asks


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    body = text.encode("latin1")
    pad = _HEADER_BYTES - len(_MAGIC) - 2 - len(body) - 1
    if pad < 0:
        raise ValueError(f"shape {shape} does not fit the reserved .npy header")
    return _MAGIC + (_HEADER_BYTES - len(_MAGIC) - 2).to_bytes(2, "little") + body + b" " * pad + b"\n"


def pts_path(frames_path: str | os.PathLike[str]) -> Path:
    """Where the timestamps of ``<stem>.npy`` live: ``<stem>.pts.npy``."""
    path = Path(frames_path)
    return path.with_name(path.name.removesuffix(".npy") + ".pts.npy")


def partial_name(path: Path) -> Path:
    """The hidden temporary name a file is written under before it is published."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def remove_partials(path: str | os.PathLike[str]) -> None:
    """Delete temporary files left for ``path`` by writers that were killed (any process id)."""
    final = Path(path)
    for leftover in final.parent.glob(f".{final.name}.*.partial"):
        leftover.unlink(missing_ok=True)


class NpyStreamWriter:
    """Append frame batches of one shape and dtype; ``commit`` publishes, ``abort`` leaves nothing."""

    def __init__(self, path: str | os.PathLike[str], frame_shape: tuple[int, ...], dtype: type = np.uint8) -> None:
        self.path = Path(path)
        self.frame_shape = tuple(frame_shape)
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._tmp = partial_name(self.path)
        try:
            self._fh = open(self._tmp, "wb")  # noqa: SIM115 - held open across write() calls
            self._fh.write(b"\0" * _HEADER_BYTES)
        except OSError as exc:
            raise DecodeError(Reason.WRITE_FAILED, f"cannot create {self._tmp}: {exc}") from None

    def write(self, frames: NDArray) -> None:
        if frames.shape[1:] != self.frame_shape or frames.dtype != self.dtype:
            raise ValueError(f"batch {frames.shape} {frames.dtype} does not match {self.frame_shape} {self.dtype}")
        try:
            self._fh.write(np.ascontiguousarray(frames).data)
        except OSError as exc:
            self.abort()
            raise DecodeError(Reason.WRITE_FAILED, f"writing {self.path.name}: {exc}") from None
        self.count += len(frames)

    def commit(self) -> Path:
        try:
            self._fh.seek(0)
            self._fh.write(_header(self.dtype, (self.count, *self.frame_shape)))
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self.abort()
            raise DecodeError(Reason.WRITE_FAILED, f"publishing {self.path.name}: {exc}") from None
        return self.path

    def abort(self) -> None:
        # Closing flushes buffered bytes, which fails again on a full disk: the file goes regardless.
        with contextlib.suppress(OSError):
            self._fh.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> NpyStreamWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._fh.closed:  # left without commit(): nothing may stay behind
            self.abort()


def save_npy_atomic(path: str | os.PathLike[str], array: NDArray) -> Path:
    """``np.save`` under a temporary name, then rename: for small arrays such as timestamps."""
    final = Path(path)
    writer = NpyStreamWriter(final, array.shape[1:], array.dtype.type)
    with writer:
        writer.write(array)
        return writer.commit()
