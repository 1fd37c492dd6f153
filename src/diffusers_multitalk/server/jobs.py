"""The HTTP API's jobs: a bounded queue and one worker thread (one GPU job at a time), cancellation, and the removal
of finished jobs after `--keep_jobs` seconds."""

from __future__ import annotations

import logging
import shutil
import threading
import time
import traceback
import uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import runtime
from ..runtime.spec import GenerateOptions
from .generation import JobCancelled
from .schemas import FINAL_STATES, JobInfo, JobState, Progress


class QueueFull(Exception):
    pass


@dataclass
class Job:
    id: str
    folder: Path
    prompt: str
    options: GenerateOptions
    extras: dict
    image_path: Path | None = None  # the reference picture, or
    video_path: Path | None = None  # the video to dub (a model that dubs)
    source_size: tuple[int, int] | None = None  # (height, width) of the picture or video, read when it was checked
    audio_paths: list[Path] = field(default_factory=list)
    audio_seconds: list[float] = field(default_factory=list)
    tts: str | None = None
    status: JobState = JobState.queued
    progress: dict = field(default_factory=lambda: dict(step=0, steps=None, chunk=0, chunks=None))
    error: str | None = None
    cancel_requested: bool = False
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    video: Path | None = None
    version: int = 0  # bumped on every change (the event stream sends one event per version)
    warnings: list[str] = field(default_factory=list)  # what the job's run said it cut or changed


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobManager:
    """Holds the jobs; `submit` queues one (QueueFull past `max_queue` waiting), a worker thread runs them in turn
    with `run(job, on_progress, should_stop) -> video path` while holding `gpu_lock`."""

    def __init__(self, run: Callable, *, max_queue: int = 8, keep_seconds: float = 3600.0, gpu_lock=None):
        self._run = run
        self.max_queue = max_queue
        self.keep_seconds = keep_seconds
        self.gpu_lock = gpu_lock or threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._queue: deque[str] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.running: str | None = None

    # -- the worker ------------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._work, name="multitalk-jobs", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Cancels the queued and the running job (it stops at its next step) and waits for the worker."""
        with self._cond:
            self._stopping = True
            for job_id in list(self._queue):
                self._finish(self._jobs[job_id], JobState.cancelled, "the server stopped")
            self._queue.clear()
            if self.running:
                self._jobs[self.running].cancel_requested = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait(timeout=1.0)
                    self._sweep()
                if self._stopping:
                    return
                job = self._jobs[self._queue.popleft()]
                self.running = job.id
                job.status, job.started_at = JobState.running, time.time()
                self._touch(job)
            try:
                with self.gpu_lock, self._said(job):
                    video = self._run(job, lambda p, j=job: self._progress(j, p), lambda j=job: j.cancel_requested)
            except JobCancelled:
                self._end(job, JobState.cancelled, None)
            except (runtime.UserError, ValueError, FileNotFoundError) as err:
                self._end(job, JobState.failed, str(err).strip() or type(err).__name__)
            except BaseException as err:  # noqa: BLE001 - the worker must survive any job
                traceback.print_exc()
                self._end(job, JobState.failed, f"internal error: {type(err).__name__}: {err}")
            else:
                if job.cancel_requested:  # cancelled after the last step: drop the finished video as well
                    self._end(job, JobState.cancelled, None)
                else:
                    job.video = video
                    self._end(job, JobState.succeeded, None)

    @contextmanager
    def _said(self, job: Job):
        """The warnings the package logs while `job` runs (a clip cut, a held last frame, resampled speech, a prompt
        past the text length) go into the job's `warnings`, so the API's status and events carry them, not only the
        server's log. Only this worker thread's records count."""
        manager, worker = self, threading.get_ident()

        class ToJob(logging.Handler):
            def emit(self, record):
                if record.thread == worker and record.levelno >= logging.WARNING:
                    with manager._cond:
                        job.warnings.append(record.getMessage())
                        manager._touch(job)

        handler = ToJob()
        package = logging.getLogger(runtime.__name__.split(".")[0])
        package.addHandler(handler)
        try:
            yield
        finally:
            package.removeHandler(handler)

    def _progress(self, job: Job, progress: dict) -> None:
        with self._cond:
            job.progress = progress
            self._touch(job)

    def _end(self, job: Job, state: JobState, error: str | None) -> None:
        with self._cond:
            self.running = None
            self._finish(job, state, error)

    def _finish(self, job: Job, state: JobState, error: str | None) -> None:
        job.status, job.error, job.finished_at = state, error, time.time()
        if state != JobState.succeeded:  # nothing half-written: a failed or cancelled job leaves no files
            shutil.rmtree(job.folder, ignore_errors=True)
        self._touch(job)

    def _touch(self, job: Job) -> None:
        job.version += 1
        self._cond.notify_all()

    def _sweep(self) -> None:
        """Removes the finished jobs older than `keep_seconds`, with their folders (called with the lock held)."""
        now = time.time()
        for job in list(self._jobs.values()):
            if (
                job.status in FINAL_STATES
                and job.finished_at is not None
                and now - job.finished_at >= self.keep_seconds
            ):
                shutil.rmtree(job.folder, ignore_errors=True)
                del self._jobs[job.id]

    # -- the API's side --------------------------------------------------------------------------------------
    def queue_full(self) -> bool:
        with self._cond:
            return len(self._queue) >= self.max_queue

    def submit(self, job: Job) -> int:
        with self._cond:
            if len(self._queue) >= self.max_queue:
                raise QueueFull()
            self._jobs[job.id] = job
            self._queue.append(job.id)
            position = len(self._queue)
            self._cond.notify_all()
        self.start()
        return position

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            self._sweep()
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        with self._cond:
            return self._queue.index(job.id) + 1 if job.id in self._queue else None

    def cancel(self, job_id: str) -> Job | None:
        """A queued job is cancelled now; a running one at its next step; a finished one is removed with its files."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status == JobState.queued:
                self._queue.remove(job.id)
                self._finish(job, JobState.cancelled, None)
            elif job.status == JobState.running:
                job.cancel_requested = True
                self._touch(job)
            else:
                shutil.rmtree(job.folder, ignore_errors=True)
                del self._jobs[job.id]
            return job

    def counts(self) -> tuple[int, str | None]:
        with self._cond:
            return len(self._queue), self.running

    def wait_for_change(self, job: Job, version: int, timeout: float) -> int:
        with self._cond:
            if job.version == version:
                self._cond.wait(timeout)
            return job.version

    def info(self, job: Job, video_url: str | None = None) -> JobInfo:
        with self._cond:
            expires = job.finished_at + self.keep_seconds if job.finished_at is not None else None
            return JobInfo(
                id=job.id,
                status=job.status,
                position=self._queue.index(job.id) + 1 if job.id in self._queue else None,
                progress=Progress(**job.progress),
                error=job.error,
                cancel_requested=job.cancel_requested,
                created_at=job.created_at,
                started_at=job.started_at,
                finished_at=job.finished_at,
                expires_at=expires,
                video_url=video_url if job.status == JobState.succeeded else None,
                warnings=list(job.warnings),
            )
