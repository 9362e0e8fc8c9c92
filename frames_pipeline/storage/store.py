"""The data root's layout and how to read it: manifests in, published shard versions out.

The data root (``$FRAMES_PIPELINE_DATA``, default ``./data``) is a local folder or an fsspec URL
such as ``s3://bucket/prefix``; the layout is the same on both::

    manifests/<stem>.csv|.parquet|.jsonl          input manifests
    frames/<shard key>/index.parquet              the published version: one row per manifest row
    frames/<shard key>/<version>/<video_id>.npy   (N, H, W, 3) uint8 RGB
    frames/<shard key>/<version>/<video_id>.pts.npy   presentation times in seconds
    frames/<shard key>/<version>/contact_sheet.png
    shots/<shard key>/...                         the shots of the shard's frames (``storage/shots.py``)

Every dataset (frames, shots) is a ``Dataset``: its shards are laid out and published the same way.
Readers go through the index: it names each video's files relative to the shard folder, and it is
replaced in one step when a new version is published (``shard_writer.py`` says how), so a reader
of the index sees one whole version. The version an index names stays readable for a grace period
after a newer one replaces it (``shard_writer.REPLACED_VERSION_GRACE``), so a reader that read the
index a moment before a publish still finds every file it names. The index itself is read through one handle
(``locations.read_parquet``), never by path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from frames_pipeline.decode import pts_path
from frames_pipeline.storage.locations import Location, read_parquet, read_parquet_schema

DATA_ENV = "FRAMES_PIPELINE_DATA"
STAGING_ENV = "FRAMES_PIPELINE_STAGING"
INDEX_NAME = "index.parquet"
VERSION_PATTERN = re.compile(r"v-(?P<time>\d{8}T\d{12})-[0-9a-f]{8}")
_VERSION_TIME = "%Y%m%dT%H%M%S%f"
VERSION_KEY = "frames_pipeline.version"  # index.parquet metadata: the version folder it publishes
# index.parquet metadata: {version: UTC time it was replaced} of the earlier versions still kept.
REPLACED_KEY = "frames_pipeline.replaced"

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
        ("hint", pa.string()),  # what to do about the error
        ("warnings", pa.list_(pa.string())),
        ("decode_s", pa.float64()),
        # What the probe found in the source (null when the probe failed).
        ("codec", pa.string()),
        ("source_height", pa.int32()),
        ("source_width", pa.int32()),
        ("source_fps", pa.float64()),
        ("source_duration_s", pa.float64()),
        ("vfr", pa.bool_()),
        ("rotation", pa.int32()),
        ("mirrored", pa.bool_()),  # shown mirrored left to right after the rotation
        ("frames_file", pa.string()),  # "<version>/<video_id>.npy", relative to the shard folder; null when failed
    ]
)


@dataclass(frozen=True)
class Dataset:
    """One kind of shard the store publishes: its folder under the data root and its index's columns."""

    folder: str
    index_schema: pa.Schema


FRAMES = Dataset("frames", INDEX_SCHEMA)


def default_data_root() -> str:
    """``$FRAMES_PIPELINE_DATA``, or ``./data`` made absolute."""
    return os.environ.get(DATA_ENV) or str(Path("data").resolve())


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

    def shard_dir(self, key: str, dataset: Dataset = FRAMES) -> str:
        return str(self.shard_location(key, dataset))

    def has_index(self, key: str, dataset: Dataset = FRAMES) -> bool:
        """Whether shard ``key`` has been published."""
        index = self.index_location(key, dataset)
        return bool(index.fs.isfile(index.path))

    def read_index(self, key: str, dataset: Dataset = FRAMES) -> pd.DataFrame | None:
        """The published index of shard ``key``, or None if the shard has never been published."""
        try:
            return read_parquet(self.index_location(key, dataset)).to_pandas()
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
        return self.read_row_frames(key, rows.iloc[0].to_dict())

    def read_row_frames(self, key: str, row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The frames and timestamps that ``row``, a row of the frames index of shard ``key`` that the
        caller read, names: one read of the index serves every video of a shard. ValueError, with the
        recorded reason, for a video that failed to decode."""
        if row["status"] != "ok":
            raise ValueError(f"video {row['video_id']!r} of shard {key} failed: {row['error_reason']}: {row['error']}")
        frames = self.shard_location(key).child(row["frames_file"])
        return _load_array(frames), _load_array(frames.parent().child(pts_path(frames.name).name))

    def write_file(self, relative: str, data: bytes) -> str:
        """Replace the file at ``relative`` (to the root) with ``data`` in one step; returns its location."""
        target = self.location.child(relative)
        if target.is_local:
            Path(target.path).parent.mkdir(parents=True, exist_ok=True)
            replace_file(Path(target.path), data)
        else:
            target.fs.pipe_file(target.path, data)  # one PUT: the object appears whole or not at all
        return str(target)

    def staging_dir(self, dataset: Dataset = FRAMES) -> Path:
        """Local folder holding the shards of ``dataset`` being written: the dataset's own folder for a
        local root."""
        if self.location.is_local:
            return Path(self.location.path) / dataset.folder
        base = Path(os.environ.get(STAGING_ENV) or tempfile.gettempdir())
        return base / "frames_pipeline" / hashlib.sha256(self.root.encode()).hexdigest()[:16] / dataset.folder

    def shard_location(self, key: str, dataset: Dataset = FRAMES) -> Location:
        return self.location.child(dataset.folder, key)

    def index_location(self, key: str, dataset: Dataset = FRAMES) -> Location:
        return self.shard_location(key, dataset).child(INDEX_NAME)


def new_version() -> str:
    """A version folder name: ``v-<UTC time>-<random>``, sortable by time and unique."""
    return f"v-{datetime.now(UTC).strftime(_VERSION_TIME)}-{secrets.token_hex(4)}"


def version_time(name: str) -> datetime | None:
    """When version ``name`` was started; None if ``name`` is no version folder."""
    match = VERSION_PATTERN.fullmatch(name)
    return datetime.strptime(match["time"], _VERSION_TIME).replace(tzinfo=UTC) if match else None


@dataclass(frozen=True)
class PublishedVersions:
    """What a shard's published index says about its versions: the one it names, and the earlier
    ones it keeps readable ({version: when it was replaced})."""

    version: str | None
    replaced: dict[str, datetime]

    def metadata(self) -> dict[str, str]:
        """The index.parquet metadata that records these facts."""
        replaced = {name: when.isoformat() for name, when in sorted(self.replaced.items())}
        return {VERSION_KEY: self.version or "", REPLACED_KEY: json.dumps(replaced)}


def published_versions(store: FramesStore, key: str, dataset: Dataset = FRAMES) -> PublishedVersions:
    """The versions the published index of ``key`` names and keeps (none for an unpublished shard)."""
    try:
        metadata = read_parquet_schema(store.index_location(key, dataset)).metadata or {}
    except FileNotFoundError:
        return PublishedVersions(None, {})
    version = metadata.get(VERSION_KEY.encode(), b"").decode() or None
    replaced = json.loads(metadata.get(REPLACED_KEY.encode(), b"{}"))
    return PublishedVersions(version, {name: datetime.fromisoformat(when) for name, when in replaced.items()})


def replace_file(path: Path, data: bytes) -> None:
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


def fsync(path: Path) -> None:
    """Flush a file or folder entry to disk, so a rename never publishes data still in cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
