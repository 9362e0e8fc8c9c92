"""The multi-threaded ffmpeg_cpu decode pulls frames on a feeding thread: same frames, errors reach
the caller as recorded failures, and no thread outlives its decode however the caller stops."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from frames_pipeline.decode import DecodeError, DecodeOptions, Reason, extract_frames, probe
from frames_pipeline.decode._backends import ffmpeg_cpu
from frames_pipeline.decode._pool import VideoJob, _Assignment, _decode_assignment
from frames_pipeline.demo.clips import write_video

FEEDER = "ffmpeg_cpu-feed"
# Decodable clips of the corpus, damaged ones included (their threaded pass is retried on one thread).
DECODABLE = [
    "pattern", "vfr", "cfr_mkv", "rotated_90", "hevc_10bit", "odd_size", "yuv444", "yuv422", "av1",
    "truncated", "mirrored", "ts_restart", "size_change", "missing_pts", "edit_list", "annexb",
]  # fmt: skip


def _feeding_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == FEEDER]


@pytest.fixture
def pulling_threads(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The names of the threads that pulled decoded frames from the decoder during the test."""
    names: set[str] = set()
    real_frames = ffmpeg_cpu._frames

    def spied(*args: object) -> Iterator[av.VideoFrame]:
        for frame in real_frames(*args):  # type: ignore[arg-type]
            names.add(threading.current_thread().name)
            yield frame

    monkeypatch.setattr(ffmpeg_cpu, "_frames", spied)
    return names


@pytest.fixture
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Many more frames than the feeder holds ahead, so it is still decoding when the caller stops."""
    return write_video(tmp_path_factory.mktemp("feeder") / "long.mp4", 150)


@pytest.mark.parametrize("name", DECODABLE)
def test_feeder_returns_the_frames_and_order_of_a_decode_without_it(
    edge_corpus: dict[str, Path], name: str, pulling_threads: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    options = DecodeOptions(mode="ffmpeg_cpu", threads=2, batch_size=4)
    fed = extract_frames(edge_corpus[name], options=options)
    assert FEEDER in pulling_threads
    pulling_threads.clear()
    monkeypatch.setattr(ffmpeg_cpu, "_decoded_ahead", contextlib.nullcontext)
    unfed = extract_frames(edge_corpus[name], options=options)
    assert FEEDER not in pulling_threads
    np.testing.assert_array_equal(fed.frames, unfed.frames)
    np.testing.assert_array_equal(fed.pts_s, unfed.pts_s)
    assert fed.warnings == unfed.warnings
    assert _feeding_threads() == []


def test_single_threaded_decodes_pull_frames_on_the_callers_thread(
    edge_corpus: dict[str, Path], pulling_threads: set[str]
) -> None:
    extract_frames(edge_corpus["pattern"], mode="ffmpeg_cpu", threads=1)
    assert pulling_threads == {threading.current_thread().name}


def test_a_caller_that_stops_early_leaves_no_feeding_thread(long_clip: Path) -> None:
    options = DecodeOptions(mode="ffmpeg_cpu", threads=2, batch_size=4)
    backend = ffmpeg_cpu.FFmpegCPUBackend(options)
    batches = backend.decode(probe(long_clip), options, time.monotonic() + 60, [])
    try:
        assert len(next(batches).frames) == 4
        assert len(_feeding_threads()) == 1
    finally:
        batches.close()
    assert _feeding_threads() == []


def test_a_deadline_met_on_the_feeding_thread_stops_the_decode_with_timeout(
    long_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline passes after the first batch: the frames decoded before it still arrive, then the
    timeout the feeding thread raised, and the thread is gone."""
    now = [0.0]
    asked_on: set[str] = set()

    def monotonic() -> float:
        asked_on.add(threading.current_thread().name)
        return now[0]

    monkeypatch.setattr(ffmpeg_cpu, "time", SimpleNamespace(monotonic=monotonic))
    options = DecodeOptions(mode="ffmpeg_cpu", threads=2, batch_size=4)
    batches = ffmpeg_cpu.FFmpegCPUBackend(options).decode(probe(long_clip), options, 10.0, [])
    delivered = len(next(batches).frames)
    now[0] = 11.0
    with pytest.raises(DecodeError) as raised:
        for batch in batches:
            delivered += len(batch.frames)
    assert raised.value.reason == Reason.TIMEOUT
    assert 4 <= delivered < 150
    assert asked_on == {FEEDER}
    assert _feeding_threads() == []


def test_an_error_on_the_feeding_thread_is_recorded_as_the_videos_failure(
    long_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raised_on: list[str] = []

    class BrokenClock(ffmpeg_cpu.PacketClock):
        def place(self, packet: av.Packet) -> None:
            if packet.pts is not None and packet.pts > 0:
                raised_on.append(threading.current_thread().name)
                raise RuntimeError("clock broke")
            super().place(packet)

    monkeypatch.setattr(ffmpeg_cpu, "PacketClock", BrokenClock)
    job = VideoJob(key="long", source=str(long_clip), output=str(tmp_path / "long.npy"))
    outcome = _decode_assignment(_Assignment(job, "ffmpeg_cpu"), DecodeOptions(mode="ffmpeg_cpu", threads=2))
    assert raised_on == [FEEDER]
    assert outcome.error_reason == Reason.INTERNAL_ERROR.value
    assert outcome.error == "RuntimeError: clock broke"
    assert outcome.output is None
    assert not (tmp_path / "long.npy").exists()
    assert _feeding_threads() == []
