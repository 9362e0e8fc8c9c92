"""The per-shard checks of ``video_frames``: declared with the asset, judged by ``shards.shard_checks``."""

from __future__ import annotations

import dagster as dg

from frames_pipeline.shards import ARRAY_CHECK, FAILED_RATIO_CHECK, FRAME_COUNT_CHECK, ShardCheck

_DESCRIPTIONS = {
    FRAME_COUNT_CHECK: "decoded frames = probed frames",
    ARRAY_CHECK: "(N, H, W, 3) uint8 with N timestamps",
    FAILED_RATIO_CHECK: "failed share <= max_failed_ratio",
}


def video_frames_check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    """The checks ``asset`` reports with every materialization; the blocking ones keep a failing shard
    from being published."""
    blocking = {FRAME_COUNT_CHECK: False, ARRAY_CHECK: True, FAILED_RATIO_CHECK: True}
    return [
        dg.AssetCheckSpec(name, asset=asset, blocking=blocking[name], description=description)
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
