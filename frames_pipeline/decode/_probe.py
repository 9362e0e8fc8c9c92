"""One probe for every mode: the main video stream, its geometry, colour, timing and true frame count."""

from __future__ import annotations

import dataclasses
import math
import os
import struct
import threading
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

import av
import av.error
import numpy as np
from av.sidedata.sidedata import Type

from frames_pipeline.decode._errors import DecodeError, Reason
from frames_pipeline.decode._input_policy import INDIRECT_FORMATS, VideoSource, readable_path, source_name
from frames_pipeline.decode._options import DecodeOptions, with_overrides
from frames_pipeline.decode._resize import ColourSpec

# A multi-threaded CPU decode captures FFmpeg's process-wide log whole (its frame threads log from
# threads of their own), so two of them in one process take turns under this lock.
FFMPEG_LOG = threading.Lock()
# Only local files; nested opens (playlists, concat) fail even if a demuxer tries.
LOCAL_ONLY = {"protocol_whitelist": "file"}
# FFmpeg's own rate for a stream that states none and whose packets carry neither times nor durations.
_UNSTATED_FPS = 25.0
_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "gif_pipe")


@dataclass(frozen=True)
class VideoInfo:
    """What a decoder needs to know about a video before it starts.

    ``*_from_content`` values are counted from the stream's packets, which is what a decoder will
    see; ``*_from_header`` values are what the container declares (None when it declares nothing),
    kept because they are what other tools report and where the two disagree the file is suspect.
    """

    path: str
    container: str
    stream_index: int
    codec: str
    width: int
    height: int
    rotation: int  # display rotation, degrees counter-clockwise (FFmpeg's sign): 0, 90, 180 or 270
    mirrored: bool  # then mirrored left to right: a display matrix with a flip (selfie cameras, edits)
    pix_fmt: str
    bit_depth: int
    chroma_hw: tuple[int, int]
    matrix: str  # Y'CbCr matrix: bt601 (also when unspecified, as swscale assumes), bt709, bt2020, ...
    full_range: bool
    fps_from_header: float
    fps_from_content: float
    duration_s_from_header: float | None
    duration_s_from_content: float
    num_frames_from_header: int | None
    num_frames_from_content: int
    vfr: bool
    has_audio: bool

    @property
    def display_hw(self) -> tuple[int, int]:
        """(height, width) as shown, after the rotation metadata."""
        return (self.width, self.height) if self.rotation % 180 else (self.height, self.width)

    @property
    def chroma(self) -> str:
        """Chroma subsampling as "420", "422" or "444"."""
        if self.chroma_hw == (self.height, self.width):
            return "444"
        return "422" if self.chroma_hw[0] == self.height else "420"

    @property
    def colour(self) -> ColourSpec:
        """How to read this stream's Y'CbCr samples."""
        return ColourSpec(self.matrix, self.full_range, self.bit_depth)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (``from_dict`` takes them back), plus the derived ``display_hw`` and ``chroma``."""
        return {**asdict(self), "display_hw": self.display_hw, "chroma": self.chroma}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> VideoInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in fields.items() if k in names}
        return cls(**{**values, "chroma_hw": tuple(values["chroma_hw"])})


@lru_cache(maxsize=1)
def tolerant_tags() -> dict[str, str]:
    """The ``av.open`` keywords that keep a tag which is not UTF-8 (old cameras write Latin-1) from
    making a video unreadable, for the PyAV installed here.

    PyAV 18 and older decode tags strictly unless ``metadata_errors`` says otherwise; PyAV 19 removed
    that keyword (passing it is a TypeError) and always decodes tags with ``surrogateescape``, which
    cannot fail. Which of the two is installed is asked with a call that fails fast either way: the
    keyword is checked before the file is looked for.
    """
    guard = {"metadata_errors": "backslashreplace"}
    try:
        av.open(os.path.join(os.sep, "nonexistent", "frames_pipeline_probe"), **guard).close()
    except TypeError:
        return {}
    except av.error.FFmpegError:
        pass
    return guard


def open_container(path: str, *, allow_remote: bool = False) -> av.container.InputContainer:
    """Open ``path`` with FFmpeg, mapping failures to DecodeError. Unless ``allow_remote``, only
    local files, and no format that opens further inputs (playlists, concat scripts)."""
    try:
        container = av.open(path, options={} if allow_remote else LOCAL_ONLY, timeout=30.0, **tolerant_tags())
    except av.error.FileNotFoundError:
        raise DecodeError(Reason.NOT_FOUND, "no such file", path=path) from None
    except (av.error.InvalidDataError, av.error.DemuxerNotFoundError, av.error.EOFError) as exc:
        raise DecodeError(Reason.NOT_A_VIDEO, f"FFmpeg cannot read the container: {exc}", path=path) from None
    except av.error.FFmpegError as exc:
        raise DecodeError(Reason.CORRUPT, f"FFmpeg failed to open the file: {exc}", path=path) from None
    name = container.format.name
    if not allow_remote and set(name.split(",")) & INDIRECT_FORMATS:
        container.close()
        raise DecodeError(Reason.REMOTE_INPUT, f"the {name} format reads other inputs; refused", path=path)
    if name in _IMAGE_FORMATS:
        container.close()
        raise DecodeError(Reason.NOT_A_VIDEO, f"a still image ({name}), not a video", path=path)
    return container


def main_video_stream(container: av.container.InputContainer, path: str) -> av.VideoStream:
    """The stream a viewer would watch: a real video (not cover art), default first, then largest."""
    candidates = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not candidates:
        what = "only cover art" if container.streams.video else "no video stream"
        raise DecodeError(Reason.NO_VIDEO_STREAM, f"the file has {what}", path=path)
    # A stream whose codec FFmpeg cannot name (unknown, or its description damaged) has no codec context.
    candidates = [s for s in candidates if s.codec_context is not None]
    if not candidates:
        raise DecodeError(Reason.UNSUPPORTED_CODEC, "no video stream names a codec FFmpeg can decode", path=path)
    return max(
        candidates,
        key=lambda s: (
            bool(s.disposition & av.stream.Disposition.default),
            (s.codec_context.width or 0) * (s.codec_context.height or 0),
        ),
    )


def probe(source: VideoSource, *, options: DecodeOptions | None = None, **overrides: Any) -> VideoInfo:
    """Describe the main video stream of ``source`` (a path, or ``VideoBytes``); raises DecodeError
    with a reason if it is unusable.

    The input rules and limits are those of ``options`` (keyword arguments override its fields:
    ``allowed_roots``, ``allow_remote``, ``max_pixels``, ``timeout_s``), so a video this accepts is
    one a decode with the same options accepts. The frame count is counted from the stream's
    packets and the orientation read from the first decoded frame's display matrix: both are what a
    decoder will actually see.
    """
    opts = with_overrides(options, overrides)
    with readable_path(source, allow_remote=opts.allow_remote, allowed_roots=opts.allowed_roots) as path:
        info = probe_readable(path, opts)
    return dataclasses.replace(info, path=source_name(source, info.path))


def probe_readable(path: str, opts: DecodeOptions) -> VideoInfo:
    """``probe`` of a path that ``readable_path`` gave; ``VideoInfo.path`` is that path."""
    deadline = time.monotonic() + opts.timeout_s
    with open_container(path, allow_remote=opts.allow_remote) as container:
        stream = main_video_stream(container, path)
        ctx = stream.codec_context
        width, height = ctx.width or 0, ctx.height or 0
        if width * height > opts.max_pixels:
            raise DecodeError(
                Reason.TOO_LARGE, f"declares {width}x{height}, over max_pixels={opts.max_pixels}", path=path
            )
        if not ctx.codec or not ctx.is_decoder:
            raise DecodeError(Reason.UNSUPPORTED_CODEC, f"no decoder for codec {ctx.name!r}", path=path)
        codec = ctx.codec.canonical_name  # "av1", not the decoder's name ("libdav1d")
        ctx.options = {"max_pixels": str(opts.max_pixels)}
        stamps, durations, first = _scan(container, stream, deadline, path)
        if not stamps:
            raise DecodeError(Reason.ZERO_FRAMES, "the video stream has no frames", path=path)
        if first is None:
            raise DecodeError(Reason.CORRUPT, f"none of {len(stamps)} packets decodes to a frame", path=path)
        width, height = first.width, first.height
        if width * height > opts.max_pixels:
            raise DecodeError(Reason.TOO_LARGE, f"decodes to {width}x{height}, over max_pixels", path=path)
        fmt = first.format
        bit_depth = fmt.components[0].bits
        colour = ColourSpec.from_ffmpeg(first.colorspace, first.color_range, bit_depth)
        rotation, mirrored = display_orientation(first)
        nominal = float(stream.base_rate or stream.guessed_rate or stream.average_rate or 0)
        timing = _timing(stamps, durations, stream.time_base or Fraction(1, 90000), nominal)
        return VideoInfo(
            path=path,
            container=container.format.name,
            stream_index=stream.index,
            codec=codec,
            width=width,
            height=height,
            rotation=rotation,
            mirrored=mirrored,
            pix_fmt=fmt.name,
            bit_depth=bit_depth,
            chroma_hw=(fmt.chroma_height(height), fmt.chroma_width(width)),
            matrix=colour.matrix,
            full_range=colour.full_range,
            fps_from_header=nominal,
            fps_from_content=timing.fps,
            duration_s_from_header=_header_duration_s(container, stream),
            duration_s_from_content=timing.duration_s,
            num_frames_from_header=int(stream.frames) or None,
            num_frames_from_content=len(stamps),
            vfr=timing.vfr,
            has_audio=bool(container.streams.audio),
        )


def display_orientation(frame: av.VideoFrame) -> tuple[int, bool]:
    """(rotation, mirrored) for ``frame``'s display matrix, as the ffmpeg CLI shows it: turned
    ``rotation`` degrees counter-clockwise, then mirrored left to right if ``mirrored``.

    The angle alone (PyAV's ``frame.rotation``) cannot tell a mirror from a turn: [-1 0; 0 1] reads
    as 180 degrees. The CLI's autorotate (fftools/ffmpeg_filter.c) looks at the matrix's signs
    too, and picks transpose, hflip or vflip; those cases, written as a turn and a mirror, are
    these. Other angles are turned by the nearest quarter (the CLI rotates freely).
    """
    side = frame.side_data.get(Type.DISPLAYMATRIX)
    if side is None:
        return 0, False
    m = struct.unpack("=9i", bytes(side)[:36])
    scale_x, scale_y = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if not scale_x or not scale_y:
        return 0, False
    # Clockwise degrees in [0, 360), as the CLI's get_rotation() computes them.
    theta = round(math.degrees(math.atan2(m[1] / scale_y, m[0] / scale_x)))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:  # transpose=cclock_flip, else transpose=clock
        return 270, m[3] > 0
    if abs(theta - 270) < 1:  # transpose=clock_flip, else transpose=cclock
        return 90, m[3] < 0
    if abs(theta - 180) < 1:  # hflip if m[0] < 0, vflip if m[4] < 0
        return {(True, True): (180, False), (True, False): (0, True), (False, True): (180, True)}.get(
            (m[0] < 0, m[4] < 0), (0, False)
        )
    if abs(theta) < 1:  # vflip if m[4] < 0
        return (180, True) if m[4] < 0 else (0, False)
    return round(-theta / 90) * 90 % 360, False


def _header_duration_s(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    """The stream's declared duration, else the container's; None when neither says."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration else None


def _scan(
    container: av.container.InputContainer, stream: av.VideoStream, deadline: float, path: str
) -> tuple[list[int | None], list[int], av.VideoFrame | None]:
    """Presentation timestamps (None where a packet has none) and durations of the packets a decoder
    will show, on the timeline ``PacketClock`` joins, plus the first frame that decodes. Packets an
    edit list hides are decoded for reference but never shown, so they are not counted."""
    clock = PacketClock(stream)
    stamps: list[int | None] = []
    durations: list[int] = []
    first: av.VideoFrame | None = None
    try:
        for packet in container.demux(stream):
            if time.monotonic() > deadline:
                raise DecodeError(Reason.TIMEOUT, "probe ran past its time limit", path=path)
            if packet.size == 0:
                if first is None:
                    first = _first_frame(stream, packet)
                continue
            clock.place(packet)
            if first is None:
                first = _first_frame(stream, packet)
            if not packet.is_discard:
                stamps.append(packet.pts)
                durations.append(packet.duration or 0)
    except av.error.FFmpegError:
        pass  # truncated or damaged tail: count what demuxed; the decode reports the damage
    if first is None and stamps:
        first = _first_frame(stream, None)  # decoders that hold frames back until flushed
    return stamps, durations, first


@dataclass(frozen=True)
class _Timing:
    duration_s: float
    fps: float
    vfr: bool


def _timing(stamps: list[int | None], durations: list[int], time_base: Fraction, nominal_fps: float) -> _Timing:
    """Duration, rate and VFR-ness of the counted packets. When some packets carry no timestamp (raw
    H.264, MPEG-TS without PTS, laced Matroska), time comes from packet durations, as FFmpeg
    times such frames, else from the nominal rate."""
    known = [d for d in durations if d > 0]
    packet_step = float(np.median(known)) * float(time_base) if known else 1 / (nominal_fps or _UNSTATED_FPS)
    if all(stamp is not None for stamp in stamps):
        seconds = (np.sort(np.asarray(stamps, dtype=np.int64)) - min(stamps)) * float(time_base)
        deltas = np.diff(seconds)
        step = float(np.median(deltas)) if deltas.size else 0.0
        duration = float(seconds[-1] + step)
        vfr = bool(deltas.size > 1 and np.ptp(deltas) > max(0.02 * step, 2.5 * float(time_base)))
        return _Timing(duration, len(stamps) / duration if duration > 0 else nominal_fps or 1 / packet_step, vfr)
    return _Timing(len(stamps) * packet_step, 1 / packet_step, vfr=False)


class PacketClock:
    """Puts the packets of one stream on one increasing timeline, even where the file's own restarts.

    Concatenated files (``cat a.ts b.ts``, spliced broadcasts) start their timestamps again part way
    through. A packet whose decode timestamp goes back starts a new run; it and every later packet
    are shifted to continue one packet duration after the one before, so the decoder's frames stay
    in presentation order and none looks older than the frames before it. Muxers refuse decode
    timestamps that go back, so valid files are never shifted. The probe and the CPU decoder place
    packets with the same clock, so they agree on the count and the times.
    """

    def __init__(self, stream: av.VideoStream) -> None:
        self.time_base = stream.time_base or Fraction(1, 90000)
        self.restarts: list[str] = []  # what was shifted, for the decode's warnings
        self._offset = 0
        self._last_dts: int | None = None
        self._last_duration = 0

    def place(self, packet: av.Packet) -> None:
        """Shift ``packet``'s timestamps (in place) onto the joined timeline."""
        if packet.dts is not None:
            dts = packet.dts + self._offset
            if self._last_dts is not None and dts < self._last_dts:
                shift = self._last_dts + max(self._last_duration, 1) - dts
                self.restarts.append(
                    f"timestamps jump back from {float(self._last_dts * self.time_base):.3f} s to "
                    f"{float(dts * self.time_base):.3f} s (concatenated streams?): later frames are "
                    f"shifted by {float(shift * self.time_base):+.3f} s to keep time increasing"
                )
                self._offset += shift
            self._last_dts = packet.dts + self._offset
            self._last_duration = packet.duration or self._last_duration
        if self._offset:
            if packet.dts is not None:
                packet.dts += self._offset
            if packet.pts is not None:
                packet.pts += self._offset


def _first_frame(stream: av.VideoStream, packet: av.Packet | None) -> av.VideoFrame | None:
    try:
        frames = stream.codec_context.decode(packet)
    except av.error.FFmpegError:
        return None
    return frames[0] if frames else None
