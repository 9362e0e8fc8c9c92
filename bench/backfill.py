"""What one run per shard costs against several shards per run, on this machine (CPU, ffmpeg_cpu).

python -m bench.backfill --shards 6 --shard-size 100    # about 3 minutes on 2 cores

Builds a data root of ``--shards`` shards of ``--shard-size`` rows (the rows point at four 2-second
320x180 H.264 clips, so building it is quick and decoding is real), then decodes every shard three ways:

- ``per_run``: one Dagster run per shard, one after the other (`dagster job execute` of `shard_job`:
  a process that loads the code location, a step process per asset, a decoder pool per step);
- ``per_run_4``: one run per shard, four at a time, as a backfill runs under `dagster.yaml`
  (`max_concurrent_runs: 4`, the `video_decode` pool holding decoding to one step at a time);
- ``packed``: every shard in one process with one decoder pool: the most that several shards per run
  could save (it pays the start-up once and reports nothing to Dagster).

Prints one JSON object: seconds in all and per shard for each way, and the frames decoded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIPS = 4
_PACKED = """
import json, sys, time
from frames_pipeline.decode import DecodeOptions, DecoderPool
from frames_pipeline.shards import ShardInputs, decode_shard
from frames_pipeline.storage.manifest import read_shard
from frames_pipeline.storage.store import FramesStore

root, size, keys = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
store = FramesStore(root)
options = DecodeOptions(mode="ffmpeg_cpu")
frames = 0
with DecoderPool(options, workers=2) as pool:
    for key in keys:
        shard = read_shard(store.manifests_dir, key, size)
        inputs = ShardInputs(shard.manifest_hash, size, options, 0.5)
        report = decode_shard(store, key, shard.rows, pool.run, inputs=inputs, resume=False)
        frames += sum(r["num_frames"] for r in report.records)
print(json.dumps({"frames": frames}))
"""


def build(root: Path, shards: int, shard_size: int) -> list[str]:
    """A data root with one manifest of ``shards * shard_size`` rows; returns the shard keys."""
    from frames_pipeline.demo.clips import write_video
    from frames_pipeline.storage.manifest import shard_keys

    (root / "videos").mkdir(parents=True)
    videos = [write_video(root / "videos" / f"c{i}.mp4", 60, size=(180, 320)) for i in range(CLIPS)]
    manifest = root / "manifests" / "bench.csv"
    manifest.parent.mkdir(parents=True)
    rows = [f"v{i},{videos[i % CLIPS]}" for i in range(shards * shard_size)]
    manifest.write_text("video_id,path\n" + "\n".join(rows) + "\n")
    return shard_keys(manifest, shard_size)


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--shard-size", type=int, default=100)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_backfill_"))
    try:
        root, home = work / "data", work / "home"
        keys = build(root, args.shards, args.shard_size)
        home.mkdir()
        shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
        env = os.environ | {
            "DAGSTER_HOME": str(home),
            "FRAMES_PIPELINE_DATA": str(root),
            "FRAMES_PIPELINE_SHARD_SIZE": str(args.shard_size),
            "FRAMES_PIPELINE_MODE": "ffmpeg_cpu",
        }
        register = (
            "import dagster as dg, sys; dg.DagsterInstance.get().add_dynamic_partitions('video_shards', sys.argv[1:])"
        )
        subprocess.run([sys.executable, "-c", register, *keys], env=env, check=True)
        dagster = str(Path(sys.executable).with_name("dagster"))

        def shard_run(key: str) -> None:
            tags = json.dumps({"dagster/partition": key})
            command = [dagster, "job", "execute", "-m", "frames_pipeline.definitions", "-j", "shard_job"]
            command += ["--tags", tags]
            subprocess.run(command, env=env, cwd=REPO, check=True, capture_output=True)

        def clear() -> None:
            shutil.rmtree(root / "frames", ignore_errors=True)

        seconds: dict[str, float] = {}
        clear()
        seconds["per_run"] = timed(lambda: [shard_run(key) for key in keys])
        clear()
        with ThreadPoolExecutor(4) as runs:
            seconds["per_run_4"] = timed(lambda: list(runs.map(shard_run, keys)))
        clear()
        packed: dict[str, int] = {}

        def run_packed() -> None:
            out = subprocess.run(
                [sys.executable, "-c", _PACKED, str(root), str(args.shard_size), *keys],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            packed.update(json.loads(out.strip().splitlines()[-1]))

        seconds["packed"] = timed(run_packed)
        results: dict[str, float | int | None] = {"shards": args.shards, "shard_size": args.shard_size}
        results |= {"cpus": os.cpu_count(), "frames": packed["frames"]}
        for way, total in seconds.items():
            results[f"{way}_s"] = round(total, 1)
            results[f"{way}_s_per_shard"] = round(total / args.shards, 2)
        print(json.dumps(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
