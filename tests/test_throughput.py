"""The throughput model in the README and docs/scale-out.md matches the benchmark's measured rates."""

from pathlib import Path

import pytest

from bench.throughput import FRAMES_PER_CLIP, gpu_seconds_per_clip, table

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("doc", ["README.md", "docs/scale-out.md"])
def test_doc_table_is_computed_from_measured_rates(doc: str) -> None:
    assert table() in (REPO / doc).read_text(), f"{doc} is stale: paste the output of python -m bench.throughput"


def test_per_clip_cost_is_frames_at_the_gpu_rate_plus_a_share_of_the_fixed_cost() -> None:
    # 300 frames at 3,000 frames/s, plus 21 ms paid on one of 21 streams running side by side
    assert gpu_seconds_per_clip(3000.0, 0.021) == pytest.approx(FRAMES_PER_CLIP / 3000 + 0.001)
