"""The code location ``frames_pipeline``: every asset, job, sensor, schedule and resource, wired once."""

import dagster as dg

from frames_pipeline.defs.assets import frames_summary, video_frames, video_manifest
from frames_pipeline.defs.resources import FrameDecoderResource, FramesDataResource
from frames_pipeline.defs.sensors import manifest_sensor, pending_shards_schedule, shard_job, summary_job
from frames_pipeline.deployment import build_executor

frames_data = FramesDataResource()

defs = dg.Definitions(
    assets=[video_manifest, video_frames, frames_summary],
    jobs=[shard_job, summary_job],
    sensors=[manifest_sensor],
    schedules=[pending_shards_schedule],
    resources={"frame_decoder": FrameDecoderResource(), "frames_data": frames_data},
    executor=build_executor(),  # $FRAMES_PIPELINE_EXECUTOR: multiprocess (default), ray or k8s
)
