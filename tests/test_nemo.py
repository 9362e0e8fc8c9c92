"""The NeMo drop-in's behaviour, for both stages: the standalone one (no nemo-curator) and the NeMo
Curator ProcessingStage (its own tests are in test_nemo_curator.py). Behaviour follows what NeMo's
own unit tests check of its stage, without its bugs: frames (N, H, W, 3) for output_hw=(H, W) in
every mode, one per decoded frame, and a failed video's reason logged and counted."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from frames_pipeline.decode import probe
from frames_pipeline.demo.clips import write_video
from frames_pipeline.nemo import USING_NEMO_CURATOR, get_frames_from_ffmpeg
from frames_pipeline.nemo._extraction import video_name
from frames_pipeline.nemo._standalone import Video as StandaloneVideo
from frames_pipeline.nemo._standalone import VideoFrameExtractionStage as StandaloneStage
from frames_pipeline.nemo._standalone import VideoTask as StandaloneTask

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Flavour:
    """One of the two stages, with how its tasks are made and what it returns for a failed video."""

    stage: type
    task: Callable[..., Any]
    drops_failed: bool  # NeMo's contract: a failed video's task is dropped (process returns None)


def standalone_task(input_video: Any, source_bytes: bytes | None = None) -> StandaloneTask:
    return StandaloneTask("t", "d", StandaloneVideo(input_video=input_video, source_bytes=source_bytes))


def curator_flavour() -> Flavour:
    from nemo_curator.tasks.video import Video, VideoTask

    from frames_pipeline.nemo._curator import VideoFrameExtractionStage

    def task(input_video: Any, source_bytes: bytes | None = None) -> VideoTask:
        return VideoTask(dataset_name="d", data=Video(input_video=input_video, source_bytes=source_bytes))

    return Flavour(VideoFrameExtractionStage, task, drops_failed=True)


@pytest.fixture(params=["standalone", "nemo_curator"])
def flavour(request: pytest.FixtureRequest) -> Flavour:
    if request.param == "standalone":
        return Flavour(StandaloneStage, standalone_task, drops_failed=False)
    if not USING_NEMO_CURATOR:
        pytest.skip("nemo-curator is not installed: pip install -e '.[nemo]' (Python 3.11)")
    return curator_flavour()


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.mp4", 12)


@pytest.fixture
def running(flavour: Flavour) -> Any:
    """A CPU stage of ``flavour``, set up as NeMo's executors do, torn down after the test."""
    stage = flavour.stage(decoder_mode="ffmpeg_cpu")
    stage.setup()
    yield stage
    stage.teardown()


def test_defaults_are_nemos(flavour: Flavour) -> None:
    stage = flavour.stage()
    assert (stage.output_hw, stage.pyncv_batch_size, stage.decoder_mode, stage.verbose) == (
        (27, 48),
        64,
        "pynvc",
        False,
    )
    assert stage.name == "video_frame_extraction"


def test_custom_values_are_kept(flavour: Flavour) -> None:
    stage = flavour.stage(output_hw=(100, 200), pyncv_batch_size=32, decoder_mode="ffmpeg_gpu", verbose=True)
    assert (stage.output_hw, stage.pyncv_batch_size, stage.decoder_mode, stage.verbose) == (
        (100, 200),
        32,
        "ffmpeg_gpu",
        True,
    )
    assert stage.decode_options.output_hw == (100, 200) and stage.decode_options.batch_size == 32


def test_nemos_ffmpeg_mode_means_cpu_ffmpeg_with_a_warning_at_the_callers_line(flavour: Flavour) -> None:
    with pytest.warns(DeprecationWarning, match="decoder_mode='ffmpeg' is deprecated.*'ffmpeg_cpu'") as caught:
        stage = flavour.stage(decoder_mode="ffmpeg")
    assert stage.decoder_mode == "ffmpeg" and stage.decode_options.mode == "ffmpeg_cpu"
    assert [w.filename for w in caught] == [__file__]


def test_a_script_using_the_ffmpeg_mode_is_shown_the_deprecation(flavour: Flavour, tmp_path: Path) -> None:
    """Python's default filters show a DeprecationWarning only when it is attributed to __main__."""
    script = tmp_path / "pipeline.py"
    script.write_text(
        f"from {flavour.stage.__module__} import VideoFrameExtractionStage\n"
        'VideoFrameExtractionStage(decoder_mode="ffmpeg")\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert f"{script}:2: DeprecationWarning: decoder_mode='ffmpeg' is deprecated" in done.stderr


def test_a_string_that_is_no_mode_is_refused_with_the_valid_ones(flavour: Flavour) -> None:
    with pytest.raises(
        ValueError, match="unknown decoder_mode 'cuda'; valid modes: auto, pynvc, ffmpeg_gpu, ffmpeg_cpu"
    ):
        flavour.stage(decoder_mode="cuda")


def test_a_bad_output_size_is_refused_where_the_stage_is_built(flavour: Flavour) -> None:
    with pytest.raises(ValueError, match="output_hw"):
        flavour.stage(output_hw=(0, 48))


def test_process_before_setup_says_to_call_setup_and_starts_nothing(flavour: Flavour, clip: Path) -> None:
    stage = flavour.stage(decoder_mode="ffmpeg_cpu")
    with pytest.raises(RuntimeError, match=r"before setup\(\).*call stage.setup\(\) first"):
        stage.process(flavour.task(clip, clip.read_bytes()))
    assert stage._pool is None


def test_setup_starts_the_worker_once(flavour: Flavour) -> None:
    stage = flavour.stage(decoder_mode="ffmpeg_cpu")
    stage.setup()
    try:
        worker = stage._pool._pool[0].process
        assert worker.is_alive()
        stage.setup()  # NeMo calls it once per worker; a second call keeps the same process
        assert stage._pool._pool[0].process is worker
    finally:
        stage.teardown()
    assert not worker.is_alive()


def test_source_bytes_decode_in_memory(flavour: Flavour, running: Any, clip: Path) -> None:
    task = flavour.task(Path("named/only.mp4"), clip.read_bytes())  # the name is not read
    result = running.process(task)
    expected = probe(clip)
    assert result is task
    assert result.data.frame_array.shape == (expected.num_frames_from_content, 27, 48, 3)
    assert result.data.frame_array.dtype == np.uint8
    assert result.data.frame_pts_s.shape == (expected.num_frames_from_content,)
    assert running.counts.decoded == 1 and running.counts.num_failed == 0


def test_a_local_path_decodes_without_source_bytes(flavour: Flavour, running: Any, clip: Path) -> None:
    result = running.process(flavour.task(clip))
    assert result.data.frame_array.shape == (12, 27, 48, 3)


def test_bytes_and_path_give_the_same_frames(flavour: Flavour, running: Any, clip: Path) -> None:
    from_bytes = running.process(flavour.task(clip, clip.read_bytes())).data
    from_path = running.process(flavour.task(clip)).data
    assert np.array_equal(from_bytes.frame_array, from_path.frame_array)
    assert np.array_equal(from_bytes.frame_pts_s, from_path.frame_pts_s)


def test_output_size_is_height_by_width(flavour: Flavour, clip: Path) -> None:
    stage = flavour.stage(output_hw=(36, 64), decoder_mode="ffmpeg_cpu")
    stage.setup()
    try:
        assert stage.process(flavour.task(clip, clip.read_bytes())).data.frame_array.shape == (12, 36, 64, 3)
    finally:
        stage.teardown()


def test_pynvc_without_a_gpu_decodes_on_cpu_and_says_so(flavour: Flavour, clip: Path) -> None:
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("this host has a GPU")
    stage = flavour.stage()  # decoder_mode="pynvc", NeMo's default
    stage.setup()
    try:
        video = stage.process(flavour.task(clip, clip.read_bytes())).data
    finally:
        stage.teardown()
    assert video.frame_array.shape == (12, 27, 48, 3)
    assert "no usable CUDA device" in video.errors["frame_extraction_fallback"]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("garbage", "not_a_video"),
        ("empty", "not_a_video"),
        ("audio_only", "no_video_stream"),
        ("playlist", "remote_input"),
    ],
)
def test_a_failed_video_is_logged_with_its_path_and_counted(
    flavour: Flavour,
    running: Any,
    edge_corpus: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
    case: str,
    reason: str,
) -> None:
    path = edge_corpus[case]
    task = flavour.task(path, path.read_bytes())
    with caplog.at_level(logging.WARNING, logger="frames_pipeline.nemo"):
        result = running.process(task)
    assert result is (None if flavour.drops_failed else task)
    assert task.data.frame_array is None
    assert task.data.errors["frame_extraction"].startswith(f"{reason}: ")
    assert "/proc/self/fd" not in task.data.errors["frame_extraction"]  # the video is named, not its memfd
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"frame extraction failed for {path}: {reason}: " in record.getMessage()
    assert running.counts.failed == {reason: 1}


def test_no_bytes_and_no_local_file_is_a_failed_video(flavour: Flavour, running: Any, tmp_path: Path) -> None:
    task = flavour.task(tmp_path / "gone.mp4")
    assert running.process(task) is (None if flavour.drops_failed else task)
    assert task.data.errors["frame_extraction"].startswith("not_found: ")


def test_a_remote_name_without_bytes_is_refused_not_fetched(flavour: Flavour, running: Any) -> None:
    task = flavour.task("s3://bucket/clip.mp4")
    running.process(task)
    assert task.data.errors["frame_extraction"].startswith("remote_input: ")


def test_teardown_logs_the_failures_of_this_worker(
    flavour: Flavour, edge_corpus: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    stage = flavour.stage(decoder_mode="ffmpeg_cpu")
    stage.setup()
    for case in ("pattern", "garbage", "audio_only", "empty"):
        stage.process(flavour.task(edge_corpus[case], edge_corpus[case].read_bytes()))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="frames_pipeline.nemo"):
        stage.teardown()
    assert caplog.messages == ["video_frame_extraction: 3 of 4 videos failed (not_a_video: 2, no_video_stream: 1)"]


def test_verbose_logs_each_decoded_video(flavour: Flavour, clip: Path, caplog: pytest.LogCaptureFixture) -> None:
    stage = flavour.stage(decoder_mode="ffmpeg_cpu", verbose=True)
    stage.setup()
    try:
        with caplog.at_level(logging.INFO, logger="frames_pipeline.nemo"):
            stage.process(flavour.task(clip, clip.read_bytes()))
    finally:
        stage.teardown()
    assert f"{clip}: 12 frames of (27, 48) via ffmpeg_cpu" in caplog.messages


def test_video_names_follow_nemos_input_types() -> None:
    class FSPathLike:  # NeMo's FSPath: a remote object, named by its URL
        def as_posix(self) -> str:
            return "s3://bucket/a.mp4"

    assert video_name(Path("/videos/a.mp4")) == "/videos/a.mp4"
    assert video_name("/videos/a.mp4") == "/videos/a.mp4"
    assert video_name(FSPathLike()) == "s3://bucket/a.mp4"


def test_get_frames_from_ffmpeg_keeps_nemos_signature(clip: Path, edge_corpus: dict[str, Path]) -> None:
    frames = get_frames_from_ffmpeg(clip, width=48, height=27)
    assert frames is not None and frames.shape == (12, 27, 48, 3) and frames.dtype == np.uint8
    assert get_frames_from_ffmpeg(edge_corpus["garbage"], width=48, height=27) is None


SCRIPT = """
from pathlib import Path
from frames_pipeline.nemo._standalone import Video, VideoFrameExtractionStage, VideoTask

def main():
    stage = VideoFrameExtractionStage(decoder_mode="ffmpeg_cpu")
    stage.setup()
    task = stage.process(VideoTask("t", "d", Video(input_video=Path({clip!r}))))
    stage.teardown()
    print(task.data.frame_array.shape)
"""


@pytest.mark.parametrize("guarded", [True, False])
def test_a_script_works_with_a_main_guard_and_fails_at_once_without(tmp_path: Path, clip: Path, guarded: bool) -> None:
    script = tmp_path / "pipeline.py"
    call = 'if __name__ == "__main__":\n    main()\n' if guarded else "main()\n"
    script.write_text(SCRIPT.format(clip=str(clip)) + call)
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    if guarded:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "(12, 27, 48, 3)"
        return
    assert done.returncode == 1
    assert "WorkerStartError" in done.stderr
    assert f"runs {script} again in each worker" in done.stderr
    assert 'Put the code that runs the pipeline under `if __name__ == "__main__":`' in done.stderr
    assert time.monotonic() - started < 30  # not a worker_crashed per video after retries


def test_the_package_gives_the_standalone_stage_without_nemo_curator() -> None:
    probe_script = (
        "import sys; sys.modules['nemo_curator'] = None\n"
        "import frames_pipeline.nemo as n\n"
        "from frames_pipeline.nemo import _standalone\n"
        "assert not n.USING_NEMO_CURATOR and n.VideoFrameExtractionStage is _standalone.VideoFrameExtractionStage\n"
        "assert n.Video is _standalone.Video and n.VideoTask is _standalone.VideoTask\n"
        "assert n.VideoFrameExtractionStage()._name == 'video_frame_extraction'\n"
    )
    done = subprocess.run([sys.executable, "-c", probe_script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
