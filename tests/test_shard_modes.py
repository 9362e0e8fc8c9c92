"""Every decode mode through the real shard_job on a mixed shard, and a GPU worker killed mid-video.

The ``ffmpeg_cpu`` cases run everywhere (they are the reference and keep this harness honest); the
GPU cases carry the ``gpu`` marker and run on a host with NVDEC.
"""

from __future__ import annotations

import csv
import os
import signal
import threading
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from frames_pipeline.decode import DecodeOptions, DecoderPool
from frames_pipeline.decode._npy import partials
from frames_pipeline.definitions import defs
from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.demo.clips import write_video
from frames_pipeline.shards import ShardInputs, decode_shard
from frames_pipeline.storage.manifest import ManifestRow
from frames_pipeline.storage.store import FramesStore

# What a shard of these tests is cut from and decoded with (shards.ShardInputs).
INPUTS = ShardInputs("manifest-hash", 100, DecodeOptions(mode="ffmpeg_cpu"), max_failed_ratio=0.5)

MAX_MAD = 4.0
CLEAN = ("h264", "hevc", "hevc_10bit", "vfr", "rotated_90")
MODES = [
    pytest.param("ffmpeg_cpu", id="ffmpeg_cpu"),
    pytest.param("pynvc", marks=pytest.mark.gpu, id="pynvc"),
    pytest.param("ffmpeg_gpu", marks=pytest.mark.gpu, id="ffmpeg_gpu"),
]


@pytest.fixture(scope="module")
def mixed(edge_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One shard of what a real manifest holds: clean clips of every kind, one NVDEC cannot take, bad files."""
    folder = tmp_path_factory.mktemp("mixed")
    return {
        "h264": edge_corpus["pattern"],
        "hevc": write_video(folder / "hevc.mp4", 30, codec="libx265"),
        "hevc_10bit": edge_corpus["hevc_10bit"],
        "vfr": edge_corpus["vfr"],
        "rotated_90": edge_corpus["rotated_90"],
        "yuv444": edge_corpus["yuv444"],  # H.264 4:4:4: NVDEC refuses it, the video falls back to CPU
        "truncated": edge_corpus["truncated"],
        "garbage": edge_corpus["garbage"],
        "missing": edge_corpus["missing"],
    }


def run_shard_job(mode: str, clips: dict[str, Path], root: Path) -> tuple[dg.ExecuteInProcessResult, FramesStore]:
    manifest = root / "manifests" / "mixed.csv"
    manifest.parent.mkdir(parents=True)
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([("video_id", "path"), *((name, str(path)) for name, path in clips.items())])
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(video_shards.name, ["mixed-00000"])
        resources = {
            "frames_data": {"config": {"data_root": str(root)}},
            "frame_decoder": {"config": {"mode": mode, "workers": 2}},
        }
        result = defs.resolve_job_def("shard_job").execute_in_process(
            run_config={"resources": resources}, partition_key="mixed-00000", instance=instance, raise_on_error=False
        )
    return result, FramesStore(root)


@pytest.fixture(scope="module")
def reference(mixed: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> FramesStore:
    result, store = run_shard_job("ffmpeg_cpu", mixed, tmp_path_factory.mktemp("reference"))
    assert result.success
    return store


@pytest.mark.parametrize("mode", MODES)
def test_a_mixed_shard_decodes_in_every_mode_like_the_cpu(
    mode: str, mixed: dict[str, Path], reference: FramesStore, tmp_path: Path
) -> None:
    result, store = run_shard_job(mode, mixed, tmp_path)
    assert result.success
    index = store.read_index("mixed-00000").set_index("video_id")
    expected = reference.read_index("mixed-00000").set_index("video_id")
    assert (index["num_frames"] == expected["num_frames"]).all()
    assert (index["status"] == expected["status"]).all()
    for name in CLEAN:
        assert index.loc[name, "decode_mode"] == mode, index.loc[name, "fallback_reason"]
        frames, pts = store.read_frames("mixed-00000", name)
        cpu_frames, cpu_pts = reference.read_frames("mixed-00000", name)
        assert np.abs(frames.astype(np.int16) - cpu_frames).mean() <= MAX_MAD
        np.testing.assert_allclose(pts, cpu_pts, atol=1e-3)
    if mode != "ffmpeg_cpu":
        assert index.loc["yuv444", "decode_mode"] == "ffmpeg_cpu" and index.loc["yuv444", "fallback_reason"]
    for name, reason in [("garbage", "not_a_video"), ("missing", "not_found")]:
        assert index.loc[name, "error_reason"] == reason and index.loc[name, "hint"]
    assert index.loc["truncated", "status"] == "ok" and list(index.loc["truncated", "warnings"])
    metadata = result.asset_materializations_for_node("video_frames")[0].metadata
    assert metadata["pool_mode"].value == mode
    assert metadata["first_frame_s"].value > 0


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("long") / "long.mp4", 900, size=(360, 640), preset="ultrafast")


def kill_when_writing(pool: DecoderPool, folder: Path, video_id: str, killed: list[int]) -> threading.Thread:
    """SIGKILL the worker decoding ``video_id`` once its frames are being written (mid-video)."""

    def act() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            writing = any(partials(version / f"{video_id}.npy") for version in folder.rglob("v-*"))
            for worker in list(pool._pool) if writing else []:
                if any(job.key == video_id for job in worker.jobs):
                    killed.append(worker.process.pid)
                    os.kill(worker.process.pid, signal.SIGKILL)
            time.sleep(0.002)

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("mode", MODES)
def test_a_worker_killed_mid_video_is_replaced_and_the_shard_completes(
    mode: str, long_clip: Path, mixed: dict[str, Path], tmp_path: Path
) -> None:
    store = FramesStore(tmp_path)
    rows = [ManifestRow(1, "long", str(long_clip), {}), ManifestRow(2, "h264", str(mixed["h264"]), {})]
    killed: list[int] = []
    with DecoderPool(DecodeOptions(mode=mode), workers=2) as pool:
        killer = kill_when_writing(pool, tmp_path / "frames", "long", killed)
        report = decode_shard(store, "k-00000", rows, pool.run, inputs=INPUTS)
        killer.join()
        alive = [w.process.is_alive() for w in pool._pool]
    assert killed and all(alive) and report.published
    long_row = report.records[0]
    assert long_row["status"] == "ok" and long_row["num_frames"] == 900
    assert "worker died" in long_row["fallback_reason"]
    if mode != "ffmpeg_cpu":
        assert long_row["decode_mode"] == "ffmpeg_cpu"  # the retry of a GPU video runs on CPU
