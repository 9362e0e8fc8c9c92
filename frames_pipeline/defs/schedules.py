"""The hourly catch-up schedule: runs every registered shard that is not up to date."""

import dagster as dg

from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.defs.resources import FrameDecoderResource, FramesDataResource
from frames_pipeline.defs.shard_status import decide, default_inputs, registered_cuts, run_requests, waiting_summary


@dg.schedule(
    job_name="shard_job",
    cron_schedule="0 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Hourly: runs every registered shard that is not up to date (never published, or published from an older "
        "manifest or another shard size) and has no run in flight. A shard blocked by its checks waits until its "
        "manifest, the shard size or the decoder settings change; each run's `frames_pipeline/why` tag says why it "
        "was requested, and a tick with nothing to run says what every shard waits for."
    ),
)
def pending_shards_schedule(
    context: dg.ScheduleEvaluationContext, frames_data: FramesDataResource, frame_decoder: FrameDecoderResource
) -> list[dg.RunRequest] | dg.SkipReason:
    store = frames_data.store
    keys = context.instance.get_dynamic_partitions(video_shards.name)
    cuts, uncut = registered_cuts(store, frames_data.shard_size, keys)
    decisions = decide(context.instance, store, cuts, default_inputs(frame_decoder))
    waiting = waiting_summary(decisions, uncut)
    requests = run_requests(decisions, lambda decision: None)
    if not requests:
        return dg.SkipReason(f"nothing to run: {waiting}")
    context.log.info(f"{len(requests)} shard(s) to run; {waiting}")
    return requests
