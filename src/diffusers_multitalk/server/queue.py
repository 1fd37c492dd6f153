"""The distributed queue (`--queue redis://...`): Dramatiq's Redis broker carries one message per job (its id) from the
API to the `multitalk worker` processes. The job store (redis_store.py) stays the truth; the queue only says "run
this job".

Why Dramatiq: its Redis broker keeps each fetched message in the fetching process's ack set until the actor
returns, every process heartbeats while it lives (busy or not: its delay-queue consumer keeps fetching), and a
process not heard from for `heartbeat_timeout` has its unacked messages put back on the queue by the others. So a
killed worker's job is delivered again to another worker, and a live worker's job is never delivered again however
long it runs. Celery's Redis transport instead redelivers any unacked message after its `visibility_timeout`, even
while the worker runs it (a job of hours would run twice, or the timeout must exceed the longest job, which delays
every real retry as long); RQ has no redelivery of a dead worker's job (it is moved to a failed registry).
"""

from __future__ import annotations

from .redis_store import public_url


QUEUE_NAME = "multitalk"
ACTOR_NAME = "multitalk_job"
# Of a million broker commands, how many also run the broker's maintenance (requeueing dead processes' messages):
# 10% here (Dramatiq's default is 0.1%, which could leave a killed worker's job waiting for many minutes).
MAINTENANCE_CHANCE = 100_000
DEFAULT_HEARTBEAT_TIMEOUT = 60.0

__all__ = ["JobQueue", "public_url"]


class JobQueue:
    """The broker on `url` and the one actor, `multitalk_job(job_id)`. `handler` is the worker's function for a
    message (None on the API, which only sends). `heartbeat_timeout` (seconds): a process silent this long is dead
    and its messages go back on the queue; the API's value does not matter, the workers' does."""

    def __init__(self, url: str, handler=None, heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT):
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker

        # No middleware: no time limit (jobs may take hours), no Dramatiq retries (a job's retries are the store's
        # attempts), no age limit; a message is acked once the actor returns, whatever the job's end.
        self.broker = RedisBroker(
            url=url, middleware=[], namespace="multitalk-queue", maintenance_chance=MAINTENANCE_CHANCE,
            heartbeat_timeout=int(heartbeat_timeout * 1000),
        )  # fmt: skip
        self.actor = dramatiq.Actor(
            handler or _not_here, queue_name=QUEUE_NAME, actor_name=ACTOR_NAME, broker=self.broker, priority=0,
            options={},
        )  # fmt: skip

    def send(self, job_id: str, delay_seconds: float | None = None) -> None:
        if delay_seconds:
            self.actor.send_with_options(args=(job_id,), delay=int(delay_seconds * 1000))
        else:
            self.actor.send(job_id)

    def length(self) -> int:
        """Messages waiting in the queue (not yet fetched by a worker)."""
        return int(self.broker.client.llen(f"{self.broker.namespace}:{QUEUE_NAME}"))

    def close(self) -> None:
        self.broker.close()


def _not_here(job_id: str) -> None:
    raise RuntimeError("the API does not run jobs: start `multitalk worker --queue ...`")
