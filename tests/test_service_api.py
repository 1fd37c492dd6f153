"""The service's API surface (in process, TestClient): --api_key guards every route that reads or changes jobs (the
video and the events too; Bearer or X-API-Key), a job id that is not one answers 404 without touching the disk, the
job list exists only behind a key, /healthz and /metrics say the queue, the workers and the jobs by state, and
`--workers 2` runs two jobs at once on two local workers (one model each)."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient
from service_helpers import FAST, IMAGE, SPEAKER, wait_until

from diffusers_multitalk import cli, server


@pytest.fixture(scope="module")
def tiny_pipe():
    from diffusers_multitalk import make_tiny_pipeline

    return make_tiny_pipeline(seed=0)


def _submit(client, headers=None, settings=FAST):
    import json

    files = [
        ("image", ("p.png", IMAGE.read_bytes(), "image/png")),
        ("audio", ("s.wav", SPEAKER.read_bytes(), "audio/wav")),
    ]
    data = {"prompt": "Two friends chat.", "settings": json.dumps(settings)}
    return client.post("/v1/jobs", files=files, data=data, headers=headers or {})


def _wait(client, job_id, headers=None):
    return wait_until(
        lambda: (lambda b: b if b["status"] in ("succeeded", "failed", "cancelled") else None)(
            client.get(f"/v1/jobs/{job_id}", headers=headers or {}).json()
        ),
        f"job {job_id} finished",
    )


def test_the_api_key_guards_every_job_route(tiny_pipe, tmp_path):
    app = server.create_app(tiny_pipe, output_dir=tmp_path, tiny=True, ui=False, api_key="s3cret")
    bearer, header = {"Authorization": "Bearer s3cret"}, {"X-API-Key": "s3cret"}
    with TestClient(app) as client:
        answer = _submit(client, headers=header)
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        assert _wait(client, job_id, bearer)["status"] == "succeeded"
        paths = client.get("/openapi.json").json()["paths"]
        routes = [(m.upper(), p) for p, methods in paths.items() if p.startswith("/v1") for m in methods]
        assert {(m, p) for m, p in routes} >= {
            ("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/{job_id}"), ("DELETE", "/v1/jobs/{job_id}"),
            ("GET", "/v1/jobs/{job_id}/video"), ("GET", "/v1/jobs/{job_id}/events"),
        }  # fmt: skip
        for method, path in routes:  # every /v1 route: no key, a wrong key (either header) -> 401
            url = path.replace("{job_id}", job_id)
            for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": "nope"}):
                answer = client.request(method, url, headers=headers)
                assert answer.status_code == 401, (method, path, headers, answer.status_code)
        assert client.get(f"/v1/jobs/{job_id}/video", headers=header).status_code == 200
        listed = client.get("/v1/jobs", headers=bearer).json()
        assert [job["id"] for job in listed] == [job_id] and listed[0]["video_url"].endswith("/video")
        # not a job id: 404, whatever it names
        for bad in ("..%2F..%2Fetc", "nope", job_id.upper(), job_id + "0"):
            assert client.get(f"/v1/jobs/{bad}", headers=bearer).status_code == 404, bad
        # liveness and metrics need no key and name no job
        for path in ("/healthz", "/metrics"):
            answer = client.get(path)
            assert answer.status_code == 200 and job_id not in answer.text, path
        assert client.delete(f"/v1/jobs/{job_id}", headers=bearer).status_code == 200


def test_no_key_no_list_and_ids_are_unguessable(tiny_pipe, tmp_path):
    from diffusers_multitalk.server.jobs import new_job_id

    app = server.create_app(tiny_pipe, output_dir=tmp_path, tiny=True, ui=False)
    with TestClient(app) as client:
        answer = client.get("/v1/jobs")
        assert answer.status_code == 403 and "api_key" in answer.json()["detail"]
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_healthz_and_metrics_say_the_queue_workers_and_jobs(tiny_pipe, tmp_path):
    app = server.create_app(tiny_pipe, output_dir=tmp_path, tiny=True, ui=False)
    with TestClient(app) as client:
        health = client.get("/healthz").json()
        assert health["queue"] == "embedded" and health["store"] == "sqlite (in memory)", health
        assert [(w["kind"], w["busy"]) for w in health["workers"]] == [("embedded", False)], health
        job_id = _submit(client).json()["id"]
        assert _wait(client, job_id)["status"] == "succeeded"
        answer = client.get("/metrics")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        text = answer.text
        for line in (
            'multitalk_jobs{state="succeeded"} 1.0',
            'multitalk_jobs{state="queued"} 0.0',
            'multitalk_jobs{state="running"} 0.0',
            "multitalk_queue_length 0.0",
            "multitalk_queue_limit 8.0",
            "multitalk_workers 1.0",
            "multitalk_workers_busy 0.0",
            'multitalk_job_seconds_bucket{le="+Inf"}',
            "multitalk_job_seconds_sum",
        ):
            assert line in text, (line, text)
        assert "# TYPE multitalk_job_seconds histogram" in text and "# TYPE multitalk_jobs gauge" in text


def test_two_local_workers_run_two_jobs_at_once(tiny_pipe, tmp_path):
    from diffusers_multitalk import make_tiny_pipeline
    from diffusers_multitalk.server.generation import run_job

    both = threading.Barrier(2, timeout=600)

    def runner(pipe):  # a model each, as `multitalk serve --workers N` loads one per GPU (a pipeline is not shared)
        def run(job, on_progress, should_stop):  # each worker waits for the other to be running a job too
            both.wait()
            return run_job(pipe, job, on_progress, should_stop)

        return run

    app = server.create_app(tiny_pipe, output_dir=tmp_path, tiny=True, ui=False,
                            job_options=dict(workers=2, extra_runs=[runner(make_tiny_pipeline(seed=0))]))  # fmt: skip
    app.state.jobs._run = runner(tiny_pipe)
    with TestClient(app) as client:
        assert len(client.get("/healthz").json()["workers"]) == 2
        ids = [_submit(client).json()["id"] for _ in range(2)]
        assert [_wait(client, i)["status"] for i in ids] == ["succeeded", "succeeded"]


def test_service_flags(monkeypatch):
    served = []
    monkeypatch.setattr(server, "serve", lambda args: served.append(args))
    assert cli.main(["serve", "--tiny", "--queue", "redis://127.0.0.1:6379/0", "--workers", "0"]) == 0
    assert (served[0].queue, served[0].workers, served[0].max_attempts) == ("redis://127.0.0.1:6379/0", 0, 3)
    assert cli.main(["serve", "--tiny", "--workers", "0"]) == 1  # the API only needs a queue
    assert cli.main(["serve", "--tiny", "--queue", "redis://127.0.0.1:6379/0"]) == 1  # and no local workers
    assert cli.main(["serve", "--tiny", "--queue", "http://x"]) == 1
    assert cli.main(["worker", "--tiny", "--queue", "nope"]) == 1
    assert len(served) == 1
