"""The hourly catch-up schedule: runs every registered shard that is not up to date."""

import dagster as dg

from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.defs.resources import FramesDataResource
from frames_pipeline.defs.shard_status import in_flight_shards, keys_of_stems, manifest_stem_of, stale_shards
from frames_pipeline.storage.manifest import ManifestError, file_hash, manifest_for_stem


@dg.schedule(
    job_name="shard_job",
    cron_schedule="0 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Hourly: run every registered shard that is not up to date and has no run in flight.",
)
def pending_shards_schedule(
    context: dg.ScheduleEvaluationContext, frames_data: FramesDataResource
) -> list[dg.RunRequest] | dg.SkipReason:
    store = frames_data.store
    keys = context.instance.get_dynamic_partitions(video_shards.name)
    hashes: dict[str, str] = {}
    for stem in sorted({stem for k in keys if (stem := manifest_stem_of(k))}):
        try:
            digest = file_hash(manifest_for_stem(store.manifests_dir, stem))
        except ManifestError as exc:
            context.log.warning(f"shards of {stem!r} skipped: {exc}")
            continue
        hashes.update(dict.fromkeys(keys_of_stems(keys, {stem}), digest))
    busy = in_flight_shards(context.instance)
    pending = [k for k in stale_shards(context.instance, store, hashes) if k not in busy]
    if not pending:
        return dg.SkipReason(f"all {len(keys)} shard(s) up to date or running")
    return [dg.RunRequest(partition_key=k) for k in pending]
