"""The HTTP API (`diffusers_multitalk.server`, `multitalk serve`) on loopback with the tiny model: a job runs from
submission through its events to an mp4 with video and audio; a video is dubbed by the tiny InfiniteTalk model; bad
uploads are refused (413/415/422) before anything is written; a full queue answers 429; queued and running jobs
cancel; a wrong API key answers 401; the OpenAPI document validates."""

from __future__ import annotations

import io
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from diffusers_multitalk import cli, server


ASSETS = Path(__file__).resolve().parents[1] / "examples" / "assets"
IMAGE = ASSETS / "two_people.png"
SPEAKER = ASSETS / "speaker1.wav"
SOURCE_CLIP = ASSETS / "source_clip.mp4"  # 96x64, 25 fps, 1.92 s
FAST = {"mode": "clip", "frame_num": 5, "sample_steps": 1, "sample_text_guide_scale": 1.0, "height": 64, "width": 96}
# Seconds any wait may take: a bound that stops a hung job, not a speed check, so generous for a loaded 2-core CI.
TIMEOUT = 900


def live_files(job_id: str, chunks: int = 1) -> list[str]:
    """A finished job's live stream (tests/test_live_stream.py tests it)."""
    return [f"{job_id}/live/live.m3u8", *(f"{job_id}/live/segment_{i:05d}.ts" for i in range(chunks))]


@pytest.fixture(scope="module")
def tiny_pipe():
    from diffusers_multitalk import make_tiny_pipeline

    return make_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def dub_pipe():
    from diffusers_multitalk import make_tiny_pipeline
    from diffusers_multitalk.pipelines.pipeline_wan_infinitetalk import WanInfiniteTalkPipeline

    return make_tiny_pipeline(seed=0, pipeline_class=WanInfiniteTalkPipeline)


def _client(tiny_pipe, tmp_path, **kwargs):
    app = server.create_app(tiny_pipe, output_dir=tmp_path, tiny=True, ui=False, **kwargs)
    return app, TestClient(app)


def _submit(client, settings=FAST, image=IMAGE, audio=(SPEAKER,), headers=None, video=None, **form):
    """A job: `image` and `video` are a path, bytes or None (not sent); the names say nothing (content counts)."""
    files = []
    for field, entry, name, kind in (
        ("image", image, "picture.png", "image/png"),
        ("video", video, "v.mp4", "video/mp4"),
    ):
        if entry is not None:
            files.append((field, (name, Path(entry).read_bytes() if isinstance(entry, Path) else entry, kind)))
    for entry in audio:
        data = Path(entry).read_bytes() if isinstance(entry, Path) else entry
        files.append(("audio", ("speech.wav", data, "audio/wav")))
    data = {"prompt": "Two friends chat.", "settings": json.dumps(settings), **form}
    return client.post("/v1/jobs", files=files, data=data, headers=headers or {})


def _wait(client, job_id, states=("succeeded", "failed", "cancelled"), headers=None):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}", headers=headers or {}).json()
        if body["status"] in states:
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {body['status']} after {TIMEOUT} s")


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _streams(path: Path) -> list[str]:
    import imageio_ffmpeg

    info = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    ).stderr
    return [line.strip() for line in info.splitlines() if "Stream #" in line]


def _wav(seconds: float, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * rate), dtype=np.float32), rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------------
def test_job_runs_with_events_to_an_mp4_with_video_and_audio(tiny_pipe, tmp_path):
    app, client = _client(tiny_pipe, tmp_path)
    try:
        answer = _submit(client)
        assert answer.status_code == 202, answer.text
        created = answer.json()
        assert created["status"] == "queued" and created["position"] == 1 and len(created["id"]) == 32
        job_id = created["id"]
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = []
            name = None
            for line in stream.iter_lines():  # ends when the job is done (bounded by the job's own end)
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
        assert events[-1][0] == "done" and events[-1][1]["status"] == "succeeded", events[-1]
        steps = [data["progress"] for _, data in events if data["progress"]["step"]]
        assert steps and steps[-1] == {"step": 1, "steps": 1, "chunk": 1, "chunks": 1}, events
        body = client.get(f"/v1/jobs/{job_id}").json()
        assert body["status"] == "succeeded" and body["error"] is None
        assert body["video_url"] == f"/v1/jobs/{job_id}/video" and body["expires_at"] > body["finished_at"]
        # clip mode keeps 5 frames of the speech: the job says so in its status and its events, not only in a log
        cut = [line for line in body["warnings"] if "mode='clip' makes one chunk of 5 frames" in line]
        assert len(cut) == 1 and "are dropped" in cut[0], body["warnings"]
        assert cut[0] in events[-1][1]["warnings"]
        video = client.get(body["video_url"])
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        out = tmp_path / "got.mp4"
        out.write_bytes(video.content)
        streams = _streams(out)
        assert any("Video: h264" in s and "96x64" in s for s in streams), streams
        assert any("Audio: aac" in s for s in streams), streams
        # the job's own folder holds its inputs, the finished video and its ended live stream, no part file
        assert _files(tmp_path / "jobs") == sorted(
            [f"{job_id}/image.png", f"{job_id}/person1.wav", f"{job_id}/video.mp4", *live_files(job_id)]
        )
        health = client.get("/healthz").json()
        assert {k: health[k] for k in ("status", "model_loaded", "queued", "running", "max_queue")} == {
            "status": "ok", "model_loaded": True, "queued": 0, "running": 0, "max_queue": 8
        }  # fmt: skip
        assert health["queue"] == "embedded" and [w["kind"] for w in health["workers"]] == ["embedded"]
        # a finished job is removed with its files on DELETE
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404 and _files(tmp_path / "jobs") == []
    finally:
        app.state.jobs.stop()


def test_bad_uploads_are_refused_before_anything_is_written(tiny_pipe, tmp_path):
    app, client = _client(tiny_pipe, tmp_path, max_upload_mb=1, max_audio_seconds=60, max_pixels=1000 * 1000)
    never = lambda *a: (_ for _ in ()).throw(AssertionError("a refused job ran"))
    app.state.jobs._run = never
    try:
        cases = {
            "text as the image": (dict(image=b"just some text, not a picture\n"), 415, "image: not an image"),
            "text as the audio": (dict(audio=[b"RIFF? no, plain text"]), 415, "audio[0] (person1): not audio"),
            "oversize image": (dict(image=b"\x89PNG\r\n\x1a\n" + b"\0" * (1024 * 1024 + 10)), 413, "max_upload_mb"),
            # two hours of silence at 100 Hz, 8-bit: 720 kB, refused from its header's duration
            "2-hour audio": (dict(audio=[_wav(7200, rate=100, subtype="PCM_U8")]), 422, "7200.0 s of audio"),
            "too many pixels": (dict(image=_png(1200, 1000)), 422, "max_pixels"),
            "broken png": (dict(image=b"\x89PNG\r\n\x1a\n" + b"garbage" * 10), 415, "cannot be decoded"),
            "unknown setting": (dict(settings={**FAST, "steps": 3}), 422, "unknown field(s) steps"),
            "model flag": (dict(settings={"ckpt_dir": "/weights"}), 422, "ckpt_dir: fixed when the server starts"),
            "wrong type": (dict(settings={"frame_num": "five"}), 422, "settings.frame_num: expected int"),
            "invalid value": (dict(settings={"frame_num": 6}), 422, "settings.frame_num 6: must be 4n+1"),
            "a video to MultiTalk": (dict(image=None, video=SOURCE_CLIP), 422, "dubbing needs InfiniteTalk"),
            "image and video": (dict(video=SOURCE_CLIP), 422, "image / video: give a reference picture or a video"),
            "neither": (dict(image=None), 422, "image: missing"),
            "no audio": (dict(audio=[]), 422, "audio: missing"),
        }
        for name, (change, status, message) in cases.items():
            answer = _submit(client, **change)
            assert answer.status_code == status, (name, answer.status_code, answer.text)
            assert message in answer.json()["detail"], (name, answer.json())
            assert "--" not in answer.json()["detail"], (name, "the API names JSON fields, not flags")
        # a whole request far past the limits is refused from its length alone
        answer = client.post(
            "/v1/jobs", content=b"x" * (7 * 1024 * 1024), headers={"content-type": "multipart/form-data; boundary=x"}
        )
        assert answer.status_code == 413, answer.text
        assert _files(tmp_path) == [] and client.get("/healthz").json()["queued"] == 0
    finally:
        app.state.jobs.stop()


def test_dub_job_on_infinitetalk_runs_to_an_mp4_with_the_new_speech(dub_pipe, tmp_path):
    import imageio_ffmpeg

    from diffusers_multitalk import runtime

    app, client = _client(dub_pipe, tmp_path)
    try:
        # 0.5 s of new speech: one chunk of 13 frames; no height/width, so the --tiny size follows the video's
        speech, rate = sf.read(SPEAKER, dtype="float32")
        buffer = io.BytesIO()
        sf.write(buffer, speech[: int(0.5 * rate)], rate, format="WAV", subtype="PCM_16")
        settings = {"frame_num": 13, "sample_steps": 1, "sample_text_guide_scale": 1.0}
        answer = _submit(client, settings=settings, image=None, video=SOURCE_CLIP, audio=[buffer.getvalue()])
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        body = _wait(client, job_id)
        assert body["status"] == "succeeded", body
        assert body["progress"] == {"step": 1, "steps": 1, "chunk": 1, "chunks": 1}, body
        out = tmp_path / "dub.mp4"
        out.write_bytes(client.get(body["video_url"]).content)
        height, width = runtime.tiny_size((64, 96), "multitalk-480")
        streams = _streams(out)
        assert any("Video: h264" in s and f"{width}x{height}" in s for s in streams), streams
        assert any("Audio: aac" in s for s in streams), streams
        assert imageio_ffmpeg.count_frames_and_secs(str(out))[0] == int(0.5 * 25)  # the dub follows the new speech
        # the job's folder holds its inputs (the source named apart from the output) and the finished video
        assert _files(tmp_path / "jobs") == sorted(
            [f"{job_id}/video_in.mp4", f"{job_id}/person1.wav", f"{job_id}/video.mp4", *live_files(job_id)]
        )
    finally:
        app.state.jobs.stop()


def test_a_dub_longer_than_its_video_says_so_in_the_job(dub_pipe, tmp_path):
    app, client = _client(dub_pipe, tmp_path)
    try:  # 3.2 s of speech over the 1.92 s clip, in one chunk
        settings = {"mode": "clip", "frame_num": 81, "sample_steps": 1, "sample_text_guide_scale": 1.0}
        answer = _submit(client, settings=settings, image=None, video=SOURCE_CLIP, audio=[SPEAKER])
        assert answer.status_code == 202, answer.text
        body = _wait(client, answer.json()["id"])
        assert body["status"] == "succeeded", body
        held = [line for line in body["warnings"] if "last frame is held" in line]
        assert len(held) == 1 and "the dub runs 3.20 s, the video 1.92 s" in held[0], body["warnings"]
    finally:
        app.state.jobs.stop()


def test_a_dub_on_a_model_not_loaded_yet(tiny_pipe, tmp_path):
    from diffusers_multitalk import runtime

    # model flags tell the pipeline without loading it: MultiTalk's refuses at once
    app = server.create_app(runtime.generate_options(tiny=True), output_dir=tmp_path, ui=False)
    answer = _submit(TestClient(app), image=None, video=SOURCE_CLIP)
    assert answer.status_code == 422 and "dubbing needs InfiniteTalk" in answer.json()["detail"], answer.text
    assert not app.state.pipeline.loaded and _files(tmp_path) == []
    # a loader is not called for the check: the job is queued and fails at its start, leaving no files
    app, client = _client(lambda: tiny_pipe, tmp_path)
    try:
        answer = _submit(client, image=None, video=SOURCE_CLIP)
        assert answer.status_code == 202, answer.text
        body = _wait(client, answer.json()["id"])
        assert body["status"] == "failed" and "dubbing needs InfiniteTalk" in body["error"], body
        assert _files(tmp_path) == []
    finally:
        app.state.jobs.stop()


def test_bad_videos_are_refused_before_anything_is_written(dub_pipe, tmp_path):
    # the bundled clip is 96x64: one pixel over this limit
    app, client = _client(dub_pipe, tmp_path, max_pixels=96 * 64 - 1)
    app.state.jobs._run = lambda *a: (_ for _ in ()).throw(AssertionError("a refused job ran"))
    try:
        cases = {
            "text as the video": (b"just some text, not a video\n", 415, "video: not a video (MP4, MOV, WebM"),
            "an image as the video": (IMAGE, 415, "video: not a video"),
            "broken mp4": (b"\0\0\0\x18ftypisom" + b"garbage" * 20, 415, "video: a MP4 file that cannot be decoded"),
            "too many pixels": (SOURCE_CLIP, 422, "video: 96x64 is 6144 pixels, more than the server's limit of 6143"),
        }
        for name, (video, status, message) in cases.items():
            answer = _submit(client, image=None, video=video)
            assert answer.status_code == status, (name, answer.status_code, answer.text)
            assert message in answer.json()["detail"], (name, answer.json())
        assert _files(tmp_path) == [] and client.get("/healthz").json()["queued"] == 0
    finally:
        app.state.jobs.stop()


def _png(width, height) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_queue_full_answers_429_and_queued_and_running_jobs_cancel(tiny_pipe, tmp_path):
    app, client = _client(tiny_pipe, tmp_path, max_queue=2)
    manager = app.state.jobs
    try:
        with manager.gpu_lock:  # the worker takes the first job and waits for the GPU; two more queue
            first = _submit(client, settings={**FAST, "sample_steps": 50}).json()["id"]
            _wait(client, first, states=("running",))
            second = _submit(client).json()
            third = _submit(client).json()
            assert (second["position"], third["position"]) == (1, 2)
            full = _submit(client)
            assert full.status_code == 429 and "max_queue" in full.json()["detail"], full.text
            assert len(list((tmp_path / "jobs").iterdir())) == 3, "the refused job left a folder"
            # cancel the queued one: at once, its folder gone
            cancelled = client.delete(f"/v1/jobs/{second['id']}")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
            assert not (tmp_path / "jobs" / second["id"]).exists()
            assert client.get(f"/v1/jobs/{third['id']}").json()["position"] == 1
        # cancel the running one once it has made a step: it stops at its next step, long before its 50th
        deadline = time.monotonic() + TIMEOUT
        while client.get(f"/v1/jobs/{first}").json()["progress"]["step"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        stopping = client.delete(f"/v1/jobs/{first}")
        assert stopping.status_code == 202 and stopping.json()["cancel_requested"] is True, stopping.text
        body = _wait(client, first)
        assert body["status"] == "cancelled" and 1 <= body["progress"]["step"] < 50, body
        assert not (tmp_path / "jobs" / first).exists(), "the cancelled job left files"
        assert _wait(client, third["id"])["status"] == "succeeded"
        assert _files(tmp_path / "jobs") == sorted(
            [f"{third['id']}/{name}" for name in ("image.png", "person1.wav", "video.mp4")] + live_files(third["id"])
        )
    finally:
        manager.stop()


def test_failed_job_leaves_nothing_and_finished_jobs_expire(tiny_pipe, tmp_path, monkeypatch):
    app, client = _client(tiny_pipe, tmp_path, keep_jobs=0.5)
    try:
        # the VAE fails after the video writer has started: the job fails, no part file or folder is left
        def broken_decode(latents):
            raise ValueError("the VAE broke")

        monkeypatch.setattr(tiny_pipe, "decode_latents", broken_decode)
        bad = _submit(client).json()["id"]
        body = _wait(client, bad)
        assert body["status"] == "failed" and body["error"] == "the VAE broke", body
        assert not (tmp_path / "jobs" / bad).exists() and _files(tmp_path) == []
        monkeypatch.undo()
        good = _submit(client).json()["id"]
        assert _wait(client, good)["status"] == "succeeded"
        deadline = time.monotonic() + TIMEOUT
        while client.get(f"/v1/jobs/{good}").status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get(f"/v1/jobs/{good}").status_code == 404 and _files(tmp_path / "jobs") == []
    finally:
        app.state.jobs.stop()


def test_api_key_and_openapi(tiny_pipe, tmp_path):
    from openapi_spec_validator import validate

    app, client = _client(tiny_pipe, tmp_path, api_key="s3cret")
    try:
        assert _submit(client).status_code == 401
        assert _submit(client, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/jobs/nope", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/jobs/nope", headers={"Authorization": "Bearer s3cret"}).status_code == 404
        assert client.get("/healthz").status_code == 200  # liveness needs no key
        document = client.get("/openapi.json").json()
        validate(document)
        schemas = document["components"]["schemas"]
        for name in ("JobCreated", "JobInfo", "Progress", "JobState", "Health", "ErrorBody"):
            assert name in schemas, name
        paths = document["paths"]
        assert set(paths["/v1/jobs/{job_id}"]) == {"get", "delete"} and "post" in paths["/v1/jobs"]
        assert "text/event-stream" in paths["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
        assert "bearer" in json.dumps(document["components"]["securitySchemes"]).lower()
    finally:
        app.state.jobs.stop()


def _schema_value(prop: dict, key: str):
    """A keyword of a property's schema, looked for in its `anyOf` members too (a field that may be null)."""
    found = [prop.get(key)] + [member.get(key) for member in prop.get("anyOf", [])]
    return next((value for value in found if value is not None), None)


def test_the_openapi_settings_are_the_runtimes(tmp_path):
    """The `settings` a job carries are documented by JobSettings, built from the runtime's GenerationSettings: the
    same names, defaults, limits and choices as the runtime checks (settings_problems reads the same metadata)."""
    import dataclasses

    from openapi_spec_validator import validate

    from diffusers_multitalk import runtime
    from diffusers_multitalk.runtime.spec import GenerationSettings
    from diffusers_multitalk.server.schemas import NOT_PER_JOB

    app = server.create_app(runtime.generate_options(tiny=True), output_dir=tmp_path, ui=False)
    document = TestClient(app).get("/openapi.json").json()
    validate(document)
    properties = document["components"]["schemas"]["JobSettings"]["properties"]
    defaults = GenerationSettings()
    per_job = [f for f in dataclasses.fields(GenerationSettings) if f.name not in NOT_PER_JOB]
    assert {f.name for f in per_job} == set(properties) - {
        "audio_type", "bbox", "negative_prompt", "human1_voice", "human2_voice", "human3_voice", "human4_voice"
    }  # fmt: skip
    for setting in per_job:
        prop = properties[setting.name]
        assert prop["default"] == getattr(defaults, setting.name), setting.name
        assert prop["description"] == setting.metadata["description"], setting.name
        for key, keyword in (
            ("ge", "minimum"),
            ("gt", "exclusiveMinimum"),
            ("le", "maximum"),
            ("multiple_of", "multipleOf"),
        ):
            assert _schema_value(prop, keyword) == setting.metadata.get(key), (setting.name, key)
        assert _schema_value(prop, "enum") == (
            list(setting.metadata["choices"]) if "choices" in setting.metadata else None
        )
    assert _schema_value(properties["frame_num"], "minimum") == 5
    assert _schema_value(properties["color_correction_strength"], "maximum") == 1
    # the form's `settings` field points at it
    form = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    body = document["components"]["schemas"][form.split("/")[-1]]
    assert body["properties"]["settings"]["contentSchema"] == {"$ref": "#/components/schemas/JobSettings"}


def test_ui_is_mounted_beside_the_api(tiny_pipe, tmp_path):
    app = server.create_app(tiny_pipe, output_dir=tmp_path, tiny=True)
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200 and "gradio" in page.text.lower()
        assert client.get("/healthz").json()["status"] == "ok"


def test_serve_flags(monkeypatch):
    served = []
    monkeypatch.setattr(server, "serve", lambda args: served.append(args))
    assert cli.main(["serve", "--tiny", "--max_queue", "3", "--api_key", "k", "--keep_jobs", "60"]) == 0
    (args,) = served
    assert (args.host, args.port, args.max_queue, args.api_key, args.keep_jobs) == ("127.0.0.1", 7860, 3, "k", 60)
    assert (args.max_upload_mb, args.max_audio_seconds, args.max_pixels) == (50, 600, 4096 * 4096)
    assert cli.main(["serve", "--tiny", "--max_queue", "0"]) == 1
