"""Decoder worker processes: parallel videos, decoder reuse, hard timeouts and crash recovery.

Each worker is a process (threads did not scale, and a CUDA fatal error ends the whole process)
that keeps its decoders between videos and writes each video's files itself, so frames never
cross a pipe. The parent only hands out jobs, enforces a hard deadline per video, and replaces a
worker that hangs or dies; the video it held is retried (on CPU if it was on a GPU) or recorded.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection, wait
from typing import Any

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
# A new worker says so once its imports are done; one that has not within this long is broken.
_START_LIMIT_S = 120.0
_READY = "ready"
# The exit code of a worker that found itself running its parent's main module again (below).
_RERUN_EXIT_CODE = 78


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
        cls, job: VideoJob, result: FrameResult, options: DecodeOptions, retry_reason: str | None
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
            fallback_reason=retry_reason or result.fallback_reason,
            error_reason=None,
            error=None,
            warnings=result.warnings,
            decode_s=result.decode_s,
            info=result.info,
        )

    @classmethod
    def failure(cls, job: VideoJob, requested_mode: str, error: DecodeError, seconds: float) -> VideoOutcome:
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
        )


@dataclass(frozen=True)
class _Assignment:
    """The pool's message to a worker: decode ``job`` in ``mode``; ``retry_reason`` says why this is
    a retry in another mode (the outcome reports it as its fallback reason)."""

    job: VideoJob
    mode: str
    attempt: int = 0
    retry_reason: str | None = None


def _exit_with_parent(parent: int) -> None:
    """End this worker once its parent is gone (killed with -9, say): an orphan would go on decoding
    and publishing files into a shard that the next run is resuming."""
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


def _worker_main(conn: Connection, options: DecodeOptions, parent: int) -> None:
    """Decode assignments until told to stop; every assignment gets exactly one VideoOutcome back."""
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    try:
        conn.send(_READY)
        while (assignment := conn.recv()) is not None:
            conn.send(_decode_assignment(assignment, options))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):  # the parent stopped us, or is gone
        pass
    finally:
        close_backends()


def _decode_assignment(assignment: _Assignment, options: DecodeOptions) -> VideoOutcome:
    job = assignment.job
    started = time.perf_counter()
    source = job.source if job.data is None else VideoBytes(job.source, job.data)
    try:
        result = extract_to_file(source, job.output, options=replace(options, mode=assignment.mode))
    except DecodeError as exc:
        return VideoOutcome.failure(job, options.mode, exc, time.perf_counter() - started)
    except Exception as exc:  # a bug must cost one video, not the worker
        error = DecodeError(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", path=job.source)
        return VideoOutcome.failure(job, options.mode, error, time.perf_counter() - started)
    return VideoOutcome.decoded(job, result, options, assignment.retry_reason)


class _Worker:
    def __init__(self, ctx: Any, options: DecodeOptions) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, options, os.getpid()), daemon=True)
        with _environment(_WORKER_ENV):
            self.process.start()
        child.close()
        self.assignment: _Assignment | None = None
        self.deadline = 0.0

    def wait_ready(self) -> None:
        """Return once the worker has started; raise WorkerStartError if it exits or hangs first."""
        ready = wait([self.conn, self.process.sentinel], timeout=_START_LIMIT_S)
        if self.conn in ready:
            with contextlib.suppress(EOFError, OSError):
                if self.conn.recv() == _READY:
                    return
        self.stop(kill=True)
        raise WorkerStartError(_start_failure(self.process.exitcode))

    @property
    def job(self) -> VideoJob | None:
        return self.assignment.job if self.assignment else None

    def assign(self, assignment: _Assignment, hard_s: float) -> None:
        self.assignment = assignment
        self.deadline = time.monotonic() + hard_s
        self.conn.send(assignment)

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


class DecoderPool:
    """Decode many videos in ``workers`` processes, each keeping its decoders between videos.

    ``run`` yields one ``VideoOutcome`` per job in completion order and never raises for a bad
    video. A worker that hangs past the deadline is killed (reason ``timeout``); one that dies is
    replaced and its video retried, on CPU if it was on a GPU, before it is recorded as
    ``worker_crashed``.
    """

    def __init__(
        self,
        options: DecodeOptions | None = None,
        workers: int = 1,
        retries: int = 1,
        grace_s: float = _HARD_DEADLINE_MARGIN_S,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        _refuse_rerun_of_main()
        self.options = options or DecodeOptions()
        self.workers = workers
        self.retries = retries
        self.grace_s = grace_s
        self.effective_mode, self.mode_reason = preferred_mode(self.options)
        if self.options.threads == 0:
            per_worker = max(1, (os.cpu_count() or 1) // workers)
            self.options = replace(self.options, threads=per_worker)
        self._ctx = multiprocessing.get_context("spawn")
        self._pool: list[_Worker] = []

    def start(self) -> DecoderPool:
        """Start the workers and wait until each has started (they start side by side); raises
        WorkerStartError, with what to do, if one cannot."""
        fresh = [_Worker(self._ctx, self.options) for _ in range(self.workers - len(self._pool))]
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

    def run(self, jobs: Iterable[VideoJob]) -> Iterator[VideoOutcome]:
        """Decode ``jobs``; yields outcomes as videos finish."""
        self.start()
        queue = deque(_Assignment(job, self.options.mode) for job in jobs)
        idle = list(self._pool)
        busy: list[_Worker] = []
        try:
            while queue or busy:
                while queue and idle:
                    busy.append(self._hand_out(idle.pop(), queue.popleft()))
                timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
                ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=timeout))
                for worker in list(busy):
                    settled = self._settle(worker, ready)
                    if settled is None:
                        continue
                    busy.remove(worker)
                    idle.append(worker if worker.process.is_alive() else self._replace(worker))
                    if isinstance(settled, _Assignment):
                        queue.appendleft(settled)
                    else:
                        yield settled
        finally:
            # Left early (an exception, or the caller stopped reading): a busy worker's late reply
            # would be taken for the next job's, so those workers are replaced now.
            for worker in busy:
                worker.stop(kill=True)
                _remove_partials(worker.job)
                self._replace(worker)

    def _hand_out(self, worker: _Worker, assignment: _Assignment) -> _Worker:
        """Give ``assignment`` to ``worker``, or to a fresh worker if that one died while idle (killed,
        or out of memory): it held no job, so nothing is lost or retried."""
        try:
            worker.assign(assignment, hard_s=self._hard_limit_s)
            return worker
        except OSError:  # BrokenPipeError: the process is gone
            fresh = self._replace(worker)
            fresh.assign(assignment, hard_s=self._hard_limit_s)
            return fresh

    def _settle(self, worker: _Worker, ready: set[Any]) -> VideoOutcome | _Assignment | None:
        """The outcome of ``worker``'s job, or its retry, if it has one now; None while it runs."""
        assignment = worker.assignment
        assert assignment is not None
        job = assignment.job
        elapsed = self._hard_limit_s - (worker.deadline - time.monotonic())
        if worker.conn in ready:
            try:
                outcome: VideoOutcome = worker.conn.recv()
                return outcome
            except (EOFError, OSError):
                pass  # died while answering: treated as a crash below
        elif worker.process.sentinel not in ready:
            if time.monotonic() < worker.deadline:
                return None
            worker.stop(kill=True)
            _remove_partials(job)
            error = DecodeError(Reason.TIMEOUT, f"no answer after {elapsed:.0f} s; worker killed", path=job.source)
            return VideoOutcome.failure(job, self.options.mode, error, elapsed)
        worker.stop(kill=True)
        _remove_partials(job)
        code = worker.process.exitcode
        if assignment.attempt < self.retries:
            gpu = assignment.mode in GPU_MODES or self.effective_mode in GPU_MODES
            mode = "ffmpeg_cpu" if gpu else assignment.mode
            why = f"worker died (exit code {code}) decoding in {assignment.mode}; retried in {mode}"
            return _Assignment(job, mode, assignment.attempt + 1, why)
        error = DecodeError(
            Reason.WORKER_CRASHED, f"worker died (exit code {code}), {assignment.attempt + 1} tries", path=job.source
        )
        return VideoOutcome.failure(job, self.options.mode, error, elapsed)

    def _replace(self, worker: _Worker) -> _Worker:
        worker.stop(kill=True)
        fresh = _Worker(self._ctx, self.options)
        self._pool[self._pool.index(worker)] = fresh
        fresh.wait_ready()
        return fresh


def _remove_partials(job: VideoJob | None) -> None:
    """Delete what a killed worker was writing for ``job``."""
    if job is None:
        return
    remove_partials(job.output)
    remove_partials(pts_path(job.output))
