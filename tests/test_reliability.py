"""Reliability end to end: every bad input through a real shard, killed runs and resume, dead and
hung workers, a full disk, and a 10,000-row manifest."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from frames_pipeline.decode import DecodeOptions, DecoderPool, Reason, VideoJob, pts_path
from frames_pipeline.decode._npy import partials
from frames_pipeline.defs.assets import video_frames, video_manifest
from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.defs.resources import FrameDecoderResource, FramesDataResource
from frames_pipeline.defs.schedules import pending_shards_schedule
from frames_pipeline.defs.sensors import manifest_sensor
from frames_pipeline.demo.clips import write_video
from frames_pipeline.storage.manifest import SHARD_SIZE_ENV, shard_keys

T = TypeVar("T")

# Every case of the edge corpus and what a shard run must record for it.
DECODES_WHOLE = [
    "pattern",
    "vfr",
    "cfr_mkv",
    "rotated_90",
    "rotated_270",
    "hevc_10bit",
    "odd_size",
    "yuv444",
    "yuv422",
    "cover_art",
    "av1",
    "mirrored",
    "ts_restart",
    "size_change",
    "missing_pts",
    "edit_list",
    "annexb",
]
DECODES_WITH_WARNINGS = ["truncated", "corrupt"]
FAILS_WITH = {
    "no_moov": Reason.NOT_A_VIDEO,
    "garbage": Reason.NOT_A_VIDEO,
    "empty": Reason.NOT_A_VIDEO,
    "still_image": Reason.NOT_A_VIDEO,
    "audio_only": Reason.NO_VIDEO_STREAM,
    "zero_frames": Reason.ZERO_FRAMES,
    "bomb": Reason.TOO_LARGE,
    "playlist": Reason.REMOTE_INPUT,
    "ffconcat": Reason.REMOTE_INPUT,
    "symlink_out": Reason.OUTSIDE_ALLOWED_ROOTS,
    "missing": Reason.NOT_FOUND,
}


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture(scope="module")
def slow_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About half a second of decoding here: long enough to kill a run or a worker in the middle."""
    return write_video(tmp_path_factory.mktemp("slow") / "slow.mp4", 240, size=(360, 640), preset="ultrafast")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port on 127.0.0.1 that nothing may connect to: hostile inputs point at it."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        yield server


def write_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A ``video_id,path`` CSV; surrogate-escaped paths are written back as their raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video_id", "path"])
        writer.writerows(rows)
    return path


def materialize(
    instance: dg.DagsterInstance, root: Path, key: str, decoder: FrameDecoderResource, **config: Any
) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions(video_shards.name, [key])
    return dg.materialize(
        [video_manifest, video_frames],
        partition_key=key,
        instance=instance,
        resources={"frames_data": FramesDataResource(data_root=str(root)), "frame_decoder": decoder},
        run_config={"ops": {"video_frames": {"config": config}}} if config else None,
        raise_on_error=False,
    )


def all_files(*roots: Path) -> set[Path]:
    return {p for root in roots for p in root.rglob("*") if not p.is_dir()}


def test_every_bad_input_through_one_shard(
    edge_corpus: dict[str, Path], tmp_path: Path, listener: socket.socket, instance: dg.DagsterInstance
) -> None:
    assert set(edge_corpus) == {*DECODES_WHOLE, *DECODES_WITH_WARNINGS, *FAILS_WITH}, "a new corpus case needs a row"
    clips, root, videos = edge_corpus["pattern"].parent, tmp_path / "data", tmp_path / "videos"
    videos.mkdir()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    (videos / "net.m3u8").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{url}/seg0.ts\n#EXT-X-ENDLIST\n")
    (videos / "net_concat.txt").write_text(f"ffconcat version 1.0\nfile '{url}/clip.mp4'\n")
    shutil.copy(videos / "net.m3u8", videos / "playlist_named.mp4")  # the name does not make it a video
    non_utf8 = os.fsdecode(os.fsencode(videos) + b"/caf\xe9\xff.mp4")
    shutil.copy(edge_corpus["pattern"], non_utf8)
    remote = {
        "net_playlist": str(videos / "net.m3u8"),
        "net_concat": str(videos / "net_concat.txt"),
        "playlist_named": str(videos / "playlist_named.mp4"),
        "url": f"{url}/direct.mp4",
    }
    rows = [(case, str(path)) for case, path in edge_corpus.items()]
    rows += [*remote.items(), ("../../x", str(edge_corpus["pattern"])), ("dup", str(edge_corpus["pattern"]))]
    rows += [("dup", str(edge_corpus["vfr"])), ("", non_utf8)]
    write_rows(root / "manifests" / "edge.csv", rows)
    before = all_files(tmp_path, clips.parent)

    decoder = FrameDecoderResource(workers=2, allowed_roots=[str(clips), str(videos)])
    result = materialize(instance, root, "edge-00000", decoder, max_failed_ratio=0.6)

    assert result.success
    shard = root / "frames" / "edge-00000"
    index = {r["video_id"]: r for r in pq.read_table(shard / "index.parquet").to_pylist()}
    assert [r["manifest_row"] for r in index.values()] == list(range(1, len(rows) + 1))
    status = {video_id: (r["status"], r["error_reason"]) for video_id, r in index.items()}
    expected = {case: ("ok", None) for case in [*DECODES_WHOLE, *DECODES_WITH_WARNINGS, "_._x", "dup", "dup~2"]}
    expected |= {case: ("failed", reason.value) for case, reason in FAILS_WITH.items()}
    expected |= {case: ("failed", Reason.REMOTE_INPUT.value) for case in remote}
    expected["caf_"] = ("ok", None)  # the non-UTF-8 file name decodes like any other
    assert status == expected

    for video_id, row in index.items():
        if row["status"] == "failed":
            assert row["error"] and "Traceback" not in row["error"] and row["frames_file"] is None
            continue
        frames = np.load(shard / row["frames_file"])
        assert frames.shape == (row["num_frames"], 27, 48, 3) and frames.dtype == np.uint8
        assert np.load(pts_path(shard / row["frames_file"])).shape == (row["num_frames"],)
        if video_id in DECODES_WITH_WARNINGS:
            assert 0 < row["num_frames"] <= row["expected_frames"] and row["warnings"]
        else:
            assert row["num_frames"] == row["expected_frames"] > 0
    assert [index[v]["num_frames"] for v in ("_._x", "dup", "dup~2", "caf_")] == [30, 30, 40, 30]
    assert index["caf_"]["source"].endswith("caf\\xe9\\xff.mp4")

    # The probe applies the decoder's input rules, with a hint in the index.
    assert index["symlink_out"]["error_reason"] == Reason.OUTSIDE_ALLOWED_ROOTS and index["url"]["hint"]

    ok_ids = [v for v, (s, _) in status.items() if s == "ok"]
    assert {p.name for p in shard.rglob("*.npy")} == {f"{v}{ext}" for v in ok_ids for ext in (".npy", ".pts.npy")}
    assert not [p for p in shard.rglob("*") if p.name.startswith(".")]
    assert len([p for p in shard.iterdir() if p.is_dir()]) == 1  # one version
    assert sorted(p.name for p in (root / "frames").iterdir()) == [".edge-00000.lock", "edge-00000"]
    created = all_files(tmp_path, clips.parent) - before
    assert {p for p in created if not p.is_relative_to(shard)} == {root / "frames" / ".edge-00000.lock"}
    with pytest.raises(BlockingIOError):  # no decoder, probe or demuxer ever dialled out
        listener.accept()


# A shard run as its own process, the way a run worker executes it, against an instance on disk.
_RUN_SHARD = """
import sys
import dagster as dg
from frames_pipeline.defs.assets import video_frames, video_manifest
from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.defs.resources import FrameDecoderResource, FramesDataResource

root, key = sys.argv[1], sys.argv[2]
instance = dg.DagsterInstance.get()
instance.add_dynamic_partitions(video_shards.name, [key])
resources = {
    "frames_data": FramesDataResource(data_root=root),
    "frame_decoder": FrameDecoderResource(workers=1, mode="ffmpeg_cpu"),
}
result = dg.materialize([video_manifest, video_frames], partition_key=key, instance=instance, resources=resources)
print("num_resumed", result.asset_materializations_for_node("video_frames")[0].metadata["num_resumed"].value)
"""


class FolderWatcher(threading.Thread):
    """Samples the frames folder while runs write, recording what no reader may ever see: a
    visible shard with hidden files, or with an index naming a file that is missing or does not
    load whole (one writer at a time here, so no version is deleted under a reader)."""

    def __init__(self, frames: Path, key: str) -> None:
        super().__init__(daemon=True)
        self.frames, self.key = frames, key
        self.samples = 0
        self.problems: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(FileNotFoundError):  # a folder renamed or a file removed mid-sample
                self.problems += self.sample()
                self.samples += 1
            time.sleep(0.01)

    def sample(self) -> list[str]:
        if not self.frames.exists():
            return []
        visible = [p.name for p in self.frames.iterdir() if not p.name.startswith(".")]
        problems = [f"visible {name}" for name in visible if name != self.key]
        published, work = self.frames / self.key, self.frames / f".{self.key}.work"
        if (published / "index.parquet").exists():
            index = pd.read_parquet(published / "index.parquet")
            named = [published / f for f in index["frames_file"].dropna()]
            checked = [(p, self.unloadable(p)) for f in named for p in (f, pts_path(f))]
            problems += [f"{p.name}: {why}" for p, why in checked if why]
            problems += [f"published {p.name}" for p in published.rglob(".*")]
        for path in work.rglob("*.npy") if work.exists() else ():
            with contextlib.suppress(FileNotFoundError):  # renamed into the shard mid-sample
                if why := self.unloadable(path):
                    problems.append(f"{path.name}: {why}")
        return problems

    @staticmethod
    def unloadable(path: Path) -> str | None:
        try:
            np.load(path, mmap_mode="r")  # fails if the header promises more bytes than the file has
        except (OSError, ValueError) as exc:
            return str(exc)
        return None


def child_pids(pid: int) -> set[int]:
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                pids.add(int(stat.parent.name))
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return value


@pytest.mark.slow
def test_killed_run_leaves_nothing_visible_and_the_rerun_resumes(slow_clip: Path, tmp_path: Path) -> None:
    root, home, key = tmp_path / "data", tmp_path / "home", "slow-00000"
    home.mkdir()
    # No pool limit: the slot a killed run holds is freed only by the daemon's run monitoring.
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (root / "videos").mkdir(parents=True)
    for i in range(6):
        shutil.copy(slow_clip, root / "videos" / f"v{i}.mp4")
    write_rows(root / "manifests" / "slow.csv", [(f"v{i}", f"../videos/v{i}.mp4") for i in range(6)])
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    command = [sys.executable, "-c", _RUN_SHARD, str(root), key]
    frames, work = root / "frames", root / "frames" / f".{key}.work"
    watcher = FolderWatcher(frames, key)
    watcher.start()
    try:
        with open(tmp_path / "killed.log", "wb") as log:
            run = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for(lambda: list(work.glob(".done/*.json")) or run.poll() is not None, 240, "a finished video")
                workers = child_pids(run.pid)
                run.send_signal(signal.SIGKILL)
            finally:
                run.kill()
                run.wait()
        assert run.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
        # Orphaned decoders notice their parent is gone and stop writing into the shard.
        wait_for(lambda: not any(map(alive, workers)), 10, "the killed run's workers to exit")
        assert not (frames / key).exists()
        finished = {p.stem: p for p in work.glob(".done/*.json")}
        assert 0 < len(finished) < 6
        before = {v: next(work.glob(f"v-*/{v}.npy")).stat() for v in finished}

        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    finally:
        watcher.stop.set()
        watcher.join()
    assert watcher.samples > 20 and watcher.problems == []
    assert f"num_resumed {len(finished)}" in rerun.stdout
    shard = frames / key
    index = pd.read_parquet(shard / "index.parquet")
    assert index["status"].tolist() == ["ok"] * 6 and index["num_frames"].tolist() == [240] * 6
    arrays = {f"v{i}{ext}" for i in range(6) for ext in (".npy", ".pts.npy")}
    assert {p.name for p in shard.rglob("*.npy")} == arrays
    for video_id, stat in before.items():  # kept, not decoded again
        kept = next(shard.glob(f"v-*/{video_id}.npy")).stat()
        assert (kept.st_ino, kept.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert sorted(p.name for p in frames.iterdir()) == [f".{key}.lock", key]


# A decoder pool in a process of its own, so that the test can kill that process under it.
_POOL_PARENT = """
import sys
from frames_pipeline.decode import DecodeOptions
from frames_pipeline.decode import DecoderPool, VideoJob
pool = DecoderPool(DecodeOptions(mode="ffmpeg_cpu", threads=1), workers=1).start()
print(pool._pool[0].process.pid, flush=True)
list(pool.run([VideoJob("slow", sys.argv[1], sys.argv[2])]))
"""


def test_orphaned_worker_stops_instead_of_finishing_its_video(slow_clip: Path, tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _POOL_PARENT, str(slow_clip), str(tmp_path / "slow.npy")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        wait_for(lambda: partials(tmp_path / "slow.npy"), 60, "the worker to start writing")
        os.kill(worker, signal.SIGSTOP)  # frozen mid-video while its parent dies
    finally:
        parent.kill()
        parent.wait()
    time.sleep(1)  # longer than the worker's watch interval: it looks up as soon as it runs again
    os.kill(worker, signal.SIGCONT)
    wait_for(lambda: not alive(worker), 10, "the orphaned worker to exit")
    assert not (tmp_path / "slow.npy").exists()  # it did not go on to publish the video


def test_shard_held_by_another_run_fails_fast_and_stays_intact(
    edge_corpus: dict[str, Path], tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    root = tmp_path / "data"
    write_rows(root / "manifests" / "busy.csv", [("a", str(edge_corpus["pattern"]))])
    decoder = FrameDecoderResource(workers=1)
    assert materialize(instance, root, "busy-00000", decoder).success
    index = root / "frames" / "busy-00000" / "index.parquet"
    published = index.stat()
    # Another process (a second run of the same shard) holds the shard's lock.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from frames_pipeline.storage.store import FramesStore; from pathlib import Path\n"
            "from frames_pipeline.storage.shard_writer import ShardWriter\n"
            "with ShardWriter(FramesStore(Path(sys.argv[1])), 'busy-00000', resume=True):\n"
            "    print('locked', flush=True); time.sleep(120)",
            str(root),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        result = materialize(instance, root, "busy-00000", decoder)
        assert time.monotonic() - started < 60  # failed at once: no retry waits for the lock
    finally:
        holder.kill()
        holder.wait()
    assert not result.success
    failure = result.failure_data_for_node("video_frames")
    assert failure is not None and "being written by another run" in str(failure.error)
    assert (index.stat().st_ino, index.stat().st_mtime_ns) == (published.st_ino, published.st_mtime_ns)


def test_worker_that_dies_on_every_try_is_recorded_and_the_pool_recovers(
    slow_clip: Path, edge_corpus: dict[str, Path], tmp_path: Path
) -> None:
    killed: list[int] = []
    stop = threading.Event()

    def kill_whoever_decodes_doomed(pool: DecoderPool) -> None:
        # What PyNvVideoCodec does on a CUDA fatal error: the process is gone, mid-video.
        # Once the doomed video's frames are being written: a fixed delay raced with fast decodes.
        while not stop.is_set():
            writing = bool(partials(tmp_path / "doomed.npy"))
            for worker in list(pool._pool) if writing else []:
                if any(job.key == "doomed" for job in worker.jobs) and worker.process.pid not in killed:
                    killed.append(worker.process.pid)
                    os.kill(worker.process.pid, signal.SIGKILL)
            time.sleep(0.002)

    jobs = [
        VideoJob(key, str(path), str(tmp_path / f"{key}.npy"))
        for key, path in [("doomed", slow_clip), ("a", edge_corpus["pattern"]), ("b", edge_corpus["vfr"])]
    ]
    with DecoderPool(DecodeOptions(mode="ffmpeg_cpu"), workers=2, retries=1) as pool:
        killer = threading.Thread(target=kill_whoever_decodes_doomed, args=(pool,), daemon=True)
        killer.start()
        try:
            outcomes = {o.key: o for o in pool.run(jobs)}
        finally:
            stop.set()
            killer.join()
        (after,) = pool.run([VideoJob("after", str(edge_corpus["pattern"]), str(tmp_path / "after.npy"))])
        assert all(worker.process.is_alive() for worker in pool._pool) and len(pool._pool) == 2
    assert len(killed) == 2  # the first try and its retry
    doomed = outcomes["doomed"]
    assert doomed.error_reason == Reason.WORKER_CRASHED and "2 tries" in (doomed.error or "")
    assert outcomes["a"].num_frames == 30 and outcomes["b"].num_frames == 40 and after.ok
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{k}{e}" for k in ("a", "b", "after") for e in (".npy", ".pts.npy")
    )


def test_per_video_timeout_is_a_recorded_reason(slow_clip: Path, edge_corpus: dict[str, Path], tmp_path: Path) -> None:
    options = DecodeOptions(mode="ffmpeg_cpu", timeout_s=0.05)  # the slow clip takes 0.15-0.5 s here
    with DecoderPool(options, workers=1) as pool:
        pid = pool._pool[0].process.pid
        outcomes = {o.key: o for o in pool.run([VideoJob("slow", str(slow_clip), str(tmp_path / "slow.npy"))])}
        assert pool._pool[0].process.pid == pid  # the worker stopped by itself; nothing had to be killed
    assert outcomes["slow"].error_reason == Reason.TIMEOUT and "time limit" in (outcomes["slow"].error or "")
    assert list(tmp_path.iterdir()) == []


# The file size limit makes write() fail with EFBIG part-way through a video, in the workers too
# (they inherit it); Python ignores SIGXFSZ, so the error is an exception, not a killed process.
_FULL_DISK = """
import json, resource, sys
from frames_pipeline.decode import DecodeOptions
from frames_pipeline.decode import DecoderPool, VideoJob
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
big, small, out = sys.argv[1:4]
jobs = [VideoJob("big", big, out + "/big.npy"), VideoJob("small", small, out + "/small.npy")]
with DecoderPool(DecodeOptions(mode="ffmpeg_cpu"), workers=1) as pool:
    print(json.dumps({o.key: o.error_reason for o in pool.run(jobs)}))
"""


def test_write_failure_is_recorded_and_leaves_no_partial_file(
    slow_clip: Path, edge_corpus: dict[str, Path], tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(slow_clip), str(edge_corpus["pattern"]), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert json.loads(done.stdout) == {"big": "write_failed", "small": None}, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.npy", "small.pts.npy"]


def test_disk_full_during_a_shard(
    small_disk: Path, slow_clip: Path, edge_corpus: dict[str, Path], instance: dg.DagsterInstance
) -> None:
    write_rows(small_disk / "manifests" / "full.csv", [("big", str(slow_clip)), ("small", str(edge_corpus["pattern"]))])
    result = materialize(instance, small_disk, "full-00000", FrameDecoderResource(workers=1))
    assert result.success
    shard = small_disk / "frames" / "full-00000"
    index = pd.read_parquet(shard / "index.parquet").set_index("video_id")
    assert index.loc["big", ["status", "error_reason"]].tolist() == ["failed", "write_failed"]
    assert index.loc["small", "status"] == "ok"
    assert {p.name for p in shard.rglob("*.npy")} == {"small.npy", "small.pts.npy"}
    assert not [p for p in small_disk.rglob("*") if "partial" in p.name or ".work" in p.name]


def failed_once_for(result: dg.ExecuteInProcessResult) -> str | None:
    """The description ``video_frames`` failed with, provided it failed once and was not retried."""
    assert not result.success
    retried = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert retried == [], "a step that cannot succeed was retried"
    failure = result.failure_data_for_node("video_frames")
    assert failure is not None and failure.user_failure_data is not None, failure
    return failure.user_failure_data.description


def test_a_full_disk_fails_the_step_at_once_with_the_reason(
    small_disk: Path, edge_corpus: dict[str, Path], instance: dg.DagsterInstance
) -> None:
    write_rows(small_disk / "manifests" / "full.csv", [("a", str(edge_corpus["pattern"]))])
    with contextlib.suppress(OSError), open(small_disk / "filler", "wb", buffering=0) as filler:
        while True:  # until the disk is full
            filler.write(b"\0" * 4096)
    started = time.monotonic()
    result = materialize(instance, small_disk, "full-00000", FrameDecoderResource(workers=1))
    description = failed_once_for(result)
    assert description and description.startswith("shard full-00000 cannot be written: ")
    assert "No space left on device" in description
    assert time.monotonic() - started < 60  # no retry delays
    assert not (small_disk / "frames" / "full-00000").exists()  # nothing published, nothing half-written


def test_a_read_only_frames_folder_fails_the_step_at_once_with_the_reason(
    read_only_folder: Path, edge_corpus: dict[str, Path], tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    root = tmp_path / "data"
    write_rows(root / "manifests" / "ro.csv", [("a", str(edge_corpus["pattern"]))])
    (root / "frames").symlink_to(read_only_folder)
    result = materialize(instance, root, "ro-00000", FrameDecoderResource(workers=1))
    description = failed_once_for(result)
    assert description and description.startswith("shard ro-00000 cannot be written: ")
    assert "Read-only file system" in description or "Permission denied" in description
    assert "make" in description and "writable" in description  # what to do about it


def measured(call: Callable[[], T]) -> tuple[T, float, int]:
    """``call()``'s result, its wall time in seconds, and the peak bytes Python allocated meanwhile."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        value = call()
        return value, time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


MAX_SECONDS, MAX_BYTES = 30.0, 200 * 2**20  # generous for a 2-core machine; quadratic work blows past both


def test_ten_thousand_rows_shard_register_and_schedule_within_bounds(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_rows(tmp_path / "manifests" / "big.csv", [(f"v{i}", f"../videos/v{i}.mp4") for i in range(10_000)])
    monkeypatch.setenv(SHARD_SIZE_ENV, "100")
    resources = {"frames_data": FramesDataResource(data_root=str(tmp_path)), "frame_decoder": FrameDecoderResource()}
    expected = [f"big-{i:05d}" for i in range(100)]

    keys, seconds, peak = measured(lambda: shard_keys(manifest, 100))
    assert keys == expected and seconds < MAX_SECONDS and peak < MAX_BYTES

    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        tick, seconds, peak = measured(lambda: manifest_sensor(context))
    assert isinstance(tick, dg.SensorResult) and seconds < MAX_SECONDS and peak < MAX_BYTES
    assert [r.partition_key for r in tick.run_requests] == expected
    (add,) = tick.dynamic_partitions_requests
    assert isinstance(add, dg.AddDynamicPartitionsRequest) and add.partition_keys == expected
    instance.add_dynamic_partitions(video_shards.name, add.partition_keys)

    with dg.build_schedule_context(instance=instance, resources=resources) as context:
        requests, seconds, peak = measured(lambda: pending_shards_schedule(context))
    assert isinstance(requests, list) and seconds < MAX_SECONDS and peak < MAX_BYTES
    assert [r.partition_key for r in requests] == expected
