"""The code location ``frames_pipeline``: every asset, job, sensor, schedule and resource, wired once."""

import dagster as dg

from .assets import frames_summary, video_frames, video_manifest
from .automation import manifest_sensor, pending_shards_schedule, shard_job, summary_job
from .executors import build_executor
from .resources import FrameDecoderResource, FramesDataResource

frames_data = FramesDataResource()

defs = dg.Definitions(
    assets=[video_manifest, video_frames, frames_summary],
    jobs=[shard_job, summary_job],
    sensors=[manifest_sensor],
    schedules=[pending_shards_schedule],
    resources={"frame_decoder": FrameDecoderResource(), "frames_data": frames_data},
    executor=build_executor(),  # $FRAMES_PIPELINE_EXECUTOR: multiprocess (default), ray or k8s
)
