"""Pictures: bounded contact sheets, an honest chart whatever the number of shards, and the read-only
server that lets the UI show them in place."""

from __future__ import annotations

import io
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frames_pipeline.preview_server import preview_server
from frames_pipeline.previews import MAX_VIDEOS, TILE_SCALE, SheetRow, contact_sheet, summary_chart

BAR = (90, 140, 220)


def image(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def bar_lengths(png: bytes) -> list[int]:
    """Length in pixels of each bar, top to bottom (a bar is a run of rows holding bar colour)."""
    pixels = (image(png) == BAR).all(axis=2)
    per_row = pixels.sum(axis=1)
    lengths, previous = [], 0
    for count in per_row:
        if count and not previous:
            lengths.append(int(count))
        previous = count
    return lengths


def test_the_chart_has_one_axis_per_panel_and_a_size_bounded_by_its_bars() -> None:
    few = summary_chart({"shards": {"published": 375, "blocked": 1}, "failed videos": {"corrupt": 1}})
    many = summary_chart({"shards": {"published": 9_000, "blocked": 999, "pending": 1}, "failed videos": {}})
    published, blocked, corrupt = bar_lengths(few)
    assert published == 420 and blocked == max(1, round(420 / 375))  # one scale within a panel: 1 is tiny
    assert corrupt == 420  # another panel, another axis (its own maximum, labelled)
    # 10,000 shards draw one bar per state, not one per shard.
    assert image(many).shape[:2] == (image(few).shape[0] + 24, image(few).shape[1])  # one more bar row, same width


def test_the_contact_sheet_shows_failed_videos_first_and_at_most_max_videos(tmp_path: Path) -> None:
    frames = np.zeros((10, 27, 48, 3), np.uint8)
    np.save(tmp_path / "ok.npy", frames)
    rows = [SheetRow(f"v{i}", tmp_path / "ok.npy") for i in range(MAX_VIDEOS + 5)] + [SheetRow("bad", None, "corrupt")]
    sheet = image(contact_sheet(rows))
    tile_h, tile_w = 27 * TILE_SCALE, 48 * TILE_SCALE
    assert sheet.shape[0] < (MAX_VIDEOS + 1) * (tile_h + 30)  # bounded: the rest is one line of text
    assert sheet.shape[1] < 4 * (tile_w + 10) < 700  # fits the UI's metadata column
    first_label = sheet[:20]
    reddish = (first_label[..., 0] > 200) & (first_label[..., 1] < 150)
    assert reddish.any()  # the failed video comes first, its reason in red


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    (tmp_path / "frames" / "s-00000" / "v-1").mkdir(parents=True)
    (tmp_path / "frames" / "s-00000" / "v-1" / "contact_sheet.png").write_bytes(b"\x89PNG sheet")
    (tmp_path / "frames" / "s-00000" / "index.parquet").write_bytes(b"index")
    (tmp_path / "frames" / "summary.png").write_bytes(b"\x89PNG chart")
    (tmp_path / "secret.png").write_bytes(b"\x89PNG outside")
    (tmp_path / "frames" / "link.png").symlink_to(tmp_path / "secret.png")
    server = preview_server(tmp_path, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", tmp_path
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_server_serves_pictures_and_nothing_else(served: tuple[str, Path]) -> None:
    base, _ = served
    with urllib.request.urlopen(f"{base}/frames/s-00000/v-1/contact_sheet.png") as sheet:
        assert sheet.read() == b"\x89PNG sheet" and sheet.headers["Content-Type"] == "image/png"
        assert "immutable" in sheet.headers["Cache-Control"]  # a version never changes
    with urllib.request.urlopen(f"{base}/frames/summary.png") as chart:
        assert chart.read() == b"\x89PNG chart" and chart.headers["Cache-Control"] == "no-cache"
    for path in ("/frames/s-00000/index.parquet", "/secret.png", "/frames/../secret.png", "/frames/link.png", "/"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}{path}")
        assert refused.value.code == 404, path
