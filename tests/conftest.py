"""Shared fixtures: the real-video edge corpus, an S3 endpoint and a Ray head on 127.0.0.1, and
skipping ``gpu`` tests on machines without CUDA."""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from frames_pipeline.demo.clips import make_edge_corpus


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return  # asking the driver costs a subprocess; only pay it when GPU tests were collected
    from frames_pipeline.decode._cuda import cuda_device_count

    if cuda_device_count() > 0:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (cuda_device_count() == 0)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def edge_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per decoder edge case (see ``make_edge_corpus``), built once per test session."""
    return make_edge_corpus(tmp_path_factory.mktemp("edge_corpus"))


@contextmanager
def _tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted on ``folder``. Mounting needs CAP_SYS_ADMIN, which CI containers rarely grant;
    without it the test skips."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)  # even while a failed test holds a file


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs: a real ENOSPC (where it cannot be mounted, an RLIMIT_FSIZE test in
    test_reliability.py still covers a failed write)."""
    (tmp_path / "disk").mkdir()
    with _tmpfs(tmp_path / "disk", "size=512k") as disk:
        yield disk


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """An empty folder this process cannot write in. Permissions do not stop root, so as root it is
    a read-only tmpfs."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    with _tmpfs(folder, "ro,size=64k"):
        yield folder


@pytest.fixture(autouse=True)
def _no_inherited_defs_state_storage() -> Iterator[None]:
    """Start every test without Dagster's "current" defs-state storage. Dagster keeps it in a context
    variable that ``with instance:`` sets; a test that leaves it set hands later tests a storage whose
    instance is gone, and their definitions then fail to load once that instance is garbage-collected
    ("Attempted to resolve undefined DagsterInstance weakref")."""
    if importlib.util.find_spec("dagster") is None:  # a GPU host running only the decode library's tests
        yield
        return
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(None):
        yield


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a real HTTP endpoint: step subprocesses reach it too)."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_root(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh bucket as data root, reached the way users configure one: AWS variables only."""
    import fsspec

    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FRAMES_PIPELINE_STAGING": str(tmp_path / "staging"),
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"frames-{secrets.token_hex(4)}"
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir(bucket)
    return f"s3://{bucket}/data"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@dataclass(frozen=True)
class RayHead:
    """A running local Ray head: ``jobs_address`` for job submission, ``gcs_address`` for
    ``ray.init`` (RAY_ADDRESS), ``logs`` the folder its processes log into."""

    jobs_address: str
    gcs_address: str
    logs: Path


@pytest.fixture
def ray_head(request: pytest.FixtureRequest) -> Iterator[RayHead]:
    """A one-node Ray cluster on 127.0.0.1 with 2 logical CPUs (``indirect`` parametrization gives
    another count). Stopped by killing the process group it was started in, so no other Ray on the
    machine is touched (``ray stop`` would)."""
    from ray.job_submission import JobSubmissionClient

    num_cpus = getattr(request, "param", 2)
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
        f"--num-cpus={num_cpus}",
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
        yield RayHead(jobs_address=address, gcs_address=f"127.0.0.1:{gcs}", logs=Path(temp_dir))
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
