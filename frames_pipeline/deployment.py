"""Where steps run and what the ``video_frames`` step asks for, chosen by environment, not by code.

``FRAMES_PIPELINE_EXECUTOR`` picks the executor of every job of the code location:

- ``multiprocess`` (default): Dagster's own, one process per step on this machine;
- ``ray``: ``dagster-ray``'s ``ray_executor``, each step a Ray job (extra ``ray``);
- ``k8s``: ``dagster-k8s``'s ``k8s_job_executor``, each step a Kubernetes Job (extra ``k8s``).

Dagster fixes one executor per job, so the choice is made when the code location loads; each run
can still configure the chosen executor under ``execution: config:`` (Ray address, image, ...).
"""

import importlib
import json
import os

import dagster as dg

from frames_pipeline.decode import DECODE_MODES, GPU_MODES

EXECUTOR_ENV = "FRAMES_PIPELINE_EXECUTOR"
MODE_ENV = "FRAMES_PIPELINE_MODE"
GPU_ENV = "FRAMES_PIPELINE_GPU"
RAY_TAG = "dagster-ray/config"
K8S_TAG = "dagster-k8s/config"
GPU_RESOURCE = "nvidia.com/gpu"
# The pool of the decoding step (video_frames): one slot per shard decoding at once. Named for the
# work, not the device: on a CPU machine it holds back the same steps a GPU node would.
DECODE_POOL = "video_decode"

# executor name -> (module, attribute, pip extra); multiprocess needs nothing beyond dagster
_EXTERNAL = {"ray": ("dagster_ray", "ray_executor", "ray"), "k8s": ("dagster_k8s", "k8s_job_executor", "k8s")}
EXECUTORS = ("multiprocess", *_EXTERNAL)


def executor_name() -> str:
    """``$FRAMES_PIPELINE_EXECUTOR`` (default ``multiprocess``); ValueError if it names no executor."""
    name = os.environ.get(EXECUTOR_ENV, "").strip() or "multiprocess"
    if name not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}={name!r}: expected one of {', '.join(EXECUTORS)}")
    return name


def build_executor(name: str | None = None) -> dg.ExecutorDefinition:
    """The executor ``name`` (default: from the environment); ImportError naming the extra if it is missing."""
    name = executor_name() if name is None else name
    if name == "multiprocess":
        # Dagster's default: multiprocess, or in-process through run config, as before this module.
        return dg.multi_or_in_process_executor
    module_name, attribute, extra = _EXTERNAL[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"{EXECUTOR_ENV}={name} needs {module_name}: pip install 'frames_pipeline[{extra}]'") from exc
    return getattr(module, attribute)


def configured_mode() -> str:
    """``$FRAMES_PIPELINE_MODE`` (default ``auto``): the ``frame_decoder`` mode this deployment runs."""
    mode = os.environ.get(MODE_ENV, "").strip() or "auto"
    if mode not in DECODE_MODES:
        raise ValueError(f"{MODE_ENV}={mode!r}: expected one of {', '.join(DECODE_MODES)}")
    return mode


def needs_gpu(mode: str) -> bool:
    """Whether a step decoding in ``mode`` must be placed with a GPU.

    ``pynvc`` and ``ffmpeg_gpu`` always do. ``auto`` resolves on the machine the step lands on, after
    it is placed, so the placement cannot follow from it: the deployment says whether its workers
    have GPUs with ``FRAMES_PIPELINE_GPU=1``. Without it, ``auto`` asks for none and still uses a GPU
    that the step happens to see; asking by default would leave steps unschedulable on CPU clusters.
    """
    if mode == "auto":
        return os.environ.get(GPU_ENV, "").strip() == "1"
    return mode in GPU_MODES


def video_frames_op_tags(mode: str | None = None) -> dict[str, str]:
    """Op tags of ``video_frames``: one GPU on Ray and on Kubernetes when ``mode`` (default: from the
    environment) needs one, else none. Each executor reads only its own tag; values are JSON, as both
    libraries parse them."""
    if not needs_gpu(configured_mode() if mode is None else mode):
        return {}
    k8s = {
        "container_config": {"resources": {"limits": {GPU_RESOURCE: "1"}}},
        # GPU nodes are commonly tainted so that only pods asking for a GPU land there.
        "pod_spec_config": {"tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]},
    }
    return {RAY_TAG: json.dumps({"num_gpus": 1}), K8S_TAG: json.dumps(k8s)}
