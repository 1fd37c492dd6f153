"""The embedded store outlives its server (`multitalk serve --tiny` as a real subprocess on a loopback port, its jobs
in OUTPUT_DIR/jobs.sqlite3): a server SIGKILLed while job 2 runs is started again with the same command, lists job 1
as succeeded with its video, re-runs job 2 from its start (attempts 2) and runs a new job; SIGTERM hands the running
job back (not counted); a job cut short more than --max_attempts allows fails with "interrupted by a restart". Load:
50 submissions from 10 concurrent clients against --max_queue 8 are each answered 202 or 429, and every accepted job
runs exactly once. The jobs are slowed by the test knob MULTITALK_TEST_STEP_SECONDS (a sleep per denoising step)."""

from __future__ import annotations

import re
import threading

import pytest
from service_helpers import FAST, Api, Process, free_port, wait_until

from diffusers_multitalk.server.worker import TEST_STEP_SECONDS


SLOW = {**FAST, "sample_steps": 8}  # 8 steps of at least a second each (the knob): long enough to be killed


def _start(tmp_path, name: str, *extra: str, port: int) -> tuple[Process, Api]:
    args = ["serve", "--tiny", "--port", str(port), "--output_dir", str(tmp_path / "out"), *extra]
    server = Process(args, tmp_path / f"{name}.log", env={TEST_STEP_SECONDS: "1"})
    api = Api(port)
    try:
        wait_until(lambda: api.up() or server.process.poll() is not None, "serving", timeout=600)
    except AssertionError:
        server.stop()
        raise
    assert server.process.poll() is None, server.output()
    return server, api


def _video(api: Api, body: dict) -> bytes:
    status, data = api.request("GET", body["video_url"])
    assert status == 200 and data[4:8] == b"ftyp", (status, data[:16])
    return data


def test_jobs_outlive_a_killed_server(tmp_path):
    port = free_port()
    server, api = _start(tmp_path, "first", port=port)
    try:
        status, first = api.submit(FAST)
        assert status == 202, first
        assert api.wait(first["id"])["status"] == "succeeded"
        status, second = api.submit(SLOW)
        assert status == 202, second
        api.wait_step(second["id"], 1)
        server.kill()  # SIGKILL mid-job: no shutdown code runs
    finally:
        server.stop()

    server, api = _start(tmp_path, "second", port=port)  # the same command again
    try:
        one = api.job(first["id"])
        assert one["status"] == "succeeded" and one["attempts"] == 1, one
        _video(api, one)
        # job 2 was running: re-run from its start (its inputs are on disk), counted as its second run
        two = api.wait(second["id"])
        assert two["status"] == "succeeded" and two["attempts"] == 2 and two["error"] is None, two
        assert two["progress"]["step"] == 8, two
        _video(api, two)
        status, third = api.submit(FAST)
        assert status == 202 and api.wait(third["id"])["status"] == "succeeded"
        health = api.json("GET", "/healthz")[1]
        assert health["store"].endswith("jobs.sqlite3") and health["queue"] == "embedded", health
        assert len(health["workers"]) == 1 and health["running"] == 0, health
        # SIGTERM while a job runs: the server stops cleanly and hands the job back to the queue (not counted)
        status, fourth = api.submit(SLOW)
        api.wait_step(fourth["id"], 1)
        assert server.terminate() == 0, server.output()
    finally:
        server.stop()

    server, api = _start(tmp_path, "third", "--max_attempts", "1", port=port)
    try:
        four = api.wait(fourth["id"])
        assert four["status"] == "succeeded" and four["attempts"] == 1, four
        # killed mid-run again, with room for no re-run: failed, saying why
        status, fifth = api.submit(SLOW)
        api.wait_step(fifth["id"], 1)
        server.kill()
    finally:
        server.stop()
    server, api = _start(tmp_path, "fourth", "--max_attempts", "1", port=port)
    try:
        five = api.job(fifth["id"])
        assert five["status"] == "failed" and five["error"].startswith("interrupted by a restart"), five
        assert api.request("GET", f"/v1/jobs/{fifth['id']}/video")[0] == 409
        assert not (tmp_path / "out" / "jobs" / fifth["id"]).exists(), "a failed job leaves no files"
        metrics = api.request("GET", "/metrics")[1].decode()
        assert 'multitalk_jobs{state="succeeded"} 4.0' in metrics and 'multitalk_jobs{state="failed"} 1.0' in metrics
        assert server.terminate() == 0
    finally:
        server.stop()


def test_load_every_submission_is_answered_and_runs_once(tmp_path):
    port = free_port()
    server, api = _start(tmp_path, "load", "--max_queue", "8", port=port)
    answers: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def client():
        for _ in range(5):
            answer = Api(port).submit(FAST)
            with lock:
                answers.append(answer)

    try:
        clients = [threading.Thread(target=client) for _ in range(10)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(900)
        assert len(answers) == 50
        codes = sorted({status for status, _ in answers})
        assert set(codes) <= {202, 429}, codes
        accepted = [body["id"] for status, body in answers if status == 202]
        assert len(accepted) >= 8 and len(set(accepted)) == len(accepted)
        for status, body in answers:
            if status == 429:
                assert "max_queue" in body["detail"], body
        for job_id in accepted:  # none lost, each run once
            body = api.wait(job_id)
            assert body["status"] == "succeeded" and body["attempts"] == 1, body
        metrics = api.request("GET", "/metrics")[1].decode()
        count = re.search(r"^multitalk_job_seconds_count (\S+)$", metrics, re.M)
        assert count and float(count.group(1)) == len(accepted), metrics
        assert "multitalk_queue_length 0.0" in metrics and "multitalk_workers 1.0" in metrics
    finally:
        server.stop()


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
