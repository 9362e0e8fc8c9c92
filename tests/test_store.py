"""Shard layout, index writing, atomic publish and the per-shard lock (no videos, no Dagster)."""

from pathlib import Path

import numpy as np
import pytest

from frames_pipeline.store import FramesStore, ShardBusyError, ShardWriter, summarize_shards


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


def write_version(store: FramesStore, key: str, video_id: str) -> Path:
    with store.open_shard(key) as shard:
        np.save(shard.frames_path(video_id), np.zeros((3, 27, 48, 3), np.uint8))
        shard.write_index([record(video_id)])
        assert not store.shard_dir(key).joinpath(f"{video_id}.npy").exists()  # invisible until published
        return shard.publish()


def hidden_entries(store: FramesStore) -> list[str]:
    return sorted(p.name for p in store.frames_dir.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


def test_publish_replaces_the_previous_version(tmp_path: Path) -> None:
    store = FramesStore(tmp_path)
    assert store.read_index("s-00000") is None
    assert write_version(store, "s-00000", "first") == store.shard_dir("s-00000")
    write_version(store, "s-00000", "second")
    assert sorted(p.name for p in store.shard_dir("s-00000").iterdir()) == ["index.parquet", "second.npy"]
    index = store.read_index("s-00000")
    assert index is not None and index["video_id"].tolist() == ["second"]
    assert hidden_entries(store) == []


def test_unpublished_version_leaves_nothing(tmp_path: Path) -> None:
    store = FramesStore(tmp_path)
    write_version(store, "s-00000", "kept")
    with pytest.raises(RuntimeError), store.open_shard("s-00000") as shard:
        np.save(shard.frames_path("half"), np.zeros((1, 27, 48, 3), np.uint8))
        raise RuntimeError("decoder blew up")
    assert sorted(p.name for p in store.shard_dir("s-00000").iterdir()) == ["index.parquet", "kept.npy"]
    assert hidden_entries(store) == []


def test_one_writer_per_shard(tmp_path: Path) -> None:
    store = FramesStore(tmp_path)
    with store.open_shard("s-00000"):
        with pytest.raises(ShardBusyError):
            store.open_shard("s-00000")
        store.open_shard("s-00001").close()  # other shards are independent
    store.open_shard("s-00000").close()  # released on close


def test_recovers_from_a_crash_between_the_two_renames(tmp_path: Path) -> None:
    store = FramesStore(tmp_path)
    published = write_version(store, "s-00000", "good")
    published.rename(store.frames_dir / ".s-00000.old")  # moved aside, then the writer died
    (store.frames_dir / ".s-00000.work").mkdir()
    store.open_shard("s-00000").close()
    assert (store.shard_dir("s-00000") / "good.npy").is_file()
    assert hidden_entries(store) == []


def test_unsafe_keys_are_refused(tmp_path: Path) -> None:
    for key in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            FramesStore(tmp_path).open_shard(key)


def test_summarize_shards(tmp_path: Path) -> None:
    store = FramesStore(tmp_path)
    with store.open_shard("s-00000") as shard:
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


def finish(shard: ShardWriter, video_id: str, source: Path, frames: int = 3) -> None:
    """What a decode leaves for one video: its two arrays, then its marker."""
    np.save(shard.frames_path(video_id), np.zeros((frames, 27, 48, 3), np.uint8))
    np.save(shard.dir / f"{video_id}.pts.npy", np.arange(frames, dtype=np.float64))
    shard.mark_finished(video_id, str(source), {"num_frames": frames, "video_id": video_id})


def test_resume_keeps_exactly_the_finished_videos_with_unchanged_sources(tmp_path: Path) -> None:
    store = FramesStore(tmp_path)
    sources = {name: tmp_path / f"{name}.mp4" for name in ("a", "b", "c", "gone")}
    for path in sources.values():
        path.write_bytes(b"video")
    with store.open_shard("s-00000", resume=True) as shard:  # a run that never publishes
        for name in ("a", "b", "gone"):
            finish(shard, name, sources[name])
        np.save(shard.frames_path("c"), np.zeros((1, 27, 48, 3), np.uint8))  # killed before its marker
        (shard.dir / ".c.npy.123.partial").write_bytes(b"half")
        a_inode = shard.frames_path("a").stat().st_ino
    assert not store.shard_dir("s-00000").exists()
    sources["b"].write_bytes(b"video, edited")

    wanted = {name: str(sources[name]) for name in ("a", "b", "c")}  # "gone" left the manifest
    with store.open_shard("s-00000", resume=True) as shard:
        assert shard.resume_finished(wanted, (27, 48)) == {"a": {"num_frames": 3, "video_id": "a"}}
        assert sorted(p.name for p in shard.dir.iterdir()) == [".done", "a.npy", "a.pts.npy"]
        assert sorted(p.name for p in (shard.dir / ".done").iterdir()) == ["a.json"]
        assert shard.frames_path("a").stat().st_ino == a_inode  # kept, not rewritten
        shard.write_index([record("a")])
        published = shard.publish()
    assert sorted(p.name for p in published.iterdir()) == ["a.npy", "a.pts.npy", "index.parquet"]
    assert hidden_entries(store) == []


def test_resume_checks_the_arrays_behind_each_marker(tmp_path: Path) -> None:
    store = FramesStore(tmp_path)
    sources = {name: tmp_path / f"{name}.mp4" for name in ("a", "b")}
    for path in sources.values():
        path.write_bytes(b"video")
    with store.open_shard("s-00000", resume=True) as shard:
        finish(shard, "a", sources["a"])
        finish(shard, "b", sources["b"])
        (shard.dir / "b.pts.npy").unlink()
    wanted = {name: str(path) for name, path in sources.items()}
    with store.open_shard("s-00000", resume=True) as shard:
        assert list(shard.resume_finished(wanted, (27, 48))) == ["a"]
    with store.open_shard("s-00000", resume=True) as shard:
        assert shard.resume_finished(wanted, (18, 32)) == {}  # another output size
        assert sorted(p.name for p in shard.dir.iterdir()) == [".done"]


def test_without_resume_earlier_work_is_dropped(tmp_path: Path) -> None:
    store = FramesStore(tmp_path)
    source = tmp_path / "a.mp4"
    source.write_bytes(b"video")
    with store.open_shard("s-00000", resume=True) as shard:
        finish(shard, "a", source)
    with store.open_shard("s-00000") as shard:
        assert shard.resume_finished({"a": str(source)}, (27, 48)) == {}
        assert sorted(p.name for p in shard.dir.iterdir()) == [".done"]
    assert hidden_entries(store) == []
