"""The decoder pool: outcomes as values, hard deadlines, crash recovery, and clean reuse."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from frames_pipeline.decode import DecodeOptions, DecoderPool, VideoJob, WorkerStartError, _pool, extract_frames
from frames_pipeline.demo.clips import write_video


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Long enough (600 frames at 640x360) that a worker is still busy when the test interferes."""
    return write_video(tmp_path_factory.mktemp("pool") / "long.mp4", 600, size=(360, 640), preset="ultrafast")


def _job(source: Path | str, out: Path, key: str) -> VideoJob:
    return VideoJob(key, str(source), str(out / f"{key}.npy"))


def _when_decoding(pool: DecoderPool, out: Path, action: str) -> threading.Thread:
    """Signal the busy worker once it is writing frames: its output's hidden temporary file exists
    (a fixed delay after the job was handed out raced with fast decodes)."""

    def act() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            busy = [w for w in pool._pool if w.job is not None]
            if busy and any(p.name.startswith(".") for p in out.iterdir()):
                os.kill(busy[0].process.pid, signal.SIGKILL if action == "kill" else signal.SIGSTOP)
                return
            time.sleep(0.002)

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    return thread


def test_outcomes_are_values(edge_corpus: dict[str, Path], tmp_path: Path) -> None:
    jobs = [_job(edge_corpus["pattern"], tmp_path, "good"), _job(edge_corpus["garbage"], tmp_path, "bad")]
    with DecoderPool(DecodeOptions(mode="ffmpeg_cpu"), workers=2) as pool:
        outcomes = {o.key: o for o in pool.run(jobs)}
    assert outcomes["good"].ok and outcomes["good"].num_frames == outcomes["good"].expected_frames == 30
    assert np.load(tmp_path / "good.npy").shape == (30, 27, 48, 3)
    assert np.load(tmp_path / "good.pts.npy").shape == (30,)
    bad = outcomes["bad"]
    assert not bad.ok and bad.status == "failed" and bad.error_reason == "not_a_video" and bad.error
    assert not (tmp_path / "bad.npy").exists()


def test_a_job_with_bytes_is_decoded_from_them(edge_corpus: dict[str, Path], tmp_path: Path) -> None:
    data = edge_corpus["pattern"].read_bytes()
    job = VideoJob("mem", "s3://bucket/pattern.mp4", str(tmp_path / "mem.npy"), data=data)
    with DecoderPool(DecodeOptions(mode="ffmpeg_cpu"), workers=1) as pool:
        [outcome] = pool.run([job])
    assert outcome.ok and outcome.num_frames == 30 and outcome.source == "s3://bucket/pattern.mp4"
    assert np.array_equal(np.load(tmp_path / "mem.npy"), extract_frames(edge_corpus["pattern"]).frames)
    assert "data" not in repr(job)  # a log line of a job does not print the video


def test_a_worker_that_cannot_start_fails_start_with_its_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pool, "_worker_main", _exit_at_once)
    pool = DecoderPool(DecodeOptions(mode="ffmpeg_cpu"), workers=2)
    started = time.monotonic()
    with pytest.raises(WorkerStartError, match=r"exited while starting \(exit code 3\)"):
        pool.start()
    assert time.monotonic() - started < 30 and pool._pool == []


def _exit_at_once(*_args: object) -> None:
    os._exit(3)


def test_dead_worker_is_replaced_and_its_video_retried(long_clip: Path, tmp_path: Path) -> None:
    with DecoderPool(DecodeOptions(mode="ffmpeg_cpu"), workers=1) as pool:
        first_pid = pool._pool[0].process.pid
        killer = _when_decoding(pool, tmp_path, "kill")
        outcomes = list(pool.run([_job(long_clip, tmp_path, "long")]))
        killer.join()
        assert pool._pool[0].process.pid != first_pid
    (outcome,) = outcomes
    assert outcome.ok and outcome.num_frames == 600
    assert "worker died" in (outcome.fallback_reason or "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.npy", "long.pts.npy"]


def test_silent_worker_is_killed_at_the_hard_deadline(
    long_clip: Path, edge_corpus: dict[str, Path], tmp_path: Path
) -> None:
    options = DecodeOptions(mode="ffmpeg_cpu", timeout_s=1.0)
    with DecoderPool(options, workers=1, grace_s=1.0) as pool:
        _when_decoding(pool, tmp_path, "stop")
        started = time.monotonic()
        (hung,) = pool.run([_job(long_clip, tmp_path, "hung")])
        assert time.monotonic() - started < 10
        (after,) = pool.run([_job(edge_corpus["pattern"], tmp_path, "after")])
    assert hung.error_reason == "timeout" and "killed" in (hung.error or "")
    assert after.ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after.npy", "after.pts.npy"]


def test_abandoned_run_does_not_leak_replies_into_the_next(
    long_clip: Path, edge_corpus: dict[str, Path], tmp_path: Path
) -> None:
    with DecoderPool(DecodeOptions(mode="ffmpeg_cpu"), workers=2) as pool:
        first = pool.run([_job(edge_corpus["garbage"], tmp_path, "quick"), _job(long_clip, tmp_path, "slow")])
        assert next(first).key == "quick"
        first.close()  # the slow video is still decoding
        later = {o.key: o for o in pool.run([_job(edge_corpus["pattern"], tmp_path, "next")])}
    assert set(later) == {"next"} and later["next"].num_frames == 30


def test_worker_that_died_while_idle_is_replaced_before_its_next_job(
    edge_corpus: dict[str, Path], tmp_path: Path
) -> None:
    with DecoderPool(DecodeOptions(mode="ffmpeg_cpu"), workers=1) as pool:
        idle = pool._pool[0].process
        os.kill(idle.pid, signal.SIGKILL)  # the OOM killer, say: no job was lost
        idle.join(timeout=10)
        (outcome,) = pool.run([_job(edge_corpus["pattern"], tmp_path, "next")])
        assert pool._pool[0].process.pid != idle.pid
    assert outcome.ok and outcome.num_frames == 30 and outcome.fallback_reason is None
