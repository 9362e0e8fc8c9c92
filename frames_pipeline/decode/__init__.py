"""The decode engine: one video in, (N, H, W, 3) uint8 RGB frames and timestamps out. No Dagster here."""

from frames_pipeline.decode._errors import DecodeError, Reason
from frames_pipeline.decode._extract import FrameResult, extract_frames, extract_to_file, probe_with_options, pts_path
from frames_pipeline.decode._options import DECODE_MODES, DecodeMode, DecodeOptions
from frames_pipeline.decode._probe import VideoInfo, probe

__all__ = [
    "DECODE_MODES",
    "DecodeError",
    "DecodeMode",
    "DecodeOptions",
    "FrameResult",
    "Reason",
    "VideoInfo",
    "extract_frames",
    "extract_to_file",
    "probe",
    "probe_with_options",
    "pts_path",
]
