"""Shard layout, index writing, atomic publish and the per-shard lock (no videos, no Dagster), on a
local folder and on S3 (a moto server on 127.0.0.1)."""

import posixpath
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from frames_pipeline.decode import pts_path
from frames_pipeline.storage import shard_writer
from frames_pipeline.storage.locations import Location
from frames_pipeline.storage.shard_writer import ShardBusyError, ShardWriter
from frames_pipeline.storage.status import PENDING, PUBLISHED, ShardState
from frames_pipeline.storage.store import FramesStore, published_versions
from frames_pipeline.storage.summary import summarize_shards

CUT = {"manifest_hash": "m", "shard_size": 100}  # what write_index records the rows were cut from


def record(video_id: str, ok: bool = True, frames: int = 3, version: str = "v") -> dict[str, object]:
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
        "decode_s": 0.1,
        "frames_file": f"{version}/{video_id}.npy" if ok else None,
    }


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FramesStore:
    """The same store contract on a local folder and on an S3 bucket."""
    return FramesStore(tmp_path / "data" if request.param == "local" else request.getfixturevalue("s3_root"))


def shard_files(store: FramesStore, key: str) -> list[str]:
    """Every file under the shard folder, relative to it."""
    shard = Location.of(store.shard_dir(key))
    return sorted(posixpath.relpath(p, shard.path) for p in shard.fs.find(shard.path))


def write_version(store: FramesStore, key: str, *video_ids: str, failed: Sequence[str] = ()) -> str:
    """Publish a version with ``video_ids`` decoded and ``failed`` failed; returns its version name."""
    with ShardWriter(store, key) as shard:
        for video_id in video_ids:
            np.save(shard.frames_path(video_id), np.full((3, 27, 48, 3), len(video_id), np.uint8))
            np.save(pts_path(shard.frames_path(video_id)), np.arange(3, dtype=np.float64))
        shard.write_file("contact_sheet.png", b"png")
        shard.write_index(
            [record(v, version=shard.version) for v in video_ids] + [record(v, ok=False) for v in failed], **CUT
        )
        assert not [f for f in shard_files(store, key) if shard.version in f]  # invisible until published
        assert shard.publish() == store.shard_dir(key)
        return shard.version


@pytest.fixture
def no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replaced versions last only until the next publish, as if their grace had passed."""
    monkeypatch.setattr(shard_writer, "REPLACED_VERSION_GRACE", timedelta(0))


def version_files(version: str, *video_ids: str) -> list[str]:
    names = [f"{v}{ext}" for v in video_ids for ext in (".npy", ".pts.npy")] + ["contact_sheet.png"]
    return sorted(f"{version}/{name}" for name in names)


def hidden_entries(store: FramesStore) -> list[str]:
    return sorted(
        p.name for p in store.staging_dir.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")
    )


def test_publish_replaces_the_previous_version(store: FramesStore) -> None:
    assert store.read_index("s-00000") is None and not store.has_index("s-00000")
    first = write_version(store, "s-00000", "first")
    assert shard_files(store, "s-00000") == ["index.parquet", *version_files(first, "first")]
    second = write_version(store, "s-00000", "second", failed=["broken"])
    # The first version stays readable for readers of the old index (its grace period).
    expected = ["index.parquet", *version_files(first, "first"), *version_files(second, "second")]
    assert shard_files(store, "s-00000") == sorted(expected)
    index = store.read_index("s-00000")
    assert index is not None and index["video_id"].tolist() == ["second", "broken"]
    assert index["frames_file"].iloc[0] == f"{second}/second.npy" and index["frames_file"].isna().iloc[1]
    frames, pts = store.read_frames("s-00000", "second")
    assert frames.shape == (3, 27, 48, 3) and (frames == 6).all() and pts.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="corrupt: bad bitstream"):
        store.read_frames("s-00000", "broken")
    with pytest.raises(KeyError):
        store.read_frames("s-00000", "first")
    with pytest.raises(FileNotFoundError):
        store.read_frames("s-00001", "second")
    assert hidden_entries(store) == []


def test_replaced_versions_stay_for_the_grace_period(store: FramesStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def versions() -> set[str]:
        return {name.split("/")[0] for name in shard_files(store, "s-00000") if "/" in name}

    first = write_version(store, "s-00000", "a")
    second = write_version(store, "s-00000", "b")
    published = published_versions(store, "s-00000")
    assert published.version == second and set(published.replaced) == {first} and versions() == {first, second}
    third = write_version(store, "s-00000", "c")
    assert versions() == {first, second, third}  # both still within their day
    assert set(published_versions(store, "s-00000").replaced) == {first, second}
    monkeypatch.setattr(shard_writer, "REPLACED_VERSION_GRACE", timedelta(0))
    fourth = write_version(store, "s-00000", "d")
    assert versions() == {third, fourth}  # the one just replaced starts its grace now
    assert set(published_versions(store, "s-00000").replaced) == {third}


def test_a_version_with_only_failed_videos_is_replaced_too(store: FramesStore) -> None:
    first = write_version(store, "s-00000", failed=["a"])
    assert shard_files(store, "s-00000") == ["index.parquet", f"{first}/contact_sheet.png"]
    second = write_version(store, "s-00000", "b")
    expected = ["index.parquet", f"{first}/contact_sheet.png", *version_files(second, "b")]
    assert shard_files(store, "s-00000") == sorted(expected)
    assert published_versions(store, "s-00000").replaced.keys() == {first}


def test_unpublished_version_leaves_nothing(store: FramesStore) -> None:
    kept = write_version(store, "s-00000", "kept")
    with pytest.raises(RuntimeError), ShardWriter(store, "s-00000") as shard:
        np.save(shard.frames_path("half"), np.zeros((1, 27, 48, 3), np.uint8))
        raise RuntimeError("decoder blew up")
    assert shard_files(store, "s-00000") == ["index.parquet", *version_files(kept, "kept")]
    assert hidden_entries(store) == []


def test_one_writer_per_shard(store: FramesStore) -> None:
    with ShardWriter(store, "s-00000"):
        with pytest.raises(ShardBusyError):
            ShardWriter(store, "s-00000")
        ShardWriter(store, "s-00001").close()  # other shards are independent
    ShardWriter(store, "s-00000").close()  # released on close


@pytest.mark.usefixtures("no_grace")
def test_a_writer_killed_before_its_index_changes_nothing_readers_see(store: FramesStore) -> None:
    published = write_version(store, "s-00000", "good")
    shard = Location.of(store.shard_dir("s-00000"))
    # What a writer killed between moving (or uploading) its version and writing the index leaves:
    dead = "v-20200101T000000000000-0badc0de"
    shard.fs.makedirs(shard.child(dead).path, exist_ok=True)
    shard.fs.pipe_file(shard.child(dead, "half.npy").path, b"half")
    assert store.read_index("s-00000")["video_id"].tolist() == ["good"]
    # A live writer's fresh upload on another machine, which only a local root's lock rules out:
    live = "v-29990101T000000000000-0000beef"
    shard.fs.makedirs(shard.child(live).path, exist_ok=True)
    shard.fs.pipe_file(shard.child(live, "x.npy").path, b"uploading")
    latest = write_version(store, "s-00000", "next")
    # The replaced version starts its grace; the dead writer's folder goes, a live upload stays.
    expected = ["index.parquet", *version_files(published, "good"), *version_files(latest, "next")]
    assert shard_files(store, "s-00000") == sorted(expected if shard.is_local else [*expected, f"{live}/x.npy"])
    assert dead not in " ".join(shard_files(store, "s-00000"))


def test_an_incomplete_upload_is_not_published(s3_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FramesStore(s3_root)
    kept = write_version(store, "s-00000", "kept")
    fs = store.location.fs
    real_put = fs.put
    monkeypatch.setattr(fs, "put", lambda lpaths, rpaths, **kw: real_put(lpaths[:-1], rpaths[:-1], **kw))
    with pytest.raises(OSError, match="incomplete"):
        write_version(store, "s-00000", "lost")
    monkeypatch.undo()
    assert store.read_index("s-00000")["video_id"].tolist() == ["kept"]
    assert store.read_frames("s-00000", "kept")[0].shape == (3, 27, 48, 3)
    assert f"{kept}/kept.npy" in shard_files(store, "s-00000")


def test_write_file_replaces_whole_files(store: FramesStore) -> None:
    target = Location.of(store.write_file("frames/summary.png", b"one"))
    store.write_file("frames/summary.png", b"two")
    assert target.fs.cat_file(target.path) == b"two"
    assert [p for p in target.parent().fs.ls(target.parent().path, detail=False) if "partial" in p] == []


def test_unsafe_keys_are_refused(tmp_path: Path) -> None:
    for key in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            ShardWriter(FramesStore(tmp_path), key)


def test_summarize_shards(store: FramesStore) -> None:
    with ShardWriter(store, "s-00000") as shard:
        shard.write_index([record("a"), record("b", frames=5), record("c", ok=False)], **CUT)
        shard.publish()
    states = [ShardState("s-00000", PUBLISHED, "current"), ShardState("s-00001", PENDING, "never published")]
    table = summarize_shards(store, states)
    assert table.to_dict("records") == [
        {
            "shard": "s-00000",
            "state": PUBLISHED,
            "detail": "current",
            "videos": 3,
            "ok": 2,
            "failed": 1,
            "frames": 8,
            "decode_modes": {"ffmpeg_cpu": 2},
            "failures": {"corrupt": 1},
        },
        {
            "shard": "s-00001",
            "state": PENDING,
            "detail": "never published",
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
    np.save(pts_path(shard.frames_path(video_id)), np.arange(frames, dtype=np.float64))
    shard.mark_finished(video_id, str(source), {"num_frames": frames, "video_id": video_id})


def test_resume_keeps_exactly_the_finished_videos_with_unchanged_sources(store: FramesStore, tmp_path: Path) -> None:
    sources = {name: tmp_path / f"{name}.mp4" for name in ("a", "b", "c", "gone")}
    for path in sources.values():
        path.write_bytes(b"video")
    with ShardWriter(store, "s-00000", resume=True) as shard:  # a run that never publishes
        for name in ("a", "b", "gone"):
            finish(shard, name, sources[name])
        np.save(shard.frames_path("c"), np.zeros((1, 27, 48, 3), np.uint8))  # killed before its marker
        (shard.version_dir / ".c.npy.123.partial").write_bytes(b"half")
        a_inode = shard.frames_path("a").stat().st_ino
    assert not store.has_index("s-00000") and shard_files(store, "s-00000") == []
    sources["b"].write_bytes(b"video, edited")

    wanted = {name: str(sources[name]) for name in ("a", "b", "c")}  # "gone" left the manifest
    with ShardWriter(store, "s-00000", resume=True) as shard:
        assert shard.resume_finished(wanted, (27, 48)) == {"a": {"num_frames": 3, "video_id": "a"}}
        assert sorted(p.name for p in shard.dir.iterdir()) == [".done", shard.version]
        assert sorted(p.name for p in shard.version_dir.iterdir()) == ["a.npy", "a.pts.npy"]
        assert sorted(p.name for p in (shard.dir / ".done").iterdir()) == ["a.json"]
        assert shard.frames_path("a").stat().st_ino == a_inode  # kept, not rewritten
        shard.write_index([record("a", version=shard.version)], **CUT)
        shard.publish()
        version = shard.version
    assert shard_files(store, "s-00000") == ["index.parquet", f"{version}/a.npy", f"{version}/a.pts.npy"]
    assert store.read_frames("s-00000", "a")[0].shape == (3, 27, 48, 3)
    assert hidden_entries(store) == []


def test_resume_checks_the_arrays_behind_each_marker(tmp_path: Path) -> None:
    store = FramesStore(tmp_path)
    sources = {name: tmp_path / f"{name}.mp4" for name in ("a", "b")}
    for path in sources.values():
        path.write_bytes(b"video")
    with ShardWriter(store, "s-00000", resume=True) as shard:
        finish(shard, "a", sources["a"])
        finish(shard, "b", sources["b"])
        pts_path(shard.frames_path("b")).unlink()
    wanted = {name: str(path) for name, path in sources.items()}
    with ShardWriter(store, "s-00000", resume=True) as shard:
        assert list(shard.resume_finished(wanted, (27, 48))) == ["a"]
    with ShardWriter(store, "s-00000", resume=True) as shard:
        assert shard.resume_finished(wanted, (18, 32)) == {}  # another output size
        assert sorted(p.name for p in shard.dir.iterdir()) == [".done", shard.version]
        assert list(shard.version_dir.iterdir()) == []


def test_without_resume_earlier_work_is_dropped(tmp_path: Path) -> None:
    store = FramesStore(tmp_path)
    source = tmp_path / "a.mp4"
    source.write_bytes(b"video")
    with ShardWriter(store, "s-00000", resume=True) as shard:
        finish(shard, "a", source)
    with ShardWriter(store, "s-00000") as shard:
        assert shard.resume_finished({"a": str(source)}, (27, 48)) == {}
        assert list(shard.version_dir.iterdir()) == []
    assert hidden_entries(store) == []


def test_a_long_lived_store_sees_what_other_processes_publish(s3_root: str) -> None:
    """The sensor and the schedule keep one store for hours: nothing they read may come from a cache."""
    import fsspec

    watcher = FramesStore(s3_root)
    assert not watcher.has_index("s-00000") and watcher.read_index("s-00000") is None
    elsewhere = FramesStore(s3_root)  # another process: its own filesystem, no shared cache
    object.__setattr__(
        elsewhere, "location", Location(fsspec.filesystem("s3", skip_instance_cache=True), watcher.location.path)
    )
    write_version(elsewhere, "s-00000", "a")
    assert watcher.has_index("s-00000")
    assert watcher.read_index("s-00000")["video_id"].tolist() == ["a"]
    write_version(elsewhere, "s-00000", "longer-name", "b")  # a bigger index replaces it
    assert watcher.read_index("s-00000")["video_id"].tolist() == ["longer-name", "b"]
    assert watcher.read_frames("s-00000", "b")[0].shape == (3, 27, 48, 3)
