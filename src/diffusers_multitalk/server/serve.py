"""Starts the server: the job store (SQLite under `--output_dir`, or Redis with `--queue`), the model and its
local workers, the app, and uvicorn until SIGTERM or Ctrl-C (the jobs are kept)."""

from __future__ import annotations

import dataclasses
import fcntl
import signal
from dataclasses import dataclass
from pathlib import Path

from .. import runtime
from ..runtime.spec import ServeOptions
from .store import DEFAULT_MAX_ATTEMPTS


DB_NAME = "jobs.sqlite3"


@dataclass
class ServiceOptions(ServeOptions):
    """`multitalk serve`'s flags with the service's: `queue` (a redis:// URL: the jobs go to `multitalk worker`
    processes; none: the embedded SQLite store), `workers` (worker threads here, one model each: cuda:0..N-1 on a
    GPU machine; 0 serves the API only), `max_attempts` (runs a job may start before a restart or a lost worker
    fails it)."""

    queue: str | None = None
    workers: int = 1
    max_attempts: int = DEFAULT_MAX_ATTEMPTS


def serve(args: ServeOptions) -> None:
    """`multitalk serve`'s flags -> the job store, the model loaded (so a broken folder fails now, not at the first
    job) unless it serves the API only, the API and the UI served on `args.host`:`args.port`. Blocks until the
    server stops; stopping keeps the jobs (a running one goes back to the queue)."""
    import uvicorn

    from .app import create_app

    options = ServiceOptions.from_fields(args)
    output_dir = Path(options.output_dir)
    runtime.check_writable(output_dir / "jobs" / ".probe", "output_dir")
    job_options, lock = _job_options(options, output_dir)
    source = options
    if options.workers > 0:
        holder = runtime.PipelineHolder(options)
        runtime.note("loading the model" + (" (the tiny random one)" if options.tiny else ""))
        source = holder()
        job_options["extra_runs"] = [_run_on(options, index) for index in range(1, options.workers)]
    app = create_app(
        source, output_dir=output_dir, max_queue=options.max_queue, max_upload_mb=options.max_upload_mb,
        max_audio_seconds=options.max_audio_seconds, max_pixels=options.max_pixels, api_key=options.api_key,
        keep_jobs=options.keep_jobs, tiny=bool(options.tiny), options=options, ui=options.workers > 0,
        job_options=job_options,
    )  # fmt: skip
    where = f"http://{options.host}:{options.port}"
    runtime.note(f"serving the API at {where}/v1" + (f" and the web app at {where}/" if options.workers else "")
                 + f"; jobs kept in {job_options['store'].describe}")  # fmt: skip
    # SIGTERM is a graceful stop (uvicorn finishes the responses, the workers hand their jobs back): uvicorn raises
    # the signal again once it is done, which this handler takes, so the command exits 0, not 143.
    previous = signal.signal(signal.SIGTERM, lambda *_: runtime.note("stopped (SIGTERM); the jobs are kept"))
    try:
        uvicorn.run(app, host=options.host, port=options.port, log_level="warning", timeout_graceful_shutdown=30)
    finally:
        signal.signal(signal.SIGTERM, previous)
        job_options["store"].close()
        if lock is not None:
            lock.close()


def _job_options(options: ServiceOptions, output_dir: Path) -> tuple[dict, object]:
    """The JobManager's store and workers: Redis and the queue with `--queue`, else the SQLite file (locked: one
    server per output folder)."""
    common = dict(workers=options.workers, max_attempts=options.max_attempts)
    if options.queue:
        from .queue import JobQueue, public_url
        from .redis_store import RedisJobStore

        store = RedisJobStore(options.queue)
        queue = JobQueue(options.queue)
        if options.workers > 0:
            raise runtime.UserError(
                "--queue: the jobs run on `multitalk worker` processes; start the server with --workers 0"
            )
        return dict(store=store, enqueue=queue.send, queue=public_url(options.queue), **common), None
    if options.workers < 1:
        raise runtime.UserError("--workers 0 serves the API only: it needs --queue redis://... and `multitalk worker`")
    from .store import SQLiteJobStore

    output_dir.mkdir(parents=True, exist_ok=True)
    lock = open(output_dir / f"{DB_NAME}.lock", "w")  # noqa: SIM115 - held until the server stops
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise runtime.UserError(
            f"--output_dir {output_dir}: another server keeps its jobs there; one server per folder (or use --queue)"
        ) from None
    return dict(store=SQLiteJobStore(output_dir / DB_NAME), **common), lock


def _run_on(options: ServiceOptions, index: int):
    """Worker `index`'s run function: its own model, on cuda:<index> when the model is on a GPU."""
    from .generation import run_job

    device = options.device or ("cuda" if _cuda() else "cpu")
    if device.startswith("cuda"):
        device = f"cuda:{index}"
    holder = runtime.PipelineHolder(dataclasses.replace(options, device=device))
    runtime.note(f"worker {index}: loading its model on {device}")
    holder()
    return lambda job, *a: run_job(holder(), job, *a)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
