"""The stage without NeMo Curator installed: the seed's plain classes, with NeMo's field names."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from frames_pipeline.nemo._extraction import FrameExtraction


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
class VideoFrameExtractionStage(FrameExtraction):
    """Fill ``task.data.frame_array`` (N, H, W, 3) uint8 and ``frame_pts_s`` for each video task; a
    failed video's task comes back with its reason in ``errors["frame_extraction"]``."""

    output_hw: tuple[int, int] = (27, 48)
    pyncv_batch_size: int = 64
    decoder_mode: str = "pynvc"
    verbose: bool = False
    _name: str = "video_frame_extraction"

    def __post_init__(self) -> None:
        self._init_extraction()

    @property
    def name(self) -> str:
        return self._name

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["input_video", "source_bytes"]

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["frame_array", "frame_pts_s", "errors"]

    def process(self, task: VideoTask) -> VideoTask:
        self._extract(task.data)
        return task
