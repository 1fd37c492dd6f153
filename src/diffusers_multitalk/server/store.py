"""The job store: where the API's jobs, their state, progress and results live (the one truth every process reads),
as the `JobStore` interface and its embedded implementation on SQLite (a file under `--output_dir`, or in memory).

A job is a record (a JSON-able dict, see `Job.record`); its files live in `<output_dir>/jobs/<id>/`, named relative
to that folder, so processes that mount the shared folder at other paths agree. State changes are atomic:
`claim` moves a job from queued to running for one worker (or takes over a running job whose worker is gone, at
most `max_attempts` runs in all), and only that worker may then report its progress or finish it.
`redis_store.RedisJobStore` implements the same interface for many processes on many machines."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.spec import GenerateOptions, ModelSpec
from .schemas import JobState


# A running job whose worker is gone is re-run from its start, at most this many runs in all (then failed).
DEFAULT_MAX_ATTEMPTS = 3
INTERRUPTED = "interrupted by a restart"
WORKER_LOST = "its worker stopped answering (killed, or its machine lost)"
FINAL = ("succeeded", "failed", "cancelled")
# The job seconds histogram's buckets (a GPU job takes minutes to hours).
SECONDS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
# Claim outcomes.
CLAIMED, BUSY, GONE = "claimed", "busy", "gone"


class QueueFull(Exception):
    pass


def fresh_progress() -> dict:
    return dict(step=0, steps=None, chunk=0, chunks=None)


def new_record(job_id: str, **fields) -> dict:
    """A queued job's record: `fields` are its inputs (prompt, options, extras, image, video_in, source_size, audio,
    audio_seconds, tts, warnings)."""
    record = dict(
        id=job_id, status="queued", progress=fresh_progress(), error=None, cancel_requested=False,
        created_at=time.time(), started_at=None, finished_at=None, video=None, version=0, warnings=[],
        attempts=0, worker=None, seq=0,
    )  # fmt: skip
    record.update(fields)
    return record


def bucket_counts(seconds: float) -> list[str]:
    """The histogram buckets (`le` labels) one observation of `seconds` counts in."""
    return [str(b) for b in SECONDS_BUCKETS if seconds <= b] + ["+Inf"]


@dataclass
class Job:
    """A job as a worker runs it and the API shows it: its record, with its files as paths in this process's jobs
    folder (`folder`)."""

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
    progress: dict = field(default_factory=fresh_progress)
    error: str | None = None
    cancel_requested: bool = False
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    video: Path | None = None
    version: int = 0  # bumped on every change (the event stream sends one event per version)
    warnings: list[str] = field(default_factory=list)  # what the job's run said it cut or changed
    attempts: int = 0  # runs started (a run cut short by a restart or a lost worker counts)
    worker: str | None = None

    def record(self) -> dict:
        """The store's record: paths as names inside the job's folder, the options as their fields."""

        def name(path):
            return None if path is None else Path(path).name

        options = {f.name: getattr(self.options, f.name) for f in dataclasses.fields(GenerateOptions)}
        return new_record(
            self.id, prompt=self.prompt, options=options, extras=self.extras, image=name(self.image_path),
            video_in=name(self.video_path), source_size=None if self.source_size is None else list(self.source_size),
            audio=[name(p) for p in self.audio_paths], audio_seconds=list(self.audio_seconds), tts=self.tts,
            warnings=list(self.warnings), created_at=self.created_at,
        )  # fmt: skip

    @classmethod
    def from_record(cls, record: dict, jobs_dir: Path, model: ModelSpec | None = None) -> Job:
        """The job in `jobs_dir`; `model` (a worker's own model options) replaces the model fields the API had."""
        folder = Path(jobs_dir) / record["id"]
        fields = dict(record["options"])
        if model is not None:
            fields.update({f.name: getattr(model, f.name) for f in dataclasses.fields(ModelSpec)})

        def path(name):
            return None if name is None else folder / name

        return cls(
            id=record["id"], folder=folder, prompt=record["prompt"], options=GenerateOptions.from_fields(fields),
            extras=record["extras"], image_path=path(record["image"]), video_path=path(record["video_in"]),
            source_size=None if record["source_size"] is None else tuple(record["source_size"]),
            audio_paths=[path(n) for n in record["audio"]], audio_seconds=record["audio_seconds"], tts=record["tts"],
            status=JobState(record["status"]), progress=record["progress"], error=record["error"],
            cancel_requested=record["cancel_requested"], created_at=record["created_at"],
            started_at=record["started_at"], finished_at=record["finished_at"], video=path(record["video"]),
            version=record["version"], warnings=record["warnings"], attempts=record["attempts"],
            worker=record["worker"],
        )  # fmt: skip


class JobStore(ABC):
    """Jobs and workers, shared by the API and the workers. Every method is atomic; a Job is returned as its record
    (a dict; a copy: changing it changes nothing)."""

    #: a short description for /healthz and the logs (no password)
    describe: str = ""

    # -- jobs ----------------------------------------------------------------------------------------------
    @abstractmethod
    def add(self, record: dict, max_queue: int) -> int:
        """Queues a new job; returns its place in the queue (1 runs next); QueueFull if `max_queue` wait already."""

    @abstractmethod
    def get(self, job_id: str) -> dict | None: ...

    @abstractmethod
    def claim(
        self, job_id: str | None, worker: str, max_attempts: int = DEFAULT_MAX_ATTEMPTS
    ) -> tuple[str, dict | None]:
        """Takes a job for `worker`: `job_id` (or, None, the oldest queued job). A queued job becomes running (its
        attempts + 1); a running job whose worker is not alive is taken over (re-run from its start), or failed
        with WORKER_LOST once it has had `max_attempts` runs, or cancelled if a cancel was asked. Returns
        (CLAIMED, record), (BUSY, record) when another live worker runs it, or (GONE, record or None) when there is
        nothing to run (finished, cancelled, removed)."""

    @abstractmethod
    def progress(self, job_id: str, worker: str, progress: dict) -> None: ...

    @abstractmethod
    def warn(self, job_id: str, worker: str, text: str) -> None: ...

    @abstractmethod
    def finish(self, job_id: str, worker: str, state: str, error: str | None = None, video: str | None = None) -> bool:
        """Ends `worker`'s running job in `state`; False (nothing changed) if the job is no longer that worker's."""

    @abstractmethod
    def hand_back(self, job_id: str, worker: str) -> bool:
        """A worker that stops (SIGTERM) gives its running job back to the queue, in its old place; the run that was
        cut short does not count as an attempt."""

    @abstractmethod
    def cancel(self, job_id: str) -> dict | None:
        """A queued job is cancelled now, a running one is asked to stop (its worker sees `cancel_requested` at its
        next step); a finished one is returned unchanged (the caller removes it). None if there is no such job."""

    @abstractmethod
    def delete(self, job_id: str) -> None: ...

    @abstractmethod
    def recover(self, alive: set[str] | None, max_attempts: int, reason: str) -> list[tuple[str, str]]:
        """The running jobs whose worker is not alive (not in `alive`; None: not heard from within its TTL): each is
        queued again in its old place (re-run from its start), failed with `reason` once it has had `max_attempts`
        runs, or cancelled if a cancel was asked. Returns [(job id, new state)]."""

    @abstractmethod
    def expired(self, keep_seconds: float) -> list[str]:
        """The finished jobs older than `keep_seconds` (the caller removes their folders, then `delete`s them)."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Jobs by state."""

    @abstractmethod
    def position(self, job_id: str) -> int | None: ...

    @abstractmethod
    def recent(self, limit: int = 100) -> list[dict]:
        """The newest jobs first."""

    # -- workers -------------------------------------------------------------------------------------------
    @abstractmethod
    def heartbeat(self, worker: str, ttl: float, info: dict) -> None:
        """`worker` is alive for `ttl` seconds more; `info` says what it is (host, device, its job)."""

    @abstractmethod
    def forget_worker(self, worker: str) -> None: ...

    @abstractmethod
    def workers(self) -> list[dict]:
        """The live workers' info (each with `id`)."""

    # -- metrics -------------------------------------------------------------------------------------------
    @abstractmethod
    def observe(self, seconds: float) -> None:
        """One finished run of `seconds` into the job seconds histogram (shared by every process)."""

    @abstractmethod
    def histogram(self) -> tuple[dict[str, int], float, int]:
        """({le: cumulative count}, sum, count) of the job seconds."""

    # -- waiting -------------------------------------------------------------------------------------------
    def wait_for_change(self, job_id: str, version: int, timeout: float) -> int:
        """The job's version once it differs from `version`, or after `timeout` seconds (-1: no such job)."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.get(job_id)
            current = -1 if record is None else record["version"]
            if current != version or time.monotonic() >= deadline:
                return current
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:  # noqa: B027 - a store with nothing to close keeps this one
        """Releases the connection."""


# ----------------------------------------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, status TEXT NOT NULL, finished_at REAL, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, until REAL NOT NULL, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS metrics (name TEXT PRIMARY KEY, value REAL NOT NULL);
"""


class SQLiteJobStore(JobStore):
    """The embedded store: one SQLite file (WAL; `:memory:` for none), written in short immediate transactions, so
    a crash leaves every job as it was at its last change. One server process uses a file at a time (`serve` holds
    a lock on it): SQLite on a shared network folder is not safe, which is why many machines use Redis."""

    def __init__(self, path: str | Path = ":memory:"):
        self.path = str(path)
        self.describe = "sqlite (in memory)" if self.path == ":memory:" else f"sqlite {self.path}"
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    # -- helpers -------------------------------------------------------------------------------------------
    def _tx(self):
        store = self

        class Transaction:
            def __enter__(self):
                store._lock.acquire()
                store._db.execute("BEGIN IMMEDIATE")
                return store._db

            def __exit__(self, kind, *rest):
                try:
                    store._db.execute("ROLLBACK" if kind else "COMMIT")
                    if not kind:
                        store._changed.notify_all()
                finally:
                    store._lock.release()

        return Transaction()

    @staticmethod
    def _load(db, job_id: str) -> dict | None:
        row = db.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    @staticmethod
    def _save(db, record: dict) -> None:
        record["version"] += 1
        db.execute(
            "UPDATE jobs SET status = ?, finished_at = ?, record = ? WHERE id = ?",
            (record["status"], record["finished_at"], json.dumps(record), record["id"]),
        )

    def _alive(self, db, worker: str | None) -> bool:
        row = db.execute("SELECT until FROM workers WHERE id = ?", (worker,)).fetchone()
        return row is not None and row[0] > time.time()

    # -- jobs ----------------------------------------------------------------------------------------------
    def add(self, record: dict, max_queue: int) -> int:
        with self._tx() as db:
            (queued,) = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()
            if queued >= max_queue:
                raise QueueFull()
            (seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()
            record = {**record, "seq": seq}
            db.execute(
                "INSERT INTO jobs (id, seq, status, finished_at, record) VALUES (?, ?, ?, NULL, ?)",
                (record["id"], seq, record["status"], json.dumps(record)),
            )
            return queued + 1

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            return self._load(self._db, job_id)

    def claim(self, job_id, worker, max_attempts=DEFAULT_MAX_ATTEMPTS):
        with self._tx() as db:
            if job_id is None:
                row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
                if row is None:
                    return GONE, None
                job_id = row[0]
            record = self._load(db, job_id)
            if record is None or record["status"] in FINAL:
                return GONE, record
            if record["status"] == "running":
                if record["worker"] == worker or self._alive(db, record["worker"]):
                    return BUSY, record
                if record["cancel_requested"] or record["attempts"] >= max_attempts:
                    _end_orphan(record, max_attempts, WORKER_LOST)
                    self._save(db, record)
                    return GONE, record
            _start(record, worker)
            self._save(db, record)
            return CLAIMED, record

    def _update(self, job_id: str, worker: str | None, change) -> bool:
        with self._tx() as db:
            record = self._load(db, job_id)
            if record is None or (worker is not None and (record["status"], record["worker"]) != ("running", worker)):
                return False
            change(record)
            self._save(db, record)
            return True

    def progress(self, job_id, worker, progress):
        self._update(job_id, worker, lambda r: r.update(progress=dict(progress)))

    def warn(self, job_id, worker, text):
        self._update(job_id, worker, lambda r: r["warnings"].append(text))

    def finish(self, job_id, worker, state, error=None, video=None):
        return self._update(job_id, worker, lambda r: _end(r, state, error, video))

    def hand_back(self, job_id, worker):
        return self._update(job_id, worker, _requeue)

    def cancel(self, job_id):
        with self._tx() as db:
            record = self._load(db, job_id)
            if record is None:
                return None
            if record["status"] == "queued":
                _end(record, "cancelled", None, None)
                self._save(db, record)
            elif record["status"] == "running" and not record["cancel_requested"]:
                record["cancel_requested"] = True
                self._save(db, record)
            return record

    def delete(self, job_id):
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def recover(self, alive, max_attempts, reason):
        changed = []
        with self._tx() as db:
            for (job_id,) in db.execute("SELECT id FROM jobs WHERE status = 'running'").fetchall():
                record = self._load(db, job_id)
                owner = record["worker"]
                if (owner in alive) if alive is not None else self._alive(db, owner):
                    continue
                if record["cancel_requested"] or record["attempts"] >= max_attempts:
                    _end_orphan(record, max_attempts, reason)
                else:
                    _requeue(record, counted=True)
                self._save(db, record)
                changed.append((job_id, record["status"]))
        return changed

    def expired(self, keep_seconds):
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at <= ? AND status IN (?, ?, ?)",
                (time.time() - keep_seconds, *FINAL),
            ).fetchall()
        return [row[0] for row in rows]

    def counts(self):
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {"queued": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0, **dict(rows)}

    def position(self, job_id):
        with self._lock:
            row = self._db.execute(
                "SELECT (SELECT COUNT(*) FROM jobs q WHERE q.status = 'queued' AND q.seq <= j.seq) FROM jobs j "
                "WHERE j.id = ? AND j.status = 'queued'",
                (job_id,),
            ).fetchone()
        return None if row is None else row[0]

    def recent(self, limit=100):
        with self._lock:
            rows = self._db.execute("SELECT record FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [json.loads(row[0]) for row in rows]

    # -- workers -------------------------------------------------------------------------------------------
    def heartbeat(self, worker, ttl, info):
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO workers (id, until, info) VALUES (?, ?, ?)",
                (worker, time.time() + ttl, json.dumps({**info, "id": worker})),
            )

    def forget_worker(self, worker):
        with self._tx() as db:
            db.execute("DELETE FROM workers WHERE id = ?", (worker,))

    def workers(self):
        with self._lock:
            rows = self._db.execute("SELECT info FROM workers WHERE until > ? ORDER BY id", (time.time(),)).fetchall()
        return [json.loads(row[0]) for row in rows]

    # -- metrics -------------------------------------------------------------------------------------------
    def observe(self, seconds):
        with self._tx() as db:
            for name, amount in [*((f"le:{b}", 1) for b in bucket_counts(seconds)), ("sum", seconds), ("count", 1)]:
                db.execute(
                    "INSERT INTO metrics (name, value) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    (name, amount),
                )

    def histogram(self):
        with self._lock:
            values = dict(self._db.execute("SELECT name, value FROM metrics").fetchall())
        buckets = {le: int(values.get(f"le:{le}", 0)) for le in [*map(str, SECONDS_BUCKETS), "+Inf"]}
        return buckets, float(values.get("sum", 0.0)), int(values.get("count", 0))

    def wait_for_change(self, job_id, version, timeout):
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                record = self._load(self._db, job_id)
                current = -1 if record is None else record["version"]
                left = deadline - time.monotonic()
                if current != version or left <= 0:
                    return current
                self._changed.wait(left)

    def close(self):
        with self._lock:
            self._db.close()


# -- the state changes both stores make (the Redis store's Lua scripts make the same) ---------------------------
def _start(record: dict, worker: str) -> None:
    record.update(status="running", worker=worker, started_at=time.time(), progress=fresh_progress())
    record["attempts"] += 1


def _end(record: dict, state: str, error: str | None, video: str | None) -> None:
    record.update(status=state, error=error, finished_at=time.time(), video=video)


def _requeue(record: dict, counted: bool = False) -> None:
    """Back to the queue in its old place (its `seq`); a hand-back does not count as an attempt."""
    record.update(status="queued", worker=None, started_at=None, progress=fresh_progress())
    if not counted:
        record["attempts"] = max(0, record["attempts"] - 1)


def _end_orphan(record: dict, max_attempts: int, reason: str) -> None:
    if record["cancel_requested"]:
        _end(record, "cancelled", None, None)
    else:
        _end(record, "failed", f"{reason}; it ran {record['attempts']} time(s), the most the server allows "
             f"(max_attempts {max_attempts})", None)  # fmt: skip
