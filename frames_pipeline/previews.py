"""Pictures for people: a contact sheet of a shard's frames and a chart of the totals over shards.

Both are PNGs drawn with Pillow and returned as bytes; the store keeps them next to the data, and the
Dagster layer links or embeds them (`defs/metadata.py`). Both have a bounded size whatever the data:
the sheet shows at most `MAX_VIDEOS` videos, the chart one bar per shard state and per failure
reason, never one per shard (per-shard numbers are plotted by Dagster itself, from each shard's
metadata).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Where the data root's pictures are served over HTTP (`frames-pipeline serve-previews`, or a
# bucket's web endpoint): the UI then links them instead of embedding them.
PREVIEW_URL_ENV = "FRAMES_PIPELINE_PREVIEW_URL"
FRAMES_PER_VIDEO = 4  # first, last and two between
MAX_VIDEOS = 24
TILE_SCALE = 3  # 27x48 frames become 81x144 tiles, pixels kept sharp (nearest neighbour)
_FONT = ImageFont.load_default(size=14)
_PAD = 6
_BACKGROUND = (24, 24, 28)
_TEXT = (230, 230, 230)
_FAILED = (240, 120, 120)


@dataclass(frozen=True)
class SheetRow:
    """One video of a contact sheet: its id and its frames file (None when it failed)."""

    video_id: str
    frames_file: Path | None
    note: str = ""


def contact_sheet(rows: Sequence[SheetRow]) -> bytes:
    """A PNG with ``FRAMES_PER_VIDEO`` frames spread over each video's length under its id, failed
    videos first (with their reason), at most ``MAX_VIDEOS`` videos; about 600 px wide at 27x48, so
    it fits the UI's metadata column.

    Frames are memory-mapped, so only the few shown are read.
    """
    ordered = sorted(rows, key=lambda row: row.frames_file is not None)  # stable: manifest order within each
    shown = ordered[:MAX_VIDEOS]
    tiles = [_sample(row.frames_file) if row.frames_file else None for row in shown]
    tile_h, tile_w = next((t.shape[1:3] for t in tiles if t is not None and len(t)), (27, 48))
    tile_h, tile_w = tile_h * TILE_SCALE, tile_w * TILE_SCALE
    label_h = 20
    heights = [label_h + (tile_h if frames is not None else 0) + _PAD for frames in tiles]  # a failed video: one line
    width = _PAD + FRAMES_PER_VIDEO * (tile_w + _PAD)
    more_h = label_h + _PAD if len(rows) > len(shown) else 0
    sheet = Image.new("RGB", (width, max(label_h, sum(heights) + more_h)), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    tops = accumulate(heights[:-1], initial=0)
    for top, row, frames in zip(tops, shown, tiles, strict=True):
        label = _fit(draw, row.video_id, width - 2 * _PAD)
        draw.text((_PAD, top + 2), label, fill=_TEXT, font=_FONT)
        if row.note:
            note_x = _PAD + draw.textlength(label + "  ", font=_FONT)
            draw.text((note_x, top + 2), _fit(draw, row.note, width - note_x - _PAD), fill=_FAILED, font=_FONT)
        for j, frame in enumerate(frames if frames is not None else []):
            tile = Image.fromarray(np.ascontiguousarray(frame)).resize((tile_w, tile_h), Image.Resampling.NEAREST)
            sheet.paste(tile, (_PAD + j * (tile_w + _PAD), top + label_h))
    if len(rows) > len(shown):
        more = f"... {len(rows) - len(shown)} more videos (the shard's index lists them all)"
        draw.text((_PAD, sum(heights) + 2), _fit(draw, more, width - 2 * _PAD), fill=_TEXT, font=_FONT)
    return _png(sheet)


def _sample(frames_file: Path) -> np.ndarray:
    frames = np.load(frames_file, mmap_mode="r")
    if len(frames) == 0:
        return frames
    picks = np.unique(np.linspace(0, len(frames) - 1, FRAMES_PER_VIDEO).round().astype(int))
    return np.asarray(frames[picks])


def summary_chart(panels: Mapping[str, Mapping[str, int]]) -> bytes:
    """Horizontal bar charts stacked in one PNG, one per ``{title: {label: count}}`` panel.

    Each panel has its own axis from 0, drawn and labelled, and every bar carries its value: counts
    of different things (shards, videos) are never drawn against one another's scale.
    """
    bar_h, gap, label_w, plot_w, margin = 18, 6, 170, 420, 10
    heights = [30 + max(1, len(bars)) * (bar_h + gap) + 24 for bars in panels.values()]
    image = Image.new("RGB", (label_w + plot_w + 80, sum(heights) + margin), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    top = margin
    for (title, bars), height in zip(panels.items(), heights, strict=True):
        draw.text((margin, top), title, fill=(0, 0, 0), font=_FONT)
        peak = max(bars.values(), default=0)
        scale = plot_w / peak if peak else 0.0
        y = top + 30
        for label, value in bars.items():
            draw.text((margin, y + 1), _fit(draw, label, label_w - margin - 4), fill=(0, 0, 0), font=_FONT)
            draw.rectangle([label_w, y, label_w + max(1, round(value * scale)), y + bar_h], fill=(90, 140, 220))
            draw.text((label_w + round(value * scale) + 6, y + 1), f"{value:,}", fill=(0, 0, 0), font=_FONT)
            y += bar_h + gap
        if not bars:
            draw.text((label_w, y + 1), "none", fill=(120, 120, 120), font=_FONT)
            y += bar_h + gap
        draw.line([label_w, top + 26, label_w, y], fill=(0, 0, 0))  # the zero line
        draw.line([label_w, y, label_w + plot_w, y], fill=(0, 0, 0))  # the axis, 0 to the largest value
        draw.text((label_w - 4, y + 3), "0", fill=(0, 0, 0), font=_FONT)
        draw.text((label_w + plot_w - 20, y + 3), f"{peak:,}", fill=(0, 0, 0), font=_FONT)
        top += height
    return _png(image)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """``text`` cut (with an ellipsis) to ``width`` pixels."""
    if draw.textlength(text, font=_FONT) <= width:
        return text
    while text and draw.textlength(text + "…", font=_FONT) > width:
        text = text[:-1]
    return text + "…"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown that shows ``png`` inline (a data URI: the UI needs no file server)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
