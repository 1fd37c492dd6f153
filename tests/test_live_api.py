"""The API's live video (issue 25): `GET /v1/jobs/{id}/live.m3u8` and `GET /v1/jobs/{id}/live/{segment}` on a
running tiny job held between its chunks — 404 before the first chunk, the playlist and its first segment (with
audio) after it while the job runs, 401 without the key, 404 for unknown segments and paths out of the job's folder,
an ended playlist once the job succeeds, and no stream left by a cancelled job."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from diffusers_multitalk import make_tiny_pipeline, server
from diffusers_multitalk.testing import stream_seconds


ASSETS = Path(__file__).resolve().parents[1] / "examples" / "assets"
# 9-frame chunks continuing from 5, capped at 17 frames: 3 chunks (9 + 4 + 4 new frames)
SETTINGS = {"frame_num": 9, "motion_frame": 5, "max_frame_num": 17, "sample_steps": 1, "sample_text_guide_scale": 1.0,
            "height": 32, "width": 48}  # fmt: skip
KEY = {"Authorization": "Bearer s3cret"}
TIMEOUT = 900  # a bound that stops a hung job, not a speed check


class Gate:
    """Holds the job before chunk `index` is denoised until the test opens it."""

    def __init__(self, pipe, monkeypatch):
        self.reached = {i: threading.Event() for i in range(3)}
        self.opened = {i: threading.Event() for i in range(3)}
        original = pipe.denoise_chunk

        def held(latents, conditioning, chunk, *args, **kwargs):
            self.reached[chunk.index].set()
            assert self.opened[chunk.index].wait(TIMEOUT), "the test never opened the gate"
            return original(latents, conditioning, chunk, *args, **kwargs)

        monkeypatch.setattr(pipe, "denoise_chunk", held)

    def wait(self, index):
        assert self.reached[index].wait(TIMEOUT), f"the job never reached chunk {index}"

    def open(self, *indices):
        for i in indices or range(3):
            self.opened[i].set()


@pytest.fixture
def client(tmp_path):
    pipe = make_tiny_pipeline(seed=0)
    app = server.create_app(pipe, output_dir=tmp_path, tiny=True, ui=False, api_key="s3cret")
    yield pipe, TestClient(app)
    app.state.jobs.stop()


def _submit(client) -> str:
    files = [("image", ("p.png", (ASSETS / "two_people.png").read_bytes(), "image/png")),
             ("audio", ("s.wav", (ASSETS / "speaker1.wav").read_bytes(), "audio/wav"))]  # fmt: skip
    answer = client.post("/v1/jobs", files=files, data={"prompt": "A friend talks.", "settings": json.dumps(SETTINGS)},
                         headers=KEY)  # fmt: skip
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def _wait(client, job_id) -> dict:
    import time

    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}", headers=KEY).json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end")


def test_the_live_stream_is_served_from_the_first_chunk_on(client, tmp_path, monkeypatch):
    pipe, client = client
    gate = Gate(pipe, monkeypatch)
    job = _submit(client)
    live = f"/v1/jobs/{job}/live.m3u8"
    try:
        gate.wait(0)  # running, nothing decoded yet
        assert client.get(live, headers=KEY).status_code == 404
        assert client.get(f"/v1/jobs/{job}/live/segment_00000.ts", headers=KEY).status_code == 404
        gate.open(0)
        gate.wait(1)  # chunk 0 decoded and streamed; the job is held before chunk 1
        assert client.get(f"/v1/jobs/{job}", headers=KEY).json()["status"] == "running"
        answer = client.get(live, headers=KEY)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/vnd.apple.mpegurl")
        lines = answer.text.splitlines()
        assert lines[0] == "#EXTM3U" and "#EXT-X-PLAYLIST-TYPE:EVENT" in lines and "#EXT-X-ENDLIST" not in lines
        assert [line for line in lines if not line.startswith("#")] == ["live/segment_00000.ts"]
        segment = client.get(f"/v1/jobs/{job}/live/segment_00000.ts", headers=KEY)  # the playlist's URI, resolved
        assert segment.status_code == 200 and segment.headers["content-type"] == "video/mp2t"
        (tmp_path / "first.ts").write_bytes(segment.content)
        assert stream_seconds(tmp_path / "first.ts", "v") == pytest.approx(9 / 25, abs=0.05)
        assert stream_seconds(tmp_path / "first.ts", "a") == pytest.approx(9 / 25, abs=0.05)
        # the key, as for the job's other routes
        assert client.get(live).status_code == 401
        assert client.get(f"/v1/jobs/{job}/live/segment_00000.ts").status_code == 401
        # nothing but the stream's segments, and only from the job's own folder
        for name in ("segment_00001.ts", "segment_99999.ts", "live.m3u8", "..%2Fimage.png", "..%2F..%2Fjobs.db",
                     "%2E%2E", "segment_00000.ts%00", "x.ts"):  # fmt: skip
            assert client.get(f"/v1/jobs/{job}/live/{name}", headers=KEY).status_code == 404, name
        assert client.get(f"/v1/jobs/{job}/live/../image.png", headers=KEY).status_code == 404  # ID/image.png
        assert client.get("/v1/jobs/0123456789abcdef0123456789abcdef/live.m3u8", headers=KEY).status_code == 404
        assert client.get("/v1/jobs/..%2F..%2Fui/live.m3u8", headers=KEY).status_code == 404
    finally:
        gate.open()
    assert _wait(client, job)["status"] == "succeeded"
    lines = client.get(live, headers=KEY).text.splitlines()
    assert lines[-1] == "#EXT-X-ENDLIST"
    assert [line for line in lines if not line.startswith("#")] == [f"live/segment_{i:05d}.ts" for i in range(3)]
    for i in range(3):
        assert client.get(f"/v1/jobs/{job}/live/segment_{i:05d}.ts", headers=KEY).status_code == 200


def test_a_cancelled_job_leaves_no_stream(client, tmp_path, monkeypatch):
    pipe, client = client
    gate = Gate(pipe, monkeypatch)
    job = _submit(client)
    try:
        gate.open(0)
        gate.wait(1)
        assert client.get(f"/v1/jobs/{job}/live.m3u8", headers=KEY).status_code == 200
        assert client.delete(f"/v1/jobs/{job}", headers=KEY).status_code == 202
    finally:
        gate.open()
    assert _wait(client, job)["status"] == "cancelled"
    assert client.get(f"/v1/jobs/{job}/live.m3u8", headers=KEY).status_code == 404
    assert not (tmp_path / "jobs" / job).exists()
