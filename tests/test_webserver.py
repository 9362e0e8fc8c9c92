"""The webserver and the daemon as a user meets them: a shard launched through GraphQL, one launched
from the asset page in headless Chromium, and a daemon that registers manifests, runs and blocks
shards and refreshes the summary, with every outcome visible in the UI without opening a log."""

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from frames_pipeline.demo.clips import write_video
from frames_pipeline.previews import PREVIEW_URL_ENV
from frames_pipeline.storage.manifest import SHARD_SIZE_ENV
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


@contextlib.contextmanager
def serving(
    command: list[str], log_path: Path, ready: Callable[[], bool], what: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` from the repository in its own process group until the block ends; wait for
    ``ready`` first (180 s at most)."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed in teardown
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the code server and run workers stop with it
    )
    try:
        deadline = time.monotonic() + 180
        while not ready():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"{what} did not start in 180 s"
            time.sleep(1)
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):  # stragglers of the group: code server, run workers
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            log.close()


def answers(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            urllib.request.urlopen(url, timeout=5).close()
        except urllib.error.HTTPError:
            return True  # up, and saying no
        except (urllib.error.URLError, ConnectionError):
            return False
        return True

    return ready


def venv_tool(name: str) -> str:
    executable = shutil.which(name, path=str(Path(sys.executable).parent))
    assert executable, f"{name} is not installed next to this Python"
    return executable


@pytest.fixture
def webserver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A webserver on 127.0.0.1 with its own DAGSTER_HOME, a data root holding one tiny manifest, and
    the data root's pictures served on 127.0.0.1 (`frames-pipeline serve-previews`)."""
    home, data = tmp_path / "home", tmp_path / "data"
    for folder in (home, data / "videos", data / "manifests"):
        folder.mkdir(parents=True)
    # The repo's instance config, with runs launched at once: the queued coordinator needs the daemon.
    config = (REPO / "dagster.yaml").read_text()
    config += "\nrun_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
    (home / "dagster.yaml").write_text(config)
    for name in ("a", "b"):
        write_video(data / "videos" / f"{name}.mp4", 5, size=(32, 48))
    (data / "manifests" / "smoke.csv").write_text("path,label\n../videos/a.mp4,cat\n../videos/b.mp4,dog\n")
    port, pictures = free_port(), free_port()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("FRAMES_PIPELINE_DATA", str(data))
    monkeypatch.setenv(SHARD_SIZE_ENV, "2")
    monkeypatch.setenv(PREVIEW_URL_ENV, f"http://127.0.0.1:{pictures}")

    base = f"http://127.0.0.1:{port}"
    serve = [venv_tool("frames-pipeline"), "serve-previews", "--data", str(data), "--port", str(pictures)]
    web = [venv_tool("dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with (
        serving(serve, tmp_path / "previews.log", answers(f"http://127.0.0.1:{pictures}/"), "serve-previews"),
        serving(web, tmp_path / "webserver.log", answers(f"{base}/server_info"), "webserver") as process,
    ):
        if Path("/proc/net/tcp").exists():  # Linux: check what is really bound, code server included
            listening = listening_addresses(process.pid)
            assert ("127.0.0.1", port) in listening
            assert {host for host, _ in listening} <= {"127.0.0.1", "::1"}, listening
        yield base, data


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


@contextlib.contextmanager
def browser_page(last_screenshot: Path) -> Iterator[Any]:
    """A page of headless Chromium; what it showed last is saved to ``last_screenshot``, pass or fail."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(60_000)
        # Dagster's community sign-up dialog pops up over whatever page is open: dismiss it each time.
        page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
        try:
            yield page
        finally:
            page.screenshot(path=last_screenshot)
            browser.close()


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
    from playwright.sync_api import expect

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

    with browser_page(screenshots / "last.png") as page:
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

        # The contact sheet is in the table itself, no "[Show Markdown]" to click.
        sheet = metadata.locator("tr").filter(has_text="contact_sheet").locator("img")
        sheet.scroll_into_view_if_needed()
        expect(sheet).to_be_visible()
        page.screenshot(path=screenshots / "4_preview.png")
        assert shown_width(sheet) > 500, "the contact sheet did not render in place"
        expect(metadata).not_to_contain_text("Show Markdown")


def shown_width(image: Any) -> int:
    """The natural width of a loaded image; 0 while it loads or when it failed to."""
    return image.evaluate("img => img.complete ? img.naturalWidth : 0")


@pytest.fixture
def daemon(webserver: tuple[str, Path], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The Dagster daemon beside the webserver, with three manifests for it: `smoke` (two good clips),
    `broken` (one file that is no video: a shard its checks block) and `invalid` (a row with an
    empty path)."""
    base, data = webserver
    (data / "videos" / "bad.mp4").write_bytes(b"\x00not a video" * 64)
    (data / "manifests" / "broken.csv").write_text("path\n../videos/bad.mp4\n")
    (data / "manifests" / "invalid.csv").write_text("path,label\n../videos/a.mp4,x\n,y\n")
    command = [venv_tool("dagster-daemon"), "run", "-w", "workspace.yaml"]
    with serving(command, tmp_path / "daemon.log", lambda: True, "dagster-daemon"):
        yield base, data


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout_s:.0f} s"
        time.sleep(2)


def latest_summary() -> dict[str, Any]:
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("frames_summary"))
    materialization = event.asset_materialization if event else None
    return {k: v.value for k, v in materialization.metadata.items()} if materialization else {}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/run installs it)")
def test_ui_shows_what_the_daemon_did_without_opening_a_log(daemon: tuple[str, Path], screenshots: Path) -> None:
    """The sensor registers the manifests and runs their shards, the summary refreshes itself, and in
    the UI: each shard's check result on its own, pictures in place, the blocked run's reason with a
    short stack and a tag, the sensor tick that failed on the invalid manifest, and the schedule's
    preview saying why it runs nothing."""
    from playwright.sync_api import expect

    base, data = daemon
    store = FramesStore(data)
    wait_for("smoke-00000 published", lambda: store.has_index("smoke-00000"))
    wait_for("broken-00000 blocked", lambda: "broken-00000" in store.blocked_shards())
    wait_for(
        "frames_summary refreshed by its automation condition",
        lambda: (latest_summary().get("num_shards_published"), latest_summary().get("num_shards_blocked")) == (1, 1),
    )
    with dg.DagsterInstance.get() as instance:
        (blocked_run,) = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": "broken-00000"}))
    assert blocked_run.tags["frames_pipeline/why"] == "never published"

    with browser_page(screenshots / "last_daemon.png") as page:
        # The summary's chart, in place, on its own axes.
        page.goto(f"{base}/assets/frames_summary", wait_until="networkidle")
        chart = page.locator("img[alt='shards by state and failed videos by reason']").first
        chart.scroll_into_view_if_needed()
        expect(chart).to_be_visible()
        assert shown_width(chart) > 500, "the summary chart did not render in place"
        page.screenshot(path=screenshots / "5_summary.png")

        # One result per shard: broken-00000 failed, smoke-00000 passed, each with its own reason.
        page.goto(f"{base}/assets/video_frames?view=checks&checkDetail=failed_ratio", wait_until="networkidle")
        page.get_by_role("tab", name="Partitions").last.click()
        expect(page.get_by_text("Failed (1)")).to_be_visible()
        expect(page.get_by_text("Passed (1)")).to_be_visible()
        page.get_by_text("broken-00000", exact=True).filter(visible=True).last.click()
        expect(page.get_by_text("1/1 video(s) failed (ratio 1.00, limit 0.5)")).to_be_visible()
        page.screenshot(path=screenshots / "6_check_partitions.png")

        # The blocked run: the reason in one line, Dagster's two-frame stack, and a tag.
        page.goto(f"{base}/runs/{blocked_run.run_id}", wait_until="networkidle")
        expect(page.get_by_text("shard broken-00000 not published: 1/1 video(s) failed").first).to_be_visible()
        failure = page.get_by_text("1 blocking asset check failed with ERROR severity").first
        expect(failure).to_be_visible()
        expect(page.locator("body")).not_to_contain_text("_yield_compute_results")  # no trace into our code
        page.screenshot(path=screenshots / "7_blocked_run.png")
        page.get_by_role("button", name="View tags and config").click()
        expect(page.get_by_text("frames_pipeline/blocked_by").first).to_be_visible()
        page.keyboard.press("Escape")

        # The sensor tick that could not register invalid.csv is red, and says why.
        sensor = f"{base}/locations/frames_pipeline/sensors/manifest_sensor"
        deadline = time.monotonic() + 180
        while True:
            page.goto(sensor, wait_until="networkidle")
            if page.get_by_text("Failure", exact=True).count():
                break
            assert time.monotonic() < deadline, "no failed tick for the invalid manifest in 180 s"
            time.sleep(10)
        page.get_by_text("View", exact=True).first.click()
        expect(page.get_by_text("invalid.csv: row 2, column 'path': empty or not text").first).to_be_visible()
        page.screenshot(path=screenshots / "8_failed_tick.png")
        page.keyboard.press("Escape")

        # The schedule's preview: nothing to run, and why each shard waits.
        page.goto(f"{base}/locations/frames_pipeline/schedules/pending_shards_schedule", wait_until="networkidle")
        page.get_by_role("button", name="Preview tick result").click()
        page.get_by_role("button", name="Continue").click()
        reason = page.get_by_text("waits for a change to its manifest, the shard size or the settings")
        expect(reason).to_be_visible()
        page.screenshot(path=screenshots / "9_schedule_preview.png")
