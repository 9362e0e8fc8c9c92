"""The stage as a genuine NeMo Curator ``ProcessingStage`` (nemo-curator installed: extra ``nemo``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nemo_curator.backends.utils import RayStageSpecKeys
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.tasks.video import VideoTask

from frames_pipeline.nemo._extraction import FrameExtraction


@dataclass
class VideoFrameExtractionStage(FrameExtraction, ProcessingStage[VideoTask, VideoTask]):
    """NeMo's ``VideoFrameExtractionStage``: its fields, defaults, resources and contract, with our decoder.

    ``task.data.frame_array`` becomes (N, H, W, 3) uint8 RGB with ``output_hw`` = (H, W) in every mode,
    one frame per decoded frame, and ``task.data.frame_pts_s`` their timestamps. A video that fails
    does not go on to the next stage (``process`` returns None, as NeMo's does), but its reason is
    logged at warning level with its path and counted in ``counts``.
    """

    output_hw: tuple[int, int] = (27, 48)
    pyncv_batch_size: int = 64
    decoder_mode: str = "pynvc"
    verbose: bool = False
    name: str = "video_frame_extraction"
    # NeMo's Ray Data CPU reservation: 1.0 on the CPU path so that Ray Data fuses it with the reader.
    ray_data_num_cpus: float | None = None

    def __post_init__(self) -> None:
        self._init_extraction()
        # NeMo's declarations per mode; every mode but pynvc is a CPU stage to NeMo's schedulers.
        if self.decode_options.mode == "pynvc":
            self.resources = Resources(gpu_memory_gb=10)
        else:
            self.resources = Resources(cpus=4.0)
            if self.ray_data_num_cpus is None:
                self.ray_data_num_cpus = 1.0

    def _decode_threads(self) -> int:
        # The CPUs the scheduler reserved for this worker, not the host's: many workers share a node.
        return max(1, round(self.resources.cpus))

    def ray_stage_spec(self) -> dict[str, Any]:
        if self.ray_data_num_cpus is not None:
            return {RayStageSpecKeys.RAY_NUM_CPUS: self.ray_data_num_cpus}
        return {}

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def process(self, task: VideoTask) -> VideoTask | None:
        return task if self._extract(task.data) else None
