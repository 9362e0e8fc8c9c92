"""The decode engine: one video in, (N, H, W, 3) uint8 RGB frames and timestamps out. No Dagster, no storage.

One video in-process: ``probe``, ``extract_frames`` (memory), ``extract_to_file`` (streamed .npy), from a
path or from ``VideoBytes`` (a whole file held in memory).
Many videos: ``DecoderPool`` runs ``VideoJob`` s in worker processes and yields a ``VideoOutcome``
per job. Every failure is a ``DecodeError`` (or an outcome) with a ``Reason`` and a hint.
"""

from frames_pipeline.decode._cuda import cuda_device_count
from frames_pipeline.decode._errors import DecodeError, Reason, printable
from frames_pipeline.decode._extract import FrameResult, extract_frames, extract_to_file
from frames_pipeline.decode._ffmpeg_bin import find_ffmpeg
from frames_pipeline.decode._input_policy import VideoBytes, is_url
from frames_pipeline.decode._npy import pts_path
from frames_pipeline.decode._options import DECODE_MODES, GPU_MODES, DecodeMode, DecodeOptions
from frames_pipeline.decode._pool import DecoderPool, VideoJob, VideoOutcome, WorkerStartError
from frames_pipeline.decode._probe import VideoInfo, probe

__all__ = [
    "DECODE_MODES",
    "GPU_MODES",
    "DecodeError",
    "DecodeMode",
    "DecodeOptions",
    "DecoderPool",
    "FrameResult",
    "Reason",
    "VideoBytes",
    "VideoInfo",
    "VideoJob",
    "VideoOutcome",
    "WorkerStartError",
    "cuda_device_count",
    "extract_frames",
    "extract_to_file",
    "find_ffmpeg",
    "is_url",
    "printable",
    "probe",
    "pts_path",
]
