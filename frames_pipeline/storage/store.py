"""Where frames live, the per-shard index, and publishing a shard atomically.

The data root (``$FRAMES_PIPELINE_DATA``, default ``./data``) is a local folder or an fsspec URL
such as ``s3://bucket/prefix``; the layout is the same on both::

    manifests/<stem>.csv|.parquet|.jsonl          input manifests
    frames/<shard key>/index.parquet              the published version: one row per manifest row
    frames/<shard key>/<version>/<video_id>.npy   (N, H, W, 3) uint8 RGB
    frames/<shard key>/<version>/<video_id>.pts.npy   presentation times in seconds
    frames/<shard key>/<version>/contact_sheet.png

One publish rule holds everywhere: a version is written in full under its own folder
(``v-<UTC time>-<random>``), then the index that names it (``frames_file`` is relative to the shard
folder) replaces the previous index in one step: a rename on a local disk, a single PUT on object
storage. Readers that go through the index therefore see the old version or the new one, never a
partial one. The version the previous index named is deleted after.

Each shard is written on local disk first, in its work folder ``<staging>/.<key>.work``, where
``<staging>`` is the frames folder itself for a local root (so the version moves into place with a
rename) and ``$FRAMES_PIPELINE_STAGING`` (default: the temp folder) for a remote one. An exclusive
``flock`` on ``<staging>/.<key>.lock`` lets one writer at a time work on a shard there; the kernel
releases it when a writer dies. Writers on different machines of a remote root cannot share that
lock, and do not need it for safety: each uploads its own version folder, the last index written
wins, and a writer deletes only the version it replaced and versions older than a day that no index
names (what a writer killed mid-upload leaves).

The work folder's name is fixed so that the next run on the same machine finds what a killed one
left: each finished video gets a marker (``.done/<video_id>.json``: its outcome, and its source's
size, mtime and inode), and a resuming writer keeps exactly the videos whose marker, files and
source still agree.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import posixpath
import re
import secrets
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from frames_pipeline.decode import pts_path
from frames_pipeline.storage.locations import Location

DATA_ENV = "FRAMES_PIPELINE_DATA"
STAGING_ENV = "FRAMES_PIPELINE_STAGING"
INDEX_NAME = "index.parquet"
# Unreferenced versions older than this are what a dead writer left, not a live writer's upload.
STALE_VERSION_AGE = timedelta(days=1)
_VERSION = re.compile(r"v-(?P<time>\d{8}T\d{12})-[0-9a-f]{8}")
_VERSION_TIME = "%Y%m%dT%H%M%S%f"
_VERSION_KEY = "frames_pipeline.version"  # index.parquet metadata: the version folder it publishes

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
        ("frames_file", pa.string()),  # "<version>/<video_id>.npy", relative to the shard folder; null when failed
    ]
)


def default_data_root() -> str:
    """``$FRAMES_PIPELINE_DATA``, or ``./data`` made absolute."""
    return os.environ.get(DATA_ENV) or str(Path("data").resolve())


class ShardBusyError(RuntimeError):
    """Another process is writing the same shard right now."""


@dataclass(frozen=True)
class FramesStore:
    """The data root's layout: a local folder or an fsspec URL. No Dagster here."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", os.fspath(self.root))  # a Path is welcome too

    @cached_property
    def location(self) -> Location:
        return Location.of(self.root)

    @property
    def manifests_dir(self) -> str:
        return str(self.location.child("manifests"))

    @property
    def frames_dir(self) -> str:
        return str(self.location.child("frames"))

    def shard_dir(self, key: str) -> str:
        return str(self._shard(key))

    def has_index(self, key: str) -> bool:
        """Whether shard ``key`` has been published."""
        index = self._index(key)
        return bool(index.fs.isfile(index.path))

    def read_index(self, key: str) -> pd.DataFrame | None:
        """The published index of shard ``key``, or None if the shard has never been published."""
        index = self._index(key)
        try:
            with index.fs.open(index.path, "rb") as fh:
                return pd.read_parquet(fh)
        except FileNotFoundError:
            return None

    def read_frames(self, key: str, video_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The frames (N, H, W, 3) and timestamps (N,) of one video of the published shard ``key``.

        Raises FileNotFoundError when the shard is not published, KeyError for an unknown video and
        ValueError, with the recorded reason, for a video that failed to decode."""
        index = self.read_index(key)
        if index is None:
            raise FileNotFoundError(f"shard {key} is not published in {self.frames_dir}")
        rows = index[index["video_id"] == video_id]
        if rows.empty:
            raise KeyError(f"shard {key} has no video {video_id!r}")
        row = rows.iloc[0]
        if row["status"] != "ok":
            raise ValueError(f"video {video_id!r} of shard {key} failed: {row['error_reason']}: {row['error']}")
        frames = self._shard(key).child(row["frames_file"])
        return _load_array(frames), _load_array(frames.parent().child(pts_path(frames.name).name))

    def write_file(self, relative: str, data: bytes) -> str:
        """Replace the file at ``relative`` (to the root) with ``data`` in one step; returns its location."""
        target = self.location.child(relative)
        if target.is_local:
            Path(target.path).parent.mkdir(parents=True, exist_ok=True)
            _replace_file(Path(target.path), data)
        else:
            target.fs.pipe_file(target.path, data)  # one PUT: the object appears whole or not at all
        return str(target)

    @property
    def staging_dir(self) -> Path:
        """Local folder holding the shards being written: the frames folder for a local root."""
        if self.location.is_local:
            return Path(self.location.path) / "frames"
        base = Path(os.environ.get(STAGING_ENV) or tempfile.gettempdir())
        return base / "frames_pipeline" / hashlib.sha256(self.root.encode()).hexdigest()[:16]

    def open_shard(self, key: str, *, resume: bool = False) -> ShardWriter:
        """Start writing a new version of shard ``key``; raises ShardBusyError if another writer holds it.

        With ``resume``, the work an unpublished earlier run left stays for ``resume_finished``.
        """
        return ShardWriter(self, key, resume=resume)

    def _shard(self, key: str) -> Location:
        return self.location.child("frames", key)

    def _index(self, key: str) -> Location:
        return self._shard(key).child(INDEX_NAME)


class ShardWriter:
    """One new version of a shard, written in the shard's work folder and published with ``publish``.

    Use as a context manager. Leaving without ``publish`` keeps the published version (if any) as
    it was, and deletes the work unless ``resume`` is on, in which case the next run resumes it.
    """

    def __init__(self, store: FramesStore, key: str, *, resume: bool = False) -> None:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"unsafe shard key {key!r}")
        self.store, self.key, self.resume = store, key, resume
        staging = store.staging_dir
        staging.mkdir(parents=True, exist_ok=True)
        self._lock = open(staging / f".{key}.lock", "a+b")  # noqa: SIM115 - held until close
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ShardBusyError(f"shard {key} is being written by another run") from None
        self.dir = staging / f".{key}.work"
        self._done = self.dir / ".done"
        self.version = _new_version()
        if not resume:
            self.discard()
        self._adopt_earlier_version()
        self._done.mkdir(parents=True, exist_ok=True)
        self.published = False

    @property
    def version_dir(self) -> Path:
        """The folder that becomes ``frames/<key>/<version>`` when published."""
        return self.dir / self.version

    def frames_path(self, video_id: str) -> Path:
        """Where the frames of ``video_id`` go while the shard is being written."""
        return self.version_dir / f"{video_id}.npy"

    def relative(self, path: str | os.PathLike[str]) -> str:
        """A file of this version as the index names it: relative to the shard folder (and to ``dir``)."""
        return f"{self.version}/{Path(path).name}"

    def mark_finished(self, video_id: str, source: str, outcome: Mapping[str, Any]) -> None:
        """Record that ``video_id``'s files are complete, with its ``outcome`` (JSON-able) for a run
        that resumes this one. A source that is not a local file (a URL) is not marked: a change to
        it could not be seen."""
        identity = _file_identity(source)
        if identity is None:
            return
        record = {"source": source, "identity": identity, "outcome": dict(outcome)}
        _replace_file(self._done / f"{video_id}.json", json.dumps(record).encode())

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
        for entry in self.version_dir.iterdir():
            if entry.name not in files:
                _remove(entry)
        for entry in self.dir.iterdir():
            if entry not in (self._done, self.version_dir):
                _remove(entry)
        for marker in self._done.iterdir():
            if marker.name.removesuffix(".json") not in kept:
                _remove(marker)
        return kept

    def write_file(self, name: str, data: bytes) -> Path:
        """Add a small file (a contact sheet) to the version."""
        path = self.version_dir / name
        path.write_bytes(data)
        _fsync(path)
        return path

    def write_index(self, records: Iterable[Mapping[str, Any]]) -> Path:
        """Write ``index.parquet`` (columns of INDEX_SCHEMA) into the unpublished shard."""
        table = pa.Table.from_pylist(list(records), schema=INDEX_SCHEMA.with_metadata({_VERSION_KEY: self.version}))
        path = self.dir / INDEX_NAME
        pq.write_table(table, path)
        _fsync(path)
        return path

    def publish(self) -> str:
        """Move the version into the store, then its index; returns the shard's location."""
        shard = self.store._shard(self.key)
        index = self.dir / INDEX_NAME
        if not index.is_file():
            raise RuntimeError(f"shard {self.key}: write_index before publish")
        replaced = _published_version(self.store, self.key)
        if shard.is_local:
            Path(shard.path).mkdir(parents=True, exist_ok=True)
            _fsync(self.version_dir)
            os.rename(self.version_dir, Path(shard.path) / self.version)
            os.replace(index, Path(shard.path) / INDEX_NAME)
            _fsync(Path(shard.path))
        else:
            _upload_folder(self.version_dir, shard.child(self.version))
            shard.fs.put_file(str(index), self.store._index(self.key).path)  # one PUT publishes the version
        self.published = True
        self._remove_old_versions(shard, replaced)
        self.discard()
        return str(shard)

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

    def _adopt_earlier_version(self) -> None:
        """Give the version folder a resumed run left this run's version name (a fresh time for the
        stale-version rule); start an empty one otherwise."""
        earlier = [p for p in self.dir.iterdir() if _VERSION.fullmatch(p.name)] if self.dir.is_dir() else []
        if earlier:
            os.rename(earlier[0], self.version_dir)
        self.version_dir.mkdir(parents=True, exist_ok=True)

    def _remove_old_versions(self, shard: Location, replaced: str | None) -> None:
        """After publishing: a local shard is ours alone (the lock), so everything but the new version
        and the index goes. On shared storage another machine may be uploading a version right now:
        only the replaced version and stale unreferenced ones go."""
        oldest_live = datetime.now(UTC) - STALE_VERSION_AGE
        for entry in shard.fs.ls(shard.path, detail=False):
            name = posixpath.basename(entry.rstrip("/"))
            if name in (self.version, INDEX_NAME):
                continue
            if shard.is_local or name == replaced or (_version_time(name) or oldest_live) < oldest_live:
                shard.fs.rm(shard.child(name).path, recursive=True)

    def _marker(self, video_id: str) -> dict[str, Any] | None:
        try:
            marker = json.loads((self._done / f"{video_id}.json").read_text())
        except (OSError, ValueError):
            return None
        return marker if isinstance(marker, dict) and isinstance(marker.get("outcome"), dict) else None


def _new_version() -> str:
    return f"v-{datetime.now(UTC).strftime(_VERSION_TIME)}-{secrets.token_hex(4)}"


def _version_time(name: str) -> datetime | None:
    match = _VERSION.fullmatch(name)
    return datetime.strptime(match["time"], _VERSION_TIME).replace(tzinfo=UTC) if match else None


def _published_version(store: FramesStore, key: str) -> str | None:
    """The version folder the published index of ``key`` names, if any."""
    index = store._index(key)
    try:
        with index.fs.open(index.path, "rb") as fh:
            metadata = pq.read_schema(fh).metadata or {}
    except FileNotFoundError:
        return None
    version = metadata.get(_VERSION_KEY.encode())
    return version.decode() if version else None


def _upload_folder(folder: Path, target: Location) -> None:
    """Copy every file of ``folder`` to ``target`` and check that each arrived whole."""
    local = sorted(p for p in folder.iterdir() if p.is_file())
    if not local:
        return  # object storage has no empty folders
    target.fs.put([str(p) for p in local], [target.child(p.name).path for p in local])
    uploaded = {posixpath.basename(e["name"]): e["size"] for e in target.fs.ls(target.path, detail=True)}
    missing = [p.name for p in local if uploaded.get(p.name) != p.stat().st_size]
    if missing:
        raise OSError(f"upload to {target} incomplete: {', '.join(missing[:10])}")


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` under a temporary name beside ``path`` and rename: readers see the old file or the new."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _load_array(file: Location) -> np.ndarray:
    if file.is_local:
        return np.load(file.path)
    with file.fs.open(file.path, "rb") as fh:
        return np.load(fh)


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
