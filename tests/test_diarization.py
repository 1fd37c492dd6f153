"""Speaker diarization of one mixed recording (audio.diarization, audio.speaker_models): conversations spoken by
espeak-ng voices at known turn times (benchmarks/bench_diarization.synthesize_conversation), the error rate's
arithmetic, the per-person tracks, the re-built VAD against silero-vad's own TorchScript model, and the pyannote
route's errors and glue (pyannote itself is not installed here: a stand-in module plays it)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from diffusers_multitalk.audio.diarization import (
    Diarization,
    Turn,
    diarization_error_rate,
    diarize,
    person_tracks,
)


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

HAVE_WEIGHTS = all(importlib.util.find_spec(m) is not None for m in ("silero_vad", "resemblyzer"))
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason="the embedded diarizer's weights: pip install -e '.[conversation]'"
)
needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="conversations are synthesised with espeak-ng: apt-get install espeak-ng"
)
SR = 16000


@pytest.fixture(scope="module")
def two_speakers():
    from bench_diarization import synthesize_conversation

    return synthesize_conversation(2, 35, seed=11)


# --------------------------------------------------------------------------------------------------------------------
# real conversations
# --------------------------------------------------------------------------------------------------------------------


@needs_weights
@needs_espeak
def test_two_speakers_found_with_low_error_and_numbered_by_first_turn(two_speakers):
    wave, reference = two_speakers
    result = diarize(wave, sample_rate=SR)  # count estimated
    assert result.num_speakers == 2
    score = diarization_error_rate(reference, result)
    assert score.der <= 0.10, score
    assert result.turns[0].speaker == 1 and abs(result.turns[0].start - reference[0].start) < 0.3
    assert score.mapping == {1: 1, 2: 2}  # who speaks first is speaker 1, in the reference too
    assert [t.start for t in result.turns] == sorted(t.start for t in result.turns)
    assert result.to_json()[0].keys() == {"start", "end", "speaker"}


@needs_weights
@needs_espeak
@pytest.mark.parametrize("count", [3, 4])
def test_three_and_four_speakers(count):
    from bench_diarization import synthesize_conversation

    wave, reference = synthesize_conversation(count, 45, seed=20 + count)
    given = diarize(wave, count, sample_rate=SR)
    assert given.num_speakers == count
    assert diarization_error_rate(reference, given).der <= 0.15
    assert diarize(wave, sample_rate=SR).num_speakers == count  # and the count is estimated right


@needs_weights
@needs_espeak
def test_one_voice_is_one_speaker_and_a_file_path_works(tmp_path):
    import soundfile as sf
    from bench_diarization import synthesize_conversation

    wave, reference = synthesize_conversation(1, 25, seed=5)
    path = tmp_path / "monologue.wav"
    sf.write(path, wave, SR)
    result = diarize(path)
    assert result.num_speakers == 1 and abs(result.duration - len(wave) / SR) < 0.01
    assert diarization_error_rate(reference, result).der <= 0.10


@needs_weights
def test_silence_has_no_turns_and_silent_tracks():
    silence = np.zeros(3 * SR, dtype=np.float32)
    result = diarize(silence, sample_rate=SR)
    assert result.turns == [] and result.num_speakers == 0
    asked = diarize(silence, 2, sample_rate=SR)
    assert asked.num_speakers == 2 and asked.turns == []
    tracks = person_tracks(silence, asked)
    assert len(tracks) == 2 and all(len(t) == len(silence) and not t.any() for t in tracks)


# --------------------------------------------------------------------------------------------------------------------
# tracks
# --------------------------------------------------------------------------------------------------------------------


def test_tracks_are_silent_where_the_others_speak_and_overlap_goes_to_both():
    rng = np.random.default_rng(0)
    wave = rng.uniform(-0.5, 0.5, 5 * SR).astype(np.float32)
    result = Diarization([Turn(0.5, 2.0, 1), Turn(1.8, 3.0, 2), Turn(3.5, 4.5, 1)], 2, 5.0)
    one, two = person_tracks(wave, result, fade=0.01)
    assert len(one) == len(two) == len(wave)
    inside = lambda a, b: slice(int(a * SR) + 200, int(b * SR) - 200)  # away from the 10 ms fades
    np.testing.assert_array_equal(one[inside(0.5, 2.0)], wave[inside(0.5, 2.0)])
    np.testing.assert_array_equal(two[inside(1.8, 3.0)], wave[inside(1.8, 3.0)])
    np.testing.assert_array_equal(one[inside(1.8, 2.0)], two[inside(1.8, 2.0)])  # the overlap is in both
    assert not one[int(2.0 * SR) : int(3.5 * SR)].any() and not one[: int(0.5 * SR)].any()
    assert not two[: int(1.8 * SR)].any() and not two[int(3.0 * SR) :].any()
    assert abs(one[int(0.5 * SR)]) < abs(wave[int(0.5 * SR)]) * 0.1 + 1e-6  # faded in, no click


# --------------------------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------------------------


def test_der_counts_missed_false_alarm_and_confusion_with_the_best_mapping():
    reference = [(0.0, 10.0, "A"), (10.0, 20.0, "B")]
    assert diarization_error_rate(reference, [(0.0, 10.0, 7), (10.0, 20.0, 3)]).der == 0.0  # labels need not match
    score = diarization_error_rate(reference, [(0.0, 8.0, 1), (10.0, 20.0, 1), (20.0, 22.0, 2)])
    # mapping 1 -> B (10 s matched) beats 1 -> A (8 s): 8 s confused, 2 s missed (8-10), 2 s false alarm (20-22)
    assert score.mapping == {1: "B"}
    assert (round(score.confusion, 2), round(score.missed, 2), round(score.false_alarm, 2)) == (8.0, 2.0, 2.0)
    assert score.der == pytest.approx(12.0 / 20.0)
    overlap = diarization_error_rate([(0, 4, 1), (2, 6, 2)], [(0, 6, 1)])  # one hypothesis speaker for an overlap
    assert overlap.missed == pytest.approx(2.0) and overlap.confusion == pytest.approx(2.0)
    assert overlap.der == pytest.approx(4.0 / 8.0)
    assert diarization_error_rate([], []).der == 0.0


def test_bad_arguments_are_refused():
    wave = np.zeros(SR, dtype=np.float32)
    with pytest.raises(ValueError, match="diarizer"):
        diarize(wave, sample_rate=SR, diarizer="whisper")
    with pytest.raises(ValueError, match="num_speakers"):
        diarize(wave, 5, sample_rate=SR)
    with pytest.raises(ValueError, match="sample rate"):
        diarize(wave)


# --------------------------------------------------------------------------------------------------------------------
# the networks
# --------------------------------------------------------------------------------------------------------------------


@needs_weights
def test_batched_vad_matches_silero_torchscript_chunk_by_chunk():
    import torch

    from diffusers_multitalk.audio.speaker_models import SileroVAD

    rng = np.random.default_rng(1)
    t = np.arange(3 * SR) / SR
    wave = (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 0.7 * t) > 0)).astype(np.float32)
    wave += rng.normal(0, 0.01, len(wave)).astype(np.float32)
    ours = SileroVAD.from_package().probabilities(wave, block_chunks=17)  # blocks carry the state over
    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad  # sets torch's threads to 1 on import

        script = load_silero_vad()
        padded = torch.from_numpy(np.pad(wave, (0, (-len(wave)) % 512)))
        with torch.no_grad():
            theirs = np.array([float(script(padded[i : i + 512], SR)) for i in range(0, len(padded), 512)])
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_missing_weight_package_names_what_to_install():
    from diffusers_multitalk.audio.speaker_models import package_file

    with pytest.raises(ImportError, match=r"diffusers-multitalk\[conversation\]"):
        package_file("no_such_package_here", "weights.pt", "no-such-package")


# --------------------------------------------------------------------------------------------------------------------
# pyannote
# --------------------------------------------------------------------------------------------------------------------


def test_pyannote_missing_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyannote.audio", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install pyannote\.audio.*speaker-diarization-3\.1"):
        diarize(np.zeros(SR, dtype=np.float32), sample_rate=SR, diarizer="pyannote")


def test_pyannote_route_turns_its_annotation_into_numbered_turns(monkeypatch):
    calls = {}

    class Segment:
        def __init__(self, start, end):
            self.start, self.end = start, end

    class Annotation:
        def itertracks(self, yield_label=False):
            yield Segment(2.0, 3.0), "A", "SPEAKER_07"
            yield Segment(0.5, 1.5), "B", "SPEAKER_03"  # heard first: becomes speaker 1
            yield Segment(3.5, 4.0), "C", "SPEAKER_03"

    class Pipeline:
        @classmethod
        def from_pretrained(cls, source, token=None):
            calls["source"], calls["token"] = source, token
            return cls()

        def __call__(self, audio, **limits):
            calls["limits"], calls["shape"] = limits, tuple(audio["waveform"].shape)
            return types.SimpleNamespace(speaker_diarization=Annotation())  # pyannote.audio 4's output

    fake = types.ModuleType("pyannote.audio")
    fake.Pipeline = Pipeline
    monkeypatch.setitem(sys.modules, "pyannote", types.ModuleType("pyannote"))
    monkeypatch.setitem(sys.modules, "pyannote.audio", fake)
    monkeypatch.setenv("HF_TOKEN", "token-from-env")
    result = diarize(np.zeros(5 * SR, dtype=np.float32), sample_rate=SR, diarizer="pyannote", pyannote_pipeline="/p")
    assert calls == {
        "source": "/p",
        "token": "token-from-env",
        "limits": {"min_speakers": 1, "max_speakers": 4},
        "shape": (1, 5 * SR),
    }
    assert result.turns == [Turn(0.5, 1.5, 1), Turn(2.0, 3.0, 2), Turn(3.5, 4.0, 1)]
    assert result.num_speakers == 2 and result.diarizer == "pyannote"
    diarize(np.zeros(SR, dtype=np.float32), 3, sample_rate=SR, diarizer="pyannote")
    assert calls["limits"] == {"num_speakers": 3} and calls["source"] == "pyannote/speaker-diarization-3.1"
