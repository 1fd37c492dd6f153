"""Scene segmentation (InfiniteTalk's --scene_seg): shot detection on a synthetic cut, and shot-by-shot dubbing."""

import os
import subprocess

import numpy as np
import pytest


pytest.importorskip("scenedetect")
pytest.importorskip("cv2")

from diffusers_multitalk import WanInfiniteTalkPipeline  # noqa: E402
from diffusers_multitalk.pipelines.scene_split import detect_shots, merge_short_shots, open_shot  # noqa: E402
from diffusers_multitalk.pipelines.video_io import export_to_video, get_ffmpeg_exe  # noqa: E402
from diffusers_multitalk.runtime.scenes import generate_by_scene  # noqa: E402
from diffusers_multitalk.tiny import make_tiny_pipeline  # noqa: E402


def _shot(seconds, height, width, colour, seed):
    rng = np.random.RandomState(seed)
    base = np.array(colour, np.float32)[None, None, None]
    noise = rng.uniform(-12, 12, size=(int(seconds * 25), height, width, 1)).astype(np.float32)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def two_shot_video(tmp_path_factory):
    """1 s of a dim blue-grey picture, then 1 s of a bright orange one, 25 fps."""
    path = str(tmp_path_factory.mktemp("scenes") / "two_shots.mp4")
    frames = np.concatenate([_shot(1.0, 64, 96, (60, 80, 140), 0), _shot(1.0, 64, 96, (230, 150, 40), 1)])
    export_to_video(list(frames), path, fps=25)
    return path


@pytest.fixture(scope="module")
def one_shot_video(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("scenes") / "one_shot.mp4")
    export_to_video(list(_shot(1.0, 64, 96, (60, 80, 140), 0)), path, fps=25)
    return path


def test_detects_the_cut(two_shot_video):
    shots = detect_shots(two_shot_video)
    assert len(shots) == 2, shots
    assert shots[0][0] == 0.0 and abs(shots[0][1] - 1.0) <= 0.1 and shots[1][0] == shots[0][1]
    assert abs(shots[1][1] - 2.0) <= 0.1


def test_one_shot(one_shot_video):
    shots = detect_shots(one_shot_video)
    assert len(shots) == 1 and shots[0][0] == 0.0 and abs(shots[0][1] - 1.0) <= 0.1


def test_merge_short_shots():
    assert merge_short_shots([(0, 0.2), (0.2, 2), (2, 2.3), (2.3, 4)], 0.5) == [(0, 2.3), (2.3, 4)]


def test_open_shot_frames(two_shot_video):
    source = open_shot(two_shot_video, 1.0, None)
    try:
        assert source.first_frame.mean(axis=(0, 1))[0] > 180  # the orange shot
        source.frame_at(0.96)
    finally:
        source.close()


def _speech(seconds, pitch):
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * pitch * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def _call(video, seconds):
    return dict(
        video=video, audio=[(_speech(seconds, 150), 16000)], prompt="A person talks.", height=64, width=96,
        num_inference_steps=1, guidance_scale=1.0, audio_guidance_scale=1.0,
        generator=None, color_correction_strength=0.0,
    )  # fmt: skip


def _probe(path):
    import imageio_ffmpeg

    frames, seconds = imageio_ffmpeg.count_frames_and_secs(path)
    info = subprocess.run([get_ffmpeg_exe(), "-hide_banner", "-i", path], capture_output=True, text=True).stderr
    return frames, seconds, "Audio:" in info


def test_generate_by_scene(two_shot_video, tmp_path):
    import torch

    pipe = make_tiny_pipeline(0, pipeline_class=WanInfiniteTalkPipeline)
    pipe.set_progress_bar_config(disable=True)
    out_path = str(tmp_path / "dubbed.mp4")
    calls = []

    def spied(**kw):
        calls.append(kw)
        return pipe(**kw)

    class P:
        __call__ = staticmethod(spied)

    kwargs = dict(_call(two_shot_video, 2.0), generator=torch.Generator().manual_seed(0))
    output = generate_by_scene(P(), kwargs, out_path)
    assert output.video_path == out_path
    assert len(calls) == 2
    assert [len(c["audio"][0][0]) for c in calls] == [16000, 16000]
    frames, _, has_audio = _probe(out_path)
    assert abs(frames - 50) <= 2 and has_audio
    assert os.listdir(tmp_path) == ["dubbed.mp4"]


def test_one_shot_is_a_plain_call(one_shot_video, tmp_path):
    import torch

    pipe = make_tiny_pipeline(0, pipeline_class=WanInfiniteTalkPipeline)
    pipe.set_progress_bar_config(disable=True)
    a, b = str(tmp_path / "scene.mp4"), str(tmp_path / "plain.mp4")
    generate_by_scene(pipe, dict(_call(one_shot_video, 1.0), generator=torch.Generator().manual_seed(0)), a)
    pipe(**dict(_call(one_shot_video, 1.0), generator=torch.Generator().manual_seed(0)), output_path=b)
    from diffusers_multitalk.pipelines.video_input import open_source_video

    def read(path):
        source = open_source_video(path)
        out = [source.first_frame]
        out += list(source._frames)
        source.close()
        return np.stack(out)

    assert np.array_equal(read(a), read(b))
    assert sorted(os.listdir(tmp_path)) == ["plain.mp4", "scene.mp4"]


def test_failure_leaves_nothing(two_shot_video, tmp_path):
    pipe = make_tiny_pipeline(0, pipeline_class=WanInfiniteTalkPipeline)
    pipe.set_progress_bar_config(disable=True)
    count = {"n": 0}

    def failing(**kw):
        count["n"] += 1
        if count["n"] == 2:
            raise KeyboardInterrupt
        return pipe(**kw)

    class P:
        __call__ = staticmethod(failing)

    with pytest.raises(KeyboardInterrupt):
        generate_by_scene(P(), _call(two_shot_video, 2.0), str(tmp_path / "dubbed.mp4"))
    assert os.listdir(tmp_path) == []
