"""Security: no shell, no network unless asked, output names that cannot escape, and hostile
manifests and video bytes that end in recorded errors only (property-based, bounded time); damaged
containers with edit lists, timestamp restarts and missing timestamps lose no frame the ffmpeg CLI
decodes."""

from __future__ import annotations

import ast
import csv
import functools
import http.server
import json
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import frames_pipeline
from frames_pipeline.decode import DecodeError, DecodeOptions, Reason, extract_frames, find_ffmpeg, probe
from frames_pipeline.decode._backends.ffmpeg_gpu import FFmpegGPUBackend
from frames_pipeline.demo.clips import write_video
from frames_pipeline.storage.manifest import MANIFEST_SUFFIXES, ManifestError, read_manifest, safe_video_id, unique_ids

PACKAGE = Path(frames_pipeline.__file__).parent
# Calls that hand a string to a shell.
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput")}
# Fixed seeds keep CI reproducible; a failure prints the example to replay.
FUZZ = settings(derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


def shell_uses(source: str, name: str) -> list[str]:
    """Where ``source`` runs a shell: ``shell=`` anything but False, or a call from SHELL_CALLS."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and any((node.module, a.name) in SHELL_CALLS for a in node.names):
            found.append(f"{name}:{node.lineno}: imports a shell call")
        if not isinstance(node, ast.Call):
            continue
        if any(
            k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
            for k in node.keywords
        ):
            found.append(f"{name}:{node.lineno}: shell=")
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and (func.value.id, func.attr) in SHELL_CALLS
        ):
            found.append(f"{name}:{node.lineno}: {func.value.id}.{func.attr}")
    return found


def test_no_shell_anywhere() -> None:
    planted = "import os, subprocess\nfrom os import popen\nsubprocess.run('ls', shell=True)\nos.system('ls')\n"
    assert len(shell_uses(planted, "planted")) == 3  # the scan finds what it looks for
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 20
    assert [hit for path in sources for hit in shell_uses(path.read_text(), str(path))] == []


# Any text, lone surrogates included, and any bytes as Python names an undecodable file (surrogate escapes).
ANY_TEXT = st.text(st.characters(codec=None) | st.characters(categories=["Cs"]))
ANY_FILE_NAME = st.binary().map(lambda raw: raw.decode("utf-8", "surrogateescape"))


@given(ANY_TEXT | ANY_FILE_NAME)
@FUZZ
def test_safe_video_id_cannot_leave_the_shard_folder(raw: str) -> None:
    video_id = safe_video_id(raw)
    assert video_id not in ("", ".", "..") and not video_id.startswith(".")
    assert not set(video_id) & {"/", "\\", "\x00", "~"}
    assert video_id.isprintable() and len(video_id.encode("utf-8")) <= 100  # encodes: no lone surrogates
    shard = Path("/data/frames/s-00000")
    for name in (f"{video_id}.npy", f"{video_id}.pts.npy"):
        assert (shard / name).resolve().parent == shard


@given(st.lists(st.text(alphabet="aAß.ptsPTS/_~-x", max_size=8), max_size=12))
@FUZZ
def test_no_two_rows_share_a_file(raws: list[str]) -> None:
    ids = unique_ids([safe_video_id(raw) for raw in raws])
    names = [f"{video_id}{ext}".casefold() for video_id in ids for ext in (".npy", ".pts.npy")]
    assert len(set(names)) == len(names)  # also on case-insensitive file systems


def test_ffmpeg_gpu_command_reads_only_the_local_file(edge_corpus: dict[str, Path]) -> None:
    backend = object.__new__(FFmpegGPUBackend)  # no GPU needed to build the command
    backend.binary, backend.gpu_id = "ffmpeg", 0
    info = replace(probe(edge_corpus["pattern"]), path="/videos/-y http:x.mp4")
    args, _, _ = backend.command(info, DecodeOptions())
    assert "-nostdin" in args
    source = args.index("-i")
    assert args[source + 1] == "file:/videos/-y http:x.mp4"  # never an option, a protocol or a shell word
    assert args[args.index("-protocol_whitelist") + 1] == "file" and args.index("-protocol_whitelist") < source
    remote, _, _ = backend.command(replace(info, path="https://host/v.mp4"), DecodeOptions(allow_remote=True))
    assert "-protocol_whitelist" not in remote and remote[remote.index("-i") + 1] == "https://host/v.mp4"


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, list[str], Path]]:
    """An HTTP server on 127.0.0.1 serving a streamable clip; yields (base URL, paths requested, folder)."""
    write_video(tmp_path / "clip.mp4", 30, container_options={"movflags": "+faststart"})
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            requested.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested, tmp_path
    finally:
        server.shutdown()
        thread.join()


def test_network_only_when_remote_input_is_enabled(http_server: tuple[str, list[str], Path]) -> None:
    base, requested, folder = http_server
    playlist = folder / "list.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{base}/clip.mp4\n#EXT-X-ENDLIST\n")
    concat = folder / "list.txt"
    concat.write_text(f"ffconcat version 1.0\nfile '{base}/clip.mp4'\n")
    hostile = [
        f"{base}/clip.mp4",
        f"concat:{base}/clip.mp4",
        f"subfile,,start,0,end,0,,:{base}/clip.mp4",
        playlist,
        concat,
    ]
    reasons = []
    for source in hostile:
        with pytest.raises(DecodeError) as caught:
            extract_frames(source, mode="ffmpeg_cpu")
        reasons.append(caught.value.reason)
    # "subfile,," is no protocol to us, so it is a local name, and no such file exists.
    assert reasons == [Reason.REMOTE_INPUT] * 2 + [Reason.NOT_FOUND] + [Reason.REMOTE_INPUT] * 2
    assert requested == []

    result = extract_frames(f"{base}/clip.mp4", allow_remote=True)  # asked for: the same URL is read
    assert result.num_frames == 30 and requested


MANIFEST_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec=None), max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
COLUMNS = st.sampled_from(["path", "video_id", "label", "probe_x", "manifest_row", " path ", ""])


def read_or_reject(name: str, data: bytes) -> None:
    """Parse ``data`` as manifest ``name``: a valid row list or a ManifestError, nothing else."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            rows = read_manifest(path)
        except ManifestError as exc:
            assert exc.file == str(path) and exc.problems
            return
    ids = [row.video_id for row in rows]
    assert len({i.casefold() for i in ids}) == len(ids)
    for base, mark, number in (i.partition("~") for i in ids):
        assert safe_video_id(base) == base and (number.isdigit() if mark else not number)
    assert all(isinstance(row.path, str) and "\x00" not in row.path for row in rows)


@given(st.binary(max_size=2000), st.sampled_from(MANIFEST_SUFFIXES))
@settings(FUZZ, max_examples=150, deadline=2000)
def test_manifest_parser_on_any_bytes(data: bytes, suffix: str) -> None:
    read_or_reject(f"m{suffix}", data)


@given(st.text(st.characters(codec=None, exclude_categories=["Cs"]), max_size=500), st.sampled_from([".csv", ".jsonl"]))
@settings(FUZZ, max_examples=150, deadline=2000)
def test_manifest_parser_on_any_text(text: str, suffix: str) -> None:
    read_or_reject(f"m{suffix}", text.encode("utf-8"))


@given(st.lists(st.dictionaries(COLUMNS, MANIFEST_VALUES, max_size=4), max_size=6))
@settings(FUZZ, max_examples=150, deadline=2000)
def test_manifest_parser_on_hostile_records(records: list[dict[str, object]]) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in records)  # \ud800-style escapes included
    read_or_reject("m.jsonl", lines.encode())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.csv"
        columns = sorted({k for r in records for k in r})
        with open(path, "w", newline="", encoding="utf-8", errors="surrogatepass") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            writer.writerows([[str(r.get(c, "")) for c in columns] for r in records])
        read_or_reject("m.csv", path.read_bytes())


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A few frames with the index first, so that mutations near the start reach the demuxer's tables."""
    path = tmp_path_factory.mktemp("fuzz") / "small.mp4"
    return write_video(path, 8, size=(64, 96), container_options={"movflags": "+faststart"}).read_bytes()


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few flipped, inserted, zeroed or cut bytes, half of them in the first kilobyte."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, min(1024, len(buf))) | st.integers(0, len(buf)))
        edit = draw(st.sampled_from(["flip", "insert", "zero", "cut"]))
        if edit == "flip" and pos < len(buf):
            buf[pos] ^= draw(st.integers(1, 255))
        elif edit == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif edit == "zero":
            buf[pos : pos + draw(st.integers(1, 64))] = bytes(64)
        else:
            del buf[pos:]
    return bytes(buf)


@given(data=st.data())
@settings(FUZZ, max_examples=200, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_mutated_video_bytes_give_frames_or_a_reason(small_clip: bytes, data: st.DataObject) -> None:
    video = data.draw(mutated(small_clip))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clip.mp4"
        path.write_bytes(video)
        for attempt in (probe, functools.partial(extract_frames, mode="ffmpeg_cpu")):
            try:
                result = attempt(path)
            except DecodeError as exc:
                assert exc.hint and exc.message
                continue
            if attempt is probe:
                assert result.num_frames_from_content > 0 and result.width > 0 and result.height > 0
            else:
                assert result.frames is not None and result.frames.dtype == np.uint8
                assert result.frames.shape == (result.num_frames, 27, 48, 3) and result.num_frames > 0
                assert np.all(np.diff(result.pts_s) > 0)


def cli_decodable_frames(path: Path) -> int:
    """How many frames the ffmpeg CLI decodes from ``path``'s first video stream, none dropped or
    duplicated (``-fps_mode passthrough``); 0 when it cannot open the file."""
    args = ["-map", "0:v:0", "-fps_mode", "passthrough", "-f", "framecrc", "-"]
    done = subprocess.run(
        [find_ffmpeg(), "-nostdin", "-v", "quiet", "-i", str(path), *args], capture_output=True, text=True, timeout=60
    )
    return sum(1 for line in done.stdout.splitlines() if line and not line.startswith("#"))


# Containers whose timing the decoder must get right by itself (see tests/test_hostile.py).
TIMING_CONTAINERS = ["edit_list", "ts_restart", "size_change", "missing_pts"]


@given(data=st.data(), case=st.sampled_from(TIMING_CONTAINERS))
@settings(FUZZ, max_examples=80, deadline=None)
def test_mutated_timing_containers_lose_no_frame_the_ffmpeg_cli_decodes(
    edge_corpus: dict[str, Path], case: str, data: st.DataObject
) -> None:
    video = data.draw(mutated(edge_corpus[case].read_bytes()))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / edge_corpus[case].name
        path.write_bytes(video)
        decodable = cli_decodable_frames(path)
        try:
            result = extract_frames(path, mode="ffmpeg_cpu")
        except DecodeError as exc:
            assert exc.hint and decodable == 0, f"{exc} although the ffmpeg CLI decodes {decodable} frames"
            return
    assert result.num_frames >= decodable
    assert np.all(np.diff(result.pts_s) > 0)


def test_what_the_fuzzing_found_stays_fixed(small_clip: bytes, tmp_path: Path) -> None:
    # A handler name that is not UTF-8 made PyAV raise UnicodeDecodeError on open; the video is fine.
    latin1 = tmp_path / "latin1_tag.mp4"
    latin1.write_bytes(small_clip.replace(b"VideoHandler", b"\xd6ideoHandler"))
    assert extract_frames(latin1).num_frames == 8
    # A sample description cut short leaves a stream without codec context: probe raised AttributeError.
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(small_clip[: small_clip.index(b"url ")])
    with pytest.raises(DecodeError) as caught:
        probe(cut)
    assert caught.value.reason == Reason.UNSUPPORTED_CODEC
