"""The code location ``frames_pipeline``: everything under ``defs/`` (found by ``dg``'s loader), run
by the executor the deployment picks. The one place it is all wired."""

from pathlib import Path

import dagster as dg

from frames_pipeline.deployment import build_executor

defs = dg.Definitions.merge(
    dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
    dg.Definitions(executor=build_executor()),  # $FRAMES_PIPELINE_EXECUTOR: multiprocess (default), ray or k8s
)
