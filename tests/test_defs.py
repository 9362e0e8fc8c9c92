"""The code location on real tiny videos: shard runs, checks, sensor, schedule and summary."""

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from frames_pipeline.definitions import defs
from frames_pipeline.defs.assets import frames_summary, video_frames, video_manifest
from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.defs.resources import FrameDecoderResource, FramesDataResource
from frames_pipeline.defs.schedules import pending_shards_schedule
from frames_pipeline.defs.sensors import InvalidManifests, manifest_sensor
from frames_pipeline.demo.clips import write_video
from frames_pipeline.deployment import DECODE_POOL
from frames_pipeline.shots import shots_available
from frames_pipeline.storage.locations import Location
from frames_pipeline.storage.manifest import SHARD_SIZE_ENV, file_hash
from frames_pipeline.storage.store import INDEX_SCHEMA, FramesStore

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


@pytest.fixture(autouse=True)
def shard_size(monkeypatch: pytest.MonkeyPatch) -> int:
    """The code location's shard size, as a deployment sets it."""
    monkeypatch.setenv(SHARD_SIZE_ENV, str(SHARD_SIZE))
    return SHARD_SIZE


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
        "frames_data": FramesDataResource(data_root=str(root)),
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
    with_shots = shots_available()  # the shots extra adds video_shots and its resource (tests/test_shots.py)
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "video_manifest",
        "video_frames",
        "frames_summary",
        *(["video_shots"] if with_shots else []),
    }
    frames = defs.resolve_assets_def("video_frames")
    assert frames.partitions_def == video_shards
    assert frames.op.pool == DECODE_POOL == "video_decode"
    assert frames.op.retry_policy is not None
    specs = {spec.name: (spec.blocking, spec.partitions_def) for spec in frames.check_specs}
    assert specs == {
        "frame_counts_match_probe": (False, video_shards),
        "arrays_well_formed": (True, video_shards),
        "failed_ratio": (True, video_shards),
    }
    assert set(defs.resources) == {"frame_decoder", "frames_data", *(["shot_detector"] if with_shots else [])}
    assert defs.resolve_sensor_def("manifest_sensor").description
    assert defs.resolve_schedule_def("pending_shards_schedule").cron_schedule == "0 * * * *"


def test_assets_follow_dagster_conventions() -> None:
    """Owners, tags, code version, a link to the source, one shard per backfill run, descriptions
    in markdown (no reStructuredText double backticks), and the index's column schema."""
    for name in ("video_manifest", "video_frames", "frames_summary"):
        assets_def = defs.resolve_assets_def(name)
        spec = assets_def.specs_by_key[assets_def.key]
        assert spec.owners == ["team:frames_pipeline"] and spec.tags["domain"] == "video"
        assert spec.code_version
        (reference,) = spec.metadata["dagster/code_references"].code_references
        assert reference.file_path.endswith("frames_pipeline/defs/assets.py") and reference.line_number
        assert spec.description and "``" not in spec.description
        if name != "frames_summary":
            assert assets_def.backfill_policy == dg.BackfillPolicy.multi_run(max_partitions_per_run=1)
    frames = defs.resolve_assets_def("video_frames")
    schema = frames.specs_by_key[frames.key].metadata["dagster/column_schema"]
    assert [column.name for column in schema.columns] == INDEX_SCHEMA.names
    assert all(column.description for column in schema.columns)
    assert {c.name: c.type for c in schema.columns}["num_frames"] == "int"
    for check in frames.check_specs:
        assert check.description and "``" not in check.description
    summary = defs.resolve_assets_def("frames_summary")
    assert summary.specs_by_key[summary.key].automation_condition is not None
    sensor = defs.resolve_sensor_def("summary_automation_sensor")
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_dg_loads_the_project_from_its_defs_folder() -> None:
    """`dg check defs` and `dg list defs` (what `dg dev` loads) see the same definitions."""
    # The interpreter's own dg (a venv not on PATH), else PATH's (a --target install on a GPU host).
    dg_cli = shutil.which("dg", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert dg_cli, "dg not found: install dagster-dg-cli"
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
    assert values["shard_size"] == SHARD_SIZE
    videos = values["videos"]
    assert len(videos.records) == 2
    columns = {column.name: column.type for column in videos.schema.columns}
    assert {"codec": "string", "source_fps": "float", "rotation": "int", "label": "string"}.items() <= columns.items()
    assert videos.records[0].data["label"] == "2"  # the manifest's own column, next to what happened
    assert values["contact_sheet"].startswith("![contact sheet of clips-00001](data:image/png;base64,")
    rows = result.asset_materializations_for_node("video_manifest")[0].metadata
    assert [c.name for c in rows["dagster/column_schema"].value.columns] == [
        "manifest_row",
        "video_id",
        "path",
        "label",
    ]
    assert rows["shard_size"].value == SHARD_SIZE
    tags = instance.get_run_by_id(result.run_id).tags
    assert (tags["frames_pipeline/manifest"], tags["frames_pipeline/decoder_mode"]) == ("clips", values["pool_mode"])


def test_shard_run_on_object_storage(
    data_root: Path, s3_root: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    """Manifests, frames, indexes and the summary chart in a bucket; the videos stay on local disk."""
    fs = Location.of(s3_root).fs
    videos = [data_root / "videos" / f"{name}.mp4" for name in ("v0", "v1", "v2", "bad")]
    fs.pipe_file(f"{s3_root}/manifests/clips.csv", ("path\n" + "".join(f"{v}\n" for v in videos)).encode())
    res = resources(s3_root)
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


def schedule_tick(instance: dg.DagsterInstance, root: Path, **decoder: Any) -> list[dg.RunRequest] | dg.SkipReason:
    res = resources(root) | ({"frame_decoder": FrameDecoderResource(workers=1, **decoder)} if decoder else {})
    with dg.build_schedule_context(instance=instance, resources=res) as context:
        return pending_shards_schedule(context)


def test_bad_shard_is_blocked_once_and_waits_for_a_change(data_root: Path, instance: dg.DagsterInstance) -> None:
    write_manifest(data_root, "broken", ["bad.mp4", "missing.mp4"])
    result = run_shard(instance, data_root, "broken-00000")
    assert not result.success
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "failed_ratio"]
    assert (evaluation.passed, evaluation.partition) == (False, "broken-00000")  # its own partition's result
    assert evaluation.description == "2/2 video(s) failed (ratio 1.00, limit 0.5)"
    # Dagster fails the step for the blocking check: no retry, and a short framework stack, not ours.
    events = [e.event_type_value for e in result.all_events if e.step_key == "video_frames"]
    assert events.count("STEP_FAILURE") == 1 and "STEP_UP_FOR_RETRY" not in events
    failure = result.failure_data_for_node("video_frames")
    assert failure is not None and failure.error.cls_name == "DagsterAssetCheckFailedError"
    assert "video_frames: failed_ratio" in failure.error.message and len(failure.error.stack) <= 3
    assert instance.get_run_by_id(result.run_id).tags["frames_pipeline/blocked_by"] == "failed_ratio"
    assert sorted(p.name for p in (data_root / "frames").iterdir()) == [".blocked", ".broken-00000.lock"]
    assert instance.get_materialized_partitions(video_frames.key) == set()

    # The schedule does not run it again on the same inputs, and says why.
    instance.add_dynamic_partitions(video_shards.name, ["broken-00000"])
    waiting = schedule_tick(instance, data_root)
    assert isinstance(waiting, dg.SkipReason)
    assert "1 blocked (failed_ratio: 2/2 video(s) failed (ratio 1.00, limit 0.5)); waits for a change" in str(
        waiting.skip_message
    )
    # Other decoder settings are other inputs: it runs again, and the run says why.
    (request,) = schedule_tick(instance, data_root, output_hw=[18, 32])
    assert request.partition_key == "broken-00000"
    assert request.tags["frames_pipeline/why"] == "blocked before; its manifest, shard size or settings changed since"
    # So does an edited manifest.
    write_manifest(data_root, "broken", ["bad.mp4", "v0.mp4", "v1.mp4"])
    (request,) = schedule_tick(instance, data_root)
    assert request.partition_key == "broken-00000"


def sensor_tick(instance: dg.DagsterInstance, root: Path, cursor: str | None) -> dg.SensorResult | dg.SkipReason:
    """One tick of the manifest sensor, its partition requests applied as the daemon would."""
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources(root)) as context:
        result = manifest_sensor(context)
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
            else:
                for key in request.partition_keys:
                    instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result


def test_sensor_registers_shards_and_reruns_changed_manifests(data_root: Path, instance: dg.DagsterInstance) -> None:
    def tick(cursor: str | None) -> dg.SensorResult | dg.SkipReason:
        return sensor_tick(instance, data_root, cursor)

    first = tick(None)
    assert isinstance(first, dg.SensorResult)
    # The run key carries the shard's inputs: the same for both shards of one manifest version.
    assert [r.partition_key for r in first.run_requests] == ["clips-00000", "clips-00001"]
    (digest,) = {r.run_key.split(":")[1] for r in first.run_requests}
    assert [r.run_key for r in first.run_requests] == [f"clips-00000:{digest}", f"clips-00001:{digest}"]
    assert {r.tags["frames_pipeline/why"] for r in first.run_requests} == {"never published"}
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
    (new_digest,) = {r.run_key.split(":")[1] for r in changed.run_requests}
    assert new_digest != digest and [r.partition_key for r in changed.run_requests] == [
        f"clips-0000{i}" for i in range(3)
    ]
    assert changed.run_requests[0].tags["frames_pipeline/why"] == "the manifest changed since it was published"
    assert changed.dynamic_partitions_requests[0].partition_keys == ["clips-00002"]

    # A shrunk manifest drops the shards it no longer has.
    write_manifest(data_root, "clips", ["v0.mp4"])
    shrunk = tick(changed.cursor)
    assert isinstance(shrunk, dg.SensorResult)
    assert [r.partition_key for r in shrunk.run_requests] == ["clips-00000"]
    assert instance.get_dynamic_partitions(video_shards.name) == ["clips-00000"]


def test_manifest_with_a_bad_row(data_root: Path, instance: dg.DagsterInstance) -> None:
    (data_root / "manifests" / "clips.csv").write_text("path,label\n../videos/v0.mp4,a\n,b\n")
    write_manifest(data_root, "good", ["v0.mp4"])
    # A tick with other work does it, and logs the bad manifest; the cursor leaves it out.
    with dg.build_sensor_context(instance=instance, resources=resources(data_root)) as context:
        result = manifest_sensor(context)
    assert isinstance(result, dg.SensorResult)
    assert [r.partition_key for r in result.run_requests] == ["good-00000"]
    assert "clips.csv" not in result.cursor
    # The next tick has nothing else to do: it fails, so the sensor's page shows why, until the file is fixed.
    later = dg.build_sensor_context(instance=instance, cursor=result.cursor, resources=resources(data_root))
    with later as context, pytest.raises(InvalidManifests, match=r"clips.csv: row 2, column 'path': empty or not text"):
        manifest_sensor(context)

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
    res = resources(data_root)

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
    write_manifest(data_root, "broken", ["bad.mp4"])
    assert not run_shard(instance, data_root, "broken-00000").success
    instance.add_dynamic_partitions(video_shards.name, ["clips-00000"])  # registered, never run
    result = dg.materialize([frames_summary], instance=instance, resources=resources(data_root))
    values = {k: v.value for k, v in result.asset_materializations_for_node("frames_summary")[0].metadata.items()}
    assert values["num_shards"] == 3
    assert (values["num_shards_published"], values["num_shards_blocked"], values["num_shards_pending"]) == (1, 1, 1)
    assert (values["num_videos"], values["num_ok"], values["num_failed"]) == (2, 1, 1)
    assert values["frame_count"] == CLIPS["v2"]
    assert sum(values["failures"].values()) == 1
    rows = [record.data for record in values["shards"].records]
    assert [(r["shard"], r["state"]) for r in rows] == [  # what needs attention first
        ("broken-00000", "blocked"),
        ("clips-00000", "pending"),
        ("clips-00001", "published"),
    ]
    assert rows[0]["detail"] == "failed_ratio: 1/1 video(s) failed (ratio 1.00, limit 0.5)"
    assert values["chart"].startswith("![shards by state and failed videos by reason](data:image/png;base64,")
    assert (data_root / "frames" / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_pictures_link_to_the_data_root_when_it_is_served(
    data_root: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link is short enough for the UI to show the picture in place (it expands markdown under 1,000
    characters); the file it names is the one in the published version."""
    monkeypatch.setenv("FRAMES_PIPELINE_PREVIEW_URL", "http://127.0.0.1:8787/")
    result = run_shard(instance, data_root, "clips-00000")
    sheet = result.asset_materializations_for_node("video_frames")[0].metadata["contact_sheet"].value
    prefix = "![contact sheet of clips-00000](http://127.0.0.1:8787/frames/clips-00000/"
    assert sheet.startswith(prefix) and sheet.endswith("/contact_sheet.png)") and len(sheet) < 1000
    assert (data_root / sheet[len("![contact sheet of clips-00000](http://127.0.0.1:8787/") : -1]).is_file()
    summary = dg.materialize([frames_summary], instance=instance, resources=resources(data_root))
    chart = summary.asset_materializations_for_node("frames_summary")[0].metadata["chart"].value
    assert chart == "![shards by state and failed videos by reason](http://127.0.0.1:8787/frames/summary.png)"


def test_frames_summary_refreshes_itself_when_shards_land(data_root: Path, instance: dg.DagsterInstance) -> None:
    """Requested after a shard is blocked (the summary lists it) and after one materializes, although
    another has never run (eager() would wait for it forever); not again until another shard lands."""
    write_manifest(data_root, "broken", ["bad.mp4"])
    instance.add_dynamic_partitions(video_shards.name, ["clips-00000", "clips-00001", "broken-00000"])
    summary_only = dg.AssetSelection.assets(frames_summary)

    def tick(cursor: Any = None) -> Any:
        return dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=summary_only, cursor=cursor
        )

    first = tick()
    assert first.total_requested == 0  # nothing landed yet
    assert not run_shard(instance, data_root, "broken-00000").success
    blocked = tick(first.cursor)
    assert blocked.total_requested == 1
    dg.materialize([frames_summary], instance=instance, resources=resources(data_root))
    quiet = tick(blocked.cursor)
    assert quiet.total_requested == 0
    assert run_shard(instance, data_root, "clips-00000").success
    landed = tick(quiet.cursor)
    assert landed.total_requested == 1 and landed.get_requested_partitions(frames_summary.key) == {None}
    dg.materialize([frames_summary], instance=instance, resources=resources(data_root))
    assert tick(landed.cursor).total_requested == 0


def test_changing_the_shard_size_retires_old_keys(
    data_root: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 rows at size 2 are clips-00000 and -00001; at size 4 they are clips-00000 alone, which runs
    again (its rows changed), and clips-00001 is retired, not left pending."""
    first = sensor_tick(instance, data_root, None)
    assert isinstance(first, dg.SensorResult)
    for key in ("clips-00000", "clips-00001"):
        assert run_shard(instance, data_root, key).success
    assert isinstance(sensor_tick(instance, data_root, first.cursor), dg.SkipReason)

    monkeypatch.setenv(SHARD_SIZE_ENV, "4")
    resized = sensor_tick(instance, data_root, first.cursor)
    assert isinstance(resized, dg.SensorResult)
    assert [(r.partition_key, r.tags["frames_pipeline/why"]) for r in resized.run_requests] == [
        ("clips-00000", "cut with shard size 2, now 4")
    ]
    assert resized.dynamic_partitions_requests[0].partition_keys == ["clips-00001"]  # a delete request
    assert instance.get_dynamic_partitions(video_shards.name) == ["clips-00000"]
    result = run_shard(instance, data_root, "clips-00000")
    assert result.success and len(FramesStore(data_root).read_index("clips-00000")) == 4
    assert isinstance(schedule_tick(instance, data_root), dg.SkipReason)  # nothing pending is left behind


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


def test_shard_job_runs_its_steps_in_the_run_process_and_other_jobs_keep_the_locations_executor() -> None:
    assert defs.resolve_job_def("shard_job").executor_def.name == "in_process"
    assert defs.resolve_job_def("summary_job").executor_def.name == "multi_or_in_process_executor"
