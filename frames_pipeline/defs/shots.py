"""The shots of every shard (extra ``shots``): ``video_shots`` after ``video_frames``, with its checks,
its model resource, a job, and the sensor that runs it when a shard's frames change.

Without the extra none of this is in the code location: the frames pipeline loads and runs as it
does alone, and nothing asks for shots that could only fail. The work is ``shot_shards.detect_shard_shots``.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from frames_pipeline.defs.assets import ONE_SHARD_PER_RUN, OWNERS, video_frames
from frames_pipeline.defs.checks import shard_check_specs, shard_outcome
from frames_pipeline.defs.metadata import column_schema, picture, table
from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.defs.resources import FramesDataResource
from frames_pipeline.defs.sensors import automation_sensor
from frames_pipeline.deployment import video_frames_op_tags
from frames_pipeline.shot_shards import (
    SHOTS_CODE_VERSION,
    SHOTS_COVER_CHECK,
    SHOTS_ORDER_CHECK,
    SHOTS_PRESENT_CHECK,
    FramesNotPublishedError,
    ShotsReport,
    detect_shard_shots,
)
from frames_pipeline.shots import DEFAULT_THRESHOLD, ShotDetector, shots_available
from frames_pipeline.storage.shard_writer import ShardBusyError, ShardUnwritableError
from frames_pipeline.storage.shots import SHOTS_INDEX_SCHEMA
from frames_pipeline.storage.summary import count_values

# The pool of the shot detection step: one slot per shard whose shots are detected at once, apart from
# video_decode, so that decoding the next shard and scoring the last one's frames overlap.
SHOTS_POOL = "shot_detection"
_VIDEO_COLUMNS = ("video_id", "status", "num_frames", "num_shots", "duration_s", "error_reason", "error")
# All blocking: shots that fail one are not published.
SHOTS_CHECKS = {
    SHOTS_PRESENT_CHECK: "Every ok video has at least one shot. Blocking: shots that fail it are not published.",
    SHOTS_ORDER_CHECK: "Shots are numbered and start in order. Blocking.",
    SHOTS_COVER_CHECK: "Shots cover each video's frames and time without gap or overlap, and only ok videos have "
    "shots. Blocking.",
}


class ShotDetectorResource(dg.ConfigurableResource):
    """TransNetV2, loaded once per step on the device it runs on."""

    device: str = Field(default="auto", description="auto (a CUDA device when there is one, else CPU), cpu, cuda:N")
    batch_windows: int | None = Field(
        default=None, description="100-frame windows per forward pass (default: 1 on CPU, 32 on a GPU)"
    )

    _detector: ShotDetector | None = PrivateAttr(default=None)

    def detector(self) -> ShotDetector:
        if self._detector is None:
            self._detector = ShotDetector(self.device, self.batch_windows)
        return self._detector

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._detector = None


class VideoShotsConfig(dg.Config):
    """Run configuration of ``video_shots``."""

    threshold: float = DEFAULT_THRESHOLD  # a frame scored above it ends its shot


@dg.asset(
    partitions_def=video_shards,
    backfill_policy=ONE_SHARD_PER_RUN,
    deps=[video_frames],
    group_name="shots",
    owners=OWNERS,
    kinds={"pytorch"},
    tags={"domain": "video", "stage": "shots"},
    code_version=SHOTS_CODE_VERSION,
    metadata={"dagster/column_schema": column_schema(SHOTS_INDEX_SCHEMA)},
    pool=SHOTS_POOL,
    # Shots run where frames do: with one GPU on Ray / Kubernetes when the deployment decodes on GPUs.
    op_tags=video_frames_op_tags(),
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL),
    check_specs=shard_check_specs("video_shots", SHOTS_CHECKS, SHOTS_CHECKS),
    # Shots that fail a check yield the check results and no materialization; Dagster then fails the
    # step itself, naming the checks, without retrying it.
    output_required=False,
    # A shard's shots run once its frames are published (again); blocked frames publish nothing, so
    # they ask for no shots, and blocked shots wait for the next frames.
    automation_condition=dg.AutomationCondition.eager(),
)
def video_shots(
    context: dg.AssetExecutionContext,
    config: VideoShotsConfig,
    shot_detector: ShotDetectorResource,
    frames_data: FramesDataResource,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """The shots of every video of the shard's published frames (TransNetV2), into `shots/<shard>/`.

    One row per row of the frames index in `shots/<shard>/index.parquet` (the column schema below);
    a video without frames is a row with its reason and hint, not an error. Shots that fail a check
    are not published (the previous version, if any, stays) and are not retried: the same frames
    would give the same shots.
    """
    detector = shot_detector.detector()
    context.log.info(f"TransNetV2 on {detector.device}, {detector.batch_windows} window(s) per batch")

    def progress(row: dict[str, Any], done: int, total: int) -> None:
        if row["status"] == "ok":
            context.log.info(f"[{done}/{total}] {row['video_id']}: {row['num_shots']} shots")
        else:
            context.log.warning(f"[{done}/{total}] {row['video_id']}: no shots ({row['error_reason']}: {row['error']})")

    try:
        report = detect_shard_shots(
            frames_data.store, context.partition_key, detector.predict, threshold=config.threshold, progress=progress
        )
    except (FramesNotPublishedError, ShardBusyError, ShardUnwritableError) as exc:  # a retry would find the same
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    yield from shard_outcome(
        context,
        f"shots of shard {report.key}",
        report.checks,
        report.published is not None,
        "They are not retried until the shard's frames are published again.",
        lambda: shots_metadata(report, str(detector.device), config.threshold),
    )


# Its page links to its definition in this file ("View code").
(video_shots,) = dg.with_source_code_references([video_shots])


def shots_metadata(report: ShotsReport, device: str, threshold: float) -> dict[str, Any]:
    """``video_shots`` metadata of a shard's report: counts and rates as numbers, so the UI plots them."""
    ok = [r for r in report.records if r["status"] == "ok"]
    return {
        "num_videos": len(report.records),
        "dagster/row_count": len(report.records),
        "num_ok": len(ok),
        "num_failed": len(report.records) - len(ok),
        "shot_count": len(report.shots),
        "shots_per_minute": round(report.shots_per_minute, 2),
        "frame_count": report.num_frames,
        "detect_s": round(report.detect_s, 3),
        "detect_fps": round(report.num_frames / report.detect_s, 1) if report.detect_s > 0 else 0.0,
        "device": device,
        "threshold": threshold,
        "failures": dg.MetadataValue.json(count_values(r["error_reason"] for r in report.records)),
        "path": dg.MetadataValue.path(report.published or ""),
        "videos": table([{k: r[k] for k in _VIDEO_COLUMNS} for r in report.records]),
        "preview": picture(report.preview, f"shots of {report.key}", report.preview_path),
    }


shots_job = dg.define_asset_job("shots_job", selection=["video_shots"], description="The shots of one shard.")

shots_automation_sensor = automation_sensor(
    "shots_automation_sensor",
    video_shots,
    "Runs `video_shots` for each shard whose frames were just published (its automation condition, eager).",
)


@dg.definitions
def shots() -> dg.Definitions:
    """The shots pipeline when its extra is installed; nothing otherwise."""
    if not shots_available():
        return dg.Definitions()
    return dg.Definitions(
        assets=[video_shots],
        jobs=[shots_job],
        sensors=[shots_automation_sensor],
        resources={"shot_detector": ShotDetectorResource()},
    )
