"""Which inputs a decode may read: local regular files, inside the allowed roots, not playlists.

FFmpeg follows URLs inside playlists (HLS, DASH), concat scripts and protocol prefixes
(``http:``, ``concat:``, ``subfile:``). Refusing them here, before any demuxer sees the file, is
what keeps a hostile manifest from making a worker fetch from the network or read outside its roots.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
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
# Demuxers that read other files or URLs named inside the input.
INDIRECT_FORMATS = frozenset({"hls", "applehttp", "dash", "concat", "ffconcat", "smil", "imf", "tee", "mpjpeg"})


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
    if is_url(text) and not Path(text).exists():
        if allow_remote:
            return text
        raise DecodeError(Reason.REMOTE_INPUT, f"{text!r} is a URL or protocol, not a local file", path=text)
    path = Path(text)
    try:
        real = path.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise DecodeError(Reason.NOT_FOUND, "no such file", path=text) from None
    except (OSError, RuntimeError) as exc:  # symlink loops, permissions
        raise DecodeError(Reason.NOT_FOUND, f"cannot resolve path: {exc}", path=text) from None
    if allowed_roots and not any(real.is_relative_to(Path(root).resolve()) for root in allowed_roots):
        raise DecodeError(
            Reason.OUTSIDE_ALLOWED_ROOTS, f"resolves to {real}, outside {list(map(str, allowed_roots))}", path=text
        )
    if not real.is_file():
        raise DecodeError(Reason.NOT_A_VIDEO, "not a regular file", path=text)
    try:
        with open(real, "rb") as fh:
            head = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError as exc:
        raise DecodeError(Reason.NOT_FOUND, f"cannot read: {exc}", path=text) from None
    if not head:
        raise DecodeError(Reason.NOT_A_VIDEO, "empty file", path=text)
    for magic, what in _INDIRECT_MAGIC:
        if head.startswith(magic) and not allow_remote:
            raise DecodeError(Reason.REMOTE_INPUT, f"{what} names other inputs; refused", path=text)
    return str(real)
