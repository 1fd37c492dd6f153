"""Helpers of the service tests (test_job_store, test_durable_jobs, test_queue): a redis-server on a loopback port,
`multitalk serve` and `multitalk worker` as real subprocesses, and polling with generous bounds (never a speed
check: the CI box is a busy 2-core machine)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "examples" / "assets"
IMAGE = ASSETS / "two_people.png"
SPEAKER = ASSETS / "speaker1.wav"
# Seconds any wait may take: a bound that stops a hung test, not a speed check.
TIMEOUT = 900
FAST = {"mode": "clip", "frame_num": 5, "sample_steps": 1, "sample_text_guide_scale": 1.0, "height": 64, "width": 96}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what: str, timeout: float = TIMEOUT, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"still not {what} after {timeout} s")


class RedisServer:
    """redis-server on a free loopback port, its files in `folder`; `url` for the stores and the queue."""

    def __init__(self, folder: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (scripts/test.sh installs it: apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
             "--appendonly", "no", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        client = redis.Redis.from_url(self.url)
        wait_until(lambda: _pings(client), "answering", timeout=60, every=0.1)
        client.close()

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _pings(client) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


class Process:
    """A `multitalk` subprocess with its output in a log file (shown when a test fails)."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        self.args, self.log = args, log
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.handle = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "diffusers_multitalk", *args], stdout=self.handle, stderr=subprocess.STDOUT,
            env=environment, cwd=ROOT,
        )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(60)

    def terminate(self, timeout: float = 120) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(60)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(60)
        self.handle.close()


class Api:
    """A server's HTTP API on loopback, through urllib (no client library needed)."""

    def __init__(self, port: int, key: str | None = None):
        self.base = f"http://127.0.0.1:{port}"
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        request = urllib.request.Request(self.base + path, data=body, method=method,
                                         headers={**self.headers, **(headers or {})})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def json(self, method: str, path: str, **kwargs):
        status, body = self.request(method, path, **kwargs)
        return status, json.loads(body) if body else None

    def up(self) -> bool:
        try:
            return self.request("GET", "/healthz")[0] == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def submit(self, settings: dict = FAST, image: Path = IMAGE, audio: Path = SPEAKER):
        """POST /v1/jobs as multipart form data; returns (status, body)."""
        boundary = "----multitalk-test-boundary"
        parts = []
        for name, value in (("prompt", "Two friends chat."), ("settings", json.dumps(settings))):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for name, path, kind in (("image", image, "image/png"), ("audio", audio, "audio/wav")):
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
            parts.append(f"{head}Content-Type: {kind}\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return self.json("POST", "/v1/jobs", body=body, headers=headers)

    def job(self, job_id: str) -> dict:
        status, body = self.json("GET", f"/v1/jobs/{job_id}")
        assert status == 200, (status, body)
        return body

    def wait(self, job_id: str, states=("succeeded", "failed", "cancelled"), timeout: float = TIMEOUT) -> dict:
        return wait_until(lambda: (lambda b: b if b["status"] in states else None)(self.job(job_id)),
                          f"job {job_id} in {states}", timeout=timeout)  # fmt: skip

    def wait_step(self, job_id: str, step: int = 1) -> dict:
        return wait_until(
            lambda: (lambda b: b if b["status"] == "running" and b["progress"]["step"] >= step else None)(
                self.job(job_id)
            ),
            f"job {job_id} running at step {step}",
        )
