"""Which inputs a decode may read: local regular files, inside the allowed roots, not playlists; or
a whole video file held in memory.

FFmpeg follows URLs inside playlists (HLS, DASH), concat scripts and protocol prefixes
(``http:``, ``concat:``, ``subfile:``). Refusing them here, before any demuxer sees the file, is
what keeps a hostile manifest from making a worker fetch from the network or read outside its roots.

Reads must end: a character device, FIFO or socket can block forever (or act when opened), so only
a regular file with data is opened, and without blocking. Kernel files such as ``/proc/kmsg`` look
regular but block in ``read()``; they report a size of 0, which is refused before they are opened.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from frames_pipeline.decode._errors import DecodeError, Reason

# FFmpeg treats "name:" as a protocol prefix; a Windows drive letter is the only harmless form.
_PROTOCOL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")
# Text formats whose demuxers open further inputs named inside them.
_INDIRECT_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"#EXTM3U", "an HLS/M3U playlist"),
    (b"ffconcat", "an FFmpeg concat script"),
    (b"<?xml", "an XML manifest (DASH/SMIL)"),
    (b"<MPD", "a DASH manifest"),
    (b"#EXTINF", "an M3U playlist"),
)
# What a path names when it is not a regular file, for the refusal's message.
_NOT_REGULAR = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)
# Demuxers that read other files or URLs named inside the input.
INDIRECT_FORMATS = frozenset({"hls", "applehttp", "dash", "concat", "ffconcat", "smil", "imf", "tee", "mpjpeg"})


# How a video held in memory is named to the decoders: its memfd, which FFmpeg, PyNvVideoCodec and a
# child ffmpeg (given the descriptor) open and seek like any file, with nothing written to disk.
_MEMORY_PATH = re.compile(r"^/proc/self/fd/(\d+)$")
_MEMORY_PATH_IN_TEXT = re.compile(r"/proc/self/fd/\d+")


@dataclass(frozen=True)
class VideoBytes:
    """A whole video file held in memory (NeMo Curator hands videos over as ``source_bytes``);
    ``name`` is how messages and records name it (its original path or URL)."""

    name: str
    data: bytes = field(repr=False)


VideoSource = str | os.PathLike[str] | VideoBytes


def is_url(text: str) -> bool:
    """Whether FFmpeg would take ``text`` as a protocol ("http:", "concat:", ...), not a file name."""
    return bool(_PROTOCOL.match(text))


def resolve_source(
    source: str | os.PathLike[str],
    *,
    allow_remote: bool = False,
    allowed_roots: Sequence[str | os.PathLike[str]] = (),
) -> str:
    """Return the real local path of ``source`` or raise a DecodeError saying why it is refused."""
    text = os.fspath(source)
    # os.path.exists, unlike Path.exists, never raises: a data: URI is longer than any file name.
    if is_url(text) and not os.path.exists(text):
        if allow_remote:
            return text
        raise DecodeError(Reason.REMOTE_INPUT, f"{text[:100]!r} is a URL or protocol, not a local file", path=text)
    path = Path(text)
    try:
        real = path.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise DecodeError(Reason.NOT_FOUND, "no such file", path=text) from None
    except (OSError, RuntimeError) as exc:  # symlink loops, permissions, names too long
        raise DecodeError(Reason.NOT_FOUND, f"cannot resolve path: {exc}", path=text) from None
    if allowed_roots and not any(real.is_relative_to(Path(root).resolve()) for root in allowed_roots):
        raise DecodeError(
            Reason.OUTSIDE_ALLOWED_ROOTS, f"resolves to {real}, outside {list(map(str, allowed_roots))}", path=text
        )
    _check_head(_read_head(real, text), allow_remote=allow_remote, name=text)
    return str(real)


def _read_head(real: Path, text: str) -> bytes:
    """The first bytes of the regular file ``real``, read without ever blocking; DecodeError otherwise."""
    try:
        before = os.stat(real)
        _require_regular_with_data(before, text)
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise DecodeError(Reason.NOT_FOUND, f"cannot read: {exc}", path=text) from None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise DecodeError(Reason.NOT_FOUND, "the file was replaced while it was checked", path=text)
        _require_regular_with_data(opened, text)
        head = os.read(fd, 64)
    except BlockingIOError:
        raise DecodeError(Reason.NOT_A_VIDEO, "reading it would block: not a file of data", path=text) from None
    except OSError as exc:
        raise DecodeError(Reason.NOT_FOUND, f"cannot read: {exc}", path=text) from None
    finally:
        os.close(fd)
    return head


def _require_regular_with_data(status: os.stat_result, text: str) -> None:
    for test, what in _NOT_REGULAR:
        if test(status.st_mode):
            raise DecodeError(Reason.NOT_A_VIDEO, f"{what}, not a regular file", path=text)
    if not stat.S_ISREG(status.st_mode):
        raise DecodeError(Reason.NOT_A_VIDEO, "not a regular file", path=text)
    if status.st_size == 0:
        raise DecodeError(Reason.NOT_A_VIDEO, "empty file (or a kernel file whose reads can block)", path=text)


def _check_head(head: bytes, *, allow_remote: bool, name: str) -> None:
    """Refuse an empty input, and one whose first bytes are a playlist or script naming other inputs."""
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head:
        raise DecodeError(Reason.NOT_A_VIDEO, "empty file", path=name)
    for magic, what in _INDIRECT_MAGIC:
        if head.startswith(magic) and not allow_remote:
            raise DecodeError(Reason.REMOTE_INPUT, f"{what} names other inputs; refused", path=name)


@contextlib.contextmanager
def readable_path(
    source: VideoSource,
    *,
    allow_remote: bool = False,
    allowed_roots: Sequence[str | os.PathLike[str]] = (),
) -> Iterator[str]:
    """The path the decoders open for ``source``, valid inside the ``with`` block: a file's real path
    (see ``resolve_source``), or for ``VideoBytes`` a memfd that holds the bytes until the block ends;
    a DecodeError raised in the block then names the video, not the memfd."""
    if not isinstance(source, VideoBytes):
        yield resolve_source(source, allow_remote=allow_remote, allowed_roots=allowed_roots)
        return
    _check_head(source.data[:64], allow_remote=allow_remote, name=source.name)
    fd = os.memfd_create("frames_pipeline_video")
    path = f"/proc/self/fd/{fd}"
    try:
        with open(fd, "wb", closefd=False) as memory:
            memory.write(source.data)
        yield path
    except DecodeError as exc:
        raise DecodeError(exc.reason, exc.message.replace(path, source.name), path=source.name) from None
    finally:
        os.close(fd)


def source_name(source: VideoSource, text: str) -> str:
    """``text`` (a message or path from decoding ``source``) with a memfd path replaced by the video's name."""
    return _MEMORY_PATH_IN_TEXT.sub(source.name, text) if isinstance(source, VideoBytes) else text


def inherited_fds(path: str) -> tuple[int, ...]:
    """The descriptors a child process needs to open ``path`` (a memfd from ``readable_path``), or ()."""
    match = _MEMORY_PATH.match(path)
    return (int(match[1]),) if match else ()
