"""The shots dataset: where the shots of a shard's frames are kept and how to read them. No Dagster here.

Beside ``frames/``, and published by the same rule (``shard_writer.py``: a version folder written in
full, then the index that names it replaces the previous one in one step)::

    shots/<shard key>/index.parquet                one row per row of the frames index: status, shot count, reason
    shots/<shard key>/<version>/shots.parquet      one row per shot of every ok video (SHOTS_SCHEMA)
    shots/<shard key>/<version>/shots_preview.png  one frame of each shot of each video

A video's shots cover it: the first starts at frame 0, each next one at the frame after the last
frame of the one before, and the last ends at the video's last frame. Times come from the frames'
own timestamps (``<video_id>.pts.npy``), so they are right for variable-frame-rate video too:
``start_s`` is when the shot's first frame is shown, ``end_s`` when the frame after its last one is
(the next shot's ``start_s``); for a video's last frame, its timestamp plus the interval before it.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from frames_pipeline.storage.locations import read_parquet
from frames_pipeline.storage.store import Dataset, FramesStore, column_field

SHOTS_FILE = "shots.parquet"
PREVIEW_FILE = "shots_preview.png"

SHOTS_INDEX_SCHEMA = pa.schema(
    [
        column_field("manifest_row", pa.int64(), "row of the manifest (1-based data rows)"),
        column_field("video_id", pa.string(), "the video's id in the frames index"),
        column_field("status", pa.string(), "ok or failed"),
        column_field("num_frames", pa.int64(), "frames the model scored; null when none could be read"),
        column_field("num_shots", pa.int64(), "shots found; null when failed"),
        column_field("duration_s", pa.float64(), "end of the last shot minus start of the first; null when failed"),
        column_field("error_reason", pa.string(), "frames_failed, frames_unreadable or wrong_frame_size"),
        column_field("error", pa.string(), "what went wrong"),
        column_field("hint", pa.string(), "what to do about the error"),
        column_field(
            "shots_file", pa.string(), "<version>/shots.parquet relative to the shard folder; null when failed"
        ),
    ]
)

SHOTS_SCHEMA = pa.schema(
    [
        column_field("video_id", pa.string(), "the video's id in the frames index"),
        column_field("shot", pa.int64(), "0, 1, ... in the video's order"),
        column_field("first_frame", pa.int64(), "the shot's first frame in the video's frames file"),
        column_field("last_frame", pa.int64(), "the shot's last frame (inclusive)"),
        column_field("start_s", pa.float64(), "when the first frame is shown (its pts), seconds"),
        column_field("end_s", pa.float64(), "when the frame after the last one is shown (the next start_s), seconds"),
    ]
)

SHOTS = Dataset("shots", SHOTS_INDEX_SCHEMA)


def read_shots(store: FramesStore, key: str) -> pd.DataFrame | None:
    """Every shot of the published shots of shard ``key`` (SHOTS_SCHEMA's columns, video by video),
    or None if they were never published. Why a video has no shots is in ``store.read_index(key, SHOTS)``."""
    index = store.read_index(key, SHOTS)
    if index is None:
        return None
    files = index["shots_file"].dropna().unique()
    if not len(files):
        return SHOTS_SCHEMA.empty_table().to_pandas()
    (name,) = files  # one version: every ok row of an index names the same file
    return read_parquet(store.shard_location(key, SHOTS).child(name)).to_pandas()
