"""The decoder pool: outcomes as values, hard deadlines, crash recovery, and clean reuse."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import pytest

import frames_pipeline.decode._pool as pool_module
from frames_pipeline.decode import DecodeOptions, DecoderPool, VideoJob, WorkerStartError, extract_frames
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
            busy = [w for w in pool._pool if w.jobs]
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
    monkeypatch.setattr(pool_module, "_worker_main", _exit_at_once)
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


def test_decoder_threads_share_a_process(edge_corpus: dict[str, Path], tmp_path: Path) -> None:
    names = [name for _ in range(3) for name in ("corrupt", "pattern", "truncated", "vfr")]
    jobs = [_job(edge_corpus[name], tmp_path, f"{name}{i}") for i, name in enumerate(names)]
    with DecoderPool(DecodeOptions(mode="ffmpeg_cpu"), workers=4, processes=2) as pool:
        assert [w.threads for w in pool._pool] == [2, 2]
        outcomes = list(pool.run(jobs))
    assert all(o.ok for o in outcomes) and len(outcomes) == len(jobs)
    assert {o.num_frames for o in outcomes if o.key.startswith("vfr")} == {40}
    assert all(o.warnings for o in outcomes if o.key.startswith(("corrupt", "truncated")))


def test_videos_decoded_on_threads_of_one_process_keep_their_own_messages(edge_corpus: dict[str, Path]) -> None:
    """FFmpeg's log is process-wide: without turns, a damaged video's messages landed on a clean
    neighbour decoded at the same time (10 of 30 in one run)."""
    leaked: list[tuple[str, ...]] = []

    def decode(case: str) -> None:
        for _ in range(30):
            result = extract_frames(edge_corpus[case], mode="ffmpeg_cpu", threads=1)
            if case == "pattern" and result.warnings:
                leaked.append(result.warnings)

    threads = [threading.Thread(target=decode, args=(case,)) for case in ("pattern", "corrupt")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not leaked


def test_a_video_past_its_deadline_fails_alone_and_its_process_neighbour_starts_again(
    edge_corpus: dict[str, Path], tmp_path: Path
) -> None:
    """Killing a process for one hung video also stops its neighbours: they are handed out again as
    they were, not failed (the policy, with two videos placed in one process by hand)."""
    with DecoderPool(DecodeOptions(mode="ffmpeg_cpu"), workers=2, processes=1) as pool:
        worker = pool._pool[0]
        hung = pool_module._Assignment(_job(edge_corpus["pattern"], tmp_path, "hung"), "ffmpeg_cpu")
        neighbour = pool_module._Assignment(_job(edge_corpus["vfr"], tmp_path, "neighbour"), "ffmpeg_cpu", attempt=1)
        now = time.monotonic()
        worker.in_flight = {
            1: pool_module._InFlight(hung, time.time() - 5, now - 1),
            2: pool_module._InFlight(neighbour, time.time(), now + 60),
        }
        pending: deque[pool_module._Assignment] = deque()
        (outcome,) = pool._settle(worker, set(), pending)
        assert pool._pool[0] is not worker and not worker.process.is_alive()
        assert outcome.key == "hung" and outcome.error_reason == "timeout"
        assert list(pending) == [neighbour]  # same attempt, no reason: it did nothing wrong
        (after,) = pool.run([neighbour.job])
    assert after.ok and after.num_frames == 40


@pytest.mark.parametrize(
    ("workers", "retried_on"),
    [(4, "retried on GPU 1"), (1, "retried in ffmpeg_cpu")],  # one process: GPU 1 has none, so CPU
)
def test_processes_are_spread_over_the_gpus_and_a_crash_moves_the_video_elsewhere(
    workers: int, retried_on: str, long_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The assignment logic of a two-GPU host, on CPU: the workers believe in GPUs 0 and 1, find no
    device, and decode on CPU, which keeps every outcome checkable here."""
    monkeypatch.setattr(pool_module, "cuda_device_count", lambda: 2)
    monkeypatch.setattr(pool_module, "preferred_mode", lambda options: ("pynvc", None))
    with DecoderPool(DecodeOptions(mode="pynvc"), workers=workers, processes=workers) as pool:
        assert [(w.gpu, w.options.gpu_id) for w in pool._pool] == [(0, 0), (1, 1), (0, 0), (1, 1)][:workers]
        killed: list[int] = []

        def kill_on_gpu_0() -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not killed:
                for worker in list(pool._pool):
                    if worker.gpu == 0 and worker.jobs and any(p.name.startswith(".") for p in tmp_path.iterdir()):
                        killed.append(worker.process.pid)
                        os.kill(worker.process.pid, signal.SIGKILL)
                        return
                time.sleep(0.002)

        killer = threading.Thread(target=kill_on_gpu_0, daemon=True)
        killer.start()
        (outcome,) = pool.run([_job(long_clip, tmp_path, "long")])
        killer.join()
    assert killed and outcome.ok and outcome.num_frames == 600
    assert "on GPU 0" in outcome.fallback_reason and retried_on in outcome.fallback_reason


def test_a_gpu_whose_processes_keep_dying_is_taken_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "cuda_device_count", lambda: 2)
    monkeypatch.setattr(pool_module, "preferred_mode", lambda options: ("pynvc", None))
    with DecoderPool(DecodeOptions(mode="pynvc"), workers=2) as pool:
        for _ in range(2):  # what a GPU that fell off the bus does to every process started on it
            on_gpu_0 = next(w for w in pool._pool if w.gpu == 0)
            os.kill(on_gpu_0.process.pid, signal.SIGKILL)
            on_gpu_0.process.join(timeout=10)
            pool._retire(on_gpu_0, crashed=True)
        assert pool.gpus_down == {0} and [w.gpu for w in pool._pool] == [1, 1]


@pytest.mark.parametrize(
    ("mode", "gpus", "workers", "processes"),
    [
        ("pynvc", 1, 7, 1),
        ("pynvc", 1, 14, 2),
        ("pynvc", 1, 21, 3),
        ("pynvc", 2, 3, 2),
        ("pynvc", 4, 2, 2),
        ("ffmpeg_cpu", 0, 14, 14),
    ],
)
def test_default_processes_carry_a_few_gpu_threads_each_and_one_video_each_on_cpu(
    mode: str, gpus: int, workers: int, processes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "cuda_device_count", lambda: gpus)
    monkeypatch.setattr(pool_module, "preferred_mode", lambda options: (options.mode, None))
    pool = DecoderPool(DecodeOptions(mode=mode), workers=workers)
    assert pool.processes == processes
    assert sum(pool._slot_threads(slot) for slot in range(processes)) == workers


@pytest.mark.parametrize(
    ("requested", "visible", "expected"),
    [(None, 0, ()), (None, 4, (0, 1, 2, 3)), ([2], 4, (2,)), ([5], 4, ()), ([1, 3], 4, (1, 3))],
)
def test_which_gpus_a_pool_uses(
    requested: list[int] | None, visible: int, expected: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "cuda_device_count", lambda: visible)
    assert pool_module.pool_gpus("auto", requested) == expected
    assert pool_module.pool_gpus("ffmpeg_cpu", requested) == ()


def test_a_pinned_gpu_that_does_not_exist_decodes_on_cpu_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "cuda_device_count", lambda: 1)
    pool = DecoderPool(DecodeOptions(mode="auto"), workers=1, gpus=[3])
    assert pool.gpus == () and pool.effective_mode == "ffmpeg_cpu"
    assert pool.options.gpu_id == 3
