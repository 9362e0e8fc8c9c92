"""Where frames live on disk, the per-shard index, and publishing a shard atomically.

Layout under the data root (``$FRAMES_PIPELINE_DATA``, default ``./data``)::

    manifests/<stem>.csv|.parquet|.jsonl    input manifests
    frames/<shard key>/<video_id>.npy       (N, H, W, 3) uint8 RGB
    frames/<shard key>/<video_id>.pts.npy   presentation times in seconds
    frames/<shard key>/index.parquet        one row per manifest row, ok or failed

A shard is written into its work folder ``frames/.<key>.work`` and renamed into place when
complete; a previous version is moved aside (``.<key>.old``) first and deleted after. Readers
therefore see the old shard, no shard (for the instant between the two renames), or the new one,
never a partial one. An exclusive ``flock`` on ``frames/.<key>.lock`` lets one writer at a time
work on a shard; the kernel releases it when a writer dies, so a crash never leaves the shard locked.

The work folder's name is fixed so that the next run finds what a killed one left: each finished
video gets a marker (``.done/<video_id>.json``: its outcome, and its source's size, mtime and inode),
and a resuming writer keeps exactly the videos whose marker, files and source still agree.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .decode import pts_path

DATA_ENV = "FRAMES_PIPELINE_DATA"
INDEX_NAME = "index.parquet"

INDEX_SCHEMA = pa.schema(
    [
        ("manifest_row", pa.int64()),
        ("video_id", pa.string()),
        ("source", pa.string()),  # bytes of a non-UTF-8 file name appear as \xNN
        ("status", pa.string()),  # "ok" or "failed"
        ("num_frames", pa.int64()),
        ("expected_frames", pa.int64()),  # the probe's count; null when the probe failed
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("requested_mode", pa.string()),
        ("decode_mode", pa.string()),  # effective mode; null when nothing decoded
        ("fallback_reason", pa.string()),
        ("error_reason", pa.string()),  # reason code such as not_found, corrupt, timeout
        ("error", pa.string()),
        ("warnings", pa.list_(pa.string())),
        ("decode_seconds", pa.float64()),
        ("frames_file", pa.string()),  # relative to the shard folder; null when failed
    ]
)


def default_data_root() -> Path:
    """``$FRAMES_PIPELINE_DATA``, or ``./data``."""
    return Path(os.environ.get(DATA_ENV) or "data")


class ShardBusyError(RuntimeError):
    """Another process is writing the same shard right now."""


@dataclass(frozen=True)
class FramesStore:
    """The data root's layout. Pure paths and files: no Dagster here."""

    root: Path

    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests"

    @property
    def frames_dir(self) -> Path:
        return self.root / "frames"

    def shard_dir(self, key: str) -> Path:
        return self.frames_dir / key

    def index_path(self, key: str) -> Path:
        return self.shard_dir(key) / INDEX_NAME

    def read_index(self, key: str) -> pd.DataFrame | None:
        """The published index of shard ``key``, or None if the shard has never been published."""
        path = self.index_path(key)
        return pd.read_parquet(path) if path.is_file() else None

    def open_shard(self, key: str, *, resume: bool = False) -> ShardWriter:
        """Start writing a new version of shard ``key``; raises ShardBusyError if another writer holds it.

        With ``resume``, the work an unpublished earlier run left stays for ``resume_finished``.
        """
        return ShardWriter(self, key, resume=resume)


class ShardWriter:
    """One new version of a shard, written in the shard's work folder and published with ``publish``.

    Use as a context manager. Leaving without ``publish`` keeps the published version (if any) as
    it was, and deletes the work unless ``resume`` is on, in which case the next run resumes it.
    """

    def __init__(self, store: FramesStore, key: str, *, resume: bool = False) -> None:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"unsafe shard key {key!r}")
        self.store, self.key, self.resume = store, key, resume
        store.frames_dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(store.frames_dir / f".{key}.lock", "a+b")  # noqa: SIM115 - held until close
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ShardBusyError(f"shard {key} is being written by another run") from None
        self.dir = store.frames_dir / f".{key}.work"
        self._old = store.frames_dir / f".{key}.old"
        self._done = self.dir / ".done"
        self._recover()
        self._done.mkdir(parents=True, exist_ok=True)
        self.published = False

    def frames_path(self, video_id: str) -> Path:
        """Where the frames of ``video_id`` go while the shard is being written."""
        return self.dir / f"{video_id}.npy"

    def mark_finished(self, video_id: str, source: str, outcome: Mapping[str, Any]) -> None:
        """Record that ``video_id``'s files are complete, with its ``outcome`` (JSON-able) for a run
        that resumes this one. A source that is not a local file (a URL) is not marked: a change to
        it could not be seen."""
        identity = _file_identity(source)
        if identity is None:
            return
        marker = self._done / f"{video_id}.json"
        tmp = marker.with_name(f".{marker.name}.tmp")
        tmp.write_text(json.dumps({"source": source, "identity": identity, "outcome": dict(outcome)}))
        os.replace(tmp, marker)

    def resume_finished(self, sources: Mapping[str, str], output_hw: tuple[int, int]) -> dict[str, dict[str, Any]]:
        """The outcomes of the videos of ``sources`` ({video_id: source}) that an earlier run finished
        from the same source file, with whole arrays of ``output_hw``. Everything else in the work
        folder is deleted, so this run starts from exactly what it reuses."""
        kept: dict[str, dict[str, Any]] = {}
        for video_id, source in sources.items():
            marker = self._marker(video_id)
            if (
                marker is not None
                and marker.get("source") == source
                and marker.get("identity") == _file_identity(source)
                and frames_problem(self.frames_path(video_id), marker["outcome"].get("num_frames"), output_hw) is None
            ):
                kept[video_id] = marker["outcome"]
        frames = [self.frames_path(video_id) for video_id in kept]
        files = {p.name for path in frames for p in (path, pts_path(path))}
        for entry in self.dir.iterdir():
            if entry.name not in files and entry != self._done:
                _remove(entry)
        for marker in self._done.iterdir():
            if marker.name.removesuffix(".json") not in kept:
                _remove(marker)
        return kept

    def write_index(self, records: Iterable[Mapping[str, Any]]) -> Path:
        """Write ``index.parquet`` (columns of INDEX_SCHEMA) into the unpublished shard."""
        table = pa.Table.from_pylist(list(records), schema=INDEX_SCHEMA)
        path = self.dir / INDEX_NAME
        pq.write_table(table, path)
        _fsync(path)
        return path

    def publish(self) -> Path:
        """Swap the new version in; returns the published folder."""
        final = self.store.shard_dir(self.key)
        shutil.rmtree(self._done)  # resume bookkeeping is not part of the shard
        _fsync(self.dir)
        if final.exists():
            os.rename(final, self._old)
        os.rename(self.dir, final)
        _fsync(self.store.frames_dir)
        shutil.rmtree(self._old, ignore_errors=True)
        self.published = True
        return final

    def discard(self) -> None:
        """Delete the work, resumable or not."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def close(self) -> None:
        """Release the shard; unpublished work is deleted unless a later run may resume it."""
        if not self.published and not self.resume:
            self.discard()
        self._lock.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _recover(self) -> None:
        """Clean up after writers that died (we hold the lock, so none is running): restore a
        published version moved aside just before a crash, and drop their work unless resuming."""
        final = self.store.shard_dir(self.key)
        if self._old.exists() and not final.exists():
            os.rename(self._old, final)
        shutil.rmtree(self._old, ignore_errors=True)
        if not self.resume:
            self.discard()

    def _marker(self, video_id: str) -> dict[str, Any] | None:
        try:
            marker = json.loads((self._done / f"{video_id}.json").read_text())
        except (OSError, ValueError):
            return None
        return marker if isinstance(marker, dict) and isinstance(marker.get("outcome"), dict) else None


def frames_problem(frames_path: Path, num_frames: int | None, output_hw: tuple[int, int]) -> str | None:
    """What is wrong with one video's arrays (frames and timestamps), or None. Memory-mapped: only
    the headers are read."""
    try:
        frames = np.load(frames_path, mmap_mode="r")
        pts = np.load(pts_path(frames_path), mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        return f"unreadable: {exc}"
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (*output_hw, 3):
        return f"frames are {frames.shape} {frames.dtype}"
    if frames.shape[0] != num_frames or pts.shape != (frames.shape[0],):
        return f"{frames.shape[0]} frames, {pts.shape} timestamps, index says {num_frames}"
    return None


def _file_identity(path: str) -> list[int] | None:
    """Size, modification time and inode of a local file: rewriting or replacing it changes one."""
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file or folder entry to disk, so a rename never publishes data still in cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


SUMMARY_COLUMNS = ["shard", "published", "videos", "ok", "failed", "frames", "decode_modes", "failures"]


def summarize_shards(store: FramesStore, keys: Sequence[str]) -> pd.DataFrame:
    """One row per shard from its published index: counts, frames, effective modes and failure reasons."""
    rows = []
    for key in keys:
        index = store.read_index(key)
        if index is None:
            rows.append(dict(zip(SUMMARY_COLUMNS, [key, False, 0, 0, 0, 0, {}, {}], strict=True)))
            continue
        ok = index["status"] == "ok"
        rows.append(
            {
                "shard": key,
                "published": True,
                "videos": len(index),
                "ok": int(ok.sum()),
                "failed": int((~ok).sum()),
                "frames": int(index.loc[ok, "num_frames"].sum()),
                "decode_modes": count_values(index.loc[ok, "decode_mode"]),
                "failures": count_values(index.loc[~ok, "error_reason"]),
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def count_values(values: Iterable[Any]) -> dict[str, int]:
    """``{value: count}`` of the non-null values, sorted by value."""
    return dict(sorted(Counter(str(v) for v in values if v is not None and not pd.isna(v)).items()))


def merge_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Sum several ``{name: count}`` maps."""
    total: dict[str, int] = {}
    for mapping in counts:
        for name, n in mapping.items():
            total[name] = total.get(name, 0) + n
    return dict(sorted(total.items()))
