"""GPU part of the benchmark (H100/H200): our pynvc and ffmpeg_gpu against NeMo's PyNvVideoCodec path.

The NeMo-style baseline is what its ``PyNvcFrameExtractor`` does: ``SimpleDecoder`` with full-size
RGB frames on the GPU, resized by torch's area interpolation, copied to the host. Every
configuration runs in this invocation with 1, 7 and 21 concurrent streams (processes); the table
reports aggregate frames/s, ratios to the baseline, and agreement with ``ffmpeg_cpu``.

    python -m bench.gpu --out bench/results [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from frames_pipeline.decode import DecodeOptions, DecoderPool, VideoJob, extract_frames

from .corpus import FULL, QUICK, build

STREAMS = (1, 7, 21)
CLIPS = ("h264_1080p", "hevc_1080p")


class GpuUtilisation:
    """NVDEC and SM utilisation (%) sampled by nvidia-smi while a row runs: whether the decode
    engines or something else bound it. Means over the middle 60% of the samples (no ramps)."""

    def __enter__(self) -> GpuUtilisation:
        query = "--query-gpu=utilization.decoder,utilization.gpu"
        self._smi = subprocess.Popen(
            ["nvidia-smi", query, "--format=csv,noheader,nounits", "-lms", "200"], stdout=subprocess.PIPE, text=True
        )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._smi.terminate()
        out, _ = self._smi.communicate()
        rows = [[float(x) for x in line.split(",")] for line in out.splitlines() if line.count(",") == 1]
        middle = rows[len(rows) // 5 : len(rows) * 4 // 5] or rows
        self.nvdec = statistics.mean(r[0] for r in middle) if middle else float("nan")
        self.sm = statistics.mean(r[1] for r in middle) if middle else float("nan")

    def as_row(self) -> dict[str, float]:
        return {"nvdec_util": self.nvdec, "sm_util": self.sm}


def nemo_style_decode(path: str, output_hw: tuple[int, int] = (27, 48), batch: int = 64) -> int:
    """NeMo Curator's pynvc path: full-size RGB on the GPU, torch area resize, copy to host."""
    import PyNvVideoCodec as nvc
    import torch
    import torch.nn.functional as F

    decoder = nvc.SimpleDecoder(path, gpu_id=0, use_device_memory=True, output_color_type=nvc.OutputColorType.RGB)
    count = 0
    for _ in range(0, len(decoder), batch):
        frames = decoder.get_batch_frames(batch)
        rgb = torch.stack([torch.from_dlpack(f) for f in frames]).permute(0, 3, 1, 2)
        # Resized in slices: 64 full-size float frames per process would not fit 21 processes on one GPU.
        for chunk in rgb.split(8):
            small = F.interpolate(chunk.float(), size=output_hw, mode="area").round().clamp(0, 255).to(torch.uint8)
            count += int(small.permute(0, 2, 3, 1).cpu().shape[0])
    return count


def _nemo_worker(paths: list[str]) -> int:
    return sum(nemo_style_decode(p) for p in paths)


def run_nemo(paths: list[str], streams: int) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(streams) as pool:
        pool.map(_nemo_worker, [paths[:1]] * streams)  # start-up and CUDA init outside the timing
        with GpuUtilisation() as utilisation:
            started = time.perf_counter()
            frames = sum(pool.map(_nemo_worker, [paths] * streams))
            elapsed = time.perf_counter() - started
    return {"frames": frames, "seconds": elapsed, "fps": frames / elapsed, **utilisation.as_row()}


def run_ours(mode: str, paths: list[str], streams: int, scratch: Path) -> dict[str, Any]:
    options = DecodeOptions(mode=mode, fallback_to_cpu=False)
    with DecoderPool(options, workers=streams) as pool:
        warm = [VideoJob(f"warm{i}", paths[0], str(scratch / f"warm{i}.npy")) for i in range(streams)]
        list(pool.run(warm))
        jobs = [
            VideoJob(f"{s}-{i}", p, str(scratch / f"{s}-{i}.npy")) for s in range(streams) for i, p in enumerate(paths)
        ]
        with GpuUtilisation() as utilisation:
            started = time.perf_counter()
            outcomes = list(pool.run(jobs))
            elapsed = time.perf_counter() - started
    failed = [o for o in outcomes if not o.ok]
    modes = sorted({o.decode_mode or "-" for o in outcomes})
    frames = sum(o.num_frames for o in outcomes)
    return {
        "frames": frames,
        "seconds": elapsed,
        "fps": frames / elapsed,
        "failed": len(failed),
        "modes": modes,
        "per_video_s": statistics.median(o.decode_s for o in outcomes),
        **utilisation.as_row(),
    }


def startup(short: list[str], steady: str, scratch: Path) -> dict[str, float]:
    """Per-video cost beyond decoding: many short clips on one stream against one long clip's steady rate."""
    clips = run_ours("pynvc", short, 1, scratch)
    rate = run_ours("pynvc", [steady], 1, scratch)["fps"]
    per_video = clips["seconds"] / len(short)
    return {
        "videos": len(short),
        "per_video_s": per_video,
        "overhead_ms": 1000 * (per_video - clips["frames"] / len(short) / rate),
        "videos_per_s": len(short) / clips["seconds"],
        "steady_fps": rate,
    }


def agreement(path: str) -> dict[str, Any]:
    reference = extract_frames(path, mode="ffmpeg_cpu").frames
    rows = {}
    for mode in ("pynvc", "ffmpeg_gpu"):
        result = extract_frames(path, mode=mode, fallback_to_cpu=False)
        same = result.frames.shape == reference.shape
        mad = float(np.abs(result.frames.astype(np.int16) - reference).mean()) if same else None
        rows[mode] = {"frames": result.num_frames, "reference_frames": len(reference), "mad": mad}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--corpus", type=Path, default=Path("bench/corpus"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--streams", default=",".join(map(str, STREAMS)))
    parser.add_argument("--clips", default=",".join(CLIPS), help="clip sets for agreement and throughput")
    parser.add_argument("--no-startup", action="store_true", help="skip the short-clip start-up measurement")
    args = parser.parse_args()
    streams = [int(s) for s in args.streams.split(",")]
    clips = args.clips.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "gpu-rows.jsonl").open("a")  # every row as it finishes: a cut-off run keeps what it measured
    wanted = (*clips, *(() if args.no_startup else ("short_360p", "steady_360p")))
    corpus = build(args.corpus, tuple(s for s in (QUICK if args.quick else FULL) if s.name in wanted))
    results: dict[str, Any] = {"agreement": {}, "throughput": [], "startup": {}}
    for name in clips:
        results["agreement"][name] = agreement(str(corpus[name][0]))
        print(json.dumps({"agreement": name, **results["agreement"][name]}), file=log, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for name in clips:
            paths = [str(corpus[name][0])] * 2  # two videos per stream: the second reuses the decoder
            for n in streams:
                row = {"clip": name, "streams": n, "nemo": run_nemo(paths, n)}
                for mode in ("pynvc", "ffmpeg_gpu"):
                    row[mode] = run_ours(mode, paths, n, scratch)
                    row[mode]["vs_nemo"] = row[mode]["fps"] / row["nemo"]["fps"]
                results["throughput"].append(row)
                print(json.dumps(row), file=log, flush=True)
        if not args.no_startup:
            results["startup"] = startup([str(p) for p in corpus["short_360p"]], str(corpus["steady_360p"][0]), scratch)
            print(json.dumps({"startup": results["startup"]}), file=log, flush=True)
    log.close()
    (args.out / "gpu.json").write_text(json.dumps(results, indent=2))
    (args.out / "gpu.md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| clip | streams | NeMo-style fps | pynvc fps | x NeMo | ffmpeg_gpu fps | x NeMo "
        "| NVDEC % (NeMo / pynvc / ffmpeg_gpu) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["throughput"]:
        util = " / ".join(f"{row[k].get('nvdec_util', float('nan')):.0f}" for k in ("nemo", "pynvc", "ffmpeg_gpu"))
        lines.append(
            f"| {row['clip']} | {row['streams']} | {row['nemo']['fps']:.0f} | {row['pynvc']['fps']:.0f} | "
            f"{row['pynvc']['vs_nemo']:.2f} | {row['ffmpeg_gpu']['fps']:.0f} | {row['ffmpeg_gpu']['vs_nemo']:.2f} | "
            f"{util} |"
        )
    lines += ["", "| clip | mode | frames | ffmpeg_cpu frames | MAD vs ffmpeg_cpu |", "|---|---|---|---|---|"]
    for clip, modes in results["agreement"].items():
        for mode, row in modes.items():
            mad = "shape differs" if row["mad"] is None else f"{row['mad']:.2f}"
            lines.append(f"| {clip} | {mode} | {row['frames']} | {row['reference_frames']} | {mad} |")
    s = results["startup"]
    if s:
        lines += [
            "",
            f"pynvc, {s['videos']} short clips, 1 stream: {s['videos_per_s']:.1f} videos/s, "
            f"{s['overhead_ms']:.0f} ms per video beyond decoding",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
