"""What both stages share: NeMo's mode names, decoding one NeMo ``Video`` in the stage's own decoder
worker, the failure counts, and NeMo's ``get_frames_from_ffmpeg``."""

from __future__ import annotations

import logging
import sys
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
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

logger = logging.getLogger("frames_pipeline.nemo")

# Mode names NeMo Curator accepts that are not ours: NeMo runs CPU ffmpeg for every mode but
# "pynvc" and "ffmpeg_gpu", and its docs and tests pass "ffmpeg".
DEPRECATED_MODES = {"ffmpeg": "ffmpeg_cpu"}
# Where the frames that build a stage run: this package (the stages' dataclass ``__init__`` runs in their
# module's globals) and nemo_curator (the ProcessingStage metaclass's ``__call__``).
_CONSTRUCTION_PACKAGES = (__name__.rpartition(".")[0] + ".", "nemo_curator.")


def decode_mode_for(decoder_mode: str) -> str:
    """Our mode for a stage's ``decoder_mode``: a NeMo name is mapped (with a warning), anything
    that is no mode at all raises ValueError naming the valid ones."""
    if decoder_mode in DEPRECATED_MODES:
        mode = DEPRECATED_MODES[decoder_mode]
        # Python's default filters show a DeprecationWarning only where it is attributed to __main__, so
        # it must name the line that built the stage (a pipeline script's), not one in this package.
        warnings.warn(
            f"decoder_mode={decoder_mode!r} is deprecated; it means {mode!r}: pass decoder_mode={mode!r}",
            DeprecationWarning,
            stacklevel=_stage_builders_level(),
        )
        return mode
    if decoder_mode not in DECODE_MODES:
        deprecated = ", ".join(f"{old!r} (deprecated: {new!r})" for old, new in DEPRECATED_MODES.items())
        raise ValueError(
            f"unknown decoder_mode {decoder_mode!r}; valid modes: {', '.join(DECODE_MODES)}, and {deprecated}"
        )
    return decoder_mode


def _stage_builders_level() -> int:
    """The ``stacklevel`` of ``decode_mode_for``'s warning that names the code that built the stage:
    the first frame outside the packages of ``_CONSTRUCTION_PACKAGES``."""
    level, frame = 2, sys._getframe(2)  # stacklevel 2 is decode_mode_for's caller
    while frame is not None and frame.f_globals.get("__name__", "").startswith(_CONSTRUCTION_PACKAGES):
        level, frame = level + 1, frame.f_back
    return level


@dataclass
class ExtractionCounts:
    """What one copy of a stage (one NeMo worker) did: videos decoded, and failed videos by reason."""

    decoded: int = 0
    failed: Counter[str] = field(default_factory=Counter)

    @property
    def num_failed(self) -> int:
        return sum(self.failed.values())


def video_name(input_video: object) -> str:
    """How NeMo's ``input_video`` is named in logs and errors: a Path or str as it is, a remote
    ``FSPath`` as its URL."""
    as_posix = getattr(input_video, "as_posix", None)
    return str(as_posix()) if callable(as_posix) else str(input_video)


class FrameExtraction:
    """The stages' behaviour over their fields (``output_hw``, ``pyncv_batch_size``, ``decoder_mode``,
    ``verbose``) and ``name``: one decoder worker per stage copy, started by ``setup``."""

    output_hw: tuple[int, int]
    pyncv_batch_size: int
    decoder_mode: str
    verbose: bool
    name: str

    def _init_extraction(self) -> None:
        """Validate the fields now (a bad mode or size fails where the stage is built, not in a worker)."""
        mode = decode_mode_for(self.decoder_mode)
        self.decode_options = DecodeOptions(output_hw=self.output_hw, mode=mode, batch_size=self.pyncv_batch_size)
        self.counts = ExtractionCounts()
        self._pool: DecoderPool | None = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self._sequence = 0

    def _decode_threads(self) -> int:
        """FFmpeg threads for the CPU decoder; 0 lets the pool give it every core."""
        return 0

    def setup(self, worker_metadata: Any = None) -> None:
        """Start this stage copy's decoder worker process. NeMo's executors call it once per worker
        before any ``process``; a script that calls the stage itself calls it first (and
        ``teardown`` at the end). Raises WorkerStartError, saying what to do, if the worker cannot start."""
        if self._pool is not None:
            return
        scratch = tempfile.TemporaryDirectory(prefix="frames_pipeline_stage_")
        try:
            options = replace(self.decode_options, threads=self._decode_threads())
            self._pool = DecoderPool(options, workers=1).start()
        except BaseException:
            scratch.cleanup()
            raise
        self._scratch = scratch

    def teardown(self) -> None:
        """Stop the decoder worker and log what this stage copy did (failures at warning level)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None
        counts = self.counts
        if counts.num_failed:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in counts.failed.most_common())
            total = counts.decoded + counts.num_failed
            logger.warning("%s: %d of %d videos failed (%s)", self.name, counts.num_failed, total, reasons)
        elif counts.decoded:
            logger.info("%s: %d videos decoded", self.name, counts.decoded)

    def _extract(self, video: Any) -> bool:
        """Fill ``video.frame_array`` (N, H, W, 3) uint8 and ``video.frame_pts_s`` (N,) seconds, from
        ``video.source_bytes`` in memory or, without them, from the local file ``input_video``.
        False for a failed video, whose reason is then in ``video.errors["frame_extraction"]``,
        in the log (warning) and in ``counts``."""
        if self._pool is None or self._scratch is None:
            raise RuntimeError(
                f"{type(self).__name__}.process() called before setup(): NeMo's executors call setup() once per "
                "worker; when you call the stage yourself, call stage.setup() first and stage.teardown() at the end"
            )
        name = video_name(video.input_video)
        self._sequence += 1
        output = Path(self._scratch.name) / f"{self._sequence}.npy"
        job = VideoJob(str(self._sequence), name, str(output), data=video.source_bytes)
        try:
            outcome = next(self._pool.run([job]))
            if outcome.ok:
                video.frame_array = np.load(output)
                video.frame_pts_s = np.load(pts_path(output))
        finally:
            output.unlink(missing_ok=True)
            pts_path(output).unlink(missing_ok=True)
        if not outcome.ok:
            assert outcome.error_reason is not None
            video.errors["frame_extraction"] = f"{outcome.error_reason}: {outcome.error}"
            self.counts.failed[outcome.error_reason] += 1
            logger.warning(
                "%s: frame extraction failed for %s: %s (%s)",
                self.name,
                name,
                video.errors["frame_extraction"],
                outcome.hint,
            )
            return False
        self.counts.decoded += 1
        if outcome.fallback_reason:
            video.errors["frame_extraction_fallback"] = outcome.fallback_reason
        if self.verbose:
            frames = video.frame_array
            logger.info("%s: %s frames of %s via %s", name, frames.shape[0], frames.shape[1:3], outcome.decode_mode)
        return True


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
