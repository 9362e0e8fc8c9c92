"""``frames-pipeline``: what it prints and the exit codes scripts rely on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from frames_pipeline.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from frames_pipeline.decode import extract_frames


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


def test_probe_prints_video_info(edge_corpus: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", str(edge_corpus["rotated_90"])]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["rotation"] == 90 and info["num_frames_from_content"] == 30 and info["display_hw"] == [256, 144]
    assert main(["probe", str(edge_corpus["garbage"])]) == EXIT_FAILED


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


def test_shards_lists_pending_and_published(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "batch.csv").write_text("path\n" + "".join(f"v{i}.mp4\n" for i in range(5)))
    assert main(["shards", "--data", str(tmp_path), "--shard-size", "2"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:]] == [[f"batch-0000{i}", "pending"] for i in range(3)]


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
