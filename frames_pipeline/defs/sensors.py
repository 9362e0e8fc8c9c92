"""What runs when: the shard job, the manifest sensor and the hourly catch-up schedule.

One rule decides whether a shard needs a run, for the sensor and the schedule alike: a shard is
up to date when its published index exists and its latest ``video_frames`` materialization
recorded the manifest hash the manifest file has now. So a new shard runs, a shard whose manifest
changed runs again, and a shard whose last run failed is retried by the schedule (a failed run
never publishes, so the older materialization, if any, is still the truth about what is on disk).
"""

import json
import posixpath
from collections.abc import Iterable, Mapping

import dagster as dg

from frames_pipeline.defs.assets import video_frames, video_manifest
from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.defs.resources import FramesDataResource
from frames_pipeline.storage.manifest import (
    ManifestError,
    file_hash,
    find_manifests,
    manifest_for_stem,
    manifest_stem,
    parse_shard_key,
    shard_keys,
)
from frames_pipeline.storage.store import FramesStore

shard_job = dg.define_asset_job(
    "shard_job",
    selection=[video_manifest, video_frames],
    description="Probe and decode one shard of a manifest.",
)
summary_job = dg.define_asset_job("summary_job", selection=["frames_summary"], description="Totals over all shards.")

_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def stale_shards(instance: dg.DagsterInstance, store: FramesStore, hashes: Mapping[str, str]) -> list[str]:
    """The shards of ``hashes`` ({shard key: current manifest hash}) that are not up to date."""
    if not hashes:
        return []
    latest = instance.get_latest_storage_id_by_partition(
        video_frames.key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=set(hashes)
    )
    recorded: dict[str, str | None] = {}
    if latest:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=video_frames.key, storage_ids=list(latest.values())), limit=len(latest)
        ).records
        for record in records:
            materialization = record.asset_materialization
            if materialization is not None and materialization.partition is not None:
                value = materialization.metadata.get("manifest_hash")
                recorded[materialization.partition] = value.value if value is not None else None
    return sorted(k for k, h in hashes.items() if recorded.get(k) != h or not store.has_index(k))


def _in_flight_shards(instance: dg.DagsterInstance) -> set[str]:
    """Shards with a queued or running run, whichever job launched it (the UI's own asset job too)."""
    runs = instance.get_runs(dg.RunsFilter(statuses=_IN_FLIGHT))
    return {run.tags["dagster/partition"] for run in runs if "dagster/partition" in run.tags}


def _manifest_shards(folder: str, path: str, shard_size: int) -> list[str]:
    """Shard keys of one manifest; ManifestError if it is invalid or shares its stem with another file."""
    manifest_for_stem(folder, manifest_stem(path))
    return shard_keys(path, shard_size)


def _stem(key: str) -> str | None:
    """The manifest stem of a shard key; None for a key added by hand that is not a shard key."""
    try:
        return parse_shard_key(key)[0]
    except ValueError:
        return None


def _keys_of_stems(keys: Iterable[str], stems: set[str]) -> list[str]:
    return [k for k in keys if _stem(k) in stems]


@dg.sensor(job=shard_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def manifest_sensor(
    context: dg.SensorEvaluationContext, frames_data: FramesDataResource
) -> dg.SensorResult | dg.SkipReason:
    """Register the shards of new or changed manifests and request runs for those not up to date.

    The cursor maps manifest file names to content hashes. A changed manifest is re-read: shards it
    no longer has are removed, and the run key carries the hash, so each version runs once.
    """
    store = frames_data.store
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    current = {posixpath.basename(p): file_hash(p) for p in find_manifests(store.manifests_dir)}
    changed = sorted(name for name, digest in current.items() if seen.get(name) != digest)
    removed_stems = {manifest_stem(name) for name in seen.keys() - current.keys()}
    if not changed and not removed_stems:
        return dg.SkipReason("no new, changed or removed manifests")
    registered = set(context.instance.get_dynamic_partitions(video_shards.name))
    wanted: dict[str, str] = {}
    dropped = set(_keys_of_stems(registered, removed_stems - {manifest_stem(n) for n in current}))
    for name in changed:
        path = posixpath.join(store.manifests_dir, name)
        try:
            keys = _manifest_shards(store.manifests_dir, path, frames_data.shard_size)
        except ManifestError as exc:
            context.log.error(f"manifest skipped: {exc}")
            continue
        wanted.update(dict.fromkeys(keys, current[name]))
        dropped.update(set(_keys_of_stems(registered, {manifest_stem(path)})) - set(keys))
    to_run = stale_shards(context.instance, store, wanted)
    context.log.info(f"{len(changed)} manifest(s) changed: {len(wanted)} shard(s), {len(to_run)} to run")
    new_keys = sorted(wanted.keys() - registered)
    partition_requests = [video_shards.build_add_request(new_keys)] if new_keys else []
    if dropped:
        partition_requests.append(video_shards.build_delete_request(sorted(dropped)))
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=k, run_key=f"{k}:{wanted[k][:16]}") for k in to_run],
        dynamic_partitions_requests=partition_requests,
        cursor=json.dumps(current, sort_keys=True),
    )


@dg.schedule(
    job=shard_job,
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
    for stem in sorted({stem for k in keys if (stem := _stem(k))}):
        try:
            digest = file_hash(manifest_for_stem(store.manifests_dir, stem))
        except ManifestError as exc:
            context.log.warning(f"shards of {stem!r} skipped: {exc}")
            continue
        hashes.update(dict.fromkeys(_keys_of_stems(keys, {stem}), digest))
    busy = _in_flight_shards(context.instance)
    pending = [k for k in stale_shards(context.instance, store, hashes) if k not in busy]
    if not pending:
        return dg.SkipReason(f"all {len(keys)} shard(s) up to date or running")
    return [dg.RunRequest(partition_key=k) for k in pending]
