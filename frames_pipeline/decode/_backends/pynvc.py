"""``pynvc``: NVDEC through PyNvVideoCodec's low-level decoder, downscaling inside NVDEC.

``setReconfigParams`` makes the decoder write each picture at a small size (4x the output, so its
simple scaler cannot alias), so full-resolution frames never leave the GPU: only a few kilobytes
per frame are copied to the host, where ``resize.FrameShrinker`` finishes the area resize.
Decoders are kept per codec and reused across videos (creating one costs ~0.3 s).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from frames_pipeline.decode._backends import FrameBatch
from frames_pipeline.decode._cuda import cuda_unavailable_reason
from frames_pipeline.decode._errors import DecodeError, Reason
from frames_pipeline.decode._options import DecodeOptions
from frames_pipeline.decode._probe import VideoInfo
from frames_pipeline.decode._resize import FrameShrinker, coded_size

# FFmpeg codec name -> PyNvVideoCodec cudaVideoCodec member.
_CODECS = {
    "h264": "H264",
    "hevc": "HEVC",
    "av1": "AV1",
    "vp9": "VP9",
    "vp8": "VP8",
    "mpeg2video": "MPEG2",
    "mpeg4": "MPEG4",
    "vc1": "VC1",
    "mjpeg": "JPEG",
}
# NVDEC's scaler samples few source pixels per output pixel: shrink to this multiple of the output.
_NVDEC_OVERSAMPLE = 4
_MAX_DECODERS = 4
_WIDE_FORMATS = ("P016", "YUV444_16Bit", "P216")


def intermediate_size(info: VideoInfo, output_hw: tuple[int, int]) -> tuple[int, int]:
    """(height, width) NVDEC should decode to: even, at least 4x the output, never above the source."""
    out_h, out_w = coded_size(output_hw, info.rotation)

    def side(target: int, source: int) -> int:
        want = min(source, target * _NVDEC_OVERSAMPLE)
        return max(2, want + (want % 2)) if want < source else source

    return side(out_h, info.height), side(out_w, info.width)


class PyNvcBackend:
    mode = "pynvc"

    def __init__(self, options: DecodeOptions) -> None:
        reason = cuda_unavailable_reason(options.gpu_id)
        if reason:
            raise DecodeError(Reason.GPU_UNAVAILABLE, reason)
        try:
            import PyNvVideoCodec as nvc
        except (ImportError, RuntimeError, OSError) as exc:  # RuntimeError: driver libraries missing
            raise DecodeError(Reason.GPU_UNAVAILABLE, f"PyNvVideoCodec cannot load: {exc}") from None
        self.nvc = nvc
        self.gpu_id = options.gpu_id
        self._decoders: dict[tuple[str, int, int, int], tuple[Any, int, int]] = {}

    def unsupported(self, info: VideoInfo) -> str | None:
        name = _CODECS.get(info.codec)
        if name is None:
            return f"NVDEC does not decode {info.codec}"
        caps = _caps(self.nvc, self.gpu_id, name, info.chroma, info.bit_depth)
        if not caps.get("supported"):
            return f"NVDEC on this GPU does not decode {info.codec} {info.chroma} {info.bit_depth}-bit"
        low = (caps.get("width_min", 0), caps.get("height_min", 0))
        high = (caps.get("width_max", 1 << 30), caps.get("height_max", 1 << 30))
        if not (low[0] <= info.width <= high[0] and low[1] <= info.height <= high[1]):
            return f"{info.width}x{info.height} is outside NVDEC's {info.codec} limits {low} to {high}"
        return None

    def decode(
        self, info: VideoInfo, options: DecodeOptions, deadline: float, warnings: list[str]
    ) -> Iterator[FrameBatch]:
        nvc = self.nvc
        try:
            demuxer = nvc.CreateDemuxer(filename=info.path)
        except Exception as exc:  # PyNvVCException and friends
            raise DecodeError(Reason.NOT_A_VIDEO, f"NVDEC demuxer: {exc}", path=info.path) from None
        if demuxer.GetVideoStreamId() != info.stream_index:
            raise DecodeError(
                Reason.UNSUPPORTED_CODEC,
                f"PyNvVideoCodec picks stream {demuxer.GetVideoStreamId()}, the main video is {info.stream_index}",
                path=info.path,
            )
        inter_h, inter_w = intermediate_size(info, options.output_hw)
        decoder = self._decoder(info, inter_w, inter_h)
        time_base = demuxer.GetTimebaseNum() / max(demuxer.GetTimebaseDen(), 1)
        batch = _NV12Batch(info, options, time_base)
        try:
            for packet in demuxer:
                if time.monotonic() > deadline:
                    raise DecodeError(Reason.TIMEOUT, "decode ran past its time limit", path=info.path)
                for frame in decoder.Decode(packet):
                    if batch.add(frame):
                        yield batch.take()
        except DecodeError:
            raise
        except Exception as exc:
            self._forget(info, inter_w, inter_h)  # a decoder that raised stays broken
            unsupported = isinstance(exc, self.nvc.PyNvVCExceptionUnsupported)
            reason = Reason.UNSUPPORTED_CODEC if unsupported else Reason.CORRUPT
            raise DecodeError(reason, f"NVDEC: {' '.join(str(exc).split())}", path=info.path) from None
        if batch.pending:
            yield batch.take()

    def close(self) -> None:
        self._decoders.clear()

    def _decoder(self, info: VideoInfo, inter_w: int, inter_h: int) -> Any:
        # NVDEC applies setReconfigParams only when a new sequence starts at another size, so a
        # decoder is reused only for the same target size (the common case: a corpus of one size).
        key = (info.codec, info.bit_depth, inter_w, inter_h)
        cached = self._decoders.get(key)
        if cached is None or cached[1] < info.width or cached[2] < info.height:
            max_w = max(info.width, cached[1] if cached else 0)
            max_h = max(info.height, cached[2] if cached else 0)
            try:
                decoder = self.nvc.CreateDecoder(
                    gpuid=self.gpu_id,
                    codec=getattr(self.nvc.cudaVideoCodec, _CODECS[info.codec]),
                    usedevicememory=False,
                    maxwidth=max_w,
                    maxheight=max_h,
                )
                decoder.setReconfigParams(inter_w, inter_h)
            except Exception as exc:
                raise DecodeError(Reason.UNSUPPORTED_CODEC, f"NVDEC decoder: {exc}", path=info.path) from None
            if len(self._decoders) >= _MAX_DECODERS:
                self._decoders.pop(next(iter(self._decoders)))
            cached = self._decoders[key] = (decoder, max_w, max_h)
        return cached[0]

    def _forget(self, info: VideoInfo, inter_w: int, inter_h: int) -> None:
        self._decoders.pop((info.codec, info.bit_depth, inter_w, inter_h), None)


@lru_cache(maxsize=64)
def _caps(nvc: Any, gpu_id: int, codec: str, chroma: str, bit_depth: int) -> dict[str, int]:
    try:
        return dict(
            nvc.GetDecoderCaps(
                gpuid=gpu_id,
                codec=getattr(nvc.cudaVideoCodec, codec),
                chromaformat=nvc.cudaVideoChromaFormat.__members__[chroma],
                bitdepth=bit_depth,
            )
        )
    except Exception:
        return {}


class _NV12Batch:
    """Copies NVDEC's small host frames and shrinks them a batch at a time.

    Frame geometry is read from each frame (rows of luma then chroma: NV12/P016 interleave U and V
    at half size, YUV444 stacks three full planes), never assumed from what was asked of NVDEC.
    """

    def __init__(self, info: VideoInfo, options: DecodeOptions, time_base: float) -> None:
        self.options = options
        self.time_base = time_base
        self.frames: list[NDArray] = []
        self.pts: list[float] = []
        self._shrinker: FrameShrinker | None = None
        self._geometry: tuple[str, int, int] | None = None
        self._colour = info.colour
        self._rotation = info.rotation
        self._mirrored = info.mirrored

    @property
    def pending(self) -> bool:
        return bool(self.frames)

    def add(self, frame: Any) -> bool:
        geometry = (frame.format.name, *frame.shape[:2])
        if self.frames and geometry != self._geometry:
            raise DecodeError(Reason.CORRUPT, f"NVDEC changed its output from {self._geometry} to {geometry}")
        self._geometry = geometry
        self.frames.append(_host_copy(frame))
        self.pts.append(frame.getPTS() * self.time_base)
        return len(self.frames) >= self.options.batch_size

    def take(self) -> FrameBatch:
        stack = np.stack(self.frames)
        fmt, rows, cols = self._geometry or ("", 0, 0)
        planar = fmt.startswith("YUV444")
        height = rows // 3 if planar else rows * 2 // 3
        y = stack[:, :height]
        if planar:
            u, v = stack[:, height : 2 * height], stack[:, 2 * height :]
            chroma_hw = (height, cols)
        else:
            uv = stack[:, height:].reshape(len(stack), rows - height, cols // 2, 2)
            u, v = uv[..., 0], uv[..., 1]
            chroma_hw = (rows - height, cols // 2)
        if self._shrinker is None or self._shrinker.luma_hw != (height, cols):
            # 16-bit formats hold the samples in their high bits: read them as 16-bit codes.
            bits = 8 * stack.dtype.itemsize
            colour = replace(self._colour, bit_depth=bits)
            self._shrinker = FrameShrinker(
                (height, cols), chroma_hw, self.options.output_hw, colour, self._rotation, self._mirrored
            )
        batch = FrameBatch(self._shrinker(y, u, v), np.asarray(self.pts, dtype=np.float64))
        self.frames, self.pts = [], []
        return batch


def _host_copy(frame: Any) -> NDArray:
    """Copy a host-memory frame; PyNvVideoCodec reports 16-bit formats with a u1 dtype and sample shape."""
    rows, cols = frame.shape[:2]
    dtype = np.dtype(np.uint16 if frame.format.name in _WIDE_FORMATS else np.uint8)
    size = frame.framesize()
    pointer = ctypes.cast(frame.GetPtrToPlane(0), ctypes.POINTER(ctypes.c_uint8))
    raw = np.ctypeslib.as_array(pointer, shape=(size,)).view(dtype)
    return raw.reshape(rows, -1)[:, :cols].copy()
