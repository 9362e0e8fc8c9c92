"""The code location on real tiny videos: shard runs, checks, sensor, schedule and summary."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from frames_pipeline.definitions import defs
from frames_pipeline.defs.assets import frames_summary, video_frames, video_manifest
from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.defs.resources import FrameDecoderResource, FramesDataResource
from frames_pipeline.defs.schedules import pending_shards_schedule
from frames_pipeline.defs.sensors import manifest_sensor
from frames_pipeline.demo.clips import write_video
from frames_pipeline.storage.locations import Location
from frames_pipeline.storage.manifest import file_hash
from frames_pipeline.storage.store import FramesStore

CLIPS = {"v0": 6, "v1": 7, "v2": 8, "v3": 5}  # name -> frame count
SHARD_SIZE = 2


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """Four tiny H.264 clips, one garbage file, and ``manifests/clips.csv`` listing v0, v1, v2, bad."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name, frames in CLIPS.items():
        write_video(videos / f"{name}.mp4", frames, size=(32, 48))
    (videos / "bad.mp4").write_bytes(b"\x00not a video" * 64)
    write_manifest(tmp_path, "clips", ["v0.mp4", "v1.mp4", "v2.mp4", "bad.mp4"])
    return tmp_path


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def write_manifest(root: Path, stem: str, files: list[str]) -> Path:
    path = root / "manifests" / f"{stem}.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text("path,label\n" + "".join(f"../videos/{f},{i}\n" for i, f in enumerate(files)))
    return path


def resources(root: Path | str) -> dict[str, dg.ConfigurableResource]:
    return {
        "frames_data": FramesDataResource(data_root=str(root), shard_size=SHARD_SIZE),
        "frame_decoder": FrameDecoderResource(workers=1, mode="auto"),
    }


def run_shard(instance: dg.DagsterInstance, root: Path | str, key: str) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions(video_shards.name, [key])
    return dg.materialize(
        [video_manifest, video_frames],
        partition_key=key,
        instance=instance,
        resources=resources(root),
        raise_on_error=False,
    )


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "video_manifest",
        "video_frames",
        "frames_summary",
    }
    frames = defs.resolve_assets_def("video_frames")
    assert frames.partitions_def == video_shards
    assert frames.op.pool == "gpu"
    assert frames.op.retry_policy is not None
    specs = {spec.name: spec.blocking for spec in frames.check_specs}
    assert specs == {"frame_counts_match_probe": False, "arrays_well_formed": True, "failed_ratio": True}
    assert set(defs.resources) == {"frame_decoder", "frames_data"}
    assert defs.resolve_sensor_def("manifest_sensor")
    assert defs.resolve_schedule_def("pending_shards_schedule").cron_schedule == "0 * * * *"


def test_dg_loads_the_project_from_its_defs_folder() -> None:
    """`dg check defs` and `dg list defs` (what `dg dev` loads) see the same definitions."""
    dg_cli = Path(sys.executable).with_name("dg")
    repo = Path(__file__).resolve().parents[1]
    checked = subprocess.run([dg_cli, "check", "defs"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0 and "All definitions loaded successfully" in checked.stdout, checked.stderr
    listed = subprocess.run(
        [dg_cli, "list", "defs", "--json"], cwd=repo, capture_output=True, text=True, timeout=300, check=True
    )
    for name in ("video_manifest", "video_frames", "frames_summary", "shard_job", "manifest_sensor"):
        assert name in listed.stdout


def test_shard_run_writes_frames_index_and_metadata(data_root: Path, instance: dg.DagsterInstance) -> None:
    result = run_shard(instance, data_root, "clips-00001")  # v2 and the garbage file
    assert result.success
    assert check_results(result) == {"frame_counts_match_probe": True, "arrays_well_formed": True, "failed_ratio": True}

    shard = data_root / "frames" / "clips-00001"
    index = pd.read_parquet(shard / "index.parquet").set_index("video_id")
    version = index.loc["v2", "frames_file"].split("/")[0]
    assert sorted(str(p.relative_to(shard)) for p in shard.rglob("*") if p.is_file()) == [
        "index.parquet",
        *(f"{version}/{name}" for name in ("contact_sheet.png", "v2.npy", "v2.pts.npy")),
    ]
    frames, pts = FramesStore(data_root).read_frames("clips-00001", "v2")
    assert frames.shape == (CLIPS["v2"], 27, 48, 3) and frames.dtype == np.uint8
    assert pts.shape == (CLIPS["v2"],)
    assert sorted(p.name for p in (data_root / "frames").iterdir()) == [".clips-00001.lock", "clips-00001"]

    assert index.loc["v2", ["status", "num_frames", "expected_frames", "height", "width"]].tolist() == [
        "ok",
        CLIPS["v2"],
        CLIPS["v2"],
        27,
        48,
    ]
    assert index.loc["v2", "decode_mode"] in ("pynvc", "ffmpeg_gpu", "ffmpeg_cpu")
    assert index.loc["bad", "status"] == "failed"
    assert index.loc["bad", "error_reason"] in ("not_a_video", "corrupt")
    assert index.loc["bad", "error"]
    assert index["manifest_row"].tolist() == [3, 4]

    manifest = result.output_for_node("video_manifest")
    assert [row.extra["label"] for row in manifest.rows] == ["2", "3"]  # extra columns carried through
    # One probe per video, in the decoder's worker: its findings are index columns.
    assert index.loc["v2", ["codec", "source_height", "source_width", "vfr", "rotation"]].tolist() == [
        "h264",
        32,
        48,
        False,
        0,
    ]
    assert pd.isna(index.loc["bad", "codec"])

    metadata = result.asset_materializations_for_node("video_frames")[0].metadata
    values = {k: v.value for k, v in metadata.items()}
    assert (values["num_videos"], values["num_ok"], values["num_failed"]) == (2, 1, 1)
    assert values["frame_count"] == CLIPS["v2"]
    assert isinstance(values["frame_count"], int) and isinstance(values["decode_fps"], float)
    assert sum(values["decode_mode"].values()) == 1
    assert values["output_hw"] == [27, 48]
    assert values["path"] == str(shard)
    assert values["manifest_hash"] == file_hash(data_root / "manifests" / "clips.csv")
    assert len(values["videos"].records) == 2
    assert values["preview"].startswith("![clips-00001](data:image/png;base64,")


def test_shard_run_on_object_storage(
    data_root: Path, s3_root: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    """Manifests, frames, indexes and the summary chart in a bucket; the videos stay on local disk."""
    fs = Location.of(s3_root).fs
    videos = [data_root / "videos" / f"{name}.mp4" for name in ("v0", "v1", "v2", "bad")]
    fs.pipe_file(f"{s3_root}/manifests/clips.csv", ("path\n" + "".join(f"{v}\n" for v in videos)).encode())
    res = {"frames_data": resources(s3_root)["frames_data"]}
    with dg.build_sensor_context(instance=instance, resources=res) as context:
        sensor = manifest_sensor(context)
    assert isinstance(sensor, dg.SensorResult)
    assert [r.partition_key for r in sensor.run_requests] == ["clips-00000", "clips-00001"]

    for key in ("clips-00000", "clips-00001"):
        result = run_shard(instance, s3_root, key)
        assert result.success
        metadata = result.asset_materializations_for_node("video_frames")[0].metadata
        assert metadata["path"].value == f"{s3_root}/frames/{key}"
    store = FramesStore(s3_root)
    for name in ("v0", "v1", "v2"):
        key = "clips-00000" if name in ("v0", "v1") else "clips-00001"
        frames, pts = store.read_frames(key, name)
        assert frames.shape == (CLIPS[name], 27, 48, 3) and pts.shape == (CLIPS[name],)
    assert store.read_index("clips-00001").set_index("video_id").loc["bad", "status"] == "failed"
    assert not list((tmp_path / "staging").rglob("*.npy"))  # nothing left behind on the worker's disk

    # Up to date now: neither the sensor (lost cursor) nor the schedule asks for these shards again.
    with dg.build_sensor_context(instance=instance, resources=res) as context:
        again = manifest_sensor(context)
    assert isinstance(again, dg.SensorResult) and again.run_requests == []
    with dg.build_schedule_context(instance=instance, resources=res) as context:
        schedule = pending_shards_schedule(context)
    assert isinstance(schedule, dg.SkipReason)

    summary = dg.materialize([frames_summary], instance=instance, resources=resources(s3_root))
    values = {k: v.value for k, v in summary.asset_materializations_for_node("frames_summary")[0].metadata.items()}
    assert (values["num_shards_published"], values["frame_count"]) == (2, CLIPS["v0"] + CLIPS["v1"] + CLIPS["v2"])
    assert fs.cat_file(f"{s3_root}/frames/summary.png")[:4] == b"\x89PNG"


def test_bad_shard_is_not_published(data_root: Path, instance: dg.DagsterInstance) -> None:
    write_manifest(data_root, "broken", ["bad.mp4", "missing.mp4"])
    result = run_shard(instance, data_root, "broken-00000")
    assert not result.success
    assert check_results(result)["failed_ratio"] is False
    failure = result.failure_data_for_node("video_frames")
    assert failure is not None and "not published" in str(failure.error)
    assert sorted(p.name for p in (data_root / "frames").iterdir()) == [".broken-00000.lock"]
    assert instance.get_materialized_partitions(video_frames.key) == set()


def test_sensor_registers_shards_and_reruns_changed_manifests(data_root: Path, instance: dg.DagsterInstance) -> None:
    res = {"frames_data": resources(data_root)["frames_data"]}
    manifest = data_root / "manifests" / "clips.csv"

    def tick(cursor: str | None) -> dg.SensorResult | dg.SkipReason:
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=res) as context:
            result = manifest_sensor(context)
        if isinstance(result, dg.SensorResult):
            for request in result.dynamic_partitions_requests:
                if isinstance(request, dg.AddDynamicPartitionsRequest):
                    instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
                else:
                    for key in request.partition_keys:
                        instance.delete_dynamic_partition(request.partitions_def_name, key)
        return result

    first = tick(None)
    assert isinstance(first, dg.SensorResult)
    digest = file_hash(manifest)[:16]
    assert [(r.partition_key, r.run_key) for r in first.run_requests] == [
        ("clips-00000", f"clips-00000:{digest}"),
        ("clips-00001", f"clips-00001:{digest}"),
    ]
    assert sorted(instance.get_dynamic_partitions(video_shards.name)) == ["clips-00000", "clips-00001"]
    assert isinstance(tick(first.cursor), dg.SkipReason)

    # A shard materialized from this manifest version is not requested again, even with a lost cursor.
    assert run_shard(instance, data_root, "clips-00000").success
    fresh = tick(None)
    assert isinstance(fresh, dg.SensorResult)
    assert [r.partition_key for r in fresh.run_requests] == ["clips-00001"]

    # A changed manifest re-runs all its shards under new run keys and registers the new one.
    write_manifest(data_root, "clips", ["v0.mp4", "v1.mp4", "v2.mp4", "bad.mp4", "v3.mp4"])
    changed = tick(fresh.cursor)
    assert isinstance(changed, dg.SensorResult)
    new_digest = file_hash(manifest)[:16]
    assert [r.run_key for r in changed.run_requests] == [f"clips-0000{i}:{new_digest}" for i in range(3)]
    assert changed.dynamic_partitions_requests[0].partition_keys == ["clips-00002"]

    # A shrunk manifest drops the shards it no longer has.
    write_manifest(data_root, "clips", ["v0.mp4"])
    shrunk = tick(changed.cursor)
    assert isinstance(shrunk, dg.SensorResult)
    assert [r.partition_key for r in shrunk.run_requests] == ["clips-00000"]
    assert instance.get_dynamic_partitions(video_shards.name) == ["clips-00000"]


def test_manifest_with_a_bad_row(data_root: Path, instance: dg.DagsterInstance) -> None:
    (data_root / "manifests" / "clips.csv").write_text("path,label\n../videos/v0.mp4,a\n,b\n")
    res = {"frames_data": resources(data_root)["frames_data"]}
    with dg.build_sensor_context(instance=instance, resources=res) as context:
        result = manifest_sensor(context)
    assert isinstance(result, dg.SensorResult)
    assert result.run_requests == [] and result.dynamic_partitions_requests == []
    assert "clips.csv" in result.cursor  # not re-read until the file changes

    # A shard registered before the manifest went bad fails in video_manifest, naming file, row and column.
    run = run_shard(instance, data_root, "clips-00000")
    assert not run.success
    failure = run.failure_data_for_node("video_manifest")
    assert failure is not None and "clips.csv: row 2, column 'path'" in str(failure.error)
    assert not (data_root / "frames" / "clips-00000").exists()


def test_schedule_requests_shards_without_an_up_to_date_materialization(
    data_root: Path, instance: dg.DagsterInstance
) -> None:
    instance.add_dynamic_partitions(video_shards.name, ["clips-00000", "clips-00001", "added-by-hand"])
    res = {"frames_data": resources(data_root)["frames_data"]}

    def pending() -> list[str]:
        with dg.build_schedule_context(instance=instance, resources=res) as context:
            result = pending_shards_schedule(context)
        return [] if isinstance(result, dg.SkipReason) else [r.partition_key for r in result]

    assert pending() == ["clips-00000", "clips-00001"]  # never materialized
    assert run_shard(instance, data_root, "clips-00000").success
    assert pending() == ["clips-00001"]
    assert run_shard(instance, data_root, "clips-00001").success
    assert pending() == []
    (data_root / "frames" / "clips-00001" / "index.parquet").unlink()  # output lost on disk
    assert pending() == ["clips-00001"]
    with open(data_root / "manifests" / "clips.csv", "a") as fh:
        fh.write("../videos/v3.mp4,9\n")  # manifest changed since the last materializations
    assert pending() == ["clips-00000", "clips-00001"]


def test_frames_summary_totals(data_root: Path, instance: dg.DagsterInstance) -> None:
    assert run_shard(instance, data_root, "clips-00001").success
    instance.add_dynamic_partitions(video_shards.name, ["clips-00000"])  # registered, never run
    result = dg.materialize([frames_summary], instance=instance, resources=resources(data_root))
    values = {k: v.value for k, v in result.asset_materializations_for_node("frames_summary")[0].metadata.items()}
    assert (values["num_shards"], values["num_shards_published"]) == (2, 1)
    assert (values["num_videos"], values["num_ok"], values["num_failed"]) == (2, 1, 1)
    assert values["frame_count"] == CLIPS["v2"]
    assert sum(values["failures"].values()) == 1


def test_decoder_resource_knows_its_effective_mode() -> None:
    decoder = FrameDecoderResource(workers=1, output_hw=[18, 32])
    with dg.build_resources({"frame_decoder": decoder}) as built:
        assert built.frame_decoder.effective_mode in ("pynvc", "ffmpeg_gpu", "ffmpeg_cpu")
        assert built.frame_decoder.decode_options().output_hw == (18, 32)
        assert not built.frame_decoder.decode_options().skip_loop_filter
    assert FrameDecoderResource(skip_loop_filter=True).decode_options().skip_loop_filter
    with pytest.raises(ValueError, match="unknown decode mode"):
        FrameDecoderResource(mode="gpu").decode_options()


def test_instance_settings_allow_one_run_per_shard(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text((Path(__file__).parents[1] / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        queue = instance.get_concurrency_config().run_queue_config
    assert queue is not None
    assert {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in (
        queue.tag_concurrency_limits
    )
