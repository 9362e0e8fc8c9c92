"""``frames-pipeline``: extract frames, probe videos, validate manifests and list shards from the shell.

Exit codes scripts can trust: 0 all videos done, 1 at least one video failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from frames_pipeline.decode import (
    DECODE_MODES,
    DecodeError,
    DecodeOptions,
    DecoderPool,
    VideoJob,
    VideoOutcome,
    printable,
    probe,
)
from frames_pipeline.storage.manifest import (
    DEFAULT_SHARD_SIZE,
    ManifestError,
    find_manifests,
    read_manifest,
    safe_video_id,
    shard_keys,
)
from frames_pipeline.storage.store import FramesStore, default_data_root
from frames_pipeline.storage.summary import summarize_shards

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 27x48, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError("height and width must be positive")
    return h, w


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frames-pipeline",
        description="Decode videos into (N, H, W, 3) uint8 RGB frame arrays on NVDEC, FFmpeg+CUDA or CPU.",
        epilog="Exit codes: 0 all videos done, 1 some video failed, 2 bad usage.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    extract = commands.add_parser(
        "extract",
        help="decode videos to DIR/<stem>.npy and DIR/<stem>.pts.npy",
        description="Decode each VIDEO to DIR/<stem>.npy (frames) and DIR/<stem>.pts.npy (seconds per frame); "
        "<stem> is made safe for file names as manifest video ids are (clip.pts.mp4 -> clip_pts).",
    )
    extract.add_argument("videos", nargs="+", metavar="VIDEO", type=Path)
    extract.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    extract.add_argument("--hw", type=_hw, default=(27, 48), metavar="HxW", help="output height x width (27x48)")
    extract.add_argument("--mode", choices=DECODE_MODES, default="auto", help="decoder (default: auto)")
    extract.add_argument("--workers", type=int, default=1, help="videos decoded in parallel (default 1)")
    extract.add_argument("--processes", type=int, help="worker processes carrying them (default: one per video)")
    extract.add_argument("--gpu-id", type=int, help="pin to this CUDA device (default: every visible GPU)")
    extract.add_argument("--timeout", type=float, default=600.0, metavar="S", help="per-video limit in seconds")
    extract.add_argument("--ffmpeg", metavar="BINARY", help="ffmpeg executable for ffmpeg_gpu (default: bundled)")
    extract.add_argument(
        "--allowed-root",
        action="append",
        default=[],
        metavar="DIR",
        help="only read videos under DIR (repeatable; default: any local file)",
    )
    extract.add_argument("--allow-remote", action="store_true", help="allow URLs, playlists and concat scripts")
    extract.add_argument(
        "--skip-loop-filter",
        action="store_true",
        help="CPU decodes skip the H.264/HEVC deblocking filter: faster, slightly different frames",
    )
    extract.add_argument("--json", action="store_true", help="print one JSON object per video instead of a table")

    probe_cmd = commands.add_parser("probe", help="print what the decoder will see in each video")
    probe_cmd.add_argument("videos", nargs="+", metavar="VIDEO", type=Path)

    manifest = commands.add_parser("manifest", help="manifest tools")
    manifest_commands = manifest.add_subparsers(dest="manifest_command", required=True, metavar="COMMAND")
    validate = manifest_commands.add_parser(
        "validate",
        help="check manifests row by row",
        description="Check CSV / Parquet / JSON Lines manifests; print every problem as FILE:ROW:COLUMN: message.",
    )
    validate.add_argument("manifests", nargs="+", metavar="MANIFEST", type=Path)
    validate.add_argument("--check-files", action="store_true", help="also report rows whose video file is missing")

    shards = commands.add_parser(
        "shards",
        help="list shards and their state",
        description="List the shards of every manifest under DATA/manifests and what DATA/frames holds for them.",
    )
    shards.add_argument(
        "--data", default=None, help="data root, a folder or fsspec URL (default: $FRAMES_PIPELINE_DATA or ./data)"
    )
    shards.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="videos per shard (100)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "extract":
        return _extract(args)
    if args.command == "manifest":
        return _validate(args.manifests, args.check_files)
    if args.command == "shards":
        return _shards(args.data or default_data_root(), args.shard_size)
    return _probe(args.videos)


def _extract(args: argparse.Namespace) -> int:
    if args.workers < 1 or not 1 <= (args.processes or args.workers) <= args.workers:
        print("--workers must be at least 1, --processes between 1 and --workers", file=sys.stderr)
        return EXIT_USAGE
    # The manifests' rule: "clip.pts.mp4" must not become the timestamps file of "clip.mp4".
    names = [safe_video_id(video.stem) for video in args.videos]
    counts = Counter(name.casefold() for name in names)  # case-insensitive file systems too
    duplicates = sorted({name for name in names if counts[name.casefold()] > 1})
    if duplicates:
        print(f"several videos share an output name: {', '.join(duplicates)}", file=sys.stderr)
        return EXIT_USAGE
    options = DecodeOptions(
        output_hw=args.hw,
        mode=args.mode,
        gpu_id=args.gpu_id or 0,
        timeout_s=args.timeout,
        ffmpeg_binary=args.ffmpeg,
        allowed_roots=tuple(args.allowed_root),
        allow_remote=args.allow_remote,
        skip_loop_filter=args.skip_loop_filter,
    )
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"cannot create the output folder {printable(str(args.out))}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    jobs = [
        VideoJob(name, str(video), str(args.out / f"{name}.npy"))
        for name, video in zip(names, args.videos, strict=True)
    ]
    outcomes: list[VideoOutcome] = []
    with (
        DecoderPool(
            options,
            workers=args.workers,
            processes=args.processes,
            gpus=None if args.gpu_id is None else [args.gpu_id],
        ) as pool,
        tqdm(total=len(jobs), unit="video", disable=args.json or not sys.stderr.isatty()) as bar,
    ):
        for outcome in pool.run(jobs):
            outcomes.append(outcome)
            bar.update()
            if args.json:
                print(json.dumps(outcome.to_record() | {"output": outcome.output}), flush=True)
    if not args.json:
        _print_table(outcomes)
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        print(f"FAILED {outcome.source}: {outcome.error_reason}: {outcome.error} ({outcome.hint})", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _print_table(outcomes: list[VideoOutcome]) -> None:
    header = ("video", "status", "frames", "mode", "fps", "note")
    rows = [header]
    for o in sorted(outcomes, key=lambda o: o.source):
        fps = f"{o.num_frames / o.decode_s:.0f}" if o.ok and o.decode_s > 0 else "-"
        note = o.error_reason or o.fallback_reason or (f"{len(o.warnings)} warnings" if o.warnings else "")
        rows.append((Path(o.source).name, o.status, str(o.num_frames), o.decode_mode or "-", fps, note))
    _print_rows(rows)
    ok = sum(o.ok for o in outcomes)
    frames = sum(o.num_frames for o in outcomes)
    print(f"{ok}/{len(outcomes)} videos ok, {frames} frames")


def _print_rows(rows: list[tuple[str, ...]]) -> None:
    """Left-aligned columns, the first row as header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _probe(videos: list[Path]) -> int:
    status = EXIT_OK
    for video in videos:
        try:
            print(json.dumps(probe(video).to_dict(), indent=2))
        except DecodeError as exc:
            print(f"FAILED {video}: {exc}", file=sys.stderr)
            status = EXIT_FAILED
    return status


def _validate(manifests: list[Path], check_files: bool) -> int:
    status = EXIT_OK
    for path in manifests:
        try:
            rows = read_manifest(path)
        except ManifestError as exc:
            for problem in exc.problems:
                print(f"{path}:{problem.row or '-'}:{problem.column or '-'}: {problem.message}")
            status = EXIT_FAILED
            continue
        problems = [(row, why) for row in rows if check_files and (why := _file_problem(row.path))]
        for row, why in problems:
            print(f"{path}:{row.row}:path: {why}: {_shortened(printable(row.path))}")
        status = EXIT_FAILED if problems else status
        print(f"{path}: {len(rows)} rows, {len(rows) - len(problems)} ok")
    return status


def _file_problem(path: str) -> str | None:
    """Why ``path`` names no video file, or None; never raises (a name too long is a problem like any other)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except (OSError, ValueError) as exc:
        return getattr(exc, "strerror", None) or str(exc)
    return None if stat.S_ISREG(mode) else "not a regular file"


def _shortened(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _shards(data_root: str, shard_size: int) -> int:
    if shard_size < 1:
        print("--shard-size must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    store = FramesStore(data_root)
    status = EXIT_OK
    rows = [("shard", "state", "videos", "ok", "failed", "frames")]
    for manifest in find_manifests(store.manifests_dir):
        try:
            keys = shard_keys(manifest, shard_size)
        except ManifestError as exc:
            print(f"{manifest}: invalid: {exc}", file=sys.stderr)
            status = EXIT_FAILED
            continue
        for shard in summarize_shards(store, keys).itertuples():
            state = "published" if shard.published else "pending"
            rows.append((shard.shard, state, str(shard.videos), str(shard.ok), str(shard.failed), str(shard.frames)))
    _print_rows(rows)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
