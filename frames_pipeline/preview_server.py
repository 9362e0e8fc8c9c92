"""A read-only HTTP server for the pictures of a local data root, so the Dagster UI can show them in place.

It answers GET and HEAD for PNG files under `<data root>/frames/` and nothing else: no listings, no
other files, nothing outside the folder (symlinks are resolved before the check). Shard versions
never change once published, so their pictures are cached for good; `frames/summary.png` is
replaced by every refresh, so it is not cached.
"""

from __future__ import annotations

import http.server
import urllib.parse
from pathlib import Path

_IMMUTABLE = "public, max-age=31536000, immutable"


def preview_server(data_root: str | Path, host: str, port: int) -> http.server.ThreadingHTTPServer:
    """A server (not started: call ``serve_forever``) for the pictures under ``data_root/frames``."""
    frames = Path(data_root, "frames").resolve()

    class Pictures(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            relative = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
            file = (frames.parent / relative).resolve()
            if not (file.is_relative_to(frames) and file.suffix == ".png" and file.is_file()):
                self.send_error(404, "only the PNG pictures under frames/ are served")
                return
            data = file.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-cache" if file.parent == frames else _IMMUTABLE)
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the UI asks for every picture it shows; a line per request is noise

    return http.server.ThreadingHTTPServer((host, port), Pictures)
