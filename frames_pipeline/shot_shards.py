"""One shard's shots: its published frames scored by TransNetV2, shot rows, checks, preview and
publish. No Dagster here.

``detect_shard_shots`` is the whole of it: the Dagster asset ``video_shots`` is a thin call into it.
It reads the frames through the store (one read of the frames index, then each video's arrays), so
it works on whatever data root the frames were published to, and publishes the shots beside them
by the frames' rule (``storage/shots.py`` has the layout).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from frames_pipeline.previews import ShotSheetRow, shot_sheet
from frames_pipeline.shards import ShardCheck, blocking_failures
from frames_pipeline.shots import DEFAULT_THRESHOLD, INPUT_HW, VideoShots, video_shots
from frames_pipeline.storage.shard_writer import ShardWriter, unwritable_as_error
from frames_pipeline.storage.shots import PREVIEW_FILE, SHOTS, SHOTS_FILE, SHOTS_SCHEMA
from frames_pipeline.storage.store import FramesStore, PublishedShard

# Bumped when a change to this code changes what a shard's shots are (video_shots' code_version).
SHOTS_CODE_VERSION = "1"
SHOTS_PRESENT_CHECK = "ok_videos_have_shots"
SHOTS_ORDER_CHECK = "shots_ordered"
SHOTS_COVER_CHECK = "shots_cover_videos"
_LISTED = 50  # ids named in one check's details

# Why a video has no shots: reason code -> hint.
FRAMES_FAILED = "frames_failed"
FRAMES_UNREADABLE = "frames_unreadable"
WRONG_FRAME_SIZE = "wrong_frame_size"
HINTS = {
    FRAMES_UNREADABLE: "the published frames of this shard are missing or damaged: materialize video_frames again",
    WRONG_FRAME_SIZE: f"TransNetV2 takes {INPUT_HW[0]}x{INPUT_HW[1]} frames: decode the shard with frame_decoder "
    f"output_hw [{INPUT_HW[0]}, {INPUT_HW[1]}]",
}

Predict = Callable[[Iterable[tuple[str, NDArray[np.uint8]]]], Iterator[tuple[str, NDArray[np.float32]]]]
ShotsProgress = Callable[[dict[str, Any], int, int], None]  # a video's index row, videos done, videos in all


class FramesNotPublishedError(FileNotFoundError):
    """The shard has no published frames to detect shots in."""


@dataclass(frozen=True)
class ShotsReport:
    """What ``detect_shard_shots`` did: one index row per row of the frames index (its order), every
    shot, the checks, and where the shots were published (None when a check failed)."""

    key: str
    version: str
    records: list[dict[str, Any]]
    shots: pd.DataFrame  # SHOTS_SCHEMA's columns
    checks: list[ShardCheck]
    num_frames: int  # frames scored
    detect_s: float  # reading the frames and scoring them
    preview: bytes
    published: str | None

    @property
    def preview_path(self) -> str:
        """Where the preview of this version is once published, relative to the data root."""
        return f"{SHOTS.folder}/{self.key}/{self.version}/{PREVIEW_FILE}"

    @property
    def blocked_by(self) -> list[ShardCheck]:
        """The failed checks (all of them block): why the shots were not published."""
        return blocking_failures(self.checks)

    @property
    def shots_per_minute(self) -> float:
        """Shots per minute of the ok videos' playing time (0 when they have none)."""
        minutes = sum(r["duration_s"] for r in self.records if r["status"] == "ok") / 60
        return len(self.shots) / minutes if minutes > 0 else 0.0


@dataclass(frozen=True)
class _Failure:
    reason: str
    error: str
    hint: str


def detect_shard_shots(
    store: FramesStore,
    key: str,
    predict: Predict,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    progress: ShotsProgress | None = None,
) -> ShotsReport:
    """Detect the shots of every video of the published frames of shard ``key`` and publish them if
    the checks pass.

    ``predict`` scores frames (a ``ShotDetector``'s ``predict``). A video without frames to score
    (its decode failed, its files cannot be read, they are not 27x48) is a row with its reason, not
    an error. The shots index records the manifest version and shard size its frames were cut with.
    Raises ``FramesNotPublishedError`` when the shard's frames were never published,
    ``ShardBusyError`` if another writer holds the shard's shots and ``ShardUnwritableError`` if the
    shots folder is read-only or full.
    """
    frames = store.read_index_and_cut(key)
    if frames is None:
        raise FramesNotPublishedError(f"shard {key} has no published frames: materialize video_frames for it first")
    index, cut = frames
    with unwritable_as_error(key, str(store.location.child(SHOTS.folder))):
        return _detect_shard_shots(store, key, index.to_dict("records"), cut, predict, threshold, progress)


def _detect_shard_shots(
    store: FramesStore,
    key: str,
    rows: list[dict[str, Any]],
    cut: PublishedShard,
    predict: Predict,
    threshold: float,
    progress: ShotsProgress | None,
) -> ShotsReport:
    with ShardWriter(store, key, dataset=SHOTS) as shard:
        failures: dict[str, _Failure] = {}
        found: dict[str, tuple[VideoShots, NDArray[np.uint8]]] = {}  # shots, and a frame of each
        timestamps: dict[str, NDArray[np.float64]] = {}
        held: dict[str, NDArray[np.uint8]] = {}  # frames being scored, for the preview's frames

        def report(row: dict[str, Any]) -> None:
            if progress is not None:
                progress(_index_row(row, found, failures, None), len(found) + len(failures), len(rows))

        def readable() -> Iterator[tuple[str, NDArray[np.uint8]]]:
            for row in rows:
                read = _read(store, key, row)
                if isinstance(read, _Failure):
                    failures[row["video_id"]] = read
                    report(row)
                    continue
                held[row["video_id"]], timestamps[row["video_id"]] = read
                yield row["video_id"], read[0]

        by_id = {row["video_id"]: row for row in rows}
        started = time.perf_counter()
        for video_id, scores in predict(readable()):
            shots = video_shots(scores, timestamps.pop(video_id), threshold)
            found[video_id] = shots, held.pop(video_id)[(shots.first_frame + shots.last_frame) // 2]
            report(by_id[video_id])
        detect_s = time.perf_counter() - started
        shots_file = f"{shard.version}/{SHOTS_FILE}"
        records = [_index_row(row, found, failures, shots_file) for row in rows]
        table = _shots_table([(row["video_id"], found[row["video_id"]][0]) for row in rows if row["video_id"] in found])
        shard.write_file(SHOTS_FILE, _parquet_bytes(table))
        shard.write_index(records, manifest_hash=cut.manifest_hash, shard_size=cut.shard_size)
        shots = table.to_pandas()
        checks = shots_checks(records, shots)
        preview = shot_sheet(
            [
                ShotSheetRow(
                    r["video_id"], found[r["video_id"]][1] if r["status"] == "ok" else None, r["error_reason"] or ""
                )
                for r in records
            ]
        )
        shard.write_file(PREVIEW_FILE, preview)
        if blocking_failures(checks):
            shard.discard()
            published = None
        else:
            published = shard.publish()
    num_frames = sum(r["num_frames"] for r in records if r["status"] == "ok")
    return ShotsReport(key, shard.version, records, shots, checks, num_frames, detect_s, preview, published)


def _read(
    store: FramesStore, key: str, row: dict[str, Any]
) -> _Failure | tuple[NDArray[np.uint8], NDArray[np.float64]]:
    """One video's frames and timestamps, or why there are none to score."""
    if row["status"] != "ok":
        error = f"video_frames failed: {row['error_reason']}: {row['error']}"
        return _Failure(FRAMES_FAILED, error, row["hint"] or "see the frames index of the shard")
    try:
        frames, pts = store.read_row_frames(key, row)
    except (OSError, ValueError, EOFError) as exc:
        return _Failure(FRAMES_UNREADABLE, f"{row['frames_file']}: {exc}", HINTS[FRAMES_UNREADABLE])
    if (
        frames.dtype != np.uint8
        or frames.ndim != 4
        or frames.shape[3:] != (3,)
        or len(frames) != row["num_frames"]
        or pts.shape != (len(frames),)
    ):
        error = f"{row['frames_file']}: frames {frames.shape} {frames.dtype} with {pts.shape} timestamps"
        return _Failure(FRAMES_UNREADABLE, error, HINTS[FRAMES_UNREADABLE])
    if frames.shape[1:3] != INPUT_HW:
        error = f"frames are {frames.shape[1]}x{frames.shape[2]}, TransNetV2 takes {INPUT_HW[0]}x{INPUT_HW[1]}"
        return _Failure(WRONG_FRAME_SIZE, error, HINTS[WRONG_FRAME_SIZE])
    return frames, pts


def _index_row(
    row: dict[str, Any],
    found: dict[str, tuple[VideoShots, NDArray[np.uint8]]],
    failures: dict[str, _Failure],
    shots_file: str | None,
) -> dict[str, Any]:
    """The shots index row of one row of the frames index."""
    video_id = row["video_id"]
    common = {"manifest_row": row["manifest_row"], "video_id": video_id}
    if video_id in failures:
        failure = failures[video_id]
        num_frames = row["num_frames"] if failure.reason != FRAMES_FAILED else None
        return common | {
            "status": "failed",
            "num_frames": num_frames,
            "num_shots": None,
            "duration_s": None,
            "error_reason": failure.reason,
            "error": failure.error,
            "hint": failure.hint,
            "shots_file": None,
        }
    shots = found[video_id][0]
    return common | {
        "status": "ok",
        "num_frames": row["num_frames"],
        "num_shots": len(shots),
        "duration_s": float(shots.end_s[-1] - shots.start_s[0]),
        "error_reason": None,
        "error": None,
        "hint": None,
        "shots_file": shots_file,
    }


def _shots_table(videos: Sequence[tuple[str, VideoShots]]) -> pa.Table:
    """SHOTS_SCHEMA's table of the shots of ``videos``, video by video."""
    columns: dict[str, list[Any]] = {name: [] for name in SHOTS_SCHEMA.names}
    for video_id, shots in videos:
        columns["video_id"].append(np.full(len(shots), video_id, dtype=object))
        columns["shot"].append(np.arange(len(shots)))
        columns["first_frame"].append(shots.first_frame)
        columns["last_frame"].append(shots.last_frame)
        columns["start_s"].append(shots.start_s)
        columns["end_s"].append(shots.end_s)
    arrays = [
        pa.array(np.concatenate(parts) if parts else [], type=field.type)
        for field, parts in zip(SHOTS_SCHEMA, columns.values(), strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=SHOTS_SCHEMA)


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def shots_checks(records: Sequence[dict[str, Any]], shots: pd.DataFrame) -> list[ShardCheck]:
    """The checks of a shard's shots (all blocking): every ok video has shots, in order, covering its
    frames and its time with no gap and no overlap, and no other video has any."""
    by_video = {video_id: group for video_id, group in shots.groupby("video_id", sort=False)}
    ok = {r["video_id"]: r for r in records if r["status"] == "ok"}
    without = [video_id for video_id in ok if video_id not in by_video]
    unordered = [video_id for video_id, group in by_video.items() if not _ordered(group)]
    uncovered = [
        f"{video_id}: {why}"
        for video_id, group in by_video.items()
        if (why := _coverage_problem(group, ok[video_id]["num_frames"] if video_id in ok else None))
    ]
    return [
        _blocking_check(SHOTS_PRESENT_CHECK, "without_shots", without, f"of {len(ok)} ok video(s) have no shot"),
        _blocking_check(SHOTS_ORDER_CHECK, "unordered", unordered, "video(s) have shots out of order"),
        _blocking_check(
            SHOTS_COVER_CHECK,
            "uncovered",
            uncovered,
            "video(s) have shots that leave frames out, overlap or belong to no ok video",
        ),
    ]


def _blocking_check(name: str, label: str, offenders: list[str], description: str) -> ShardCheck:
    """A check that passes when nothing offends; its details count and name the offenders."""
    return ShardCheck(
        name,
        passed=not offenders,
        description=f"{len(offenders)} {description}",
        details={f"num_{label}": len(offenders), label: offenders[:_LISTED]},
        blocking=True,
    )


def _ordered(group: pd.DataFrame) -> bool:
    """Shots numbered 0, 1, ... in table order, each starting later than the one before."""
    return (
        group["shot"].tolist() == list(range(len(group)))
        and bool(np.all(np.diff(group["first_frame"]) > 0))
        and bool(np.all(np.diff(group["start_s"]) > 0))
    )


def _coverage_problem(group: pd.DataFrame, num_frames: int | None) -> str | None:
    """How the shots of one video fail to cover its frames and time exactly once, or None."""
    first, last = group["first_frame"].to_numpy(), group["last_frame"].to_numpy()
    start, end = group["start_s"].to_numpy(), group["end_s"].to_numpy()
    if num_frames is None:
        return "not an ok video"
    if first[0] != 0 or last[-1] != num_frames - 1:
        return f"frames {first[0]}..{last[-1]} of 0..{num_frames - 1}"
    if np.any(last < first) or np.any(end < start):
        return "a shot ends before it starts"
    if np.any(first[1:] != last[:-1] + 1) or np.any(start[1:] != end[:-1]):
        return "a gap or an overlap between shots"
    return None
