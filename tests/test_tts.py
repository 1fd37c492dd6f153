"""Text-to-speech for --audio_mode tts: dialogue parsing, track layout, espeak-ng (run for real) and Kokoro-82M
(the kokoro package with a randomly initialised model saved in Kokoro-82M's file layout; nothing is downloaded)."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from diffusers_multitalk.audio import tts as tts_mod
from diffusers_multitalk.audio.tts import (
    DialogueTurn,
    EspeakEngine,
    KokoroEngine,
    TTSEngineUnavailableError,
    TTSResult,
    find_kokoro_dir,
    parse_dialogue,
    resolve_tts_engine,
    synthesize_dialogue,
    tts_from_json_block,
)
from diffusers_multitalk.audio.tts import engines as tts_engines


SR = 16000
REFERENCE_TEXT = "(s1) do you know multi-talk? (s2) yes, I know it, that's amazing! (s1) Me too."


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_kokoro(tmp_path, monkeypatch):
    """No Kokoro-82M folder anywhere the automatic choice looks."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(tts_mod.KOKORO_DIR_ENV, raising=False)
    monkeypatch.setattr(tts_engines, "_hf_cached_kokoro_dir", lambda: None)
    return tmp_path


@pytest.fixture(scope="module")
def espeak():
    assert shutil.which("espeak-ng"), "espeak-ng is not installed: apt-get install espeak-ng (scripts/test.sh does)"
    return shutil.which("espeak-ng")


class ToneEngine:
    """A deterministic engine for layout tests: a tone at 24 kHz, 0.1 s per character, pitch by voice."""

    name = "tone"

    def __init__(self, sample_rate=24000):
        self.sample_rate = sample_rate
        self.calls = []

    def default_voice(self, speaker):
        return f"tone{speaker}"

    def voice_for(self, voice, speaker):
        return voice if voice is not None else self.default_voice(speaker)

    def synthesize(self, text, voice):
        self.calls.append((text, voice))
        n = int(0.1 * self.sample_rate * len(text))
        freq = 200.0 + 100.0 * (sum(map(ord, voice)) % 7)
        t = np.arange(n) / self.sample_rate
        return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05).astype(np.float32), self.sample_rate


def _resampled_len(n, sr_in):
    import librosa

    return librosa.resample(np.ones(n, np.float32), orig_sr=sr_in, target_sr=SR).shape[0]


def _active(track, eps=0.0):
    return np.flatnonzero(np.abs(track) > eps)


# ------------------------------------------------------------------------------------------------------------
# parse_dialogue
# ------------------------------------------------------------------------------------------------------------


def test_parse_reference_dialogue():
    assert parse_dialogue(REFERENCE_TEXT) == [
        DialogueTurn(0, "do you know multi-talk?"),
        DialogueTurn(1, "yes, I know it, that's amazing!"),
        DialogueTurn(0, "Me too."),
    ]


def test_parse_whitespace_newlines_and_tag_spelling():
    text = "  \n(s1)\n   Hello there.\n  How are you?  \n\n( s2 )fine,\tthanks\n(S1)good"
    assert parse_dialogue(text) == [
        DialogueTurn(0, "Hello there.\n  How are you?"),  # a turn keeps its inner newlines (Kokoro's segments)
        DialogueTurn(1, "fine,\tthanks"),
        DialogueTurn(0, "good"),
    ]


def test_parse_keeps_ordinary_parentheses():
    text = "(s1) I said (quietly) hello (see 1) (s2) (laughs) ok (s) (s 2x) (s3)"
    turns = parse_dialogue("(s1) I said (quietly) hello (see 1) (s2) (laughs) ok (s) (s 2x)")
    assert turns == [DialogueTurn(0, "I said (quietly) hello (see 1)"), DialogueTurn(1, "(laughs) ok (s) (s 2x)")]
    # an empty last turn is dropped
    assert parse_dialogue(text)[-1] == DialogueTurn(1, "(laughs) ok (s) (s 2x)")


def test_parse_untagged_text_is_one_speaker():
    assert parse_dialogue("  Just one person talking (really).\n") == [
        DialogueTurn(0, "Just one person talking (really).")
    ]


def test_parse_many_speakers_and_numbers():
    turns = parse_dialogue("(s3) c (s1) a (s12) l (s2) b")
    assert [t.speaker for t in turns] == [2, 0, 11, 1]


def test_parse_empty_turns_are_dropped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="diffusers_multitalk.audio.tts"):
        turns = parse_dialogue("(s1)   (s2) hi (s1)\n\n(s2) there (s1)")
    assert turns == [DialogueTurn(1, "hi"), DialogueTurn(1, "there")]
    assert "empty turn" in caplog.text and "(s1)" in caplog.text


@pytest.mark.parametrize("text", ["", "   ", "\n\t\n"])
def test_parse_empty_text(text):
    with pytest.raises(ValueError, match="empty"):
        parse_dialogue(text)


def test_parse_only_empty_turns():
    with pytest.raises(ValueError, match="Every turn .* is empty"):
        parse_dialogue("(s1) (s2)\n(s1)")


def test_parse_text_before_first_tag():
    with pytest.raises(ValueError, match="before its first speaker tag.*'hello'"):
        parse_dialogue("hello (s1) hi (s2) yo")


def test_parse_speaker_zero():
    with pytest.raises(ValueError, match=r"\(s0\).*numbered from 1"):
        parse_dialogue("(s0) hi")


def test_parse_rejects_non_strings():
    with pytest.raises(TypeError):
        parse_dialogue(None)


# ------------------------------------------------------------------------------------------------------------
# layout (a deterministic tone engine)
# ------------------------------------------------------------------------------------------------------------


def test_tracks_are_aligned_in_turn_order():
    engine = ToneEngine()
    tracks, mixed = synthesize_dialogue("(s1) abcd (s2) abcdefgh (s1) ab", voices=["x", "y"], engine=engine)
    assert engine.calls == [("abcd", "x"), ("abcdefgh", "y"), ("ab", "x")]
    lens = [_resampled_len(int(0.1 * 24000 * n), 24000) for n in (4, 8, 2)]
    assert len(tracks) == 2
    assert all(t.dtype == np.float32 and t.shape == mixed.shape for t in tracks)
    assert mixed.shape[0] == sum(lens)
    a, b = lens[0], lens[0] + lens[1]
    # speaker 1 speaks in [0, a) and [b, end), speaker 2 in [a, b); exact silence elsewhere
    assert np.all(tracks[0][a:b] == 0) and np.all(tracks[1][:a] == 0) and np.all(tracks[1][b:] == 0)
    assert np.all(np.abs(tracks[0][:a]) > 0) and np.all(np.abs(tracks[1][a:b]) > 0)
    assert np.all(np.abs(tracks[0][b:]) > 0)
    np.testing.assert_allclose(mixed, tracks[0] + tracks[1], atol=1e-7)


def test_pause_between_turns():
    engine = ToneEngine(sample_rate=SR)  # no resampling: lengths are exact
    tracks, mixed = synthesize_dialogue("(s1) ab (s2) abc (s2) a", engine=engine, pause=0.25)
    n1, n2, n3, gap = 3200, 4800, 1600, 4000
    assert mixed.shape[0] == n1 + n2 + n3 + 2 * gap
    assert np.all(mixed[n1 : n1 + gap] == 0)
    assert np.all(mixed[n1 + gap + n2 : n1 + gap + n2 + gap] == 0)
    assert _active(tracks[0]).max() == n1 - 1
    assert _active(tracks[1]).min() == n1 + gap
    assert _active(tracks[1]).max() == mixed.shape[0] - 1


@pytest.mark.parametrize("pause", [-0.1, float("nan"), "1", True])
def test_bad_pause(pause):
    with pytest.raises(ValueError, match="pause"):
        synthesize_dialogue("(s1) hi", engine=ToneEngine(), pause=pause)


def test_single_speaker_without_tags():
    tracks, mixed = synthesize_dialogue("Hello there", engine=ToneEngine())
    assert len(tracks) == 1
    np.testing.assert_array_equal(tracks[0], mixed)


def test_three_speakers_and_default_voices():
    engine = ToneEngine()
    tracks, mixed = synthesize_dialogue("(s1) a (s2) bb (s3) ccc", engine=engine)
    assert len(tracks) == 3
    assert [c[1] for c in engine.calls] == ["tone0", "tone1", "tone2"]
    starts = [_active(t).min() for t in tracks]
    assert starts == sorted(starts)


def test_voices_decide_the_number_of_tracks():
    tracks, mixed = synthesize_dialogue("(s1) abc", voices=["x", "y"], engine=ToneEngine())
    assert len(tracks) == 2 and not np.any(tracks[1]) and tracks[1].shape == mixed.shape


def test_unknown_speaker_for_the_voices():
    with pytest.raises(ValueError, match=r"unknown speaker.*\(s3\).*only 2 voice"):
        synthesize_dialogue("(s1) a (s3) b", voices=["x", "y"], engine=ToneEngine())
    with pytest.raises(ValueError, match=r"unknown speaker.*\(s2\)"):
        synthesize_dialogue("(s1) a (s2) b", voices="x", engine=ToneEngine())


def test_empty_text_is_refused():
    with pytest.raises(ValueError, match="empty"):
        synthesize_dialogue("   ", engine=ToneEngine())


def test_engine_object_must_synthesize():
    with pytest.raises(TypeError, match="synthesize"):
        synthesize_dialogue("hi", engine=object())


# ------------------------------------------------------------------------------------------------------------
# espeak-ng (the real program)
# ------------------------------------------------------------------------------------------------------------


def test_espeak_engine_speaks(espeak):
    engine = EspeakEngine(voice="en-us", rate=175)
    wave, sr = engine.synthesize("-leading dash (in parentheses) and text", "en-us+f3")
    assert sr == 22050 and wave.dtype == np.float32 and wave.ndim == 1
    assert wave.shape[0] > sr  # more than a second of speech
    assert 0.05 < np.abs(wave).max() <= 1.0


def test_espeak_rate_changes_duration(espeak):
    slow, _ = EspeakEngine(rate=120).synthesize("one two three four five six seven eight")
    fast, _ = EspeakEngine(rate=300).synthesize("one two three four five six seven eight")
    assert fast.shape[0] < 0.7 * slow.shape[0]


def test_espeak_unknown_voice(espeak):
    with pytest.raises(ValueError, match="no voice 'xx-nosuchvoice'.*espeak-ng --voices"):
        EspeakEngine().synthesize("hi", "xx-nosuchvoice")


def test_espeak_not_installed(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TTSEngineUnavailableError, match="apt-get install espeak-ng"):
        EspeakEngine()


def test_espeak_bad_rate(espeak):
    with pytest.raises(ValueError, match="rate"):
        EspeakEngine(rate=0)


def test_espeak_maps_kokoro_voices(espeak):
    engine = EspeakEngine()
    assert engine.voice_for("weights/Kokoro-82M/voices/af_heart.pt", 0).startswith("en-us+f")
    assert engine.voice_for("am_adam", 1).startswith("en-us+m")
    assert engine.voice_for("bf_emma", 0).startswith("en-gb+f")
    assert engine.voice_for("de", 0) == "de"
    assert engine.voice_for(None, 0) == "en-us+f3" and engine.voice_for(None, 1) == "en-us+m3"


def test_dialogue_with_espeak_by_default(espeak, no_kokoro, caplog):
    """Out of the box (no Kokoro weights): espeak-ng speaks, and says so."""
    with caplog.at_level(logging.INFO, logger="diffusers_multitalk.audio.tts"):
        tracks, mixed = synthesize_dialogue("(s1) do you know multi-talk? (s2) yes, I know it!", pause=0.1)
    assert "TTS engine: espeak-ng" in caplog.text and "no Kokoro-82M weights found" in caplog.text
    assert any(r.levelno == logging.WARNING and "espeak-ng" in r.getMessage() for r in caplog.records)
    assert len(tracks) == 2 and all(t.shape == mixed.shape and t.dtype == np.float32 for t in tracks)
    first, second = _active(tracks[0]), _active(tracks[1])
    assert first.size and second.size and first.max() < second.min()  # s1 speaks first, then s2, no overlap
    assert second.min() - first.max() >= int(0.1 * SR)  # the pause
    np.testing.assert_allclose(mixed, tracks[0] + tracks[1], atol=1e-7)
    assert mixed.shape[0] / SR > 1.5


def test_espeak_loudness_normalize(espeak):
    import pyloudnorm as pyln

    tracks, _ = synthesize_dialogue(
        "(s1) this sentence is long enough to measure its loudness. (s2) and so is "
        "this one, spoken by the second person.",
        engine="espeak-ng",
        loudness_normalize=True,
    )
    meter = pyln.Meter(SR)
    for track in tracks:
        assert abs(meter.integrated_loudness(track.astype(np.float64)) - (-23.0)) < 0.5


def test_espeak_speed(espeak):
    engine = resolve_tts_engine("espeak", speed=1.5, lang_code="b")
    assert isinstance(engine, EspeakEngine) and engine.rate == round(175 * 1.5) and engine.voice == "en-gb"


def test_json_block_without_kokoro_weights(espeak, no_kokoro, caplog):
    """The reference's example block, where its Kokoro voice files do not exist: espeak-ng stands in."""
    block = {
        "text": REFERENCE_TEXT,
        "human1_voice": "weights/Kokoro-82M/voices/af_heart.pt",
        "human2_voice": "weights/Kokoro-82M/voices/am_adam.pt",
    }
    with caplog.at_level(logging.INFO, logger="diffusers_multitalk.audio.tts"):
        result = tts_from_json_block(block)
    assert isinstance(result, TTSResult) and result.engine == "espeak-ng" and result.sampling_rate == SR
    assert "TTS engine: espeak-ng" in caplog.text
    assert result.voices[0].startswith("en-us+f") and result.voices[1].startswith("en-us+m")
    assert len(result.tracks) == 2 and [t.speaker for t in result.turns] == [0, 1, 0]
    tracks, mixed = result
    s1, s2 = _active(tracks[0]), _active(tracks[1])
    assert s1.min() < s2.min() < s2.max() < s1.max()  # s1, then s2, then s1 again
    np.testing.assert_allclose(mixed, tracks[0] + tracks[1], atol=1e-7)


def test_json_block_single_voice(espeak, no_kokoro):
    result = tts_from_json_block({"text": "Hello, I am alone here.", "human1_voice": "en-us"})
    assert len(result.tracks) == 1 and result.voices == ["en-us"]


@pytest.mark.parametrize(
    "block, match",
    [
        ({"human1_voice": "en-us"}, "text is missing or empty"),
        ({"text": "  ", "human1_voice": "en-us"}, "text is missing or empty"),
        ({"text": "hi"}, "no human1_voice"),
        ({"text": "hi", "human2_voice": "en-us"}, "lacks human1_voice"),
        ({"text": "hi", "human1_voice": "en-us", "voice": "x"}, "unknown key"),
        ({"text": "hi", "human1_voice": ""}, "human1_voice must be a voice"),
        (
            {"text": "(s1) a (s3) b", "human1_voice": "en-us", "human2_voice": "en-gb"},
            r"\(s3\).*human1_voice, human2_voice",
        ),
    ],
)
def test_json_block_errors(block, match, espeak, no_kokoro):
    with pytest.raises(ValueError, match=match):
        tts_from_json_block(block)


# ------------------------------------------------------------------------------------------------------------
# engine choice
# ------------------------------------------------------------------------------------------------------------


def test_explicit_kokoro_never_falls_back(no_kokoro):
    with pytest.raises(FileNotFoundError, match="engine='kokoro' was asked for.*weights/Kokoro-82M"):
        resolve_tts_engine("kokoro")
    with pytest.raises(FileNotFoundError, match="engine='kokoro'"):
        synthesize_dialogue("(s1) hi", engine="kokoro")


def test_explicit_kokoro_dir_without_weights(no_kokoro):
    (no_kokoro / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks config.json, kokoro-v1_0.pth"):
        resolve_tts_engine(None, kokoro_dir=no_kokoro / "empty")
    assert find_kokoro_dir(no_kokoro / "empty") is None


def test_unknown_engine_and_language():
    with pytest.raises(ValueError, match="Unknown TTS engine 'festival'"):
        resolve_tts_engine("festival")
    with pytest.raises(ValueError, match="Unknown TTS lang_code 'xx'"):
        resolve_tts_engine("espeak", lang_code="xx")
    with pytest.raises(ValueError, match="speed"):
        resolve_tts_engine("espeak", speed=0)


def test_engine_object_is_used_as_is():
    engine = ToneEngine()
    assert resolve_tts_engine(engine) is engine


# ------------------------------------------------------------------------------------------------------------
# Kokoro-82M: the kokoro package with a random model in Kokoro-82M's layout
# ------------------------------------------------------------------------------------------------------------

# Phoneme symbols (punctuation, Latin letters, IPA) for the tiny model's vocab; misaki's phonemes map onto them.
_SYMBOLS = (
    ';:,.!?\u2014\u2026"()\u201c\u201d \u0303\u02a3\u02a5\u02a6\u02a8\u1d5d\uab67AIOQSTWY\u1d4a'
    "abcdefhijklmnopqrstuvwxyz\u0251\u0250\u0252\u00e6\u03b2\u0254\u0255\u00e7\u0256\u00f0\u02a4\u0259"
    "\u025a\u025b\u025c\u025f\u0261\u0265\u0268\u026a\u029d\u026f\u0270\u014b\u0273\u0272\u0274\u00f8"
    "\u0278\u03b8\u0153\u0279\u027e\u027b\u0281\u027d\u0282\u0283\u0288\u02a7\u028a\u028b\u028c\u0263"
    "\u0264\u03c7\u028e\u0292\u0294\u02c8\u02cc\u02d0\u02b0\u02b2\u2193\u2192\u2197\u2198\u1d7b"
)


def _tiny_kokoro_config():
    """Kokoro-82M's config.json with its keys and the decoder's fixed widths, smaller elsewhere for speed."""
    vocab = {ch: i + 1 for i, ch in enumerate(dict.fromkeys(_SYMBOLS))}
    return {
        "istftnet": {
            "upsample_kernel_sizes": [20, 12],
            "upsample_rates": [10, 6],
            "gen_istft_hop_size": 5,
            "gen_istft_n_fft": 20,
            "resblock_dilation_sizes": [[1, 3, 5]],
            "resblock_kernel_sizes": [3],
            "upsample_initial_channel": 512,
        },
        "dim_in": 64,
        "dropout": 0.2,
        "hidden_dim": 512,
        "max_conv_dim": 512,
        "max_dur": 4,
        "multispeaker": True,
        "n_layer": 1,
        "n_mels": 80,
        "n_token": 178,
        "style_dim": 128,
        "text_encoder_kernel_size": 5,
        "plbert": {
            "hidden_size": 32,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 512,
            "num_hidden_layers": 1,
            "dropout": 0.1,
        },
        "vocab": vocab,
    }


@pytest.fixture(scope="module")
def kokoro_dir(tmp_path_factory):
    """A Kokoro-82M folder: config.json, kokoro-v1_0.pth ({component: state dict with DataParallel's 'module.'
    prefix}, like the released file) and voices/<name>.pt ([510, 1, 256] style tensors), all random."""
    try:
        from kokoro.istftnet import Decoder
        from kokoro.modules import CustomAlbert, ProsodyPredictor, TextEncoder
    except ImportError as exc:  # not skipped: the Kokoro path must be tested
        pytest.fail(f"the kokoro package is needed for the Kokoro tests ({exc}): pip install kokoro")
    from transformers import AlbertConfig

    folder = tmp_path_factory.mktemp("Kokoro-82M")
    config = _tiny_kokoro_config()
    (folder / "config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    torch.manual_seed(0)
    parts = {
        "bert": CustomAlbert(AlbertConfig(vocab_size=config["n_token"], **config["plbert"])),
        "bert_encoder": torch.nn.Linear(config["plbert"]["hidden_size"], config["hidden_dim"]),
        "predictor": ProsodyPredictor(
            style_dim=config["style_dim"],
            d_hid=config["hidden_dim"],
            nlayers=config["n_layer"],
            max_dur=config["max_dur"],
            dropout=config["dropout"],
        ),
        "text_encoder": TextEncoder(
            channels=config["hidden_dim"],
            kernel_size=config["text_encoder_kernel_size"],
            depth=config["n_layer"],
            n_symbols=config["n_token"],
        ),
        "decoder": Decoder(
            dim_in=config["hidden_dim"], style_dim=config["style_dim"], dim_out=config["n_mels"], **config["istftnet"]
        ),
    }
    state = {name: {f"module.{k}": v for k, v in part.state_dict().items()} for name, part in parts.items()}
    torch.save(state, folder / "kokoro-v1_0.pth")
    (folder / "voices").mkdir()
    for i, name in enumerate(["af_heart", "am_adam", "ef_dora", "em_alex"]):
        generator = torch.Generator().manual_seed(i)
        torch.save(0.3 * torch.randn(510, 1, 256, generator=generator), folder / "voices" / f"{name}.pt")
    return folder


@pytest.fixture(scope="module")
def spanish_kokoro(kokoro_dir):
    """Spanish: misaki phonemises it with the espeak-ng library shipped by espeakng-loader (no spaCy model)."""
    return KokoroEngine(kokoro_dir, lang_code="es", speed=1.0, device="cpu")


def test_kokoro_loads_the_weights_of_the_folder(kokoro_dir, spanish_kokoro):
    from kokoro import KModel

    model = spanish_kokoro.model
    assert isinstance(model, KModel) and not model.training
    saved = torch.load(kokoro_dir / "kokoro-v1_0.pth", weights_only=True)
    for name, state in saved.items():
        loaded = getattr(model, name).state_dict()
        assert set(loaded) == {k[len("module.") :] for k in state}
        for key, value in state.items():
            assert torch.equal(loaded[key[len("module.") :]], value), f"{name}.{key} was not loaded"
    assert model.vocab == json.loads((kokoro_dir / "config.json").read_text(encoding="utf-8"))["vocab"]


def test_kokoro_voice_tensors(kokoro_dir, spanish_kokoro):
    voice = spanish_kokoro.load_voice("ef_dora")
    assert voice.shape == (510, 1, 256) and voice.dtype == torch.float32
    assert torch.equal(voice, torch.load(kokoro_dir / "voices" / "ef_dora.pt", weights_only=True))
    by_path = spanish_kokoro.load_voice(str(kokoro_dir / "voices" / "em_alex.pt"))
    assert torch.equal(by_path, torch.load(kokoro_dir / "voices" / "em_alex.pt", weights_only=True))
    assert spanish_kokoro.available_voices() == ["af_heart", "am_adam", "ef_dora", "em_alex"]
    assert [spanish_kokoro.default_voice(i) for i in range(3)] == ["ef_dora", "em_alex", "ef_dora"]


def test_kokoro_missing_voice_file(kokoro_dir, spanish_kokoro, tmp_path):
    missing = kokoro_dir / "voices" / "ef_nobody.pt"
    with pytest.raises(FileNotFoundError, match=f"'{missing}' does not exist.*available voices: af_heart"):
        spanish_kokoro.load_voice("ef_nobody")
    elsewhere = tmp_path / "voices" / "xf_custom.pt"
    with pytest.raises(FileNotFoundError, match=f"Kokoro voice file '{elsewhere}' does not exist"):
        spanish_kokoro.load_voice(str(elsewhere))
    # and before anything is spoken, from the dialogue API
    with pytest.raises(FileNotFoundError, match="ef_nobody.pt"):
        synthesize_dialogue("(s1) hola (s2) adiós", voices=["ef_dora", "ef_nobody"], engine=spanish_kokoro)


def test_kokoro_rejects_a_file_that_is_not_a_voice(spanish_kokoro, tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save(torch.zeros(510, 1, 64), bad)
    with pytest.raises(ValueError, match=r"not a Kokoro voice.*\[positions, 1, 256\]"):
        spanish_kokoro.load_voice(str(bad))


def test_kokoro_folder_checks(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        KokoroEngine(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="lacks kokoro-v1_0.pth"):
        KokoroEngine(tmp_path)


def test_kokoro_synthesizes_24k(spanish_kokoro):
    wave, sr = spanish_kokoro.synthesize("Hola, ¿cómo estás?\nMuy bien.", "ef_dora")
    assert sr == 24000 and wave.dtype == np.float32 and wave.ndim == 1
    # two segments (split on the newline), each a whole number of 300-sample frames (hop 5 x upsampling 60)
    assert wave.shape[0] > 0 and wave.shape[0] % 300 == 0 and np.all(np.isfinite(wave))


def test_kokoro_dialogue_layout(spanish_kokoro, caplog):
    text = "(s1) Hola, ¿sabes qué es multi-talk? (s2) ¡Sí, lo sé!"
    with caplog.at_level(logging.INFO, logger="diffusers_multitalk.audio.tts"):
        tracks, mixed = synthesize_dialogue(text, voices=["ef_dora", "em_alex"], engine=spanish_kokoro)
    assert "TTS (kokoro)" in caplog.text
    # durations do not depend on the decoder's noise: each turn's length is its 24 kHz length resampled
    n1 = _resampled_len(spanish_kokoro.synthesize("Hola, ¿sabes qué es multi-talk?", "ef_dora")[0].shape[0], 24000)
    n2 = _resampled_len(spanish_kokoro.synthesize("¡Sí, lo sé!", "em_alex")[0].shape[0], 24000)
    assert len(tracks) == 2 and mixed.shape[0] == n1 + n2
    assert all(t.shape == mixed.shape and t.dtype == np.float32 for t in tracks)
    assert not np.any(tracks[0][n1:]) and not np.any(tracks[1][:n1])
    assert np.any(tracks[0][:n1]) and np.any(tracks[1][n1:])
    np.testing.assert_allclose(mixed, tracks[0] + tracks[1], atol=1e-7)


def test_kokoro_chosen_automatically_from_the_json_voices(kokoro_dir, no_kokoro, caplog):
    block = {
        "text": "(s1) Hola. (s2) Buenos días.",
        "human1_voice": str(kokoro_dir / "voices" / "ef_dora.pt"),
        "human2_voice": str(kokoro_dir / "voices" / "em_alex.pt"),
    }
    with caplog.at_level(logging.INFO, logger="diffusers_multitalk.audio.tts"):
        result = tts_from_json_block(block, lang_code="e")
    assert result.engine == "kokoro"
    assert f"TTS engine: Kokoro-82M (kokoro) from '{kokoro_dir}'" in caplog.text
    assert len(result.tracks) == 2 and result.mixed.shape == result.tracks[0].shape


def test_kokoro_found_through_the_environment(kokoro_dir, no_kokoro, monkeypatch):
    monkeypatch.setenv(tts_mod.KOKORO_DIR_ENV, str(kokoro_dir))
    assert find_kokoro_dir() == kokoro_dir
    engine = resolve_tts_engine(None, lang_code="e", speed=1.2)
    assert isinstance(engine, KokoroEngine) and engine.repo_dir == kokoro_dir and engine.speed == 1.2
    assert isinstance(resolve_tts_engine("kokoro", lang_code="e"), KokoroEngine)


def test_kokoro_english_without_spacy_model(kokoro_dir, monkeypatch, caplog):
    if tts_engines._spacy_model_installed():
        pytest.skip("en_core_web_sm is installed here")
    import spacy.cli

    def no_download(*args, **kwargs):  # what spaCy does when the model cannot be fetched (offline here)
        raise SystemExit(1)

    monkeypatch.setattr(spacy.cli, "download", no_download)
    # automatic choice: espeak-ng, with the reason
    with caplog.at_level(logging.WARNING, logger="diffusers_multitalk.audio.tts"):
        engine = resolve_tts_engine(None, kokoro_dir=kokoro_dir)
    assert isinstance(engine, EspeakEngine) and "en_core_web_sm" in caplog.text
    # asked for explicitly: a clear error, no fallback
    kokoro = resolve_tts_engine("kokoro", kokoro_dir=kokoro_dir)
    with pytest.raises(TTSEngineUnavailableError, match="spacy download en_core_web_sm"):
        kokoro.synthesize("hello", "af_heart")
