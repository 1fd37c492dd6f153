"""Text-to-speech for MultiTalk's ``--audio_mode tts``: one driving track per speaker from a tagged dialogue.

A dialogue such as ``"(s1) do you know multi-talk? (s2) yes, I know it!"`` is split into turns, each turn is
spoken with its speaker's voice, and the turns are laid out one after another on a common 16 kHz timeline: every
speaker gets a track of the full length that is silent while the others speak, and the mixed track is their sum
(the same ``(per_speaker_tracks, mixed_track)`` layout :func:`~diffusers_multitalk.audio.combine_speakers`
returns). Text without tags is one speaker's speech.

Two engines:

* **Kokoro-82M** through the ``kokoro`` package (``pip install 'diffusers-multitalk[tts]'``), loaded from a local
  folder in the layout of the ``hexgrad/Kokoro-82M`` repository: ``config.json``, ``kokoro-v1_0.pth`` and
  ``voices/<name>.pt`` (``multitalk download --target weights --tts`` fetches it to ``weights/Kokoro-82M``). This
  is what the original MultiTalk uses (24 kHz output).
* **espeak-ng** (``apt-get install espeak-ng``), run as a subprocess. It needs no weights and is the default when
  no Kokoro-82M folder is found, so TTS works out of the box; the speech is robotic but drives the lips.

The engine that runs is always logged; asking for ``engine="kokoro"`` never falls back to espeak-ng.

What the reference does with the synthesised speech, and what is done here:

* each speaker's Kokoro output is resampled to 16 kHz (``librosa.load(..., sr=16000)`` there, the same librosa
  resampler here, applied per turn so the silence of the other speakers stays exactly zero);
* it is **not** loudness-normalised: the reference applies -23 LUFS only to audio files, not to TTS output. Pass
  ``loudness_normalize=True`` to normalise each speaker's track like a file input (the pipeline's own
  :func:`~diffusers_multitalk.audio.prepare_audio` normalises tracks it is given as waveforms anyway);
* turns follow each other without a gap (``pause=0``); ``pause`` inserts silence between turns.
"""

from .dialogue import DialogueTurn, TTSEngineUnavailableError, TTSResult, parse_dialogue
from .engines import find_kokoro_dir, resolve_tts_engine
from .espeak import ESPEAK_DEFAULT_RATE, EspeakEngine
from .json_block import tts_from_json_block
from .kokoro import (
    KOKORO_CONFIG_NAME,
    KOKORO_DIR_ENV,
    KOKORO_SAMPLE_RATE,
    KOKORO_VOICES_DIR,
    KOKORO_WEIGHTS_NAME,
    KokoroEngine,
)
from .synthesis import synthesize_dialogue


__all__ = [
    "DialogueTurn",
    "ESPEAK_DEFAULT_RATE",
    "EspeakEngine",
    "KOKORO_CONFIG_NAME",
    "KOKORO_DIR_ENV",
    "KOKORO_SAMPLE_RATE",
    "KOKORO_VOICES_DIR",
    "KOKORO_WEIGHTS_NAME",
    "KokoroEngine",
    "TTSEngineUnavailableError",
    "TTSResult",
    "find_kokoro_dir",
    "parse_dialogue",
    "resolve_tts_engine",
    "synthesize_dialogue",
    "tts_from_json_block",
]
