"""The assets: a shard's manifest rows, its decoded frames (with per-shard checks), and the totals.

Frames never pass through an IO manager: `video_frames` writes them into the store itself (all of
that work is `shards.decode_shard`) and returns only metadata. `video_manifest` is small and goes
through the default IO manager.
"""

from collections.abc import Iterator

import dagster as dg

from frames_pipeline.decode import VideoOutcome
from frames_pipeline.defs.checks import VIDEO_FRAMES_CHECKS, shard_check_specs, shard_outcome
from frames_pipeline.defs.metadata import (
    INDEX_COLUMNS,
    frames_metadata,
    manifest_metadata,
    summary_metadata,
    summary_panels,
)
from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.defs.resources import FrameDecoderResource, FramesDataResource
from frames_pipeline.defs.shard_status import registered_cuts
from frames_pipeline.deployment import DECODE_POOL, video_frames_op_tags
from frames_pipeline.previews import summary_chart
from frames_pipeline.shards import BLOCKING_CHECKS, CODE_VERSION, DEFAULT_MAX_FAILED_RATIO, ShardInputs, decode_shard
from frames_pipeline.storage.manifest import ManifestError, ShardManifest, parse_shard_key, read_shard
from frames_pipeline.storage.shard_writer import ShardBusyError, ShardUnwritableError
from frames_pipeline.storage.status import INVALID, ShardState, shard_states
from frames_pipeline.storage.summary import summarize_shards

SUMMARY_CHART = "frames/summary.png"  # in the data root; replaced by each refresh
# Who to ask about these assets; shown on every asset page and searchable in the catalog.
OWNERS = ["team:frames_pipeline"]
# Run tags every shard run carries, whoever launched it (sensor, schedule, backfill, the UI).
MANIFEST_TAG = "frames_pipeline/manifest"
DECODER_TAG = "frames_pipeline/decoder_mode"
# One shard per run, whoever launches a backfill: each shard's checks are reported for its own
# partition (Dagster attributes a check result to the step's single partition key), its run is
# retried and limited on its own, and at 100 videos a shard the run's start-up is a few percent of its work
# (docs/dagster.md, "Backfills": measured).
ONE_SHARD_PER_RUN = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)
_COMMON = {"group_name": "frames", "owners": OWNERS}
_PER_SHARD = _COMMON | {"partitions_def": video_shards, "backfill_policy": ONE_SHARD_PER_RUN}

# The summary refreshes once shards have landed (materialized, or blocked by their checks, which
# changes the summary too) and no shard is running, or at most an hour later during a long backfill.
# Shards that are missing or failed do not hold it back, unlike AutomationCondition.eager(), which
# waits for every partition.
_SHARD_FINISHED = dg.AutomationCondition.any_deps_updated() | dg.AutomationCondition.any_deps_match(
    dg.AutomationCondition.execution_failed().newly_true()
)
SUMMARY_CONDITION = (
    _SHARD_FINISHED.since_last_handled()
    & (
        ~dg.AutomationCondition.any_deps_in_progress()
        | dg.AutomationCondition.cron_tick_passed("0 * * * *").since_last_handled()
    )
    & ~dg.AutomationCondition.in_progress()
).with_label("shards landed")


class VideoFramesConfig(dg.Config):
    """Run configuration of `video_frames`."""

    max_failed_ratio: float = DEFAULT_MAX_FAILED_RATIO  # above this share of failed videos the shard is not published
    resume: bool = True  # keep the videos an unpublished earlier run of the shard finished; decode the rest


@dg.asset(**_PER_SHARD, kinds={"python"}, tags={"domain": "video", "stage": "input"}, code_version="2")
def video_manifest(context: dg.AssetExecutionContext, frames_data: FramesDataResource) -> dg.Output[ShardManifest]:
    """The shard's rows of its manifest: safe, unique video ids, absolute paths, and the manifest's
    own columns carried through, read from the manifest version whose hash it records.

    A shard is `shard_size` consecutive rows (`FRAMES_PIPELINE_SHARD_SIZE`, default 100) of the
    manifest `manifests/<stem>.*`, keyed `<stem>-<5-digit index>`. What each video turned out to
    be (codec, size, frame rate, duration, rotation) is probed once, in the decoder, and shown per
    video in `video_frames`.
    """
    stem, _ = parse_shard_key(context.partition_key)
    context.instance.add_run_tags(context.run.run_id, {MANIFEST_TAG: stem})
    try:
        shard = read_shard(frames_data.store.manifests_dir, context.partition_key, frames_data.shard_size)
    except ManifestError as exc:  # the manifest changed or vanished: a retry would read the same
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    return dg.Output(shard, metadata=manifest_metadata(shard, frames_data.shard_size))


@dg.asset(
    **_PER_SHARD,
    kinds={"numpy"},
    tags={"domain": "video", "stage": "decode"},
    code_version=CODE_VERSION,
    metadata={"dagster/column_schema": INDEX_COLUMNS},
    pool=DECODE_POOL,
    op_tags=video_frames_op_tags(),  # one GPU on Ray / Kubernetes when the decoder mode needs one
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL),
    check_specs=shard_check_specs("video_frames", VIDEO_FRAMES_CHECKS, BLOCKING_CHECKS),
    # A shard that fails a blocking check yields its check results and no materialization; Dagster
    # then fails the step itself, naming the checks, without retrying it.
    output_required=False,
)
def video_frames(
    context: dg.AssetExecutionContext,
    config: VideoFramesConfig,
    video_manifest: ShardManifest,
    frame_decoder: FrameDecoderResource,
    frames_data: FramesDataResource,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Decode every video of the shard into `frames/<shard>/` and publish it if the blocking checks pass.

    One row per manifest row in `frames/<shard>/index.parquet` (the column schema below); a failed
    video is a row with its reason and a hint, not an error. A shard that fails a blocking check is
    not published (the previous version, if any, stays) and is not retried: the schedule runs it
    again once its manifest, the shard size, the decoder settings or this code change.
    """
    options = frame_decoder.decode_options()
    inputs = ShardInputs(video_manifest.manifest_hash, frames_data.shard_size, options, config.max_failed_ratio)
    context.instance.add_run_tags(context.run.run_id, {DECODER_TAG: frame_decoder.effective_mode})
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
            inputs=inputs,
            resume=config.resume,
            progress=progress,
        )
    # Busy: the run holding the shard will publish it, a retry would redo its work. Unwritable (read-only
    # or full): a retry fails the same way until someone acts.
    except (ShardBusyError, ShardUnwritableError) as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    yield from shard_outcome(
        context,
        f"shard {report.key}",
        report.checks,
        report.published is not None,
        "It is not retried until its manifest, the shard size or the decoder settings change.",
        lambda: frames_metadata(report, video_manifest, inputs, frame_decoder.effective_mode),
    )


@dg.asset(
    **_COMMON,
    deps=[video_frames],
    kinds={"python"},
    tags={"domain": "video", "stage": "report"},
    code_version="2",
    automation_condition=SUMMARY_CONDITION,
)
def frames_summary(context: dg.AssetExecutionContext, frames_data: FramesDataResource) -> dg.MaterializeResult:
    """Totals over every registered shard: shards by state (blocked, stale, pending, published),
    videos, frames, decoder modes and failure reasons, read from the shards' published indexes.

    Refreshes itself (automation condition "shards landed", evaluated by
    `summary_automation_sensor`) once shards have materialized or been blocked and none is
    running, or hourly during a long backfill; a failed or missing shard does not hold it back.
    """
    store = frames_data.store
    keys = sorted(context.instance.get_dynamic_partitions(video_shards.name))
    cuts, uncut = registered_cuts(store, frames_data.shard_size, keys)
    states = shard_states(store, cuts) + [ShardState(key, INVALID, why) for key, why in uncut.items()]
    shards = summarize_shards(store, states)
    chart = summary_chart(summary_panels(shards))
    store.write_file(SUMMARY_CHART, chart)
    return dg.MaterializeResult(metadata=summary_metadata(shards, chart, SUMMARY_CHART))


# Each asset's page links to its definition in this file ("View code").
video_manifest, video_frames, frames_summary = dg.with_source_code_references(
    [video_manifest, video_frames, frames_summary]
)
