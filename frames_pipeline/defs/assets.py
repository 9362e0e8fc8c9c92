"""The assets: a shard's manifest rows, its decoded frames (with per-shard checks), and the totals.

Frames never pass through an IO manager: ``video_frames`` writes them into the store itself (all of
that work is ``shards.decode_shard``) and returns only metadata. ``video_manifest`` is small and
goes through the default IO manager.
"""

import json
from collections.abc import Iterator

import dagster as dg

from frames_pipeline.decode import VideoOutcome, printable
from frames_pipeline.defs.checks import check_result, video_frames_check_specs
from frames_pipeline.defs.metadata import frames_metadata, table
from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.defs.resources import FrameDecoderResource, FramesDataResource
from frames_pipeline.deployment import video_frames_op_tags
from frames_pipeline.previews import bar_chart, markdown_image
from frames_pipeline.shards import decode_shard
from frames_pipeline.storage.manifest import ManifestError, ShardManifest, read_shard
from frames_pipeline.storage.shard_writer import ShardBusyError, ShardUnwritableError
from frames_pipeline.storage.summary import count_values, merge_counts, summarize_shards

SUMMARY_CHART = "summary.png"  # in the frames folder


class VideoFramesConfig(dg.Config):
    """Run configuration of ``video_frames``."""

    max_failed_ratio: float = 0.5  # above this share of failed videos the shard is not published
    resume: bool = True  # keep the videos an unpublished earlier run of the shard finished; decode the rest


@dg.asset(partitions_def=video_shards, group_name="frames", kinds={"python"})
def video_manifest(context: dg.AssetExecutionContext, frames_data: FramesDataResource) -> dg.Output[ShardManifest]:
    """The shard's validated manifest rows (safe, unique video ids; absolute paths; the manifest's
    own columns carried through) and the manifest version they came from."""
    try:
        shard = read_shard(frames_data.store.manifests_dir, context.partition_key, frames_data.shard_size)
    except ManifestError as exc:  # the manifest changed or vanished: a retry would read the same
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    return dg.Output(
        shard,
        metadata={
            "num_videos": len(shard.rows),
            "manifest": dg.MetadataValue.path(shard.manifest),
            "manifest_hash": shard.manifest_hash,
            "rows": table([row.to_record() | {"path": printable(row.path)} for row in shard.rows]),
        },
    )


@dg.asset(
    partitions_def=video_shards,
    group_name="frames",
    kinds={"numpy"},
    pool="gpu",
    op_tags=video_frames_op_tags(),  # one GPU on Ray / Kubernetes when the decoder mode needs one
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL),
    check_specs=video_frames_check_specs("video_frames"),
)
def video_frames(
    context: dg.AssetExecutionContext,
    config: VideoFramesConfig,
    video_manifest: ShardManifest,
    frame_decoder: FrameDecoderResource,
    frames_data: FramesDataResource,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Decode every video of the shard into ``frames/<shard>/`` and publish it if the blocking checks pass.

    A failed video is a row in the index, not an error. A shard that fails a blocking check is
    never published (the previous version, if any, stays): its check results are reported and the
    step fails without retries, since a retry would decode the same videos the same way.
    """
    options = frame_decoder.decode_options()
    context.log.info(
        f"decoder: {frame_decoder.workers} worker(s), mode {frame_decoder.mode} -> {frame_decoder.effective_mode}; "
        f"{len(video_manifest.rows)} video(s)"
    )

    def progress(outcome: VideoOutcome, done: int, total: int) -> None:
        if outcome.ok:
            context.log.info(f"[{done}/{total}] {outcome.key}: {outcome.num_frames} frames via {outcome.decode_mode}")
        else:
            context.log.warning(f"[{done}/{total}] {outcome.key}: failed ({outcome.error_reason}: {outcome.error})")

    try:
        report = decode_shard(
            frames_data.store,
            context.partition_key,
            video_manifest.rows,
            frame_decoder.decode,
            output_hw=options.output_hw,
            resume=config.resume,
            max_failed_ratio=config.max_failed_ratio,
            progress=progress,
        )
    except ShardBusyError as exc:  # the run holding the shard will publish it; a retry would redo its work
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    except ShardUnwritableError as exc:  # read-only or full: a retry fails the same way until someone acts
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    checks = [check_result(c) for c in report.checks]
    if report.published is None:
        yield from checks
        raise dg.Failure(
            description=f"shard {report.key} not published: " + "; ".join(c.description for c in report.blocked_by),
            metadata={"failures": dg.MetadataValue.json(count_values(r["error_reason"] for r in report.records))},
            allow_retries=False,
        )
    yield dg.MaterializeResult(
        metadata=frames_metadata(report, frame_decoder.effective_mode, options.output_hw)
        | {
            "manifest_hash": video_manifest.manifest_hash,
            "manifest": dg.MetadataValue.path(video_manifest.manifest),
            "preview": dg.MetadataValue.md(markdown_image(report.contact_sheet, report.key)),
        },
        check_results=checks,
    )


@dg.asset(deps=[video_frames], group_name="frames", kinds={"python"})
def frames_summary(context: dg.AssetExecutionContext, frames_data: FramesDataResource) -> dg.MaterializeResult:
    """Totals over every registered shard, read from the shards' published index files."""
    keys = sorted(context.instance.get_dynamic_partitions(video_shards.name))
    shards = summarize_shards(frames_data.store, keys)
    chart = bar_chart(
        list(shards["shard"]),
        {"frames": list(shards["frames"]), "failed videos": list(shards["failed"])},
        title="frames and failed videos per shard",
    )
    frames_data.store.write_file(f"frames/{SUMMARY_CHART}", chart)
    return dg.MaterializeResult(
        metadata={
            "num_shards": len(shards),
            "num_shards_published": int(shards["published"].sum()),
            "num_videos": int(shards["videos"].sum()),
            "num_ok": int(shards["ok"].sum()),
            "num_failed": int(shards["failed"].sum()),
            "frame_count": int(shards["frames"].sum()),
            "decode_mode": dg.MetadataValue.json(merge_counts(shards["decode_modes"])),
            "failures": dg.MetadataValue.json(merge_counts(shards["failures"])),
            "chart": dg.MetadataValue.md(markdown_image(chart, "frames and failed videos per shard")),
            "shards": table(
                shards.assign(
                    decode_modes=shards["decode_modes"].map(json.dumps), failures=shards["failures"].map(json.dumps)
                ).to_dict("records")
            ),
        }
    )
