"""The decode library's contract, checked on real videos against the ffmpeg CLI as the reference."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from frames_pipeline.decode import (
    DECODE_MODES,
    DecodeError,
    DecodeOptions,
    Reason,
    VideoBytes,
    extract_frames,
    extract_to_file,
    probe,
    pts_path,
)
from frames_pipeline.decode import _extract as extract_module
from frames_pipeline.decode._backends import FrameBatch
from frames_pipeline.decode._cuda import cuda_device_count
from frames_pipeline.decode._ffmpeg_bin import find_ffmpeg
from frames_pipeline.decode._input_policy import inherited_fds, readable_path
from frames_pipeline.demo.clips import CORPUS_HW, expected_quadrant_colours, quadrant_means, vfr_timestamps

MAX_MAD = 4.0  # mean absolute difference (of 255) allowed against the reference
COLOUR_TOLERANCE = 16  # per channel, after chroma subsampling and a 40x area shrink
# Clips every decoder must return whole, frame for frame.
CLEAN = ["pattern", "cfr_mkv", "vfr", "hevc_10bit", "odd_size", "yuv444", "yuv422", "cover_art", "av1"]
# Which source quadrant each output quadrant shows once the display rotation (counter-clockwise) is applied.
ROTATED_QUADRANTS = {
    "rotated_90": {
        "top_left": "top_right",
        "top_right": "bottom_right",
        "bottom_left": "top_left",
        "bottom_right": "bottom_left",
    },
    "rotated_270": {
        "top_left": "bottom_left",
        "top_right": "top_left",
        "bottom_left": "bottom_right",
        "bottom_right": "top_right",
    },
}


@lru_cache(maxsize=64)
def _cli_frames(path: str, output_hw: tuple[int, int]) -> NDArray[np.uint8]:
    h, w = output_hw
    args = f"-map 0:v:0 -vf scale={w}:{h}:flags=area -fps_mode passthrough -f rawvideo -pix_fmt rgb24 -"
    cmd = [find_ffmpeg(), "-nostdin", "-loglevel", "error", "-i", path, *args.split()]
    done = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    frames = np.frombuffer(done.stdout, dtype=np.uint8)
    return frames.reshape(-1, h, w, 3)


def cli_frames(path: Path, output_hw: tuple[int, int] = (27, 48)) -> NDArray[np.uint8]:
    """What ``ffmpeg -i FILE -vf scale=W:H:flags=area -fps_mode passthrough`` shows (it autorotates)."""
    return _cli_frames(str(path), output_hw)


def mad(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    assert a.shape == b.shape, f"{a.shape} != {b.shape}"
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def assert_in_time_order(pts_s: NDArray[np.float64]) -> None:
    """Frames must come out in presentation order: array index order is time order downstream."""
    late = np.flatnonzero(np.diff(pts_s) <= 0)
    assert late.size == 0, f"pts_s not increasing after frames {late.tolist()}: {np.round(pts_s, 3).tolist()}"


def assert_colours(actual: dict[str, NDArray[np.float64]], expected: dict[str, tuple[int, int, int]]) -> None:
    for quadrant, colour in expected.items():
        off = np.abs(actual[quadrant] - colour).max()
        assert off <= COLOUR_TOLERANCE, f"{quadrant}: {actual[quadrant].round()} is not {colour}"


def test_pattern_orientation_and_shape(edge_corpus: dict[str, Path]) -> None:
    result = extract_frames(edge_corpus["pattern"])
    assert result.frames is not None
    assert result.frames.shape == (30, 27, 48, 3)
    assert result.frames.dtype == np.uint8
    assert_colours(quadrant_means(result.frames), expected_quadrant_colours())
    # The centre square changes every frame: no frame was duplicated or dropped in its place.
    steps = np.abs(np.diff(result.frames.astype(np.int16), axis=0)).reshape(29, -1).max(axis=1)
    assert (steps > 0).all()


@pytest.mark.parametrize("case", sorted(ROTATED_QUADRANTS))
def test_rotation_is_applied_like_the_ffmpeg_cli(edge_corpus: dict[str, Path], case: str) -> None:
    info = probe(edge_corpus[case])
    assert info.rotation % 360 == int(case.removeprefix("rotated_"))
    assert info.display_hw == (CORPUS_HW[1], CORPUS_HW[0])
    frames = extract_frames(edge_corpus[case]).frames
    assert frames is not None and frames.shape == (30, 27, 48, 3)
    colours = expected_quadrant_colours()
    assert_colours(quadrant_means(frames), {out: colours[src] for out, src in ROTATED_QUADRANTS[case].items()})
    assert mad(frames, cli_frames(edge_corpus[case])) <= MAX_MAD


@pytest.mark.parametrize("case", CLEAN)
def test_frame_count_matches_probe_and_cli(edge_corpus: dict[str, Path], case: str) -> None:
    result = extract_frames(edge_corpus[case])
    assert result.frames is not None
    assert (
        result.num_frames
        == len(result.frames)
        == result.info.num_frames_from_content
        == len(cli_frames(edge_corpus[case]))
    )


@pytest.mark.parametrize("case", [*CLEAN, *ROTATED_QUADRANTS])
def test_cpu_mode_matches_ffmpeg_cli(edge_corpus: dict[str, Path], case: str) -> None:
    result = extract_frames(edge_corpus[case], mode="ffmpeg_cpu")
    assert result.decode_mode == "ffmpeg_cpu"
    assert result.frames is not None
    assert mad(result.frames, cli_frames(edge_corpus[case])) <= MAX_MAD


@pytest.mark.parametrize("threads", [0, 1])
@pytest.mark.parametrize("case", ["pattern", "hevc_10bit"])
def test_skip_loop_filter_changes_pixels_slightly_and_nothing_else(
    edge_corpus: dict[str, Path], case: str, threads: int
) -> None:
    default = extract_frames(edge_corpus[case], mode="ffmpeg_cpu", threads=threads)
    fast = extract_frames(edge_corpus[case], mode="ffmpeg_cpu", threads=threads, skip_loop_filter=True)
    np.testing.assert_array_equal(fast.pts_s, default.pts_s)
    assert fast.frames is not None and default.frames is not None
    assert 0 < mad(fast.frames, default.frames) < 1  # the deblocking filter was skipped, and that is all
    assert fast.warnings == default.warnings


def test_output_hw_is_height_then_width(edge_corpus: dict[str, Path]) -> None:
    frames = extract_frames(edge_corpus["pattern"], output_hw=(36, 64)).frames
    assert frames is not None and frames.shape == (30, 36, 64, 3)
    assert mad(frames, cli_frames(edge_corpus["pattern"], (36, 64))) <= MAX_MAD


@pytest.mark.parametrize("case", ["pattern", "cfr_mkv"])
def test_constant_frame_rate_is_not_vfr(edge_corpus: dict[str, Path], case: str) -> None:
    result = extract_frames(edge_corpus[case])
    assert not result.info.vfr
    np.testing.assert_allclose(result.pts_s, np.arange(30) / 30, atol=1e-3)


def test_vfr_keeps_every_frame_with_its_own_timestamp(edge_corpus: dict[str, Path]) -> None:
    result = extract_frames(edge_corpus["vfr"])
    assert result.info.vfr
    assert result.pts_s.dtype == np.float64
    assert_in_time_order(result.pts_s)
    np.testing.assert_allclose(result.pts_s, vfr_timestamps(40), atol=1e-3)


def test_probe_picks_the_video_not_the_cover_art(edge_corpus: dict[str, Path]) -> None:
    info = probe(edge_corpus["cover_art"])
    assert info.stream_index == 0
    assert info.codec == "h264"
    assert (info.height, info.width) == CORPUS_HW


def test_probe_describes_10bit_and_odd_sizes(edge_corpus: dict[str, Path]) -> None:
    hevc = probe(edge_corpus["hevc_10bit"])
    assert (hevc.codec, hevc.bit_depth, hevc.chroma) == ("hevc", 10, "420")
    odd = probe(edge_corpus["odd_size"])
    assert ((odd.height, odd.width), odd.chroma) == ((37, 65), "444")
    assert probe(edge_corpus["yuv422"]).chroma == "422"


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["pattern", "vfr", "rotated_90", "hevc_10bit"])
@pytest.mark.parametrize("mode", ["pynvc", "ffmpeg_gpu"])
def test_gpu_modes_match_cpu(edge_corpus: dict[str, Path], mode: str, case: str) -> None:
    cpu = extract_frames(edge_corpus[case], mode="ffmpeg_cpu")
    gpu = extract_frames(edge_corpus[case], mode=mode, fallback_to_cpu=False)
    assert gpu.decode_mode == mode
    assert gpu.frames is not None and cpu.frames is not None
    assert gpu.frames.shape == cpu.frames.shape
    np.testing.assert_allclose(gpu.pts_s, cpu.pts_s, atol=1e-3)
    assert mad(gpu.frames, cpu.frames) <= MAX_MAD


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["pynvc", "ffmpeg_gpu"])
def test_gpu_modes_decode_videos_held_in_memory(edge_corpus: dict[str, Path], mode: str) -> None:
    path = edge_corpus["pattern"]
    from_file = extract_frames(path, mode=mode, fallback_to_cpu=False)
    in_memory = extract_frames(VideoBytes(str(path), path.read_bytes()), mode=mode, fallback_to_cpu=False)
    assert in_memory.decode_mode == mode
    assert in_memory.frames is not None and from_file.frames is not None
    assert np.array_equal(in_memory.frames, from_file.frames)


# Every corpus file that is not about paths (missing files, symlinks out of the allowed roots).
IN_MEMORY_CASES = [
    *("pattern", "vfr", "rotated_90", "hevc_10bit", "cover_art", "truncated", "corrupt", "no_moov", "garbage"),
    *("empty", "audio_only", "still_image", "zero_frames", "bomb", "playlist", "ffconcat"),
]


@pytest.mark.parametrize("case", IN_MEMORY_CASES)
def test_a_video_in_memory_decodes_as_its_file_does(edge_corpus: dict[str, Path], case: str) -> None:
    path = edge_corpus[case]
    in_memory = VideoBytes(f"s3://bucket/{path.name}", path.read_bytes())
    try:
        from_file = extract_frames(path, mode="ffmpeg_cpu")
    except DecodeError as exc:
        with pytest.raises(DecodeError) as caught:
            extract_frames(in_memory, mode="ffmpeg_cpu")
        assert caught.value.reason == exc.reason
        assert caught.value.path == in_memory.name and "/proc/self/fd" not in caught.value.message
        return
    result = extract_frames(in_memory, mode="ffmpeg_cpu")
    assert result.frames is not None and from_file.frames is not None
    assert np.array_equal(result.frames, from_file.frames)
    assert np.array_equal(result.pts_s, from_file.pts_s)
    assert result.info.path == in_memory.name
    assert not any("/proc/self/fd" in line for line in result.warnings)


def test_a_video_in_memory_is_read_from_a_memfd_not_a_file_on_disk(edge_corpus: dict[str, Path]) -> None:
    data = edge_corpus["pattern"].read_bytes()
    with readable_path(VideoBytes("clip.mp4", data)) as path:
        assert os.readlink(path).startswith("/memfd:")
        assert Path(path).read_bytes() == data
        assert inherited_fds(path) == (int(path.rsplit("/", 1)[1]),)  # what a child ffmpeg is handed
    assert not Path(path).exists()
    assert inherited_fds(str(edge_corpus["pattern"])) == ()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("garbage", Reason.NOT_A_VIDEO),
        ("empty", Reason.NOT_A_VIDEO),
        ("still_image", Reason.NOT_A_VIDEO),
        ("audio_only", Reason.NO_VIDEO_STREAM),
        ("missing", Reason.NOT_FOUND),
        ("playlist", Reason.REMOTE_INPUT),
        ("ffconcat", Reason.REMOTE_INPUT),
        ("bomb", Reason.TOO_LARGE),
        ("zero_frames", Reason.ZERO_FRAMES),
    ],
)
def test_bad_input_raises_its_reason(edge_corpus: dict[str, Path], case: str, reason: Reason) -> None:
    with pytest.raises(DecodeError) as caught:
        extract_frames(edge_corpus[case])
    assert caught.value.reason == reason
    assert caught.value.hint


def test_url_is_refused_as_remote_input() -> None:
    with pytest.raises(DecodeError) as caught:
        extract_frames("http://example.invalid/video.mp4")
    assert caught.value.reason == Reason.REMOTE_INPUT


def test_mp4_without_index_is_refused(edge_corpus: dict[str, Path]) -> None:
    with pytest.raises(DecodeError) as caught:
        extract_frames(edge_corpus["no_moov"])
    assert caught.value.reason in {Reason.NOT_A_VIDEO, Reason.CORRUPT}


def test_symlink_out_of_allowed_roots_is_refused(edge_corpus: dict[str, Path]) -> None:
    clips = edge_corpus["pattern"].parent
    with pytest.raises(DecodeError) as caught:
        extract_frames(edge_corpus["symlink_out"], allowed_roots=(str(clips),))
    assert caught.value.reason == Reason.OUTSIDE_ALLOWED_ROOTS
    # The file itself is fine: only the root check refused it, and files inside the root pass.
    assert extract_frames(edge_corpus["symlink_out"]).num_frames == 10
    assert extract_frames(edge_corpus["pattern"], allowed_roots=(str(clips),)).num_frames == 30


def test_truncated_file_returns_the_decodable_head_with_warnings(edge_corpus: dict[str, Path]) -> None:
    result = extract_frames(edge_corpus["truncated"])
    assert 0 < result.num_frames < 30
    assert result.warnings
    assert_in_time_order(result.pts_s)


def test_corrupt_file_returns_frames_with_warnings(edge_corpus: dict[str, Path]) -> None:
    result = extract_frames(edge_corpus["corrupt"])
    assert result.frames is not None
    assert 0 < result.num_frames <= result.info.num_frames_from_content
    assert result.warnings
    assert_in_time_order(result.pts_s)


@pytest.mark.parametrize("case", ["truncated", "corrupt"])
def test_damaged_file_keeps_every_frame_ffmpeg_decodes(edge_corpus: dict[str, Path], case: str) -> None:
    result = extract_frames(edge_corpus[case])
    assert result.num_frames == len(cli_frames(edge_corpus[case]))


def test_extract_to_file_matches_extract_frames(edge_corpus: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "vfr.npy"
    written = extract_to_file(edge_corpus["vfr"], out, batch_size=7)
    in_memory = extract_frames(edge_corpus["vfr"])
    assert written.frames is None and written.output_path == str(out)
    np.testing.assert_array_equal(np.load(out), in_memory.frames)
    np.testing.assert_array_equal(np.load(out, mmap_mode="r"), in_memory.frames)
    np.testing.assert_array_equal(np.load(pts_path(out)), in_memory.pts_s)
    np.testing.assert_array_equal(written.pts_s, in_memory.pts_s)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vfr.npy", "vfr.pts.npy"]


def test_extract_to_file_leaves_nothing_when_the_input_fails(edge_corpus: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DecodeError):
        extract_to_file(edge_corpus["garbage"], tmp_path / "garbage.npy")
    assert list(tmp_path.iterdir()) == []


# A real write failure: the file size limit makes write() fail with EFBIG part-way through the stream.
_WRITE_FAILS = """
import resource, signal, sys
from frames_pipeline.decode import DecodeError, extract_to_file
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    extract_to_file(sys.argv[1], sys.argv[2], batch_size=1)
except DecodeError as exc:
    print(exc.reason)
"""


def test_extract_to_file_leaves_nothing_when_writing_fails(edge_corpus: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out" / "pattern.npy"
    done = subprocess.run(
        [sys.executable, "-c", _WRITE_FAILS, str(edge_corpus["pattern"]), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert list(out.parent.iterdir()) == []
    assert done.stdout.strip() == "write_failed", done.stderr[-2000:]


def test_unknown_mode_names_the_valid_ones(edge_corpus: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="cuda") as caught:
        extract_frames(edge_corpus["pattern"], mode="cuda")
    for mode in DECODE_MODES:
        assert mode in str(caught.value)


@pytest.mark.skipif(cuda_device_count() > 0, reason="checks the CPU-only fallback")
def test_auto_mode_without_cuda_decodes_av1_on_cpu(edge_corpus: dict[str, Path]) -> None:
    result = extract_frames(edge_corpus["av1"], mode="auto")
    assert result.decode_mode == "ffmpeg_cpu"
    assert result.fallback_reason is not None and "no usable cuda device" in result.fallback_reason.lower()
    assert result.num_frames == 30


@pytest.mark.gpu
def test_auto_mode_decodes_av1_on_any_gpu(edge_corpus: dict[str, Path]) -> None:
    # NVDEC on H100/H200 has no AV1: auto must then decode on CPU and say why, rather than fail.
    result = extract_frames(edge_corpus["av1"], mode="auto")
    assert result.num_frames == 30
    assert (result.decode_mode == "ffmpeg_cpu") == bool(result.fallback_reason)


class _DroppingGpuBackend:
    """A GPU backend as NVDEC behaves on a damaged stream: pictures go missing without a word."""

    mode = "pynvc"

    def __init__(self, cpu: Any) -> None:
        self.cpu = cpu

    def unsupported(self, info: Any) -> None:
        return None

    def decode(self, info: Any, options: Any, deadline: float, warnings: list[str]) -> Iterator[FrameBatch]:
        for batch in self.cpu.decode(info, options, deadline, warnings):
            yield FrameBatch(batch.frames[::2], batch.pts_s[::2])

    def close(self) -> None:
        pass


@pytest.mark.parametrize("fallback", [True, False])
def test_a_gpu_decode_short_of_the_streams_frames_is_redone_on_cpu_or_says_so(
    edge_corpus: dict[str, Path], monkeypatch: pytest.MonkeyPatch, fallback: bool
) -> None:
    real_backend_for = extract_module.backend_for

    def backend_for(mode: str, options: DecodeOptions) -> Any:
        cpu = real_backend_for("ffmpeg_cpu", options)
        return cpu if mode == "ffmpeg_cpu" else _DroppingGpuBackend(cpu)

    monkeypatch.setattr(extract_module, "preferred_mode", lambda options: ("pynvc", None))
    monkeypatch.setattr(extract_module, "backend_for", backend_for)
    result = extract_frames(edge_corpus["pattern"], mode="pynvc", fallback_to_cpu=fallback)
    shortfall = "pynvc decoded 15 of the 30 frames the stream holds: damaged or cut off"
    if fallback:
        assert (result.decode_mode, result.num_frames) == ("ffmpeg_cpu", 30)
        assert result.fallback_reason == f"pynvc failed: {shortfall}"
    else:
        assert (result.decode_mode, result.num_frames, result.warnings) == ("pynvc", 15, (shortfall,))
