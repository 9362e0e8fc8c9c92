"""What the data root says about each shard: published and current, stale, blocked or pending.

One rule for everyone who asks (the Dagster sensor and schedule, the summary asset, the CLI): a
shard is current when its published index was cut from the manifest version and the shard size
in use now (both are recorded in the index). Nothing here asks Dagster; what is running is the
Dagster layer's business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from frames_pipeline.storage.manifest import file_hash, shard_keys
from frames_pipeline.storage.store import BlockedShard, FramesStore

PUBLISHED, STALE, BLOCKED, PENDING = "published", "stale", "blocked", "pending"
INVALID = "invalid"  # a shard key its manifest cannot be cut into now (invalid, gone, or shorter)
RETIRED = "retired"  # a published shard whose key no manifest has at the current shard size
# Listing order for people: what needs attention first.
STATE_ORDER = (INVALID, BLOCKED, STALE, PENDING, PUBLISHED, RETIRED)


@dataclass(frozen=True)
class ShardCut:
    """How a shard key is cut from its manifest now: the manifest file's hash and the shard size."""

    manifest_hash: str
    shard_size: int


@dataclass(frozen=True)
class ShardState:
    """One shard's state and, in a few words, why; ``blocked`` is the record of its last blocked run."""

    key: str
    state: str
    detail: str
    blocked: BlockedShard | None = None


def shard_states(store: FramesStore, cuts: Mapping[str, ShardCut]) -> list[ShardState]:
    """The state of every shard of ``cuts`` ({key: how it is cut now}), in the order given."""
    blocked = store.blocked_shards()
    return [_state(store, key, cut, blocked.get(key)) for key, cut in cuts.items()]


def _state(store: FramesStore, key: str, cut: ShardCut, blocked: BlockedShard | None) -> ShardState:
    published = store.published(key)
    if published is not None and (published.manifest_hash, published.shard_size) == (cut.manifest_hash, cut.shard_size):
        later = f"; a later run was blocked ({blocked.reason})" if blocked else ""
        return ShardState(key, PUBLISHED, f"cut from the current manifest{later}", blocked)
    if blocked is not None:
        older = "; an older version is still published" if published is not None else ""
        return ShardState(key, BLOCKED, f"{blocked.reason}{older}", blocked)
    if published is None:
        return ShardState(key, PENDING, "never published")
    if published.shard_size != cut.shard_size:
        was = f"{published.shard_size}" if published.shard_size else "not recorded"
        return ShardState(key, STALE, f"cut with shard size {was}, now {cut.shard_size}")
    return ShardState(key, STALE, "the manifest changed since it was published")


def cut_manifest(path: str, shard_size: int) -> dict[str, ShardCut]:
    """The shard keys of one manifest file and how each is cut; ManifestError if it is invalid."""
    digest = file_hash(path)  # before reading: if the file changes meanwhile, its shards look stale, never current
    cut = ShardCut(digest, shard_size)
    return dict.fromkeys(shard_keys(path, shard_size), cut)
