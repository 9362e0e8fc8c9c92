"""Scale-out by configuration: the executor and the GPU request follow the environment; the
``video_frames`` step Job that Kubernetes would get; two shards run for real on a local Ray head."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_k8s import DagsterK8sJobConfig, construct_dagster_k8s_job
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import get_user_defined_k8s_config
from kubernetes.client import V1Job
from ray.job_submission import JobStatus, JobSubmissionClient

from frames_pipeline.defs.assets import video_frames
from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.demo.clips import write_video
from frames_pipeline.deployment import (
    EXECUTOR_ENV,
    GPU_ENV,
    GPU_RESOURCE,
    K8S_TAG,
    MODE_ENV,
    RAY_TAG,
    build_executor,
    configured_mode,
    video_frames_op_tags,
)
from frames_pipeline.storage.locations import Location
from frames_pipeline.storage.store import FramesStore

REPO = Path(__file__).resolve().parent.parent
HELM_VALUES = REPO / "deploy" / "helm" / "values.yaml"
SCALE_OUT_ENV = (EXECUTOR_ENV, MODE_ENV, GPU_ENV)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the defaults, whatever the shell running pytest has set."""
    for name in SCALE_OUT_ENV:
        monkeypatch.delenv(name, raising=False)


def load_definitions(env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Load the code location in a fresh process with ``env`` added, as a deployment would; returns
    the executor of ``shard_job`` and the tags of its ``video_frames`` op."""
    script = (
        "import json; from frames_pipeline.definitions import defs; job = defs.resolve_job_def('shard_job'); "
        "print(json.dumps([job.executor_def.name, dict(job.graph.node_named('video_frames').tags)]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    name, tags = json.loads(done.stdout.splitlines()[-1])
    return name, tags


# --- which executor, and when a GPU is asked for


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (None, "multi_or_in_process_executor"),
        ("multiprocess", "multi_or_in_process_executor"),
        ("ray", "ray"),
        ("k8s", "k8s"),
    ],
)
def test_executor_follows_the_environment(monkeypatch: pytest.MonkeyPatch, setting: str | None, expected: str) -> None:
    if setting is not None:
        monkeypatch.setenv(EXECUTOR_ENV, setting)
    assert build_executor().name == expected


def test_unknown_executor_or_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EXECUTOR_ENV, "celery")
    with pytest.raises(ValueError, match="multiprocess, ray, k8s"):
        build_executor()
    monkeypatch.setenv(MODE_ENV, "cuda")
    with pytest.raises(ValueError, match="auto, pynvc, ffmpeg_gpu, ffmpeg_cpu"):
        configured_mode()


@pytest.mark.parametrize(("name", "module", "extra"), [("ray", "dagster_ray", "ray"), ("k8s", "dagster_k8s", "k8s")])
def test_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch, name: str, module: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without the extra looks like
    with pytest.raises(ImportError, match=rf"pip install 'frames_pipeline\[{extra}\]'"):
        build_executor(name)


@pytest.mark.parametrize(
    ("mode", "gpu_flag", "gpu"),
    [
        ("pynvc", None, True),
        ("ffmpeg_gpu", None, True),
        ("ffmpeg_cpu", "1", False),
        ("auto", None, False),
        ("auto", "0", False),
        ("auto", "1", True),
    ],
)
def test_gpu_is_requested_only_when_the_mode_needs_one(
    monkeypatch: pytest.MonkeyPatch, mode: str, gpu_flag: str | None, gpu: bool
) -> None:
    monkeypatch.setenv(MODE_ENV, mode)
    if gpu_flag is not None:
        monkeypatch.setenv(GPU_ENV, gpu_flag)
    tags = video_frames_op_tags()
    assert set(tags) == ({RAY_TAG, K8S_TAG} if gpu else set())
    if gpu:
        assert json.loads(tags[RAY_TAG]) == {"num_gpus": 1}


def test_configuration_alone_sets_executor_and_gpu_tags() -> None:
    name, tags = load_definitions({EXECUTOR_ENV: "k8s", MODE_ENV: "pynvc"})
    assert name == "k8s"
    assert {k: v for k, v in tags.items() if k in (RAY_TAG, K8S_TAG)} == video_frames_op_tags("pynvc")
    name, tags = load_definitions({EXECUTOR_ENV: "ray", MODE_ENV: "ffmpeg_cpu"})
    assert name == "ray"
    assert RAY_TAG not in tags and K8S_TAG not in tags


# --- Kubernetes: the step Job dagster-k8s builds for video_frames, from deploy/helm/values.yaml


def step_job(tags: dict[str, str]) -> V1Job:
    """The Job ``k8s_job_executor`` submits for a step with ``tags``, composed as its step handler does:
    the code location's container context (what the chart passes from the user deployment to launched
    runs), then the step's ``dagster-k8s/config`` tag, then the image and instance settings."""
    values = yaml.safe_load(HELM_VALUES.read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    location = K8sContainerContext.create_from_config(
        {
            "k8s": {
                "env": deployment["env"],
                "volumes": deployment["volumes"],
                "volume_mounts": deployment["volumeMounts"],
                "namespace": "frames",
            }
        }
    )
    context = location.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags)))
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    job_config = DagsterK8sJobConfig(
        job_image=image,
        dagster_home="/opt/dagster/dagster_home",
        instance_config_map="dagster-instance",
        postgres_password_secret="dagster-postgresql-secret",
    )
    return construct_dagster_k8s_job(
        job_config,
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-video-frames",
        user_defined_k8s_config=context.run_k8s_config,
        component="step_worker",
        labels={"dagster/op": "video_frames"},
    )


def test_k8s_step_job_asks_for_one_gpu_in_gpu_modes() -> None:
    pod = step_job(video_frames_op_tags("pynvc")).spec.template.spec
    (container,) = pod.containers
    assert container.resources.limits == {GPU_RESOURCE: "1"}
    assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [(GPU_RESOURCE, "Exists", "NoSchedule")]
    assert container.image == "registry.example.com/frames-pipeline:0.1.0"
    env = {e.name: e.value for e in container.env}
    assert env["FRAMES_PIPELINE_DATA"] == "/data"
    assert env["FRAMES_PIPELINE_EXECUTOR"] == "k8s"
    assert env["FRAMES_PIPELINE_MODE"] == "pynvc"
    assert "video" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    assert env["DAGSTER_HOME"] == "/opt/dagster/dagster_home"
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["frames-data"].persistent_volume_claim.claim_name == "frames-data"
    mounts = {m.name: m.mount_path for m in container.volume_mounts}
    assert mounts == {"frames-data": "/data"}


def test_k8s_step_job_asks_for_no_gpu_in_cpu_mode() -> None:
    pod = step_job(video_frames_op_tags("ffmpeg_cpu")).spec.template.spec
    (container,) = pod.containers
    assert not (container.resources and container.resources.limits)
    assert not pod.tolerations
    assert {v.name for v in pod.volumes} >= {"frames-data"}  # same storage, no GPU


# --- Ray for real: a local head on 127.0.0.1, two shards through ray_executor

CLIPS = {"a": {"a0": 6, "a1": 7}, "b": {"b0": 8, "b1": 5}}  # manifest stem -> {video: frames}
RAY_TEST_LIMIT_S = 240


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture
def ray_head() -> Iterator[str]:
    """A one-node Ray cluster on 127.0.0.1; yields the job submission address. Stopped by killing the
    process group it was started in, so no other Ray on the machine is touched (``ray stop`` would)."""
    gcs, dashboard, client, agent = free_ports(4)
    # A short temp dir: Ray's unix socket paths must stay under 108 bytes. Ray replaces 127.0.0.1 with
    # the host's address unless it thinks it is on a laptop; this setting keeps every port on loopback.
    temp_dir = tempfile.mkdtemp(prefix="ray-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAMES_PIPELINE_", "RAY_ADDRESS"))} | {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # Ray jobs run `dagster api execute_step` through a shell: this venv's bin must be on PATH even
        # when the tests run as `.venv/bin/python -m pytest` without activating it.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--num-cpus=2",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    head = subprocess.Popen(
        command, env=env, cwd=temp_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                JobSubmissionClient(address)
                break
            except ConnectionError:
                assert head.poll() is None, f"ray start exited with {head.returncode}"
                assert time.monotonic() < deadline, "Ray's job server did not come up in 90 s"
                time.sleep(0.5)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def write_shards(videos: Path, data_root: str) -> dict[str, dict[str, int]]:
    """Tiny H.264 clips in ``videos`` and one manifest per stem under ``data_root`` (a bucket);
    returns {shard key: {video: frames}}."""
    videos.mkdir(parents=True)
    manifests = Location.of(data_root).child("manifests")
    for stem, clips in CLIPS.items():
        for name, frames in clips.items():
            write_video(videos / f"{name}.mp4", frames, size=(32, 48))
        rows = "".join(f"{videos / name}.mp4\n" for name in clips)
        manifests.fs.pipe_file(manifests.child(f"{stem}.csv").path, ("path\n" + rows).encode())
    return {f"{stem}-00000": clips for stem, clips in CLIPS.items()}


@pytest.mark.slow
@pytest.mark.timeout(2 * RAY_TEST_LIMIT_S)
def test_ray_executor_materializes_two_shards(
    ray_head: str, s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps run as Ray jobs and share the data root the way separate machines would: through S3."""
    started = time.monotonic()
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())  # with the "video_decode" pool limit of 1
    shards = write_shards(tmp_path / "videos", s3_root)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(video_shards.name, list(shards))

    # The Ray head has none of our settings: the executor forwards them to each step (run config).
    run_config = tmp_path / "run_config.yaml"
    forwarded = ["FRAMES_PIPELINE_DATA", "FRAMES_PIPELINE_EXECUTOR", "FRAMES_PIPELINE_MODE"]
    forwarded += ["FRAMES_PIPELINE_STAGING", *(name for name in os.environ if name.startswith("AWS_"))]
    run_config.write_text(yaml.safe_dump({"execution": {"config": {"ray": {"env_vars": forwarded}}}}))
    env = os.environ | {
        EXECUTOR_ENV: "ray",
        MODE_ENV: "ffmpeg_cpu",
        "FRAMES_PIPELINE_DATA": s3_root,
        "RAY_ADDRESS": ray_head,
        "DAGSTER_HOME": str(home),
    }
    execute = [Path(sys.executable).with_name("dagster"), "job", "execute", "-m", "frames_pipeline.definitions"]
    runs = [
        subprocess.Popen(
            [*execute, "-j", "shard_job", "-c", run_config, "--tags", json.dumps({"dagster/partition": key})],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for key in shards
    ]
    for run in runs:
        output, _ = run.communicate(timeout=RAY_TEST_LIMIT_S)
        assert run.returncode == 0, output[-4000:]

    # Every step ran as a Ray job, and succeeded there.
    jobs = JobSubmissionClient(ray_head).list_jobs()
    assert sorted(j.metadata["dagster/op"] for j in jobs) == sorted(["video_manifest", "video_frames"] * len(shards))
    assert {j.status for j in jobs} == {JobStatus.SUCCEEDED}

    store = FramesStore(s3_root)
    for key, clips in shards.items():
        for name, frames in clips.items():
            video, pts = store.read_frames(key, name)
            assert video.shape == (frames, 27, 48, 3) and pts.shape == (frames,)
        index = store.read_index(key).set_index("video_id")
        assert index["status"].to_dict() == dict.fromkeys(clips, "ok")
        assert index["num_frames"].to_dict() == clips

    with dg.DagsterInstance.get() as instance:
        records = instance.fetch_materializations(video_frames.key, limit=10).records
        by_shard = {r.asset_materialization.partition: r.asset_materialization.metadata for r in records}
        assert set(by_shard) == set(shards)
        for key, clips in shards.items():
            values = {k: v.value for k, v in by_shard[key].items()}
            assert (values["num_videos"], values["num_ok"], values["num_failed"]) == (len(clips), len(clips), 0)
            assert values["frame_count"] == sum(clips.values())
            assert values["decode_mode"] == {"ffmpeg_cpu": len(clips)}
            assert values["path"] == f"{s3_root}/frames/{key}"
    assert time.monotonic() - started < RAY_TEST_LIMIT_S
