"""Totals over shards, read from their published indexes: what the summary asset and the CLI show."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from frames_pipeline.storage.status import ShardState
from frames_pipeline.storage.store import FramesStore

SUMMARY_COLUMNS = ["shard", "state", "detail", "videos", "ok", "failed", "frames", "decode_modes", "failures"]


def summarize_shards(store: FramesStore, states: Sequence[ShardState]) -> pd.DataFrame:
    """One row per shard: its state, and from its published index (if any) counts, frames, effective
    modes and failure reasons."""
    rows = []
    for state in states:
        index = store.read_index(state.key)
        counts: list[Any] = [0, 0, 0, 0, {}, {}]
        if index is not None:
            ok = index["status"] == "ok"
            counts = [
                len(index),
                int(ok.sum()),
                int((~ok).sum()),
                int(index.loc[ok, "num_frames"].sum()),
                count_values(index.loc[ok, "decode_mode"]),
                count_values(index.loc[~ok, "error_reason"]),
            ]
        rows.append([state.key, state.state, state.detail, *counts])
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def count_values(values: Iterable[Any]) -> dict[str, int]:
    """``{value: count}`` of the non-null values, sorted by value."""
    return dict(sorted(Counter(str(v) for v in values if v is not None and not pd.isna(v)).items()))


def merge_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Sum several ``{name: count}`` maps."""
    total: dict[str, int] = {}
    for mapping in counts:
        for name, n in mapping.items():
            total[name] = total.get(name, 0) + n
    return dict(sorted(total.items()))
