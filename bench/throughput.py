"""The throughput model of docs/scale-out.md, computed from the measured rates in ``results/gpu.json``.

python -m bench.throughput     # prints the table that docs/scale-out.md carries (a test compares them)
"""

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "gpu.json"
CLIPS = 1_000_000
FRAMES_PER_CLIP = 300  # 10 s at 30 fps
STREAMS = 21  # decoder processes per GPU, as measured (the `workers` of frame_decoder)
GPUS = (1, 8, 32, 128)
CODECS = {"h264_1080p": "H.264 1080p", "hevc_1080p": "HEVC 1080p"}


def gpu_seconds_per_clip(fps: float, overhead_s: float) -> float:
    """One clip's share of a GPU: its frames at the GPU's aggregate rate, plus the fixed per-video
    cost, paid on one of the ``STREAMS`` streams that run side by side."""
    return FRAMES_PER_CLIP / fps + overhead_s / STREAMS


def _duration(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"


def _row(label: str, cells: list[str]) -> str:
    return f"| {label} | {' | '.join(cells)} |"


def table(results: Path = RESULTS) -> str:
    """The markdown table: measured rate, GPU-hours for ``CLIPS`` clips, wall clock per cluster size."""
    measured = json.loads(results.read_text())
    overhead_s = measured["startup"]["overhead_ms"] / 1000
    fps = {row["clip"]: row["pynvc"]["fps"] for row in measured["throughput"] if row["streams"] == STREAMS}
    hours = [CLIPS * gpu_seconds_per_clip(fps[clip], overhead_s) / 3600 for clip in CODECS]
    rows = [
        _row("", list(CODECS.values())),
        _row("---", ["---"] * len(CODECS)),
        _row(f"pynvc, one H100, {STREAMS} streams (measured)", [f"{fps[c]:,.0f} frames/s" for c in CODECS]),
        _row(f"GPU-hours for {CLIPS:,} clips", [f"{h:.1f}" for h in hours]),
    ]
    rows += [_row(f"wall clock, {n} x H100", [_duration(h / n) for h in hours]) for n in GPUS]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(table(), end="")
