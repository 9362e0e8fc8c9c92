"""The jobs: one shard (manifest rows, then frames) and the totals over all shards."""

import dagster as dg

shard_job = dg.define_asset_job(
    "shard_job",
    selection=["video_manifest", "video_frames"],
    description="Read and decode one shard of a manifest.",
)
summary_job = dg.define_asset_job("summary_job", selection=["frames_summary"], description="Totals over all shards.")
