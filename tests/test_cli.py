"""``frames-pipeline``: what it prints and the exit codes scripts rely on."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from frames_pipeline.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from frames_pipeline.decode import cuda_device_count, extract_frames
from frames_pipeline.storage.manifest import SHARD_SIZE_ENV, file_hash
from frames_pipeline.storage.shard_writer import ShardWriter
from frames_pipeline.storage.store import BlockedShard, FramesStore


def test_extract_writes_arrays_and_fails_loudly(
    edge_corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(
        ["extract", str(edge_corpus["pattern"]), str(edge_corpus["audio_only"]), "--out", str(out), "--hw", "36x64"]
    )
    printed = capsys.readouterr()
    assert code == EXIT_FAILED
    assert np.load(out / "pattern.npy").shape == (30, 36, 64, 3)
    assert np.load(out / "pattern.pts.npy").shape == (30,)
    assert "1/2 videos ok, 30 frames" in printed.out
    assert "FAILED" in printed.err and "no_video_stream" in printed.err
    assert sorted(p.name for p in out.iterdir()) == ["pattern.npy", "pattern.pts.npy"]


def test_extract_json_lines_and_success_code(
    edge_corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["extract", str(edge_corpus["vfr"]), "--out", str(tmp_path), "--json", "--mode", "ffmpeg_cpu"]) == EXIT_OK
    )
    (line,) = capsys.readouterr().out.splitlines()
    row = json.loads(line)
    assert row["status"] == "ok" and row["decode_mode"] == "ffmpeg_cpu" and row["num_frames"] == 40  # index names


def test_extract_can_skip_the_loop_filter(edge_corpus: dict[str, Path], tmp_path: Path) -> None:
    video = str(edge_corpus["pattern"])
    assert main(["extract", video, "--out", str(tmp_path / "default"), "--mode", "ffmpeg_cpu"]) == EXIT_OK
    assert (
        main(["extract", video, "--out", str(tmp_path / "fast"), "--mode", "ffmpeg_cpu", "--skip-loop-filter"])
        == EXIT_OK
    )
    fast = extract_frames(video, mode="ffmpeg_cpu", skip_loop_filter=True).frames
    np.testing.assert_array_equal(np.load(tmp_path / "fast" / "pattern.npy"), fast)
    assert not np.array_equal(np.load(tmp_path / "default" / "pattern.npy"), fast)


@pytest.mark.parametrize("argv", [["extract", "x.mp4"], ["extract", "x.mp4", "--out", "o", "--hw", "27"], ["nope"]])
def test_bad_usage_exits_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == EXIT_USAGE


def test_same_output_name_twice_is_refused(edge_corpus: dict[str, Path], tmp_path: Path) -> None:
    clip = str(edge_corpus["pattern"])
    assert main(["extract", clip, clip, "--out", str(tmp_path)]) == EXIT_USAGE


def test_probe_prints_a_table_and_json_lines(edge_corpus: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    videos = [str(edge_corpus["rotated_90"]), str(edge_corpus["vfr"])]
    assert main(["probe", *videos]) == EXIT_OK
    header, rotated, vfr = capsys.readouterr().out.splitlines()
    columns = ["video", "codec", "size", "fps", "frames", "duration", "pixels", "colour", "rotation", "vfr", "audio"]
    assert header.split() == columns
    assert rotated.split()[:5] == ["rotated_90.mp4", "h264", "144x256", "30", "30"]  # displayed size, w x h
    assert "4:2:0 8-bit" in rotated and "bt601 limited range" in rotated and "90°" in rotated
    assert vfr.split()[3] == "20.339" and vfr.split()[-2] == "yes"  # rounded for reading
    assert main(["probe", *videos, "--json"]) == EXIT_OK
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())  # one object per line
    assert first["rotation"] == 90 and first["num_frames_from_content"] == 30 and first["display_hw"] == [256, 144]
    assert second["vfr"] is True
    assert main(["probe", str(edge_corpus["garbage"])]) == EXIT_FAILED
    assert capsys.readouterr().out == ""  # the failure is on stderr, no empty table


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert (
        exc.value.code == EXIT_OK and capsys.readouterr().out.strip() == f"frames-pipeline {version('frames_pipeline')}"
    )


@pytest.mark.skipif(cuda_device_count() > 0, reason="needs a machine without a CUDA device")
def test_a_gpu_mode_this_machine_lacks_is_an_error(
    edge_corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["extract", str(edge_corpus["pattern"]), "--out", str(out), "--mode", "pynvc"]) == EXIT_FAILED
    assert "--mode pynvc is not available here (no usable CUDA device" in capsys.readouterr().err
    assert not out.exists()  # nothing decoded, nothing written


@pytest.mark.skipif(cuda_device_count() > 0, reason="needs a machine without a CUDA device")
def test_extract_explains_a_shared_fallback_once(
    edge_corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clips = [str(edge_corpus[name]) for name in ("pattern", "rotated_90", "vfr")]
    assert main(["extract", *clips, "--out", str(tmp_path), "--mode", "auto"]) == EXIT_OK
    _, *rows, total, note = capsys.readouterr().out.splitlines()
    assert [row.split()[-1] for row in rows] == ["fallback"] * 3 and total == "3/3 videos ok, 100 frames"
    assert note == "fallback (3 video(s)): no usable CUDA device (no NVIDIA driver, or it reports none)"


def test_manifest_validate_names_file_row_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.csv"
    good.write_text("video_id,path\na,a.mp4\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("video_id,path\na,a.mp4\nb,\n")
    assert main(["manifest", "validate", str(good)]) == EXIT_OK
    assert main(["manifest", "validate", str(good), "--check-files"]) == EXIT_FAILED
    assert f"{good}:1:path: no such file" in capsys.readouterr().out
    assert main(["manifest", "validate", str(bad)]) == EXIT_FAILED
    assert f"{bad}:2:path:" in capsys.readouterr().out


def test_manifest_validate_reports_every_problem_and_still_checks_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reserved column, a ragged row and two empty paths: all four reported, and the files of the
    rows that are fine are still looked for."""
    (tmp_path / "here.mp4").write_bytes(b"video")
    manifest = tmp_path / "mixed.csv"
    manifest.write_text("path,probe_x\nhere.mp4,1\nx.mp4,1,extra\n,1\ngone.mp4,1\n,1\n")
    assert main(["manifest", "validate", str(manifest), "--check-files"]) == EXIT_FAILED
    lines = capsys.readouterr().out.splitlines()
    assert lines[:-1] == [
        f"{manifest}:-:probe_x: column name is reserved for the pipeline",
        f"{manifest}:2:-: more fields than the header has columns",
        f"{manifest}:3:path: empty or not text",
        f"{manifest}:5:path: empty or not text",
        f"{manifest}:4:path: no such file: {tmp_path / 'gone.mp4'}",
    ]
    assert lines[-1] == f"{manifest}: 1 rows ok, 4 problem(s), 1 file problem(s)"


def write_batch(root: Path, stem: str, count: int) -> None:
    (root / "manifests").mkdir(parents=True, exist_ok=True)
    (root / "manifests" / f"{stem}.csv").write_text("path\n" + "".join(f"v{i}.mp4\n" for i in range(count)))


def test_shards_lists_pending_and_published(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_batch(tmp_path, "batch", 5)
    assert main(["shards", "--data", str(tmp_path), "--shard-size", "2"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:-1]] == [[f"batch-0000{i}", "pending"] for i in range(3)]
    assert lines[-1] == "3 shard(s): 3 pending; shard size 2 (--shard-size)"
    # Without the flag it reads the code location's setting, so both list the same shards.
    monkeypatch.setenv(SHARD_SIZE_ENV, "4")
    assert main(["shards", "--data", str(tmp_path), "--json"]) == EXIT_OK
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["shard"], r["state"], r["detail"]) for r in rows] == [
        ("batch-00000", "pending", "never published"),
        ("batch-00001", "pending", "never published"),
    ]


def test_shards_separates_published_stale_blocked_and_retired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_batch(tmp_path, "batch", 3)
    store = FramesStore(tmp_path)
    digest = file_hash(tmp_path / "manifests" / "batch.csv")
    for key, cut in {"batch-00000": (digest, 2), "batch-00001": ("older", 2), "batch-00002": (digest, 1)}.items():
        with ShardWriter(store, key) as shard:
            shard.write_index([], manifest_hash=cut[0], shard_size=cut[1])
            shard.publish()
    store.record_blocked(
        BlockedShard("batch-00001", "inputs", "failed_ratio: 2/2 video(s) failed", ("failed_ratio",), "t")
    )
    store.write_file("frames/summary.png", b"\x89PNG")  # beside the shards, not one of them
    assert main(["shards", "--data", str(tmp_path), "--shard-size", "2"]) == EXIT_OK
    rows = [line.split(None, 6) for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert [(r[0], r[1], r[6]) for r in rows] == [
        ("batch-00000", "published", "cut from the current manifest"),
        ("batch-00001", "blocked", "failed_ratio: 2/2 video(s) failed; an older version is still published"),
        ("batch-00002", "retired", "cut with shard size 1, no manifest has it at shard size 2"),
    ]


@pytest.mark.parametrize("layout", ["missing", "empty"])
def test_shards_of_nothing_is_not_a_success(tmp_path: Path, layout: str, capsys: pytest.CaptureFixture[str]) -> None:
    if layout == "missing":
        assert main(["shards", "--data", str(tmp_path / "nonexistent")]) == EXIT_USAGE
        assert "no data root at" in capsys.readouterr().err
    else:
        (tmp_path / "manifests").mkdir()
        assert main(["shards", "--data", str(tmp_path)]) == EXIT_FAILED
        assert "no manifests in" in capsys.readouterr().err


def test_shards_reports_an_invalid_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_batch(tmp_path, "good", 1)
    (tmp_path / "manifests" / "bad.csv").write_text("path\n\n,\n")
    assert main(["shards", "--data", str(tmp_path)]) == EXIT_FAILED
    printed = capsys.readouterr()
    assert "good-00000" in printed.out and "invalid manifest" in printed.err and "bad.csv" in printed.err


def test_allowed_roots_and_remote_input_are_refused(
    edge_corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = ["--out", str(tmp_path / "out")]
    assert main(["extract", str(edge_corpus["pattern"]), *out, "--allowed-root", str(elsewhere)]) == EXIT_FAILED
    assert "outside_allowed_roots" in capsys.readouterr().err
    assert (
        main(["extract", str(edge_corpus["pattern"]), *out, "--allowed-root", str(edge_corpus["pattern"].parent)]) == 0
    )
    assert main(["extract", str(edge_corpus["playlist"]), *out]) == EXIT_FAILED
    assert "remote_input" in capsys.readouterr().err
