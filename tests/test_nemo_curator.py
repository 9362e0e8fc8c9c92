"""Our stage as NeMo Curator 1.4 sees it: a ProcessingStage with NeMo's fields, defaults, resources and
contract, run by NeMo's own Pipeline and Ray executor. Skipped where nemo-curator is not installed
(the extra ``nemo``; CI's Python 3.13 leg leaves it out, since it pulls in torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nemo_curator", reason="nemo-curator is not installed: pip install -e '.[nemo]' (Python 3.11)")

import fsspec
from conftest import RayHead
from nemo_curator.backends.base import WorkerMetadata
from nemo_curator.backends.utils import RayStageSpecKeys
from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.tasks.video import Video, VideoMetadata, VideoTask
from nemo_curator.utils.client_utils import FSPath

import frames_pipeline.nemo
from frames_pipeline.decode import probe
from frames_pipeline.demo.clips import write_video
from frames_pipeline.nemo import VideoFrameExtractionStage


def test_the_package_gives_nemos_classes_when_nemo_curator_is_installed() -> None:
    assert frames_pipeline.nemo.USING_NEMO_CURATOR
    assert frames_pipeline.nemo.Video is Video and frames_pipeline.nemo.VideoTask is VideoTask


def test_it_is_a_processing_stage_nemos_pipeline_takes() -> None:
    stage = VideoFrameExtractionStage()
    assert isinstance(stage, ProcessingStage)
    pipeline = Pipeline(name="p", stages=[stage])
    pipeline.add_stage(VideoFrameExtractionStage(name="second"))
    assert [s.name for s in pipeline.stages] == ["video_frame_extraction", "second"]


def test_name_is_a_field_and_underscore_name_nemos_read_only_view() -> None:
    stage = VideoFrameExtractionStage(name="frames")
    assert stage.name == stage._name == "frames"
    with pytest.raises(AttributeError):
        stage._name = "other"  # type: ignore[misc]


def test_inputs_and_outputs_are_declared_as_nemo_declares_them() -> None:
    stage = VideoFrameExtractionStage()
    assert stage.inputs() == (["data"], [])
    assert stage.outputs() == (["data"], [])


@pytest.mark.parametrize(
    ("mode", "cpus", "gpu_memory_gb", "ray_data_num_cpus"),
    [
        ("pynvc", 1.0, 10, None),
        ("ffmpeg_gpu", 4.0, 0.0, 1.0),
        ("ffmpeg_cpu", 4.0, 0.0, 1.0),
        ("auto", 4.0, 0.0, 1.0),
    ],
)
def test_resources_per_mode_are_nemos(
    mode: str, cpus: float, gpu_memory_gb: float, ray_data_num_cpus: float | None
) -> None:
    stage = VideoFrameExtractionStage(decoder_mode=mode)
    assert isinstance(stage.resources, Resources)
    assert (stage.resources.cpus, stage.resources.gpu_memory_gb) == (cpus, gpu_memory_gb)
    assert stage.resources.requires_gpu == (mode == "pynvc")
    assert stage.ray_data_num_cpus == ray_data_num_cpus
    expected_spec = {} if ray_data_num_cpus is None else {RayStageSpecKeys.RAY_NUM_CPUS: ray_data_num_cpus}
    assert stage.ray_stage_spec() == expected_spec


def test_the_deprecated_ffmpeg_mode_gets_the_cpu_resources() -> None:
    with pytest.warns(DeprecationWarning):
        stage = VideoFrameExtractionStage(decoder_mode="ffmpeg")
    assert stage.resources.cpus == 4.0 and stage.ray_data_num_cpus == 1.0


def test_a_users_ray_data_num_cpus_is_kept() -> None:
    stage = VideoFrameExtractionStage(decoder_mode="ffmpeg_cpu", ray_data_num_cpus=2.0)
    assert stage.ray_stage_spec() == {RayStageSpecKeys.RAY_NUM_CPUS: 2.0}


def test_with_returns_a_reconfigured_copy() -> None:
    stage = VideoFrameExtractionStage(decoder_mode="ffmpeg_cpu")
    other = stage.with_(name="frames_1cpu", resources=Resources(cpus=1.0), batch_size=4, num_workers=2)
    assert (other.name, other.resources.cpus, other.batch_size, other.num_workers()) == ("frames_1cpu", 1.0, 4, 2)
    assert (stage.name, stage.resources.cpus, stage.batch_size) == ("video_frame_extraction", 4.0, 1)
    assert other.ray_stage_spec() == stage.ray_stage_spec()


def test_the_decoder_gets_the_cpus_the_scheduler_reserved(tmp_path: Path) -> None:
    stage = VideoFrameExtractionStage(decoder_mode="ffmpeg_cpu").with_(resources=Resources(cpus=2.0))
    stage.setup(WorkerMetadata(worker_id="w0"))
    try:
        assert stage._pool.options.threads == 2
    finally:
        stage.teardown()


def test_setup_on_node_and_process_batch_are_nemos(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.mp4", 9)
    stage = VideoFrameExtractionStage(decoder_mode="ffmpeg_cpu")
    stage.setup_on_node()
    stage.setup()
    try:
        good = VideoTask(dataset_name="d", data=Video(input_video=clip, source_bytes=clip.read_bytes()))
        bad = VideoTask(dataset_name="d", data=Video(input_video=tmp_path / "bad.mp4", source_bytes=b"not a video"))
        results = stage.process_batch([good, bad])
    finally:
        stage.teardown()
    assert results[0] is good and results[0].data.frame_array.shape == (9, 27, 48, 3)
    assert results[1] is None  # the executor turns it into a dropped slot


def test_remote_fspath_input_decodes_from_its_bytes(tmp_path: Path) -> None:

    clip = write_video(tmp_path / "clip.mp4", 9)
    remote = FSPath(fsspec.filesystem("memory"), "/bucket/clip.mp4")
    stage = VideoFrameExtractionStage(decoder_mode="ffmpeg_cpu")
    stage.setup()
    try:
        task = stage.process(
            VideoTask(dataset_name="d", data=Video(input_video=remote, source_bytes=clip.read_bytes()))
        )
    finally:
        stage.teardown()
    assert task is not None and task.data.frame_array.shape == (9, 27, 48, 3)


def test_nemos_metadata_is_not_needed(tmp_path: Path) -> None:
    """NeMo's stage skips a video whose reader-side metadata is incomplete (ffprobe missing or failing)
    and passes it on without frames; ours probes the stream itself."""
    clip = write_video(tmp_path / "clip.mp4", 9)
    video = Video(input_video=clip, source_bytes=clip.read_bytes(), metadata=VideoMetadata())
    assert not video.has_metadata()
    stage = VideoFrameExtractionStage(decoder_mode="ffmpeg_cpu")
    stage.setup()
    try:
        task = stage.process(VideoTask(dataset_name="d", data=video))
    finally:
        stage.teardown()
    assert task is not None and task.data.frame_array.shape == (9, 27, 48, 3)


GOOD = ("pattern", "vfr", "rotated_90", "hevc_10bit")
BAD = ("garbage", "empty", "audio_only", "zero_frames", "no_moov")

# A NeMo user's script, with only the stage's import changed: NeMo's reader, our stage, and a stage
# that needs frame_array as NeMo's next stage (TransNetV2 clip extraction) does. It prints, for each
# task that comes out, its video and what the next stage saw.
PIPELINE_SCRIPT = """
import json, sys
import numpy as np
from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor
from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.video.io.video_reader import VideoReaderStage
from nemo_curator.tasks import FileGroupTask
from frames_pipeline.nemo import VideoFrameExtractionStage

class FrameArrayReader(ProcessingStage):
    name = "frame_array_reader"

    def process(self, task):
        frames = task.data.frame_array
        if frames is None:
            raise ValueError(f"{task.data.input_video} reached the next stage without frame_array")
        task.data.errors["next_stage_saw"] = json.dumps([frames.shape, str(frames.dtype), len(task.data.frame_pts_s)])
        return task

stages = [VideoReaderStage(), VideoFrameExtractionStage(decoder_mode="ffmpeg_cpu"), FrameArrayReader()]
tasks = [FileGroupTask(dataset_name="edge", data=[path]) for path in sys.argv[1:]]
results = Pipeline(name="frames", stages=stages).run(RayActorPoolExecutor(show_progress=False), initial_tasks=tasks)
print(json.dumps({str(t.data.input_video): json.loads(t.data.errors["next_stage_saw"]) for t in results}))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("ray_head", [4], indirect=True)  # our stage reserves NeMo's 4 CPUs
def test_nemo_pipeline_on_ray_decodes_good_videos_and_drops_bad_ones_loudly(
    ray_head: RayHead, edge_corpus: dict[str, Path]
) -> None:
    paths = {case: edge_corpus[case] for case in GOOD + BAD}
    # Ray swaps 127.0.0.1 for the host's address unless told it is on a laptop: this keeps it on loopback.
    env = os.environ | {"RAY_ADDRESS": ray_head.gcs_address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    done = subprocess.run(
        [sys.executable, "-c", PIPELINE_SCRIPT, *map(str, paths.values())],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    seen = json.loads(done.stdout.splitlines()[-1])
    assert sorted(seen) == sorted(str(paths[case]) for case in GOOD)
    for case in GOOD:
        expected = probe(paths[case]).num_frames_from_content
        assert seen[str(paths[case])] == [[expected, 27, 48, 3], "uint8", expected]
    # Each dropped video is in the stage worker's log with its path and reason, and so is the count.
    logs = "".join(p.read_text(errors="replace") for p in ray_head.logs.glob("session_*/logs/worker-*"))
    for case in BAD:
        assert f"frame extraction failed for {paths[case]}: " in logs, case
    assert f"video_frame_extraction: {len(BAD)} of {len(paths)} videos failed" in logs
