"""Audio path: waveform preparation, speaker layout, wav2vec2 embeddings and per-frame windows.

Parity fixtures were produced by the reference MultiTalk (see fixtures/PARITY_README.md).
"""

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.numpy import load_file

from diffusers_multitalk.audio import (
    MultiTalkAudioEncoder,
    audio_windows,
    combine_speakers,
    encode_speech,
    mirror_pad_embedding,
    prepare_audio,
)


FIXTURES = Path(__file__).parent / "fixtures"
WAV2VEC = FIXTURES / "wav2vec2_tiny"

EMB_TOL = 1e-4
WAV_TOL = 1e-5


def _max_err(a, b):
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, f"shape {a.shape} != reference {b.shape}"
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _voiced(seconds, sr, f0=180.0, seed=0):
    """A deterministic voiced-like test signal (harmonics with a slow envelope plus a little noise)."""
    t = np.arange(int(round(seconds * sr))) / sr
    sig = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 2.0 * t)
    rng = np.random.default_rng(seed)
    return (0.2 * env * sig / 2.3 + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def encoder():
    return MultiTalkAudioEncoder.from_pretrained(WAV2VEC)


# --------------------------------------------------------------------------------------------------
# parity with the reference
# --------------------------------------------------------------------------------------------------


def test_audio_single_parity(encoder):
    ref = load_file(str(FIXTURES / "audio_single" / "outputs.safetensors"))
    speech = prepare_audio(FIXTURES / "audio_single" / "person1.wav")
    assert speech.dtype == np.float32 and speech.ndim == 1
    err = _max_err(speech, ref["speech_16k"])
    assert err < WAV_TOL, f"audio_single speech_16k max abs err {err:.3e}"

    emb = encoder.embed(speech)
    assert tuple(emb.shape) == (57, 3, 32)
    err = _max_err(emb, ref["embedding"])
    assert err < EMB_TOL, f"audio_single embedding max abs err {err:.3e}"

    # The standalone function gives the same numbers.
    emb2 = encode_speech(encoder.model, encoder.feature_extractor, torch.from_numpy(speech), fps=25)
    assert torch.equal(emb, emb2)


def test_audio_two_add_parity(encoder):
    ref = load_file(str(FIXTURES / "audio_two_add" / "outputs.safetensors"))
    s1 = prepare_audio(str(FIXTURES / "audio_two_add" / "person1.wav"))
    s2 = prepare_audio(str(FIXTURES / "audio_two_add" / "person2.wav"))
    (t1, t2), mixed = combine_speakers([s1, s2], audio_type="add")
    for name, ours in (("speech1_16k", t1), ("speech2_16k", t2), ("speech_sum_16k", mixed)):
        err = _max_err(ours, ref[name])
        assert err < WAV_TOL, f"audio_two_add {name} max abs err {err:.3e}"
    # person 1 first, then person 2
    assert np.all(t1[len(s1) :] == 0) and np.all(t2[: len(s1)] == 0)

    for name, track in (("embedding1", t1), ("embedding2", t2)):
        err = _max_err(encoder.embed(track), ref[name])
        assert err < EMB_TOL, f"audio_two_add {name} max abs err {err:.3e}"


# --------------------------------------------------------------------------------------------------
# speaker layout
# --------------------------------------------------------------------------------------------------


def test_combine_para_pads_shorter():
    a = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
    b = np.full(600, 0.25, dtype=np.float32)
    (ta, tb), mixed = combine_speakers([a, b], audio_type="para")
    assert ta.shape == tb.shape == mixed.shape == (1000,)
    np.testing.assert_array_equal(ta, a)
    np.testing.assert_array_equal(tb[:600], b)
    assert np.all(tb[600:] == 0)
    np.testing.assert_allclose(mixed, a + np.pad(b, (0, 400)), atol=1e-7)


def test_combine_add_three_and_single():
    parts = [np.full(n, v, dtype=np.float32) for n, v in ((3, 1.0), (2, 2.0), (4, 3.0))]
    tracks, mixed = combine_speakers(parts, "add")
    np.testing.assert_array_equal(mixed, [1, 1, 1, 2, 2, 3, 3, 3, 3])
    np.testing.assert_array_equal(tracks[1], [0, 0, 0, 2, 2, 0, 0, 0, 0])
    single, mixed1 = combine_speakers([parts[0]])
    assert len(single) == 1 and np.array_equal(mixed1, parts[0])


def test_combine_errors():
    with pytest.raises(ValueError, match="audio_type"):
        combine_speakers([np.zeros(4, np.float32)], audio_type="mix")
    with pytest.raises(ValueError, match="at least one"):
        combine_speakers([])


# --------------------------------------------------------------------------------------------------
# loading files and arrays
# --------------------------------------------------------------------------------------------------


def test_array_equals_file(tmp_path):
    sr = 44100
    stereo = np.stack([_voiced(1.2, sr, seed=1), _voiced(1.2, sr, f0=220.0, seed=2)], axis=1)
    pcm = np.round(np.clip(stereo, -1, 1) * 32767).astype(np.int16)
    path = tmp_path / "stereo16.wav"
    sf.write(path, pcm, sr, subtype="PCM_16")

    from_file = prepare_audio(path)
    from_int16 = prepare_audio(pcm, sampling_rate=sr)  # [samples, channels] int16
    from_float_cf = prepare_audio(torch.from_numpy(pcm.T.astype(np.float32) / 32768.0), sampling_rate=sr)
    err_int = _max_err(from_int16, from_file)
    err_cf = _max_err(from_float_cf, from_file)
    assert err_int < 1e-7, f"int16 array vs file max abs err {err_int:.3e}"
    assert err_cf < 1e-7, f"[channels, samples] float tensor vs file max abs err {err_cf:.3e}"

    # a 16 kHz mono file needs no resampling: array and file agree too
    mono = _voiced(1.0, 16000, seed=3)
    sf.write(tmp_path / "mono.wav", mono, 16000, subtype="FLOAT")
    err = _max_err(prepare_audio(mono, sampling_rate=16000), prepare_audio(tmp_path / "mono.wav"))
    assert err < 1e-7, f"16 kHz float array vs file max abs err {err:.3e}"


@pytest.mark.parametrize(
    "name,sr,channels,subtype",
    [
        ("u8.wav", 22050, 1, "PCM_U8"),
        ("s24.wav", 32000, 1, "PCM_24"),
        ("float.wav", 16000, 1, "FLOAT"),
        ("stereo.wav", 44100, 2, "PCM_16"),
        ("hi48.wav", 48000, 1, "PCM_16"),
        ("clip.flac", 24000, 2, "PCM_16"),
    ],
)
def test_file_formats(tmp_path, name, sr, channels, subtype):
    seconds = 1.0
    data = _voiced(seconds, sr)
    if channels == 2:
        data = np.stack([data, 0.5 * data], axis=1)
    path = tmp_path / name
    sf.write(path, data, sr, subtype=subtype)
    speech = prepare_audio(path)
    assert speech.dtype == np.float32 and speech.ndim == 1
    assert speech.shape[0] == int(seconds * 16000)
    assert np.isfinite(speech).all() and np.abs(speech).max() > 0.01


def _ffmpeg_or_skip():
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # pragma: no cover
        pytest.skip(f"no ffmpeg binary: {exc}")


def test_video_container_loads(tmp_path):
    ffmpeg = _ffmpeg_or_skip()
    wav = tmp_path / "voice.wav"
    sf.write(wav, _voiced(1.0, 22050), 22050, subtype="PCM_16")
    mp4 = tmp_path / "talk.mp4"
    cmd = [
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "color=c=gray:s=32x32:r=25:d=1",
        "-i",
        str(wav),
        "-c:v",
        "mpeg4",
        "-c:a",
        "aac",
        "-shortest",
        str(mp4),
    ]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0 or not mp4.exists():
        pytest.skip(f"could not make a test mp4: {proc.stderr.decode(errors='replace')[-300:]}")
    before = set(Path.cwd().iterdir())
    speech = prepare_audio(mp4)
    assert speech.dtype == np.float32 and speech.ndim == 1
    assert abs(speech.shape[0] - 16000) < 1600  # aac priming / padding may add a few ms
    assert np.abs(speech).max() > 0.01
    assert set(Path.cwd().iterdir()) == before, "temporary wav left behind"

    # a video without an audio stream gives a clear error
    silent = tmp_path / "noaudio.mp4"
    proc = subprocess.run(
        [
            ffmpeg,
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "color=c=gray:s=32x32:r=25:d=0.5",
            "-c:v",
            "mpeg4",
            str(silent),
        ],
        capture_output=True,
    )
    if proc.returncode == 0:
        with pytest.raises(ValueError, match="audio"):
            prepare_audio(silent)


def test_m4a_through_ffmpeg(tmp_path):
    ffmpeg = _ffmpeg_or_skip()
    wav = tmp_path / "voice.wav"
    sf.write(wav, _voiced(1.0, 24000), 24000, subtype="PCM_16")
    m4a = tmp_path / "voice.m4a"
    proc = subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "aac", str(m4a)],
        capture_output=True,
    )
    if proc.returncode != 0:
        pytest.skip("ffmpeg could not encode aac")
    speech = prepare_audio(m4a)
    assert speech.dtype == np.float32 and abs(speech.shape[0] - 16000) < 1600


def test_silence_is_not_normalised():
    silence = np.zeros(16000, dtype=np.float32)
    out = prepare_audio(silence, sampling_rate=16000)
    assert np.array_equal(out, silence)


def test_loudness_target():
    import pyloudnorm as pyln

    out = prepare_audio(_voiced(2.0, 16000), sampling_rate=16000)
    assert abs(pyln.Meter(16000).integrated_loudness(out) + 23.0) < 0.05


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_audio(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="sampling_rate"):
        prepare_audio(np.zeros(16000, dtype=np.float32))
    with pytest.raises(ValueError, match="no samples"):
        prepare_audio(np.zeros(0, dtype=np.float32), sampling_rate=16000)
    bad = np.zeros(16000, dtype=np.float32)
    bad[5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        prepare_audio(bad, sampling_rate=16000)
    with pytest.raises(ValueError, match="dimensions"):
        prepare_audio(np.zeros((2, 2, 100), dtype=np.float32), sampling_rate=16000)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(ValueError, match="garbage.wav"):
        prepare_audio(garbage)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        MultiTalkAudioEncoder.from_pretrained(tmp_path)


def test_short_clip_skips_normalisation():
    short = _voiced(0.2, 16000)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        out = prepare_audio(short, sampling_rate=16000)
    np.testing.assert_array_equal(out, short)


# --------------------------------------------------------------------------------------------------
# windows
# --------------------------------------------------------------------------------------------------


def _reference_style_windows(full, start, end):
    # the reference's chunk loop: centre indices + (-2..2), clamped to the embedding
    idx = torch.arange(start, end).unsqueeze(1) + (torch.arange(5) - 2).unsqueeze(0)
    idx = torch.clamp(idx, min=0, max=full.shape[0] - 1)
    return full[idx]


def test_audio_windows_match_reference_indexing():
    emb = torch.arange(10 * 3 * 4, dtype=torch.float32).reshape(10, 3, 4)
    win = audio_windows(emb, num_frames=10)
    assert tuple(win.shape) == (10, 5, 3, 4)
    assert torch.equal(win, _reference_style_windows(emb, 0, 10))
    # frame 0 sees [0, 0, 0, 1, 2]; the last frame repeats the last embedding frame
    assert torch.equal(win[0, :, 0, 0], emb[[0, 0, 0, 1, 2], 0, 0])
    assert torch.equal(win[-1, :, 0, 0], emb[[7, 8, 9, 9, 9], 0, 0])
    # a later chunk running past the end
    assert torch.equal(audio_windows(emb, 6, start=7), _reference_style_windows(emb, 7, 13))
    assert tuple(audio_windows(emb, 4, window=3).shape) == (4, 3, 3, 4)


def test_mirror_pad_embedding():
    emb = torch.arange(6.0)
    assert torch.equal(mirror_pad_embedding(emb, 5), emb)
    padded = mirror_pad_embedding(emb, 7)  # missing = 7 - 6 + 3 = 4 frames, mirrored tail
    assert torch.equal(padded, torch.tensor([0, 1, 2, 3, 4, 5, 5, 4, 3, 2], dtype=torch.float32))


def test_embed_frames_and_dtype(encoder):
    speech = prepare_audio(_voiced(1.0, 16000), sampling_rate=16000)
    assert encoder.embed(speech, fps=25).shape[0] == 25
    assert encoder.embed(speech[:15999], fps=25).shape[0] == 24
    assert encoder.embed(speech, fps=30).shape[0] == 30
    with pytest.raises(ValueError, match="shorter than one video frame"):
        encoder.embed(speech[:100])


def test_normalisation_can_be_left_out():
    wave = 0.05 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000).astype(np.float32)
    as_is = prepare_audio(wave, sampling_rate=16000, normalize_loudness=False)
    assert np.array_equal(as_is, wave)
    assert not np.allclose(prepare_audio(wave, sampling_rate=16000), wave)


def _step_by_step_embedding(model, feature_extractor, speech, num_frames):
    """MultiTalk's recipe written out module by module: conv features, resampled to the video frames, projection,
    positional conv, then each encoder layer's output (a pre-LN encoder's final norm on the last one)."""
    values = feature_extractor(speech, sampling_rate=16000).input_values
    values = torch.from_numpy(np.squeeze(np.asarray(values))).float()[None]
    with torch.no_grad():
        features = model.feature_extractor(values)
        features = torch.nn.functional.interpolate(features, size=num_frames, mode="linear", align_corners=True)
        hidden, _ = model.feature_projection(features.transpose(1, 2))
        encoder = model.encoder
        hidden = hidden + encoder.pos_conv_embed(hidden)
        if not model.config.do_stable_layer_norm:
            hidden = encoder.layer_norm(hidden)
        layers = []
        for layer in encoder.layers:
            out = layer(hidden, attention_mask=None)
            hidden = out[0] if isinstance(out, (tuple, list)) else out
            layers.append(hidden)
        if model.config.do_stable_layer_norm:
            layers[-1] = encoder.layer_norm(layers[-1])
    return torch.stack(layers, dim=2)[0]


@pytest.mark.parametrize("stable_layer_norm", [False, True])
def test_embedding_follows_the_recipe_for_both_encoder_kinds(stable_layer_norm):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=37,
        conv_dim=(16,) * 7,
        do_stable_layer_norm=stable_layer_norm,
        feat_extract_norm="layer" if stable_layer_norm else "group",
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    torch.manual_seed(0)
    model, feature_extractor = Wav2Vec2Model(config).eval(), Wav2Vec2FeatureExtractor()
    speech = prepare_audio(_voiced(1.2, 16000), sampling_rate=16000)
    expected = _step_by_step_embedding(model, feature_extractor, speech, num_frames=30)
    assert _max_err(encode_speech(model, feature_extractor, speech), expected) < 1e-6


def test_embedding_runs_through_offload_hooks(encoder):
    """Sequential CPU offload leaves the weights on "meta" and loads them in forward hooks: the embedding must go
    through the model's forward (on a GPU, model CPU offload likewise moves wav2vec2 only when forward is called)."""
    from accelerate import cpu_offload

    speech = prepare_audio(_voiced(1.0, 16000), sampling_rate=16000)
    expected = encoder.embed(speech)
    offloaded = MultiTalkAudioEncoder.from_pretrained(WAV2VEC)
    cpu_offload(offloaded.model, execution_device=torch.device("cpu"))
    assert next(offloaded.model.parameters()).device.type == "meta"
    assert torch.equal(offloaded.embed(speech), expected)
