"""Totals over shards, read from their published indexes: what the summary asset and the CLI show."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from frames_pipeline.storage.store import FramesStore

SUMMARY_COLUMNS = ["shard", "published", "videos", "ok", "failed", "frames", "decode_modes", "failures"]


def summarize_shards(store: FramesStore, keys: Sequence[str]) -> pd.DataFrame:
    """One row per shard from its published index: counts, frames, effective modes and failure reasons."""
    rows = []
    for key in keys:
        index = store.read_index(key)
        if index is None:
            rows.append(dict(zip(SUMMARY_COLUMNS, [key, False, 0, 0, 0, 0, {}, {}], strict=True)))
            continue
        ok = index["status"] == "ok"
        rows.append(
            {
                "shard": key,
                "published": True,
                "videos": len(index),
                "ok": int(ok.sum()),
                "failed": int((~ok).sum()),
                "frames": int(index.loc[ok, "num_frames"].sum()),
                "decode_modes": count_values(index.loc[ok, "decode_mode"]),
                "failures": count_values(index.loc[~ok, "error_reason"]),
            }
        )
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
