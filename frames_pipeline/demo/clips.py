"""Small, deterministic real videos for demos and tests, encoded in-process with PyAV's bundled encoders.

``make_sample_videos`` writes the demo clips the README uses; ``make_edge_corpus`` writes one file per
case the decoder must handle (rotation and mirroring, VFR, 10-bit, odd sizes, cover art, timestamps
that restart or are missing, edit lists, raw streams, damaged and hostile inputs).
Every clip shows ``pattern_frame``: four flat quadrants that prove orientation even at 27x48, and a
centre square whose brightness changes every frame.
"""

from __future__ import annotations

import csv
import os
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from numpy.typing import NDArray

from frames_pipeline.decode import find_ffmpeg

# Saturated enough to tell apart after chroma subsampling, inside limited range so they survive Y'CbCr.
QUADRANT_COLOURS: dict[str, tuple[int, int, int]] = {
    "top_left": (200, 40, 40),
    "top_right": (40, 200, 40),
    "bottom_left": (40, 40, 200),
    "bottom_right": (220, 220, 220),
}
DEMO_HW = (180, 320)
CORPUS_HW = (144, 256)
# x264/x265 print progress to stderr and use all cores by default; one thread keeps output reproducible.
_X265_PARAMS = "log-level=error:pools=1:frame-threads=1"
_SEED = 20240601


def expected_quadrant_colours() -> dict[str, tuple[int, int, int]]:
    """The RGB colour of each quadrant of ``pattern_frame``, keyed top_left/top_right/bottom_left/bottom_right."""
    return dict(QUADRANT_COLOURS)


def pattern_frame(index: int, height: int, width: int) -> NDArray[np.uint8]:
    """Frame ``index`` of the test pattern: four coloured quadrants and a centre square of changing brightness."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    mid_h, mid_w = height // 2, width // 2
    frame[:mid_h, :mid_w] = QUADRANT_COLOURS["top_left"]
    frame[:mid_h, mid_w:] = QUADRANT_COLOURS["top_right"]
    frame[mid_h:, :mid_w] = QUADRANT_COLOURS["bottom_left"]
    frame[mid_h:, mid_w:] = QUADRANT_COLOURS["bottom_right"]
    # 53 is coprime with 256, so 256 consecutive frames all differ.
    frame[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = (index * 53) % 256
    return frame


def quadrant_means(frames: NDArray[np.uint8]) -> dict[str, NDArray[np.float64]]:
    """Mean RGB of the outer corner of each quadrant over all frames (away from the centre square and edges)."""
    h, w = frames.shape[1:3]
    rows = {"top": slice(0, max(1, h // 4)), "bottom": slice(h - max(1, h // 4), h)}
    cols = {"left": slice(0, max(1, w // 4)), "right": slice(w - max(1, w // 4), w)}
    return {
        f"{r}_{c}": frames[:, rows[r], cols[c]].reshape(-1, 3).mean(axis=0)
        for r in ("top", "bottom")
        for c in ("left", "right")
    }


def write_video(
    path: str | os.PathLike[str],
    frames_or_count: int | Iterable[NDArray[np.uint8]],
    *,
    size: tuple[int, int] = CORPUS_HW,
    fps: int = 30,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    timestamps: Sequence[float] | None = None,
    crf: int | None = None,
    preset: str | None = None,
    threads: int = 1,
    gop: int | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode frames (or ``frames_or_count`` pattern frames of ``size`` (h, w)) to ``path``.

    ``rotation`` sets the display matrix (degrees counter-clockwise, as FFmpeg reports it);
    ``timestamps`` (seconds, increasing) makes a variable-frame-rate stream.
    """
    out = Path(path)
    if isinstance(frames_or_count, int):
        frames: Iterable[NDArray[np.uint8]] = (pattern_frame(i, *size) for i in range(frames_or_count))
    else:
        frames = frames_or_count
    # 1/90000 represents 1/30 and 1/15 s gaps exactly; a CFR stream counts in frames.
    time_base = Fraction(1, 90000) if timestamps is not None else Fraction(1, fps)
    options = {"crf": str(crf)} if crf is not None else {}
    if gop is not None:
        options["g"] = str(gop)
    if preset is not None:
        options["preset"] = preset
    if codec == "libx265":
        options["x265-params"] = _X265_PARAMS if threads == 1 else "log-level=error"
    with _quiet_encoder(codec), av.open(str(out), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.height, stream.width = size
        stream.pix_fmt = pix_fmt
        stream.codec_context.time_base = time_base
        stream.codec_context.thread_count = threads
        if rotation:
            stream.set_display_rotation(rotation)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = round(timestamps[i] / time_base) if timestamps is not None else i
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out


@contextmanager
def _quiet_encoder(codec: str) -> Iterator[None]:
    """SVT-AV1 prints its banner straight to stderr, past FFmpeg's log level; SVT_LOG=1 keeps errors only."""
    if codec != "libsvtav1" or "SVT_LOG" in os.environ:
        yield
        return
    os.environ["SVT_LOG"] = "1"
    try:
        yield
    finally:
        del os.environ["SVT_LOG"]


def vfr_timestamps(count: int = 40) -> NDArray[np.float64]:
    """Presentation times (s) of the ``vfr`` clip: gaps alternate between 1/30 and 1/15 s."""
    gaps = np.where(np.arange(count - 1) % 2 == 0, 1 / 30, 1 / 15)
    return np.concatenate([[0.0], np.cumsum(gaps)])


def scene_frames(
    lengths: Sequence[int], size: tuple[int, int] = CORPUS_HW, seed: int = _SEED
) -> Iterator[NDArray[np.uint8]]:
    """Frames of ``len(lengths)`` scenes joined by hard cuts, scene ``i`` ``lengths[i]`` frames long: each
    a different blocky colour texture panning a pixel per frame, so that only the cuts change the picture."""
    rng = np.random.default_rng(seed)
    height, width = size
    for length in lengths:
        blocks = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
        texture = np.kron(blocks, np.ones((-(-2 * height // 6), -(-2 * width // 10), 1), dtype=np.uint8))
        step_y, step_x = rng.choice([-1, 1], size=2)
        for i in range(length):
            top = int(np.clip(height // 2 + step_y * i, 0, texture.shape[0] - height))
            left = int(np.clip(width // 2 + step_x * i, 0, texture.shape[1] - width))
            yield texture[top : top + height, left : left + width]


def run_ffmpeg(*args: str) -> None:
    """Run the bundled ffmpeg CLI quietly; raise with its stderr on failure."""
    cmd = [find_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({done.returncode}): {done.stderr.strip()}")


def make_sample_videos(directory: str | os.PathLike[str]) -> list[Path]:
    """Write the demo clips (320x180, 2-3 s) into ``directory``; returns their paths."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    return [
        write_video(root / "h264.mp4", 75, size=DEMO_HW),
        write_video(root / "hevc.mp4", 60, size=DEMO_HW, codec="libx265"),
        write_video(root / "rotated_90.mp4", 60, size=DEMO_HW, rotation=90),
        write_video(root / "vfr.mp4", 60, size=DEMO_HW, timestamps=vfr_timestamps(60)),
        write_video(root / "hevc_10bit.mkv", 60, size=DEMO_HW, codec="libx265", pix_fmt="yuv420p10le"),
        write_video(root / "yuv444.mp4", 60, size=DEMO_HW, pix_fmt="yuv444p"),
    ]


def write_sample_manifest(manifest_path: str | os.PathLike[str], videos: Iterable[str | os.PathLike[str]]) -> Path:
    """Write a ``video_id,path`` CSV; paths are relative to the manifest's folder so the pair can move."""
    manifest = Path(manifest_path)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    base = manifest.parent.resolve()
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video_id", "path"])
        for video in videos:
            path = Path(video).resolve()
            writer.writerow([path.stem, os.path.relpath(path, base)])
    return manifest


def make_edge_corpus(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Write one file per decoder edge case into ``directory``/clips; returns {case: path}.

    ``symlink_out`` points into ``directory``/outside, so ``allowed_roots=(clips,)`` must refuse it;
    ``missing`` is a path that does not exist.
    """
    root = Path(directory)
    clips = root / "clips"
    outside = root / "outside"
    clips.mkdir(parents=True, exist_ok=True)
    outside.mkdir(exist_ok=True)
    rng = np.random.default_rng(_SEED)
    corpus: dict[str, Path] = {
        "pattern": write_video(clips / "pattern.mp4", 30),
        "vfr": write_video(clips / "vfr.mp4", 40, timestamps=vfr_timestamps(40)),
        # Matroska stores milliseconds: a constant 30 fps has 33 and 34 ms gaps and is still CFR.
        "cfr_mkv": write_video(clips / "cfr.mkv", 30),
        "rotated_90": write_video(clips / "rotated_90.mp4", 30, rotation=90),
        "rotated_270": write_video(clips / "rotated_270.mp4", 30, rotation=270),
        "hevc_10bit": write_video(clips / "hevc_10bit.mp4", 30, codec="libx265", pix_fmt="yuv420p10le"),
        # 4:4:4 has no chroma subsampling, so H.264 takes odd sizes without cropping.
        "odd_size": write_video(clips / "odd_size.mp4", 30, size=(37, 65), pix_fmt="yuv444p"),
        "yuv444": write_video(clips / "yuv444.mp4", 30, pix_fmt="yuv444p"),
        "yuv422": write_video(clips / "yuv422_10bit.mp4", 30, pix_fmt="yuv422p10le"),
        "cover_art": _write_cover_art(clips / "cover_art.mp4", rng),
        "av1": write_video(clips / "av1.mp4", 30, codec="libsvtav1"),
        "truncated": _write_truncated(clips / "truncated.mp4"),
        "no_moov": _write_no_moov(clips / "no_moov.mp4"),
        "corrupt": _write_corrupt(clips / "corrupt.mp4", rng),
        "garbage": _write_bytes(clips / "garbage.mp4", rng.bytes(64 * 1024)),
        "empty": _write_bytes(clips / "empty.mp4", b""),
        "audio_only": _write_audio_only(clips / "audio_only.m4a"),
        "still_image": _write_still_image(clips / "still_image.png"),
        "zero_frames": _write_zero_frames(clips / "zero_frames.avi"),
        "bomb": _write_bomb(clips / "bomb.mkv"),
        "playlist": _write_bytes(
            clips / "playlist.m3u8",
            b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n"
            b"http://example.invalid/segment0.ts\n#EXT-X-ENDLIST\n",
        ),
        "ffconcat": _write_bytes(clips / "concat.ffconcat", b"ffconcat version 1.0\nfile 'pattern.mp4'\n"),
        # Mirrored, not turned: the display matrix [-1 0; 0 1], whose angle alone reads as 180 degrees.
        "mirrored": with_display_matrix(
            write_video(clips / ".mirrored.src.mp4", 30), clips / "mirrored.mp4", hflip=True
        ),
        "ts_restart": _write_ts_restart(clips / "ts_restart.ts"),
        "size_change": _write_size_change(clips / "size_change.ts"),
        "missing_pts": _write_missing_pts(clips / "missing_pts.mkv"),
        "edit_list": _write_edit_list(clips / "edit_list.mp4"),
        "annexb": _write_annexb(clips / "annexb.h264"),
        "symlink_out": _write_symlink(clips / "symlink_out.mp4", write_video(outside / "elsewhere.mp4", 10)),
        "missing": clips / "missing.mp4",
    }
    return corpus


def with_display_matrix(
    source: Path, path: Path, *, rotation: int = 0, hflip: bool = False, vflip: bool = False
) -> Path:
    """Copy ``source`` to ``path`` (MP4) with a display matrix of ``rotation`` degrees counter-clockwise
    and the flips, as the ffmpeg CLI writes them (``-display_rotation``, ``-display_hflip``, ``-display_vflip``);
    ``source`` is deleted."""
    matrix = ["-display_rotation", str(rotation)] + ["-display_hflip"] * hflip + ["-display_vflip"] * vflip
    try:
        run_ffmpeg(*matrix, "-i", str(source), "-c", "copy", str(path))
    finally:
        source.unlink()
    return path


def _to_mpegts(source: Path, path: Path, *extra: str) -> Path:
    run_ffmpeg("-i", str(source), "-c", "copy", "-bsf:v", "h264_mp4toannexb", *extra, "-f", "mpegts", str(path))
    source.unlink()
    return path


def _write_ts_restart(path: Path) -> Path:
    """Two 30-frame MPEG-TS files joined with ``cat``: the second's timestamps start again at the first's."""
    parts = [
        _to_mpegts(write_video(path.with_name(f".{path.stem}.{i}.mp4"), 30), path.with_suffix(f".{i}")) for i in (1, 2)
    ]
    path.write_bytes(b"".join(part.read_bytes() for part in parts))
    for part in parts:
        part.unlink()
    return path


def _write_size_change(path: Path) -> Path:
    """30 frames of 144x256, then 30 of 72x128 timed to follow them (the muxers' start delays make the
    join overlap by a frame or two, as splices do), in one MPEG-TS stream."""
    first = _to_mpegts(write_video(path.with_name(f".{path.stem}.1.mp4"), 30), path.with_suffix(".1"))
    small = write_video(path.with_name(f".{path.stem}.2.mp4"), 30, size=(CORPUS_HW[0] // 2, CORPUS_HW[1] // 2))
    second = _to_mpegts(small, path.with_suffix(".2"), "-output_ts_offset", "1")
    path.write_bytes(first.read_bytes() + second.read_bytes())
    first.unlink()
    second.unlink()
    return path


def _write_edit_list(path: Path) -> Path:
    """120 frames (4 s, one keyframe) whose MP4 edit list skips the first 2 s: 60 frames are shown,
    and the 60 before are in the file only for the decoder to reach them."""
    source = write_video(path.with_name(f".{path.stem}.src.mp4"), 120, gop=300)
    try:
        run_ffmpeg("-ss", "2", "-i", str(source), "-c", "copy", str(path))
    finally:
        source.unlink()
    return path


def _write_annexb(path: Path) -> Path:
    """A raw Annex-B H.264 stream of 30 frames at 30 fps: no container, so no timestamps at all."""
    source = write_video(path.with_name(f".{path.stem}.src.mp4"), 30)
    try:
        run_ffmpeg("-i", str(source), "-c", "copy", "-bsf:v", "h264_mp4toannexb", "-f", "h264", str(path))
    finally:
        source.unlink()
    return path


def _write_missing_pts(path: Path) -> Path:
    """A 60-frame Matroska file whose frames are laced in pairs, with no default duration: the demuxer
    gives the second frame of each lace no timestamp, so half the packets (B-frames among them) have none."""
    source = write_video(path.with_name(f".{path.stem}.src.mkv"), 60)
    try:
        path.write_bytes(_laced_in_pairs(source.read_bytes()))
    finally:
        source.unlink()
    return path


# Matroska element IDs (with their length marker bits, as written).
_EBML_HEADER, _SEGMENT, _SEEK_HEAD, _CUES = 0x1A45DFA3, 0x18538067, 0x114D9B74, 0x1C53BB6B
_TRACKS, _TRACK_ENTRY, _DEFAULT_DURATION, _CLUSTER, _SIMPLE_BLOCK = 0x1654AE6B, 0xAE, 0x23E383, 0x1F43B675, 0xA3
_CRC32 = 0xBF  # a checksum of the element's other children, which relacing changes


def _laced_in_pairs(mkv: bytes) -> bytes:
    """``mkv`` (one video track, as FFmpeg writes it) with every two SimpleBlocks of a cluster in one
    Xiph-laced block and the track's DefaultDuration removed. Seek head and cues (byte positions)
    and checksums, which all change, are dropped; the demuxer reads the clusters in order without them."""

    def laced(blocks: list[bytes]) -> bytes:
        if len(blocks) == 1:
            return _ebml(_SIMPLE_BLOCK, blocks[0])
        first, second = blocks  # each: track number (1 byte), relative time (2), flags (1), frame
        size = len(first) - 4
        sizes = b"\xff" * (size // 255) + bytes([size % 255])
        return _ebml(_SIMPLE_BLOCK, first[:3] + bytes([first[3] | 0x02, 1]) + sizes + first[4:] + second[4:])

    def cluster(body: bytes) -> bytes:
        out, pending = [], []
        for element_id, data in _ebml_elements(body):
            if element_id == _CRC32:
                continue
            if element_id != _SIMPLE_BLOCK:
                out.append(_ebml(element_id, data))
                continue
            pending.append(data)
            if len(pending) == 2:
                out.append(laced(pending))
                pending = []
        if pending:
            out.append(laced(pending))
        return b"".join(out)

    def tracks(body: bytes) -> bytes:
        entries = [(i, data) for i, data in _ebml_elements(body) if i != _CRC32]
        return b"".join(_ebml(i, track_entry(data) if i == _TRACK_ENTRY else data) for i, data in entries)

    def track_entry(body: bytes) -> bytes:
        return b"".join(_ebml(i, data) for i, data in _ebml_elements(body) if i not in (_DEFAULT_DURATION, _CRC32))

    segment = []
    (_, header), (segment_id, body) = _ebml_elements(mkv)
    assert segment_id == _SEGMENT, "expected the EBML header and one segment"
    for element_id, data in _ebml_elements(body):
        if element_id in (_SEEK_HEAD, _CUES):
            continue
        if element_id == _TRACKS:
            data = tracks(data)
        elif element_id == _CLUSTER:
            data = cluster(data)
        segment.append(_ebml(element_id, data))
    return _ebml(_EBML_HEADER, header) + _ebml(_SEGMENT, b"".join(segment))


def _ebml_vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int]:
    """An EBML variable-length integer at ``pos``: (value, position after it)."""
    length = 1
    while not data[pos] & (0x80 >> (length - 1)):
        length += 1
    value = data[pos] if keep_marker else data[pos] & (0xFF >> length)
    for byte in data[pos + 1 : pos + length]:
        value = (value << 8) | byte
    return value, pos + length


def _ebml_elements(data: bytes) -> list[tuple[int, bytes]]:
    """(element ID, body) of each element in ``data``, in order."""
    elements, pos = [], 0
    while pos < len(data):
        element_id, pos = _ebml_vint(data, pos, keep_marker=True)
        size, pos = _ebml_vint(data, pos, keep_marker=False)
        elements.append((element_id, data[pos : pos + size]))
        pos += size
    return elements


def _ebml(element_id: int, body: bytes) -> bytes:
    """One EBML element, its size written in 8 bytes."""
    return (
        element_id.to_bytes((element_id.bit_length() + 7) // 8, "big") + (1 << 56 | len(body)).to_bytes(8, "big") + body
    )


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _write_cover_art(path: Path, rng: np.random.Generator) -> Path:
    # The picture is larger than the video, so a probe that picks the largest (or last) stream gets it wrong.
    video = write_video(path.with_name(f".{path.stem}.video.mp4"), 30)
    cover = _write_still_image(path.with_name(f".{path.stem}.cover.png"), size=(320, 320), rng=rng)
    try:
        copy_as_cover = ["-map", "0:v", "-map", "1", "-c", "copy", "-disposition:v:1", "attached_pic"]
        run_ffmpeg("-i", str(video), "-i", str(cover), *copy_as_cover, str(path))
    finally:
        video.unlink()
        cover.unlink()
    return path


def _write_truncated(path: Path) -> Path:
    # faststart puts the index first, so the head of the file stays playable after the cut.
    write_video(path, 30, container_options={"movflags": "+faststart"})
    data = path.read_bytes()
    mdat = data.index(b"mdat")
    path.write_bytes(data[: mdat + (len(data) - mdat) // 2])
    return path


def _write_no_moov(path: Path) -> Path:
    write_video(path, 30)
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"moov") // 2])
    return path


def _write_corrupt(path: Path, rng: np.random.Generator) -> Path:
    # Short GOPs keep the damage local: frames after the next keyframe decode cleanly again.
    write_video(path, 60, gop=10, container_options={"movflags": "+faststart"})
    data = bytearray(path.read_bytes())
    mdat = data.index(b"mdat")
    start = mdat + (len(data) - mdat) // 2
    data[start : start + 256] = bytes(b ^ 0xFF for b in data[start : start + 256])
    path.write_bytes(bytes(data))
    return path


def _write_audio_only(path: Path) -> Path:
    rate = 44100
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    with av.open(str(path), "w", format="ipod") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        for start in range(0, rate, 1024):
            chunk = tone[None, start : start + 1024]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _write_still_image(path: Path, size: tuple[int, int] = CORPUS_HW, rng: np.random.Generator | None = None) -> Path:
    image = pattern_frame(0, *size)
    if rng is not None:
        image = image ^ rng.integers(0, 16, size=image.shape, dtype=np.uint8)
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png")
        stream.height, stream.width = size
        stream.pix_fmt = "rgb24"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def _write_zero_frames(path: Path) -> Path:
    # A video stream header and no packets. AVI keeps an empty stream; MP4 and MKV drop or reject it.
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.height, stream.width = CORPUS_HW
        stream.pix_fmt = "yuv420p"
        container.start_encoding()
    return path


def _write_bomb(path: Path) -> Path:
    """A rawvideo MKV of two 256x256 frames whose header is patched to claim 16000x9000.

    16000x9000 (144 Mpixel) passes FFmpeg's own image size check, so only a max_pixels check stops a
    decoder from allocating it; both values keep the 2-byte EBML width of 256, so patching in place is safe.
    """
    side = 256
    with av.open(str(path), "w") as container:
        stream = container.add_stream("rawvideo", rate=30)
        stream.height = stream.width = side
        stream.pix_fmt = "gray"
        for i in range(2):
            frame = av.VideoFrame.from_ndarray(np.full((side, side), i * 100, np.uint8), format="gray")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    data = path.read_bytes()
    width_el, height_el = b"\xb0\x82\x01\x00", b"\xba\x82\x01\x00"  # PixelWidth, PixelHeight = 256
    if data.count(width_el) != 1 or data.count(height_el) != 1:
        raise RuntimeError("unexpected MKV layout: cannot patch the picture size")
    data = data.replace(width_el, b"\xb0\x82" + (16000).to_bytes(2, "big"))
    data = data.replace(height_el, b"\xba\x82" + (9000).to_bytes(2, "big"))
    path.write_bytes(data)
    return path


def _write_symlink(link: Path, target: Path) -> Path:
    link.unlink(missing_ok=True)
    link.symlink_to(target.resolve())
    return link
