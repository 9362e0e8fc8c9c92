"""Pictures for people: a contact sheet of a shard's frames, a sheet of its shots and a bar chart of
the shard totals.

All are small PNGs drawn with Pillow, returned as bytes (the store keeps them next to the data) and
embedded in Dagster markdown metadata as data URIs, so the UI shows them without serving any file.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FRAMES_PER_VIDEO = 6
MAX_VIDEOS = 40
_LABEL_W = 140
_PAD = 4
_BACKGROUND = (24, 24, 28)
_TEXT = (230, 230, 230)


@dataclass(frozen=True)
class SheetRow:
    """One video of a contact sheet: its id and its frames file (None when it failed)."""

    video_id: str
    frames_file: Path | None
    note: str = ""


def contact_sheet(rows: Sequence[SheetRow], scale: int = 2) -> bytes:
    """A PNG with ``FRAMES_PER_VIDEO`` frames spread over each video's length, one row per video.

    Frames are memory-mapped, so only the few shown are read. Failed videos get a row with their note.
    """
    shown = list(rows)[:MAX_VIDEOS]
    tiles = [_sample(row.frames_file) if row.frames_file else None for row in shown]
    tile_h, tile_w = next((t.shape[1:3] for t in tiles if t is not None and len(t)), (27, 48))
    tile_h, tile_w = tile_h * scale, tile_w * scale
    row_h = tile_h + _PAD
    width = _LABEL_W + FRAMES_PER_VIDEO * (tile_w + _PAD)
    height = max(1, len(shown)) * row_h + (row_h if len(rows) > len(shown) else 0)
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, (row, frames) in enumerate(zip(shown, tiles, strict=True)):
        top = i * row_h
        draw.text((_PAD, top + _PAD), row.video_id[:22], fill=_TEXT)
        if row.note:
            draw.text((_PAD, top + tile_h // 2 + _PAD), row.note[:22], fill=(240, 120, 120))
        for j, frame in enumerate(frames if frames is not None else []):
            tile = Image.fromarray(np.ascontiguousarray(frame)).resize((tile_w, tile_h), Image.Resampling.NEAREST)
            sheet.paste(tile, (_LABEL_W + j * (tile_w + _PAD), top))
    if len(rows) > len(shown):
        draw.text((_PAD, len(shown) * row_h + _PAD), f"... {len(rows) - len(shown)} more videos", fill=_TEXT)
    return _png(sheet)


def _sample(frames_file: Path) -> np.ndarray:
    frames = np.load(frames_file, mmap_mode="r")
    if len(frames) == 0:
        return frames
    picks = np.unique(np.linspace(0, len(frames) - 1, FRAMES_PER_VIDEO).round().astype(int))
    return np.asarray(frames[picks])


def bar_chart(labels: Sequence[str], series: dict[str, Sequence[float]], title: str = "") -> bytes:
    """A grouped horizontal bar chart (one group per label, one bar per series) as a PNG."""
    colours = [(90, 160, 240), (240, 110, 100), (120, 200, 120), (230, 190, 80)]
    bar_h, gap, label_w, plot_w = 10, 8, 160, 420
    group_h = bar_h * len(series) + gap
    height = 40 + group_h * max(1, len(labels)) + 20 * len(series)
    image = Image.new("RGB", (label_w + plot_w + 90, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((8, 8), title, fill=(0, 0, 0))
    for k, (name, values) in enumerate(series.items()):
        peak = max((float(v) for v in values), default=0.0) or 1.0
        for i, value in enumerate(values):
            top = 30 + i * group_h + k * bar_h
            draw.rectangle(
                [label_w, top, label_w + int(plot_w * float(value) / peak), top + bar_h - 2], fill=colours[k % 4]
            )
            draw.text((label_w + int(plot_w * float(value) / peak) + 4, top - 1), f"{value:g}", fill=(0, 0, 0))
        legend_top = 30 + group_h * max(1, len(labels)) + 20 * k
        draw.rectangle([8, legend_top + 2, 18, legend_top + 10], fill=colours[k % 4])
        draw.text((24, legend_top), f"{name} (bars scaled to its own maximum)", fill=(0, 0, 0))
    for i, label in enumerate(labels):
        draw.text((8, 30 + i * group_h), label[:24], fill=(0, 0, 0))
    return _png(image)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown that shows ``png`` inline (a data URI: the UI needs no file server)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


SHOTS_PER_LINE = 12
MAX_SHOTS_SHOWN = 48  # per video; the rest are counted
_LABEL_H = 14


@dataclass(frozen=True)
class ShotSheetRow:
    """One video of a shot sheet: its id, one frame of each of its shots (S, H, W, 3), and a note
    (why it has none)."""

    video_id: str
    frames: np.ndarray | None
    note: str = ""


def shot_sheet(rows: Sequence[ShotSheetRow], scale: int = 2) -> bytes:
    """A PNG with a frame of every shot of each video, ``SHOTS_PER_LINE`` to a line under the video's
    id and shot count, at most ``MAX_SHOTS_SHOWN`` shots per video and ``MAX_VIDEOS`` videos."""
    shown = list(rows)[:MAX_VIDEOS]
    tile_h, tile_w = next((r.frames.shape[1:3] for r in shown if r.frames is not None and len(r.frames)), (27, 48))
    tile_h, tile_w = tile_h * scale, tile_w * scale
    lines = [-(-min(len(r.frames), MAX_SHOTS_SHOWN) // SHOTS_PER_LINE) if r.frames is not None else 0 for r in shown]
    heights = [_LABEL_H + n * (tile_h + _PAD) + _PAD for n in lines]
    more = len(rows) > len(shown)
    width = _PAD + SHOTS_PER_LINE * (tile_w + _PAD)
    sheet = Image.new("RGB", (width, max(1, sum(heights) + (_LABEL_H if more else 0))), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    top = 0
    for row, height in zip(shown, heights, strict=True):
        count = len(row.frames) if row.frames is not None else 0
        hidden = f", {count - MAX_SHOTS_SHOWN} not shown" if count > MAX_SHOTS_SHOWN else ""
        label = f"{row.video_id[:40]}: {row.note[:60]}" if row.note else f"{row.video_id[:40]}: {count} shots{hidden}"
        draw.text((_PAD, top + 1), label, fill=(240, 120, 120) if row.note else _TEXT)
        for i, frame in enumerate(row.frames[:MAX_SHOTS_SHOWN] if row.frames is not None else []):
            tile = Image.fromarray(np.ascontiguousarray(frame)).resize((tile_w, tile_h), Image.Resampling.NEAREST)
            line, column = divmod(i, SHOTS_PER_LINE)
            sheet.paste(tile, (_PAD + column * (tile_w + _PAD), top + _LABEL_H + line * (tile_h + _PAD)))
        top += height
    if more:
        draw.text((_PAD, top + 1), f"... {len(rows) - len(shown)} more videos", fill=_TEXT)
    return _png(sheet)
