"""Drop-in replacement for NeMo Curator's ``VideoFrameExtractionStage`` and ``get_frames_from_ffmpeg``.

Same names, fields and defaults, without its bugs: ``output_hw`` is (height, width) in every mode,
an unknown ``decoder_mode`` is an error, one output frame per decoded frame, rotation applied, and
a failed video keeps its reason in ``video.errors["frame_extraction"]`` instead of vanishing.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from frames_pipeline.decode import (
    DECODE_MODES,
    DecodeError,
    DecodeOptions,
    DecoderPool,
    VideoJob,
    extract_frames,
    pts_path,
)

logger = logging.getLogger(__name__)


def get_frames_from_ffmpeg(
    video_file: Path, width: int, height: int, *, use_gpu: bool = False
) -> NDArray[np.uint8] | None:
    """NeMo's signature: frames (N, height, width, 3), or None after logging why (decoder messages kept)."""
    try:
        result = extract_frames(video_file, output_hw=(height, width), mode="ffmpeg_gpu" if use_gpu else "ffmpeg_cpu")
    except DecodeError as exc:
        logger.warning("frame extraction failed for %s: %s", video_file, exc)
        return None
    for line in result.warnings:
        logger.warning("%s: %s", video_file, line)
    if result.fallback_reason:
        logger.warning("%s decoded on %s: %s", video_file, result.decode_mode, result.fallback_reason)
    return result.frames


@dataclass
class Video:
    """The fields of NeMo's ``Video`` this stage reads and writes."""

    input_video: Path | str
    source_bytes: bytes | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    frame_array: NDArray[np.uint8] | None = None
    frame_pts_s: NDArray[np.float64] | None = None
    errors: dict[str, str] = field(default_factory=dict)

    def has_metadata(self) -> bool:
        return bool(self.metadata)


@dataclass
class VideoTask:
    """NeMo's task envelope: one ``Video`` in ``data``."""

    task_id: str
    dataset_name: str
    data: Video


@dataclass
class VideoFrameExtractionStage:
    """Fill ``task.data.frame_array`` (N, H, W, 3) uint8 and ``frame_pts_s`` for each video task."""

    output_hw: tuple[int, int] = (27, 48)
    pyncv_batch_size: int = 64
    decoder_mode: str = "pynvc"
    verbose: bool = False
    _name: str = "video_frame_extraction"

    def __post_init__(self) -> None:
        if self.decoder_mode not in DECODE_MODES:
            raise ValueError(f"unknown decoder_mode {self.decoder_mode!r}; valid modes: {', '.join(DECODE_MODES)}")
        self.options = DecodeOptions(output_hw=self.output_hw, mode=self.decoder_mode, batch_size=self.pyncv_batch_size)
        self._pool: DecoderPool | None = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    @property
    def name(self) -> str:
        return self._name

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["input_video", "source_bytes"]

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["frame_array", "frame_pts_s", "errors"]

    def setup(self, worker_metadata: Any = None) -> None:
        """Start the decoder worker (once per stage actor; decoders are reused across videos)."""
        if self._pool is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="frames_pipeline_stage_")
            self._pool = DecoderPool(self.options, workers=1).start()

    def teardown(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def process(self, task: VideoTask) -> VideoTask:
        self.setup()
        assert self._pool is not None and self._scratch is not None
        video = task.data
        scratch = Path(self._scratch.name)
        source = Path(video.input_video) if video.input_video else None
        if video.source_bytes is not None and (source is None or not source.is_file()):
            source = scratch / f"{task.task_id}.source"
            source.write_bytes(video.source_bytes)
        output = scratch / f"{task.task_id}.npy"
        try:
            outcome = next(self._pool.run([VideoJob(task.task_id, str(source), str(output))]))
            if not outcome.ok:
                video.frame_array = None
                video.errors["frame_extraction"] = f"{outcome.error_reason}: {outcome.error}"
                logger.warning(
                    "frame extraction failed for %s: %s", video.input_video, video.errors["frame_extraction"]
                )
                return task
            video.frame_array = np.load(output)
            video.frame_pts_s = np.load(pts_path(output))
            if outcome.fallback_reason:
                video.errors["frame_extraction_fallback"] = outcome.fallback_reason
            if self.verbose:
                logger.info(
                    "%s: %s frames %s via %s",
                    video.input_video,
                    *video.frame_array.shape[:1],
                    video.frame_array.shape[1:],
                    outcome.decode_mode,
                )
        finally:
            for path in (output, pts_path(output), scratch / f"{task.task_id}.source"):
                path.unlink(missing_ok=True)
        return task
