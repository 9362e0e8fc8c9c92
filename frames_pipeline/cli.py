"""`frames-pipeline`: extract frames, probe videos, validate manifests, list shards and serve their pictures.

Tables for people by default, `--json` (one object per line) for scripts. Exit codes scripts can
trust: 0 everything asked for was done, 1 something failed or there was nothing to do it on, 2 bad
usage.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import stat
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tqdm import tqdm

from frames_pipeline.decode import (
    DECODE_MODES,
    DecodeError,
    DecodeOptions,
    DecoderPool,
    VideoInfo,
    VideoJob,
    VideoOutcome,
    printable,
    probe,
)
from frames_pipeline.previews import PREVIEW_URL_ENV
from frames_pipeline.storage.locations import Location
from frames_pipeline.storage.manifest import (
    SHARD_SIZE_ENV,
    ManifestError,
    check_manifest,
    configured_shard_size,
    find_manifests,
    safe_video_id,
)
from frames_pipeline.storage.status import RETIRED, STATE_ORDER, ShardCut, ShardState, cut_manifest, shard_states
from frames_pipeline.storage.store import DATA_ENV, FramesStore, default_data_root
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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frames-pipeline",
        description="Decode videos into (N, H, W, 3) uint8 RGB frame arrays on NVDEC, FFmpeg+CUDA or CPU.",
        epilog="Exit codes: 0 done, 1 something failed (or nothing was found to work on), 2 bad usage.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('frames_pipeline')}")
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
    extract.add_argument(
        "--mode",
        choices=DECODE_MODES,
        default="auto",
        help="decoder (default: auto, the best this machine has); a GPU mode it lacks is an error, not a fallback",
    )
    extract.add_argument("--workers", type=_positive, default=1, help="videos decoded in parallel (default 1)")
    extract.add_argument(
        "--processes",
        type=_positive,
        help="worker processes carrying them (default: one per video on CPU, one per 7 on a GPU)",
    )
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
    extract.add_argument("--json", action="store_true", help="one JSON object per video instead of a table")

    probe_cmd = commands.add_parser(
        "probe", help="show what the decoder will see in each video", description="Probe each VIDEO, as decoding would."
    )
    probe_cmd.add_argument("videos", nargs="+", metavar="VIDEO", type=Path)
    probe_cmd.add_argument("--json", action="store_true", help="one JSON object per video (every field, unrounded)")

    manifest = commands.add_parser("manifest", help="manifest tools")
    manifest_commands = manifest.add_subparsers(dest="manifest_command", required=True, metavar="COMMAND")
    validate = manifest_commands.add_parser(
        "validate",
        help="check manifests row by row",
        description="Check CSV / Parquet / JSON Lines manifests; print every problem of every row as "
        "FILE:ROW:COLUMN: message.",
    )
    validate.add_argument("manifests", nargs="+", metavar="MANIFEST", type=Path)
    validate.add_argument("--check-files", action="store_true", help="also report rows whose video file is missing")

    shards = commands.add_parser(
        "shards",
        help="list shards and their state",
        description="List the shards of every manifest under DATA/manifests and what DATA/frames holds for them: "
        "published (current), stale (published from an older manifest or shard size), blocked (its last run "
        "failed a blocking check; waits for a change), pending (never published), retired (published under a key "
        "no manifest has now).",
    )
    shards.add_argument("--data", help=f"data root, a folder or fsspec URL (default: ${DATA_ENV} or ./data)")
    shards.add_argument(
        "--shard-size",
        type=_positive,
        help=f"videos per shard (default: ${SHARD_SIZE_ENV} or 100, as the code location reads it)",
    )
    shards.add_argument("--json", action="store_true", help="one JSON object per shard instead of a table")

    serve_help = (
        "Serve the contact sheets, shot previews and the summary chart of a local data root over HTTP, read-only, "
        f"so the Dagster UI shows them in place: set {PREVIEW_URL_ENV}=http://HOST:PORT for the code location."
    )
    serve = commands.add_parser("serve-previews", help="serve a data root's pictures to the UI", description=serve_help)
    serve.add_argument("--data", help=f"data root folder (default: ${DATA_ENV} or ./data)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    serve.add_argument("--port", type=int, default=8787)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "extract":
        return _extract(args)
    if args.command == "manifest":
        return _validate(args.manifests, args.check_files)
    if args.command == "shards":
        return _shards(args.data or default_data_root(), args.shard_size, args.json)
    if args.command == "serve-previews":
        return _serve(args.data or default_data_root(), args.host, args.port)
    return _probe(args.videos, args.json)


def _extract(args: argparse.Namespace) -> int:
    if args.processes is not None and args.processes > args.workers:
        print("--processes must not exceed --workers", file=sys.stderr)
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
    gpus = None if args.gpu_id is None else [args.gpu_id]
    pool = DecoderPool(options, workers=args.workers, processes=args.processes, gpus=gpus)
    if args.mode != "auto" and pool.effective_mode != args.mode:
        print(
            f"--mode {args.mode} is not available here ({pool.mode_reason}); nothing decoded. "
            "--mode auto decodes with the best mode this machine has.",
            file=sys.stderr,
        )
        return EXIT_FAILED
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
    with pool.start(), tqdm(total=len(jobs), unit="video", disable=args.json or not sys.stderr.isatty()) as bar:
        for outcome in pool.run(jobs):
            outcomes.append(outcome)
            bar.update()
            if args.json:
                print(json.dumps(outcome.to_record() | {"output": outcome.output}), flush=True)
    if not args.json:
        _print_outcomes(outcomes)
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        print(f"FAILED {outcome.source}: {outcome.error_reason}: {outcome.error} ({outcome.hint})", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _print_outcomes(outcomes: list[VideoOutcome]) -> None:
    """One row per video; a mode fallback shared by several videos is explained once, under the table."""
    rows = [("video", "status", "frames", "mode", "fps", "note")]
    fallbacks: Counter[str] = Counter()
    for o in sorted(outcomes, key=lambda o: o.source):
        fps = f"{o.num_frames / o.decode_s:.0f}" if o.ok and o.decode_s > 0 else "-"
        if o.ok and o.fallback_reason:
            fallbacks[o.fallback_reason] += 1
        note = o.error_reason or ("fallback" if o.fallback_reason else "")
        note = note or (f"{len(o.warnings)} warnings" if o.warnings else "")
        rows.append((Path(o.source).name, o.status, str(o.num_frames), o.decode_mode or "-", fps, note))
    _print_rows(rows)
    ok = sum(o.ok for o in outcomes)
    frames = sum(o.num_frames for o in outcomes)
    print(f"{ok}/{len(outcomes)} videos ok, {frames} frames")
    for reason, count in fallbacks.items():
        print(f"fallback ({count} video(s)): {reason}")


def _print_rows(rows: list[tuple[str, ...]]) -> None:
    """Left-aligned columns, the first row as header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _probe(videos: list[Path], as_json: bool) -> int:
    status = EXIT_OK
    rows = [("video", "codec", "size", "fps", "frames", "duration", "pixels", "colour", "rotation", "vfr", "audio")]
    for video in videos:
        try:
            info = probe(video)
        except DecodeError as exc:
            print(f"FAILED {video}: {exc}", file=sys.stderr)
            status = EXIT_FAILED
            continue
        if as_json:
            print(json.dumps(info.to_dict()), flush=True)
        else:
            rows.append(_probe_row(video, info))
    if not as_json and len(rows) > 1:
        _print_rows(rows)
    return status


def _probe_row(video: Path, info: VideoInfo) -> tuple[str, ...]:
    height, width = info.display_hw
    frames = str(info.num_frames_from_content)
    if info.num_frames_from_header not in (None, info.num_frames_from_content):
        frames += f" (header {info.num_frames_from_header})"
    chroma = {"420": "4:2:0", "422": "4:2:2", "444": "4:4:4"}[info.chroma]
    return (
        video.name,
        info.codec,
        f"{width}x{height}",
        f"{info.fps_from_content:.3f}".rstrip("0").rstrip("."),
        frames,
        f"{info.duration_s_from_content:.2f} s",
        f"{info.pix_fmt} {chroma} {info.bit_depth}-bit",
        f"{info.matrix} {'full' if info.full_range else 'limited'} range",
        f"{info.rotation}°",
        "yes" if info.vfr else "no",
        "yes" if info.has_audio else "no",
    )


def _validate(manifests: list[Path], check_files: bool) -> int:
    status = EXIT_OK
    for path in manifests:
        checked = check_manifest(path)
        for problem in checked.problems:
            print(f"{path}:{problem.row or '-'}:{problem.column or '-'}: {problem.message}")
        problems = [(row, why) for row in checked.rows if check_files and (why := _file_problem(row.path))]
        for row, why in problems:
            print(f"{path}:{row.row}:path: {why}: {_shortened(printable(row.path))}")
        files = f", {len(problems)} file problem(s)" if check_files else ""
        print(f"{path}: {len(checked.rows) - len(problems)} rows ok, {len(checked.problems)} problem(s){files}")
        if checked.problems or problems:
            status = EXIT_FAILED
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


def _shards(data_root: str, shard_size: int | None, as_json: bool) -> int:
    store = FramesStore(data_root)
    if not store.location.fs.isdir(store.location.path):
        print(f"no data root at {data_root} (give --data or set ${DATA_ENV})", file=sys.stderr)
        return EXIT_USAGE
    try:
        size = shard_size or configured_shard_size()
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    manifests = find_manifests(store.manifests_dir)
    if not manifests:
        print(f"no manifests in {store.manifests_dir}", file=sys.stderr)
        return EXIT_FAILED
    status = EXIT_OK
    cuts: dict[str, ShardCut] = {}
    for manifest in manifests:
        try:
            cuts.update(cut_manifest(manifest, size))
        except ManifestError as exc:
            print(f"invalid manifest, its shards are not listed: {exc}", file=sys.stderr)
            status = EXIT_FAILED
    states = shard_states(store, cuts) + _retired(store, cuts.keys(), size)
    table = summarize_shards(store, states)
    if as_json:
        for record in table.to_dict("records"):
            print(json.dumps(_plain(record)))
        return status
    _print_rows(
        [("shard", "state", "videos", "ok", "failed", "frames", "detail")]
        + [
            (s.shard, s.state, str(s.videos), str(s.ok), str(s.failed), str(s.frames), s.detail)
            for s in table.itertuples()
        ]
    )
    counts = table["state"].value_counts()
    per_state = ", ".join(f"{counts[state]} {state}" for state in STATE_ORDER if state in counts)
    source = "--shard-size" if shard_size else (f"${SHARD_SIZE_ENV}" if os.environ.get(SHARD_SIZE_ENV) else "default")
    print(f"{len(table)} shard(s): {per_state}; shard size {size} ({source})")
    return status


def _retired(store: FramesStore, current: Iterable[str], shard_size: int) -> list[ShardState]:
    """Published shards under keys that no manifest has at ``shard_size``: left by an edit of a
    manifest, its removal, or another shard size. Their files stay until deleted by hand."""
    frames = store.location.child("frames")
    if not frames.fs.isdir(frames.path):
        return []
    entries = frames.fs.ls(frames.path, detail=True)
    names = sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory")
    known = set(current)
    keys = [name for name in names if not name.startswith(".") and name not in known]
    retired = []
    for key in keys:
        published = store.published(key)
        if published is not None:
            size = f"cut with shard size {published.shard_size}, " if published.shard_size else ""
            retired.append(ShardState(key, RETIRED, f"{size}no manifest has it at shard size {shard_size}"))
    return retired


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v.item() if hasattr(v, "item") else v for k, v in record.items()}


def _serve(data_root: str, host: str, port: int) -> int:
    from frames_pipeline.preview_server import preview_server

    if not Location.of(data_root).is_local or not Path(data_root).is_dir():
        print(
            f"no local data root at {data_root} (for object storage, point {PREVIEW_URL_ENV} at the bucket's web "
            "endpoint instead)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    server = preview_server(data_root, host, port)
    print(f"serving the pictures of {data_root}/frames on http://{host}:{server.server_port}", file=sys.stderr)
    print(f"set {PREVIEW_URL_ENV}=http://{host}:{server.server_port} for the code location", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
