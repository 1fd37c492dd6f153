"""The web app (`diffusers_multitalk.app`, `multitalk serve`) on the CPU with the tiny model: the Blocks build, a
generation writes an mp4 with sound (from recordings and from an espeak-ng script), bad input raises `gr.Error`
naming the field before the model is touched and leaves no file behind, and `serve` hands its flags to the server.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import soundfile as sf

import diffusers_multitalk.cli.parser  # noqa: F401 - cli.parser in the tests
from diffusers_multitalk import DEFAULT_NEGATIVE_PROMPT, app, cli, runtime
from diffusers_multitalk.cli import main


ASSETS = Path(__file__).resolve().parents[1] / "examples" / "assets"
IMAGE = ASSETS / "two_people.png"  # 832x480 (w x h)
SPEAKERS = [str(ASSETS / "speaker1.wav"), str(ASSETS / "speaker2.wav")]
BOXES = ["30, 40, 470, 392", "30 440 470 792"]  # the bundled example's boxes
# Small and fast: one 5-frame chunk, one step, two guidance passes instead of three.
FAST = dict(mode="clip", num_frames=5, num_inference_steps=1, text_guidance_scale=1.0, height=64, width=112)


@pytest.fixture(scope="module")
def tiny_pipe():
    from diffusers_multitalk import make_tiny_pipeline

    return make_tiny_pipeline(seed=0)


def _probe(path: Path) -> tuple[list[str], int]:
    """The stream lines ffmpeg reports for `path`, and the number of video frames it decodes."""
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    info = subprocess.run([exe, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    streams = [line.strip() for line in info.splitlines() if "Stream #" in line]
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    return streams, frames


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _never_load():
    raise AssertionError("the model was loaded although the input was invalid")


# ----------------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------------
def test_build_app_from_a_pipeline_and_from_serve_arguments(tiny_pipe, tmp_path):
    demo = app.build_app(tiny_pipe, output_dir=tmp_path)
    assert isinstance(demo, gr.Blocks)
    components = {getattr(block, "label", None): block for block in demo.blocks.values()}
    for person in range(1, app.MAX_PERSONS + 1):
        for label in (app.audio_label(person), app.voice_label(person), app.bbox_label(person)):
            assert label in components, label
    assert app.audio_label(app.MAX_PERSONS + 1) not in components
    assert components["Negative prompt"].value == DEFAULT_NEGATIVE_PROMPT
    persons = components[app.PERSONS_LABEL]
    assert (persons.minimum, persons.maximum, persons.value) == (1, app.MAX_PERSONS, app.DEFAULT_PERSONS)
    assert components[app.audio_label(2)].parent.visible and not components[app.audio_label(3)].parent.visible
    assert not any(tmp_path.iterdir()), "building the app wrote files"

    # from `serve`'s arguments: checked at once, loaded lazily (building loads no model)
    args = cli.build_parser().parse_args(["serve", "--tiny", "--use_teacache", "--teacache_thresh", "0.3"])
    demo = app.build_app(runtime.ServeOptions.from_fields(args), output_dir=tmp_path)
    components = {getattr(block, "label", None): block for block in demo.blocks.values()}
    assert components["TeaCache"].value is True and components["TeaCache threshold"].value == 0.3
    with pytest.raises(runtime.UserError, match="wav2vec_dir: required with ckpt_dir"):
        app.build_app(
            runtime.ServeOptions.from_fields(cli.build_parser().parse_args(["serve", "--ckpt_dir", str(tmp_path)]))
        )


# ----------------------------------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------------------------------
def test_generate_video_from_recordings_writes_mp4_with_audio(tiny_pipe, tmp_path):
    out = tmp_path / "videos"
    result = app.generate_video(
        tiny_pipe, str(IMAGE), "Two cartoon friends chat.", audio=SPEAKERS, bboxes=BOXES, seed=7, output_dir=out, **FAST
    )
    video = Path(result.video)
    assert video.parent == out and video.suffix == ".mp4" and _files(out) == [video.name]
    streams, frames = _probe(video)
    assert any("Video: h264" in s and "112x64" in s for s in streams), streams
    assert any("Audio: aac" in s for s in streams), streams
    assert frames == FAST["num_frames"] == result.num_frames
    assert result.seed == 7 and result.tts_engine is None
    assert "5 frames" in result.status and "seed 7" in result.status and "2 recordings (add)" in result.status


def test_generate_video_from_a_tts_script_names_the_engine(tiny_pipe, tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    result = app.generate_video(
        tiny_pipe,
        str(IMAGE),
        "Two friends chat.",
        tts_text="(s1) Do you know MultiTalk? (s2) Yes, it makes people talk!",
        tts_voices=["", None],
        tts_engine="espeak-ng",
        output_dir=tmp_path,
        seed=-1,
        use_teacache=True,
        **FAST,
    )
    assert result.tts_engine == "espeak-ng" and "TTS with espeak-ng" in result.status
    assert 0 <= result.seed <= 99_999_999 and f"seed {result.seed}" in result.status
    streams, frames = _probe(Path(result.video))
    assert any("Audio: aac" in s for s in streams) and frames == FAST["num_frames"], streams


def test_the_form_handler_maps_fields_and_persons(tiny_pipe, tmp_path):
    """The UI's click handler: the Persons slider decides how many of the four slots count."""
    demo = app.build_app(tiny_pipe, output_dir=tmp_path, tiny=True)
    components = {getattr(block, "label", None): block for block in demo.blocks.values()}
    form = {c: c.value for c in components.values() if isinstance(c, gr.components.Component) and hasattr(c, "value")}
    values = {
        app.IMAGE_LABEL: str(IMAGE),
        app.PROMPT_LABEL: "One person talks.",
        app.PERSONS_LABEL: 1,
        app.audio_label(1): SPEAKERS[0],
        app.audio_label(2): None,  # slot 2 is hidden: not a missing recording
        "Frames per chunk (4n+1)": 5,
        "Mode": "clip",
        "Sampling steps": 1,
        "Text guidance": 1.0,
        "Seed (-1: random)": 3,
    }
    form.update({components[label]: value for label, value in values.items()})
    video, status = demo.generate_fn(form)
    _, frames = _probe(Path(video))
    assert frames == 5 and "1 recording (add)" in status and "seed 3" in status
    # tiny=True without a size: the bucket / 8, as `multitalk generate --tiny`
    height, width = runtime.tiny_size((480, 832), "multitalk-480")
    assert f"{width}x{height}" in status


# ----------------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "inputs, message",
    [
        (dict(image=None, audio=SPEAKERS), "Reference image: missing"),
        (dict(audio=[SPEAKERS[0], None]), "Person 2 speech: no audio"),
        (dict(audio=SPEAKERS, num_persons=3), "Person 3 speech: no audio"),
        (dict(audio=SPEAKERS * 3), "Persons: 6"),
        (dict(audio=SPEAKERS, bboxes=["30, 40, 470", None]), "Person 1 box: expected four numbers"),
        (dict(audio=SPEAKERS, bboxes=[BOXES[0], ""]), "Person 2 box: empty"),
        (dict(tts_text="Hello (s1) there", tts_voices=["", ""]), r"TTS script: .*words before its first speaker tag"),
        (dict(tts_text="(s1) Hi. (s3) Hello.", tts_voices=["", ""]), r"TTS script: \(s3\) speaks, but Persons is 2"),
        (dict(tts_text="(s1) Hi there.", tts_voices=["", ""]), r"TTS script: person 2 has no turn"),
        (dict(tts_text="   ", tts_voices=[""]), "TTS script: empty"),
    ],
    ids=[
        "no image",
        "no audio person 2",
        "no audio person 3",
        "too many persons",
        "short box",
        "missing box",
        "text before tag",
        "unknown speaker",
        "mute speaker",
        "empty script",
    ],
)
def test_bad_input_is_a_gr_error_naming_the_field_before_loading(inputs, message, tmp_path):
    inputs = {"image": str(IMAGE), **inputs}
    with pytest.raises(gr.Error, match=message):
        app.generate_video(_never_load, prompt="Two friends chat.", output_dir=tmp_path, **inputs, **FAST)
    assert _files(tmp_path) == []


def test_pipeline_errors_are_gr_errors_and_leave_no_file(tiny_pipe, tmp_path):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(32000, np.float32), 16000)
    out = tmp_path / "videos"
    with pytest.raises(gr.Error, match="Person 2 speech: the track is silent"):
        app.generate_video(
            tiny_pipe, str(IMAGE), "Two friends chat.", audio=[SPEAKERS[0], str(silent)], output_dir=out, **FAST
        )
    with pytest.raises(gr.Error, match=r"Frames per chunk \(4n\+1\) = 6: must be 4n\+1"):
        app.generate_video(
            tiny_pipe, str(IMAGE), "Two friends chat.", audio=SPEAKERS, output_dir=out, **{**FAST, "num_frames": 6}
        )
    with pytest.raises(gr.Error, match=r"TTS script: .*no voice"):
        app.generate_video(
            tiny_pipe,
            str(IMAGE),
            "Two friends chat.",
            tts_text="(s1) Hi. (s2) Hello.",
            tts_voices=["xx-nonexistent", ""],
            tts_engine="espeak-ng",
            output_dir=out,
            **FAST,
        )
    assert _files(out) == []


# ----------------------------------------------------------------------------------------------------------------
# multitalk serve
# ----------------------------------------------------------------------------------------------------------------
def test_serve_parses_flags_and_calls_launch(monkeypatch):
    launched = []
    monkeypatch.setattr(app, "launch", lambda args: launched.append(args))
    assert main(["serve", "--tiny", "--host", "0.0.0.0", "--port", "0", "--share", "--dtype", "float32"]) == 0
    (args,) = launched
    assert (args.host, args.port, args.share, args.tiny, args.dtype) == ("0.0.0.0", 0, True, True, "float32")
    assert isinstance(args, runtime.ServeOptions) and args.output_dir == "outputs/app"  # typed, not the Namespace
    # generate's model flags, with generate's defaults
    generate = cli.build_parser().parse_args(["generate"])
    for flag in cli.parser.SERVE_MODEL_FLAGS:
        name = flag.lstrip("-")
        if hasattr(generate, name) and name not in ("tiny", "dtype"):
            assert getattr(args, name) == getattr(generate, name), flag
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--tiny", "--model", "org/repo"])  # exclusive, as in generate


def test_launch_loads_then_serves_on_host_and_port(monkeypatch, tiny_pipe, tmp_path):
    from diffusers_multitalk import tiny

    loads, served = [], []
    monkeypatch.setattr(tiny, "make_tiny_pipeline", lambda *a, **k: loads.append(1) or tiny_pipe)
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: served.append((self, kwargs)))
    args = cli.build_parser().parse_args(
        ["serve", "--tiny", "--host", "127.0.0.1", "--port", "0", "--output_dir", str(tmp_path / "videos")]
    )
    app.launch(runtime.ServeOptions.from_fields(args))
    assert loads == [1], "the model is loaded before the server starts"
    ((demo, kwargs),) = served
    assert isinstance(demo, gr.Blocks)
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["server_port"] == 0 and kwargs["share"] is False
    assert kwargs["allowed_paths"] == [str((tmp_path / "videos").resolve())]


def test_serve_without_gradio_says_how_to_install(monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else find_spec(name, *a))
    assert main(["serve", "--tiny"]) == 1
    assert 'pip install "diffusers-multitalk[app]"' in capsys.readouterr().err


def test_the_app_dubs_a_video_with_infinitetalk(tmp_path):
    """ "Dub a video": an InfiniteTalk pipeline, the bundled source clip and a new recording -> an mp4 as long as the
    recording, with it as the sound; a MultiTalk pipeline says what is needed instead."""
    from diffusers_multitalk.pipelines.pipeline_wan_infinitetalk import WanInfiniteTalkPipeline
    from diffusers_multitalk.tiny import make_tiny_pipeline

    pipe = make_tiny_pipeline(0, pipeline_class=WanInfiniteTalkPipeline)
    pipe.set_progress_bar_config(disable=True)
    source = Path(__file__).resolve().parents[1] / "examples" / "assets" / "source_clip.mp4"
    speech, rate = sf.read(SPEAKERS[0], dtype="float32")
    sf.write(tmp_path / "new_voice.wav", speech[: int(0.5 * rate)], rate)
    result = app.generate_video(
        pipe,
        None,
        "A person talks.",
        video=str(source),
        audio=[str(tmp_path / "new_voice.wav")],
        output_dir=tmp_path / "out",
        tiny=True,
        num_inference_steps=1,
        text_guidance_scale=1.0,
        num_frames=9,
        motion_frames=5,
    )
    streams, frames = _probe(Path(result.video))
    assert any("Audio: aac" in s for s in streams) and frames == int(0.5 * 25), (streams, frames)
    with pytest.raises(gr.Error, match="dubbing needs InfiniteTalk"):
        app.generate_video(make_tiny_pipeline(0), None, "A person talks.", video=str(source),
                           audio=[str(tmp_path / "new_voice.wav")], output_dir=tmp_path / "x", tiny=True)  # fmt: skip
    with pytest.raises(gr.Error, match="not both"):
        app.generate_video(pipe, str(IMAGE), "p", video=str(source), audio=[SPEAKERS[0]], output_dir=tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
