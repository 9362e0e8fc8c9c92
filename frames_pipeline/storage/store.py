"""The data root's layout and how to read it: manifests in, published shard versions out.

The data root (``$FRAMES_PIPELINE_DATA``, default ``./data``) is a local folder or an fsspec URL
such as ``s3://bucket/prefix``; the layout is the same on both::

    manifests/<stem>.csv|.parquet|.jsonl          input manifests
    frames/<shard key>/index.parquet              the published version: one row per manifest row
    frames/<shard key>/<version>/<video_id>.npy   (N, H, W, 3) uint8 RGB
    frames/<shard key>/<version>/<video_id>.pts.npy   presentation times in seconds
    frames/<shard key>/<version>/contact_sheet.png
    frames/.blocked/<shard key>.json              why the shard's last run was not published (BlockedShard)

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
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

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
# index.parquet metadata: the manifest version and shard size the published rows were cut with.
MANIFEST_HASH_KEY = "frames_pipeline.manifest_hash"
SHARD_SIZE_KEY = "frames_pipeline.shard_size"
BLOCKED_DIR = ".blocked"  # in the frames folder


def _column(name: str, kind: pa.DataType, description: str) -> pa.Field:
    # The description travels in the Parquet file and is what the Dagster UI shows as the column schema.
    return pa.field(name, kind, metadata={"description": description})


INDEX_SCHEMA = pa.schema(
    [
        _column("manifest_row", pa.int64(), "row of the manifest (1-based data rows)"),
        _column("video_id", pa.string(), "safe, unique id; names the frames file"),
        _column("source", pa.string(), "the video's path or URL (bytes of a non-UTF-8 file name appear as \\xNN)"),
        _column("status", pa.string(), "ok or failed"),
        _column("num_frames", pa.int64(), "frames decoded"),
        _column("expected_frames", pa.int64(), "frames the probe counted; null when the probe failed"),
        _column("height", pa.int32(), "output height"),
        _column("width", pa.int32(), "output width"),
        _column("requested_mode", pa.string(), "decoder mode asked for"),
        _column("decode_mode", pa.string(), "decoder mode used; null when nothing decoded"),
        _column("fallback_reason", pa.string(), "why the mode used is not the one asked for"),
        _column("error_reason", pa.string(), "reason code of a failure, such as not_found, corrupt, timeout"),
        _column("error", pa.string(), "what went wrong"),
        _column("hint", pa.string(), "what to do about the error"),
        _column("warnings", pa.list_(pa.string()), "decoder warnings of a video that decoded"),
        _column("decode_s", pa.float64(), "seconds spent on the video"),
        _column("codec", pa.string(), "source codec (null when the probe failed, as for all source_ columns)"),
        _column("source_height", pa.int32(), "displayed source height, after rotation"),
        _column("source_width", pa.int32(), "displayed source width, after rotation"),
        _column("source_fps", pa.float64(), "frames per second counted from the stream"),
        _column("source_duration_s", pa.float64(), "duration counted from the stream, seconds"),
        _column("vfr", pa.bool_(), "variable frame rate"),
        _column("rotation", pa.int32(), "display rotation applied, degrees"),
        _column("mirrored", pa.bool_(), "shown mirrored left to right after the rotation"),
        _column("frames_file", pa.string(), "<version>/<video_id>.npy relative to the shard folder; null when failed"),
    ]
)


def default_data_root() -> str:
    """``$FRAMES_PIPELINE_DATA``, or ``./data`` made absolute."""
    return os.environ.get(DATA_ENV) or str(Path("data").resolve())


@dataclass(frozen=True)
class BlockedShard:
    """A shard whose last run was judged and not published: its blocking checks failed. ``inputs``
    fingerprints everything that outcome followed from (``shards.ShardInputs``); a run on the same
    inputs would fail the same way, so the shard waits for one of them to change."""

    key: str
    inputs: str
    reason: str  # one line: which checks failed and by how much
    checks: tuple[str, ...]
    at: str  # ISO 8601, UTC

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BlockedShard:
        fields = json.loads(data)
        return cls(**{**fields, "checks": tuple(fields["checks"])})


@dataclass(frozen=True)
class PublishedShard:
    """What a published index says it was cut from (None for indexes written before it was recorded)."""

    manifest_hash: str | None
    shard_size: int | None


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
        return str(self.shard_location(key))

    def has_index(self, key: str) -> bool:
        """Whether shard ``key`` has been published."""
        index = self.index_location(key)
        return bool(index.fs.isfile(index.path))

    def read_index(self, key: str) -> pd.DataFrame | None:
        """The published index of shard ``key``, or None if the shard has never been published."""
        try:
            return read_parquet(self.index_location(key)).to_pandas()
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
        frames = self.shard_location(key).child(row["frames_file"])
        return _load_array(frames), _load_array(frames.parent().child(pts_path(frames.name).name))

    def published(self, key: str) -> PublishedShard | None:
        """The manifest version and shard size of the published index of ``key``; None if unpublished."""
        metadata = _index_metadata(self, key)
        if metadata is None:
            return None
        size = metadata.get(SHARD_SIZE_KEY)
        return PublishedShard(metadata.get(MANIFEST_HASH_KEY), int(size) if size else None)

    def record_blocked(self, blocked: BlockedShard) -> None:
        self.write_file(f"frames/{BLOCKED_DIR}/{blocked.key}.json", blocked.to_json())

    def clear_blocked(self, key: str) -> None:
        record = self.location.child("frames", BLOCKED_DIR, f"{key}.json")
        if record.fs.exists(record.path):
            record.fs.rm(record.path)

    def blocked_shards(self) -> dict[str, BlockedShard]:
        """Every shard whose last run was blocked, read with one listing of the frames folder."""
        folder = self.location.child("frames", BLOCKED_DIR)
        if not folder.fs.isdir(folder.path):
            return {}
        blocked = {}
        for entry in folder.fs.ls(folder.path, detail=False):
            if entry.endswith(".json"):
                record = BlockedShard.from_json(folder.fs.cat_file(entry))
                blocked[record.key] = record
        return blocked

    def write_file(self, relative: str, data: bytes) -> str:
        """Replace the file at ``relative`` (to the root) with ``data`` in one step; returns its location."""
        target = self.location.child(relative)
        if target.is_local:
            Path(target.path).parent.mkdir(parents=True, exist_ok=True)
            replace_file(Path(target.path), data)
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

    def shard_location(self, key: str) -> Location:
        return self.location.child("frames", key)

    def index_location(self, key: str) -> Location:
        return self.shard_location(key).child(INDEX_NAME)


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


def published_versions(store: FramesStore, key: str) -> PublishedVersions:
    """The versions the published index of ``key`` names and keeps (none for an unpublished shard)."""
    metadata = _index_metadata(store, key) or {}
    replaced = json.loads(metadata.get(REPLACED_KEY, "{}"))
    return PublishedVersions(
        metadata.get(VERSION_KEY) or None, {name: datetime.fromisoformat(when) for name, when in replaced.items()}
    )


def _index_metadata(store: FramesStore, key: str) -> dict[str, str] | None:
    """The key-value metadata of the published index of ``key`` (only its footer is read)."""
    try:
        metadata = read_parquet_schema(store.index_location(key)).metadata or {}
    except FileNotFoundError:
        return None
    return {k.decode(): v.decode() for k, v in metadata.items() if k.startswith(b"frames_pipeline.")}


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
