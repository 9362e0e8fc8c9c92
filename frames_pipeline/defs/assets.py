"""The assets: a shard's probed manifest rows, its decoded frames (with checks), and the totals.

Frames never pass through an IO manager: ``video_frames`` writes them into the store itself and
returns only metadata. ``video_manifest`` is small and goes through the default IO manager.
"""

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from frames_pipeline.decode import DecodeError, DecodeOptions, Reason, probe_with_options
from frames_pipeline.decode._errors import printable
from frames_pipeline.decode._pool import VideoJob, VideoOutcome
from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.defs.resources import FrameDecoderResource, FramesDataResource
from frames_pipeline.deployment import video_frames_op_tags
from frames_pipeline.previews import SheetRow, bar_chart, contact_sheet, markdown_image
from frames_pipeline.storage.manifest import file_hash, manifest_for_stem, parse_shard_key, read_manifest, shard_rows
from frames_pipeline.storage.store import (
    ShardBusyError,
    ShardWriter,
    count_values,
    frames_problem,
    merge_counts,
    summarize_shards,
)

FRAME_COUNT_CHECK = "frame_counts_match_probe"
ARRAY_CHECK = "arrays_well_formed"
FAILED_RATIO_CHECK = "failed_ratio"
_TABLE_LIMIT = 500  # rows of a metadata table shown in the UI
CONTACT_SHEET = "contact_sheet.png"  # inside each shard version, published with it
SUMMARY_CHART = "summary.png"  # in the frames folder


@dataclass(frozen=True)
class ProbedShard:
    """What ``video_manifest`` hands to ``video_frames``: one row per video (manifest columns plus
    ``probe_*`` columns) and the manifest version they were read from."""

    key: str
    manifest: str
    manifest_hash: str
    table: pd.DataFrame


class VideoFramesConfig(dg.Config):
    """Run configuration of ``video_frames``."""

    max_failed_ratio: float = 0.5  # above this share of failed videos the shard is not published
    resume: bool = True  # keep the videos an unpublished earlier run of the shard finished; decode the rest


def probe_columns(path: str, options: DecodeOptions) -> dict[str, Any]:
    """The probe's view of one video as ``probe_*`` columns; a failure is recorded, not raised."""
    try:
        info = probe_with_options(path, options)
    except DecodeError as exc:
        reason, message, info = exc.reason.value, exc.message, None
    except Exception as exc:  # a PyAV surprise on one hostile file must not fail the whole shard
        reason, message, info = Reason.INTERNAL_ERROR.value, printable(f"{type(exc).__name__}: {exc}"), None
    else:
        reason = message = None
    height, width = info.display_hw if info else (None, None)
    return {
        "probe_status": "ok" if info else "failed",
        "probe_error_reason": reason,
        "probe_error": message,
        "probe_frames": info.num_frames if info else None,
        "probe_codec": info.codec if info else None,
        "probe_height": height,
        "probe_width": width,
        "probe_fps": info.avg_fps if info else None,
        "probe_duration_s": info.duration_s if info else None,
        "probe_vfr": info.vfr if info else None,
        "probe_rotation": info.rotation if info else None,
    }


@dg.asset(partitions_def=video_shards, group_name="frames", kinds={"python"})
def video_manifest(
    context: dg.AssetExecutionContext, frames_data: FramesDataResource, frame_decoder: FrameDecoderResource
) -> dg.Output[ProbedShard]:
    """The shard's validated manifest rows joined with probe results (one probe per video, under the
    decoder's input rules: allowed roots, remote input)."""
    key = context.partition_key
    stem, index = parse_shard_key(key)
    path = manifest_for_stem(frames_data.store.manifests_dir, stem)
    # Hash first: if the file changes while we read it, the recorded hash is the older one and the
    # schedule sees the shard as out of date, which errs on the safe side.
    digest = file_hash(path)
    rows = shard_rows(read_manifest(path), index, frames_data.shard_size)
    if not rows:
        raise dg.Failure(f"{path} has no shard {index} (the manifest shrank); the sensor removes stale shard keys")
    options = frame_decoder.decode_options()
    records = [{**row.to_record(), **probe_columns(row.path, options)} for row in rows]
    # An object column keeps the raw bytes of non-UTF-8 file names (surrogate escapes), which the
    # decoder must open as they are; pandas' Arrow-backed strings would refuse them.
    paths = pd.Series([record.pop("path") for record in records], dtype=object)
    table = pd.DataFrame(records)
    table.insert(2, "path", paths)
    failed = table[table["probe_status"] != "ok"]
    shard = ProbedShard(key=key, manifest=str(path), manifest_hash=digest, table=table)
    return dg.Output(
        shard,
        metadata={
            "num_videos": len(table),
            "num_probe_failed": len(failed),
            "probe_failures": dg.MetadataValue.json(count_values(failed["probe_error_reason"])),
            "manifest": dg.MetadataValue.path(str(path)),
            "manifest_hash": digest,
        },
    )


@dg.asset(
    partitions_def=video_shards,
    group_name="frames",
    kinds={"numpy"},
    pool="gpu",
    op_tags=video_frames_op_tags(),  # one GPU on Ray / Kubernetes when the decoder mode needs one
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL),
    check_specs=[
        dg.AssetCheckSpec(FRAME_COUNT_CHECK, asset="video_frames", description="decoded frames = probed frames"),
        dg.AssetCheckSpec(
            ARRAY_CHECK, asset="video_frames", blocking=True, description="(N, H, W, 3) uint8 with N timestamps"
        ),
        dg.AssetCheckSpec(
            FAILED_RATIO_CHECK, asset="video_frames", blocking=True, description="failed share <= max_failed_ratio"
        ),
    ],
)
def video_frames(
    context: dg.AssetExecutionContext,
    config: VideoFramesConfig,
    video_manifest: ProbedShard,
    frame_decoder: FrameDecoderResource,
    frames_data: FramesDataResource,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Decode every video of the shard into ``frames/<shard>/`` and publish it if the blocking checks pass.

    A failed video is a row in the index, not an error. A shard that fails a blocking check is
    never published (the previous version, if any, stays): its check results are reported and the
    step fails without retries, since decoding the same inputs again would not help. With
    ``resume``, a run that was killed or failed otherwise leaves its finished videos for the next.
    """
    table = video_manifest.table
    options = frame_decoder.decode_options()
    try:
        shard = frames_data.store.open_shard(context.partition_key, resume=config.resume)
    except ShardBusyError as exc:  # the run holding the shard will publish it; a retry would redo its work
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    with shard:
        sources = dict(zip(table["video_id"], table["path"], strict=True))
        finished = shard.resume_finished(sources, options.output_hw)
        outcomes = {vid: VideoOutcome.from_dict(fields) for vid, fields in finished.items()}
        jobs = [
            VideoJob(key=vid, source=src, output=str(shard.frames_path(vid)))
            for vid, src in sources.items()
            if vid not in outcomes
        ]
        context.log.info(
            f"decoder: {frame_decoder.workers} worker(s), mode {frame_decoder.decoder_mode} -> "
            f"{frame_decoder.effective_mode}; {len(jobs)} video(s) to decode, {len(finished)} kept from an earlier run"
        )
        started = time.perf_counter()
        for outcome in frame_decoder.decode(jobs):
            outcomes[outcome.key] = outcome
            if outcome.ok:
                shard.mark_finished(outcome.key, outcome.source, outcome.to_dict())
            _log_outcome(context, outcome, len(outcomes), len(sources))
        wall_s = time.perf_counter() - started
        records = [_index_record(row, outcomes[row["video_id"]], shard) for row in table.to_dict("records")]
        shard.write_index(records)
        checks = _shard_checks(shard.dir, records, options.output_hw, config.max_failed_ratio)
        sheet_rows = [
            SheetRow(r["video_id"], shard.dir / r["frames_file"] if r["frames_file"] else None, r["error_reason"] or "")
            for r in records
        ]
        sheet = contact_sheet(sheet_rows)
        shard.write_file(CONTACT_SHEET, sheet)
        preview = markdown_image(sheet, context.partition_key)
        blocked = [c for c in checks if not c.passed and c.check_name in (ARRAY_CHECK, FAILED_RATIO_CHECK)]
        if blocked:
            shard.discard()  # judged, not interrupted: nothing to resume
            yield from checks
            raise dg.Failure(
                description=f"shard {context.partition_key} not published: "
                + "; ".join(str(c.description) for c in blocked),
                metadata={"failures": dg.MetadataValue.json(count_values(r["error_reason"] for r in records))},
                allow_retries=False,
            )
        published = shard.publish()
    yield dg.MaterializeResult(
        metadata=_frames_metadata(records, wall_s, frame_decoder.effective_mode, options.output_hw, published)
        | {
            "num_resumed": len(finished),
            "manifest_hash": video_manifest.manifest_hash,
            "manifest": dg.MetadataValue.path(video_manifest.manifest),
            "preview": dg.MetadataValue.md(preview),
        },
        check_results=checks,
    )


@dg.asset(deps=[video_frames], group_name="frames", kinds={"python"})
def frames_summary(context: dg.AssetExecutionContext, frames_data: FramesDataResource) -> dg.MaterializeResult:
    """Totals over every registered shard, read from the shards' published index files."""
    keys = sorted(context.instance.get_dynamic_partitions(video_shards.name))
    shards = summarize_shards(frames_data.store, keys)
    chart = bar_chart(
        list(shards["shard"]),
        {"frames": list(shards["frames"]), "failed videos": list(shards["failed"])},
        title="frames and failed videos per shard",
    )
    frames_data.store.write_file(f"frames/{SUMMARY_CHART}", chart)
    return dg.MaterializeResult(
        metadata={
            "num_shards": len(shards),
            "num_shards_published": int(shards["published"].sum()),
            "num_videos": int(shards["videos"].sum()),
            "num_ok": int(shards["ok"].sum()),
            "num_failed": int(shards["failed"].sum()),
            "frame_count": int(shards["frames"].sum()),
            "decode_mode": dg.MetadataValue.json(merge_counts(shards["decode_modes"])),
            "failures": dg.MetadataValue.json(merge_counts(shards["failures"])),
            "chart": dg.MetadataValue.md(markdown_image(chart, "frames and failed videos per shard")),
            "shards": _table(
                shards.assign(
                    decode_modes=shards["decode_modes"].map(json.dumps), failures=shards["failures"].map(json.dumps)
                ).to_dict("records")
            ),
        }
    )


def _log_outcome(context: dg.AssetExecutionContext, outcome: VideoOutcome, done: int, total: int) -> None:
    if outcome.ok:
        context.log.info(f"[{done}/{total}] {outcome.key}: {outcome.num_frames} frames via {outcome.decode_mode}")
    else:
        context.log.warning(f"[{done}/{total}] {outcome.key}: failed ({outcome.error_reason}: {outcome.error})")


def _index_record(row: dict[str, Any], outcome: VideoOutcome, shard: ShardWriter) -> dict[str, Any]:
    """One index.parquet row: the manifest row, the probe's count and what the decoder did."""
    expected = row.get("probe_frames")
    return {
        "manifest_row": int(row["manifest_row"]),
        "video_id": outcome.key,
        "source": printable(outcome.source),
        "status": outcome.status,
        "num_frames": outcome.num_frames,
        "expected_frames": None if pd.isna(expected) else int(expected),
        "height": outcome.height,
        "width": outcome.width,
        "requested_mode": outcome.requested_mode,
        "decode_mode": outcome.decode_mode,
        "fallback_reason": outcome.fallback_reason,
        "error_reason": outcome.error_reason,
        "error": outcome.error,
        "warnings": [printable(w) for w in outcome.warnings],
        "decode_seconds": outcome.decode_seconds,
        "frames_file": shard.relative(outcome.output) if outcome.output else None,
    }


def _shard_checks(
    shard_dir: Path, records: Sequence[dict[str, Any]], output_hw: tuple[int, int], max_failed_ratio: float
) -> list[dg.AssetCheckResult]:
    """The three per-shard checks, evaluated on the unpublished folder."""
    ok = [r for r in records if r["status"] == "ok"]
    mismatched = [
        f"{r['video_id']}: {r['num_frames']} != {r['expected_frames']}"
        for r in ok
        if r["expected_frames"] is not None and r["num_frames"] != r["expected_frames"]
    ]
    malformed = [
        f"{r['video_id']}: {why}"
        for r in ok
        if (why := frames_problem(shard_dir / r["frames_file"], r["num_frames"], output_hw))
    ]
    num_failed = len(records) - len(ok)
    ratio = num_failed / len(records) if records else 0.0
    return [
        dg.AssetCheckResult(
            check_name=FRAME_COUNT_CHECK,
            passed=not mismatched,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{len(mismatched)} video(s) decoded a different number of frames than probed",
            metadata={"num_mismatched": len(mismatched), "mismatched": dg.MetadataValue.json(mismatched[:50])},
        ),
        dg.AssetCheckResult(
            check_name=ARRAY_CHECK,
            passed=not malformed,
            description=f"{len(malformed)} array(s) not (N, {output_hw[0]}, {output_hw[1]}, 3) uint8 with N timestamps",
            metadata={"num_malformed": len(malformed), "malformed": dg.MetadataValue.json(malformed[:50])},
        ),
        dg.AssetCheckResult(
            check_name=FAILED_RATIO_CHECK,
            passed=ratio <= max_failed_ratio,
            description=f"{num_failed}/{len(records)} video(s) failed (ratio {ratio:.2f}, limit {max_failed_ratio})",
            metadata={"failed_ratio": ratio, "max_failed_ratio": max_failed_ratio, "num_failed": num_failed},
        ),
    ]


def _frames_metadata(
    records: Sequence[dict[str, Any]], wall_s: float, pool_mode: str, output_hw: tuple[int, int], path: str
) -> dict[str, Any]:
    """``video_frames`` metadata. Counts and rates stay int/float: only those are plotted per partition."""
    ok = [r for r in records if r["status"] == "ok"]
    frame_count = sum(r["num_frames"] for r in ok)
    return {
        "num_videos": len(records),
        "num_ok": len(ok),
        "num_failed": len(records) - len(ok),
        "frame_count": frame_count,
        "decode_seconds": round(wall_s, 3),
        "decode_fps": round(frame_count / wall_s, 1) if wall_s > 0 else 0.0,
        "decode_mode": dg.MetadataValue.json(count_values(r["decode_mode"] for r in ok)),
        "pool_mode": pool_mode,
        "failures": dg.MetadataValue.json(count_values(r["error_reason"] for r in records)),
        "output_hw": dg.MetadataValue.json(list(output_hw)),
        "path": dg.MetadataValue.path(path),
        "videos": _table(
            [
                {k: r[k] for k in ("video_id", "status", "num_frames", "decode_mode", "error_reason", "error")}
                | {"decode_seconds": round(r["decode_seconds"], 3)}
                for r in records
            ]
        ),
    }


def _table(records: Sequence[dict[str, Any]]) -> dg.MetadataValue:
    """A UI table of plain records (first 500 rows); columns typed from the first record."""
    rows = list(records)[:_TABLE_LIMIT]
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
