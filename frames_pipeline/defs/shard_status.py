"""Which shards need a run, and why: the one rule the manifest sensor and the hourly schedule share.

What the data root says comes from `storage.status` (the same rule the CLI lists): a shard is up to
date when its published index was cut from the current manifest and shard size. On top of that,
this layer knows what Dagster knows: a shard with a run in flight waits for it, and a shard whose
last run was blocked by its checks waits until something it depends on changes (`ShardInputs`),
since the same inputs would be blocked again.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import dagster as dg

from frames_pipeline.defs.resources import FrameDecoderResource
from frames_pipeline.shards import DEFAULT_MAX_FAILED_RATIO, ShardInputs
from frames_pipeline.storage.manifest import ManifestError, manifest_for_stem, parse_shard_key
from frames_pipeline.storage.status import (
    BLOCKED,
    INVALID,
    PUBLISHED,
    ShardCut,
    ShardState,
    cut_manifest,
    shard_states,
)
from frames_pipeline.storage.store import FramesStore

WHY_TAG = "frames_pipeline/why"  # run tag: why the sensor or the schedule asked for the run

_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dataclass(frozen=True)
class ShardDecision:
    """Whether shard ``key`` gets a run now, and why (or why not), in a few words for people."""

    key: str
    run: bool
    why: str


def decide(
    instance: dg.DagsterInstance,
    store: FramesStore,
    cuts: Mapping[str, ShardCut],
    inputs_of: Callable[[ShardCut], ShardInputs],
) -> list[ShardDecision]:
    """The decision for every shard of ``cuts``; ``inputs_of`` gives the inputs a run would have now."""
    busy = in_flight_shards(instance) if cuts else set()
    return [_decision(state, inputs_of(cuts[state.key]), state.key in busy) for state in shard_states(store, cuts)]


def _decision(state: ShardState, inputs: ShardInputs, busy: bool) -> ShardDecision:
    if busy:
        return ShardDecision(state.key, False, "a run of it is queued or running")
    if state.state == PUBLISHED:
        return ShardDecision(state.key, False, "up to date")
    if state.state == BLOCKED and state.blocked is not None:
        if state.blocked.inputs == inputs.fingerprint():
            why = (
                f"blocked ({state.blocked.reason}); waits for a change to its manifest, the shard size or the settings"
            )
            return ShardDecision(state.key, False, why)
        return ShardDecision(state.key, True, "blocked before; its manifest, shard size or settings changed since")
    return ShardDecision(state.key, True, state.detail)


def default_inputs(frame_decoder: FrameDecoderResource) -> Callable[[ShardCut], ShardInputs]:
    """The inputs a run launched now, with default run config, gives a shard cut as ``cut``."""
    options = frame_decoder.decode_options()
    return lambda cut: ShardInputs(cut.manifest_hash, cut.shard_size, options, DEFAULT_MAX_FAILED_RATIO)


def registered_cuts(
    store: FramesStore, shard_size: int, keys: Iterable[str]
) -> tuple[dict[str, ShardCut], dict[str, str]]:
    """How each registered key is cut from its manifest now, and for the keys that cannot be cut
    (the manifest is invalid, gone, or no longer has the shard) why not. Each manifest is read once."""
    by_stem: dict[str, list[str]] = {}
    uncut: dict[str, str] = {}
    for key in keys:
        try:
            by_stem.setdefault(parse_shard_key(key)[0], []).append(key)
        except ValueError as exc:  # a key added by hand
            uncut[key] = str(exc)
    cuts: dict[str, ShardCut] = {}
    for stem, stem_keys in sorted(by_stem.items()):
        try:
            manifest = cut_manifest(manifest_for_stem(store.manifests_dir, stem), shard_size)
        except ManifestError as exc:
            uncut.update(dict.fromkeys(stem_keys, str(exc)))
            continue
        for key in stem_keys:
            if key in manifest:
                cuts[key] = manifest[key]
            else:
                uncut[key] = (
                    f"its manifest has {len(manifest)} shard(s) of {shard_size} now; the sensor retires this key"
                )
    return cuts, uncut


def in_flight_shards(instance: dg.DagsterInstance) -> set[str]:
    """Shards with a queued or running run, whichever job launched it (the UI's own asset job too)."""
    runs = instance.get_runs(dg.RunsFilter(statuses=_IN_FLIGHT))
    return {run.tags["dagster/partition"] for run in runs if "dagster/partition" in run.tags}


def run_requests(
    decisions: Iterable[ShardDecision], run_key: Callable[[ShardDecision], str | None]
) -> list[dg.RunRequest]:
    """A run request per shard to run, tagged with why it runs."""
    return [dg.RunRequest(partition_key=d.key, run_key=run_key(d), tags={WHY_TAG: d.why}) for d in decisions if d.run]


def waiting_summary(decisions: Iterable[ShardDecision], uncut: Mapping[str, str], listed: int = 3) -> str:
    """One paragraph saying why nothing (else) runs: counts per reason, the first few shards of each."""
    groups: dict[str, list[str]] = {}
    for decision in decisions:
        if not decision.run:
            groups.setdefault(decision.why, []).append(decision.key)
    for key, why in uncut.items():
        groups.setdefault(f"{INVALID}: {why}", []).append(key)
    parts = []
    for why, keys in sorted(groups.items(), key=lambda item: (item[0] == "up to date", item[0])):
        names = ", ".join(keys[:listed]) + (f" and {len(keys) - listed} more" if len(keys) > listed else "")
        parts.append(f"{len(keys)} {why}: {names}" if why != "up to date" else f"{len(keys)} up to date")
    return "; ".join(parts) or "no shards registered"
