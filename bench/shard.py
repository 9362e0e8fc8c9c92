"""The product's number: one shard through the real Dagster shard_job, against the warm engine.

For each decode mode, in one invocation and on the same clips:

- **warm engine**: a ``DecoderPool`` of N workers whose decoders are already started (a first round
  of jobs warms them), decoding the shard's videos: what the engine can give;
- **shard job**: ``dg launch --job shard_job --partition <key>`` on a fresh instance, the way a user
  or the sensor starts it (multiprocess executor, default settings except the decode mode and
  ``workers``): ``decode_fps`` from the materialization, the launch's wall-clock rate, and the time
  from the step's start to its first decoded frames (from the event log's step start, the asset's
  "decoder:" log line and the shard's ``first_frame_s``).

It prints shard / warm-engine ratios per worker count, medians of ``--repeats`` runs.

    python -m bench.shard --modes pynvc,ffmpeg_gpu,ffmpeg_cpu --workers 7,14,21     # a GPU host
    python -m bench.shard --modes ffmpeg_cpu --workers 1,2 --quick                   # try the harness
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from frames_pipeline.decode import DecodeOptions, DecoderPool, VideoJob, cuda_device_count

from .corpus import SHARD_CLIPS, build, quick_shard_clip

SHARD_ROWS = 100
SHARD_KEY = "bench-00000"  # manifests/bench.csv, one shard of the default size
_DG = Path(sys.executable).with_name("dg")


def manifest(paths: list[Path], rows: int, folder: Path) -> Path:
    """``rows`` manifest rows over the distinct clips ``paths``, each with its own video id."""
    target = folder / "manifests" / "bench.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video_id", "path"])
        writer.writerows([f"v{i:04d}", str(paths[i % len(paths)].resolve())] for i in range(rows))
    return target


def warm_engine(mode: str, paths: list[Path], rows: int, workers: int, scratch: Path) -> dict[str, float]:
    """Frames/s of a started pool on the shard's jobs (its decoders created by a first round)."""
    jobs = [VideoJob(f"v{i:04d}", str(paths[i % len(paths)]), str(scratch / f"v{i:04d}.npy")) for i in range(rows)]
    with DecoderPool(DecodeOptions(mode=mode), workers=workers) as pool:
        list(pool.run(jobs[:workers]))
        started = time.perf_counter()
        outcomes = list(pool.run(jobs))
        elapsed = time.perf_counter() - started
    frames = sum(o.num_frames for o in outcomes)
    return {"fps": frames / elapsed, "failed": sum(not o.ok for o in outcomes), "frames": frames}


@contextlib.contextmanager
def _instance(home: Path) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def shard_job(mode: str, paths: list[Path], rows: int, workers: int, scratch: Path) -> dict[str, float]:
    """One run of shard_job as ``dg launch`` starts it, on a fresh instance and data root."""
    home, data = scratch / "home", scratch / "data"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    manifest(paths, rows, data)
    with _instance(home) as instance:
        instance.add_dynamic_partitions("video_shards", [SHARD_KEY])
    config = {"resources": {"frame_decoder": {"config": {"workers": workers}}}}
    env = {**os.environ, "DAGSTER_HOME": str(home), "FRAMES_PIPELINE_DATA": str(data), "FRAMES_PIPELINE_MODE": mode}
    started = time.perf_counter()
    done = subprocess.run(
        [_DG, "launch", "--job", "shard_job", "--partition", SHARD_KEY, "--config-json", json.dumps(config)],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"shard_job failed ({done.returncode}): {done.stderr[-2000:]}")
    with _instance(home) as instance:
        (run,) = instance.get_runs()
        events = instance.all_logs(run.run_id)
    step_start = next(
        e.timestamp
        for e in events
        if e.step_key == "video_frames" and e.dagster_event_type == dg.DagsterEventType.STEP_START
    )
    decoding = next(
        e.timestamp for e in events if e.step_key == "video_frames" and e.user_message.startswith("decoder:")
    )
    metadata = next(
        e.dagster_event.step_materialization_data.materialization.metadata
        for e in events
        if e.dagster_event_type == dg.DagsterEventType.ASSET_MATERIALIZATION and e.step_key == "video_frames"
    )
    values = {k: v.value for k, v in metadata.items()}
    return {
        "decode_fps": values["decode_fps"],
        "wall_fps": values["frame_count"] / wall_s,
        "first_frame_s": decoding - step_start + values["first_frame_s"],
        "failed": values["num_failed"],
    }


def median_row(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="pynvc,ffmpeg_gpu,ffmpeg_cpu" if cuda_device_count() else "ffmpeg_cpu")
    parser.add_argument("--workers", default="7,14,21")
    parser.add_argument("--clips", default=",".join(s.name for s in SHARD_CLIPS))
    parser.add_argument("--rows", type=int, default=SHARD_ROWS, help="videos in the shard")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 s clips, 4 distinct: tries the harness")
    parser.add_argument("--corpus", type=Path, default=Path("bench/corpus"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    specs = tuple(quick_shard_clip(s) if args.quick else s for s in SHARD_CLIPS if s.name in args.clips.split(","))
    corpus = build(args.corpus, specs)
    results: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for clip, paths in corpus.items():
        for mode in args.modes.split(","):
            for workers in (int(w) for w in args.workers.split(",")):
                engine, shard = [], []
                for _ in range(args.repeats):
                    with tempfile.TemporaryDirectory() as tmp:
                        engine.append(warm_engine(mode, paths, args.rows, workers, Path(tmp)))
                    with tempfile.TemporaryDirectory() as tmp:
                        shard.append(shard_job(mode, paths, args.rows, workers, Path(tmp)))
                row = {"clip": clip, "mode": mode, "workers": workers, "engine": median_row(engine)}
                row["shard"] = median_row(shard)
                row["shard_vs_engine"] = row["shard"]["decode_fps"] / row["engine"]["fps"]
                results.append(row)
                print(json.dumps(row), flush=True)
    name = "shard-quick" if args.quick else "shard"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"{name}.md").write_text(markdown(results, args))
    print(markdown(results, args))


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"`python -m bench.shard {' '.join(sys.argv[1:])}`: {args.rows} videos per shard, medians of {args.repeats}",
        "",
        "| clip | mode | workers | warm engine fps | shard decode_fps | shard / engine | launch wall fps "
        "| first frame after step start (s) | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        e, s = r["engine"], r["shard"]
        lines.append(
            f"| {r['clip']} | {r['mode']} | {r['workers']} | {e['fps']:.0f} | {s['decode_fps']:.0f} | "
            f"{r['shard_vs_engine']:.2f} | {s['wall_fps']:.0f} | {s['first_frame_s']:.2f} | {s['failed']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
