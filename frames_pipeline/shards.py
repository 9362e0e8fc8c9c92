"""Decode one shard: its jobs, resume, index rows, checks and contact sheet. No Dagster here.

``decode_shard`` is the whole of a shard's work, in one place: the Dagster asset ``video_frames`` is a
thin call into it, and anything else (a script, a test) can run a shard the same way.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from frames_pipeline.decode import DecodeOptions, VideoJob, VideoOutcome
from frames_pipeline.previews import SheetRow, contact_sheet
from frames_pipeline.storage.manifest import ManifestRow
from frames_pipeline.storage.shard_writer import UNWRITABLE_ERRNOS, ShardUnwritableError, ShardWriter
from frames_pipeline.storage.store import BlockedShard, FramesStore, frames_problem

CONTACT_SHEET = "contact_sheet.png"  # inside each shard version, published with it
FRAME_COUNT_CHECK = "frame_counts_match_probe"
ARRAY_CHECK = "arrays_well_formed"
FAILED_RATIO_CHECK = "failed_ratio"
# Checks whose failure keeps a shard from being published.
BLOCKING_CHECKS = (ARRAY_CHECK, FAILED_RATIO_CHECK)
_LISTED = 50  # ids named in one check's details
DEFAULT_MAX_FAILED_RATIO = 0.5  # above this share of failed videos a shard is not published
# Bumped when a change to this code changes what a shard's run produces (also video_frames'
# code_version): a blocked shard is then tried again.
CODE_VERSION = "2"

Decoder = Callable[[Iterable[VideoJob]], Iterator[VideoOutcome]]
Progress = Callable[[VideoOutcome, int, int], None]


@dataclass(frozen=True)
class ShardInputs:
    """Everything a shard's outcome follows from, apart from the videos themselves: the manifest
    version its rows come from, the shard size that cut them, how they are decoded, the failure
    limit, and this code's version. A shard blocked on some inputs is blocked again on the same ones."""

    manifest_hash: str
    shard_size: int
    options: DecodeOptions
    max_failed_ratio: float
    code_version: str = CODE_VERSION

    def fingerprint(self) -> str:
        fields = asdict(self) | {"options": asdict(self.options)}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ShardCheck:
    """One check of a shard, judged on the unpublished version; ``details`` are numbers and short lists."""

    name: str
    passed: bool
    description: str
    details: dict[str, Any]

    @property
    def blocking(self) -> bool:
        return self.name in BLOCKING_CHECKS


@dataclass(frozen=True)
class ShardReport:
    """What ``decode_shard`` did: one index row per manifest row (manifest order), the checks, and
    where the shard was published (None when a blocking check failed and nothing was published)."""

    key: str
    version: str
    records: list[dict[str, Any]]
    checks: list[ShardCheck]
    num_resumed: int
    num_decoded_frames: int  # decoded by this run (resumed videos' frames excluded)
    decode_s: float
    first_frame_s: float | None  # from the start of decoding to the first frames of any video
    contact_sheet: bytes
    published: str | None

    @property
    def contact_sheet_path(self) -> str:
        """Where the contact sheet of this version is once published, relative to the data root."""
        return f"frames/{self.key}/{self.version}/{CONTACT_SHEET}"

    @property
    def blocked_by(self) -> list[ShardCheck]:
        """The failed blocking checks: why the shard was not published."""
        return [c for c in self.checks if c.blocking and not c.passed]


def decode_shard(
    store: FramesStore,
    key: str,
    rows: Sequence[ManifestRow],
    decode: Decoder,
    *,
    inputs: ShardInputs,
    resume: bool = True,
    progress: Progress | None = None,
) -> ShardReport:
    """Decode the videos of ``rows`` into a new version of shard ``key`` and publish it if the
    blocking checks pass.

    ``decode`` turns jobs into outcomes (a ``DecoderPool``'s ``run``) decoding with ``inputs.options``;
    with ``resume``, videos an unpublished earlier run finished from unchanged sources are kept, not
    decoded again. A failed video is a row of the index, not an error. A shard that fails a blocking
    check is recorded as blocked on ``inputs`` (``FramesStore.blocked_shards``) and not published; a
    published one clears that record. Raises ``ShardBusyError`` if another writer holds the shard and
    ``ShardUnwritableError`` if its folder is read-only or full (a video that could not be written is
    only a ``write_failed`` row; the shard's own files must be written).
    """
    try:
        return _decode_shard(store, key, rows, decode, inputs, resume, progress)
    except OSError as exc:
        if exc.errno not in UNWRITABLE_ERRNOS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        raise ShardUnwritableError(
            f"shard {key} cannot be written: {exc.strerror}{where}; free space or make {store.frames_dir} writable"
        ) from exc


def _decode_shard(
    store: FramesStore,
    key: str,
    rows: Sequence[ManifestRow],
    decode: Decoder,
    inputs: ShardInputs,
    resume: bool,
    progress: Progress | None,
) -> ShardReport:
    output_hw = inputs.options.output_hw
    with ShardWriter(store, key, resume=resume) as shard:
        sources = {row.video_id: row.path for row in rows}
        outcomes = {
            vid: VideoOutcome.from_dict(fields) for vid, fields in shard.resume_finished(sources, output_hw).items()
        }
        num_resumed = len(outcomes)
        jobs = [VideoJob(vid, src, str(shard.frames_path(vid))) for vid, src in sources.items() if vid not in outcomes]
        started, started_at = time.perf_counter(), time.time()
        decoded: list[VideoOutcome] = []
        for outcome in decode(jobs):
            outcomes[outcome.key] = outcome
            decoded.append(outcome)
            if outcome.ok:
                shard.mark_finished(outcome.key, outcome.source, outcome.to_dict())
            if progress is not None:
                progress(outcome, len(outcomes), len(sources))
        decode_s = time.perf_counter() - started
        first_frames = [o.started_at + o.first_frame_s for o in decoded if o.first_frame_s is not None]
        records = [index_row(row, outcomes[row.video_id], shard) for row in rows]
        shard.write_index(records, manifest_hash=inputs.manifest_hash, shard_size=inputs.shard_size)
        checks = shard_checks(shard.dir, records, output_hw, inputs.max_failed_ratio)
        sheet = contact_sheet(
            [
                SheetRow(
                    r["video_id"], shard.dir / r["frames_file"] if r["frames_file"] else None, r["error_reason"] or ""
                )
                for r in records
            ]
        )
        shard.write_file(CONTACT_SHEET, sheet)
        blocked_by = [c for c in checks if c.blocking and not c.passed]
        if blocked_by:
            shard.discard()  # judged, not interrupted: nothing to resume
            published = None
            reason = "; ".join(f"{c.name}: {c.description}" for c in blocked_by)
            at = datetime.now(UTC).isoformat(timespec="seconds")
            store.record_blocked(BlockedShard(key, inputs.fingerprint(), reason, tuple(c.name for c in blocked_by), at))
        else:
            published = shard.publish()
            store.clear_blocked(key)
    return ShardReport(
        key=key,
        version=shard.version,
        records=records,
        checks=checks,
        num_resumed=num_resumed,
        num_decoded_frames=sum(o.num_frames for o in decoded),
        decode_s=decode_s,
        first_frame_s=min(first_frames) - started_at if first_frames else None,
        contact_sheet=sheet,
        published=published,
    )


def index_row(row: ManifestRow, outcome: VideoOutcome, shard: ShardWriter) -> dict[str, Any]:
    """One index.parquet row: the manifest row's number, the outcome's record, and its frames file."""
    return {
        "manifest_row": row.row,
        **outcome.to_record(),
        "frames_file": shard.frames_file(outcome.key) if outcome.ok else None,
    }


def shard_checks(
    shard_dir: Path, records: Sequence[dict[str, Any]], output_hw: tuple[int, int], max_failed_ratio: float
) -> list[ShardCheck]:
    """The three checks of a shard, evaluated on its unpublished folder."""
    ok = [r for r in records if r["status"] == "ok"]
    mismatched = [
        f"{r['video_id']}: {r['num_frames']} != {r['expected_frames']}"
        for r in ok
        if r["expected_frames"] is not None and r["num_frames"] != r["expected_frames"]
    ]
    malformed = [
        f"{r['video_id']}: {why}"
        for r in ok
        if (why := frames_problem(shard_dir / r["frames_file"], r["num_frames"], output_hw))
    ]
    num_failed = len(records) - len(ok)
    ratio = num_failed / len(records) if records else 0.0
    return [
        ShardCheck(
            FRAME_COUNT_CHECK,
            passed=not mismatched,
            description=f"{len(mismatched)} video(s) decoded a different number of frames than probed",
            details={"num_mismatched": len(mismatched), "mismatched": mismatched[:_LISTED]},
        ),
        ShardCheck(
            ARRAY_CHECK,
            passed=not malformed,
            description=f"{len(malformed)} array(s) not (N, {output_hw[0]}, {output_hw[1]}, 3) uint8 with N timestamps",
            details={"num_malformed": len(malformed), "malformed": malformed[:_LISTED]},
        ),
        ShardCheck(
            FAILED_RATIO_CHECK,
            passed=ratio <= max_failed_ratio,
            description=f"{num_failed}/{len(records)} video(s) failed (ratio {ratio:.2f}, limit {max_failed_ratio})",
            details={"failed_ratio": ratio, "max_failed_ratio": max_failed_ratio, "num_failed": num_failed},
        ),
    ]
