"""Drop-in replacement for NeMo Curator's ``VideoFrameExtractionStage`` and ``get_frames_from_ffmpeg``.

With nemo-curator installed (extra ``nemo``), ``VideoFrameExtractionStage`` is a NeMo
``ProcessingStage[VideoTask, VideoTask]`` and ``Video`` / ``VideoTask`` are NeMo's own; without it,
they are this package's plain classes with the same field names (``USING_NEMO_CURATOR`` says which).
Either way: ``output_hw`` is (height, width) in every mode, an unknown ``decoder_mode`` is an error,
one output frame per decoded frame, rotation applied, and a failed video's reason is kept and logged.
"""

import importlib.util

from frames_pipeline.nemo._extraction import DEPRECATED_MODES, ExtractionCounts, get_frames_from_ffmpeg

# A nemo-curator that is installed but fails to import raises here: a silent fall back to the
# standalone stage would hand a NeMo user a class their Pipeline refuses.
USING_NEMO_CURATOR = importlib.util.find_spec("nemo_curator") is not None

if USING_NEMO_CURATOR:
    from nemo_curator.tasks.video import Video, VideoTask

    from frames_pipeline.nemo._curator import VideoFrameExtractionStage
else:
    from frames_pipeline.nemo._standalone import Video, VideoFrameExtractionStage, VideoTask

__all__ = [
    "DEPRECATED_MODES",
    "USING_NEMO_CURATOR",
    "ExtractionCounts",
    "Video",
    "VideoFrameExtractionStage",
    "VideoTask",
    "get_frames_from_ffmpeg",
]
