"""The espeak-ng engine: no weights, run as a subprocess; the default when no Kokoro-82M folder is found."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

from .dialogue import TTSEngineUnavailableError
from .kokoro import (
    _KOKORO_VOICE_NAME,
    ESPEAK_LANGUAGE,
    KOKORO_DOWNLOAD_HINT,
    KOKORO_INSTALL_HINT,
    _looks_like_path,
)


logger = logging.getLogger(__name__)


ESPEAK_INSTALL_HINT = "apt-get install espeak-ng (Debian/Ubuntu; brew install espeak-ng on macOS)"
ESPEAK_DEFAULT_RATE = 175  # espeak-ng's own default, words per minute
# espeak-ng voice variants given to speakers 1, 2, 3, ... when they have no voice: female, male, alternating.
_ESPEAK_SPEAKER_VARIANTS = ("f3", "m3", "f2", "m1", "f4", "m7", "f1", "m2")
_ESPEAK_FEMALE = ("f3", "f2", "f4", "f1", "f5")
_ESPEAK_MALE = ("m3", "m1", "m7", "m2", "m4", "m6")
_ESPEAK_NAMES = ("espeak", "espeak-ng", "espeakng", "espeak_ng")
# espeak-ng


def _espeak_voice_for_kokoro(name: str) -> Optional[str]:
    """The espeak-ng voice standing in for a Kokoro voice name (language from its first letter, a female or male
    variant from its second, chosen by name so that different Kokoro voices tend to sound different)."""
    match = _KOKORO_VOICE_NAME.match(name)
    if not match:
        return None
    variants = _ESPEAK_FEMALE if match.group(2) == "f" else _ESPEAK_MALE
    return f"{ESPEAK_LANGUAGE[match.group(1)]}+{variants[zlib.crc32(name.encode()) % len(variants)]}"


class EspeakEngine:
    """espeak-ng run as a subprocess (``espeak-ng -v VOICE -s RATE -w out.wav --stdin``).

    Args:
        voice: the espeak-ng voice for speakers without one (``espeak-ng --voices`` lists them, e.g. ``en-us``,
            ``en-gb``, ``de``; a ``+variant`` such as ``en-us+f3`` picks a timbre). Speakers without a voice get
            this language with alternating female/male variants (speaker 1 ``+f3``, speaker 2 ``+m3``, ...).
        rate: speaking rate in words per minute (espeak-ng's default is 175).
        executable: the espeak-ng program (default: ``espeak-ng`` from ``PATH``).

    Kokoro voice names or ``.pt`` paths (as in the reference's JSON) are mapped to an espeak-ng voice of the
    same language and gender. ``synthesize`` returns espeak-ng's 22.05 kHz mono waveform.
    """

    name = "espeak-ng"

    def __init__(self, voice: str = "en-us", rate: int = ESPEAK_DEFAULT_RATE, executable: Optional[str] = None):
        found = shutil.which(executable or "espeak-ng")
        if found is None:
            raise TTSEngineUnavailableError(
                f"espeak-ng is not installed ({executable or 'espeak-ng'} not found on PATH); install it with "
                f"`{ESPEAK_INSTALL_HINT}`, or install Kokoro-82M ({KOKORO_INSTALL_HINT}; {KOKORO_DOWNLOAD_HINT})."
            )
        if not isinstance(voice, str) or not voice.strip():
            raise ValueError(f"EspeakEngine voice must be a non-empty espeak-ng voice name, got {voice!r}.")
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise ValueError(f"EspeakEngine rate must be a positive number of words per minute, got {rate!r}.")
        self.executable = found
        self.voice = voice.strip()
        self.rate = int(rate)

    def __repr__(self) -> str:
        return f"EspeakEngine(voice={self.voice!r}, rate={self.rate})"

    def default_voice(self, speaker: int) -> str:
        """The voice of speaker ``speaker`` (0-based) when none is given."""
        language, _, variant = self.voice.partition("+")
        if speaker == 0 and variant:
            return self.voice
        return f"{language}+{_ESPEAK_SPEAKER_VARIANTS[speaker % len(_ESPEAK_SPEAKER_VARIANTS)]}"

    def voice_for(self, voice: Any, speaker: int) -> str:
        """The espeak-ng voice for speaker ``speaker`` given ``voice`` (None, an espeak-ng voice, or a Kokoro
        voice name / ``.pt`` path, which is mapped)."""
        if voice is None:
            return self.default_voice(speaker)
        if not isinstance(voice, (str, os.PathLike)):
            raise TypeError(
                f"espeak-ng voices are names such as 'en-us' or 'en-us+f3'; speaker {speaker + 1} got a "
                f"{type(voice).__name__} (voice tensors are for the Kokoro engine)."
            )
        voice = os.fspath(voice).strip()
        if not voice:
            return self.default_voice(speaker)
        if _looks_like_path(voice) or _KOKORO_VOICE_NAME.match(voice):
            stem = Path(voice).stem if _looks_like_path(voice) else voice
            mapped = _espeak_voice_for_kokoro(stem)
            if mapped is None:
                mapped = self.default_voice(speaker)
                logger.warning(
                    "espeak-ng: speaker %d's voice %r is not a Kokoro voice name; using espeak-ng voice %r.",
                    speaker + 1,
                    voice,
                    mapped,
                )
            else:
                logger.info(
                    "espeak-ng: speaker %d's Kokoro voice %r is spoken with espeak-ng voice %r.",
                    speaker + 1,
                    voice,
                    mapped,
                )
            return mapped
        return voice

    def synthesize(self, text: str, voice: Optional[str] = None) -> Tuple[np.ndarray, int]:
        """Speak ``text`` with ``voice`` (default: speaker 1's voice); returns ``(float32 waveform, sample_rate)``."""
        import soundfile as sf

        voice = self.voice_for(voice, 0)
        with tempfile.TemporaryDirectory(prefix="multitalk_espeak_") as tmp:
            out = Path(tmp) / "speech.wav"
            # --stdin: the text never reaches the command line (a leading '-' would read as an option).
            cmd = [self.executable, "-b", "1", "-v", voice, "-s", str(self.rate), "-w", str(out), "--stdin"]
            try:
                proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=600)
            except OSError as exc:
                raise TTSEngineUnavailableError(
                    f"Could not run espeak-ng ({self.executable}): {exc}; reinstall it with `{ESPEAK_INSTALL_HINT}`."
                ) from exc
            detail = (proc.stderr or b"").decode("utf-8", errors="replace").strip()
            if proc.returncode != 0:
                if "voice" in detail.lower():
                    raise ValueError(
                        f"espeak-ng has no voice {voice!r} ({detail}); `espeak-ng --voices` lists the voices "
                        "(e.g. en-us, en-gb, de; add +f3 or +m3 for a variant)."
                    )
                raise RuntimeError(f"espeak-ng failed (exit status {proc.returncode}): {detail or 'no message'}")
            if not out.exists():
                raise RuntimeError(f"espeak-ng wrote no audio for {text!r} ({detail or 'no message'}).")
            wave, sample_rate = sf.read(str(out), dtype="float32", always_2d=False)
        if wave.ndim == 2:
            wave = wave.mean(axis=1)
        return np.ascontiguousarray(wave, dtype=np.float32), int(sample_rate)
