"""The jobs: one shard (manifest rows, then frames) and the totals over all shards."""

import dagster as dg

from frames_pipeline.deployment import executor_name

shard_job = dg.define_asset_job(
    "shard_job",
    selection=["video_manifest", "video_frames"],
    description="Read and decode one shard of a manifest.",
    # Its two steps run one after the other and the decoding is isolated in the decoder pool's own
    # processes, so a process per step buys nothing and costs each shard two interpreter starts and
    # definition loads (measured in docs/dagster.md, "What runs, and why").
    # Ray and Kubernetes deployments keep their executor: there each step is placed on its own.
    executor_def=dg.in_process_executor if executor_name() == "multiprocess" else None,
)
summary_job = dg.define_asset_job("summary_job", selection=["frames_summary"], description="Totals over all shards.")
