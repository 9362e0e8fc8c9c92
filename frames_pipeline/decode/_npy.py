"""Streaming ``.npy`` output: frames go to disk in chunks and the file appears only when complete.

The array header is written last (its shape is not known until the stream ends), into a fixed-size
slot reserved at the start, and the finished file is renamed into place in one step: a reader sees
either no file or a whole, valid one.

Output folders may be shared with people who should not choose where our bytes go: a temporary
name is unpredictable, created exclusively and never through a symbolic link (``O_CREAT | O_EXCL |
O_NOFOLLOW``), so a link planted beside the output is never written through, and the final rename
never replaces a link or anything else that is not a regular file. The temporary name is a short
digest of the final one (37 bytes whatever its length), so every name the file system takes can be
written, and a killed writer's leftovers are found again from the final name alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from pathlib import Path
from types import TracebackType

import numpy as np
from numpy.typing import NDArray

from frames_pipeline.decode._errors import DecodeError, Reason

_MAGIC = b"\x93NUMPY\x01\x00"
_HEADER_BYTES = 128  # magic + length + dict, padded; a multiple of 64 as the format asks
# Fresh random names tried before giving up: a clash with an existing entry (planted, or one in 2**64) is skipped.
_PARTIAL_ATTEMPTS = 8
_CREATE_PARTIAL = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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


def _partial_prefix(final: Path) -> str:
    """How every temporary name of ``final`` begins: a digest of its name, not the name itself."""
    return f".{hashlib.sha256(os.fsencode(final.name)).hexdigest()[:16]}."


def _create_partial(final: Path) -> tuple[int, Path]:
    """A new, empty temporary file beside ``final`` (an open descriptor and its path), under a name
    nobody could guess, created exclusively: never an existing file, never through a link."""
    for _ in range(_PARTIAL_ATTEMPTS):
        partial = final.with_name(f"{_partial_prefix(final)}{secrets.token_hex(8)}.partial")
        try:
            return os.open(partial, _CREATE_PARTIAL, 0o666), partial
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {final.name} after {_PARTIAL_ATTEMPTS} tries")


def _publish_partial(partial: Path, final: Path) -> None:
    """Rename ``partial`` to ``final`` in one step. An existing regular file is replaced (a re-run);
    a link or anything else at ``final`` is refused rather than replaced."""
    try:
        existing = os.lstat(final)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISREG(existing.st_mode):
            raise FileExistsError(f"{final.name} exists and is not a regular file (a link?); it is not replaced")
    os.replace(partial, final)


def partials(path: str | os.PathLike[str]) -> list[Path]:
    """The temporary files being written for ``path``, or left by writers that were killed."""
    final = Path(path)
    return sorted(final.parent.glob(f"{_partial_prefix(final)}*.partial"))


def remove_partials(path: str | os.PathLike[str]) -> None:
    """Delete temporary files left for ``path`` by writers that were killed (any process)."""
    for leftover in partials(path):
        leftover.unlink(missing_ok=True)


class NpyStreamWriter:
    """Append frame batches of one shape and dtype; ``commit`` publishes, ``abort`` leaves nothing."""

    def __init__(self, path: str | os.PathLike[str], frame_shape: tuple[int, ...], dtype: type = np.uint8) -> None:
        self.path = Path(path)
        self.frame_shape = tuple(frame_shape)
        self.dtype = np.dtype(dtype)
        self.count = 0
        try:
            fd, self._tmp = _create_partial(self.path)
        except OSError as exc:
            raise DecodeError(
                Reason.WRITE_FAILED, f"cannot create a temporary file beside {self.path}: {exc}"
            ) from None
        self._fh = os.fdopen(fd, "wb")
        try:
            self._fh.write(b"\0" * _HEADER_BYTES)
        except OSError as exc:
            self.abort()
            raise DecodeError(Reason.WRITE_FAILED, f"writing {self.path.name}: {exc}") from None

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
            _publish_partial(self._tmp, self.path)
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
