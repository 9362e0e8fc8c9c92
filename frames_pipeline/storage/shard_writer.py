"""Writing a new version of a shard and publishing it atomically, on a local disk or object storage.

One publish rule holds everywhere: a version is written in full under its own folder
(``v-<UTC time>-<random>``), then the index that names it (``frames_file`` is relative to the shard
folder) replaces the previous index in one step: a rename on a local disk, a single PUT on object
storage. Readers that go through the index therefore see the old version or the new one, never a
partial one. The version the previous index named stays for ``REPLACED_VERSION_GRACE`` after it
was replaced, so a reader that read the old index just before still finds its arrays: each index
records the versions it replaced and when (``store.PublishedVersions``), and the first publish
after their grace deletes them.

Each shard is written on local disk first, in its work folder ``<staging>/.<key>.work``, where
``<staging>`` is the frames folder itself for a local root (so the version moves into place with a
rename) and ``$FRAMES_PIPELINE_STAGING`` (default: the temp folder) for a remote one. An exclusive
``flock`` on ``<staging>/.<key>.lock`` lets one writer at a time work on a shard there; the kernel
releases it when a writer dies. Writers on different machines of a remote root cannot share that
lock, and do not need it for safety: each uploads its own version folder, the last index written
wins, and a writer deletes only versions whose grace has passed and versions older than a day that
no index names (what a writer killed mid-upload leaves).

The work folder's name is fixed so that the next run on the same machine finds what a killed one
left: each finished video gets a marker (``.done/<video_id>.json``: its outcome, and its source's
size, mtime and inode), and a resuming writer keeps exactly the videos whose marker, files and
source still agree.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import posixpath
import shutil
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from frames_pipeline.decode import pts_path
from frames_pipeline.storage.locations import Location
from frames_pipeline.storage.store import (
    INDEX_NAME,
    INDEX_SCHEMA,
    MANIFEST_HASH_KEY,
    SHARD_SIZE_KEY,
    VERSION_PATTERN,
    FramesStore,
    PublishedVersions,
    frames_problem,
    fsync,
    new_version,
    published_versions,
    replace_file,
    version_time,
)

# Unreferenced versions older than this are what a dead writer left, not a live writer's upload.
STALE_VERSION_AGE = timedelta(days=1)
# How long a replaced version stays readable. A reader that listed a shard's index (a training
# epoch, a report over every shard) reads the arrays later the same day; a day covers it, and is
# the age at which shared storage already takes a version no index names for abandoned. The cost:
# a shard re-published within the day keeps its earlier frames (not videos) until then.
REPLACED_VERSION_GRACE = timedelta(days=1)
# Version of the finished-video markers: a resumed run trusts only markers in the format it writes.
MARKER_FORMAT = 3


class ShardBusyError(RuntimeError):
    """Another process is writing the same shard right now."""


class ShardUnwritableError(RuntimeError):
    """The shard cannot be written where it lives: the folder is read-only or not ours, or the disk
    (or quota) is full. Nothing changes until someone frees space or fixes permissions."""


# The OSError numbers that mean ShardUnwritableError, rather than a passing fault worth a retry.
UNWRITABLE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


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
        self.version = new_version()
        if not resume:
            self.discard()
        self._adopt_earlier_version()
        self._done.mkdir(parents=True, exist_ok=True)
        self._index: pa.Table | None = None
        self._cut: dict[str, str] = {}
        self.published = False

    @property
    def version_dir(self) -> Path:
        """The folder that becomes ``frames/<key>/<version>`` when published."""
        return self.dir / self.version

    def frames_file(self, video_id: str) -> str:
        """The frames file of ``video_id`` as the index names it, relative to the shard folder: the one
        place a video's output name is decided (its timestamps go beside it, ``pts_path``)."""
        return f"{self.version}/{video_id}.npy"

    def frames_path(self, video_id: str) -> Path:
        """Where the frames of ``video_id`` are while this version is written: ``frames_file`` under
        the work folder, which becomes the shard folder when published."""
        return self.dir / self.frames_file(video_id)

    def mark_finished(self, video_id: str, source: str, outcome: Mapping[str, Any]) -> None:
        """Record that ``video_id``'s files are complete, with its ``outcome`` (JSON-able) for a run
        that resumes this one. A source that is not a local file (a URL) is not marked: a change to
        it could not be seen."""
        identity = _file_identity(source)
        if identity is None:
            return
        record = {"format": MARKER_FORMAT, "source": source, "identity": identity, "outcome": dict(outcome)}
        replace_file(self._done / f"{video_id}.json", json.dumps(record).encode())

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
        fsync(path)
        return path

    def write_index(self, records: Iterable[Mapping[str, Any]], *, manifest_hash: str, shard_size: int) -> Path:
        """Write ``index.parquet`` (columns of INDEX_SCHEMA) into the unpublished shard, with the manifest
        version and shard size its rows were cut with (what ``FramesStore.published`` reads back)."""
        self._index = pa.Table.from_pylist(list(records), schema=INDEX_SCHEMA)
        self._cut = {MANIFEST_HASH_KEY: manifest_hash, SHARD_SIZE_KEY: str(shard_size)}
        return self._write_index(PublishedVersions(self.version, {}))

    def publish(self) -> str:
        """Move the version into the store, then its index; returns the shard's location."""
        shard = self.store.shard_location(self.key)
        if self._index is None:
            raise RuntimeError(f"shard {self.key}: write_index before publish")
        before = published_versions(self.store, self.key)
        now = datetime.now(UTC)
        kept = {name: when for name, when in before.replaced.items() if now - when < REPLACED_VERSION_GRACE}
        if before.version:
            kept[before.version] = now
        index = self._write_index(PublishedVersions(self.version, kept))
        if shard.is_local:
            Path(shard.path).mkdir(parents=True, exist_ok=True)
            fsync(self.version_dir)
            os.rename(self.version_dir, Path(shard.path) / self.version)
            os.replace(index, Path(shard.path) / INDEX_NAME)
            fsync(Path(shard.path))
        else:
            _upload_folder(self.version_dir, shard.child(self.version))
            shard.fs.put_file(str(index), self.store.index_location(self.key).path)  # one PUT publishes the version
        self.published = True
        self._remove_old_versions(shard, kept, expired=set(before.replaced) - set(kept))
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
        earlier = [p for p in self.dir.iterdir() if VERSION_PATTERN.fullmatch(p.name)] if self.dir.is_dir() else []
        if earlier:
            os.rename(earlier[0], self.version_dir)
        self.version_dir.mkdir(parents=True, exist_ok=True)

    def _write_index(self, versions: PublishedVersions) -> Path:
        assert self._index is not None
        path = self.dir / INDEX_NAME
        # Our own handle, closed even when the write fails: pyarrow's, given a path, stays open (on
        # a deleted file, holding its space) for as long as the exception is kept.
        with pa.OSFile(str(path), "wb") as sink:
            pq.write_table(self._index.replace_schema_metadata(versions.metadata() | self._cut), sink)
        fsync(path)
        return path

    def _remove_old_versions(self, shard: Location, kept: Mapping[str, datetime], expired: set[str]) -> None:
        """After publishing: the new version and those in their grace (``kept``) stay. A local shard is
        ours alone (the lock), so everything else goes. On shared storage another machine may be
        uploading a version right now: only versions whose grace ``expired`` and stale unreferenced
        ones go."""
        oldest_live = datetime.now(UTC) - STALE_VERSION_AGE
        for entry in shard.fs.ls(shard.path, detail=False):
            name = posixpath.basename(entry.rstrip("/"))
            if name in (self.version, INDEX_NAME) or name in kept:
                continue
            if shard.is_local or name in expired or (version_time(name) or oldest_live) < oldest_live:
                shard.fs.rm(shard.child(name).path, recursive=True)

    def _marker(self, video_id: str) -> dict[str, Any] | None:
        try:
            marker = json.loads((self._done / f"{video_id}.json").read_text())
        except (OSError, ValueError):
            return None
        # A marker another version of this code wrote may hold other fields: decode that video again.
        wellformed = isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT
        return marker if wellformed and isinstance(marker.get("outcome"), dict) else None


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
