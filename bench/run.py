"""CPU side-by-side benchmark: ours against NeMo Curator's CPU command, the decode-only floor and peer libraries.

    python -m bench.run [--quick] [--repeats N] [--out bench/results]

Every row (one contender on one clip set) runs in a fresh Python process, so each pays only for its
own imports and its memory is its own: peak RSS is sampled over the row's whole process tree and
read exactly per process from ``getrusage``. frames/s is the set's decodable frame count over the
median wall time of ``--repeats`` runs. Correctness is checked against the bundled ffmpeg CLI with
``-vf scale=48:27:flags=area -fps_mode passthrough``. Writes cpu.md, cpu.json and cpu.png to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .peers import BY_KEY, CONTENDERS, TRANSNET_HW, Contender, Output, RowContext, describe_error, usable_cores

SYSTEM_FFMPEG = "/usr/bin/ffmpeg"
REFERENCE = "bundled ffmpeg CLI: -vf scale=48:27:flags=area -fps_mode passthrough -f rawvideo -pix_fmt rgb24"
_ROW_TIMEOUT_S = 3600.0  # a hung peer must cost its row, not the run
_SAMPLE_EVERY_S = 0.02
_REPO = Path(__file__).resolve().parent.parent


def ffmpeg_version(binary: str) -> str:
    """'9.0.2' from the first line of ``ffmpeg -version`` (Debian's and the static builds spell it differently)."""
    first = subprocess.run([binary, "-version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    match = re.search(r"ffmpeg version n?(\d+(?:\.\d+)*)", first)
    return match.group(1) if match else first


def make_reference(ffmpeg: str, path: Path, out: Path) -> int:
    """Write the reference frames of ``path`` to ``out`` (.npy); returns the decodable frame count."""
    height, width = TRANSNET_HW
    command = [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-i", str(path),
        "-vf", f"scale={width}:{height}:flags=area", "-fps_mode", "passthrough",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    ]  # fmt: skip
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, frames)
    return len(frames)


# --- the row process -------------------------------------------------------------------------------------------


def run_row(job_path: Path) -> None:
    """Run one contender on one clip set as ``job_path`` describes; write the timings and outputs' shapes."""
    job = json.loads(job_path.read_text())
    contender = BY_KEY[job["key"]]
    ctx = RowContext(Path(job["scratch"]), job["ffmpeg"])
    result: dict[str, Any] = {"seconds": [], "notes": ctx.notes, "error": None, "clips": []}
    outputs: list[Output] = []
    try:
        with contender.opener(job["paths"], ctx) as decode:
            for _ in range(job["repeats"]):
                outputs = []  # let the previous run's frames go before the next starts
                started = time.perf_counter()
                outputs = decode()
                result["seconds"].append(time.perf_counter() - started)
    except Exception as exc:
        result["error"] = describe_error(exc)
    # Read before the outputs are saved below, which must not count; children were joined on exit.
    result["rss_self_mb"] = _own_peak_rss_mb()
    result["rss_children_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if result["error"] is None:
        save = contender.output_hw == TRANSNET_HW  # only 27x48 has a reference to compare pixels with
        result["clips"] = [_describe(o, ctx.scratch / f"out_{i}.npy", save) for i, o in enumerate(outputs)]
    Path(job["result"]).write_text(json.dumps(result))


def _own_peak_rss_mb() -> float:
    """This process's peak RSS since it started (``VmHWM``). Not ``ru_maxrss``: Linux carries that over
    exec from the process that spawned us, so every row would report at least the driver's size."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024


def _describe(output: Output, path: Path, save: bool) -> dict[str, Any]:
    if output is None:
        return {"shape": None, "npy": None}
    if isinstance(output, str):
        return {"shape": list(np.load(output, mmap_mode="r").shape), "npy": output}
    if save:
        np.save(path, output)
    return {"shape": list(output.shape), "npy": str(path) if save else None}


# --- the driver --------------------------------------------------------------------------------------------------


def measure(
    contender: Contender,
    clip_set: str,
    paths: Sequence[Path],
    references: Sequence[tuple[Path, int]],
    ffmpeg: dict[str, str],
    repeats: int,
    scratch: Path,
) -> dict[str, Any]:
    """One row: run ``contender`` on ``paths`` in a fresh process, then judge its output."""
    decodable = sum(count for _, count in references)
    row: dict[str, Any] = {
        "key": contender.key,
        "kind": contender.kind,
        "parallel": contender.parallel,
        "set": clip_set,
        "output_hw": list(contender.output_hw),
        "clips": len(paths),
        "decodable": decodable,
        "repeats": repeats,
        "notes": [],
    }
    if contender.binary and contender.binary not in ffmpeg:
        return {**row, "status": "skipped", "error": f"{SYSTEM_FFMPEG} not found (apt-get install -y ffmpeg)"}
    row_dir = scratch / f"{contender.key}-{clip_set}"
    row_dir.mkdir(parents=True)
    job = {
        "key": contender.key,
        "paths": [str(p.resolve()) for p in paths],
        "repeats": repeats,
        "scratch": str(row_dir),
        "ffmpeg": ffmpeg,
        "result": str(row_dir / "result.json"),
    }
    job_path = row_dir / "job.json"
    job_path.write_text(json.dumps(job))
    log_path = row_dir / "log.txt"
    try:
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.run", "--row", str(job_path)], cwd=_REPO, stdout=log, stderr=log
            )
            row["rss_tree_mb"], timed_out = _watch(process)
        result_path = Path(job["result"])
        if timed_out or not result_path.exists():
            why = f"timed out after {_ROW_TIMEOUT_S:.0f} s" if timed_out else f"died (rc {process.returncode})"
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            return {**row, "status": "failed", "error": " | ".join([why, *tail])}
        result = json.loads(result_path.read_text())
        row["notes"] = result["notes"]
        row["rss_max_proc_mb"] = max(result["rss_self_mb"], result["rss_children_mb"])
        row["rss_tree_mb"] = max(row["rss_tree_mb"], row["rss_max_proc_mb"])  # sampling can miss a short peak
        if result["error"]:
            return {**row, "status": "failed", "error": result["error"]}
        median = statistics.median(result["seconds"])
        row.update(
            status="ok",
            error=None,
            seconds=result["seconds"],
            median_s=median,
            fps=decodable / median,
            videos_per_s=len(paths) / median,
        )
        row.update(judge(contender, result["clips"], references))
        return row
    finally:
        shutil.rmtree(row_dir, ignore_errors=True)  # 224x224 outputs of the long clip are gigabytes


def _watch(process: subprocess.Popen[bytes]) -> tuple[float, bool]:
    """Wait for ``process``; returns the peak RSS (MB) summed over it and its descendants, and whether it hung."""
    import psutil

    root = psutil.Process(process.pid)
    deadline = time.monotonic() + _ROW_TIMEOUT_S
    peak = 0
    while process.poll() is None:
        if time.monotonic() > deadline:
            for proc in [*_tree(root), root]:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            process.wait()
            return peak / 2**20, True
        total = 0
        for proc in [root, *_tree(root)]:
            with contextlib.suppress(psutil.Error):  # it may end between the listing and the reading
                total += proc.memory_info().rss
        peak = max(peak, total)
        time.sleep(_SAMPLE_EVERY_S)
    return peak / 2**20, False


def _tree(root: Any) -> list[Any]:
    import psutil

    try:
        return root.children(recursive=True)
    except psutil.Error:
        return []


def judge(contender: Contender, clips: list[dict[str, Any]], references: Sequence[tuple[Path, int]]) -> dict[str, Any]:
    """Frame count against the decodable count, output shape, and mean abs diff to the reference frames."""
    if not contender.returns_frames:
        return {"frames_returned": None, "shape": None, "shape_ok": None, "mad": None, "mad_note": "no frames"}
    expected = (*contender.output_hw, 3)
    shapes = [c["shape"] for c in clips if c["shape"] is not None]
    returned = sum(s[0] for s in shapes)
    frame_dims = {tuple(s[1:]) for s in shapes}
    if len(frame_dims) == 1:
        shape = f"({returned}, {', '.join(map(str, frame_dims.pop()))})"
    else:
        shape = " / ".join(str(d) for d in sorted(frame_dims)) or None  # several frame shapes, or no output at all
    verdict: dict[str, Any] = {
        "frames_returned": returned,
        "failed_clips": len(clips) - len(shapes),
        "shape": shape,
        "shape_ok": len(shapes) == len(clips) and all(tuple(s[1:]) == expected for s in shapes),
        "mad": None,
        "mad_note": None,
    }
    if contender.output_hw != TRANSNET_HW:
        return {**verdict, "mad_note": "no reference at this size"}
    total, count = 0, 0
    for clip, (reference_path, _) in zip(clips, references, strict=True):
        if clip["npy"] is None:
            continue
        frames = np.load(clip["npy"])
        if frames.shape[1:] != expected and contender.comparable is not None:
            frames = contender.comparable(frames)
            verdict["mad_note"] = "after reshaping its output"
        if frames.shape[1:] != expected:
            return {**verdict, "mad_note": "output is not (N, 27, 48, 3)"}
        reference = np.load(reference_path)
        n = min(len(frames), len(reference))  # a count mismatch is reported separately
        total += int(np.abs(frames[:n].astype(np.int16) - reference[:n]).sum())
        count += n * reference[0].size
    return {**verdict, "mad": total / count if count else None}


def machine_info(ffmpeg: dict[str, str]) -> dict[str, Any]:
    """CPU, memory, load and the versions of everything that ran."""
    import platform
    from importlib import metadata

    import psutil

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), platform.processor()
    )
    packages = {}
    for name in (
        "frames_pipeline", "numpy", "av", "imageio-ffmpeg", "decord", "torch", "torchcodec", "video2numpy",
        "opencv-python-headless", "psutil", "matplotlib",
    ):  # fmt: skip
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": packages,
        "ffmpeg": {name: {"path": path, "version": ffmpeg_version(path)} for name, path in ffmpeg.items()},
    }


def run_benchmark(
    corpus_dir: Path, quick: bool, repeats: int, keys: Sequence[str] | None, sets: Sequence[str] | None
) -> dict[str, Any]:
    """Build the corpus and references, run every row, and return the results for the report."""
    from frames_pipeline.decode import find_ffmpeg

    from .corpus import FULL, QUICK, build

    specs = tuple(s for s in (QUICK if quick else FULL) if sets is None or s.name in sets)
    corpus = build(corpus_dir, specs)
    ffmpeg = {"bundled": find_ffmpeg()}
    if Path(SYSTEM_FFMPEG).exists():
        ffmpeg["system"] = SYSTEM_FFMPEG
    info = machine_info(ffmpeg)
    versions = {name: v["version"] for name, v in info["ffmpeg"].items()}
    contenders = [c for c in CONTENDERS if keys is None or c.key in keys]
    rows: list[dict[str, Any]] = []
    set_info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="frames-bench-") as tmp:
        scratch = Path(tmp)
        made: dict[Path, tuple[Path, int]] = {}  # copies of a clip share its reference
        for spec in specs:
            paths = corpus[spec.name]
            for path in paths:
                if path not in made:
                    reference = scratch / "references" / f"{len(made)}.npy"
                    made[path] = (reference, make_reference(ffmpeg["bundled"], path, reference))
            references = [made[path] for path in paths]
            set_info[spec.name] = {
                "clips": len(paths),
                "copies": spec.copies,
                "codec": spec.codec,
                "size": f"{spec.width}x{spec.height}",
                "frames_per_clip": spec.frames,
                "decodable": sum(n for _, n in references),
            }
            for contender in contenders:
                runs_here = spec.copies == 1 if contender.sets is None else spec.name in contender.sets
                if not runs_here:
                    continue
                # The 224x224 rows are about memory and write gigabytes: once is enough.
                row_repeats = repeats if contender.output_hw == TRANSNET_HW else 1
                row = measure(contender, spec.name, paths, references, ffmpeg, row_repeats, scratch)
                row["label"] = contender.label.format(
                    ffmpeg=versions.get(contender.binary or "", ""), cores=usable_cores()
                )
                row["about"] = contender.about
                rows.append(row)
                _print_row(row)
    info["load_average_at_end"] = list(os.getloadavg())
    return {
        "quick": quick,
        "repeats": repeats,
        "reference": REFERENCE,
        "machine": info,
        "sets": set_info,
        "rows": rows,
    }


def _print_row(row: dict[str, Any]) -> None:
    speed = f"{row['fps']:9.0f} fps" if row["status"] == "ok" else f"{row['status']:>13}"
    rss = f"{row['rss_tree_mb']:7.0f} MB" if "rss_tree_mb" in row else " " * 10
    print(f"{row['set']:<11} {row['label']:<48} {speed} {rss}  {row.get('error') or ''}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small corpus: for trying the harness, not figures")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row; the median is reported")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--corpus", type=Path, default=Path("bench/corpus"))
    parser.add_argument("--rows", help=f"comma-separated row keys (default all): {', '.join(BY_KEY)}")
    parser.add_argument("--sets", help="comma-separated clip sets (default all)")
    parser.add_argument("--row", type=Path, help=argparse.SUPPRESS)  # internal: run one row from its job file
    args = parser.parse_args(argv)
    if args.row:
        run_row(args.row)
        return
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    keys = args.rows.split(",") if args.rows else None
    unknown = set(keys or ()) - set(BY_KEY)
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    sets = args.sets.split(",") if args.sets else None
    results = run_benchmark(args.corpus, args.quick, args.repeats, keys, sets)

    from .report import write_report

    for path in write_report(results, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
