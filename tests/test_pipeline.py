"""WanMultiTalkPipeline end to end on the tiny random pipeline (CPU)."""

import numpy as np
import pytest
import soundfile as sf
import torch

from diffusers_multitalk import WanMultiTalkPipeline, make_tiny_pipeline
from diffusers_multitalk.pipelines.sampling import multitalk_sigmas
from diffusers_multitalk.testing import stream_seconds


SR = 16000
SMALL = dict(height=64, width=96, num_frames=9, motion_frames=5, num_inference_steps=2)


def speech(seconds, pitch=180.0, seed=0):
    """A voiced, syllable-modulated test signal."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.RandomState(seed)
    voiced = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.rand())
    return (0.3 * voiced * envelope).astype(np.float32)


@pytest.fixture(scope="module")
def pipe():
    pipe = make_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def image():
    return (np.random.RandomState(0).rand(128, 192, 3) * 255).astype(np.uint8)


def run(pipe, image, audio, seed=0, **kwargs):
    # The reference's one-chunk clip unless a test asks otherwise (the pipeline's own default covers the whole audio).
    args = dict(SMALL, mode="clip", prompt="two people talk", generator=torch.Generator().manual_seed(seed))
    args.update(kwargs)
    return pipe(image=image, audio=audio, **args)


@pytest.mark.parametrize("persons", [1, 2])
def test_clip_mode(pipe, image, persons):
    audio = [(speech(0.5, 150 + 60 * p, seed=p), SR) for p in range(persons)]
    out = run(pipe, image, audio, audio_type="para")
    assert out.frames.shape == (1, 9, 64, 96, 3)
    assert out.frames.min() >= 0 and out.frames.max() <= 1
    assert out.audio.shape == (int(9 / 25 * SR),)


@pytest.mark.parametrize("persons", [1, 2])
def test_streaming_covers_the_audio(pipe, image, persons, monkeypatch):
    calls = []
    original = pipe.decode_latents
    monkeypatch.setattr(pipe, "decode_latents", lambda latents: calls.append(1) or original(latents))
    seconds = 0.8 / persons  # "add": the turns follow each other, 0.8 s in all = 20 frames
    audio = [(speech(seconds, 150 + 60 * p, seed=p), SR) for p in range(persons)]
    out = run(pipe, image, audio, mode="streaming", audio_type="add")
    assert len(calls) >= 3, "expected at least 3 chunks"
    assert out.frames.shape[1] == 20, "frame count must equal the audio length at 25 fps"
    assert out.audio.shape == (20 * SR // 25,)


def test_default_mode_covers_the_whole_audio(pipe, image):
    # 0.8 s of turns ("add": 0.4 s each) = 20 frames > one 9-frame chunk: streaming, to the end of both turns
    audio = [(speech(0.4, 150, seed=0), SR), (speech(0.4, 210, seed=1), SR)]
    out = run(pipe, image, audio, mode=None, audio_type="add")
    assert out.frames.shape[1] == 20 and out.audio.shape == (20 * SR // 25,)


def test_explicit_clip_warns_what_it_drops(pipe, image, caplog):
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            out = run(pipe, image, [(speech(0.8), SR)], mode="clip")
    finally:
        diffusers_logging.disable_propagation()
    assert out.frames.shape[1] == 9
    assert "0.44 s of the 0.80 s audio are dropped" in caplog.text


@pytest.mark.parametrize("seconds, frames", [(0.2, 5), (0.28, 7), (0.36, 9)])
def test_audio_shorter_than_a_chunk_gives_a_video_as_long_as_the_audio(pipe, image, seconds, frames):
    # 0.2 s = 5 frames, 0.28 s = 7 (a 9-frame chunk cut to 7), 0.36 s = 9 (exactly one chunk), in every mode
    for mode in (None, "clip", "streaming"):
        out = run(pipe, image, [(speech(seconds), SR)], mode=mode)
        assert out.frames.shape[1] == frames, mode
        assert out.audio.shape == (frames * SR // 25,)


def test_short_chunk_length_is_the_shortest_4n_plus_1(pipe):
    plan = WanMultiTalkPipeline.plan_video
    assert plan(7, 81, 25) == (9, 1, 7)  # VideoPlan(chunk_frames, num_chunks, num_frames) compares as a tuple
    assert plan(2, 81, 25) == (5, 1, 2)
    assert plan(81, 81, 25) == (81, 1, 81)
    assert plan(82, 81, 25) == (81, 2, 82)
    assert plan(1500, 81, 25, max_frames=None) == (81, 27, 1500)  # no hidden cap: a minute is a minute
    assert plan(1500, 81, 25, max_frames=1000) == (81, 18, 1000)
    assert plan(1500, 81, 25, mode="clip") == (81, 1, 81)


def test_max_frames_caps_with_a_warning(pipe, image, caplog):
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            out = run(pipe, image, [(speech(0.8), SR)], mode=None, max_frames=13)
    finally:
        diffusers_logging.disable_propagation()
    assert out.frames.shape[1] == 13
    assert "max_frames=13 cuts the video at 0.52 s" in caplog.text


def test_output_path_streams_to_an_mp4_with_the_audio(pipe, image, tmp_path):
    import imageio.v3 as iio

    audio = [(speech(0.4, 150, seed=0), SR), (speech(0.4, 210, seed=1), SR)]
    reference = run(pipe, image, audio, mode=None)
    path = tmp_path / "talk.mp4"
    out = run(pipe, image, audio, mode=None, output_path=path)
    assert out.frames is None and out.video_path == str(path)
    assert not [p for p in tmp_path.iterdir() if p.name != "talk.mp4"], "no part file may remain"
    frames = iio.imread(path, plugin="pyav") if _has_pyav() else _ffmpeg_frames(path)
    assert len(frames) == reference.frames.shape[1] == 20
    # the same pixels as the in-memory route, up to H.264 at crf 18
    assert np.abs(frames.astype(np.float32) / 255 - reference.frames[0]).mean() < 0.08
    assert abs(stream_seconds(path, "a") - 0.8) < 0.15


def test_output_path_error_leaves_no_file(pipe, image, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("decoder broke")

    monkeypatch.setattr(pipe, "decode_latents", fail)
    with pytest.raises(RuntimeError, match="decoder broke"):
        run(pipe, image, [(speech(0.8), SR)], mode=None, output_path=tmp_path / "talk.mp4")
    assert list(tmp_path.iterdir()) == []


def test_bad_values_are_named(pipe, image):
    with pytest.raises(ValueError, match="guidance_scale"):
        run(pipe, image, [(speech(0.5), SR)], guidance_scale=-1.0)
    with pytest.raises(ValueError, match="audio_guidance_scale"):
        run(pipe, image, [(speech(0.5), SR)], audio_guidance_scale=-0.5)
    with pytest.raises(ValueError, match="smaller than one 16x16-pixel patch"):
        run(pipe, image[:1, :1], [(speech(0.5), SR)], allow_upscale=True)
    with pytest.raises(ValueError, match="output_type='latent'"):
        run(pipe, image, [(speech(0.5), SR)], output_type="latent", output_path="x.mp4")


def _has_pyav():
    import importlib.util

    return importlib.util.find_spec("av") is not None


def _ffmpeg_frames(path):
    import subprocess

    from diffusers_multitalk.pipelines.video_io import get_ffmpeg_exe

    probe = subprocess.run([get_ffmpeg_exe(), "-i", str(path)], capture_output=True, text=True).stderr
    width, height = (int(v) for v in __import__("re").search(r", (\d+)x(\d+)", probe).groups())
    raw = subprocess.run(
        [get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def test_streaming_matches_chunk_plan(pipe, image):
    assert WanMultiTalkPipeline.plan_chunks(20, 9, 5, 1000, "streaming") == (4, 20)
    # The reference always renders a second chunk in streaming mode.
    assert WanMultiTalkPipeline.plan_chunks(10, 9, 5, 1000, "streaming") == (2, 10)
    assert WanMultiTalkPipeline.plan_chunks(500, 81, 25, 100, "streaming") == (2, 100)
    assert WanMultiTalkPipeline.plan_chunks(500, 81, 25, 1000, "clip") == (1, 81)


def test_seed_determinism(pipe, image):
    audio = [(speech(0.5), SR), (speech(0.5, 260, 1), SR)]
    a = run(pipe, image, audio, seed=3, output_type="latent").frames[0]
    b = run(pipe, image, audio, seed=3, output_type="latent").frames[0]
    c = run(pipe, image, audio, seed=4, output_type="latent").frames[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_latent_output_and_pil(pipe, image):
    out = run(pipe, image, [(speech(0.5), SR)], output_type="latent")
    assert isinstance(out.frames, torch.Tensor) and out.frames.shape == (1, 16, 3, 8, 12)
    out = run(pipe, image, [(speech(0.5), SR)], output_type="pil", num_inference_steps=1)
    assert len(out.frames[0]) == 9 and out.frames[0][0].size == (96, 64)


def test_precomputed_embeddings_equal_waveforms(pipe, image):
    from diffusers_multitalk import encode_speech, prepare_audio

    wave = speech(0.5)
    embedding = encode_speech(pipe.audio_encoder, pipe.audio_feature_extractor, prepare_audio(wave, SR))
    a = run(pipe, image, [(wave, SR)], output_type="latent").frames[0]
    out = run(pipe, image, [embedding], output_type="latent")
    assert torch.equal(a, out.frames[0])
    assert out.audio is None


class BranchStub:
    """Stands in for the transformer's forward: returns a known prediction per guidance branch, linear in the
    noisy latent so APG's projection has something to act on."""

    def __init__(self, prompt_embeds, negative_embeds):
        self.prompt, self.negative = prompt_embeds, negative_embeds
        self.calls = []

    def __call__(self, hidden_states, timestep, text, image, audio, ref_target_masks=None, return_dict=False, **kw):
        x = hidden_states[:, :16].float()
        silent = bool((audio == 0).all())
        is_prompt = torch.equal(text, self.prompt)
        branch = ("cond" if is_prompt else "neg") + ("_silent" if silent else "")
        self.calls.append(branch)
        weight, bias = {"cond": (0.9, 0.3), "neg": (0.5, -0.2), "neg_silent": (0.2, 0.1), "cond_silent": (0.4, 0.05)}[
            branch
        ]
        torch.manual_seed(len(branch))
        return (weight * x + bias * torch.randn_like(x),)


def hand_apg(diff, cond, threshold):
    norm = diff.flatten(1).norm(dim=1).view(-1, 1, 1, 1, 1)
    diff = diff * torch.clamp(threshold / norm, max=1.0)
    unit = cond / cond.flatten(1).norm(dim=1).view(-1, 1, 1, 1, 1)
    return diff - (diff * unit).flatten(1).sum(1).view(-1, 1, 1, 1, 1) * unit


@pytest.mark.parametrize("text_scale,use_apg", [(5.0, False), (1.0, False), (5.0, True), (1.0, True)])
def test_guidance_combination_by_hand(pipe, image, monkeypatch, text_scale, use_apg):
    prompt_embeds = torch.full((1, 512, 32), 0.5)
    negative_embeds = torch.full((1, 512, 32), -0.5)
    stub = BranchStub(prompt_embeds, negative_embeds)
    monkeypatch.setattr(pipe.transformer, "forward", stub)
    audio_scale, threshold = 4.0, 2.0
    out = run(
        pipe,
        image,
        [(speech(0.5), SR)],
        prompt=None,
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        guidance_scale=text_scale,
        audio_guidance_scale=audio_scale,
        use_apg=use_apg,
        apg_norm_threshold=threshold,
        num_inference_steps=1,
        output_type="latent",
    )
    noise = torch.randn((1, 16, 3, 8, 12), generator=torch.Generator().manual_seed(0))

    def branch(name):
        return BranchStub(prompt_embeds, negative_embeds)(
            torch.cat([noise, torch.zeros(1, 20, 3, 8, 12)], 1),
            None,
            prompt_embeds if name.startswith("cond") else negative_embeds,
            None,
            torch.zeros(1) if name.endswith("silent") else torch.ones(1),
        )[0]

    cond = branch("cond")
    if text_scale != 1.0:
        assert stub.calls == ["cond", "neg", "neg_silent"]
        drop_text, uncond = branch("neg"), branch("neg_silent")
        if use_apg:
            guided = (
                cond
                + (text_scale - 1) * hand_apg(cond - drop_text, cond, threshold)
                + (audio_scale - 1) * hand_apg(drop_text - uncond, cond, threshold)
            )
        else:
            guided = uncond + text_scale * (cond - drop_text) + audio_scale * (drop_text - uncond)
    else:
        assert stub.calls == ["cond", "cond_silent"]
        drop_audio = branch("cond_silent")
        if use_apg:
            guided = cond + (audio_scale - 1) * hand_apg(cond - drop_audio, cond, threshold)
        else:
            guided = drop_audio + audio_scale * (cond - drop_audio)
    # One Euler step from sigma 1 to 0: x - v.
    sigmas = multitalk_sigmas(1, 7.0)
    expected = noise + (sigmas[1] - sigmas[0]) * guided
    assert torch.allclose(out.frames[0], expected, atol=1e-5), (out.frames[0] - expected).abs().max()


def test_callback_can_edit_latents(pipe, image):
    seen = []

    def callback(p, step, t, kwargs):
        seen.append((step, float(t)))
        return {"latents": torch.zeros_like(kwargs["latents"])}

    out = run(pipe, image, [(speech(0.5), SR)], output_type="latent", callback_on_step_end=callback)
    assert [s for s, _ in seen] == [0, 1]
    assert torch.equal(out.frames[0], torch.zeros_like(out.frames[0]))


@pytest.fixture
def no_heavy_work(pipe, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("heavy work started before the input error")

    monkeypatch.setattr(pipe.transformer, "forward", forbidden)
    monkeypatch.setattr(pipe.text_encoder, "forward", forbidden)
    monkeypatch.setattr(pipe.vae, "encode", forbidden)
    monkeypatch.setattr(pipe.audio_encoder, "forward", forbidden)
    monkeypatch.setattr(pipe.audio_encoder.feature_extractor, "forward", forbidden)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(audio=["/nonexistent/voice.wav"]), "person 1.*nonexistent"),
        (dict(audio=[(np.zeros(SR, dtype=np.float32), SR)]), "person 1 is silent"),
        (dict(audio=[(speech(0.02), SR)]), "shorter than one video frame"),
        (dict(audio=[(speech(0.5), SR)] * 2, bbox=[[0, 0, 64, 96]]), "1 bounding boxes for 2 persons"),
        (dict(audio=[(speech(0.5), SR)] * 2, bbox=[[0, 0, 64, 96], [0, 90, 64, 500]]), "outside"),
        (dict(height=60), "multiples of 16"),
        (dict(height=None, width=None, resolution="multitalk-720"), "smaller than the"),
        (dict(audio=[(speech(0.5), SR)] * 7), "at most 6 persons"),
        (dict(num_frames=10), "4n\\+1"),
        (dict(mode="stream"), "`mode` must be"),
        (dict(audio_type="mix"), "'add'"),
        (dict(audio=[speech(0.5)]), "sampling_rate"),
    ],
)
def test_bad_inputs_fail_early(pipe, image, no_heavy_work, kwargs, match):
    args = dict(audio=[(speech(0.5), SR)])
    args.update(kwargs)
    with pytest.raises((ValueError, FileNotFoundError, TypeError), match=match):
        run(pipe, image, **args)


@pytest.mark.parametrize(
    "subtype,rate,channels", [("PCM_U8", 16000, 1), ("PCM_24", 16000, 1), ("FLOAT", 16000, 1), ("PCM_16", 48000, 2)]
)
def test_audio_formats_are_accepted(pipe, image, tmp_path, subtype, rate, channels):
    wave = speech(0.5)
    if rate != SR:
        wave = np.interp(np.arange(int(0.5 * rate)) / rate, np.arange(len(wave)) / SR, wave).astype(np.float32)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    path = tmp_path / f"voice_{subtype}.wav"
    sf.write(path, data, rate, subtype=subtype)
    out = run(pipe, image, [str(path)], output_type="latent", num_inference_steps=1)
    assert torch.isfinite(out.frames[0]).all()


def test_image_forms(pipe, image, tmp_path):
    import PIL.Image

    path = tmp_path / "face.png"
    PIL.Image.fromarray(image).save(path)
    a = run(pipe, str(path), [(speech(0.5), SR)], output_type="latent").frames[0]
    b = run(pipe, PIL.Image.fromarray(image), [(speech(0.5), SR)], output_type="latent").frames[0]
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------------------
# dialogue (text-to-speech instead of recordings)
# ----------------------------------------------------------------------------------------------------------------
def test_dialogue_drives_the_persons_with_their_own_turns(pipe, image):
    from diffusers_multitalk import synthesize_dialogue

    script = "(s1) Hello there. (s2) Hi, how are you?"
    out = run(pipe, image, None, dialogue=script, tts_engine="espeak-ng", output_type="latent")
    # the same as speaking the script first and passing its tracks as simultaneous audio
    tracks, mixed = synthesize_dialogue(script, engine="espeak-ng")
    assert len(tracks) == 2 and np.abs(tracks[0][: len(tracks[0]) // 4]).max() > 0.01
    by_hand = run(
        pipe, image, [(t, SR) for t in tracks], audio_type="para", output_type="latent", normalize_loudness=False
    )
    assert len(out.frames) == len(by_hand.frames)
    assert all(torch.equal(a, b) for a, b in zip(out.frames, by_hand.frames))
    assert np.allclose(out.audio, by_hand.audio)
    # TTS speech drives the video as synthesised (the reference's TTS mode): not loudness-normalised
    assert np.allclose(out.audio, mixed[: len(out.audio)], atol=1e-6)
    normalised = run(pipe, image, [(t, SR) for t in tracks], audio_type="para", output_type="latent")
    assert not all(torch.equal(a, b) for a, b in zip(out.frames, normalised.frames))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(audio=[(speech(0.5), SR)], dialogue="(s1) Hi."), "not both"),
        (dict(audio=None, dialogue="Hi. (s1) there"), "before its first speaker tag"),
        (dict(audio=None, dialogue="(s1) Hi.", dialogue_voices=["en", "en"]), r"no turn for speaker\(s\) \(s2\)"),
        (dict(audio=None, dialogue="(s1) Hi. (s2) Yo.", bbox=[[0, 0, 10, 10]]), "1 bounding boxes for 2 persons"),
        (dict(audio=None, dialogue=None), "or give a `dialogue`"),
    ],
)
def test_dialogue_input_errors_come_before_any_speech(pipe, image, monkeypatch, kwargs, message):
    import diffusers_multitalk.pipelines.pipeline_wan_audio_base as module

    monkeypatch.setattr(module, "synthesize_dialogue", lambda *a, **k: pytest.fail("TTS ran before the checks"))
    audio = kwargs.pop("audio")
    with pytest.raises(ValueError, match=message):
        run(pipe, image, audio, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# a silent person (the reference's "None" audio)
# ----------------------------------------------------------------------------------------------------------------
def test_a_silent_person_listens(pipe, image):
    from diffusers_multitalk import prepare_audio

    speaker = speech(0.5, 200, seed=1)
    prepared = prepare_audio(speaker, sampling_rate=SR)
    # "add": the listener's silence (as long as the speech) comes first, then the speech, as the reference lays it out
    embeddings, mixed = pipe.encode_audio([None, (speaker, SR)], "add", "cpu")
    assert np.allclose(mixed, np.concatenate([np.zeros_like(prepared), prepared]))
    assert len(embeddings) == 2 and embeddings[0].shape == embeddings[1].shape
    # "para": the speech and silence side by side
    embeddings, mixed = pipe.encode_audio([(speaker, SR), None], "para", "cpu")
    assert np.allclose(mixed, prepared)
    out = run(pipe, image, [(speaker, SR), None], audio_type="para")
    assert out.frames.shape == (1, 9, 64, 96, 3)
    with pytest.raises(ValueError, match="Every person's audio is None"):
        run(pipe, image, [None, None])


def test_encoders_run_under_sequential_offload_hooks():
    """accelerate's sequential offload leaves weights on "meta" and loads them in hooks (GPU-only through
    `enable_sequential_cpu_offload`; here with the CPU as execution device): the pipeline must hand every encoder its
    inputs where the hooks can move them, and give the same latents."""
    from accelerate import cpu_offload

    from diffusers_multitalk.testing import tiny_generation_latents

    expected = tiny_generation_latents(make_tiny_pipeline(seed=0))
    pipe = make_tiny_pipeline(seed=0)
    for name in ("text_encoder", "image_encoder", "audio_encoder", "transformer", "vae"):
        cpu_offload(getattr(pipe, name), execution_device=torch.device("cpu"))
    assert next(pipe.text_encoder.parameters()).device.type == "meta"
    assert torch.equal(tiny_generation_latents(pipe), expected)
