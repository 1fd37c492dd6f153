"""Many workers on the queue, all real processes on loopback: a redis-server, an API-only `multitalk serve --queue
URL --workers 0` and two `multitalk worker --queue URL --tiny` processes sharing the jobs folder. Four jobs; the
worker running one is SIGKILLed mid-job; all four succeed (the killed one re-run by the other worker, attempts 2)
and each video downloads from the API; the job's events stream from the API while a worker runs it; a cancel sent
to the API stops the job on the worker that runs it; SIGTERM makes a worker hand its job back, which a new worker
then runs. Jobs are slowed by the test knob MULTITALK_TEST_STEP_SECONDS."""

from __future__ import annotations

import urllib.request

import pytest
from service_helpers import FAST, Api, Process, RedisServer, free_port, wait_until

from diffusers_multitalk.server.worker import TEST_STEP_SECONDS


SLOW = {**FAST, "sample_steps": 6}
# A worker silent this long is dead (its liveness key lasts half as long): short, so the test waits little.
HEARTBEAT = "4"


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def _worker(tmp_path, redis_url: str, name: str) -> Process:
    args = ["worker", "--queue", redis_url, "--tiny", "--output_dir", str(tmp_path / "out"),
            "--heartbeat_timeout", HEARTBEAT]  # fmt: skip
    return Process(args, tmp_path / f"{name}.log", env={TEST_STEP_SECONDS: "1"})


def _owner(store, job_id: str) -> str | None:
    record = store.get(job_id)
    return None if record is None else record["worker"]


def _events(api: Api, job_id: str) -> list[str]:
    request = urllib.request.Request(api.base + f"/v1/jobs/{job_id}/events", headers=api.headers)
    names = []
    with urllib.request.urlopen(request, timeout=900) as stream:
        for raw in stream:  # ends with the job (its `done` event)
            line = raw.decode().strip()
            if line.startswith("event: "):
                names.append(line[7:])
    return names


def test_workers_on_the_queue_lose_no_job(tmp_path, redis_server):
    from diffusers_multitalk.server.redis_store import RedisJobStore

    store = RedisJobStore(redis_server.url)
    port = free_port()
    api_args = ["serve", "--tiny", "--queue", redis_server.url, "--workers", "0", "--port", str(port),
                "--output_dir", str(tmp_path / "out")]  # fmt: skip
    processes = {"api": Process(api_args, tmp_path / "api.log")}
    processes["a"] = _worker(tmp_path, redis_server.url, "worker_a")
    processes["b"] = _worker(tmp_path, redis_server.url, "worker_b")
    api = Api(port)
    try:
        wait_until(api.up, "serving the API", timeout=600)
        health = api.json("GET", "/healthz")[1]
        assert health["model_loaded"] is False and health["queue"] == redis_server.url, health
        wait_until(lambda: len(api.json("GET", "/healthz")[1]["workers"]) == 2, "2 workers live", timeout=600)

        ids = []
        for _ in range(4):
            status, body = api.submit(SLOW)
            assert status == 202, body
            ids.append(body["id"])
        # the worker running the first job to start is killed mid-job
        running = wait_until(lambda: next((i for i in ids if api.job(i)["progress"]["step"] >= 1), None), "a step")
        owner = _owner(store, running)
        victim = next(name for name in ("a", "b") if f"-{processes[name].process.pid}-" in owner)
        processes[victim].kill()
        survivor = "b" if victim == "a" else "a"
        assert _events(api, ids[-1])[-1] == "done"  # the events follow a job another process runs
        for job_id in ids:
            body = api.wait(job_id)
            assert body["status"] == "succeeded", (body, processes[survivor].output())
            status, data = api.request("GET", body["video_url"])
            assert status == 200 and data[4:8] == b"ftyp"
        assert api.job(running)["attempts"] == 2 and _owner(store, running) != owner
        assert sorted(api.job(i)["attempts"] for i in ids) == [1, 1, 1, 2]

        # a cancel sent to the API reaches the worker running the job: it stops at its next step
        status, body = api.submit({**SLOW, "sample_steps": 30})
        cancelled = body["id"]
        api.wait_step(cancelled, 1)
        status, body = api.json("DELETE", f"/v1/jobs/{cancelled}")
        assert status == 202 and body["cancel_requested"] is True, body
        body = api.wait(cancelled)
        assert body["status"] == "cancelled" and body["progress"]["step"] < 30, body
        assert not (tmp_path / "out" / "jobs" / cancelled).exists()

        # SIGTERM: the worker hands its running job back and exits 0; a new worker runs the job
        status, body = api.submit(SLOW)
        handed = body["id"]
        api.wait_step(handed, 1)
        assert processes[survivor].terminate() == 0, processes[survivor].output()
        back = api.job(handed)
        assert back["status"] == "queued" and back["attempts"] == 0, back
        processes["c"] = _worker(tmp_path, redis_server.url, "worker_c")
        body = api.wait(handed)
        assert body["status"] == "succeeded" and body["attempts"] == 1, body

        metrics = api.request("GET", "/metrics")[1].decode()
        assert 'multitalk_jobs{state="succeeded"} 5.0' in metrics and "multitalk_workers 1.0" in metrics, metrics
    finally:
        for process in processes.values():
            process.stop()
        store.close()
