"""The web app's live video (issue 25): the Generate button's handler yields each decoded chunk (the live stream's
newest segment as an mp4) while the video is made, then the whole video; the job is held between chunks so that every
chunk but the last is seen before the next one starts (no timing assumed); the live folder is gone afterwards, and a
failing generation still raises its error and leaves no live folder."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import gradio as gr
import pytest

from diffusers_multitalk import app, make_tiny_pipeline
from diffusers_multitalk.pipelines.video_io import get_ffmpeg_exe


ASSETS = Path(__file__).resolve().parents[1] / "examples" / "assets"
TIMEOUT = 900  # a bound that stops a hung run, not a speed check


def frames_in(path) -> int:
    raw = subprocess.run([get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-fps_mode", "passthrough", "-f", "rawvideo",
                          "-pix_fmt", "gray", "-"],
                         capture_output=True, check=True).stdout  # fmt: skip
    return len(raw) // (32 * 48)


def has_audio(path) -> bool:
    log = subprocess.run([get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    return "Audio: aac" in log


@pytest.fixture
def form_and_demo(tmp_path):
    pipe = make_tiny_pipeline(seed=0)
    demo = app.build_app(pipe, output_dir=tmp_path, tiny=True)
    components = {getattr(block, "label", None): block for block in demo.blocks.values()}
    form = {c: c.value for c in components.values() if isinstance(c, gr.components.Component) and hasattr(c, "value")}
    values = {
        app.IMAGE_LABEL: str(ASSETS / "two_people.png"), app.PROMPT_LABEL: "One person talks.", app.PERSONS_LABEL: 1,
        app.audio_label(1): str(ASSETS / "speaker1.wav"), app.audio_label(2): None, "Frames per chunk (4n+1)": 9,
        "Motion frames (streaming)": 5, "Max frames (0: as long as the speech)": 17, "Mode": "auto",
        "Sampling steps": 1, "Text guidance": 1.0, "Seed (-1: random)": 3, "Height": 32, "Width": 48,
    }  # fmt: skip
    form.update({components[label]: value for label, value in values.items()})
    return pipe, demo, form


def test_each_chunk_plays_while_the_video_is_made(form_and_demo, tmp_path, monkeypatch):
    pipe, demo, form = form_and_demo
    shown = [threading.Event() for _ in range(3)]
    original = pipe.denoise_chunk

    def held(latents, conditioning, chunk, *args, **kwargs):  # chunk k waits until chunk k-1 has been shown
        if chunk.index:
            assert shown[chunk.index - 1].wait(TIMEOUT), "the handler never showed the chunk before"
        return original(latents, conditioning, chunk, *args, **kwargs)

    monkeypatch.setattr(pipe, "denoise_chunk", held)
    answers = []
    for video, status in demo.generate_live_fn(form):
        answers.append((video, status, frames_in(video), has_audio(video)))
        if status.startswith("Generating"):
            shown[len(answers) - 1].set()
    previews, final = answers[:-1], answers[-1]
    assert len(previews) >= 2  # chunks 1 and 2 for sure; the last one may finish with the call
    assert [p[2] for p in previews[:2]] == [9, 4] and all(p[3] for p in previews)
    assert previews[0][1].startswith("Generating: chunk 1 is ready")
    assert final[2] == 17 and final[3] and "Saved" in final[1] and final[0].endswith(".mp4")
    assert not (tmp_path / "live").exists() or not any((tmp_path / "live").iterdir())


def test_a_failing_generation_raises_and_leaves_no_live_folder(form_and_demo, tmp_path, monkeypatch):
    pipe, demo, form = form_and_demo
    original, calls = pipe.decode_latents, []

    def fail_on_the_second_chunk(latents):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("decoder broke")
        return original(latents)

    monkeypatch.setattr(pipe, "decode_latents", fail_on_the_second_chunk)
    with pytest.raises(RuntimeError, match="decoder broke"):
        list(demo.generate_live_fn(form))
    assert not (tmp_path / "live").exists() or not any((tmp_path / "live").iterdir())
    assert not list(tmp_path.rglob("*.mp4"))
