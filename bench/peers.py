"""The rows of the CPU benchmark: ours, NeMo Curator's CPU command, the decode-only floor, and peer libraries.

A contender is opened once per clip set, outside the timing (imports, pool start-up, reading the
sources), and yields a callable that decodes every clip of the set once. Each clip's result is its
frames as the library returns them, the path of a .npy it wrote, or None (no frames: the floor, or
a clip that failed and was dropped, as NeMo drops it).

Imports of the decoders happen inside the openers, so a row's process only pays for its own library.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .corpus import FULL

Output = NDArray[np.uint8] | str | None
Decode = Callable[[], list[Output]]
TRANSNET_HW = (27, 48)
MEMORY_HW = (224, 224)
# What a shard is: many videos. The pool and the parallel floor run on these sets.
MANY_VIDEO_SETS = tuple(spec.name for spec in FULL if spec.many_videos)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


@dataclass
class RowContext:
    """What an opener gets besides the clips: a scratch folder, the ffmpeg binaries, and a place for notes."""

    scratch: Path
    ffmpeg: dict[str, str]
    notes: list[str] = field(default_factory=list)


Opener = Callable[[Sequence[str], RowContext], AbstractContextManager[Decode]]


@dataclass(frozen=True)
class Contender:
    key: str
    label: str  # "{ffmpeg}" is replaced by the version of the binary it runs
    kind: str  # ours | nemo | floor | peer (ours and nemo at MEMORY_HW form the memory comparison)
    opener: Opener
    output_hw: tuple[int, int] = TRANSNET_HW
    binary: str | None = None  # "bundled" or "system": the ffmpeg CLI the row runs, if any
    sets: tuple[str, ...] | None = None  # the clip sets it runs on; None: every throughput set of distinct clips
    returns_frames: bool = True
    parallel: bool = False  # decodes several videos at once (compared with the parallel floor)
    # Turns what the library returned into (N, H, W, 3) for the pixel comparison, where it can.
    comparable: Callable[[NDArray[np.uint8]], NDArray[np.uint8]] | None = None
    about: str = ""


def _per_clip(decode_one: Callable[[str], Output], paths: Sequence[str]) -> Decode:
    return lambda: [decode_one(p) for p in paths]


@contextmanager
def open_ours(skip_loop_filter: bool, paths: Sequence[str], ctx: RowContext) -> Iterator[Decode]:
    from frames_pipeline.decode import DecodeOptions, extract_frames

    options = DecodeOptions(mode="ffmpeg_cpu", output_hw=TRANSNET_HW, threads=0, skip_loop_filter=skip_loop_filter)
    ctx.notes.append("threads=0: PyAV picks the decoder thread count")
    yield _per_clip(lambda p: extract_frames(p, options=options).frames, paths)


@contextmanager
def open_ours_pool(paths: Sequence[str], ctx: RowContext) -> Iterator[Decode]:
    from frames_pipeline.decode import DecodeOptions, DecoderPool, VideoJob

    workers = usable_cores()
    with DecoderPool(DecodeOptions(mode="ffmpeg_cpu"), workers=workers) as pool:
        ctx.notes.append(f"{workers} worker processes, {pool.options.threads} decoder thread(s) each")
        # One job per worker first: process spawn and imports are a once-per-pool cost, not per clip.
        warm = [VideoJob(f"warm{i}", paths[0], str(ctx.scratch / f"warm{i}.npy")) for i in range(workers)]
        list(pool.run(warm))

        def decode() -> list[Output]:
            jobs = [VideoJob(str(i), p, str(ctx.scratch / f"pool_{i}.npy")) for i, p in enumerate(paths)]
            results: list[Output] = [None] * len(jobs)
            for outcome in pool.run(jobs):
                if outcome.ok:
                    results[int(outcome.key)] = outcome.output
                else:
                    ctx.notes.append(f"{outcome.source}: {outcome.error_reason}: {outcome.error}")
            return results

        yield decode


@contextmanager
def open_ours_to_file(paths: Sequence[str], ctx: RowContext) -> Iterator[Decode]:
    from frames_pipeline.decode import extract_to_file

    def decode_one(index: int, path: str) -> str | None:
        out = ctx.scratch / f"ours_{index}.npy"
        return extract_to_file(path, out, mode="ffmpeg_cpu", output_hw=MEMORY_HW, threads=0).output_path

    yield lambda: [decode_one(i, p) for i, p in enumerate(paths)]


def nemo_frames(ffmpeg: str, video_file: Path, height: int, width: int) -> NDArray[np.uint8] | None:
    """NeMo Curator's CPU ``get_frames_from_ffmpeg``, with its width/height swap corrected (``-s 48x27``)."""
    command = [
        ffmpeg, "-hide_banner", "-loglevel", "warning", "-threads", "4", "-i", video_file.as_posix(),
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    video_stream, _err = process.communicate()  # the whole output is buffered, as NeMo does
    if process.returncode != 0:
        return None
    return np.frombuffer(video_stream, np.uint8).reshape([-1, height, width, 3])


@contextmanager
def open_nemo(binary: str, output_hw: tuple[int, int], paths: Sequence[str], ctx: RowContext) -> Iterator[Decode]:
    ffmpeg = ctx.ffmpeg[binary]
    # NeMo's stage holds each video's bytes (video.source_bytes) and writes them to a temp file to decode.
    sources = [Path(p).read_bytes() for p in paths]
    video_path = ctx.scratch / "nemo_input.mp4"

    def decode_one(data: bytes) -> NDArray[np.uint8] | None:
        video_path.write_bytes(data)
        try:
            return nemo_frames(ffmpeg, video_path, *output_hw)
        finally:
            video_path.unlink()

    yield lambda: [decode_one(data) for data in sources]


@contextmanager
def open_floor(paths: Sequence[str], ctx: RowContext) -> Iterator[Decode]:
    ffmpeg = ctx.ffmpeg["bundled"]
    ctx.notes.append("-threads 0 (auto), as ours")

    def decode_one(path: str) -> None:
        command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-threads", "0", "-i", path, "-f", "null", "-"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    yield _per_clip(decode_one, paths)


@contextmanager
def open_floor_parallel(paths: Sequence[str], ctx: RowContext) -> Iterator[Decode]:
    ffmpeg = ctx.ffmpeg["bundled"]
    processes = usable_cores()
    ctx.notes.append(f"{processes} processes at a time, -threads 1 each")

    def decode_one(path: str) -> None:
        command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-threads", "1", "-i", path, "-f", "null", "-"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    with ThreadPoolExecutor(processes) as running:
        yield lambda: list(running.map(decode_one, paths))


@contextmanager
def open_imageio(paths: Sequence[str], ctx: RowContext) -> Iterator[Decode]:
    import imageio_ffmpeg

    height, width = TRANSNET_HW

    def decode_one(path: str) -> NDArray[np.uint8]:
        reader = imageio_ffmpeg.read_frames(path, output_params=["-s", f"{width}x{height}"])
        next(reader)  # the first item is the metadata dict
        return np.frombuffer(b"".join(reader), np.uint8).reshape(-1, height, width, 3)

    yield _per_clip(decode_one, paths)


@contextmanager
def open_pyav(paths: Sequence[str], ctx: RowContext) -> Iterator[Decode]:
    import av

    height, width = TRANSNET_HW

    def decode_one(path: str) -> NDArray[np.uint8]:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = [
                f.reformat(width, height, "rgb24", interpolation="AREA").to_ndarray() for f in container.decode(stream)
            ]
        return np.stack(frames)

    yield _per_clip(decode_one, paths)


@contextmanager
def open_decord(paths: Sequence[str], ctx: RowContext) -> Iterator[Decode]:
    from decord import VideoReader, cpu

    height, width = TRANSNET_HW
    try:
        VideoReader(paths[0], ctx=cpu(0), width=width, height=height).get_batch([0, 1])
        batched = True
    except Exception as exc:
        batched = False
        ctx.notes.append(f"get_batch raises {describe_error(exc)}; frames read one at a time")

    def decode_one(path: str) -> NDArray[np.uint8]:
        reader = VideoReader(path, ctx=cpu(0), width=width, height=height)
        if batched:
            return reader.get_batch(list(range(len(reader)))).asnumpy()
        return np.stack([reader[i].asnumpy() for i in range(len(reader))])

    yield _per_clip(decode_one, paths)


def unpad_rows(frames: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """decord at width 48 returns (N, H, W, 4) whose rows are W*3 RGB bytes plus padding: keep the RGB bytes."""
    n, height, width, _ = frames.shape
    return frames.reshape(n, height, -1)[:, :, : width * 3].reshape(n, height, width, 3)


@contextmanager
def open_torchcodec(paths: Sequence[str], ctx: RowContext) -> Iterator[Decode]:
    import torch
    import torch.nn.functional as F
    from torchcodec.decoders import VideoDecoder

    # Full-size float frames are 25 MB each at 1080p: resize a few at a time, as a user short of memory would.
    batch = 8

    def decode_one(path: str) -> NDArray[np.uint8]:
        decoder = VideoDecoder(path)
        parts = []
        for start in range(0, len(decoder), batch):
            frames = decoder.get_frames_in_range(start, min(start + batch, len(decoder))).data
            small = F.interpolate(frames.float(), size=TRANSNET_HW, mode="area")
            parts.append(small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
        return np.concatenate(parts)

    yield _per_clip(decode_one, paths)


@contextmanager
def open_video2numpy(paths: Sequence[str], ctx: RowContext) -> Iterator[Decode]:
    from video2numpy.frame_reader import FrameReader

    ctx.notes.append("resize_size=27 (its only shape is a square centre crop); 1 reader process")

    def decode() -> list[Output]:
        reader = FrameReader(list(paths), resize_size=TRANSNET_HW[0], workers=1, memory_size=0.25)
        reader.start_reading()
        results: list[Output] = [None] * len(paths)
        for frames, info in reader:
            results[info["reference"]] = frames
        return results

    yield decode


def describe_error(exc: BaseException) -> str:
    """Type and first message line of ``exc`` and of its cause (a failed import hides the real reason there)."""
    text = str(exc).strip()
    line = f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"
    return f"{line} (cause: {describe_error(exc.__cause__)})" if exc.__cause__ is not None else line


CONTENDERS: tuple[Contender, ...] = (
    Contender(
        "ours", "ours ffmpeg_cpu (in-process)", "ours", partial(open_ours, False),
        about="`extract_frames(path, mode=\"ffmpeg_cpu\")`: PyAV decode, our Y'CbCr area shrink, one clip at a time",
    ),
    Contender(
        "ours_fast", "ours ffmpeg_cpu skip_loop_filter (in-process)", "ours", partial(open_ours, True),
        about="the same with `skip_loop_filter=True`, the opt-in fast decode (no H.264/HEVC deblocking)",
    ),
    Contender(
        "ours_pool", "ours ffmpeg_cpu (DecoderPool, a worker per core)", "ours", open_ours_pool,
        sets=MANY_VIDEO_SETS, parallel=True,
        about="`DecoderPool(DecodeOptions(mode=\"ffmpeg_cpu\"), workers=<cores>)` writing .npy files: how users "
        "run many clips (a shard)",
    ),
    Contender(
        "nemo", "NeMo CPU command (ffmpeg {ffmpeg})", "nemo", partial(open_nemo, "bundled", TRANSNET_HW),
        binary="bundled",
        about="NeMo Curator's `get_frames_from_ffmpeg`: bytes to a temp file, `ffmpeg -threads 4 ... -s 48x27 -`, "
        "whole stdout buffered; width/height swap corrected",
    ),
    Contender(
        "nemo_system", "NeMo CPU command (ffmpeg {ffmpeg})", "nemo", partial(open_nemo, "system", TRANSNET_HW),
        binary="system", about="the same command with Debian 12's /usr/bin/ffmpeg (5.1, what research.md measured)",
    ),
    Contender(
        "floor", "decode-only floor (ffmpeg {ffmpeg} -f null)", "floor", open_floor, binary="bundled",
        returns_frames=False,
        about="`ffmpeg -threads 0 -i FILE -f null -`, one process per clip: decoding alone, no conversion or resize",
    ),
    Contender(
        "floor_parallel", "parallel decode floor ({cores} x ffmpeg {ffmpeg} -threads 1 -f null)", "floor",
        open_floor_parallel, binary="bundled", returns_frames=False, sets=MANY_VIDEO_SETS, parallel=True,
        about="`ffmpeg -threads 1 -i FILE -f null -`, as many processes at a time as cores, over the set's clips: "
        "the limit for many-video work",
    ),
    Contender(
        "imageio", "imageio-ffmpeg read_frames", "peer", open_imageio,
        about="`imageio_ffmpeg.read_frames(path, output_params=[\"-s\", \"48x27\"])` (its bundled ffmpeg, bicubic)",
    ),
    Contender(
        "pyav", "PyAV (AUTO threads, AREA)", "peer", open_pyav,
        about="`thread_type=\"AUTO\"`, `frame.reformat(48, 27, \"rgb24\", interpolation=\"AREA\").to_ndarray()`",
    ),
    Contender(
        "decord", "decord VideoReader(width=48, height=27)", "peer", open_decord, comparable=unpad_rows,
        about="resize inside decord; its pixels are compared after removing the row padding it returns at width 48",
    ),
    Contender(
        "torchcodec", "torchcodec CPU + torch area", "peer", open_torchcodec,
        about="`VideoDecoder(path)` full-size frames, `F.interpolate(mode=\"area\")` to 27x48",
    ),
    Contender(
        "video2numpy", "video2numpy FrameReader", "peer", open_video2numpy,
        about="OpenCV decode, bicubic resize of the short side to 27 and a square centre crop; its reader "
        "polls for results once a second, which weighs on short runs",
    ),
    Contender(
        "ours_224", "ours extract_to_file 224x224 (streams to disk)", "ours", open_ours_to_file,
        output_hw=MEMORY_HW, sets=("long_360p",),
        about="`extract_to_file(path, out, mode=\"ffmpeg_cpu\", output_hw=(224, 224))`: memory bounded by one batch",
    ),
    Contender(
        "nemo_224", "NeMo CPU command 224x224 (ffmpeg {ffmpeg})", "nemo", partial(open_nemo, "bundled", MEMORY_HW),
        binary="bundled", output_hw=MEMORY_HW, sets=("long_360p",),
        about="NeMo's command at 224x224: the whole output is held in memory",
    ),
)  # fmt: skip
BY_KEY = {c.key: c for c in CONTENDERS}
