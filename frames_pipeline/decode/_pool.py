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
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection, wait
from typing import Any

from frames_pipeline.decode._errors import DecodeError, Reason
from frames_pipeline.decode._extract import close_backends, extract_to_file, preferred_mode, pts_path
from frames_pipeline.decode._npy import remove_partials
from frames_pipeline.decode._options import GPU_MODES, DecodeOptions

# Math libraries spin threads of their own; in workers they would only compete with the decoder's.
_WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# The in-worker deadline fires first with a clean error; this margin covers probe and start-up,
# and past it a silent worker is killed.
_HARD_DEADLINE_MARGIN_S = 30.0


@dataclass(frozen=True)
class VideoJob:
    """One video to decode: ``output`` is the frames .npy path (timestamps go beside it)."""

    key: str
    source: str
    output: str


@dataclass(frozen=True)
class VideoOutcome:
    """What happened to one job; failures carry a reason code and message, never an exception."""

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
    decode_seconds: float
    expected_frames: int | None

    @property
    def ok(self) -> bool:
        return self.error_reason is None

    @property
    def status(self) -> str:
        return "ok" if self.ok else "failed"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields, for ``from_dict`` in a later run."""
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> VideoOutcome:
        return cls(**{**fields, "warnings": tuple(fields["warnings"])})

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
            decode_seconds=seconds,
            expected_frames=None,
        )


def _exit_with_parent(parent: int) -> None:
    """End this worker once its parent is gone (killed with -9, say): an orphan would go on decoding
    and publishing files into a shard that the next run is resuming."""
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


def _worker_main(conn: Connection, options: DecodeOptions, parent: int) -> None:
    """Decode jobs until told to stop; every job gets exactly one reply."""
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    try:
        while True:
            message = conn.recv()
            if message is None:
                break
            job, mode = message
            started = time.perf_counter()
            job_options = replace(options, mode=mode)
            try:
                result = extract_to_file(job.source, job.output, options=job_options)
                conn.send(
                    (
                        "ok",
                        result.info,
                        result.pts_s.shape[0],
                        result.decode_mode,
                        result.fallback_reason,
                        result.warnings,
                        result.decode_seconds,
                    )
                )
            except DecodeError as exc:
                conn.send(("error", exc, time.perf_counter() - started))
            except Exception as exc:  # a bug must cost one video, not the worker
                error = DecodeError(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", path=job.source)
                conn.send(("error", error, time.perf_counter() - started))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):  # the parent stopped us, or is gone
        pass
    finally:
        close_backends()


class _Worker:
    def __init__(self, ctx: Any, options: DecodeOptions) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, options, os.getpid()), daemon=True)
        with _environment(_WORKER_ENV):
            self.process.start()
        child.close()
        self.job: VideoJob | None = None
        self.mode = ""
        self.deadline = 0.0
        self.attempt = 0
        self.fallback_reason: str | None = None

    def assign(self, job: VideoJob, mode: str, attempt: int, fallback: str | None, hard_s: float) -> None:
        self.job, self.mode, self.attempt, self.fallback_reason = job, mode, attempt, fallback
        self.deadline = time.monotonic() + hard_s
        self.conn.send((job, mode))

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
        while len(self._pool) < self.workers:
            self._pool.append(_Worker(self._ctx, self.options))
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
        queue: deque[tuple[VideoJob, str, int, str | None]] = deque((job, self.options.mode, 0, None) for job in jobs)
        idle = list(self._pool)
        busy: list[_Worker] = []
        try:
            while queue or busy:
                while queue and idle:
                    busy.append(self._hand_out(idle.pop(), queue.popleft()))
                timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
                ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=timeout))
                for worker in list(busy):
                    outcome, retry = self._settle(worker, ready)
                    if outcome is None and retry is None:
                        continue
                    busy.remove(worker)
                    idle.append(worker if worker.process.is_alive() else self._replace(worker))
                    if retry is not None:
                        queue.appendleft(retry)
                    if outcome is not None:
                        yield outcome
        finally:
            # Left early (an exception, or the caller stopped reading): a busy worker's late reply
            # would be taken for the next job's, so those workers are replaced now.
            for worker in busy:
                worker.stop(kill=True)
                _remove_partials(worker.job)
                self._replace(worker)

    def _hand_out(self, worker: _Worker, item: tuple[VideoJob, str, int, str | None]) -> _Worker:
        """Give ``item`` to ``worker``, or to a fresh worker if that one died while idle (killed, or
        out of memory): it held no job, so nothing is lost or retried."""
        try:
            worker.assign(*item, hard_s=self._hard_limit_s)
            return worker
        except OSError:  # BrokenPipeError: the process is gone
            fresh = self._replace(worker)
            fresh.assign(*item, hard_s=self._hard_limit_s)
            return fresh

    def _settle(
        self, worker: _Worker, ready: set[Any]
    ) -> tuple[VideoOutcome | None, tuple[VideoJob, str, int, str | None] | None]:
        """The outcome (or retry) of ``worker``'s job if it has one now; (None, None) while it runs."""
        job = worker.job
        assert job is not None
        elapsed = self._hard_limit_s - (worker.deadline - time.monotonic())
        if worker.conn in ready:
            try:
                return self._reply(worker, worker.conn.recv()), None
            except (EOFError, OSError):
                pass  # died while answering: treated as a crash below
        elif worker.process.sentinel not in ready:
            if time.monotonic() < worker.deadline:
                return None, None
            worker.stop(kill=True)
            _remove_partials(job)
            error = DecodeError(Reason.TIMEOUT, f"no answer after {elapsed:.0f} s; worker killed", path=job.source)
            return VideoOutcome.failure(job, self.options.mode, error, elapsed), None
        worker.stop(kill=True)
        _remove_partials(job)
        code = worker.process.exitcode
        if worker.attempt < self.retries:
            mode = "ffmpeg_cpu" if worker.mode in GPU_MODES or self.effective_mode in GPU_MODES else worker.mode
            why = f"worker died (exit code {code}) decoding in {worker.mode}; retried in {mode}"
            return None, (job, mode, worker.attempt + 1, why)
        error = DecodeError(
            Reason.WORKER_CRASHED, f"worker died (exit code {code}), {worker.attempt + 1} tries", path=job.source
        )
        return VideoOutcome.failure(job, self.options.mode, error, elapsed), None

    def _reply(self, worker: _Worker, message: tuple[Any, ...]) -> VideoOutcome:
        job = worker.job
        assert job is not None
        if message[0] == "error":
            _, error, seconds = message
            return VideoOutcome.failure(job, self.options.mode, error, seconds)
        _, info, num_frames, decode_mode, fallback, warnings, seconds = message
        height, width = self.options.output_hw
        return VideoOutcome(
            key=job.key,
            source=job.source,
            output=job.output,
            num_frames=num_frames,
            height=height,
            width=width,
            requested_mode=self.options.mode,
            decode_mode=decode_mode,
            fallback_reason=worker.fallback_reason or fallback,
            error_reason=None,
            error=None,
            warnings=tuple(warnings),
            decode_seconds=seconds,
            expected_frames=info.num_frames,
        )

    def _replace(self, worker: _Worker) -> _Worker:
        worker.stop(kill=True)
        fresh = _Worker(self._ctx, self.options)
        self._pool[self._pool.index(worker)] = fresh
        return fresh


def _remove_partials(job: VideoJob) -> None:
    """Delete what a killed worker was writing for ``job``."""
    remove_partials(job.output)
    remove_partials(pts_path(job.output))
