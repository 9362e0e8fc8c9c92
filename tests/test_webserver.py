"""Smoke test: the webserver loads workspace.yaml and runs one shard launched through GraphQL."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from frames_pipeline.demo.clips import write_video
from frames_pipeline.storage.store import FramesStore

REPO = Path(__file__).resolve().parent.parent
SHARD = "smoke-00000"

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
    ... on PipelineNotFoundError { message }
  }
}
"""
STATUS = """
query Status($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } }
}
"""


def listening_addresses(pgid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket listening in process group ``pgid``: the webserver and
    the code server it starts. Read from /proc, so it sees what the kernel has, not what was asked."""
    inodes = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            if os.getpgid(int(fd.parts[2])) == pgid and (target := os.readlink(fd)).startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                host, port = fields[1].split(":")
                raw = bytes.fromhex(host)  # 32-bit words in host (little-endian) order
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add((socket.inet_ntop(family, words), int(port, 16)))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(url: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.loads(response.read())


def graphql(base: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    answer = request(f"{base}/graphql", {"query": query, "variables": variables})
    assert "errors" not in answer, answer
    return answer["data"]


@pytest.fixture
def webserver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A webserver on 127.0.0.1 with its own DAGSTER_HOME and a data root holding one tiny manifest."""
    home, data = tmp_path / "home", tmp_path / "data"
    for folder in (home, data / "videos", data / "manifests"):
        folder.mkdir(parents=True)
    # The repo's instance config, with runs launched at once: the queued coordinator needs the daemon.
    config = (REPO / "dagster.yaml").read_text()
    config += "\nrun_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
    (home / "dagster.yaml").write_text(config)
    for name in ("a", "b"):
        write_video(data / "videos" / f"{name}.mp4", 5, size=(32, 48))
    (data / "manifests" / "smoke.csv").write_text("path\n../videos/a.mp4\n../videos/b.mp4\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("FRAMES_PIPELINE_DATA", str(data))

    port = free_port()
    executable = shutil.which("dagster-webserver", path=str(Path(sys.executable).parent))
    assert executable, "dagster-webserver is not installed next to this Python"
    log = open(tmp_path / "webserver.log", "wb")  # noqa: SIM115 - closed in teardown
    process = subprocess.Popen(
        [executable, "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the code server and run workers stop with it
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (tmp_path / "webserver.log").read_text()
            try:
                request(f"{base}/server_info")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "webserver did not start in 180 s"
                time.sleep(1)
        if Path("/proc/net/tcp").exists():  # Linux: check what is really bound, code server included
            listening = listening_addresses(process.pid)
            assert ("127.0.0.1", port) in listening
            assert {host for host, _ in listening} <= {"127.0.0.1", "::1"}, listening
        yield base, data
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):  # stragglers of the group: code server, run workers
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            log.close()


@pytest.mark.slow
def test_partition_run_through_graphql(webserver: tuple[str, Path]) -> None:
    base, data = webserver
    dg.DagsterInstance.get().add_dynamic_partitions("video_shards", [SHARD])  # same DAGSTER_HOME as the server

    params = {
        "selector": {
            "repositoryLocationName": "frames_pipeline",
            "repositoryName": "__repository__",
            "jobName": "shard_job",
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": SHARD}]},
    }
    launched = graphql(base, LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    deadline = time.monotonic() + 300
    status = ""
    while status not in ("SUCCESS", "FAILURE", "CANCELED"):
        assert time.monotonic() < deadline, f"run {run_id} still {status} after 300 s"
        time.sleep(2)
        status = graphql(base, STATUS, {"runId": run_id})["runOrError"]["status"]
    assert status == "SUCCESS"

    store = FramesStore(data)
    assert store.read_index(SHARD)["status"].tolist() == ["ok", "ok"]
    assert store.read_frames(SHARD, "a")[0].shape == (5, 27, 48, 3)


CHROMIUM = Path("/usr/bin/chromium")
# Flags for a closed network: without them Chromium keeps calling home and start-up stalls.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where the browser test saves its screenshots ($FRAMES_PIPELINE_SCREENSHOTS, or a temp folder)."""
    folder = Path(os.environ.get("FRAMES_PIPELINE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/run installs it)")
def test_ui_materializes_a_partition_and_shows_its_frames(webserver: tuple[str, Path], screenshots: Path) -> None:
    """Materialize one shard of video_frames from the asset page in headless Chromium, like a user."""
    from playwright.sync_api import expect, sync_playwright

    base, data = webserver
    dg.DagsterInstance.get().add_dynamic_partitions("video_shards", [SHARD])
    # The upstream partition first, as an earlier run would have left it; in a fresh process, so the
    # definitions read this test's FRAMES_PIPELINE_DATA and DAGSTER_HOME, not an earlier test's.
    upstream = (
        "import dagster as dg\n"
        "from frames_pipeline.defs.assets import video_manifest\n"
        "from frames_pipeline.definitions import defs\n"
        "with dg.DagsterInstance.get() as instance:\n"
        f"    assert dg.materialize([video_manifest], partition_key={SHARD!r}, instance=instance,"
        " resources=defs.resources).success\n"
    )
    subprocess.run([sys.executable, "-c", upstream], check=True, timeout=300, env=os.environ.copy())

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(60_000)
        try:
            # Dagster's community sign-up dialog pops up over whatever page is open: dismiss it each time.
            page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
            page.goto(f"{base}/assets/video_frames", wait_until="networkidle")
            page.screenshot(path=screenshots / "1_asset_page.png")

            page.get_by_role("button", name="Materialize…").click()
            page.get_by_text("Select a partition or create one").click()
            page.get_by_role("menuitem", name=SHARD).click()
            page.keyboard.press("Escape")
            page.screenshot(path=screenshots / "2_launch_dialog.png")
            page.get_by_role("button", name="Launch 1 run").click()

            deadline = time.monotonic() + 300
            while not (data / "frames" / SHARD / "index.parquet").exists():
                assert time.monotonic() < deadline, "the run launched from the UI did not publish the shard"
                time.sleep(2)

            page.goto(f"{base}/assets/video_frames?partition={SHARD}", wait_until="networkidle")
            metadata = page.locator("table").filter(has_text="frame_count")
            expect(metadata).to_be_visible()
            expect(metadata).to_contain_text("decode_mode")
            expect(metadata).to_contain_text("ffmpeg_cpu")
            row = metadata.locator("tr").filter(has_text="frame_count")
            expect(row).to_contain_text("10")  # two 5-frame clips
            page.screenshot(path=screenshots / "3_materialization.png", full_page=True)

            metadata.locator("tr").filter(has_text="preview").get_by_text("Show Markdown").click()
            preview = page.locator("img[src^='data:image/png']").first
            expect(preview).to_be_visible()
            width = preview.evaluate("img => img.complete ? img.naturalWidth : 0")
            page.screenshot(path=screenshots / "4_preview.png")
            assert width > 100, f"the contact sheet did not render (naturalWidth {width})"
        finally:
            page.screenshot(path=screenshots / "last.png")
            browser.close()
