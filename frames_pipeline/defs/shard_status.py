"""Which shards need a run: the one rule the manifest sensor and the hourly schedule share.

A shard is up to date when its published index exists and its latest ``video_frames``
materialization recorded the manifest hash the manifest file has now. So a new shard runs, a shard
whose manifest changed runs again, and a shard whose last run failed is retried by the schedule (a
failed run never publishes, so the older materialization, if any, is still the truth about what is
on disk).
"""

from collections.abc import Iterable, Mapping

import dagster as dg

from frames_pipeline.storage.manifest import parse_shard_key
from frames_pipeline.storage.store import FramesStore

VIDEO_FRAMES = dg.AssetKey("video_frames")

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
        VIDEO_FRAMES, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=set(hashes)
    )
    recorded: dict[str, str | None] = {}
    if latest:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=VIDEO_FRAMES, storage_ids=list(latest.values())), limit=len(latest)
        ).records
        for record in records:
            materialization = record.asset_materialization
            if materialization is not None and materialization.partition is not None:
                value = materialization.metadata.get("manifest_hash")
                recorded[materialization.partition] = value.value if value is not None else None
    return sorted(k for k, h in hashes.items() if recorded.get(k) != h or not store.has_index(k))


def in_flight_shards(instance: dg.DagsterInstance) -> set[str]:
    """Shards with a queued or running run, whichever job launched it (the UI's own asset job too)."""
    runs = instance.get_runs(dg.RunsFilter(statuses=_IN_FLIGHT))
    return {run.tags["dagster/partition"] for run in runs if "dagster/partition" in run.tags}


def manifest_stem_of(key: str) -> str | None:
    """The manifest stem of a shard key; None for a key added by hand that is not a shard key."""
    try:
        return parse_shard_key(key)[0]
    except ValueError:
        return None


def keys_of_stems(keys: Iterable[str], stems: set[str]) -> list[str]:
    return [k for k in keys if manifest_stem_of(k) in stems]
