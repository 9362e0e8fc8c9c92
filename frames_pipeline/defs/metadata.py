"""Metadata as the Dagster UI shows it: counts and rates as numbers (only those are plotted per
partition), records as tables with typed columns, column schemas, and pictures.

Pictures: the UI shows a markdown value in place only when it is under 1,000 characters (longer ones
sit behind "[Show Markdown]"), and no PNG worth looking at is that small as a data URI. So with
`FRAMES_PIPELINE_PREVIEW_URL` set (where the data root is served over HTTP: `frames-pipeline
serve-previews` for a local one, a bucket's web endpoint for object storage) a picture is a short
link to its file in the data root and shows at a glance; without it, it is embedded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa

from frames_pipeline.previews import PREVIEW_URL_ENV, markdown_image
from frames_pipeline.shards import ShardInputs, ShardReport
from frames_pipeline.storage.manifest import ShardManifest
from frames_pipeline.storage.status import STATE_ORDER
from frames_pipeline.storage.store import INDEX_SCHEMA
from frames_pipeline.storage.summary import count_values, merge_counts

TABLE_LIMIT = 500  # rows of a metadata table shown in the UI
# Per-video table: what happened, then what the probe found; the manifest's own columns follow.
_VIDEO_COLUMNS = (
    "video_id",
    "status",
    "num_frames",
    "decode_mode",
    "error_reason",
    "error",
    "decode_s",
    "codec",
    "source_height",
    "source_width",
    "source_fps",
    "source_duration_s",
    "vfr",
    "rotation",
)
_ARROW_TYPES = {"int32": "int", "int64": "int", "double": "float", "bool": "bool", "string": "string"}
_PYTHON_TYPES = {bool: "bool", int: "int", float: "float", str: "string"}


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    """A Dagster column schema of an Arrow schema, with each field's ``description`` metadata."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                field.name,
                _ARROW_TYPES.get(str(field.type), str(field.type)),
                description=(field.metadata or {}).get(b"description", b"").decode() or None,
            )
            for field in schema
        ]
    )


INDEX_COLUMNS = column_schema(INDEX_SCHEMA)  # video_frames: the columns of each shard's index.parquet


def manifest_metadata(shard: ShardManifest, shard_size: int) -> dict[str, Any]:
    """`video_manifest` metadata: the rows with every column the manifest has, and where they came from."""
    records = [row.to_record() for row in shard.rows]
    return {
        "num_videos": len(shard.rows),
        "dagster/row_count": len(shard.rows),
        "shard_size": shard_size,
        "manifest": dg.MetadataValue.path(shard.manifest),
        "manifest_hash": shard.manifest_hash,
        "dagster/column_schema": _record_schema(records),
        "rows": table(records),
    }


def frames_metadata(
    report: ShardReport, manifest: ShardManifest, inputs: ShardInputs, pool_mode: str
) -> dict[str, Any]:
    """`video_frames` metadata of a published shard."""
    ok = [r for r in report.records if r["status"] == "ok"]
    frame_count = sum(r["num_frames"] for r in ok)
    wall_s = report.decode_s
    extra = {row.video_id: row.extra for row in manifest.rows}
    videos = [
        {k: r[k] for k in _VIDEO_COLUMNS}
        | {"decode_s": round(r["decode_s"], 3), "source_fps": _rounded(r["source_fps"], 3)}
        | {"source_duration_s": _rounded(r["source_duration_s"], 3)}
        | dict(extra.get(r["video_id"], {}))
        for r in report.records
    ]
    return {
        "num_videos": len(report.records),
        "dagster/row_count": len(report.records),
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
        "output_hw": dg.MetadataValue.json(list(inputs.options.output_hw)),
        "manifest_hash": inputs.manifest_hash,
        "shard_size": inputs.shard_size,
        "manifest": dg.MetadataValue.path(manifest.manifest),
        "path": dg.MetadataValue.path(report.published or ""),
        "contact_sheet": picture(report.contact_sheet, f"contact sheet of {report.key}", report.contact_sheet_path),
        "videos": table(videos),
    }


def summary_metadata(shards: pd.DataFrame, chart: bytes, chart_path: str) -> dict[str, Any]:
    """`frames_summary` metadata: totals as numbers, shards per state, and the shards, problems first."""
    states = shards["state"].value_counts().to_dict()
    ordered = shards.assign(order=shards["state"].map(STATE_ORDER.index)).sort_values(["order", "shard"])
    return {
        "num_shards": len(shards),
        **{f"num_shards_{state}": int(states.get(state, 0)) for state in STATE_ORDER[:-1]},
        "num_videos": int(shards["videos"].sum()),
        "num_ok": int(shards["ok"].sum()),
        "num_failed": int(shards["failed"].sum()),
        "frame_count": int(shards["frames"].sum()),
        "decode_mode": dg.MetadataValue.json(merge_counts(shards["decode_modes"])),
        "failures": dg.MetadataValue.json(merge_counts(shards["failures"])),
        "chart": picture(chart, "shards by state and failed videos by reason", chart_path),
        "shards": table(
            ordered.drop(columns="order")
            .assign(
                decode_modes=shards["decode_modes"].map(_counts_text), failures=shards["failures"].map(_counts_text)
            )
            .to_dict("records")
        ),
    }


def summary_panels(shards: pd.DataFrame) -> dict[str, dict[str, int]]:
    """What the summary chart draws: shards per state, and failed videos per reason."""
    states = shards["state"].value_counts().to_dict()
    return {
        f"shards by state ({len(shards):,} registered)": {s: int(states[s]) for s in STATE_ORDER if s in states},
        f"failed videos by reason ({int(shards['failed'].sum()):,} of {int(shards['videos'].sum()):,})": merge_counts(
            shards["failures"]
        ),
    }


def picture(png: bytes, alt: str, path: str) -> dg.MetadataValue:
    """A picture of the data root (``path`` relative to it) for the UI: a link to it under
    `$FRAMES_PIPELINE_PREVIEW_URL` when that is set, so it shows in place; else embedded."""
    base = os.environ.get(PREVIEW_URL_ENV, "").strip().rstrip("/")
    return dg.MetadataValue.md(f"![{alt}]({base}/{path})" if base else markdown_image(png, alt))


def table(records: Sequence[Mapping[str, Any]]) -> dg.MetadataValue:
    """A UI table of plain records (the first 500), with the union of their columns, each typed from
    its first non-null value."""
    rows = list(records)[:TABLE_LIMIT]
    schema = _record_schema(rows)
    names = [column.name for column in schema.columns]
    return dg.MetadataValue.table(
        records=[dg.TableRecord({name: _plain(row.get(name)) for name in names}) for row in rows], schema=schema
    )


def _record_schema(records: Iterable[Mapping[str, Any]]) -> dg.TableSchema:
    types: dict[str, str | None] = {}
    for record in records:
        for name, value in record.items():
            if types.get(name) is None:
                plain = _plain(value)
                types[name] = _PYTHON_TYPES.get(type(plain)) if plain is not None else None
    return dg.TableSchema(columns=[dg.TableColumn(name, kind or "string") for name, kind in types.items()])


def _counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), digits)


def _plain(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
