"""Decoder worker processes: parallel videos, decoder reuse, hard timeouts and crash recovery.

Videos are decoded in worker processes (a CUDA fatal error ends the whole process, and it must not
be ours), each running one or more decoder threads that keep their decoders between videos and
write each video's files themselves, so frames never cross a pipe. One video per process is what
CPU decoding wants; on a GPU, several decoder threads in one process share its CUDA context (its
creation queues when many processes start at once, and NVDEC decoding releases the GIL). Processes
are spread over the GPUs the pool uses. The parent only hands out jobs, enforces a hard deadline per
video, and replaces a process that hangs or dies: the video that ran past its deadline is recorded
as a timeout, the others it held are handed out again, and after a crash each of its videos is
retried on another GPU, then on CPU, before it is recorded as ``worker_crashed``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection, wait
from typing import Any

from frames_pipeline.decode._cuda import cuda_device_count
from frames_pipeline.decode._errors import DecodeError, Reason, printable
from frames_pipeline.decode._extract import FrameResult, close_backends, extract_to_file, preferred_mode
from frames_pipeline.decode._input_policy import VideoBytes
from frames_pipeline.decode._npy import pts_path, remove_partials
from frames_pipeline.decode._options import GPU_MODES, DecodeOptions
from frames_pipeline.decode._probe import VideoInfo

# Math libraries spin threads of their own; in workers they would only compete with the decoder's.
_WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# The in-worker deadline fires first with a clean error; this margin covers probe and start-up,
# and past it a silent worker is killed.
_HARD_DEADLINE_MARGIN_S = 30.0
# Decoder threads one GPU process carries by default. Measured on an H200 (raw PyNvVideoCodec loop,
# 1080p H.264): 7 threads of one process gave 2,421 frames/s, 7 processes 2,120; 14 threads 2,821,
# and 14 processes starting at once queue for 1.9 s on CUDA context creation before their first frame.
GPU_THREADS_PER_PROCESS = 7
# A new worker says so once its imports are done; one that has not within this long is broken.
_START_LIMIT_S = 120.0
_READY = "ready"
# The exit code of a worker that found itself running its parent's main module again (below).
_RERUN_EXIT_CODE = 78
# A GPU whose processes die this many times in a row, with no video finished between, is taken
# out of the pool: its processes are restarted on the other GPUs, or to decode on CPU.
_CRASHES_BEFORE_GPU_IS_DOWN = 2


@dataclass(frozen=True)
class VideoJob:
    """One video to decode: ``output`` is the frames .npy path (timestamps go beside it).

    With ``data`` (a whole video file's bytes) the worker decodes those bytes in memory and
    ``source`` only names the video; without it ``source`` is the path to read.
    """

    key: str
    source: str
    output: str
    data: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class VideoOutcome:
    """What happened to one job, built once where it happened: by the worker that decoded it, or by
    the pool when the worker hung or died. Failures carry a reason code, never an exception.

    ``info`` is the probe of the video (None when the probe itself failed); ``output`` is the
    frames file written, None when the video failed.
    """

    key: str
    source: str
    output: str | None
    num_frames: int
    height: int
    width: int
    requested_mode: str
    decode_mode: str | None
    fallback_reason: str | None
    error_reason: str | None
    error: str | None
    warnings: tuple[str, ...]
    decode_s: float
    info: VideoInfo | None
    started_at: float  # Unix time the video was started: with first_frame_s, start-up across a pool
    first_frame_s: float | None  # from the start to its first batch of frames; None when it failed

    @property
    def ok(self) -> bool:
        return self.error_reason is None

    @property
    def status(self) -> str:
        return "ok" if self.ok else "failed"

    @property
    def expected_frames(self) -> int | None:
        """The probe's frame count, which a whole decode matches."""
        return self.info.num_frames_from_content if self.info else None

    @property
    def hint(self) -> str | None:
        """What the user can do about a failure."""
        return Reason(self.error_reason).hint if self.error_reason else None

    def to_record(self) -> dict[str, Any]:
        """The flat view people and tables read (the shard index, the CLI's JSON lines): texts made
        printable whatever bytes a file name holds, the probe's main facts as columns."""
        info = self.info
        return {
            "video_id": self.key,
            "source": printable(self.source),
            "status": self.status,
            "num_frames": self.num_frames,
            "expected_frames": self.expected_frames,
            "height": self.height,
            "width": self.width,
            "requested_mode": self.requested_mode,
            "decode_mode": self.decode_mode,
            "fallback_reason": self.fallback_reason,
            "error_reason": self.error_reason,
            "error": self.error,
            "hint": self.hint,
            "warnings": list(self.warnings),
            "decode_s": self.decode_s,
            "codec": info.codec if info else None,
            "source_height": info.display_hw[0] if info else None,
            "source_width": info.display_hw[1] if info else None,
            "source_fps": info.fps_from_content if info else None,
            "source_duration_s": info.duration_s_from_content if info else None,
            "vfr": info.vfr if info else None,
            "rotation": info.rotation if info else None,
            "mirrored": info.mirrored if info else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields, for ``from_dict`` in a later run."""
        return {**asdict(self), "info": self.info.to_dict() if self.info else None}

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> VideoOutcome:
        info = fields.get("info")
        return cls(
            **{
                **fields,
                "warnings": tuple(fields["warnings"]),
                "info": VideoInfo.from_dict(info) if info else None,
            }
        )

    @classmethod
    def decoded(
        cls, job: VideoJob, result: FrameResult, options: DecodeOptions, retry_reason: str | None, started_at: float
    ) -> VideoOutcome:
        """A finished decode under the pool's ``options``; ``retry_reason`` says why the pool retried
        it in another mode, if it did."""
        height, width = options.output_hw
        return cls(
            key=job.key,
            source=job.source,
            output=result.output_path,
            num_frames=result.num_frames,
            height=height,
            width=width,
            requested_mode=options.mode,
            decode_mode=result.decode_mode,
            fallback_reason="; ".join(r for r in (retry_reason, result.fallback_reason) if r) or None,
            error_reason=None,
            error=None,
            warnings=result.warnings,
            decode_s=result.decode_s,
            info=result.info,
            started_at=started_at,
            first_frame_s=result.first_frame_s,
        )

    @classmethod
    def failure(
        cls, job: VideoJob, requested_mode: str, error: DecodeError, seconds: float, started_at: float
    ) -> VideoOutcome:
        return cls(
            key=job.key,
            source=job.source,
            output=None,
            num_frames=0,
            height=0,
            width=0,
            requested_mode=requested_mode,
            decode_mode=None,
            fallback_reason=None,
            error_reason=error.reason.value,
            error=error.message,
            warnings=(),
            decode_s=seconds,
            info=None,
            started_at=started_at,
            first_frame_s=None,
        )


@dataclass(frozen=True)
class _Assignment:
    """One video handed to a worker: decode ``job`` in ``mode``. ``tried_gpus`` are the GPUs whose
    processes died while decoding it (a retry goes elsewhere); ``retry_reason`` says why this is a
    retry, which the outcome reports as its fallback reason."""

    job: VideoJob
    mode: str
    attempt: int = 0
    tried_gpus: frozenset[int] = frozenset()
    retry_reason: str | None = None


@dataclass
class _InFlight:
    assignment: _Assignment
    assigned_at: float  # Unix time
    deadline: float  # time.monotonic()


def _exit_with_parent(parent: int) -> None:
    """End this worker once its parent is gone (killed with -9, say): an orphan would go on decoding
    and publishing files into a shard that the next run is resuming."""
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


def _worker_main(conn: Connection, options: DecodeOptions, parent: int, threads: int) -> None:
    """Decode assignments on ``threads`` decoder threads until told to stop; every assignment gets
    exactly one ``(token, VideoOutcome)`` back."""
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    inbox: queue.Queue[tuple[int, _Assignment] | None] = queue.Queue()
    sending = threading.Lock()

    def decode_loop() -> None:
        try:
            while (message := inbox.get()) is not None:
                token, assignment = message
                outcome = _decode_assignment(assignment, options)
                with sending:
                    conn.send((token, outcome))
        except (BrokenPipeError, OSError):  # the parent is gone
            pass
        finally:
            close_backends()

    decoders = [threading.Thread(target=decode_loop, daemon=True) for _ in range(threads)]
    for decoder in decoders:
        decoder.start()
    try:
        conn.send(_READY)
        while (message := conn.recv()) is not None:
            inbox.put(message)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):  # the parent stopped us, or is gone
        pass
    finally:
        for _ in decoders:
            inbox.put(None)
        for decoder in decoders:
            decoder.join()


def _decode_assignment(assignment: _Assignment, options: DecodeOptions) -> VideoOutcome:
    job = assignment.job
    started, started_at = time.perf_counter(), time.time()
    source = job.source if job.data is None else VideoBytes(job.source, job.data)
    try:
        result = extract_to_file(source, job.output, options=replace(options, mode=assignment.mode))
    except DecodeError as exc:
        return VideoOutcome.failure(job, options.mode, exc, time.perf_counter() - started, started_at)
    except Exception as exc:  # a bug must cost one video, not the worker
        error = DecodeError(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", path=job.source)
        return VideoOutcome.failure(job, options.mode, error, time.perf_counter() - started, started_at)
    return VideoOutcome.decoded(job, result, options, assignment.retry_reason, started_at)


class _Worker:
    """One worker process: ``threads`` videos at a time, on GPU ``gpu`` (None: decodes on CPU only)."""

    def __init__(self, ctx: Any, options: DecodeOptions, threads: int, gpu: int | None) -> None:
        self.threads, self.gpu = threads, gpu
        self.options = replace(options, gpu_id=gpu) if gpu is not None else options
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, self.options, os.getpid(), threads), daemon=True)
        with _environment(_WORKER_ENV):
            self.process.start()
        child.close()
        self.in_flight: dict[int, _InFlight] = {}

    def wait_ready(self) -> None:
        """Return once the worker has started; raise WorkerStartError if it exits or hangs first."""
        ready = wait([self.conn, self.process.sentinel], timeout=_START_LIMIT_S)
        if self.conn in ready:
            with contextlib.suppress(EOFError, OSError):
                if self.conn.recv() == _READY:
                    return
        self.stop(kill=True)
        raise WorkerStartError(_start_failure(self.process.exitcode if ready else None))

    @property
    def jobs(self) -> list[VideoJob]:
        """The videos this process is decoding now."""
        return [f.assignment.job for f in self.in_flight.values()]

    @property
    def free(self) -> int:
        return self.threads - len(self.in_flight)

    def accepts(self, assignment: _Assignment, gpu_bound: bool, usable_gpus: set[int]) -> bool:
        """Whether this process may take ``assignment``: a video bound for a GPU only on a usable GPU
        it has not crashed on, any other video anywhere."""
        return not gpu_bound or (self.gpu in usable_gpus and self.gpu not in assignment.tried_gpus)

    def assign(self, token: int, assignment: _Assignment, hard_s: float) -> None:
        self.conn.send((token, assignment))
        self.in_flight[token] = _InFlight(assignment, time.time(), time.monotonic() + hard_s)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send(None)
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class WorkerStartError(RuntimeError):
    """A decoder worker process did not start; the message says why and what to do."""


def _main_module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else str(getattr(main, "__file__", "the main module"))


def _start_failure(exitcode: int | None) -> str:
    if exitcode == _RERUN_EXIT_CODE:
        return (
            f"decoder workers cannot start: they start with the 'spawn' method, which runs {_main_module_name()} "
            "again in each worker, and there it starts decoding (a DecoderPool, or the NeMo stage's setup()) "
            'at import time. Put the code that runs the pipeline under `if __name__ == "__main__":`.'
        )
    if exitcode is None:
        return f"a decoder worker did not start within {_START_LIMIT_S:.0f} s (killed)"
    return f"a decoder worker exited while starting (exit code {exitcode}); its error is on stderr"


def _refuse_rerun_of_main() -> None:
    """End this process at once if it is a spawned worker still importing its parent's main module:
    that module has no ``__main__`` guard and would otherwise go on to run the whole job again here
    (and then fail with a message about bootstrapping); the parent turns the exit code into advice."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        sys.stderr.write("frames_pipeline: a decoder worker found its parent's main module starting decoders again\n")
        sys.stderr.flush()
        os._exit(_RERUN_EXIT_CODE)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def pool_gpus(mode: str, gpus: Sequence[int] | None) -> tuple[int, ...]:
    """The GPUs a pool decoding in ``mode`` spreads its processes over: those of ``gpus`` that exist
    (a pinned list), every visible one when None; none for ``ffmpeg_cpu``."""
    if mode == "ffmpeg_cpu":
        return ()
    visible = cuda_device_count()
    return tuple(g for g in (range(visible) if gpus is None else gpus) if 0 <= g < visible)


class DecoderPool:
    """Decode many videos at once, ``workers`` at a time, in ``processes`` worker processes whose
    decoder threads keep their decoders between videos.

    ``processes`` defaults to ``workers`` on CPU (one video per process, which CPU decoding wants) and
    on a GPU to one process per ``GPU_THREADS_PER_PROCESS`` workers, at least one per GPU: fewer
    processes share each one's start-up and CUDA context among their threads. On a GPU host the
    processes are spread over ``gpus`` (default: every visible GPU; a one-element list pins them).

    ``run`` yields one ``VideoOutcome`` per job in completion order and never raises for a bad
    video. A video that runs past its deadline is killed with its process (reason ``timeout``); after
    a crash, each video the process held is retried: on another GPU, then on CPU, before it is
    recorded as ``worker_crashed``. A GPU whose processes keep dying is taken out of the pool.
    """

    def __init__(
        self,
        options: DecodeOptions | None = None,
        workers: int = 1,
        retries: int = 1,
        grace_s: float = _HARD_DEADLINE_MARGIN_S,
        *,
        processes: int | None = None,
        gpus: Sequence[int] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        _refuse_rerun_of_main()
        if processes is not None and not 1 <= processes <= workers:
            raise ValueError(f"processes must be between 1 and workers ({workers}), got {processes}")
        options = options or DecodeOptions()
        self.gpus = pool_gpus(options.mode, gpus)
        if self.gpus or gpus:  # a pinned GPU that does not exist is what preferred_mode reports
            options = replace(options, gpu_id=(self.gpus or tuple(gpus or ()))[0])
        self.effective_mode, self.mode_reason = preferred_mode(options)
        if self.effective_mode == "ffmpeg_cpu":
            self.gpus = ()
            processes = workers if processes is None else processes
        elif processes is None:
            # At least one process per GPU, each carrying up to GPU_THREADS_PER_PROCESS decoder threads.
            processes = min(workers, max(len(self.gpus), math.ceil(workers / GPU_THREADS_PER_PROCESS)))
        if options.threads == 0:
            # Several decoder threads per process decode on CPU with one FFmpeg thread each, which keeps
            # each video's captured messages its own (see the ffmpeg_cpu backend).
            per_video = 1 if processes < workers else max(1, (os.cpu_count() or 1) // workers)
            options = replace(options, threads=per_video)
        self.options = options
        self.workers, self.processes, self.retries, self.grace_s = workers, processes, retries, grace_s
        self.gpus_down: set[int] = set()
        self._crashes: dict[int, int] = {}
        self._ctx = multiprocessing.get_context("spawn")
        self._pool: list[_Worker] = []
        self._tokens = itertools.count()

    def start(self) -> DecoderPool:
        """Start the worker processes and wait until each has started (they start side by side);
        raises WorkerStartError, with what to do, if one cannot."""
        fresh = [self._new_worker(slot) for slot in range(len(self._pool), self.processes)]
        self._pool.extend(fresh)
        try:
            for worker in fresh:
                worker.wait_ready()
        except WorkerStartError:
            self.close()
            raise
        return self

    def close(self) -> None:
        for worker in self._pool:
            worker.stop()
        self._pool.clear()

    def __enter__(self) -> DecoderPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _hard_limit_s(self) -> float:
        return self.options.timeout_s * 1.25 + self.grace_s

    def _slot_threads(self, slot: int) -> int:
        """Decoder threads of process ``slot``: ``workers`` spread as evenly as ``processes`` allow."""
        share, extra = divmod(self.workers, self.processes)
        return share + (slot < extra)

    def _slot_gpu(self, slot: int) -> int | None:
        healthy = [g for g in self.gpus if g not in self.gpus_down]
        return healthy[slot % len(healthy)] if healthy else None

    def _new_worker(self, slot: int) -> _Worker:
        return _Worker(self._ctx, self.options, self._slot_threads(slot), self._slot_gpu(slot))

    def run(self, jobs: Iterable[VideoJob]) -> Iterator[VideoOutcome]:
        """Decode ``jobs``; yields outcomes as videos finish."""
        self.start()
        pending = deque(_Assignment(job, self.options.mode) for job in jobs)
        try:
            while pending or any(w.in_flight for w in self._pool):
                self._hand_out(pending)
                busy = [w for w in self._pool if w.in_flight]
                deadline = min(f.deadline for w in busy for f in w.in_flight.values())
                ready = set(
                    wait(
                        [w.conn for w in busy] + [w.process.sentinel for w in busy],
                        timeout=max(0.0, deadline - time.monotonic()),
                    )
                )
                for worker in busy:
                    yield from self._settle(worker, ready, pending)
        finally:
            # Left early (an exception, or the caller stopped reading): a busy worker's late reply
            # would be taken for the next run's, so those workers are replaced now.
            for worker in [w for w in self._pool if w.in_flight]:
                self._retire(worker)

    def _usable_gpus(self) -> set[int]:
        """GPUs a process of this pool decodes on now, less those taken out."""
        return {w.gpu for w in self._pool if w.gpu is not None} - self.gpus_down

    def _gpu_bound(self, assignment: _Assignment) -> bool:
        return assignment.mode in GPU_MODES or (assignment.mode == "auto" and bool(self.gpus))

    def _hand_out(self, pending: deque[_Assignment]) -> None:
        """Give pending videos to processes with free threads that may take them. A process that died
        while idle (killed, out of memory) held nothing: it is replaced and nothing is retried."""
        usable = self._usable_gpus()
        for i, assignment in enumerate(pending):
            if self._gpu_bound(assignment) and not usable - assignment.tried_gpus:
                down = ", ".join(map(str, sorted(self.gpus_down)))
                # A pool that never had a GPU says why (the host's reason), not that none is left.
                left = self.mode_reason or "no GPU left to try"
                why = f"GPU {down} taken out after repeated crashes" if down else left
                pending[i] = replace(assignment, mode="ffmpeg_cpu", retry_reason=assignment.retry_reason or why)
        for worker in list(self._pool):
            taken = [a for a in pending if worker.accepts(a, self._gpu_bound(a), usable)][: worker.free]
            for assignment in taken:
                try:
                    worker.assign(next(self._tokens), assignment, self._hard_limit_s)
                except OSError:  # BrokenPipeError: the process is gone
                    worker = self._retire(worker)
                    worker.assign(next(self._tokens), assignment, self._hard_limit_s)
                pending.remove(assignment)

    def _settle(self, worker: _Worker, ready: set[Any], pending: deque[_Assignment]) -> Iterator[VideoOutcome]:
        """Outcomes ``worker`` has sent; the consequences of its death or of a video past its deadline."""
        if worker.conn in ready:
            with contextlib.suppress(EOFError, OSError):  # died while answering: a crash, below
                while worker.in_flight and worker.conn.poll():
                    token, outcome = worker.conn.recv()
                    del worker.in_flight[token]
                    if worker.gpu is not None:  # it answered: the GPU is alive
                        self._crashes[worker.gpu] = 0
                    yield outcome
        now = time.monotonic()
        overdue = [t for t, f in worker.in_flight.items() if f.deadline <= now]
        if worker.process.is_alive() and not overdue:
            return
        dead = not worker.process.is_alive()
        code = worker.process.exitcode
        held = dict(worker.in_flight)
        self._retire(worker, crashed=dead)
        for token, flight in held.items():
            elapsed = time.time() - flight.assigned_at
            if dead:
                yield from self._after_crash(flight, code, worker.gpu, elapsed, pending)
            elif token in overdue:
                error = DecodeError(
                    Reason.TIMEOUT, f"no answer after {elapsed:.0f} s; worker killed", path=flight.assignment.job.source
                )
                yield VideoOutcome.failure(flight.assignment.job, self.options.mode, error, elapsed, flight.assigned_at)
            else:  # killed with the video that hung: not its fault, it starts again as it was
                pending.appendleft(flight.assignment)

    def _after_crash(
        self, flight: _InFlight, code: int | None, gpu: int | None, elapsed: float, pending: deque[_Assignment]
    ) -> Iterator[VideoOutcome]:
        """Retry a video whose process died: on a GPU it has not crashed yet, then on CPU."""
        assignment = flight.assignment
        where = f"{assignment.mode}" + (f" on GPU {gpu}" if gpu is not None else "")
        died = f"worker died (exit code {code}) decoding in {where}"
        tried = assignment.tried_gpus | ({gpu} if gpu is not None else set())
        healthy = sorted(self._usable_gpus() - tried)
        on_gpu = self._gpu_bound(assignment)
        if on_gpu and healthy and assignment.attempt < self.retries:
            retry = replace(
                assignment,
                attempt=assignment.attempt + 1,
                tried_gpus=frozenset(tried),
                retry_reason=f"{died}; retried on GPU {healthy[0]}",
            )
        elif on_gpu or assignment.attempt < self.retries:
            retry = replace(
                assignment,
                mode="ffmpeg_cpu",
                attempt=assignment.attempt + 1,
                tried_gpus=frozenset(tried),
                retry_reason=f"{died}; retried in ffmpeg_cpu",
            )
        else:
            error = DecodeError(
                Reason.WORKER_CRASHED, f"{died}, {assignment.attempt + 1} tries", path=assignment.job.source
            )
            yield VideoOutcome.failure(assignment.job, self.options.mode, error, elapsed, flight.assigned_at)
            return
        pending.appendleft(retry)

    def _retire(self, worker: _Worker, crashed: bool = False) -> _Worker:
        """Stop ``worker`` (killing it if it holds videos), delete what it was writing, start its
        replacement. A GPU whose processes keep crashing is taken out: the replacement goes to
        another GPU, or decodes on CPU."""
        worker.stop(kill=True)
        for job in worker.jobs:
            _remove_partials(job)
        if crashed and worker.gpu is not None:
            self._crashes[worker.gpu] = self._crashes.get(worker.gpu, 0) + 1
            if self._crashes[worker.gpu] >= _CRASHES_BEFORE_GPU_IS_DOWN:
                self.gpus_down.add(worker.gpu)
        slot = self._pool.index(worker)
        fresh = self._new_worker(slot)
        self._pool[slot] = fresh
        fresh.wait_ready()
        return fresh


def _remove_partials(job: VideoJob) -> None:
    """Delete what a killed worker was writing for ``job``."""
    remove_partials(job.output)
    remove_partials(pts_path(job.output))
