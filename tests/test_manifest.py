"""Manifest reading, validation, safe video ids and shard cutting (no videos, no Dagster)."""

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from frames_pipeline.storage.manifest import (
    ManifestError,
    find_manifests,
    manifest_for_stem,
    parse_shard_key,
    read_manifest,
    safe_video_id,
    shard_key,
    shard_keys,
    shard_rows,
    unique_ids,
)

ROWS = [
    {"path": "videos/a.mp4", "video_id": None, "label": "x"},
    {"path": "/abs/b.mkv", "video_id": "bee", "label": "y"},
    {"path": "sub/../c.mp4", "video_id": None, "label": "z"},
]


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(params=["csv", "parquet", "jsonl"])
def manifest(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "manifests" / f"demo.{request.param}"
    path.parent.mkdir()
    if request.param == "csv":
        write_csv(path, "path,video_id,label\nvideos/a.mp4,,x\n/abs/b.mkv,bee,y\nsub/../c.mp4,,z\n")
    elif request.param == "parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    else:
        path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    return path


def test_every_format_reads_the_same(manifest: Path) -> None:
    rows = read_manifest(manifest)
    folder = manifest.parent
    assert [r.video_id for r in rows] == ["a", "bee", "c"]
    assert [r.path for r in rows] == [str(folder / "videos/a.mp4"), "/abs/b.mkv", str(folder / "c.mp4")]
    assert [r.row for r in rows] == [1, 2, 3]
    assert [r.extra["label"] for r in rows] == ["x", "y", "z"]
    assert rows[0].to_record() == {"manifest_row": 1, "video_id": "a", "path": rows[0].path, "label": "x"}


def test_bad_rows_are_reported_with_file_row_and_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bad.csv", "path,video_id\nok.mp4,\n,empty\nfine.mp4,\n   ,blank\n")
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    error = caught.value
    assert (error.file, error.row, error.column) == (str(path), 2, "path")
    assert [(p.row, p.column) for p in error.problems] == [(2, "path"), (4, "path")]
    assert "bad.csv: row 2, column 'path'" in str(error)


def test_missing_path_column_and_reserved_names(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        read_manifest(write_csv(tmp_path / "m.csv", "file,probe_status\na.mp4,x\n"))
    assert [(p.row, p.column) for p in caught.value.problems] == [(None, "path"), (None, "probe_status")]


def test_bad_json_line_and_ragged_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"path": "a.mp4"}\n{"path": \n[1, 2]\n')
    with pytest.raises(ManifestError) as caught:
        read_manifest(jsonl)
    assert [p.row for p in caught.value.problems] == [2, 3]
    with pytest.raises(ManifestError) as caught:
        read_manifest(write_csv(tmp_path / "r.csv", "path\na.mp4\nb.mp4,extra\n"))
    assert caught.value.row == 2


def test_unreadable_file_and_bad_stem(tmp_path: Path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest(broken)
    with pytest.raises(ManifestError, match="file stem"):
        read_manifest(write_csv(tmp_path / "we..ird.csv", "path\na.mp4\n"))


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(b"path,video_id,note\na.mp4,caf\xe9,n\xe9\nb\xff.mp4,,x\n")
    first, second = read_manifest(path)
    assert first.video_id == "caf_"
    assert first.extra["note"] == "n\ufffd"
    # A file name that is not UTF-8 is still a file name: its bytes reach the OS unchanged.
    assert os.fsencode(second.path) == os.fsencode(tmp_path) + b"/b\xff.mp4"
    assert second.video_id == "b_"
    jsonl = tmp_path / "escapes.jsonl"
    jsonl.write_text('{"path": "ok.mp4"}\n{"path": "\\ud800.mp4"}\n')  # no file name holds a lone U+D800
    with pytest.raises(ManifestError) as caught:
        read_manifest(jsonl)
    assert (caught.value.row, caught.value.column) == (2, "path")


def test_urls_stay_as_written(tmp_path: Path) -> None:
    (tmp_path / "take:2.mp4").write_bytes(b"")  # a local name that only looks like a protocol
    path = write_csv(tmp_path / "urls.csv", "path\nhttp://127.0.0.1:9/a.mp4\nconcat:a|b\ntake:2.mp4\n")
    assert [r.path for r in read_manifest(path)] == [
        "http://127.0.0.1:9/a.mp4",
        "concat:a|b",
        str(tmp_path / "take:2.mp4"),
    ]


def test_json_that_python_cannot_load_is_a_row_problem(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_text('{"path": "a.mp4"}\n' + "[" * 100_000 + "\n" + '{"path": "b.mp4", "n": ' + "9" * 5000 + "}\n")
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    assert [(p.row, p.column) for p in caught.value.problems] == [(2, None), (3, None)]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("clip", "clip"),
        ("a/b", "a_b"),
        ("../../etc/passwd", "_._etc_passwd"),
        ("..", "video"),
        (".hidden", "hidden"),
        ("tab\tnew\nline\x00", "tab_new_line_"),
        ("caf\udce9", "caf_"),
        ("café", "café"),
        ("clip.pts", "clip_pts"),  # else clip.pts.npy would also be the timestamps of "clip"
        ("CLIP.Pts", "CLIP_Pts"),
        ("", "video"),
    ],
)
def test_safe_video_id(raw: str, expected: str) -> None:
    assert safe_video_id(raw) == expected


def test_long_ids_are_cut_and_stay_distinct() -> None:
    a, b = safe_video_id("x" * 300 + "a"), safe_video_id("x" * 300 + "b")
    assert a != b
    assert len(a.encode()) <= 100 and len(b.encode()) <= 100


def test_duplicates_get_a_stable_suffix(tmp_path: Path) -> None:
    assert unique_ids(["a", "b", "A", "a", "a~2"]) == ["a", "b", "A~2", "a~3", "a~2"]
    path = write_csv(tmp_path / "dup.csv", "path\none/clip.mp4\ntwo/clip.mp4\nthree/Clip.mkv\nx/a_b.mp4\n")
    assert [r.video_id for r in read_manifest(path)] == ["clip", "clip~2", "Clip~3", "a_b"]
    assert [r.video_id for r in read_manifest(path)] == ["clip", "clip~2", "Clip~3", "a_b"]


def test_shards(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "big.csv", "path\n" + "".join(f"v{i}.mp4\n" for i in range(5)))
    assert shard_keys(path, shard_size=2) == ["big-00000", "big-00001", "big-00002"]
    rows = read_manifest(path)
    assert [r.video_id for r in shard_rows(rows, 2, shard_size=2)] == ["v4"]
    assert shard_rows(rows, 3, shard_size=2) == []
    assert shard_key("my-set.v2", 7) == "my-set.v2-00007"
    assert parse_shard_key("my-set.v2-00007") == ("my-set.v2", 7)
    with pytest.raises(ValueError):
        parse_shard_key("nope")


def test_find_manifests_and_stem_collisions(tmp_path: Path) -> None:
    for name in ("a.csv", "b.jsonl", ".hidden.csv", "notes.txt", "b.csv"):
        (tmp_path / name).write_text("path\n")
    assert find_manifests(tmp_path) == [str(tmp_path / n) for n in ("a.csv", "b.csv", "b.jsonl")]
    assert manifest_for_stem(tmp_path, "a") == str(tmp_path / "a.csv")
    with pytest.raises(ManifestError, match="several manifests"):
        manifest_for_stem(tmp_path, "b")
    with pytest.raises(ManifestError, match="no manifest"):
        manifest_for_stem(tmp_path, "c")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_empty_file_names_the_missing_column(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    assert (caught.value.file, caught.value.row, caught.value.column) == (str(path), None, "path")


def test_wrong_types_are_reported_with_row_and_column(tmp_path: Path) -> None:
    table = pa.table({"path": ["a.mp4", "b.mp4"], "video_id": [1.5, None]})
    pq.write_table(table, tmp_path / "floats.parquet")
    with pytest.raises(ManifestError) as caught:
        read_manifest(tmp_path / "floats.parquet")
    assert [(p.row, p.column) for p in caught.value.problems] == [(1, "video_id")]
    pq.write_table(pa.table({"path": [1, 2]}), tmp_path / "numbers.parquet")
    with pytest.raises(ManifestError) as caught:
        read_manifest(tmp_path / "numbers.parquet")
    assert [(p.row, p.column) for p in caught.value.problems] == [(1, "path"), (2, "path")]
