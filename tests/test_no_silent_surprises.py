"""Nothing is cut, resampled or mixed down without a word: each case logs one line that says what happened."""

import logging

import numpy as np
import soundfile as sf
import torch

from diffusers_multitalk import make_tiny_pipeline
from diffusers_multitalk.audio.processing import prepare_audio


SR = 16000


def _speech(seconds, rate):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 200 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def test_resampling_and_downmixing_are_said(tmp_path, caplog):
    path = tmp_path / "studio.wav"
    wave = _speech(0.5, 48000)
    sf.write(path, np.stack([wave, wave], axis=1), 48000)
    with caplog.at_level(logging.WARNING, logger="diffusers_multitalk.audio.processing"):
        prepare_audio(str(path))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "studio.wav" in lines[0]
    assert "resampled from 48000 Hz to 16000 Hz" in lines[0] and "2 channels averaged to mono" in lines[0]
    caplog.clear()
    sf.write(tmp_path / "plain.wav", _speech(0.5, SR), SR)
    with caplog.at_level(logging.WARNING, logger="diffusers_multitalk.audio.processing"):
        prepare_audio(str(tmp_path / "plain.wav"))  # 16 kHz mono: nothing changes, nothing is said
        prepare_audio(_speech(0.5, 22050), sampling_rate=22050)
    assert [r.getMessage() for r in caplog.records] == [
        "the waveform: resampled from 22050 Hz to 16000 Hz (wav2vec2 takes 16 kHz mono speech)"
    ]


def test_a_prompt_past_the_text_length_is_said_to_be_cut(caplog):
    pipe = make_tiny_pipeline(seed=0)
    with caplog.at_level(logging.WARNING):
        pipe.encode_prompt("a person talks", do_classifier_free_guidance=False, max_sequence_length=64)
    assert not [r for r in caplog.records if "tokens long" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        embeds, _ = pipe.encode_prompt(
            "a person talks " * 10, do_classifier_free_guidance=False, max_sequence_length=64
        )
    said = [r.getMessage() for r in caplog.records if "tokens long" in r.getMessage()]
    # whitespace is collapsed, the trailing space dropped: 149 characters + the end-of-text token
    assert len(said) == 1 and "150 tokens long" in said[0] and "first 64" in said[0]
    assert embeds.shape[1] == 64 and torch.isfinite(embeds).all()


def test_an_existing_save_file_is_said_to_be_replaced(tmp_path, monkeypatch, capsys):
    from diffusers_multitalk import cli
    from diffusers_multitalk.cli import generate
    from diffusers_multitalk.runtime.errors import UserError

    old = tmp_path / "talk.mp4"
    old.write_bytes(b"an earlier video")

    def stop(*args, **kwargs):
        raise UserError("stopped before loading (test)")

    monkeypatch.setattr(generate, "load_pipeline", stop)
    status = cli.main(
        ["generate", "--tiny", "--input_json", "examples/two_person_tiny.json", "--save_file", str(tmp_path / "talk")]
    )
    err = capsys.readouterr().err
    assert status == 1 and "stopped before loading" in err
    assert f"--save_file {old}: exists; the new video replaces it once complete" in err
    assert old.read_bytes() == b"an earlier video"  # a refused or failed run leaves it as it was
