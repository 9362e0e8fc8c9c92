"""Shard layout, index writing, atomic publish and the per-shard lock (no videos, no Dagster)."""

from pathlib import Path

import numpy as np
import pytest

from frames_pipeline.store import FramesStore, ShardBusyError, summarize_shards


def record(video_id: str, ok: bool = True, frames: int = 3) -> dict[str, object]:
    return {
        "manifest_row": 1,
        "video_id": video_id,
        "source": f"/videos/{video_id}.mp4",
        "status": "ok" if ok else "failed",
        "num_frames": frames if ok else 0,
        "height": 27 if ok else 0,
        "width": 48 if ok else 0,
        "requested_mode": "auto",
        "decode_mode": "ffmpeg_cpu" if ok else None,
        "error_reason": None if ok else "corrupt",
        "error": None if ok else "bad bitstream",
        "decode_seconds": 0.1,
        "frames_file": f"{video_id}.npy" if ok else None,
    }


def write_version(store: FramesStore, key: str, run_id: str, video_id: str) -> Path:
    with store.open_shard(key, run_id) as shard:
        np.save(shard.frames_path(video_id), np.zeros((3, 27, 48, 3), np.uint8))
        shard.write_index([record(video_id)])
        assert not store.shard_dir(key).joinpath(f"{video_id}.npy").exists()  # invisible until published
        return shard.publish()


def hidden_entries(store: FramesStore) -> list[str]:
    return sorted(p.name for p in store.frames_dir.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


def test_publish_replaces_the_previous_version(tmp_path: Path) -> None:
    store = FramesStore(tmp_path)
    assert store.read_index("s-00000") is None
    assert write_version(store, "s-00000", "run1", "first") == store.shard_dir("s-00000")
    write_version(store, "s-00000", "run2", "second")
    assert sorted(p.name for p in store.shard_dir("s-00000").iterdir()) == ["index.parquet", "second.npy"]
    index = store.read_index("s-00000")
    assert index is not None and index["video_id"].tolist() == ["second"]
    assert hidden_entries(store) == []


def test_unpublished_version_leaves_nothing(tmp_path: Path) -> None:
    store = FramesStore(tmp_path)
    write_version(store, "s-00000", "run1", "kept")
    with pytest.raises(RuntimeError), store.open_shard("s-00000", "run2") as shard:
        np.save(shard.frames_path("half"), np.zeros((1, 27, 48, 3), np.uint8))
        raise RuntimeError("decoder blew up")
    assert sorted(p.name for p in store.shard_dir("s-00000").iterdir()) == ["index.parquet", "kept.npy"]
    assert hidden_entries(store) == []


def test_one_writer_per_shard(tmp_path: Path) -> None:
    store = FramesStore(tmp_path)
    with store.open_shard("s-00000", "run1"):
        with pytest.raises(ShardBusyError):
            store.open_shard("s-00000", "run2")
        store.open_shard("s-00001", "run3").close()  # other shards are independent
    store.open_shard("s-00000", "run4").close()  # released on close


def test_recovers_from_a_crash_between_the_two_renames(tmp_path: Path) -> None:
    store = FramesStore(tmp_path)
    published = write_version(store, "s-00000", "run1", "good")
    published.rename(store.frames_dir / ".s-00000.old-run2")  # moved aside, then the writer died
    (store.frames_dir / ".s-00000.tmp-run2").mkdir()
    store.open_shard("s-00000", "run3").close()
    assert (store.shard_dir("s-00000") / "good.npy").is_file()
    assert hidden_entries(store) == []


def test_unsafe_keys_are_refused(tmp_path: Path) -> None:
    for key in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            FramesStore(tmp_path).open_shard(key, "run")


def test_summarize_shards(tmp_path: Path) -> None:
    store = FramesStore(tmp_path)
    with store.open_shard("s-00000", "run1") as shard:
        shard.write_index([record("a"), record("b", frames=5), record("c", ok=False)])
        shard.publish()
    table = summarize_shards(store, ["s-00000", "s-00001"])
    assert table.to_dict("records") == [
        {
            "shard": "s-00000",
            "published": True,
            "videos": 3,
            "ok": 2,
            "failed": 1,
            "frames": 8,
            "decode_modes": {"ffmpeg_cpu": 2},
            "failures": {"corrupt": 1},
        },
        {
            "shard": "s-00001",
            "published": False,
            "videos": 0,
            "ok": 0,
            "failed": 0,
            "frames": 0,
            "decode_modes": {},
            "failures": {},
        },
    ]
