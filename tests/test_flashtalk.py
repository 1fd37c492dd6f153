"""WanFlashTalkPipeline (SoulX-FlashTalk): the reference's own frames on tiny weights (tests/fixtures/flashtalk_fullgen,
made by scripts/flashtalk_parity.py), its loader and folder check, its sampler and its registry entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file

from diffusers_multitalk.pipelines.pipeline_wan_flashtalk import WanFlashTalkPipeline
from diffusers_multitalk.testing import write_tiny_flashtalk_folders


FIXTURE = Path(__file__).parent / "fixtures" / "flashtalk_fullgen"
SLICE = 17920  # one chunk's new audio: 28 frames at 25 fps, 16 kHz
PROMPT = "a person is talking to the camera"  # the harness's
TOLERANCE = 2e-3  # max abs, frames in [0, 1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_tiny_flashtalk_folders(tmp_path_factory.mktemp("flashtalk"), seed=0)


@pytest.fixture(scope="module")
def pipe(folders):
    pipe = WanFlashTalkPipeline.from_original(folders["flashtalk_dir"], wav2vec_dir=folders["wav2vec_dir"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def expected():
    return load_file(FIXTURE / "outputs.safetensors")["frames"].numpy() / 255.0  # [56, 64, 32, 3]


def _generate(pipe, audio, **kwargs):
    return pipe(
        image=str(FIXTURE / "image.png"),
        audio=audio,
        prompt=PROMPT,
        height=64,
        width=32,
        generator=torch.Generator().manual_seed(4242),
        **kwargs,
    ).frames[0]


# The harness's cases (scripts/flashtalk_parity.py CASES): the reference's defaults at 64x32; and 32x16 with 2 steps,
# 9 motion frames, colour correction 0.5, a wide image and half a second of silence first.
CASES = {
    "": dict(height=64, width=32, seed=4242, kwargs={}),
    "other": dict(
        height=32, width=16, seed=7, kwargs=dict(num_inference_steps=2, motion_frames=9, color_correction_strength=0.5)
    ),
}


@pytest.mark.parametrize("name", list(CASES), ids=["defaults", "other"])
@pytest.mark.parametrize("chunks", [1, 2])
def test_frames_match_the_reference(pipe, name, chunks):
    case = CASES[name]
    suffix = f"_{name}" if name else ""
    reference = load_file(FIXTURE / "outputs.safetensors")[f"frames{suffix}"].numpy() / 255.0
    per_chunk = len(reference) // 2
    wave, rate = soundfile.read(FIXTURE / f"speech{suffix}.wav", dtype="float32")
    audio = (wave[: len(wave) * chunks // 2], rate) if chunks == 1 else str(FIXTURE / f"speech{suffix}.wav")
    frames = pipe(
        image=str(FIXTURE / f"image{suffix}.png"), audio=audio, prompt=PROMPT, height=case["height"],
        width=case["width"], generator=torch.Generator().manual_seed(case["seed"]), **case["kwargs"],
    ).frames[0]  # fmt: skip
    expected = reference[: per_chunk * chunks]
    assert frames.shape == expected.shape
    error = float(np.abs(frames - expected).max())
    print(f"flashtalk parity, {name or 'defaults'}, {chunks} chunk(s): max abs {error:.2e}")
    assert error < TOLERANCE


def test_a_partial_last_slice_is_generated_and_cut(pipe, expected):
    """The reference drops audio past the last whole slice; here it is padded with silence, generated and cut, and
    the chunks before it are the reference's."""
    wave, rate = soundfile.read(FIXTURE / "speech.wav", dtype="float32")
    longer = np.concatenate([wave, wave[: SLICE // 2]])  # 2.5 slices: 70 frames
    frames = _generate(pipe, (longer, rate))
    assert frames.shape == (70, 64, 32, 3)
    assert float(np.abs(frames[:56] - expected).max()) < TOLERANCE


def test_output_path_writes_the_video_with_its_audio(pipe, tmp_path):
    from diffusers_multitalk.testing import stream_seconds

    wave, rate = soundfile.read(FIXTURE / "speech.wav", dtype="float32")
    out = pipe(
        image=str(FIXTURE / "image.png"), audio=(wave[:SLICE], rate), height=64, width=32,
        output_path=tmp_path / "talk.mp4", generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert out.frames is None and out.video_path == str(tmp_path / "talk.mp4")
    assert stream_seconds(out.video_path, "v") == pytest.approx(28 / 25, abs=0.05)
    assert stream_seconds(out.video_path, "a") == pytest.approx(28 / 25, abs=0.05)


# ----------------------------------------------------------------------------------------------------------------------
# the sampler, the chunks and the audio
# ----------------------------------------------------------------------------------------------------------------------
def test_timesteps_are_the_reference_fixed_ones_shifted():
    from diffusers_multitalk.pipelines.sampling import flashtalk_timesteps

    expected = [1000.0, 937.5, 2500 / 3, 625.0, 0.0]  # 5t / (1 + 4t) on t = 1, .75, .5, .25, 0
    assert torch.allclose(flashtalk_timesteps(4, 5.0), torch.tensor(expected), rtol=0, atol=1e-4)
    assert torch.allclose(flashtalk_timesteps(2, 5.0), torch.tensor([1000.0, 2500 / 3, 0.0]), rtol=0, atol=1e-4)
    assert len(flashtalk_timesteps(6, 5.0)) == 7 and flashtalk_timesteps(6, 5.0)[0] == 1000


def test_the_stochastic_euler_step_is_the_reference_update():
    """diffusers' FlowMatchEulerDiscreteScheduler(stochastic_sampling=True): x0 = x - sigma * v, then
    (1 - sigma') * x0 + sigma' * noise with the noise drawn from the call's generator, down to sigma' = 0 (where the
    noise is still drawn, as the reference's, so the next chunk's noise is the reference's)."""
    from diffusers_multitalk.pipelines.sampling import make_flashtalk_scheduler, set_flashtalk_timesteps

    scheduler = make_flashtalk_scheduler()
    timesteps = set_flashtalk_timesteps(scheduler, 4, 5.0)
    x = torch.randn(1, 16, 3, 4, 2, generator=torch.Generator().manual_seed(1))
    ours, theirs = x.clone(), x.clone()
    g_ours, g_theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    sigmas = [*(t / 1000 for t in timesteps.tolist()), 0.0]
    for i, t in enumerate(timesteps):
        v = torch.sin(ours * (i + 1))  # any model output
        ours = scheduler.step(v, t, ours, generator=g_ours, return_dict=False)[0]
        x0 = theirs - sigmas[i] * torch.sin(theirs * (i + 1))
        theirs = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * torch.randn(x0.shape, generator=g_theirs)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert torch.equal(g_ours.get_state(), g_theirs.get_state())


def test_the_plan_covers_the_audio():
    plan = WanFlashTalkPipeline.plan_stream
    assert plan(2 * SLICE, 33, 5) == (33, 2, 56)
    assert plan(2 * SLICE + 1000, 33, 5) == (33, 3, 57)  # a partial slice: one more chunk, cut
    assert plan(100, 33, 5) == (33, 1, 1)
    assert plan(5 * SLICE, 33, 5, max_frames=30) == (33, 2, 30)
    assert plan(5 * SLICE, 33, 5, mode="clip") == (33, 1, 28)


def test_the_rolling_window_is_the_last_8_seconds():
    from diffusers_multitalk.pipelines.pipeline_wan_flashtalk import RollingAudio

    speech = np.arange(1, 2 * SLICE + 1, dtype=np.float32)
    rolling = RollingAudio(speech, 33, 28, 8.0)
    first, second = rolling.samples(0), rolling.samples(1)
    assert len(first) == len(second) == 128000
    assert not first[: 128000 - SLICE].any() and np.array_equal(first[-SLICE:], speech[:SLICE])
    assert np.array_equal(second[-2 * SLICE :], speech)
    tail = RollingAudio(speech[: SLICE + 10], 33, 28, 8.0).samples(1)
    assert np.array_equal(tail[-SLICE:][:10], speech[SLICE : SLICE + 10]) and not tail[-SLICE + 10 :].any()


# ----------------------------------------------------------------------------------------------------------------------
# inputs refused
# ----------------------------------------------------------------------------------------------------------------------
def test_a_video_or_two_persons_are_refused(pipe):
    wave = (0.1 * np.sin(np.arange(SLICE) / 10)).astype(np.float32)
    with pytest.raises(ValueError, match="SoulX-FlashTalk animates an image: it takes no `video`"):
        pipe(video=str(FIXTURE / "image.png"), audio=(wave, 16000))
    with pytest.raises(ValueError, match="animates one person: give one audio track, got 2"):
        pipe(image=str(FIXTURE / "image.png"), audio=[(wave, 16000), (wave, 16000)])
    with pytest.raises(ValueError, match="animates one person: give one speaker in the dialogue, got 2"):
        pipe(image=str(FIXTURE / "image.png"), dialogue="(s1) Hello. (s2) Hi.")
    with pytest.raises(ValueError, match="`motion_frames` must be 4n\\+1"):
        pipe(image=str(FIXTURE / "image.png"), audio=(wave, 16000), motion_frames=4)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['colour'\\]"):
        pipe(image=str(FIXTURE / "image.png"), audio=(wave, 16000), colour=1)


# ----------------------------------------------------------------------------------------------------------------------
# the folder as users download it
# ----------------------------------------------------------------------------------------------------------------------
def test_the_merged_checkpoint_loads_the_tiny_weights(pipe):
    from diffusers_multitalk.tiny import make_tiny_components

    tiny = make_tiny_components(0, reference_widths=True)
    for name in ("transformer", "text_encoder", "image_encoder", "vae"):
        ours, theirs = getattr(pipe, name).state_dict(), tiny[name].state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert pipe.scheduler.config.stochastic_sampling and pipe.scheduler.config.shift == 5.0


def test_a_bfloat16_checkpoint_and_encoders_from_another_folder(tmp_path, folders):
    """The release is bfloat16; the encoders may come from a Wan2.1-I2V folder (`wan_dir`) with `flashtalk_dir`."""
    bf16 = write_tiny_flashtalk_folders(tmp_path, seed=0, dtype=torch.bfloat16)
    pipe = WanFlashTalkPipeline.from_original(
        folders["flashtalk_dir"], flashtalk_dir=bf16["flashtalk_dir"], wav2vec_dir=folders["wav2vec_dir"],
        dtype=torch.float32,
    )  # fmt: skip
    from diffusers_multitalk.tiny import make_tiny_components

    weight = make_tiny_components(0, reference_widths=True)["transformer"].proj_out.weight
    assert pipe.transformer.dtype == torch.float32
    assert torch.equal(pipe.transformer.proj_out.weight, weight.to(torch.bfloat16).float())


@pytest.mark.parametrize(
    "remove, named",
    [
        ("diffusion_pytorch_model-00002-of-00002.safetensors", "named by diffusion_pytorch_model.safetensors.index"),
        ("models_t5_umt5-xxl-enc-bf16.pth", "models_t5_umt5-xxl-enc-bf16.pth is missing"),
        ("Wan2.1_VAE.pth", "Wan2.1_VAE.pth is missing"),
        ("config.json", "config.json is missing"),
    ],
)
def test_a_bad_folder_names_the_missing_file(tmp_path, remove, named):
    import shutil

    from diffusers_multitalk.variants import get_variant

    folders = write_tiny_flashtalk_folders(tmp_path, seed=0)
    (folders["flashtalk_dir"] / remove).unlink()
    problems = get_variant("flashtalk-14B").check_folders(folders["flashtalk_dir"], folders["wav2vec_dir"], {})
    assert len(problems) == 1 and named in problems[0] and str(folders["flashtalk_dir"] / remove) in problems[0]
    assert "huggingface-cli download Soul-AILab/SoulX-FlashTalk-14B" in problems[0]
    with pytest.raises(FileNotFoundError, match=named.replace(".", "\\.")):
        WanFlashTalkPipeline.from_original(folders["flashtalk_dir"], wav2vec_dir=folders["wav2vec_dir"])
    shutil.rmtree(folders["wav2vec_dir"])  # the wav2vec2 folder is checked too
    problems = get_variant("flashtalk-14B").check_folders(folders["flashtalk_dir"], folders["wav2vec_dir"], {})
    assert len(problems) == 2 and "wav2vec2 folder" in problems[1]


def test_the_folder_is_recognised_as_flashtalk(tmp_path, folders):
    from diffusers_multitalk.loaders.original_folders import original_folder_kind
    from diffusers_multitalk.testing import write_tiny_original_folders

    assert original_folder_kind(folders["flashtalk_dir"]) == "flashtalk"
    wan = write_tiny_original_folders(tmp_path)
    assert original_folder_kind(wan["wan_dir"]) == "wan" and original_folder_kind(wan["multitalk_dir"]) == "multitalk"
    assert original_folder_kind(folders["wav2vec_dir"]) is None


def test_from_pretrained_reads_the_downloaded_folder(folders):
    from diffusers_multitalk import WanMultiTalkPipeline

    pipe = WanFlashTalkPipeline.from_pretrained(folders["flashtalk_dir"])  # wav2vec2: the folder beside it
    assert isinstance(pipe, WanFlashTalkPipeline) and pipe.scheduler.config.stochastic_sampling
    with pytest.raises(ValueError, match="SoulX-FlashTalk-14B's folder; load it with WanFlashTalkPipeline"):
        WanMultiTalkPipeline.from_pretrained(folders["flashtalk_dir"])


def test_conversion_reloads_equal(tmp_path):
    """`multitalk convert` (convert_original_to_diffusers with the registry's flashtalk_dir) writes a diffusers folder
    with the stochastic scheduler; WanFlashTalkPipeline.from_pretrained reloads the same components."""
    from diffusers_multitalk.conversion import convert_original_to_diffusers

    small = write_tiny_flashtalk_folders(tmp_path / "in", seed=0, reference_widths=False)
    convert_original_to_diffusers(
        small["flashtalk_dir"],
        None,
        small["wav2vec_dir"],
        tmp_path / "out",
        flashtalk_dir=small["flashtalk_dir"],
        torch_dtype=torch.float32,
    )
    report = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert report["pipeline_class"] == "WanFlashTalkPipeline"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "SoulX-FlashTalk" in card and "Soul-AILab/SoulX-FlashTalk-14B" in card
    loaded = WanFlashTalkPipeline.from_pretrained(tmp_path / "out")
    direct = WanFlashTalkPipeline.from_original(small["flashtalk_dir"], wav2vec_dir=small["wav2vec_dir"])
    assert loaded.scheduler.config.stochastic_sampling and loaded.scheduler.config.shift == 5.0
    for name in ("transformer", "text_encoder", "vae", "image_encoder"):
        a, b = getattr(loaded, name).state_dict(), getattr(direct, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_the_tiny_pipeline_and_from_original_take_flashtalks_sampler():
    from diffusers_multitalk.tiny import make_tiny_pipeline

    pipe = make_tiny_pipeline(0, pipeline_class=WanFlashTalkPipeline)
    assert pipe.scheduler.config.stochastic_sampling and pipe.scheduler.config.shift == 5.0
    assert not WanFlashTalkPipeline.__mro__[1].default_scheduler().config.stochastic_sampling  # the others' Euler


# ----------------------------------------------------------------------------------------------------------------------
# diffusers' contracts (tests/test_diffusers_contracts.py's, on FlashTalk's own chunking)
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from diffusers_multitalk.tiny import make_tiny_pipeline

    pipe = make_tiny_pipeline(0, pipeline_class=WanFlashTalkPipeline)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _small(seed=0, **overrides):
    t = np.arange(int(0.9 * 16000)) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 200 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    image = (np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8)
    inputs = dict(image=image, audio=(wave, 16000), prompt="a person talks", height=64, width=96, num_frames=9,
                  motion_frames=5, num_inference_steps=2, generator=torch.Generator().manual_seed(seed))  # fmt: skip
    inputs.update(overrides)
    return inputs  # 22 frames: 6 chunks of 4 new frames


def test_contracts_outputs_takes_and_round_trip(tiny, tmp_path):
    as_dict = tiny(**_small()).frames
    assert as_dict.shape == (1, 22, 64, 96, 3)
    np.testing.assert_array_equal(as_dict, tiny(**_small(), return_dict=False)[0])
    generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
    both = tiny(**_small(num_videos_per_prompt=2, generator=generators)).frames
    np.testing.assert_allclose(both[1], tiny(**_small(seed=2)).frames[0], atol=1e-6)
    tiny.save_pretrained(tmp_path)
    loaded = WanFlashTalkPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.scheduler.config.stochastic_sampling
    np.testing.assert_allclose(loaded(**_small()).frames, as_dict, atol=1e-5)


def test_contracts_callbacks_and_interrupt(tiny):
    seen = []

    def callback(pipe, step, timestep, kwargs):
        assert set(kwargs) == set(pipe._callback_tensor_inputs)
        seen.append((step, pipe.num_timesteps))
        return kwargs

    tiny(**_small(mode="clip", callback_on_step_end=callback, callback_on_step_end_tensor_inputs=tiny._callback_tensor_inputs))  # fmt: skip
    assert seen == [(0, 2), (1, 2)]
    steps = []

    def interrupt(pipe, step, timestep, kwargs):
        steps.append(step)
        pipe._interrupt = True
        return kwargs

    tiny(**_small(callback_on_step_end=interrupt))
    assert steps == [0]


def test_one_pass_per_step_without_guidance_three_with(tiny, monkeypatch):
    calls = []
    forward = type(tiny.transformer).forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny.transformer), "forward", counting)
    tiny(**_small(mode="clip"))
    assert len(calls) == 2  # 2 steps, 1 chunk
    calls.clear()
    tiny(**_small(mode="clip", guidance_scale=5.0, audio_guidance_scale=4.0))
    assert len(calls) == 6


def _cache_repo(cache: Path, repo_id: str, folder: Path, revision: str = "main") -> None:
    """`folder`'s files as huggingface_hub caches a snapshot (blobs by hash, the snapshot's files linking to them,
    `refs/<revision>` naming the commit), as tests/test_release_loading.py builds its cache."""
    import hashlib
    import os

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    for source in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        target = repo / "snapshots" / commit / source.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, target.parent), target)
    ref = repo / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)


def test_the_hub_id_from_the_cache(tmp_path, monkeypatch):
    """`from_pretrained("Soul-AILab/SoulX-FlashTalk-14B")` reads the release and chinese-wav2vec2-base (its pull
    request's model.safetensors) from the Hugging Face cache, offline; a missing cache is named."""
    from diffusers_multitalk.loaders.original_folders import WAV2VEC_REPO, WAV2VEC_SAFETENSORS_REVISION

    small = write_tiny_flashtalk_folders(tmp_path / "downloads", seed=0, reference_widths=False)
    cache = tmp_path / "hub"
    _cache_repo(cache, "Soul-AILab/SoulX-FlashTalk-14B", small["flashtalk_dir"])
    _cache_repo(cache, WAV2VEC_REPO, small["wav2vec_dir"], revision=WAV2VEC_SAFETENSORS_REVISION)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = WanFlashTalkPipeline.from_pretrained("Soul-AILab/SoulX-FlashTalk-14B", cache_dir=cache, dtype=torch.float32)
    direct = WanFlashTalkPipeline.from_original(small["flashtalk_dir"], wav2vec_dir=small["wav2vec_dir"])
    a, b = pipe.transformer.state_dict(), direct.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert pipe.scheduler.config.stochastic_sampling
    with pytest.raises(OSError, match="Soul-AILab/SoulX-FlashTalk-14B is not in the Hugging Face cache"):
        WanFlashTalkPipeline.from_pretrained("Soul-AILab/SoulX-FlashTalk-14B", cache_dir=tmp_path / "empty")
