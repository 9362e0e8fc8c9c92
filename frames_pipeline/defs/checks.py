"""The per-shard checks: declared with their asset (`video_frames`, and `video_shots` with the
extra), judged without Dagster (`shards.shard_checks`, `shot_shards.shots_checks`).

The checks are partitioned like the assets, so every shard has its own result: the check's page
lists them per partition, and one shard's failure is not hidden by the next shard's pass.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import dagster as dg

from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.shards import ARRAY_CHECK, FAILED_RATIO_CHECK, FRAME_COUNT_CHECK, ShardCheck, blocking_failures

BLOCKED_TAG = "frames_pipeline/blocked_by"  # run tag: the checks that kept a shard's run from being published
# video_frames' checks: name -> what it checks (shards.BLOCKING_CHECKS are blocking).
VIDEO_FRAMES_CHECKS = {
    FRAME_COUNT_CHECK: "Every decoded video has as many frames as the probe counted in its stream (a warning: "
    "the shard is still published).",
    ARRAY_CHECK: "Every frames file is (N, H, W, 3) uint8 at the configured size, with N timestamps. Blocking: "
    "a shard that fails it is not published.",
    FAILED_RATIO_CHECK: "The share of videos that failed is at most `max_failed_ratio` (run config, default 0.5). "
    "Blocking: a shard that fails it is not published, and waits for its manifest or settings to change.",
}


def shard_check_specs(
    asset: str, descriptions: Mapping[str, str], blocking: Collection[str]
) -> list[dg.AssetCheckSpec]:
    """The checks ``asset`` reports with every run of a shard, one result per shard: ``descriptions``
    {name: what it checks}, those in ``blocking`` keeping a shard that fails them from being published."""
    # Partitioned check specs are a preview API in Dagster 1.13: the warning says so on every load.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                name,
                asset=asset,
                blocking=name in blocking,
                description=description,
                partitions_def=video_shards,
            )
            for name, description in descriptions.items()
        ]


def check_result(check: ShardCheck) -> dg.AssetCheckResult:
    """A shard check as Dagster reports it: a failed non-blocking check is a warning."""
    return dg.AssetCheckResult(
        check_name=check.name,
        passed=check.passed,
        severity=dg.AssetCheckSeverity.ERROR if check.blocking else dg.AssetCheckSeverity.WARN,
        description=check.description,
        metadata={k: v if isinstance(v, int | float) else dg.MetadataValue.json(v) for k, v in check.details.items()},
    )


def shard_outcome(
    context: dg.AssetExecutionContext,
    what: str,
    checks: Sequence[ShardCheck],
    published: bool,
    waits: str,
    metadata: Callable[[], dict[str, Any]],
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """What a shard asset yields after its run judged ``checks``: a materialization with ``metadata()``
    and the check results when ``what`` was ``published``; else the check results alone (Dagster
    then fails the step for the blocking ones), a run tag naming them, and a log line saying why and
    what it ``waits`` for before it runs again."""
    results = [check_result(c) for c in checks]
    if published:
        yield dg.MaterializeResult(metadata=metadata(), check_results=results)
        return
    blocked_by = blocking_failures(checks)
    context.instance.add_run_tags(context.run.run_id, {BLOCKED_TAG: ", ".join(c.name for c in blocked_by)})
    context.log.error(f"{what} not published: " + "; ".join(c.description for c in blocked_by) + f". {waits}")
    yield from results
