"""The HTTP API's jobs over a job store (store.py): submission into a bounded queue, status, cancellation, removal
of finished jobs after `--keep_jobs` seconds, and the workers that run them: N threads of this process on the
embedded store (one model each), or none here with the jobs sent to `multitalk worker` processes through a queue."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from .schemas import JobInfo, JobState, Progress
from .store import DEFAULT_MAX_ATTEMPTS, FINAL, INTERRUPTED, Job, JobStore, QueueFull, SQLiteJobStore
from .worker import LocalWorker


__all__ = ["Job", "JobManager", "QueueFull", "new_job_id"]


def new_job_id() -> str:
    """128 random bits (uuid4): a job id cannot be guessed, so without an API key it is the job's only key."""
    return uuid.uuid4().hex


class JobManager:
    """Holds the jobs in `store` (default: an in-memory SQLite store; `multitalk serve` passes the file under
    `--output_dir`). `submit` queues one (QueueFull past `max_queue` waiting). With `workers` > 0, that many threads
    run the jobs: the first with `run(job, on_progress, should_stop) -> video path` while holding `gpu_lock` (the
    web app's model), the others with `extra_runs[i - 1]` (a model each, e.g. on cuda:i). With `enqueue`, each job
    is also sent to the queue (its workers are other processes).

    At `start`, running jobs left by a previous server on the same store (it crashed or was killed) are queued again
    and re-run from their start: their inputs are on disk and nothing partial was written (the video is written
    atomically), so a re-run gives the video the user asked for. A job cut short `max_attempts` times is failed
    with "interrupted by a restart" instead, so a job that itself brings the server down does not do so forever."""

    def __init__(
        self,
        run: Callable,
        *,
        max_queue: int = 8,
        keep_seconds: float = 3600.0,
        gpu_lock=None,
        store: JobStore | None = None,
        jobs_dir: str | Path = "jobs",
        workers: int = 1,
        extra_runs: list[Callable] | None = None,
        enqueue: Callable[[str], None] | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        queue: str = "embedded",
    ):
        self._run = run
        self.max_queue = max_queue
        self.keep_seconds = keep_seconds
        self.gpu_lock = gpu_lock or threading.Lock()
        self.store = store if store is not None else SQLiteJobStore()
        self.jobs_dir = Path(jobs_dir)
        self.workers = workers
        self.extra_runs = list(extra_runs or [])
        self.enqueue = enqueue
        self.max_attempts = max_attempts
        self.queue_name = queue
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[LocalWorker] = []
        self._started = False
        self._lock = threading.Lock()
        self._last_sweep = 0.0

    # -- the workers -----------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            self._stopping.clear()
            if self.enqueue is None:  # the embedded store: this process was its only user, its old workers are gone
                for worker in self.store.workers():
                    self.store.forget_worker(worker["id"])
                for job_id, state in self.store.recover(set(), self.max_attempts, INTERRUPTED):
                    if state != "queued":  # failed or cancelled: nothing half-written stays
                        shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
            for index in range(self.workers):
                run = (lambda: self._run) if index == 0 else (lambda i=index: self.extra_runs[i - 1])
                lock = self.gpu_lock if index == 0 else threading.Lock()
                worker = LocalWorker(self.store, self.jobs_dir, run, lock, self._wake, self.max_attempts,
                                     self._stopping, name=f"w{index}")  # fmt: skip
                worker.start()
                self._threads.append(worker)

    def stop(self, timeout: float = 60.0) -> None:
        """Stops the workers and keeps the jobs: the queued ones stay queued, a running one is handed back to the
        queue at its next step (it runs again, from its start, when a server or worker starts on this store)."""
        with self._lock:
            self._stopping.set()
            self._wake.set()
            threads, self._threads, self._started = self._threads, [], False
        deadline = time.monotonic() + timeout
        for worker in threads:
            worker.thread.join(max(0.0, deadline - time.monotonic()))

    def worker_ids(self) -> list[str]:
        return [worker.id for worker in self._threads]

    # -- the API's side --------------------------------------------------------------------------------------
    def queue_full(self) -> bool:
        return self.store.counts()["queued"] >= self.max_queue

    def submit(self, job: Job) -> int:
        position = self.store.add(job.record(), self.max_queue)
        if self.enqueue is not None:
            try:
                self.enqueue(job.id)
            except BaseException:  # not sent (the queue is unreachable): no job that nothing would ever run
                self.store.delete(job.id)
                raise
        self._wake.set()
        self.start()
        return position

    def get(self, job_id: str) -> Job | None:
        self._sweep()
        record = self.store.get(job_id)
        return None if record is None else Job.from_record(record, self.jobs_dir)

    def position(self, job: Job) -> int | None:
        return self.store.position(job.id)

    def cancel(self, job_id: str) -> Job | None:
        """A queued job is cancelled now; a running one at its next step (by its worker, wherever it runs); a finished
        one is removed with its files."""
        before = self.store.get(job_id)
        record = self.store.cancel(job_id)
        if before is None or record is None:
            return None
        job = Job.from_record(record, self.jobs_dir)
        if before["status"] in FINAL:
            shutil.rmtree(job.folder, ignore_errors=True)
            self.store.delete(job_id)
        elif record["status"] == "cancelled":  # it was queued: no worker has its folder
            shutil.rmtree(job.folder, ignore_errors=True)
        return job

    def counts(self) -> tuple[int, int]:
        """(queued, running) jobs."""
        counts = self.store.counts()
        return counts["queued"], counts["running"]

    def wait_for_change(self, job: Job, version: int, timeout: float) -> int:
        return self.store.wait_for_change(job.id, version, timeout)

    def info(self, job: Job, video_url: str | None = None) -> JobInfo:
        expires = job.finished_at + self.keep_seconds if job.finished_at is not None else None
        return JobInfo(
            id=job.id,
            status=job.status,
            position=self.store.position(job.id) if job.status == JobState.queued else None,
            progress=Progress(**job.progress),
            error=job.error,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            expires_at=expires,
            video_url=video_url if job.status == JobState.succeeded else None,
            warnings=list(job.warnings),
            attempts=job.attempts,
        )

    def recent(self, limit: int = 100) -> list[Job]:
        self._sweep()
        return [Job.from_record(record, self.jobs_dir) for record in self.store.recent(limit)]

    def _sweep(self) -> None:
        """Removes the finished jobs older than `keep_seconds`, with their folders (at most every half second)."""
        now = time.monotonic()
        if now - self._last_sweep < min(0.5, self.keep_seconds):
            return
        self._last_sweep = now
        for job_id in self.store.expired(self.keep_seconds):
            shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
            self.store.delete(job_id)
