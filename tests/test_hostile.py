"""Hostile inputs and unlucky faults (issue 19), each through the path a user or an attacker takes:
planted links and colliding names as real files, concurrent readers and writers as real processes,
decodes checked frame for frame against the ffmpeg CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from numpy.typing import NDArray

from frames_pipeline.decode import (
    DecodeError,
    DecodeOptions,
    DecoderPool,
    Reason,
    VideoJob,
    _npy,
    extract_frames,
    extract_to_file,
    find_ffmpeg,
    probe,
    pts_path,
)
from frames_pipeline.demo.clips import with_display_matrix, write_video
from frames_pipeline.shards import FRAME_COUNT_CHECK, ShardInputs, decode_shard
from frames_pipeline.storage import locations
from frames_pipeline.storage.manifest import ManifestRow, read_manifest
from frames_pipeline.storage.store import FramesStore, published_versions

CLI = [sys.executable, "-m", "frames_pipeline.cli"]
# What a shard of these tests is cut from and decoded with (shards.ShardInputs).
INPUTS = ShardInputs("manifest-hash", 100, DecodeOptions(mode="ffmpeg_cpu"), max_failed_ratio=0.5)
MAX_MAD = 4.0  # of 255, per frame, against the ffmpeg CLI (as in test_decode)
# Containers whose timestamps restart, are partly missing or absent, and an edit list: 60 frames
# each but the raw stream (30), all at 30 fps.
TIMING_CASES = ["ts_restart", "size_change", "missing_pts", "edit_list", "annexb"]
FRAME_STEP_S = 1 / 30


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


def cli_frames(path: Path) -> NDArray[np.uint8]:
    """What the ffmpeg CLI shows (autorotated, every decoded frame), area-scaled to 27x48."""
    args = "-map 0:v:0 -vf scale=48:27:flags=area -fps_mode passthrough -f rawvideo -pix_fmt rgb24 -"
    done = subprocess.run(
        [find_ffmpeg(), "-nostdin", "-loglevel", "error", "-i", str(path), *args.split()],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return np.frombuffer(done.stdout, dtype=np.uint8).reshape(-1, 27, 48, 3)


def frame_mads(ours: NDArray[np.uint8], reference: NDArray[np.uint8]) -> NDArray[np.float64]:
    """Mean absolute difference of each frame pair: a frame out of place shows, not just a count."""
    assert ours.shape == reference.shape, f"{ours.shape} != {reference.shape}"
    return np.abs(ours.astype(np.int16) - reference.astype(np.int16)).mean(axis=(1, 2, 3))


# 1. Links planted at output names ---------------------------------------------------------------

# A separate process that plants links where the writer of main put its temporary files
# (".<name>.<pid>.partial", its own pid being easy to learn), then extracts.
_PLANT_AND_EXTRACT = """
import os, sys
from pathlib import Path
from frames_pipeline.decode import extract_to_file
clip, out, victim = map(Path, sys.argv[1:])
out.mkdir()
for name in ("clip.npy", "clip.pts.npy"):
    (out / f".{name}.{os.getpid()}.partial").symlink_to(victim)
print(extract_to_file(clip, out / "clip.npy").num_frames)
"""


def test_a_link_planted_at_a_temporary_name_is_never_written_through(
    edge_corpus: dict[str, Path], tmp_path: Path
) -> None:
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"do not touch!")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", _PLANT_AND_EXTRACT, str(edge_corpus["pattern"]), str(out), str(victim)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert victim.read_bytes() == b"do not touch!"
    assert np.load(out / "clip.npy").shape == (30, 27, 48, 3) and np.load(out / "clip.pts.npy").shape == (30,)
    assert sorted(p.name for p in out.iterdir() if not p.is_symlink()) == ["clip.npy", "clip.pts.npy"]


def test_a_guessed_temporary_name_is_skipped_and_a_linked_output_is_refused(
    edge_corpus: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"do not touch!")
    out = tmp_path / "out" / "clip.npy"
    out.parent.mkdir()
    # An attacker who guessed the random part: the writer must move on to another name.
    guesses = iter(["guessed", "guessed", "fresh1", "fresh2"])
    monkeypatch.setattr(_npy.secrets, "token_hex", lambda _n: next(guesses))
    for final in (out, pts_path(out)):
        final.with_name(f"{_npy._partial_prefix(final)}guessed.partial").symlink_to(victim)
    assert extract_to_file(edge_corpus["pattern"], out).num_frames == 30
    assert victim.read_bytes() == b"do not touch!" and np.load(out).shape == (30, 27, 48, 3)
    monkeypatch.undo()
    # A link at the output name itself is not replaced either (nor written through).
    linked = tmp_path / "out" / "linked.npy"
    linked.symlink_to(victim)
    with pytest.raises(DecodeError) as caught:
        extract_to_file(edge_corpus["pattern"], linked)
    assert caught.value.reason == Reason.WRITE_FAILED and "not a regular file" in caught.value.message
    assert linked.is_symlink() and victim.read_bytes() == b"do not touch!"
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial") and not p.is_symlink()]


def test_a_killed_writers_leftovers_are_found_from_the_final_name(tmp_path: Path) -> None:
    final = tmp_path / ("v" * 246 + ".npy")  # the longest name whose .pts.npy still fits 255 bytes
    writer = _npy.NpyStreamWriter(final, (27, 48, 3))
    writer.write(np.zeros((2, 27, 48, 3), np.uint8))
    (leftover,) = _npy.partials(final)  # what a killed writer leaves
    assert len(leftover.name.encode()) < 64
    _npy.remove_partials(final)
    assert not leftover.exists() and _npy.partials(final) == []


# 2. Output names that collide ---------------------------------------------------------------------


def test_cli_output_names_cannot_collide(edge_corpus: dict[str, Path], tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "clip.mp4").symlink_to(edge_corpus["pattern"])  # 30 frames
    (videos / "clip.pts.mp4").symlink_to(edge_corpus["vfr"])  # 40 frames
    out = tmp_path / "out"
    done = run_cli("extract", str(videos / "clip.mp4"), str(videos / "clip.pts.mp4"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["clip.npy", "clip.pts.npy", "clip_pts.npy", "clip_pts.pts.npy"]
    assert np.load(out / "clip.npy").shape[0] == np.load(out / "clip.pts.npy").shape[0] == 30
    assert np.load(out / "clip.pts.npy").ndim == 1  # timestamps, not the other video's frames
    assert np.load(out / "clip_pts.npy").shape[0] == np.load(out / "clip_pts.pts.npy").shape[0] == 40
    # Names equal but for case are one file on macOS and Windows: refused, as equal names are.
    (videos / "Clip.mp4").symlink_to(edge_corpus["vfr"])
    refused = run_cli("extract", str(videos / "clip.mp4"), str(videos / "Clip.mp4"), "--out", str(tmp_path / "o2"))
    assert refused.returncode == 2 and "share an output name" in refused.stderr


# 3 and 7. Timestamps that restart or are missing, edit lists, raw streams ------------------------


@pytest.mark.parametrize("case", TIMING_CASES)
def test_every_decodable_frame_is_kept_in_order_with_steady_timestamps(edge_corpus: dict[str, Path], case: str) -> None:
    result = extract_frames(edge_corpus[case], mode="ffmpeg_cpu")
    reference = cli_frames(edge_corpus[case])
    assert result.frames is not None
    assert (
        result.num_frames == result.info.num_frames_from_content == len(reference) == (30 if case == "annexb" else 60)
    )
    assert frame_mads(result.frames, reference).max() <= MAX_MAD  # the same frames in the same order
    # One frame step apart (Matroska rounds to milliseconds), however the file kept its times.
    np.testing.assert_allclose(np.diff(result.pts_s), FRAME_STEP_S, atol=2e-3)
    assert result.info.duration_s_from_content == pytest.approx(result.num_frames * FRAME_STEP_S, abs=0.05)
    assert result.info.fps_from_content == pytest.approx(30, abs=0.5)


def test_what_happened_to_the_timestamps_is_said(edge_corpus: dict[str, Path]) -> None:
    def warnings(case: str) -> str:
        return " ".join(extract_frames(edge_corpus[case], mode="ffmpeg_cpu").warnings)

    assert "timestamps jump back from" in warnings("ts_restart") and "shifted by +1.000 s" in warnings("ts_restart")
    assert "30 frame(s) had no timestamp" in warnings("missing_pts")
    assert "no frame has a timestamp" in warnings("annexb")
    assert warnings("edit_list") == ""  # hidden frames are the file's intent, not damage


def test_a_shard_of_such_files_passes_its_frame_count_check(edge_corpus: dict[str, Path], tmp_path: Path) -> None:
    rows = [ManifestRow(i, case, str(edge_corpus[case])) for i, case in enumerate(TIMING_CASES, start=1)]
    with DecoderPool(DecodeOptions(mode="ffmpeg_cpu"), workers=2) as pool:
        report = decode_shard(FramesStore(tmp_path), "t-00000", rows, pool.run, inputs=INPUTS)
    assert {c.name: c.passed for c in report.checks}[FRAME_COUNT_CHECK], report.checks
    assert [(r["status"], r["num_frames"]) for r in report.records] == [("ok", 60)] * 4 + [("ok", 30)]


# 4. Readers while a shard is published again and again ------------------------------------------

_REPUBLISH = """
import sys
import numpy as np
from frames_pipeline.decode import pts_path
from frames_pipeline.storage.shard_writer import ShardWriter
from frames_pipeline.storage.store import FramesStore
root, count = sys.argv[1], int(sys.argv[2])
store = FramesStore(root)
for n in range(count):
    with ShardWriter(store, "r-00000") as shard:
        records = []
        for v in range(4):
            frames = np.full((5, 27, 48, 3), n % 256, np.uint8)
            np.save(shard.frames_path(f"v{v}"), frames)
            np.save(pts_path(shard.frames_path(f"v{v}")), np.arange(5, dtype=np.float64))
            records.append({"manifest_row": v + 1, "video_id": f"v{v}", "status": "ok", "num_frames": 5,
                            "frames_file": shard.frames_file(f"v{v}")})
        shard.write_index(records, manifest_hash="m", shard_size=100)
        shard.publish()
"""

# Each documented way of reading a published shard, in a loop, counting what fails.
_READ_WHILE_PUBLISHED = """
import sys, time
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pathlib import Path
from frames_pipeline.storage.store import FramesStore

root, way, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
store = FramesStore(root)
shard = Path(store.shard_dir("r-00000"))
reads = failures = 0
examples = []
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        if way == "read_frames":
            for v in range(4):
                frames, pts = store.read_frames("r-00000", f"v{v}")
                assert frames.shape == (5, 27, 48, 3) and pts.shape == (5,)
                reads += 1
            continue
        if way == "read_index":
            index = store.read_index("r-00000")
        else:  # pyarrow or pandas through one open handle, as the README says
            index = pq.read_table(pa.OSFile(str(shard / "index.parquet"))).to_pandas()
        time.sleep(0.002)  # a reader does some work between reading the index and the arrays
        for frames_file in index["frames_file"]:
            assert np.load(shard / frames_file).shape == (5, 27, 48, 3)
            reads += 1
    except Exception as exc:
        failures += 1
        examples.append(f"{type(exc).__name__}: {exc}")
print(reads, failures, examples[:3])
"""


def test_readers_never_miss_an_array_while_the_shard_is_republished(tmp_path: Path) -> None:
    root = str(tmp_path / "data")
    subprocess.run([sys.executable, "-c", _REPUBLISH, root, "1"], check=True, timeout=120)
    writer = subprocess.Popen([sys.executable, "-c", _REPUBLISH, root, "150"])
    readers = {
        way: subprocess.Popen(
            [sys.executable, "-c", _READ_WHILE_PUBLISHED, root, way, "8"], stdout=subprocess.PIPE, text=True
        )
        for way in ("read_frames", "read_index", "one_handle")
    }
    try:
        results = {way: reader.communicate(timeout=120)[0].split(maxsplit=2) for way, reader in readers.items()}
        assert writer.wait(timeout=300) == 0
    finally:
        for process in (writer, *readers.values()):
            process.kill()
            process.wait()
    for way, (reads, failures, examples) in results.items():
        assert int(reads) > 100 and int(failures) == 0, f"{way}: {failures} of {reads} reads failed: {examples}"
    assert len(published_versions(FramesStore(root), "r-00000").replaced) >= 100  # all still in their grace


# 5 and 8. Inputs whose reads would never end, and URIs longer than a file name ------------------


@pytest.mark.skipif(
    not (os.path.exists("/proc/kmsg") and os.access("/proc/kmsg", os.R_OK)), reason="needs root to open /proc/kmsg"
)
@pytest.mark.parametrize("command", ["probe", "extract"])
def test_a_kernel_file_that_blocks_is_refused_at_once(command: str, tmp_path: Path) -> None:
    args = ["--out", str(tmp_path / "out")] if command == "extract" else []
    started = time.monotonic()
    done = run_cli(command, "/proc/kmsg", *args, timeout=60)
    assert done.returncode == 1 and "not_a_video" in done.stderr
    assert time.monotonic() - started < 30


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "fifo.mp4"
    os.mkfifo(path)
    yield path


def test_devices_fifos_and_empty_kernel_files_are_refused_before_a_read(fifo: Path) -> None:
    reasons = {}
    for source in (fifo, Path("/dev/zero"), Path("/proc/self/status")):
        with pytest.raises(DecodeError) as caught:
            probe(source)
        reasons[source.name] = (caught.value.reason, caught.value.message)
    assert reasons == {
        "fifo.mp4": (Reason.NOT_A_VIDEO, "a FIFO (named pipe), not a regular file"),
        "zero": (Reason.NOT_A_VIDEO, "a character device, not a regular file"),
        "status": (Reason.NOT_A_VIDEO, "empty file (or a kernel file whose reads can block)"),
    }


def test_a_data_uri_is_a_remote_input_not_an_internal_error(tmp_path: Path) -> None:
    uri = "data:video/mp4;base64," + "AAAA" * 1200  # longer than any path (4096 bytes)
    with pytest.raises(DecodeError) as caught:
        probe(uri)
    assert caught.value.reason == Reason.REMOTE_INPUT
    with DecoderPool(DecodeOptions(mode="ffmpeg_cpu"), workers=1) as pool:
        (outcome,) = pool.run([VideoJob("uri", uri, str(tmp_path / "uri.npy"))])
    assert outcome.error_reason == Reason.REMOTE_INPUT.value


# 6. Display matrices that mirror ----------------------------------------------------------------


@pytest.fixture(scope="module")
def orientations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One clip per display matrix the ffmpeg CLI can write: turns, flips and both."""
    folder = tmp_path_factory.mktemp("orientations")
    cases = {
        f"r{rotation}{'h' * hflip}{'v' * vflip}": (rotation, hflip, vflip)
        for rotation in (0, 90, 180, 270)
        for hflip, vflip in ((False, False), (True, False), (False, True))
    }
    return {
        name: with_display_matrix(
            write_video(folder / f".{name}.mp4", 6), folder / f"{name}.mp4", rotation=r, hflip=h, vflip=v
        )
        for name, (r, h, v) in cases.items()
    }


def test_a_mirroring_display_matrix_is_applied_like_the_ffmpeg_cli(
    edge_corpus: dict[str, Path], orientations: dict[str, Path]
) -> None:
    info = probe(edge_corpus["mirrored"])
    assert (info.rotation, info.mirrored) == (0, True)  # PyAV's angle alone says -180
    for name, path in {"mirrored": edge_corpus["mirrored"], **orientations}.items():
        frames = extract_frames(path, mode="ffmpeg_cpu").frames
        assert frames is not None
        assert frame_mads(frames, cli_frames(path)).max() <= MAX_MAD, name


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["pynvc", "ffmpeg_gpu"])
def test_gpu_modes_keep_every_frame_and_orientation_too(
    edge_corpus: dict[str, Path], orientations: dict[str, Path], mode: str
) -> None:
    for name, path in {case: edge_corpus[case] for case in [*TIMING_CASES, "mirrored"]} | orientations.items():
        result = extract_frames(path, mode=mode, fallback_to_cpu=False)
        assert result.frames is not None and result.num_frames == result.info.num_frames_from_content, name
        assert frame_mads(result.frames, cli_frames(path)).max() <= MAX_MAD, name
        assert np.all(np.diff(result.pts_s) > 0), name


# 9. Long file names ---------------------------------------------------------------------------------


def test_a_250_byte_file_name_decodes(edge_corpus: dict[str, Path], tmp_path: Path) -> None:
    name = "v" * 246 + ".mp4"
    (tmp_path / name).symlink_to(edge_corpus["pattern"])
    done = run_cli("extract", str(tmp_path / name), "--out", str(tmp_path / "out"), "--json")
    assert done.returncode == 0, done.stderr
    output = Path(json.loads(done.stdout)["output"])
    assert output.name.startswith("v" * 80) and np.load(output).shape == (30, 27, 48, 3)
    # The library takes any name the file system takes: here one whose .pts.npy is 254 bytes.
    long_output = tmp_path / "lib" / ("v" * 246 + ".npy")
    assert extract_to_file(edge_corpus["pattern"], long_output).num_frames == 30
    assert np.load(pts_path(long_output)).shape == (30,)


def test_an_output_name_the_file_system_cannot_hold_fails_before_decoding(
    edge_corpus: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(DecodeError) as caught:
        extract_to_file(edge_corpus["pattern"], tmp_path / ("v" * 250 + ".npy"))
    assert caught.value.reason == Reason.WRITE_FAILED and "names here hold at most 255" in caught.value.message
    assert list(tmp_path.iterdir()) == []


# 10. Parquet manifests and indexes ---------------------------------------------------------------


def test_parquet_manifest_validation_never_aborts(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": [f"v{i}.mp4" for i in range(100)]}), manifest)
    codes = [run_cli("manifest", "validate", str(manifest)).returncode for _ in range(20)]
    assert codes == [0] * 20  # a pyarrow read of a Python file object aborted 1 to 16 of 20 at exit


def test_parquet_is_only_read_through_native_handles(
    edge_corpus: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources: list[object] = []

    def recording(read: Callable[..., Any]) -> Callable[..., Any]:
        def read_and_record(source: object, *args: Any, **kwargs: Any) -> Any:
            sources.append(source)
            return read(source, *args, **kwargs)

        return read_and_record

    monkeypatch.setattr(locations.pq, "read_table", recording(pq.read_table))
    monkeypatch.setattr(locations.pq, "read_schema", recording(pq.read_schema))
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": [str(edge_corpus["pattern"])]}), manifest)
    assert len(read_manifest(manifest)) == 1
    store = FramesStore(tmp_path / "data")
    with DecoderPool(DecodeOptions(mode="ffmpeg_cpu"), workers=1) as pool:
        for _ in range(2):  # the second publish reads which version the first published
            rows = [ManifestRow(1, "a", str(edge_corpus["pattern"]))]
            decode_shard(store, "p-00000", rows, pool.run, inputs=INPUTS, resume=False)
    assert store.read_frames("p-00000", "a")[0].shape == (30, 27, 48, 3)
    assert len(sources) >= 3 and all(isinstance(source, pa.NativeFile) for source in sources), sources


# 11. Messages instead of tracebacks -----------------------------------------------------------------


def test_check_files_on_a_path_longer_than_any_file_name(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"  # CSV stops at 128 KiB fields; JSON Lines (and Parquet) take any length
    manifest.write_text(json.dumps({"path": "x" * 10_000_000 + ".mp4"}) + "\n" + json.dumps({"path": "ok.mp4"}) + "\n")
    (tmp_path / "ok.mp4").write_bytes(b"video")
    done = run_cli("manifest", "validate", "--check-files", str(manifest))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    first, last = done.stdout.splitlines()
    assert first.startswith(f"{manifest}:1:path: File name too long: ") and len(first) < 400
    assert last == f"{manifest}: 1 rows ok, 0 problem(s), 1 file problem(s)"


def test_extract_into_a_folder_that_cannot_be_made(
    edge_corpus: dict[str, Path], tmp_path: Path, read_only_folder: Path
) -> None:
    (tmp_path / "a_file").write_bytes(b"")
    for out, why in (
        (read_only_folder / "out", "Read-only file system|Permission denied"),
        (tmp_path / "a_file" / "out", "Not a directory"),
    ):
        done = run_cli("extract", str(edge_corpus["pattern"]), "--out", str(out))
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith(f"cannot create the output folder {out}: ")
        assert any(reason in done.stderr for reason in why.split("|")), done.stderr
