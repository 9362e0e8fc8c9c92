"""The shots of every shard (extra ``shots``): ``video_shots`` after ``video_frames``, with its checks,
its model resource, a job, and the sensor that runs it when a shard's frames change.

Without the extra none of this is in the code location: the frames pipeline loads and runs as it
does alone, and nothing asks for shots that could only fail. The work is ``shot_shards.detect_shard_shots``.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from frames_pipeline.defs.checks import check_result
from frames_pipeline.defs.metadata import table
from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.defs.resources import FramesDataResource
from frames_pipeline.deployment import video_frames_op_tags
from frames_pipeline.previews import markdown_image
from frames_pipeline.shot_shards import (
    SHOTS_COVER_CHECK,
    SHOTS_ORDER_CHECK,
    SHOTS_PRESENT_CHECK,
    FramesNotPublishedError,
    ShotsReport,
    detect_shard_shots,
)
from frames_pipeline.shots import DEFAULT_THRESHOLD, ShotDetector, shots_available
from frames_pipeline.storage.shard_writer import ShardBusyError
from frames_pipeline.storage.summary import count_values

_VIDEO_COLUMNS = ("video_id", "status", "num_frames", "num_shots", "duration_s", "error_reason", "error")
_CHECK_DESCRIPTIONS = {
    SHOTS_PRESENT_CHECK: "every ok video has at least one shot",
    SHOTS_ORDER_CHECK: "shots are numbered and start in order",
    SHOTS_COVER_CHECK: "shots cover each video's frames and time without gap or overlap",
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
    deps=["video_frames"],
    group_name="shots",
    kinds={"pytorch"},
    pool="gpu",
    # Shots run where frames do: with one GPU on Ray / Kubernetes when the deployment decodes on GPUs.
    op_tags=video_frames_op_tags(),
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL),
    check_specs=[
        dg.AssetCheckSpec(name, asset="video_shots", blocking=True, description=description)
        for name, description in _CHECK_DESCRIPTIONS.items()
    ],
    automation_condition=dg.AutomationCondition.eager(),
)
def video_shots(
    context: dg.AssetExecutionContext,
    config: VideoShotsConfig,
    shot_detector: ShotDetectorResource,
    frames_data: FramesDataResource,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """The shots of every video of the shard's published frames (TransNetV2), into ``shots/<shard>/``.

    A video without frames is a row with its reason, not an error. Shots that fail a check are not
    published, and the step fails without retries: the same frames would give the same shots.
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
    except (FramesNotPublishedError, ShardBusyError) as exc:  # a retry would find the same
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    checks = [check_result(c) for c in report.checks]
    if report.published is None:
        yield from checks
        raise dg.Failure(
            description=f"shots of shard {report.key} not published: "
            + "; ".join(c.description for c in report.blocked_by),
            allow_retries=False,
        )
    yield dg.MaterializeResult(
        metadata=shots_metadata(report, str(detector.device), config.threshold), check_results=checks
    )


def shots_metadata(report: ShotsReport, device: str, threshold: float) -> dict[str, Any]:
    """``video_shots`` metadata of a shard's report: counts and rates as numbers, so the UI plots them."""
    ok = [r for r in report.records if r["status"] == "ok"]
    return {
        "num_videos": len(report.records),
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
        "preview": dg.MetadataValue.md(markdown_image(report.preview, f"shots of {report.key}")),
    }


shots_job = dg.define_asset_job("shots_job", selection=["video_shots"], description="The shots of one shard.")

# Runs video_shots for each shard whose frames were just published (its eager automation condition).
shots_automation_sensor = dg.AutomationConditionSensorDefinition(
    "shots_automation_sensor", target=[video_shots], default_status=dg.DefaultSensorStatus.RUNNING
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
