"""The sensors: the manifest sensor (registers shards, runs those not up to date) and the
automation sensor that keeps `frames_summary` fresh."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

import dagster as dg

from frames_pipeline.defs.assets import frames_summary
from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.defs.resources import FrameDecoderResource, FramesDataResource
from frames_pipeline.defs.shard_status import decide, default_inputs, run_requests
from frames_pipeline.storage.manifest import (
    SHARD_SIZE_ENV,
    ManifestError,
    file_hash,
    find_manifests,
    manifest_for_stem,
    manifest_stem,
    parse_shard_key,
)
from frames_pipeline.storage.status import ShardCut, cut_manifest


class InvalidManifests(Exception):
    """Manifests the sensor cannot register; raised on a tick that has nothing else to do, so the
    tick shows as failed with the reasons, until the files are fixed."""


@dataclass(frozen=True)
class ManifestCursor:
    """What the sensor has registered: the shard size it cut with and each valid manifest's hash.
    An invalid manifest is left out, so it is read again on every tick until it is fixed."""

    shard_size: int | None = None
    manifests: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> ManifestCursor:
        data = json.loads(text) if text else {}
        if "manifests" not in data:  # a cursor from before the shard size was recorded: re-read everything
            return cls()
        return cls(data["shard_size"], data["manifests"])

    def dump(self) -> str:
        return json.dumps({"shard_size": self.shard_size, "manifests": self.manifests}, sort_keys=True)


@dg.sensor(
    job_name="shard_job",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every minute: registers the shards of new and changed manifests in `manifests/` as `video_shards` "
        "partitions, retires the keys a manifest no longer has (after an edit, a removal, or a change of "
        f"`{SHARD_SIZE_ENV}`), and runs the shards that are not up to date. A tick fails, naming file, row "
        "and column, while a manifest is invalid and there is nothing else to do."
    ),
)
def manifest_sensor(
    context: dg.SensorEvaluationContext, frames_data: FramesDataResource, frame_decoder: FrameDecoderResource
) -> dg.SensorResult | dg.SkipReason:
    """Register the shards of new or changed manifests and request runs for those not up to date.

    A run key carries the inputs' fingerprint, so each version of a shard's inputs runs once from here.
    """
    store = frames_data.store
    shard_size = frames_data.shard_size
    seen = ManifestCursor.parse(context.cursor)
    current = {posixpath.basename(p): file_hash(p) for p in find_manifests(store.manifests_dir)}
    resized = seen.shard_size != shard_size
    changed = sorted(name for name, digest in current.items() if resized or seen.manifests.get(name) != digest)
    registered = set(context.instance.get_dynamic_partitions(video_shards.name))
    live_stems = {manifest_stem(name) for name in current}
    dropped = {key for key in registered if _stem(key) not in (None, *live_stems)}  # its manifest is gone
    cuts: dict[str, ShardCut] = {}
    valid: dict[str, str] = {}
    invalid: list[str] = []
    for name in changed:
        path = posixpath.join(store.manifests_dir, name)
        try:
            manifest_for_stem(store.manifests_dir, manifest_stem(name))  # no other file with the same stem
            manifest = cut_manifest(path, shard_size)
        except ManifestError as exc:
            invalid.append(str(exc))
            continue
        valid[name] = current[name]
        cuts.update(manifest)
        dropped |= {key for key in registered if _stem(key) == manifest_stem(name)} - manifest.keys()
    cursor = ManifestCursor(shard_size, {n: d for n, d in seen.manifests.items() if n in current} | valid)
    new_keys = sorted(cuts.keys() - registered)
    if not cuts and not dropped:
        if invalid:
            raise InvalidManifests(f"{len(invalid)} manifest(s) not registered:\n" + "\n".join(invalid))
        return dg.SkipReason("no new, changed or removed manifests")
    for problem in invalid:
        context.log.error(f"manifest not registered: {problem}")
    inputs_of = default_inputs(frame_decoder)
    decisions = decide(context.instance, store, cuts, inputs_of)
    requests = run_requests(decisions, lambda d: f"{d.key}:{inputs_of(cuts[d.key]).fingerprint()[:16]}")
    context.log.info(
        f"{len(valid)} manifest(s) read at shard size {shard_size}: {len(cuts)} shard(s), {len(new_keys)} new, "
        f"{len(dropped)} retired, {len(requests)} to run"
    )
    partition_requests = [video_shards.build_add_request(new_keys)] if new_keys else []
    if dropped:
        partition_requests.append(video_shards.build_delete_request(sorted(dropped)))
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partition_requests, cursor=cursor.dump())


def _stem(key: str) -> str | None:
    try:
        return parse_shard_key(key)[0]
    except ValueError:  # a key added by hand is not the sensor's to retire
        return None


summary_automation_sensor = dg.AutomationConditionSensorDefinition(
    "summary_automation_sensor",
    target=[frames_summary],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description='Evaluates `frames_summary`\'s automation condition ("shards landed") every 30 seconds and '
    "refreshes the summary when it holds. Runs in the Dagster daemon (`dg dev` starts one).",
)
