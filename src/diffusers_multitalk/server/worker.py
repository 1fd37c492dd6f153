"""Running jobs from the store, as any worker does (a thread of `multitalk serve`, or a `multitalk worker` process on
the queue): one claimed job run to its end with its progress, cancellation, warnings and end state in the store; the
liveness heartbeat each worker keeps; a worker that stops (SIGTERM) hands its job back at the next step."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import runtime
from ..runtime.spec import GenerateOptions
from .generation import JobCancelled
from .redis_store import public_url
from .store import BUSY, CLAIMED, DEFAULT_MAX_ATTEMPTS, Job, JobStore


# A test knob, not a setting: seconds to sleep at each denoising step, so that a tiny job runs long enough to be
# killed or cancelled mid-run (tests/test_durable_jobs.py, tests/test_queue.py). Unset in normal use.
TEST_STEP_SECONDS = "MULTITALK_TEST_STEP_SECONDS"
HANDED_BACK = "handed back"
log = logging.getLogger(__name__)


def new_worker_id(kind: str = "worker") -> str:
    """Unguessable and unique per process: the host, the process and a random tag."""
    return f"{socket.gethostname()}-{os.getpid()}-{kind}-{secrets.token_hex(3)}"


class Heartbeat:
    """Tells the store every `ttl / 3` seconds that `worker` is alive (for `ttl` seconds), with `info()` (what it
    runs); a worker not heard from for `ttl` seconds is dead: its running job may be taken over."""

    def __init__(self, store: JobStore, worker: str, ttl: float, info: Callable[[], dict]):
        self.store, self.worker, self.ttl, self.info = store, worker, float(ttl), info
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{worker}", daemon=True)

    def start(self) -> Heartbeat:
        self.store.heartbeat(self.worker, self.ttl, self.info())
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.store.heartbeat(self.worker, self.ttl, self.info())
            except Exception as err:  # noqa: BLE001 - a store hiccup: try again at the next beat
                log.warning("heartbeat of %s failed: %s", self.worker, err)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        try:
            self.store.forget_worker(self.worker)
        except Exception:  # noqa: BLE001 - the TTL forgets it anyway
            pass


def execute(
    store: JobStore,
    record: dict,
    jobs_dir: Path,
    run: Callable,
    worker: str,
    stopping: threading.Event,
    model=None,
) -> str:
    """Runs `worker`'s claimed job (`record`) with `run(job, on_progress, should_stop) -> video path` and records
    its end: succeeded (the video), failed (the reason), cancelled (its folder removed), or HANDED_BACK to the queue
    when `stopping` was set (the worker is shutting down). `model` is the worker's model options (the job keeps its
    generation settings). Returns the end state."""
    job = Job.from_record(record, jobs_dir, model)
    pause = float(os.environ.get(TEST_STEP_SECONDS) or 0)
    started = time.time()

    def on_progress(progress: dict) -> None:
        store.progress(job.id, worker, progress)
        if pause and progress.get("step"):
            time.sleep(pause)

    def should_stop() -> bool:
        if stopping.is_set():
            return True
        current = store.get(job.id)
        return current is None or current["cancel_requested"] or current["worker"] != worker

    try:
        with _said(store, job.id, worker):
            video = run(job, on_progress, should_stop)
    except JobCancelled:
        return _stopped(store, job, worker, stopping)
    except (runtime.UserError, ValueError, FileNotFoundError) as err:
        return _end(store, job, worker, "failed", str(err).strip() or type(err).__name__, started=started)
    except BaseException as err:  # noqa: BLE001 - the worker must survive any job
        traceback.print_exc()
        return _end(store, job, worker, "failed", f"internal error: {type(err).__name__}: {err}", started=started)
    if should_stop() and not stopping.is_set():  # cancelled after the last step: drop the finished video as well
        return _end(store, job, worker, "cancelled", None)
    return _end(store, job, worker, "succeeded", None, video=Path(video).name, started=started)


def _stopped(store: JobStore, job: Job, worker: str, stopping: threading.Event) -> str:
    current = store.get(job.id)
    if stopping.is_set() and current is not None and not current["cancel_requested"]:
        if store.hand_back(job.id, worker):
            return HANDED_BACK
    return _end(store, job, worker, "cancelled", None)


def _end(store, job: Job, worker: str, state: str, error, video=None, started=None) -> str:
    if store.finish(job.id, worker, state, error, video):
        if started is not None:
            store.observe(time.time() - started)
        if state != "succeeded":  # nothing half-written: a failed or cancelled job leaves no files
            shutil.rmtree(job.folder, ignore_errors=True)
    return state


@contextmanager
def _said(store: JobStore, job_id: str, worker: str):
    """The warnings the package logs while the job runs (a clip cut, a held last frame, resampled speech, a prompt
    past the text length) go into the job's `warnings`, so the API's status and events carry them, not only the
    worker's log. Only this thread's records count."""
    thread = threading.get_ident()

    class ToJob(logging.Handler):
        def emit(self, record):
            if record.thread == thread and record.levelno >= logging.WARNING:
                store.warn(job_id, worker, record.getMessage())

    handler = ToJob()
    package = logging.getLogger(runtime.__name__.split(".")[0])
    package.addHandler(handler)
    try:
        yield
    finally:
        package.removeHandler(handler)


class LocalWorker:
    """A worker thread of `multitalk serve` (the embedded store): claims the oldest queued job, runs it with
    `run()` (looked up at each job: the manager's) under `lock`, and waits for `wake` when the queue is empty."""

    def __init__(self, store, jobs_dir, run: Callable[[], Callable], lock, wake: threading.Event, max_attempts: int,
                 stopping: threading.Event, name: str, ttl: float = 30.0):  # fmt: skip
        self.store, self.jobs_dir, self.run, self.lock, self.wake = store, Path(jobs_dir), run, lock, wake
        self.max_attempts, self.stopping = max_attempts, stopping
        self.id = new_worker_id(name)
        self.job: str | None = None
        self.heartbeat = Heartbeat(store, self.id, ttl, lambda: {"kind": "embedded", "job": self.job})
        self.thread = threading.Thread(target=self._work, name=f"multitalk-{name}", daemon=True)

    def start(self) -> None:
        self.heartbeat.start()
        self.thread.start()

    def _work(self) -> None:
        try:
            while not self.stopping.is_set():
                outcome, record = self.store.claim(None, self.id, self.max_attempts)
                if outcome != CLAIMED:
                    self.wake.wait(1.0)
                    self.wake.clear()
                    continue
                self.job = record["id"]
                try:
                    with self.lock:
                        execute(self.store, record, self.jobs_dir, self.run(), self.id, self.stopping)
                finally:
                    self.job = None
        finally:
            self.heartbeat.stop()


# ----------------------------------------------------------------------------------------------------------------
# `multitalk worker`: a process that runs the queue's jobs on its own model
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class WorkerOptions(GenerateOptions):
    """`multitalk worker`'s flags: the model options of `generate`, the queue's Redis URL, the shared jobs folder
    (`output_dir`, holding `jobs/<id>/`), the runs a job may start (`max_attempts`) and `heartbeat_timeout`: seconds
    after which a silent worker is dead and its job is retried elsewhere."""

    queue: str = ""
    output_dir: str = "outputs/app"
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    heartbeat_timeout: float = 60.0


class QueueWorker:
    """Runs one job at a time from the queue: each message (a job id) is claimed in the store (queued -> running, or
    taken over from a dead worker); a job another live worker runs is left to it (the message comes back after the
    worker's liveness TTL, in case that worker dies). SIGTERM: the running job is handed back at its next step and
    sent again, then the worker stops."""

    def __init__(self, options: WorkerOptions, run: Callable):
        from .queue import JobQueue
        from .redis_store import RedisJobStore

        self.options, self.run = options, run
        self.store = RedisJobStore(options.queue)
        self.id = new_worker_id("queue")
        # the liveness key expires well before Dramatiq gives the worker's message to another (heartbeat_timeout)
        self.ttl = max(1.0, options.heartbeat_timeout / 2)
        self.stopping = threading.Event()
        self.queue = JobQueue(options.queue, handler=self.handle, heartbeat_timeout=options.heartbeat_timeout)
        self.jobs_dir = Path(options.output_dir) / "jobs"
        self.job: str | None = None
        info = {"kind": "queue", "host": socket.gethostname(), "device": options.device}
        self.heartbeat = Heartbeat(self.store, self.id, self.ttl, lambda: {**info, "job": self.job})

    def handle(self, job_id: str) -> None:
        if self.stopping.is_set():  # fetched while stopping: another worker takes it
            self.queue.send(job_id)
            return
        outcome, record = self.store.claim(job_id, self.id, self.options.max_attempts)
        if outcome == BUSY:
            self.queue.send(job_id, delay_seconds=self.ttl)
            return
        if outcome != CLAIMED:
            if record is not None and record["status"] in ("failed", "cancelled"):  # e.g. a dead worker's, failed
                shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
            return
        self.job = job_id
        try:
            state = execute(self.store, record, self.jobs_dir, self.run, self.id, self.stopping, self.options)
            log.info("job %s: %s", job_id, state)
            if state == HANDED_BACK:
                self.queue.send(job_id)
        finally:
            self.job = None

    def serve_forever(self) -> None:
        """Until `stop()` (SIGTERM, Ctrl-C): the heartbeat and one Dramatiq worker thread (prefetching one message,
        so a busy worker holds no other job)."""
        import dramatiq

        self.heartbeat.start()
        worker = dramatiq.Worker(self.queue.broker, worker_threads=1, worker_timeout=1000)
        worker.queue_prefetch = 1
        worker.start()
        try:
            while not self.stopping.wait(1.0):
                pass
        finally:
            worker.stop(timeout=600_000)
            self.heartbeat.stop()
            self.queue.close()
            self.store.close()

    def stop(self, *_) -> None:
        self.stopping.set()


def run_worker(options: WorkerOptions) -> None:
    """`multitalk worker`: loads the model (a broken folder fails now), then runs the queue's jobs until SIGTERM."""
    import signal

    from .generation import run_job

    holder = runtime.PipelineHolder(options)
    runtime.note("loading the model" + (" (the tiny random one)" if options.tiny else ""))
    pipe = holder()
    worker = QueueWorker(options, lambda job, *a: run_job(pipe, job, *a))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, worker.stop)
    runtime.note(f"worker {worker.id} on {public_url(options.queue)}: running jobs from {worker.jobs_dir}")
    worker.serve_forever()
    runtime.note(f"worker {worker.id} stopped")
