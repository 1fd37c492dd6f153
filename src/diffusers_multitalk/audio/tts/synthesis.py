"""A dialogue spoken turn by turn: one 16 kHz track per speaker on a common timeline, and their mix."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ..processing import (
    TARGET_SAMPLE_RATE,
    _librosa_default_res_type,
    combine_speakers,
    loudness_normalize,
)
from .dialogue import TTSResult, parse_dialogue
from .engines import _resolve_engine


logger = logging.getLogger(__name__)


# dialogue synthesis


def _voice_list(voices, num_speakers: int) -> list:
    if voices is None:
        return [None] * num_speakers
    if isinstance(voices, (str, os.PathLike)) or not isinstance(voices, Sequence):
        return [voices]
    return list(voices)


def _resample(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if sample_rate == TARGET_SAMPLE_RATE or wave.size == 0:
        return wave
    import librosa

    return librosa.resample(
        wave, orig_sr=int(sample_rate), target_sr=TARGET_SAMPLE_RATE, res_type=_librosa_default_res_type()
    ).astype(np.float32, copy=False)


def _voice_label(voice) -> Optional[str]:
    if voice is None or isinstance(voice, (str, os.PathLike)):
        return None if voice is None else os.fspath(voice)
    return f"<{type(voice).__name__}>"


def _synthesize(
    text,
    voices=None,
    engine=None,
    pause: float = 0.0,
    speed: float = 1.0,
    lang_code: str = "a",
    kokoro_dir=None,
    loudness_normalize_tracks: bool = False,
    hints: Sequence[Path] = (),
    voice_keys: Optional[Sequence[str]] = None,
) -> TTSResult:
    turns = parse_dialogue(text)
    if (
        isinstance(pause, bool)
        or not isinstance(pause, (int, float, np.floating, np.integer))
        or not math.isfinite(float(pause))
        or pause < 0
    ):
        raise ValueError(f"pause must be a number of seconds >= 0, got {pause!r}.")
    used = sorted({turn.speaker for turn in turns})
    voice_list = _voice_list(voices, used[-1] + 1)
    if not voice_list:
        raise ValueError("voices is empty; give one voice per speaker, or None for the engine's defaults.")
    unknown = [s for s in used if s >= len(voice_list)]
    if unknown:
        names = voice_keys or [f"voices[{i}]" for i in range(len(voice_list))]
        raise ValueError(
            f"The TTS text has turns of unknown speaker(s) {', '.join(f'(s{s + 1})' for s in unknown)}: there "
            f"{'is' if len(voice_list) == 1 else 'are'} only {len(voice_list)} voice(s) ({', '.join(names)}); "
            f"use (s1) ... (s{len(voice_list)}) or give a voice for each speaker."
        )
    silent = [i + 1 for i in range(len(voice_list)) if i not in used]
    if silent:
        logger.warning(
            "TTS: speaker(s) %s have no turn in the text; their tracks are silent.",
            ", ".join(f"(s{i})" for i in silent),
        )

    engine = _resolve_engine(engine, kokoro_dir, lang_code, speed, hints)
    voice_for = getattr(engine, "voice_for", None)
    resolved = [voice_for(v, i) if voice_for else v for i, v in enumerate(voice_list)]

    gap = int(round(float(pause) * TARGET_SAMPLE_RATE))
    segments = []  # (speaker, 16 kHz waveform)
    for turn in turns:
        wave, sample_rate = engine.synthesize(turn.text, resolved[turn.speaker])
        wave = _resample(wave, sample_rate)
        if wave.size == 0:
            logger.warning("TTS: (s%d) %r produced no audio; the turn is skipped.", turn.speaker + 1, turn.text)
            continue
        segments.append((turn.speaker, wave))
    if not segments:
        raise ValueError(f"The TTS engine produced no audio for {text!r}.")

    total = sum(w.shape[0] for _, w in segments) + gap * (len(segments) - 1)
    tracks = [np.zeros(total, dtype=np.float32) for _ in voice_list]
    offset = 0
    for speaker, wave in segments:
        tracks[speaker][offset : offset + wave.shape[0]] = wave
        offset += wave.shape[0] + gap
    if loudness_normalize_tracks:
        tracks = [loudness_normalize(t).astype(np.float32) if np.any(t) else t for t in tracks]
    tracks, mixed = combine_speakers(tracks, "para")
    engine_name = getattr(engine, "name", type(engine).__name__)
    logger.info(
        "TTS (%s): %d turn(s), %d speaker track(s) of %.2f s at %d Hz.",
        engine_name,
        len(segments),
        len(tracks),
        total / TARGET_SAMPLE_RATE,
        TARGET_SAMPLE_RATE,
    )
    return TTSResult(
        tracks=tracks,
        mixed=mixed,
        sampling_rate=TARGET_SAMPLE_RATE,
        engine=engine_name,
        voices=[_voice_label(v) for v in resolved],
        turns=turns,
    )


def synthesize_dialogue(
    text: str,
    voices=None,
    engine=None,
    pause: float = 0.0,
    speed: float = 1.0,
    lang_code: str = "a",
    kokoro_dir: Union[str, os.PathLike, None] = None,
    loudness_normalize: bool = False,
) -> Tuple[List[np.ndarray], np.ndarray]:
    """Speak a dialogue: one 16 kHz track per speaker, laid out turn after turn, and their mix.

    Args:
        text: ``"(s1) do you know multi-talk? (s2) yes, I know it!"``; ``(sN)`` starts speaker N's turn (see
            :func:`parse_dialogue`); text without tags is speaker 1's.
        voices: one voice per speaker, in order (``voices[0]`` for ``(s1)``); a single voice for one speaker;
            None (or None entries) for the engine's defaults. Kokoro: a voice name in ``<kokoro_dir>/voices``
            (``"af_heart"``), a ``.pt`` path or a voice tensor. espeak-ng: a voice such as ``"en-us+f3"``; Kokoro
            names/paths are mapped to a similar espeak-ng voice. The number of tracks is ``len(voices)`` when
            given (a speaker without turns gets a silent track), else the highest speaker tag.
        engine: None (Kokoro-82M if found, else espeak-ng), ``"kokoro"``, ``"espeak-ng"`` or an engine object;
            see :func:`resolve_tts_engine`. The engine that runs is logged.
        pause: seconds of silence between consecutive turns (default 0, as in the reference).
        speed: speaking speed (Kokoro's ``speed``; espeak-ng rate 175 wpm times it).
        lang_code: Kokoro's language code, ``"a"`` (American English) by default.
        kokoro_dir: the Kokoro-82M folder (default: searched, see :func:`find_kokoro_dir`).
        loudness_normalize: normalise each speaker's track to -23 LUFS (the reference does not for TTS).

    Returns:
        ``(per_speaker_tracks, mixed_track)``: float32 arrays at 16 kHz, all of the same length; each track is
        silent where the other speakers speak, and ``mixed_track`` is their sum.
    """
    result = _synthesize(
        text,
        voices,
        engine,
        pause=pause,
        speed=speed,
        lang_code=lang_code,
        kokoro_dir=kokoro_dir,
        loudness_normalize_tracks=loudness_normalize,
    )
    return result.tracks, result.mixed
