"""One mixed recording and one photo (or a video to dub) make the talking video (pipelines.conversation): the
tracks, boxes and binding `prepare_conversation` gives, and the tiny MultiTalk and InfiniteTalk pipelines run end to
end on them. The recording is a 2-speaker conversation spoken by espeak-ng voices at known turn times
(benchmarks/bench_diarization.synthesize_conversation); the photo is scikit-image's astronaut twice, side by side."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


pytest.importorskip("skimage", reason="face finding needs scikit-image (pip install -e '.[conversation]')")
if not all(importlib.util.find_spec(m) for m in ("silero_vad", "resemblyzer")) or not shutil.which("espeak-ng"):
    pytest.skip("needs the conversation extra and espeak-ng", allow_module_level=True)

from skimage import data

from diffusers_multitalk import WanInfiniteTalkPipeline, make_tiny_pipeline
from diffusers_multitalk.pipelines.conversation import conversation_picture, prepare_conversation


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
SR = 16000


@pytest.fixture(scope="module")
def recording():
    from bench_diarization import synthesize_conversation

    wave, turns = synthesize_conversation(2, 16, seed=5)
    return wave, turns


@pytest.fixture(scope="module")
def photo():
    face = data.astronaut()
    return np.concatenate([face, face[:, ::-1]], axis=1)  # two people, 1024 x 512


def test_two_voices_go_to_two_faces_first_heard_on_the_left(recording, photo):
    wave, reference = recording
    talk = prepare_conversation(wave, photo, sample_rate=SR)
    assert talk.num_persons == 2 and talk.boxes.source == "faces"
    assert [len(track) for track in talk.tracks] == [len(wave)] * 2
    lefts = [box[1] for box in talk.boxes.boxes]
    assert lefts == sorted(lefts) and lefts[1] >= photo.shape[1] // 2
    # person 1 (left) is the first voice heard: loud during the reference's first turn, silent in the second
    first, second = reference[0], next(t for t in reference if t.speaker != reference[0].speaker)

    def rms(track, turn):
        middle = (turn.start + turn.end) / 2
        piece = track[int((middle - 0.2) * SR) : int((middle + 0.2) * SR)]
        return float(np.sqrt(np.mean(piece**2)))

    if second.start >= first.end:  # the turns do not overlap
        assert rms(talk.tracks[0], first) > 10 * rms(talk.tracks[0], second) + 1e-6
        assert rms(talk.tracks[1], second) > 10 * rms(talk.tracks[1], first) + 1e-6
    lines = talk.lines()
    assert lines[0].startswith("2 speaker(s)") and lines[-2].startswith("speaker 1") and "person 1" in lines[-2]
    kwargs = talk.pipeline_kwargs()
    assert kwargs["audio_type"] == "para" and kwargs["bbox"] == talk.boxes.boxes

    swapped = prepare_conversation(wave, photo, num_persons=2, binding=[2, 1], sample_rate=SR)
    np.testing.assert_array_equal(swapped.tracks[0], talk.tracks[1])
    assert any("speaker 1" in line and "-> person 2" in line for line in swapped.lines())


def test_binding_preview_is_a_png_of_the_photo(recording, photo, tmp_path):
    talk = prepare_conversation(recording[0], photo, num_persons=2, sample_rate=SR)
    picture = talk.preview(tmp_path / "binding.png")
    assert (tmp_path / "binding.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert picture.size == (photo.shape[1], photo.shape[0])


def test_recording_and_photo_make_a_video_as_long_as_the_recording(recording, photo):
    wave = recording[0][: 6 * SR]
    talk = prepare_conversation(wave, photo, num_persons=2, sample_rate=SR)
    pipe = make_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(
        image=photo,
        prompt="two astronauts talk",
        height=32,
        width=64,
        num_frames=41,
        motion_frames=5,
        num_inference_steps=1,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **talk.pipeline_kwargs(),
    ).frames[0]
    assert abs(len(frames) - len(wave) / SR * 25) <= 1
    assert np.isfinite(frames).all()


def test_a_dub_finds_the_faces_on_the_source_video(recording, photo, tmp_path):
    video = np.stack([photo] * 6)  # a 2-person video: faces are looked for on its first frame
    np.testing.assert_array_equal(conversation_picture(video), photo)
    with pytest.raises(ValueError, match="is a directory"):
        conversation_picture(tmp_path)
    wave, _ = recording
    talk = prepare_conversation(wave[: 3 * SR], video, num_persons=2, sample_rate=SR)
    assert talk.boxes.source == "faces" and len(talk.bbox) == 2
    pipe = make_tiny_pipeline(seed=0, pipeline_class=WanInfiniteTalkPipeline)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(
        video=video,
        prompt="two astronauts talk",
        height=32,
        width=64,
        num_inference_steps=1,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **talk.pipeline_kwargs(),
    ).frames[0]
    assert abs(len(frames) - 3 * 25) <= 1


# --------------------------------------------------------------------------------------------------------------------
# the command line: multitalk diarize / boxes, and the input JSON's cond_audio.conversation
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(recording, photo, tmp_path_factory):
    import soundfile as sf
    from PIL import Image

    folder = tmp_path_factory.mktemp("conversation")
    sf.write(folder / "talk.wav", recording[0][: 8 * SR], SR)
    Image.fromarray(photo).save(folder / "two.png")
    return folder


def test_diarize_writes_a_track_per_person_and_the_turns(files, tmp_path, capsys):
    import json

    import soundfile as sf

    from diffusers_multitalk.cli import main

    assert main(["diarize", str(files / "talk.wav"), "--out", str(tmp_path), "--num_persons", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("2 speaker(s)") and "speaker 2" in printed
    turns = json.loads((tmp_path / "turns.json").read_text())["turns"]
    assert {t["speaker"] for t in turns} == {1, 2} and turns[0]["speaker"] == 1
    lengths = [len(sf.read(tmp_path / f"person{n}.wav")[0]) for n in (1, 2)]
    assert lengths == [8 * SR] * 2
    assert not list(tmp_path.glob(".*.part"))


def test_boxes_prints_one_json_line_in_the_bbox_convention(files, tmp_path, capsys):
    import json

    from diffusers_multitalk.cli import main

    assert main(["boxes", str(files / "two.png"), "--preview", str(tmp_path / "p.png")]) == 0
    out, err = capsys.readouterr()
    boxes = json.loads(out.strip())
    assert list(boxes) == ["person1", "person2"] and boxes["person1"][1] < boxes["person2"][1]
    assert "2 person(s) placed" in err and (tmp_path / "p.png").is_file()
    assert main(["boxes", str(files / "nothere.png")]) == 2
    assert "boxes: error: image: " in capsys.readouterr().err


def test_input_json_conversation_is_checked_before_anything_loads(files, tmp_path):
    from diffusers_multitalk.input_json import InputJSONError, validate_input

    good = validate_input(
        {"prompt": "p", "cond_image": "two.png", "cond_audio": {"conversation": "talk.wav", "binding": [2, 1]}},
        base_dir=files,
    )
    assert good["conversation"] == dict(recording=str(files / "talk.wav"), num_persons=2, binding=[2, 1])
    assert good["cond_audio"] == {}
    bad = [
        ({"conversation": "talk.wav", "person1": "talk.wav"}, "$.cond_audio.conversation: give person1"),
        ({"conversation": "gone.wav"}, "$.cond_audio.conversation: 'gone.wav' does not exist"),
        ({"conversation": "talk.wav", "binding": [1, 3]}, "$.cond_audio.binding: give each of the 2 speakers"),
        ({"conversation": "talk.wav", "num_persons": 7}, "$.cond_audio.num_persons"),
        ({"num_persons": 2, "person1": "talk.wav"}, "$.cond_audio.num_persons: only goes with"),
        ({"Person1": "talk.wav"}, "did you mean 'person1'"),
    ]
    for block, expected in bad:
        with pytest.raises(InputJSONError, match=re.escape(expected)):
            validate_input({"prompt": "p", "cond_image": "two.png", "cond_audio": block}, base_dir=files)


def test_generate_takes_a_conversation_and_draws_the_binding(files, tmp_path, capsys):
    import json

    from diffusers_multitalk.cli import main

    spec = {"prompt": "two astronauts talk", "cond_image": str(files / "two.png")}
    spec["cond_audio"] = {"conversation": str(files / "talk.wav"), "num_persons": 2, "binding": [2, 1]}
    (tmp_path / "in.json").write_text(json.dumps(spec))
    no_conversation = dict(spec, cond_audio={"person1": str(files / "talk.wav")})
    (tmp_path / "plain.json").write_text(json.dumps(no_conversation))
    common = ["generate", "--tiny", "--sample_steps", "1", "--frame_num", "41", "--motion_frame", "5"]
    assert main([*common, "--input_json", str(tmp_path / "plain.json"), "--binding_preview", "b.png"]) == 2
    assert "--binding_preview" in capsys.readouterr().err
    status = main(
        [
            *common,
            "--input_json",
            str(tmp_path / "in.json"),
            "--binding_preview",
            str(tmp_path / "binding.png"),
            "--save_file",
            str(tmp_path / "talk"),
        ]
    )
    err = capsys.readouterr().err
    assert status == 0, err
    assert "conversation: speaker 1 (first heard at" in err and "-> person 2 (face 2 from the left" in err
    assert (tmp_path / "binding.png").is_file() and (tmp_path / "talk.mp4").is_file()


def test_the_http_api_takes_one_recording_and_says_the_binding(files, tmp_path):
    import json
    import time

    from fastapi.testclient import TestClient

    from diffusers_multitalk import server

    app = server.create_app(make_tiny_pipeline(seed=0), output_dir=tmp_path, tiny=True, ui=False)
    client = TestClient(app)
    image = ("image", ("two.png", (files / "two.png").read_bytes(), "image/png"))
    recording = ("conversation", ("talk.wav", (files / "talk.wav").read_bytes(), "audio/wav"))
    settings = {"sample_steps": 1, "frame_num": 41, "motion_frame": 5, "height": 32, "width": 64}
    form = {"prompt": "two astronauts talk", "settings": json.dumps(settings)}

    speech = ("audio", ("a.wav", (files / "talk.wav").read_bytes(), "audio/wav"))
    both = client.post("/v1/jobs", files=[image, recording, speech], data=form)
    assert both.status_code == 422 and "conversation / audio" in both.json()["detail"]
    swapped = client.post("/v1/jobs", files=[image, recording], data=dict(form, binding="[1, 1]"))
    assert swapped.status_code == 422 and swapped.json()["detail"].startswith("binding:")

    created = client.post("/v1/jobs", files=[image, recording], data=dict(form, num_persons="2", binding="[2, 1]"))
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    deadline = time.monotonic() + 900  # a bound that stops a hung job, not a speed check
    while (body := client.get(f"/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, body
        time.sleep(0.1)
    assert body["status"] == "succeeded", body
    said = "\n".join(body["warnings"])
    assert "conversation: speaker 1 (first heard at" in said and "-> person 2" in said
    assert client.get(f"/v1/jobs/{job_id}/video").status_code == 200


def test_the_web_app_previews_the_binding_and_generates_from_one_recording(files, tmp_path):
    import gradio as gr

    from diffusers_multitalk import app

    picture, lines = app.preview_binding(str(files / "two.png"), None, str(files / "talk.wav"), "2, 1", 2)
    assert picture.size == (1024, 512) and "speaker 1 (first heard at" in lines and "-> person 2" in lines
    with pytest.raises(gr.Error, match=re.escape(app.BINDING_LABEL)):
        app.preview_binding(str(files / "two.png"), None, str(files / "talk.wav"), "1, 1", 2)
    with pytest.raises(gr.Error, match=re.escape(app.CONVERSATION_LABEL)):
        app.preview_binding(str(files / "two.png"), None, None, "", 2)
    result = app.generate_video(
        make_tiny_pipeline(seed=0),
        str(files / "two.png"),
        "two astronauts talk",
        conversation=str(files / "talk.wav"),
        num_persons=2,
        num_frames=41,
        motion_frames=5,
        num_inference_steps=1,
        height=32,
        width=64,
        output_dir=tmp_path,
    )
    assert Path(result.video).is_file() and "2 recordings (para)" in result.status
    assert abs(result.num_frames - 8 * 25) <= 1
