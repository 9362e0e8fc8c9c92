"""The per-shard checks of `video_frames`: declared with the asset, judged by `shards.shard_checks`.

The checks are partitioned like the asset, so every shard has its own result: the check's page
lists them per partition, and one shard's failure is not hidden by the next shard's pass.
"""

from __future__ import annotations

import warnings

import dagster as dg

from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.shards import ARRAY_CHECK, BLOCKING_CHECKS, FAILED_RATIO_CHECK, FRAME_COUNT_CHECK, ShardCheck

_DESCRIPTIONS = {
    FRAME_COUNT_CHECK: "Every decoded video has as many frames as the probe counted in its stream (a warning: "
    "the shard is still published).",
    ARRAY_CHECK: "Every frames file is (N, H, W, 3) uint8 at the configured size, with N timestamps. Blocking: "
    "a shard that fails it is not published.",
    FAILED_RATIO_CHECK: "The share of videos that failed is at most `max_failed_ratio` (run config, default 0.5). "
    "Blocking: a shard that fails it is not published, and waits for its manifest or settings to change.",
}


def video_frames_check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    """The checks ``asset`` reports with every run of a shard, one result per shard."""
    # Partitioned check specs are a preview API in Dagster 1.13: the warning says so on every load.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                name,
                asset=asset,
                blocking=name in BLOCKING_CHECKS,
                description=description,
                partitions_def=video_shards,
            )
            for name, description in _DESCRIPTIONS.items()
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
