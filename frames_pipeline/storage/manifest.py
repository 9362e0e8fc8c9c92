"""Read and validate video manifests, make video ids safe, and cut manifests into shards.

A manifest is a CSV, Parquet or JSON Lines file, local or at an fsspec URL, with one video per row:
``path`` is required (relative paths resolve against the manifest's folder; URLs stay as written,
for the decoder to refuse or, with ``allow_remote``, to read), ``video_id`` is optional (derived from the file name
when absent), and every other column is carried through. Row numbers in errors are 1-based data
rows (the CSV header is not a row). File names need not be UTF-8: bytes a text manifest cannot
decode are kept as surrogate escapes, which is how Python names such files (``os.fsdecode``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import posixpath
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frames_pipeline.decode import is_url
from frames_pipeline.storage.locations import Location, read_parquet

MANIFEST_SUFFIXES = (".csv", ".parquet", ".jsonl", ".ndjson")
# Videos per shard: one setting for the code location, its sensor and schedule, and the CLI.
SHARD_SIZE_ENV = "FRAMES_PIPELINE_SHARD_SIZE"
DEFAULT_SHARD_SIZE = 100
# Columns the pipeline adds; a manifest may not bring its own under these names.
RESERVED_COLUMNS = frozenset({"manifest_row"})
RESERVED_PREFIX = "probe_"
# A manifest stem becomes part of partition keys and folder names: keep it plain.
_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SHARD_KEY = re.compile(r"(?P<stem>.+)-(?P<index>\d{5})")
# Ids longer than this (in UTF-8 bytes) are cut and given a hash, so `<id>.pts.npy` and the
# writer's temporary names stay well under the 255-byte file-name limit.
_MAX_ID_BYTES = 100
# The duplicate marker is a character safe_video_id never emits, so a suffixed id cannot collide
# with another row's id.
_DUP_MARK = "~"
# Lone surrogates: undecodable bytes kept by surrogateescape, or escapes written into JSON text.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class ManifestProblem:
    """One thing wrong with a manifest; ``row`` and ``column`` are None when they do not apply."""

    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = [f"row {self.row}" if self.row is not None else "", f"column {self.column!r}" if self.column else ""]
        prefix = ", ".join(part for part in where if part)
        return f"{prefix}: {self.message}" if prefix else self.message


class ManifestError(Exception):
    """A manifest cannot be used. ``file``, ``row`` and ``column`` locate the first problem;
    ``problems`` lists them all, so one run shows every bad row."""

    def __init__(self, file: str | os.PathLike[str], problems: Sequence[ManifestProblem]) -> None:
        self.file = str(file)
        self.problems = tuple(problems)
        first = self.problems[0]
        self.row, self.column = first.row, first.column
        super().__init__(str(self))

    def __str__(self) -> str:
        shown = "; ".join(str(p) for p in self.problems[:10])
        more = f" (and {len(self.problems) - 10} more)" if len(self.problems) > 10 else ""
        return f"{self.file}: {shown}{more}"


@dataclass(frozen=True)
class ManifestRow:
    """One validated video: ``path`` is absolute, ``video_id`` is safe and unique in the manifest."""

    row: int
    video_id: str
    path: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {"manifest_row": self.row, "video_id": self.video_id, "path": self.path, **self.extra}


def safe_video_id(raw: str) -> str:
    """A file-name-safe form of ``raw``: letters, digits, ``.``, ``_`` and ``-`` only (Unicode letters
    kept, NFC-normalised); no separators, control characters, ``..`` or leading dot; at most 100 bytes.
    Undecodable bytes (surrogate-escaped) become ``_``."""
    text = unicodedata.normalize("NFC", _SURROGATE.sub("_", raw))
    cleaned = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)
    cleaned = re.sub(r"\.{2,}", ".", re.sub(r"_+", "_", cleaned)).lstrip(".") or "video"
    if cleaned[-4:].lower() == ".pts":  # "<id>.pts.npy" would be the timestamps file of video "<id>"
        cleaned = f"{cleaned[:-4]}_{cleaned[-3:]}"
    if len(cleaned.encode()) > _MAX_ID_BYTES:
        digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        cleaned = cleaned.encode()[: _MAX_ID_BYTES - 11].decode("utf-8", "ignore") + "-" + digest
    return cleaned


def unique_ids(ids: Sequence[str]) -> list[str]:
    """Give repeated ids (compared case-insensitively, as macOS and Windows file systems do) the
    suffix ``~2``, ``~3``, ... in row order; the first occurrence keeps its id."""
    seen: dict[str, int] = {}
    result = []
    for video_id in ids:
        key = video_id.casefold()
        seen[key] = seen.get(key, 0) + 1
        result.append(video_id if seen[key] == 1 else f"{video_id}{_DUP_MARK}{seen[key]}")
    return result


def file_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes: what tells a changed manifest from an unchanged one."""
    file = Location.of(path)
    digest = hashlib.sha256()
    with file.fs.open(file.path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_manifests(folder: str | os.PathLike[str]) -> list[str]:
    """Manifest files directly in ``folder`` (hidden files and other suffixes ignored), sorted."""
    root = Location.of(folder)
    if not root.fs.isdir(root.path):
        return []
    files = [posixpath.basename(e["name"]) for e in root.fs.ls(root.path, detail=True) if e["type"] == "file"]
    return sorted(
        str(root.child(name))
        for name in files
        if not name.startswith(".") and posixpath.splitext(name)[1] in MANIFEST_SUFFIXES
    )


def manifest_stem(path: str | os.PathLike[str]) -> str:
    """The stem of a manifest file (its name without the suffix): the prefix of its shard keys."""
    return posixpath.splitext(Location.of(path).name)[0]


def manifest_for_stem(folder: str | os.PathLike[str], stem: str) -> str:
    """The one manifest file in ``folder`` whose stem is ``stem``."""
    matches = [p for p in find_manifests(folder) if manifest_stem(p) == stem]
    if len(matches) != 1:
        names = ", ".join(Location.of(p).name for p in matches)
        what = "no manifest" if not matches else f"several manifests ({names})"
        raise ManifestError(
            str(Location.of(folder).child(stem)), [ManifestProblem(None, None, f"{what} with stem {stem!r}")]
        )
    return matches[0]


def configured_shard_size() -> int:
    """``$FRAMES_PIPELINE_SHARD_SIZE`` (default 100): how many manifest rows make one shard.

    Everything that cuts manifests into shards reads it here (the Dagster resource, hence the sensor,
    the schedule and the assets, and the CLI), so they cannot disagree about which keys exist.
    """
    raw = os.environ.get(SHARD_SIZE_ENV, "").strip()
    if not raw:
        return DEFAULT_SHARD_SIZE
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"{SHARD_SIZE_ENV}={raw!r}: expected a positive whole number of videos per shard")
    return size


def shard_key(stem: str, index: int) -> str:
    """Partition key of shard ``index`` of manifest ``stem``: ``<stem>-<5-digit index>``."""
    return f"{stem}-{index:05d}"


def parse_shard_key(key: str) -> tuple[str, int]:
    """(manifest stem, shard index) of a shard key."""
    match = _SHARD_KEY.fullmatch(key)
    if not match:
        raise ValueError(f"{key!r} is not a shard key (<manifest stem>-<5 digits>)")
    return match["stem"], int(match["index"])


def shard_count(num_rows: int, shard_size: int) -> int:
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    return math.ceil(num_rows / shard_size)


def shard_keys(manifest: str | os.PathLike[str], shard_size: int) -> list[str]:
    """Keys of every shard of a manifest file (validates the whole manifest)."""
    rows = read_manifest(manifest)
    return [shard_key(manifest_stem(manifest), i) for i in range(shard_count(len(rows), shard_size))]


def shard_rows(rows: Sequence[ManifestRow], index: int, shard_size: int) -> list[ManifestRow]:
    """Rows of shard ``index``: consecutive slices of ``shard_size`` rows in manifest order."""
    return list(rows[index * shard_size : (index + 1) * shard_size])


@dataclass(frozen=True)
class ShardManifest:
    """The rows of one shard and the manifest version they were read from (its content hash, which
    tells the sensor and the schedule whether a published shard is still up to date)."""

    key: str
    manifest: str
    manifest_hash: str
    rows: tuple[ManifestRow, ...]


def read_shard(manifests_dir: str | os.PathLike[str], key: str, shard_size: int) -> ShardManifest:
    """The validated rows of shard ``key``; ManifestError if its manifest is gone, invalid or too short."""
    stem, index = parse_shard_key(key)
    path = manifest_for_stem(manifests_dir, stem)
    # Hash first: if the file changes while we read it, the recorded hash is the older one and the
    # schedule sees the shard as out of date, which errs on the safe side.
    digest = file_hash(path)
    rows = shard_rows(read_manifest(path), index, shard_size)
    if not rows:
        problem = ManifestProblem(
            None, None, f"has no shard {index} (the manifest shrank; the sensor removes stale keys)"
        )
        raise ManifestError(path, [problem])
    return ShardManifest(key, path, digest, tuple(rows))


def read_manifest(path: str | os.PathLike[str]) -> list[ManifestRow]:
    """Validate a manifest and return its rows; raises ManifestError listing every problem."""
    checked = check_manifest(path)
    if checked.problems:
        raise ManifestError(str(Location.of(path)), checked.problems)
    return list(checked.rows)


@dataclass(frozen=True)
class ManifestCheck:
    """Every problem of a manifest, and the rows that are valid on their own (video ids made unique
    among them), so a check can go on with those, e.g. looking for their files."""

    rows: tuple[ManifestRow, ...]
    problems: tuple[ManifestProblem, ...]


def check_manifest(path: str | os.PathLike[str]) -> ManifestCheck:
    """Validate every row of a manifest, whatever kind of problem an earlier row or the header has."""
    file = Location.of(path)
    stem = manifest_stem(path)
    problems: list[ManifestProblem] = []
    if not _STEM.fullmatch(stem) or ".." in stem:
        problems.append(ManifestProblem(None, None, "the file stem must match [A-Za-z0-9][A-Za-z0-9_.-]*, no '..'"))
    try:
        columns, records = _read_records(file, problems)
    except (OSError, ValueError, csv.Error) as exc:  # unreadable or not the format its suffix says
        return ManifestCheck((), (*problems, ManifestProblem(None, None, f"cannot read: {exc}")))
    if "path" not in columns:
        problems.append(ManifestProblem(None, "path", "required column is missing"))
    problems += [
        ManifestProblem(None, name, "column name is reserved for the pipeline")
        for name in columns
        if name in RESERVED_COLUMNS or name.startswith(RESERVED_PREFIX)
    ]
    rows: list[tuple[int, str, str, dict[str, Any]]] = []
    if "path" in columns:
        for number, record in records:
            row = _validate_record(number, record, file.parent(), problems)
            if row is not None:
                rows.append(row)
    ids = unique_ids([safe_video_id(raw_id) for _, raw_id, _, _ in rows])
    valid = tuple(ManifestRow(n, vid, p, extra) for (n, _, p, extra), vid in zip(rows, ids, strict=True))
    return ManifestCheck(valid, tuple(sorted(problems, key=lambda p: p.row or 0)))  # file order; header first


def _validate_record(
    number: int, record: Mapping[str, Any], base: Location, problems: list[ManifestProblem]
) -> tuple[int, str, str, dict[str, Any]] | None:
    """(row, raw id, absolute path or URL, extra columns) of one record, or None after adding its problems."""
    raw_path = _text(record.get("path"))
    if raw_path is None:
        problems.append(ManifestProblem(number, "path", "empty or not text"))
        return None
    if "\x00" in raw_path or not _is_file_name(raw_path):
        problems.append(ManifestProblem(number, "path", "contains a NUL byte or a character no file name can hold"))
        return None
    raw_id = record.get("video_id")
    if _missing(raw_id):
        raw_id = Path(raw_path).stem
    elif isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        problems.append(ManifestProblem(number, "video_id", f"must be text or an integer, got {raw_id!r}"))
        return None
    if base.is_local:
        # A URL joined to base would become a missing file, hiding why it is refused; an absolute
        # raw_path replaces base.
        url = is_url(raw_path) and not os.path.exists(os.path.join(base.path, raw_path))
        resolved = raw_path if url else os.path.normpath(os.path.join(base.path, raw_path))
    else:  # next to a remote manifest a relative path names a remote video: a URL for the decoder's rules
        relative = not (is_url(raw_path) or os.path.isabs(raw_path))
        resolved = str(base.child(posixpath.normpath(raw_path))) if relative else raw_path
    extra = {k: _clean_value(v) for k, v in record.items() if k not in ("path", "video_id")}
    return number, str(raw_id), resolved, extra


def _read_records(
    file: Location, problems: list[ManifestProblem]
) -> tuple[list[str], list[tuple[int, Mapping[str, Any]]]]:
    """Column names and (row number, record) pairs of a manifest file, by suffix; rows that cannot be
    records at all (a ragged CSV line, a line that is not a JSON object) go to ``problems``."""
    suffix = posixpath.splitext(file.name)[1]
    if suffix == ".csv":
        # surrogateescape: a stray non-UTF-8 byte is reported on its row, not as an unreadable file.
        with _open_text(file, newline="") as fh:
            reader = csv.DictReader(fh, restkey="\x00extra")
            raw = list(reader)
            columns = [c.strip() for c in reader.fieldnames or []]
        records: list[tuple[int, Mapping[str, Any]]] = []
        for number, record in enumerate(raw, start=1):
            if "\x00extra" in record:
                problems.append(ManifestProblem(number, None, "more fields than the header has columns"))
                continue
            # Blank CSV cells mean "no value", as they do in Parquet and JSON Lines.
            records.append((number, {k.strip(): (v if v not in ("", None) else None) for k, v in record.items()}))
        return columns, records
    if suffix == ".parquet":
        table = read_parquet(file)
        return list(table.column_names), list(enumerate(table.to_pylist(), start=1))
    if suffix in (".jsonl", ".ndjson"):
        return _read_json_lines(file, problems)
    raise ValueError(f"unsupported manifest type {suffix!r}; use one of {', '.join(MANIFEST_SUFFIXES)}")


def _open_text(file: Location, newline: str | None = None) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        file.fs.open(file.path, "rb"), encoding="utf-8-sig", errors="surrogateescape", newline=newline
    )


def _read_json_lines(
    file: Location, problems: list[ManifestProblem]
) -> tuple[list[str], list[tuple[int, Mapping[str, Any]]]]:
    columns: dict[str, None] = {}
    records: list[tuple[int, Mapping[str, Any]]] = []
    with _open_text(file) as fh:
        lines = [line for line in fh if line.strip()]
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:  # bad syntax, an integer past 4300 digits, deep nesting
            problems.append(ManifestProblem(number, None, f"not valid JSON: {getattr(exc, 'msg', exc)}"))
            continue
        if not isinstance(record, dict):
            problems.append(ManifestProblem(number, None, "each line must be a JSON object"))
            continue
        columns.update(dict.fromkeys(record))
        records.append((number, record))
    return list(columns), records


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value)


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _is_file_name(text: str) -> bool:
    """Whether the OS can take ``text`` as a path: surrogate escapes of raw bytes can, other lone
    surrogates (from JSON ``\\ud800`` escapes) cannot."""
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return False
    return True


def _clean_value(value: Any) -> Any:
    """Carried-through values must survive Parquet and the UI: lone surrogates become U+FFFD."""
    return _SURROGATE.sub("\ufffd", value) if isinstance(value, str) else value
