"""Materialization metadata: counts and rates as numbers (only those are plotted per partition), and
plain records as UI tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg
import numpy as np

from frames_pipeline.shards import ShardReport
from frames_pipeline.storage.summary import count_values

TABLE_LIMIT = 500  # rows of a metadata table shown in the UI
_VIDEO_COLUMNS = ("video_id", "status", "num_frames", "decode_mode", "error_reason", "error", "decode_s")


def frames_metadata(report: ShardReport, pool_mode: str, output_hw: tuple[int, int]) -> dict[str, Any]:
    """``video_frames`` metadata of a shard report."""
    ok = [r for r in report.records if r["status"] == "ok"]
    frame_count = sum(r["num_frames"] for r in ok)
    wall_s = report.decode_s
    return {
        "num_videos": len(report.records),
        "num_ok": len(ok),
        "num_failed": len(report.records) - len(ok),
        "num_resumed": report.num_resumed,
        "frame_count": frame_count,
        "decode_s": round(wall_s, 3),
        # Frames this run decoded (a resumed shard's kept videos took no decode time).
        "decode_fps": round(report.num_decoded_frames / wall_s, 1) if wall_s > 0 else 0.0,
        "first_frame_s": round(report.first_frame_s, 3) if report.first_frame_s is not None else 0.0,
        "decode_mode": dg.MetadataValue.json(count_values(r["decode_mode"] for r in ok)),
        "pool_mode": pool_mode,
        "failures": dg.MetadataValue.json(count_values(r["error_reason"] for r in report.records)),
        "output_hw": dg.MetadataValue.json(list(output_hw)),
        "path": dg.MetadataValue.path(report.published or ""),
        "videos": table(
            [{k: r[k] for k in _VIDEO_COLUMNS} | {"decode_s": round(r["decode_s"], 3)} for r in report.records]
        ),
    }


def table(records: Sequence[dict[str, Any]]) -> dg.MetadataValue:
    """A UI table of plain records (first 500 rows); columns typed from the first record."""
    rows = list(records)[:TABLE_LIMIT]
    types = {bool: "bool", int: "int", float: "float"}
    first = rows[0] if rows else {}
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name, types.get(type(value), "string")) for name, value in first.items()]
    )
    return dg.MetadataValue.table(
        records=[dg.TableRecord({k: _plain(v) for k, v in row.items()}) for row in rows], schema=schema
    )


def _plain(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
