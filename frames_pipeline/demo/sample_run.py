"""The README's main job: sample videos in, frame arrays out, through a persistent Dagster instance.

``python -m frames_pipeline.demo.sample_run`` generates the sample clips if missing, registers the shards
of every manifest, materializes each shard and then the summary, and prints a table. Runs are
stored in ``$DAGSTER_HOME`` (default ``.dagster_home/`` in the repository), so
``DAGSTER_HOME=$PWD/.dagster_home dagster dev`` shows them afterwards.
"""

import os
import shutil
import sys
from pathlib import Path

import dagster as dg

from frames_pipeline.definitions import defs
from frames_pipeline.defs.partitions import video_shards
from frames_pipeline.defs.resources import frames_data
from frames_pipeline.demo.clips import make_sample_videos, write_sample_manifest
from frames_pipeline.storage.manifest import find_manifests
from frames_pipeline.storage.status import PUBLISHED, ShardCut, cut_manifest, shard_states
from frames_pipeline.storage.summary import merge_counts, summarize_shards

REPO_ROOT = Path(__file__).resolve().parents[2]
# Per-video progress (INFO) on the console, without Dagster's step-by-step DEBUG events.
_QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def prepare_instance_home() -> Path:
    """Use ``$DAGSTER_HOME``, or ``.dagster_home/`` in the repository; seed it with ``dagster.yaml``."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home"))).resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


def ensure_sample_data(data_root: Path) -> None:
    """Generate the demo clips if ``videos/`` is empty, and ``manifests/sample.csv`` if missing."""
    videos_dir = data_root / "videos"
    videos = sorted(p for p in videos_dir.glob("*") if p.is_file()) if videos_dir.is_dir() else []
    if not videos:
        videos = make_sample_videos(videos_dir)
    manifest = data_root / "manifests" / "sample.csv"
    if not manifest.exists():
        write_sample_manifest(manifest, videos)


def run_all(instance: dg.DagsterInstance) -> dict[str, ShardCut]:
    """Register the shards of every manifest, materialize each (a failed shard is reported and the
    others go on), then the summary; returns the shards and how they were cut."""
    cuts = {
        key: cut
        for manifest in find_manifests(frames_data.store.manifests_dir)
        for key, cut in cut_manifest(manifest, frames_data.shard_size).items()
    }
    instance.add_dynamic_partitions(video_shards.name, list(cuts))
    shard_job = defs.resolve_job_def("shard_job")
    for key in cuts:
        result = shard_job.execute_in_process(
            run_config=_QUIET, partition_key=key, instance=instance, raise_on_error=False
        )
        if not result.success:
            print(f"shard {key}: run {result.run_id} failed; see it in the UI", file=sys.stderr)
    defs.resolve_job_def("summary_job").execute_in_process(run_config=_QUIET, instance=instance)
    return cuts


def print_summary(cuts: dict[str, ShardCut]) -> None:
    """One line per shard (state, videos ok/failed, frames, effective modes, failure reasons) and the totals."""
    store = frames_data.store
    table = summarize_shards(store, shard_states(store, cuts))
    print(table.drop(columns="detail").to_string(index=False))
    print(
        f"total: {len(table)} shard(s), {int((table['state'] == PUBLISHED).sum())} published,"
        f" {table['ok'].sum()} video(s) ok,"
        f" {table['failed'].sum()} failed, {table['frames'].sum()} frames,"
        f" modes {merge_counts(table['decode_modes'])}"
    )
    print(f"frames in {frames_data.store.frames_dir}")


def main() -> int:
    """Run the sample pipeline end to end; exit code 1 if any shard is left unpublished."""
    home = prepare_instance_home()
    root = Path(frames_data.data_root)
    ensure_sample_data(root)
    print(f"instance: {home}\ndata:     {root}")
    cuts = run_all(dg.DagsterInstance.get())
    print_summary(cuts)
    return 0 if all(frames_data.store.has_index(k) for k in cuts) else 1


if __name__ == "__main__":
    sys.exit(main())
