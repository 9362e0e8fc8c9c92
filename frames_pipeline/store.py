"""Where frames live on disk, the per-shard index, and publishing a shard atomically.

Layout under the data root (``$FRAMES_PIPELINE_DATA``, default ``./data``)::

    manifests/<stem>.csv|.parquet|.jsonl    input manifests
    frames/<shard key>/<video_id>.npy       (N, H, W, 3) uint8 RGB
    frames/<shard key>/<video_id>.pts.npy   presentation times in seconds
    frames/<shard key>/index.parquet        one row per manifest row, ok or failed

A shard is written into ``frames/.<key>.tmp-<run id>`` and renamed into place when complete; a
previous version is moved aside first and deleted after. Readers therefore see the old shard, no
shard (for the instant between the two renames), or the new one, never a partial one. An exclusive
``flock`` on ``frames/.<key>.lock`` lets one writer at a time work on a shard; the kernel releases
it when a writer dies, so a crash never leaves the shard locked.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

DATA_ENV = "FRAMES_PIPELINE_DATA"
INDEX_NAME = "index.parquet"

INDEX_SCHEMA = pa.schema(
    [
        ("manifest_row", pa.int64()),
        ("video_id", pa.string()),
        ("source", pa.string()),
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

    def open_shard(self, key: str, run_id: str) -> ShardWriter:
        """Start writing a new version of shard ``key``; raises ShardBusyError if another writer holds it."""
        return ShardWriter(self, key, run_id)


class ShardWriter:
    """One new version of a shard, written aside and published with ``publish``.

    Use as a context manager: leaving without ``publish`` deletes everything written, and the
    published version (if any) stays as it was.
    """

    def __init__(self, store: FramesStore, key: str, run_id: str) -> None:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"unsafe shard key {key!r}")
        self.store, self.key = store, key
        store.frames_dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(store.frames_dir / f".{key}.lock", "a+b")  # noqa: SIM115 - held until close
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ShardBusyError(f"shard {key} is being written by another run") from None
        self._recover()
        self.dir = store.frames_dir / f".{key}.tmp-{run_id}"
        self.dir.mkdir()
        self.published = False

    def frames_path(self, video_id: str) -> Path:
        """Where the frames of ``video_id`` go while the shard is being written."""
        return self.dir / f"{video_id}.npy"

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
        old = self.dir.with_name(self.dir.name.replace(".tmp-", ".old-", 1))
        _fsync(self.dir)
        if final.exists():
            os.rename(final, old)
        os.rename(self.dir, final)
        _fsync(self.store.frames_dir)
        shutil.rmtree(old, ignore_errors=True)
        self.published = True
        return final

    def close(self) -> None:
        """Discard what was not published and release the shard."""
        if not self.published:
            shutil.rmtree(self.dir, ignore_errors=True)
        self._lock.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _recover(self) -> None:
        """Clean up after writers that died (we hold the lock, so none is running): restore a
        published version moved aside just before a crash, delete unfinished versions."""
        frames = self.store.frames_dir
        final = self.store.shard_dir(self.key)
        olds = sorted(frames.glob(f".{self.key}.old-*"), key=lambda p: p.stat().st_mtime)
        if olds and not final.exists():
            os.rename(olds.pop(), final)
        for leftover in [*olds, *frames.glob(f".{self.key}.tmp-*")]:
            shutil.rmtree(leftover, ignore_errors=True)


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
