"""Our stage against NeMo Curator's own, in the same NeMo pipeline on the same clips (CPU).

    python -m bench.nemo                      # 3 runs per contender, medians and ratios printed
    python -m bench.nemo --quick --repeats 1  # tries the harness; its figures are noise

Each run is NeMo's ``Pipeline`` [``VideoReaderStage``, the frame extraction stage] on
``RayActorPoolExecutor`` over a fresh local Ray (127.0.0.1, 4 logical CPUs: both stages reserve
NeMo's ``Resources(cpus=4.0)``). The contenders differ only in the second stage: ours
(``frames_pipeline.nemo``) and NeMo's ``VideoFrameExtractionStage``, both ``decoder_mode="ffmpeg_cpu"``,
NeMo's with the bundled ffmpeg 9 and with ``/usr/bin/ffmpeg`` (Debian's 5.1) on PATH. Two figures per
run: **stage** frames/s, over the extraction stage's own ``process_time`` that NeMo records on each
task (decoding only: our worker starts in ``setup``, outside it), and **pipeline** frames/s, over the
whole ``Pipeline.run`` (Ray start-up, actors, the reader, set-up). Needs nemo-curator (extra ``nemo``)
and ffmpeg/ffprobe on PATH (``apt-get install ffmpeg``): NeMo's reader takes metadata from ffprobe and
NeMo's stage refuses to start without ``ffmpeg``.
"""

from __future__ import annotations

import os
import secrets

# Read when Ray is imported, so set before the imports below. Ray puts a local cluster on the host's
# address unless told it is on a laptop: this keeps it on loopback. A new local cluster turns on token
# authentication and, without a token in the environment, writes one to ~/.ray/auth_token; every later
# `ray start --head` on the machine then turns authentication on too (the test suite's Ray head then
# refused its job client: "Missing authentication token").
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import imageio_ffmpeg
import ray
from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor
from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.video.clipping.video_frame_extraction import (
    VideoFrameExtractionStage as NemoStage,
)
from nemo_curator.stages.video.io.video_reader import VideoReaderStage
from nemo_curator.tasks import FileGroupTask

from bench.corpus import ClipSpec, build
from frames_pipeline.nemo import VideoFrameExtractionStage as OurStage

SETS: tuple[ClipSpec, ...] = (
    ClipSpec("h264_720p", "libx264", 720, 1280, 300, count=4),
    ClipSpec("short_360p", "libx264", 360, 640, 60, count=24),
)
QUICK: tuple[ClipSpec, ...] = (
    ClipSpec("h264_720p", "libx264", 720, 1280, 30, count=2),
    ClipSpec("short_360p", "libx264", 360, 640, 30, count=4),
)
RAY_CPUS = 4
CONTENDERS = ("ours", "nemo_ffmpeg9", "nemo_ffmpeg5")


@dataclass(frozen=True)
class Run:
    """One pipeline run of one contender over one clip set."""

    contender: str
    clips: int
    frames: int
    frame_shape: tuple[int, ...]
    stage_s: float
    pipeline_s: float


def ffmpeg_on_path(contender: str, shim: Path) -> str:
    """The PATH under which NeMo's stage (which runs ``ffmpeg`` by name) finds the contender's ffmpeg."""
    system = os.environ["PATH"]
    if contender == "nemo_ffmpeg9":
        link = shim / "ffmpeg"
        if not link.exists():
            link.symlink_to(imageio_ffmpeg.get_ffmpeg_exe())
        return f"{shim}{os.pathsep}{system}"
    return system


def one_run(contender: str, paths: Sequence[Path], shim: Path) -> Run:
    stage = OurStage(decoder_mode="ffmpeg_cpu") if contender == "ours" else NemoStage(decoder_mode="ffmpeg_cpu")
    saved_path = os.environ["PATH"]
    os.environ["PATH"] = ffmpeg_on_path(contender, shim)  # Ray's workers inherit the driver's environment
    try:
        started = time.perf_counter()
        # NeMo's executor joins this cluster (its ray.init ignores a second init) and shuts it down.
        ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
        tasks = [FileGroupTask(dataset_name="bench", data=[str(p)]) for p in paths]
        pipeline = Pipeline(name="bench", stages=[VideoReaderStage(), stage])
        results = pipeline.run(RayActorPoolExecutor(show_progress=False), initial_tasks=tasks)
        pipeline_s = time.perf_counter() - started
    finally:
        os.environ["PATH"] = saved_path
    if len(results) != len(paths):
        raise RuntimeError(f"{contender}: {len(results)} of {len(paths)} videos came out")
    arrays = [task.data.frame_array for task in results]
    stage_s = sum(p.process_time for task in results for p in task._stage_perf if p.stage_name == stage.name)
    return Run(contender, len(paths), sum(a.shape[0] for a in arrays), arrays[0].shape[1:], stage_s, pipeline_s)


def median_fps(runs: Sequence[Run], field: str) -> float:
    return statistics.median(run.frames / getattr(run, field) for run in runs)


def report(results: dict[str, dict[str, list[Run]]]) -> str:
    lines = [
        "| clip set | contender | frames | frame shape | stage frames/s | ours / it | pipeline frames/s | ours / it |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for clip_set, by_contender in results.items():
        ours_stage = median_fps(by_contender["ours"], "stage_s")
        ours_pipeline = median_fps(by_contender["ours"], "pipeline_s")
        for contender, runs in by_contender.items():
            stage, pipeline = median_fps(runs, "stage_s"), median_fps(runs, "pipeline_s")
            lines.append(
                f"| {clip_set} ({runs[0].clips} clips) | {contender} | {runs[0].frames} | {runs[0].frame_shape} "
                f"| {stage:,.0f} | {ours_stage / stage:.2f} | {pipeline:,.0f} | {ours_pipeline / pipeline:.2f} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small clips: for trying the harness, not figures")
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender and clip set; medians reported")
    parser.add_argument("--corpus", type=Path, default=Path("bench/corpus"))
    parser.add_argument("--out", type=Path, help="also write the runs as JSON here")
    args = parser.parse_args(argv)
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not on PATH: NeMo's stages need it (apt-get install ffmpeg)")
    corpus = build(args.corpus, QUICK if args.quick else SETS)
    results: dict[str, dict[str, list[Run]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_nemo_ffmpeg_") as shim:
        for clip_set, paths in corpus.items():
            results[clip_set] = {contender: [] for contender in CONTENDERS}
            for repeat in range(args.repeats):
                for contender in CONTENDERS:  # interleaved, so a slow spell of the machine hits every contender
                    run = one_run(contender, paths, Path(shim))
                    results[clip_set][contender].append(run)
                    print(
                        f"{clip_set} run {repeat + 1}: {contender} {run.frames} frames {run.frame_shape}, "
                        f"stage {run.stage_s:.2f} s, pipeline {run.pipeline_s:.2f} s",
                        flush=True,
                    )
    table = report(results)
    print(table)
    if args.out:
        runs = {s: {c: [asdict(r) for r in rs] for c, rs in by.items()} for s, by in results.items()}
        args.out.write_text(json.dumps({"ray_cpus": RAY_CPUS, "runs": runs, "table": table}, indent=2))


if __name__ == "__main__":
    main()
