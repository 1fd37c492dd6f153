"""Bad inputs are refused before any model, in every front end, each naming its field in the caller's words: the
command line in one line with exit status 2, before torch is imported and with nothing written (the input JSON's
path, `$.cond_audio.person2`); the HTTP API with 422 at submission, before a job is queued or the model loaded (the
JSON field, `audio[1] (person2)`, never a `--` flag); the web app with a `gr.Error` naming the form's label, before
its model loads. Asserted by what ran and what was written, not by how long it took."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "examples" / "assets"
IMAGE = ASSETS / "two_people.png"  # 832x480 (WxH)
SPEAKERS = [ASSETS / "speaker1.wav", ASSETS / "speaker2.wav"]
BOXES = [[30, 40, 470, 392], [30, 440, 470, 900]]  # person2's right edge is past the 832 px width
PROBE = (
    "import sys\n"
    "from diffusers_multitalk import cli\n"
    "status = cli.main(sys.argv[1:])\n"
    "print('IMPORTED', 'torch' in sys.modules, any(m.startswith('diffusers_multitalk.pipelines') for m in sys.modules))\n"
    "sys.exit(status)\n"
)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The bad files: silence, hiss far below speech, text named .wav, a 1x1 picture, a folder."""
    folder = tmp_path_factory.mktemp("media")
    sf.write(folder / "silent.wav", np.zeros(16000, np.float32), 16000)
    sf.write(folder / "hiss.wav", np.random.default_rng(0).normal(0, 1e-5, 16000).astype(np.float32), 16000)
    (folder / "text.wav").write_text("not a sound, only text\n")
    from PIL import Image

    Image.new("RGB", (1, 1)).save(folder / "tiny.png")
    (folder / "pictures").mkdir()
    return folder


# (case, the input's changes, the command line's words, the API's words, the web app's words)
CASES = [
    ("undecodable audio", dict(audio=["speaker1.wav", "text.wav"]),
     "$.cond_audio.person2: 'text.wav': cannot be decoded as audio", None,
     r"Person 2 speech: cannot be decoded as audio"),
    ("silent audio", dict(audio=["speaker1.wav", "silent.wav"]),
     "$.cond_audio.person2: 'silent.wav': the track is silent (all zeros",
     "audio[1] (person2): the track is silent (all zeros", r"Person 2 speech: the track is silent \(all zeros"),
    ("near-silent audio", dict(audio=["hiss.wav", "speaker2.wav"]),
     "$.cond_audio.person1: 'hiss.wav': the track is silent (its loudest sample is",
     "audio[0] (person1): the track is silent", r"Person 1 speech: the track is silent"),
    ("1x1 image", dict(image="tiny.png"),
     "$.cond_image: 'tiny.png': 1x1 (WxH) is too small: each side needs at least 32 pixels",
     "image: 1x1 (WxH) is too small: each side needs at least 32 pixels", r"Reference image: 1x1 \(WxH\) is too small"),
    ("a folder as the image", dict(image="pictures"), "$.cond_image: 'pictures' is a directory", None,
     r"Reference image: is a directory"),
    ("box outside the image", dict(bbox=BOXES),
     "$.bbox.person2: [30, 440, 470, 900] is outside the 832x480 (WxH) image",
     "settings.bbox (person2): [30, 440, 470, 900] is outside the 832x480 (WxH) image",
     r"Person 2 box: \[30, 440, 470, 900\] is outside the 832x480 \(WxH\) image"),
]  # fmt: skip
IDS = [case[0] for case in CASES]


def _path(media, name) -> Path:
    for folder in (media, ASSETS):
        if (folder / name).exists():
            return folder / name
    return IMAGE if name is None else Path(name)


def _request(media, change) -> tuple[Path, list[Path], list | None]:
    image = _path(media, change.get("image", IMAGE.name))
    audio = [_path(media, name) for name in change.get("audio", [s.name for s in SPEAKERS])]
    return image, audio, change.get("bbox")


# ----------------------------------------------------------------------------------------------------------------
# the command line
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, change, cli_words, api_words, app_words", CASES, ids=IDS)
def test_the_command_line_refuses_before_torch(media, tmp_path, case, change, cli_words, api_words, app_words):
    image, audio, bbox = _request(media, change)
    data = {"prompt": "Two friends chat.", "cond_image": str(image),
            "cond_audio": {f"person{i}": str(path) for i, path in enumerate(audio, start=1)}}  # fmt: skip
    if bbox:
        data["bbox"] = {f"person{i}": box for i, box in enumerate(bbox, start=1)}
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "in.json").write_text(json.dumps(data).replace(str(media) + "/", "").replace(str(ASSETS) + "/", ""))
    for name in (*(p.name for p in audio), image.name):  # the JSON names the files as given, next to it
        source = _path(media, name)
        if not (tmp_path / name).exists():
            (tmp_path / name).symlink_to(source, target_is_directory=source.is_dir())
    run = subprocess.run(
        [sys.executable, "-c", PROBE, "generate", "--tiny", "--input_json", str(tmp_path / "in.json"),
         "--save_file", str(out / "video")],
        capture_output=True, text=True, cwd=REPO, timeout=900,  # generous for a loaded machine: no model is built
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and cli_words in errors[0], run.stderr[-2000:]  # one line, naming the JSON path
    assert "Traceback" not in run.stderr
    assert "IMPORTED False False" in run.stdout, (run.stdout, run.stderr[-2000:])  # no torch, no pipeline code
    assert list(out.iterdir()) == [], "nothing is written on refusal"


def test_the_command_line_warns_of_a_prompt_the_text_encoder_cuts(tmp_path, monkeypatch, caplog, capsys):
    from diffusers_multitalk import cli
    from diffusers_multitalk.cli import generate
    from diffusers_multitalk.runtime.errors import UserError

    data = {"prompt": "a person talks " * 200, "cond_image": str(IMAGE), "cond_audio": {"person1": str(SPEAKERS[0])}}
    (tmp_path / "in.json").write_text(json.dumps(data))
    monkeypatch.setattr(generate, "load_pipeline", lambda *a: (_ for _ in ()).throw(UserError("stopped (test)")))
    with caplog.at_level("WARNING", logger="diffusers_multitalk"):
        status = cli.main(["generate", "--tiny", "--input_json", str(tmp_path / "in.json"), "--save_file",
                           str(tmp_path / "video")])  # fmt: skip
    said = [r.getMessage() for r in caplog.records if "prompt" in r.getMessage()]
    assert status == 1 and "stopped (test)" in capsys.readouterr().err  # the warning came before any model
    assert said == ["$.prompt: the prompt is at least 601 tokens long; the text encoder reads its first 512 and "
                    "cuts the rest: shorten it"]  # fmt: skip


def test_a_cut_prompt_is_said_once_through_a_whole_run(tmp_path, caplog):
    """The run goes on with the prompt cut: the input's check says so, and the pipeline's own line is left out."""
    from diffusers_multitalk import cli

    data = {"prompt": "a person talks " * 200, "cond_image": str(IMAGE), "cond_audio": {"person1": str(SPEAKERS[0])}}
    (tmp_path / "in.json").write_text(json.dumps(data))
    with caplog.at_level("WARNING", logger="diffusers_multitalk"):
        status = cli.main(["generate", "--tiny", "--input_json", str(tmp_path / "in.json"), "--save_file",
                           str(tmp_path / "video"), "--mode", "clip", "--frame_num", "5", "--sample_steps", "1",
                           "--height", "32", "--width", "48"])  # fmt: skip
    assert status == 0 and (tmp_path / "video.mp4").is_file()
    said = [r.getMessage() for r in caplog.records if "tokens long" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("$.prompt: the prompt is at least 601 tokens long"), said


# ----------------------------------------------------------------------------------------------------------------
# the HTTP API
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture
def api(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from diffusers_multitalk import runtime, server

    app = server.create_app(runtime.generate_options(tiny=True), output_dir=tmp_path / "server", ui=False)
    app.state.jobs._run = lambda *a: (_ for _ in ()).throw(AssertionError("a refused job ran"))
    yield app, TestClient(app)
    app.state.jobs.stop()


def _submit(client, image, audio, settings, prompt="Two friends chat."):
    files = [("image", ("picture.png", image.read_bytes(), "image/png"))]
    files += [("audio", ("speech.wav", path.read_bytes(), "audio/wav")) for path in audio]
    data = {"prompt": prompt, "settings": json.dumps(settings)}
    return client.post("/v1/jobs", files=files, data=data)


API_CASES = [case for case in CASES if case[3] is not None] + [
    ("frames not 4n+1", dict(settings={"frame_num": 6}), None, "settings.frame_num 6: must be 4n+1", None),
    ("height alone", dict(settings={"height": 64}), None, "settings.height: give settings.width too", None),
    ("steps", dict(settings={"sample_steps": 0}), None, "settings.sample_steps 0: must be at least 1", None),
]


@pytest.mark.parametrize("case, change, cli_words, api_words, app_words", API_CASES, ids=[c[0] for c in API_CASES])
def test_the_api_answers_422_at_submission(media, api, tmp_path, case, change, cli_words, api_words, app_words):
    app, client = api
    image, audio, bbox = _request(media, change)
    settings = {"mode": "clip", "frame_num": 5, **change.get("settings", {})}
    if bbox:
        settings["bbox"] = bbox
    answer = _submit(client, image, audio, settings)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert api_words in detail and "--" not in detail, detail  # the JSON field's name, no command-line flag
    assert not app.state.pipeline.loaded, "no model is loaded to refuse a request"
    jobs = tmp_path / "server" / "jobs"
    assert client.get("/healthz").json()["queued"] == 0 and not (jobs.exists() and any(jobs.iterdir()))


def test_the_api_job_carries_the_prompt_warning(api):
    app, client = api
    answer = _submit(client, IMAGE, SPEAKERS[:1], {"mode": "clip", "frame_num": 5}, prompt="a person talks " * 200)
    assert answer.status_code == 202, answer.text
    warnings = client.get(f"/v1/jobs/{answer.json()['id']}").json()["warnings"]
    assert warnings[0].startswith(
        "prompt: the prompt is at least 601 tokens long; the text encoder reads its first 512"
    )


# ----------------------------------------------------------------------------------------------------------------
# the web app
# ----------------------------------------------------------------------------------------------------------------
def _never_load():
    raise AssertionError("the model was loaded for a request that is refused")


APP_CASES = [case for case in CASES if case[4] is not None] + [
    ("frames not 4n+1", dict(num_frames=6), None, None, r"Frames per chunk \(4n\+1\) = 6: must be 4n\+1"),
    ("height alone", dict(height=64), None, None, r"Height: give Width too"),
    ("colour correction", dict(color_correction_strength=2.0), None, None, r"Colour correction = 2.0: must be in"),
]


@pytest.mark.parametrize("case, change, cli_words, api_words, app_words", APP_CASES, ids=[c[0] for c in APP_CASES])
def test_the_web_app_names_the_label_before_loading(media, tmp_path, case, change, cli_words, api_words, app_words):
    gr = pytest.importorskip("gradio")
    from diffusers_multitalk import app

    image, audio, bbox = _request(media, change)
    settings = {k: v for k, v in change.items() if k not in ("image", "audio", "bbox")}
    boxes = [", ".join(map(str, box)) for box in bbox] if bbox else None
    with pytest.raises(gr.Error, match=app_words):
        app.generate_video(_never_load, str(image), "Two friends chat.", audio=[str(p) for p in audio], bboxes=boxes,
                           output_dir=tmp_path / "videos", **{"num_frames": 5, "mode": "clip", **settings})  # fmt: skip
    assert not (tmp_path / "videos").exists()
