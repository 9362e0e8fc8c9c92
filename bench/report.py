"""Turn the CPU benchmark's results into cpu.json, cpu.md (tables, ratios, machine) and cpu.png (frames/s bars)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .corpus import FULL, QUICK
from .peers import CONTENDERS, MANY_VIDEO_SETS, TRANSNET_HW

_KIND_COLOURS = {"ours": "tab:green", "nemo": "tab:red", "floor": "tab:gray", "peer": "tab:blue"}


def _is_throughput(row: dict[str, Any]) -> bool:
    return tuple(row["output_hw"]) == TRANSNET_HW


def _fps(row: dict[str, Any]) -> float | None:
    return row.get("fps") if row["status"] == "ok" else None


def _correct(row: dict[str, Any]) -> bool:
    """Every decodable frame, each (27, 48, 3): a peer whose output needs fixing (decord's padding,
    video2numpy's crop) is not a fair winner on its own."""
    return bool(row.get("shape_ok")) and row.get("frames_returned") == row["decodable"]


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each of our rows against NeMo's rows, the decode floor of its kind and the fastest peer of the same set.

    Our rows that decode one video at a time meet the single-video floor, the pool meets the parallel
    floor. "best peer" is the fastest peer whose output is correct (``_correct``); the fastest peer
    of all is listed too when that is another one.
    """
    found = []
    for clip_set in results["sets"]:
        rows = [r for r in results["rows"] if r["set"] == clip_set and _is_throughput(r) and _fps(r)]
        peers = [r for r in rows if r["kind"] == "peer"]
        usable = [r for r in peers if _correct(r)]
        best = max(usable, key=lambda r: r["fps"]) if usable else None
        fastest = max(peers, key=lambda r: r["fps"]) if peers else None
        for ours in (r for r in rows if r["kind"] == "ours"):
            others = [(r["kind"], r) for r in rows if r["kind"] == "nemo"]
            others += [("floor", r) for r in rows if r["kind"] == "floor" and r["parallel"] == ours["parallel"]]
            if best is not None:
                others.append(("best peer", best))
            if fastest is not None and fastest is not best:
                others.append(("fastest peer, wrong output shape or count", fastest))
            for what, other in others:
                found.append(
                    {
                        "set": clip_set,
                        "ours": ours["label"],
                        "vs": what,
                        "other": other["label"],
                        "ours_fps": ours["fps"],
                        "other_fps": other["fps"],
                        "ratio": ours["fps"] / other["fps"],
                    }
                )
    return found


@dataclass(frozen=True)
class Target:
    """One of issue #16's goals: row ``ours`` against row ``other`` on each of ``sets``, at least ``ratio``."""

    goal: str
    ours: str
    other: str
    sets: tuple[str, ...]
    ratio: float


_LARGE = ("h264_1080p", "h264_720p", "hevc_1080p")
TARGETS: tuple[Target, ...] = (
    Target(
        "many videos: the pool against the parallel decode floor", "ours_pool", "floor_parallel", MANY_VIDEO_SETS, 0.95
    ),
    Target("one video in-process against the single-video floor", "ours", "floor", _LARGE, 0.95),
    Target("one video in-process against the single-video floor", "ours", "floor", ("long_360p",), 0.9),
    Target("the fast decode (skip_loop_filter) against the single-video floor", "ours_fast", "floor", _LARGE, 1.1),
)
_AHEAD = "ahead of every peer with correct output, NeMo's command included"


@dataclass(frozen=True)
class GoalCheck:
    goal: str
    set: str
    ours: str
    other: str
    ratio: float | None  # None: a row it needs failed or did not run
    target: float
    strictly: bool = False  # ahead means faster: a tie does not meet it

    @property
    def met(self) -> bool:
        if self.ratio is None:
            return False
        return self.ratio > self.target if self.strictly else self.ratio >= self.target


def goal_checks(results: dict[str, Any]) -> list[GoalCheck]:
    """Issue #16's goals against this run: the ``TARGETS`` ratios, and on every set with peers our
    fastest default row (not the fast decode) against the fastest correct peer or NeMo row."""
    rows = {(r["set"], r["key"]): r for r in results["rows"] if _is_throughput(r)}
    checks = []
    for target in TARGETS:
        for clip_set in (s for s in target.sets if s in results["sets"]):
            ours, other = rows.get((clip_set, target.ours)), rows.get((clip_set, target.other))
            fps_ours, fps_other = (_fps(ours) if ours else None), (_fps(other) if other else None)
            ratio = fps_ours / fps_other if fps_ours and fps_other else None
            labels = [r["label"] if r else key for r, key in ((ours, target.ours), (other, target.other))]
            checks.append(GoalCheck(target.goal, clip_set, *labels, ratio, target.ratio))
    for clip_set in results["sets"]:
        here = [r for (s, _), r in rows.items() if s == clip_set and _fps(r)]
        rivals = [r for r in here if r["kind"] in ("peer", "nemo") and _correct(r)]
        ours = [r for r in here if r["kind"] == "ours" and r["key"] != "ours_fast"]
        if not rivals:
            continue
        best = max(rivals, key=lambda r: r["fps"])
        mine = max(ours, key=lambda r: r["fps"]) if ours else None
        ratio = mine["fps"] / best["fps"] if mine else None
        checks.append(GoalCheck(_AHEAD, clip_set, mine["label"] if mine else "ours", best["label"], ratio, 1.0, True))
    return checks


def memory_comparison(results: dict[str, Any]) -> dict[str, Any] | None:
    """Peak RSS of ours streaming 224x224 frames to disk against NeMo's command buffering them, and file validity."""
    rows = [r for r in results["rows"] if not _is_throughput(r)]
    ours = next((r for r in rows if r["kind"] == "ours"), None)
    nemo = next((r for r in rows if r["kind"] == "nemo"), None)
    if ours is None or nemo is None or "rss_tree_mb" not in ours or "rss_tree_mb" not in nemo:
        return None
    return {
        "ours_rss_mb": ours["rss_tree_mb"],
        "nemo_rss_mb": nemo["rss_tree_mb"],
        "nemo_over_ours": nemo["rss_tree_mb"] / ours["rss_tree_mb"],
        "ours_file_valid": bool(ours.get("shape_ok")) and ours.get("frames_returned") == ours["decodable"],
        "ours_shape": ours.get("shape"),
    }


def _num(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| row | frames/s | videos/s | RSS all procs (MB) | RSS largest proc (MB) | frames / decodable "
        "| output shape | MAD vs ref | notes |",
        "|---|--:|--:|--:|--:|--:|---|--:|---|",
    ]
    for r in rows:
        ok = r["status"] == "ok"
        speed = _num(r.get("fps")) if ok else f"**{r['status']}**"
        per_video = _num(r.get("videos_per_s"), 1) if ok and r["clips"] > 1 else "–"
        frames = "–"
        if r.get("frames_returned") is not None:
            frames = f"{r['frames_returned']} / {r['decodable']}{_mark(r['frames_returned'] == r['decodable'])}"
        shape = f"`{r['shape']}`{_mark(r.get('shape_ok'))}" if r.get("shape") else "–"
        mad = _num(r.get("mad"), 2) + (f" ({r['mad_note']})" if r.get("mad_note") else "")
        notes = "; ".join([*([r["error"]] if r.get("error") else []), *r.get("notes", [])])
        if r.get("failed_clips"):
            notes = f"{r['failed_clips']} clip(s) returned nothing; {notes}"
        cells = [r["label"], speed, per_video, _num(r.get("rss_tree_mb")), _num(r.get("rss_max_proc_mb")), frames]
        lines.append("| " + " | ".join([*cells, shape, mad, notes.replace("|", "/")]) + " |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The whole report: caveats, method, one table per clip set with its ratios, memory, row definitions."""
    m = results["machine"]
    lines = ["# CPU benchmark: frames_pipeline against NeMo Curator's CPU path and peer decoders", ""]
    if results["quick"]:
        lines += [
            f"> **`--quick` run** ({results['repeats']} repeat(s)): small corpus on a shared machine, so the figures "
            "are noisy. It shows the harness works, not how fast anything is.",
            "",
        ]
    ffmpegs = ", ".join(f"{name} {v['version']} (`{v['path']}`)" for name, v in m["ffmpeg"].items())
    lines += [
        f"- Machine: {m['cpu']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable), "
        f"{m['memory_gb']} GiB; load average {m['load_average_at_start'][0]:.2f} at start, "
        f"{m['load_average_at_end'][0]:.2f} at end; Python {m['python']}, {m['platform']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"- ffmpeg: {ffmpegs}",
        f"- frames/s: the set's decodable frames over the median wall time of {results['repeats']} run(s); every "
        "row runs in a fresh process and its set-up (imports, pool start, reading sources) is not timed.",
        "- RSS all procs: peak of the summed RSS of the row's process and its children, sampled every 20 ms; "
        "RSS largest proc: the row process's own peak (`VmHWM`) or its largest child's `ru_maxrss` (which "
        "includes the row process's size at the fork). Pages a forked child shares with its parent count twice "
        "in the sum, so it is an upper bound.",
        f"- Reference and decodable count: the {results['reference']} output. MAD: mean absolute difference "
        "per pixel value (0-255) over the frames both have.",
    ]
    ran = {r["key"] for r in results["rows"]}
    rows_out = [c.key for c in CONTENDERS if c.key not in ran]
    sets_out = [s.name for s in (QUICK if results["quick"] else FULL) if s.name not in results["sets"]]
    if rows_out or sets_out:
        # A selected run's tables and goals stand for what ran; say what did not, so no row reads as missing.
        parts = [f"{what} {', '.join(names)}" for what, names in (("rows", rows_out), ("sets", sets_out)) if names]
        lines.append(f"- Not in this run (`--rows` / `--sets`): {'; '.join(parts)}")
    lines.append("")
    lines += [
        "## Issue #16's goals in this run",
        "",
        "| goal | set | ours | against | ratio | target | met |",
        "|---|---|---|---|--:|--:|---|",
    ]
    for check in goal_checks(results):
        ratio = "–" if check.ratio is None else f"{check.ratio:.2f}x"
        target = f"{'>' if check.strictly else '>='} {check.target:.2f}x"
        met = "met" if check.met else "**not met**"
        lines.append(f"| {check.goal} | {check.set} | {check.ours} | {check.other} | {ratio} | {target} | {met} |")
    lines.append("")
    found = ratios(results)
    for clip_set, info in results["sets"].items():
        rows = [r for r in results["rows"] if r["set"] == clip_set and _is_throughput(r)]
        if not rows:
            continue
        copies = info.get("copies", 1)
        clips = f"{info['clips']} clips ({copies} copies of each)" if copies > 1 else f"{info['clips']} clip(s)"
        lines += [
            f"## {clip_set}: {clips}, {info['size']} {info['codec']}, "
            f"{info['frames_per_clip']} frames each, {info['decodable']} decodable",
            "",
            *_table(rows),
            "",
        ]
        for r in (r for r in found if r["set"] == clip_set):
            vs = r["other"] if r["vs"] in ("nemo", "floor") else f"{r['vs']} ({r['other']})"
            lines.append(
                f"- {r['ours']} vs {vs}: **{r['ratio']:.2f}x** ({r['ours_fps']:,.0f} vs {r['other_fps']:,.0f} frames/s)"
            )
        lines.append("")
    memory_rows = [r for r in results["rows"] if not _is_throughput(r)]
    if memory_rows:
        lines += ["## Memory: the long clip at 224x224", "", *_table(memory_rows), ""]
        mem = memory_comparison(results)
        if mem:
            valid = "valid" if mem["ours_file_valid"] else "NOT valid"
            lines += [
                f"- ours streams to disk: peak {mem['ours_rss_mb']:,.0f} MB, output file {valid} "
                f"(`np.load` shape `{mem['ours_shape']}`); NeMo's command buffers everything: "
                f"{mem['nemo_rss_mb']:,.0f} MB, **{mem['nemo_over_ours']:.1f}x** ours.",
                "",
            ]
    lines += ["## What each row is", ""]
    seen = set()
    for r in results["rows"]:
        if r["key"] not in seen:
            seen.add(r["key"])
            lines.append(f"- **{r['label']}**: {r['about']}")
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    """Horizontal frames/s bars, one panel per clip set; a row that failed or was skipped is named with no bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (name, [r for r in results["rows"] if r["set"] == name and _is_throughput(r)]) for name in results["sets"]
    ]
    panels = [(name, rows) for name, rows in panels if rows]
    if not panels:  # only the memory rows were run
        return
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(11, sum(0.35 * len(rows) + 0.9 for _, rows in panels)),
        squeeze=False,
        height_ratios=[len(rows) + 2 for _, rows in panels],
        layout="constrained",  # keeps the figure title off the first panel's
    )
    for ax, (name, rows) in zip(axes[:, 0], panels, strict=True):
        values = [_fps(r) or 0.0 for r in rows]
        ax.barh([r["label"] for r in rows], values, color=[_KIND_COLOURS[r["kind"]] for r in rows])
        ax.invert_yaxis()
        ax.set_title(name, loc="left", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        for y, (row, value) in enumerate(zip(rows, values, strict=True)):
            ax.text(value, y, f" {value:,.0f}" if _fps(row) else f" {row['status']}", va="center", fontsize=7)
        ax.set_xlim(0, max(max(values), 1.0) * 1.15)
    axes[-1, 0].set_xlabel("frames/s (27x48 RGB output)")
    title = "CPU decode to 27x48 RGB, frames/s"
    if results["quick"]:
        title += " (--quick: noisy, not figures)"
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    """Write cpu.json, cpu.md and cpu.png under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    results = {
        **results,
        "ratios": ratios(results),
        "goals": [asdict(check) | {"met": check.met} for check in goal_checks(results)],
        "memory": memory_comparison(results),
    }
    paths = [out / "cpu.json", out / "cpu.md", out / "cpu.png"]
    paths[0].write_text(json.dumps(results, indent=2))
    paths[1].write_text(markdown(results))
    chart(results, paths[2])
    return [p for p in paths if p.exists()]
