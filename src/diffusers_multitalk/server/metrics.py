"""Operations: `/healthz` (liveness, the queue, the live workers) and `/metrics` in Prometheus' text format
(prometheus_client), both read from the job store, so they count the jobs and workers of every process."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.responses import Response

from .schemas import Health, WorkerHealth


# A job id as new_job_id makes them (uuid4 hex); anything else is no job (and never reaches a path).
JOB_ID = re.compile(r"[0-9a-f]{32}")


def health(manager, model_loaded: bool) -> Health:
    counts = manager.store.counts()
    workers = [
        WorkerHealth(id=w["id"], kind=w.get("kind", "?"), busy=w.get("job") is not None, device=w.get("device"))
        for w in manager.store.workers()
    ]
    return Health(
        model_loaded=model_loaded, queued=counts["queued"], running=counts["running"], max_queue=manager.max_queue,
        queue=manager.queue_name, store=manager.store.describe, workers=workers,
    )  # fmt: skip


class _StoreCollector:
    """Reads the store at each scrape: jobs by state, the queue's length, live workers, the job seconds histogram."""

    def __init__(self, manager):
        self.manager = manager

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

        store = self.manager.store
        counts = store.counts()
        jobs = GaugeMetricFamily("multitalk_jobs", "Jobs in the store by state", labels=["state"])
        for state, count in sorted(counts.items()):
            jobs.add_metric([state], count)
        yield jobs
        yield GaugeMetricFamily("multitalk_queue_length", "Jobs waiting for a worker", value=counts["queued"])
        yield GaugeMetricFamily("multitalk_queue_limit", "The server's max_queue", value=self.manager.max_queue)
        workers = store.workers()
        yield GaugeMetricFamily("multitalk_workers", "Live workers", value=len(workers))
        busy = sum(1 for w in workers if w.get("job") is not None)
        yield GaugeMetricFamily("multitalk_workers_busy", "Live workers running a job", value=busy)
        buckets, total, count = store.histogram()
        histogram = HistogramMetricFamily("multitalk_job_seconds", "Seconds a finished run took (succeeded or failed)")
        histogram.add_metric([], list(buckets.items()), sum_value=total)
        yield histogram


def add_metrics(app: FastAPI, manager) -> None:
    """`GET /metrics`: the store's counts (no job ids, so no API key: a scraper needs none)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=True)
    registry.register(_StoreCollector(manager))

    @app.get("/metrics", summary="Prometheus metrics: jobs by state, queue length, job seconds, workers",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})  # fmt: skip
    def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
