"""A shard's work without Dagster: jobs, resume, index rows, checks, contact sheet and publish."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from frames_pipeline.decode import DecodeOptions, DecoderPool, VideoJob, VideoOutcome
from frames_pipeline.demo.clips import write_video
from frames_pipeline.shards import ARRAY_CHECK, FAILED_RATIO_CHECK, FRAME_COUNT_CHECK, ShardInputs, decode_shard
from frames_pipeline.storage.manifest import ManifestRow
from frames_pipeline.storage.store import FramesStore, PublishedShard

OPTIONS = DecodeOptions(mode="ffmpeg_cpu")
INPUTS = ShardInputs("manifest-hash", 100, OPTIONS, max_failed_ratio=0.5)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("shard_clips")
    (folder / "bad.mp4").write_bytes(b"not a video" * 100)
    return {
        "a": write_video(folder / "a.mp4", 6, size=(32, 48)),
        "b": write_video(folder / "b.mp4", 9, size=(32, 48), rotation=90),
        "bad": folder / "bad.mp4",
    }


def rows(clips: dict[str, Path], *names: str) -> list[ManifestRow]:
    return [ManifestRow(i, name, str(clips[name]), {"label": name.upper()}) for i, name in enumerate(names, start=1)]


@pytest.fixture
def pool() -> Iterator[DecoderPool]:
    with DecoderPool(OPTIONS, workers=2) as decoder_pool:
        yield decoder_pool


def test_a_shard_is_decoded_indexed_checked_and_published(
    clips: dict[str, Path], pool: DecoderPool, tmp_path: Path
) -> None:
    store = FramesStore(tmp_path)
    seen: list[tuple[str, int, int]] = []
    report = decode_shard(
        store,
        "s-00000",
        rows(clips, "b", "a", "bad"),
        pool.run,
        inputs=INPUTS,
        progress=lambda outcome, done, total: seen.append((outcome.key, done, total)),
    )
    assert report.published == store.shard_dir("s-00000") and not report.blocked_by
    assert sorted(key for key, _, _ in seen) == ["a", "b", "bad"] and [d for _, d, _ in seen] == [1, 2, 3]
    assert [r["video_id"] for r in report.records] == ["b", "a", "bad"]  # manifest order, not completion order
    assert [r["manifest_row"] for r in report.records] == [1, 2, 3]
    b, a, bad = report.records
    assert (a["num_frames"], a["expected_frames"], b["num_frames"], b["rotation"]) == (6, 6, 9, 90)
    assert (b["source_height"], b["source_width"], b["codec"]) == (48, 32, "h264")  # displayed size
    assert bad["status"] == "failed" and bad["frames_file"] is None and bad["hint"]
    assert {c.name: c.passed for c in report.checks} == {
        FRAME_COUNT_CHECK: True,
        ARRAY_CHECK: True,
        FAILED_RATIO_CHECK: True,
    }
    assert report.contact_sheet.startswith(b"\x89PNG")
    assert report.num_decoded_frames == 15 and 0 < report.first_frame_s < report.decode_s
    frames, pts = store.read_frames("s-00000", "b")
    assert frames.shape == (9, 27, 48, 3) and pts.shape == (9,)
    index = store.read_index("s-00000")
    assert (
        list(index["frames_file"].iloc[:2]) == [b["frames_file"], a["frames_file"]]
        and index["frames_file"].isna().iloc[2]
    )


def test_a_shard_over_the_failure_limit_is_not_published(
    clips: dict[str, Path], pool: DecoderPool, tmp_path: Path
) -> None:
    store = FramesStore(tmp_path)
    strict = replace(INPUTS, max_failed_ratio=0.4)
    report = decode_shard(store, "s-00000", rows(clips, "a", "bad"), pool.run, inputs=strict)
    assert report.published is None and [c.name for c in report.blocked_by] == [FAILED_RATIO_CHECK]
    assert not store.has_index("s-00000")
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [".blocked", ".s-00000.lock"]  # nothing to resume
    (blocked,) = store.blocked_shards().values()
    assert (blocked.key, blocked.inputs, blocked.checks) == ("s-00000", strict.fingerprint(), (FAILED_RATIO_CHECK,))
    assert blocked.reason == "failed_ratio: 1/2 video(s) failed (ratio 0.50, limit 0.4)"

    # Other inputs are another fingerprint; once the shard is published, the record goes.
    assert INPUTS.fingerprint() != strict.fingerprint()
    assert decode_shard(store, "s-00000", rows(clips, "a", "bad"), pool.run, inputs=INPUTS).published
    assert store.blocked_shards() == {}
    assert store.published("s-00000") == PublishedShard("manifest-hash", 100)


class Interrupted(Exception):
    pass


def test_an_interrupted_shard_resumes_with_what_it_finished(
    clips: dict[str, Path], pool: DecoderPool, tmp_path: Path
) -> None:
    store = FramesStore(tmp_path)
    shard_rows = rows(clips, "a", "b")

    def first_then_stop(jobs: Iterable[VideoJob]) -> Iterator[VideoOutcome]:
        jobs = list(jobs)
        yield from pool.run(jobs[:1])
        raise Interrupted  # a killed run: nothing published, the work folder stays

    with pytest.raises(Interrupted):
        decode_shard(store, "s-00000", shard_rows, first_then_stop, inputs=INPUTS)
    decoded: list[str] = []

    def recording(jobs: Iterable[VideoJob]) -> Iterator[VideoOutcome]:
        jobs = list(jobs)
        decoded.extend(job.key for job in jobs)
        return pool.run(jobs)

    report = decode_shard(store, "s-00000", shard_rows, recording, inputs=INPUTS)
    assert report.num_resumed == 1 and decoded == ["b"] and report.published
    assert report.num_decoded_frames == 9  # the kept video's 6 frames cost this run nothing
    assert [r["num_frames"] for r in report.records] == [6, 9]
    for video_id in ("a", "b"):
        frames, _ = store.read_frames("s-00000", video_id)
        assert frames.dtype == np.uint8 and len(frames) == {"a": 6, "b": 9}[video_id]
