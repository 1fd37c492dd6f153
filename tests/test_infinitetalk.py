"""WanInfiniteTalkPipeline: the reference's frames on tiny weights (tests/fixtures/infinitetalk_fullgen), source-video
input and bad input."""

import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusers_multitalk import WanInfiniteTalkPipeline
from diffusers_multitalk.pipelines.video_input import frame_index_at, open_source_video
from diffusers_multitalk.pipelines.video_io import get_ffmpeg_exe
from diffusers_multitalk.tiny import TINY_AUDIO_CHANNELS, TINY_AUDIO_LAYERS, make_tiny_components
from diffusers_multitalk.variants import get_size


FIXTURES = Path(__file__).parent / "fixtures"
FULLGEN = FIXTURES / "infinitetalk_fullgen"
# Measured: 1.1e-5 without colour correction, up to 2.7e-4 with it (already 1.5e-4 in the first chunk, not growing
# over the chunks): our LAB matching (torch, float64) against the reference's (skimage, float32).
TOLERANCE = 1e-3

CASES = {
    # name: (source, persons, mode, steps, shift, text scale, audio scale, apg, colour correction), as MANIFEST.md
    "i2v_one_stream_3pass": ("image", 1, "streaming", 2, 7.0, 5.0, 4.0, False, 1.0),
    "v2v_one_stream_3pass": ("video", 1, "streaming", 2, 7.0, 5.0, 4.0, False, 1.0),
    "v2v_two_stream_2pass_apg": ("video", 2, "streaming", 2, 2.0, 1.0, 2.0, True, 0.0),
    "v2v_one_clip_3pass": ("video", 1, "clip", 3, 7.0, 5.0, 4.0, False, 1.0),
}


def _with_propagation(caplog, fn):
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            return fn()
    finally:
        diffusers_logging.disable_propagation()


@pytest.fixture(scope="module")
def reference_pipe():
    """The components the reference ran with: the tiny MultiTalk DiT, the fixture's VAE and CLIP."""
    from diffusers import AutoencoderKLWan
    from transformers import CLIPImageProcessor, CLIPVisionModel
    from transformers.utils import logging as transformers_logging

    from diffusers_multitalk.models.transformer_multitalk import MultiTalkTransformer3DModel

    components = make_tiny_components(0)
    components["transformer"] = MultiTalkTransformer3DModel.from_original(
        FIXTURES / "dit_tiny_weights", torch_dtype=torch.float32
    )
    components["vae"] = AutoencoderKLWan.from_pretrained(FULLGEN / "vae").eval()
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the 1-layer CLIP lacks its unused last block: not an error here
    try:
        components["image_encoder"] = CLIPVisionModel.from_pretrained(FULLGEN / "image_encoder").eval()
    finally:
        transformers_logging.set_verbosity(verbosity)
    components["image_processor"] = CLIPImageProcessor.from_pretrained(FULLGEN / "image_processor")
    pipe = WanInfiniteTalkPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pad_text(states, text_len=16):
    return torch.cat([states, states.new_zeros(text_len - len(states), states.shape[1])])[None]


@pytest.mark.parametrize("name", list(CASES))
def test_reference_frames(reference_pipe, name):
    source, persons, mode, steps, shift, text_scale, audio_scale, apg, color = CASES[name]
    inputs = load_file(FULLGEN / "inputs.safetensors")
    expected = load_file(FULLGEN / "outputs.safetensors")[name]
    source_kwargs = (
        {"image": str(FULLGEN / "image.png")} if source == "image" else {"video": str(FULLGEN / "source.mp4")}
    )
    audio = [inputs[f"audio_emb_person{p + 1}"] for p in range(persons)]
    out = reference_pipe(
        **source_kwargs,
        audio=audio,
        prompt_embeds=_pad_text(inputs["context"]),
        negative_prompt_embeds=_pad_text(inputs["context_null"]),
        height=64,
        width=96,
        num_frames=13,
        motion_frames=5,
        mode=mode,
        num_inference_steps=steps,
        shift=shift,
        guidance_scale=text_scale,
        audio_guidance_scale=audio_scale,
        use_apg=apg,
        color_correction_strength=color,
        generator=torch.Generator().manual_seed(4242),
        output_type="pt",
    )
    frames = out.frames[0].permute(1, 0, 2, 3) * 2 - 1  # [T, 3, H, W] in [0, 1] -> the reference's [3, T, H, W]
    assert frames.shape == expected.shape
    error = (frames - expected).abs().max().item()
    print(f"{name}: max abs error {error:.2e}")
    assert error < TOLERANCE, f"{name}: max abs error {error:.2e}"


def test_fixture_video_decodes_exactly():
    source = open_source_video(FULLGEN / "source.mp4")
    frames = np.load(FULLGEN / "source_frames.npy")
    assert source.fps == 25 and source.size == frames.shape[1:3]
    for index in range(len(frames)):
        np.testing.assert_array_equal(source.frame_at(index / 25), frames[index])
    source.close()


# ------------------------------------------------------------------------------------------------------------------
# Source frames by time
# ------------------------------------------------------------------------------------------------------------------


def _write_video(path, frames, fps, codec_args):
    """Frames [F, H, W, 3] uint8 to a video file with the bundled ffmpeg."""
    height, width = frames.shape[1:3]
    command = [
        get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
        "-r", str(fps), "-i", "-", *codec_args, str(path),
    ]  # fmt: skip
    subprocess.run(command, input=frames.tobytes(), check=True)


def _numbered_frames(count, height=32, width=48):
    """Frame k is a flat grey of level 6k (k < 43): its index survives lossy coding."""
    return np.stack([np.full((height, width, 3), 6 * k, dtype=np.uint8) for k in range(count)])


def test_frame_index_at_is_the_frame_on_screen():
    assert [frame_index_at(s / 25, 25) for s in range(5)] == [0, 1, 2, 3, 4]
    assert [frame_index_at(s / 25, 30) for s in (0, 8, 16, 24, 25)] == [0, 9, 19, 28, 30]
    assert [frame_index_at(s / 25, 24) for s in (0, 8, 16, 25)] == [0, 7, 15, 24]


@pytest.mark.parametrize("fps", [24, 30])
def test_a_24_or_30_fps_file_stays_in_step_with_the_audio(tmp_path, fps):
    frames = _numbered_frames(30)
    path = tmp_path / f"source_{fps}.mp4"
    _write_video(path, frames, fps, ["-c:v", "libx264rgb", "-qp", "0"])
    source = open_source_video(path)
    assert source.fps == fps
    for start in (0, 8, 16, 24):  # chunk starts at 25 fps
        expected = frames[int(start * fps // 25)]
        np.testing.assert_array_equal(source.frame_at(start / 25), expected)


def test_av1_source(tmp_path):
    frames = _numbered_frames(12, 64, 64)
    path = tmp_path / "source_av1.mkv"
    _write_video(path, frames, 25, ["-c:v", "libaom-av1", "-crf", "10", "-cpu-used", "8", "-pix_fmt", "yuv444p"])
    source = open_source_video(path)
    levels = [int(np.round(source.frame_at(k / 25).mean())) for k in range(12)]
    assert all(abs(level - 6 * k) <= 2 for k, level in enumerate(levels)), levels


def test_the_last_frame_is_held_with_a_warning(caplog):
    frames = _numbered_frames(3)
    source = open_source_video(frames)
    held = _with_propagation(caplog, lambda: [source.frame_at(k / 25) for k in range(6)])
    assert [int(f[0, 0, 0]) for f in held] == [0, 6, 12, 12, 12, 12]
    assert source.held_last_frame
    assert "last frame is held from 0.12 s on" in caplog.text
    assert caplog.text.count("last frame is held") == 1


def test_a_dub_longer_than_its_video_is_said_once_before_the_chunks(caplog):
    source = open_source_video(_numbered_frames(3))  # 0.12 s at 25 fps
    _with_propagation(caplog, lambda: source.warn_if_outlasted(0.12))  # as long as the video: nothing to say
    assert "last frame is held" not in caplog.text
    _with_propagation(caplog, lambda: [source.warn_if_outlasted(0.5), *(source.frame_at(k / 25) for k in range(6))])
    assert "the dub runs 0.50 s, the video 0.12 s, so its last frame is held from 0.12 s on" in caplog.text
    assert caplog.text.count("last frame is held") == 1  # the chunks that read past the end say nothing more


def test_array_float_and_list_sources_agree():
    frames = _numbered_frames(4)
    as_list = open_source_video([f for f in frames])
    as_float = open_source_video(frames.astype(np.float32) / 255)
    for k in range(4):
        np.testing.assert_array_equal(as_list.frame_at(k / 25), frames[k])
        np.testing.assert_array_equal(as_float.frame_at(k / 25), frames[k])


# ------------------------------------------------------------------------------------------------------------------
# The pipeline on the tiny random components
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe():
    pipe = WanInfiniteTalkPipeline(**make_tiny_components(0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def embedding(frames, seed=0):
    return torch.randn(frames, TINY_AUDIO_LAYERS, TINY_AUDIO_CHANNELS, generator=torch.Generator().manual_seed(seed))


def run(pipe, audio, **kwargs):
    args = dict(
        prompt_embeds=torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1)),
        negative_prompt_embeds=torch.zeros(1, 8, 32),
        height=64, width=96, num_frames=9, motion_frames=5, num_inference_steps=1,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    args.update(kwargs)
    return pipe(audio=audio, **args)


def test_plan():
    plan_infinitetalk_video = WanInfiniteTalkPipeline.plan_video  # MultiTalk's plan: the loop is shared
    assert plan_infinitetalk_video(40, 13, 5) == (13, 5, 40)  # the fixtures: 13 + 4 x 8 frames, cut to 40
    assert plan_infinitetalk_video(14, 13, 5) == (13, 2, 14)
    assert plan_infinitetalk_video(13, 13, 5) == (13, 1, 13)
    assert plan_infinitetalk_video(7, 81, 9) == (9, 1, 7)
    assert plan_infinitetalk_video(2, 81, 9) == (5, 1, 2)
    assert plan_infinitetalk_video(1500, 81, 9, max_frames=1000) == (81, 14, 1000)
    assert plan_infinitetalk_video(1500, 81, 9, mode="clip") == (81, 1, 81)
    assert plan_infinitetalk_video(40, 13, 5, mode="clip") == (13, 1, 13)


@pytest.mark.parametrize(
    "audio_frames, mode, expected",
    [(20, None, 20), (20, "streaming", 20), (20, "clip", 9), (7, None, 7), (3, "clip", 3)],
)
def test_video_as_long_as_the_audio(pipe, audio_frames, mode, expected):
    video = _numbered_frames(30, 64, 96)
    out = run(pipe, [embedding(audio_frames)], video=video, mode=mode)
    assert out.frames.shape == (1, expected, 64, 96, 3)


def test_each_chunk_is_conditioned_on_the_source_frame_at_its_start_time(pipe, monkeypatch):
    # A 30 fps source: chunks start at audio frames 0, 4, 8, 12 (9-frame chunks, 5 motion frames), i.e. at
    # 0, 0.16, 0.32, 0.48 s, where a 30 fps video shows frames 0, 4, 9, 14.
    video = _numbered_frames(40, 64, 96)
    seen = []
    original = pipe.prepare_source_frame
    monkeypatch.setattr(
        pipe, "prepare_source_frame", lambda frame, h, w: seen.append(int(frame[0, 0, 0]) // 6) or original(frame, h, w)
    )
    out = run(pipe, [embedding(20)], video=video, video_fps=30, mode="streaming")
    assert out.frames.shape[1] == 20
    assert seen == [0, 4, 9, 14]


def test_image_to_video_holds_the_image_without_a_warning(pipe, monkeypatch, caplog):
    image = _numbered_frames(3, 64, 96)[2]
    seen = []
    original = pipe.prepare_source_frame
    monkeypatch.setattr(
        pipe, "prepare_source_frame", lambda frame, h, w: seen.append(int(frame[0, 0, 0])) or original(frame, h, w)
    )
    out = _with_propagation(caplog, lambda: run(pipe, [embedding(20)], image=image))
    assert out.frames.shape[1] == 20 and seen == [12] * 4
    assert "last frame is held" not in caplog.text


def test_motion_latents_are_clean_before_every_forward(pipe, monkeypatch):
    """Chunk 1's leading latent frame is the clean latent of the source frame; later chunks' leading latents are
    the clean latents of the previous chunk's last motion frames, at every forward pass."""
    video = _numbered_frames(30, 64, 96)
    seen = []
    forward = pipe.transformer.forward

    def spy(hidden_states, *args, **kwargs):
        seen.append(hidden_states[:, :16].clone())
        return forward(hidden_states, *args, **kwargs)

    encoded = []
    condition = pipe.prepare_chunk_conditioning

    def record(*args, **kwargs):
        conditioning = condition(*args, **kwargs)
        encoded.append(conditioning.motion_latents)
        return conditioning

    monkeypatch.setattr(pipe, "prepare_chunk_conditioning", record)
    monkeypatch.setattr(pipe.transformer, "forward", spy)
    run(pipe, [embedding(13)], video=video, mode="streaming", num_inference_steps=2, guidance_scale=1.0)
    assert len(encoded) == 2 and encoded[0].shape[2] == 1 and encoded[1].shape[2] == 2  # 1 frame, then 5 frames
    # two passes per step, two steps per chunk
    for index, latent in enumerate(seen):
        motion = encoded[index // 4]
        torch.testing.assert_close(latent[:, :, : motion.shape[2]], motion, rtol=0, atol=0)
    assert not torch.equal(seen[0][:, :, 1:], seen[2][:, :, 1:])  # the rest is denoised


# ------------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------------


def test_video_without_frames(pipe):
    with pytest.raises(ValueError, match="`video` .* has no frames"):
        run(pipe, [embedding(9)], video=np.zeros((0, 64, 96, 3), np.uint8))
    with pytest.raises(ValueError, match="`video` .* has no frames"):
        run(pipe, [embedding(9)], video=[])


def test_audio_only_file_as_video(pipe, tmp_path):
    import soundfile as sf

    path = tmp_path / "speech.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    with pytest.raises(ValueError, match="`video` .*(cannot be read|has no frames)"):
        run(pipe, [embedding(9)], video=str(path))


def test_unreadable_video(pipe, tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"not a video at all" * 100)
    with pytest.raises(ValueError, match="`video` .* cannot be read by ffmpeg"):
        run(pipe, [embedding(9)], video=str(path))
    with pytest.raises(ValueError, match="`video` file .* does not exist"):
        run(pipe, [embedding(9)], video=str(tmp_path / "missing.mp4"))


def test_image_and_video_together_or_neither(pipe):
    with pytest.raises(ValueError, match="exactly one of them"):
        run(pipe, [embedding(9)], video=_numbered_frames(3, 64, 96), image=_numbered_frames(1, 64, 96)[0])
    with pytest.raises(ValueError, match="exactly one of them"):
        run(pipe, [embedding(9)])


def test_a_source_of_another_size_is_bucketed(pipe, monkeypatch):
    # 100 x 200 (h x w; aspect 0.5) and frames of another size later: every frame is resized to cover 64 x 96 and
    # centre-cropped, as images are.
    video = [np.full((100, 200, 3), 40, np.uint8), np.full((90, 90, 3), 80, np.uint8)] * 10
    shapes = []
    original = pipe.prepare_source_frame
    monkeypatch.setattr(
        pipe, "prepare_source_frame", lambda f, h, w: shapes.append(tuple(original(f, h, w).shape)) or original(f, h, w)
    )
    out = run(pipe, [embedding(13)], video=video, mode="streaming")
    assert out.frames.shape == (1, 13, 64, 96, 3)
    assert shapes == [(1, 3, 1, 64, 96)] * 2


def test_a_video_smaller_than_the_bucket_is_refused_unless_upscaling_is_allowed(pipe):
    video = _numbered_frames(10, 32, 48)
    with pytest.raises(ValueError, match="The `video` is 48x32 .* smaller than the 96x64 target.*allow_upscale=True"):
        run(pipe, [embedding(9)], video=video)
    assert run(pipe, [embedding(9)], video=video, allow_upscale=True).frames.shape == (1, 9, 64, 96, 3)


def test_two_persons_on_a_video_without_boxes_take_the_halves_and_say_so(pipe, caplog):
    video = _numbered_frames(20, 64, 96)
    out = _with_propagation(caplog, lambda: run(pipe, [embedding(9), embedding(9, 1)], video=video))
    assert out.frames.shape[1] == 9
    assert "2 persons on a video without `bbox`" in caplog.text
    caplog.clear()
    _with_propagation(
        caplog, lambda: run(pipe, [embedding(9), embedding(9, 1)], video=video, bbox=[[8, 4, 56, 44], [8, 52, 56, 92]])
    )
    assert "without `bbox`" not in caplog.text


def test_bad_mode_and_max_frames(pipe):
    with pytest.raises(ValueError, match="`mode`"):
        run(pipe, [embedding(9)], video=_numbered_frames(3, 64, 96), mode="auto-ish")
    with pytest.raises(ValueError, match="`max_frames`"):
        run(pipe, [embedding(9)], video=_numbered_frames(3, 64, 96), max_frames=0)


# ------------------------------------------------------------------------------------------------------------------
# The shared loop's behaviour: the whole audio by default, streamed to an mp4 with the new audio
# ------------------------------------------------------------------------------------------------------------------


def _speech(seconds, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def _audio_seconds(path):
    raw = subprocess.run(
        [get_ffmpeg_exe(), "-loglevel", "error", "-i", str(path), "-map", "0:a", "-f", "f32le", "-ac", "1", "-ar", "16000", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return len(raw) / 4 / 16000


def test_output_path_writes_the_dub_with_the_new_audio(pipe, tmp_path):
    import imageio_ffmpeg

    # A 30 fps source with its own (different) sound; the dub carries only the new 0.8 s speech.
    frames = _numbered_frames(40, 64, 96)
    source = tmp_path / "source.mp4"
    _write_video(source, frames, 30, ["-c:v", "libx264rgb", "-qp", "0"])
    audio = [(_speech(0.8), 16000)]
    in_memory = run(pipe, audio, video=str(source), prompt_embeds=None, prompt="a person talks")
    path = tmp_path / "dub.mp4"
    out = run(pipe, audio, video=str(source), prompt_embeds=None, prompt="a person talks", output_path=path)
    assert out.frames is None and out.video_path == str(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dub.mp4", "source.mp4"], "no part file may remain"
    num_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert num_frames == in_memory.frames.shape[1] == 20
    assert abs(_audio_seconds(path) - 0.8) < 0.1
    np.testing.assert_allclose(out.audio, in_memory.audio)


def test_teacache_with_infinitetalk_sizes_skips_and_restarts_every_chunk(pipe):
    video = _numbered_frames(20, 64, 96)
    calls = []
    hook = pipe.transformer.blocks[1].ffn.register_forward_pre_hook(lambda mod, args: calls.append(1))
    try:
        kwargs = dict(video=video, num_inference_steps=8, guidance_scale=1.0, output_type="latent")
        uncached = run(pipe, [embedding(9)], **kwargs).frames
        uncached_calls, calls[:] = len(calls), []
        size = get_size("infinitetalk-480")  # the registry gives the hooks a size's coefficients
        pipe.transformer.enable_teacache(threshold=1e12, coefficients=size.teacache_coefficients)
        one_chunk = run(pipe, [embedding(9)], **kwargs).frames
        one_chunk_calls, calls[:] = len(calls), []
        run(pipe, [embedding(13)], mode="streaming", **kwargs)  # two chunks
        assert uncached_calls == 8 * 2 and one_chunk_calls < uncached_calls
        assert len(calls) == 2 * one_chunk_calls, "the cache starts afresh each chunk"
        assert not torch.equal(one_chunk[0], uncached[0])
    finally:
        pipe.transformer.disable_teacache()
        hook.remove()


def test_tiny_infinitetalk_pipeline():
    from diffusers_multitalk import make_tiny_pipeline

    tiny = make_tiny_pipeline(0, pipeline_class=WanInfiniteTalkPipeline)
    assert isinstance(tiny, WanInfiniteTalkPipeline)
    reference = WanInfiniteTalkPipeline(**make_tiny_components(0))
    for (name, got), (_, want) in zip(
        tiny.transformer.state_dict().items(), reference.transformer.state_dict().items()
    ):
        assert torch.equal(got, want), name
