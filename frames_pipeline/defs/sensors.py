"""The manifest sensor: registers the shards of new or changed manifests and runs those not up to date."""

import json
import posixpath

import dagster as dg

from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.defs.resources import FramesDataResource
from frames_pipeline.defs.shard_status import keys_of_stems, stale_shards
from frames_pipeline.storage.manifest import (
    ManifestError,
    file_hash,
    find_manifests,
    manifest_for_stem,
    manifest_stem,
    shard_keys,
)


def _manifest_shards(folder: str, path: str, shard_size: int) -> list[str]:
    """Shard keys of one manifest; ManifestError if it is invalid or shares its stem with another file."""
    manifest_for_stem(folder, manifest_stem(path))
    return shard_keys(path, shard_size)


@dg.sensor(job_name="shard_job", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
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
    dropped = set(keys_of_stems(registered, removed_stems - {manifest_stem(n) for n in current}))
    for name in changed:
        path = posixpath.join(store.manifests_dir, name)
        try:
            keys = _manifest_shards(store.manifests_dir, path, frames_data.shard_size)
        except ManifestError as exc:
            context.log.error(f"manifest skipped: {exc}")
            continue
        wanted.update(dict.fromkeys(keys, current[name]))
        dropped.update(set(keys_of_stems(registered, {manifest_stem(path)})) - set(keys))
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
