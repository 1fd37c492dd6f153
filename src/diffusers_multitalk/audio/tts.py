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

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .processing import TARGET_SAMPLE_RATE, _librosa_default_res_type, combine_speakers, loudness_normalize


logger = logging.getLogger(__name__)

__all__ = [
    "DialogueTurn",
    "ESPEAK_DEFAULT_RATE",
    "EspeakEngine",
    "KOKORO_DIR_ENV",
    "KOKORO_SAMPLE_RATE",
    "KokoroEngine",
    "TTSEngineUnavailableError",
    "TTSResult",
    "find_kokoro_dir",
    "parse_dialogue",
    "resolve_tts_engine",
    "synthesize_dialogue",
    "tts_from_json_block",
]

# Kokoro-82M's layout (the files of hexgrad/Kokoro-82M that the TTS uses).
KOKORO_REPO_ID = "hexgrad/Kokoro-82M"
KOKORO_CONFIG_NAME = "config.json"
KOKORO_WEIGHTS_NAME = "kokoro-v1_0.pth"
KOKORO_VOICES_DIR = "voices"
KOKORO_SAMPLE_RATE = 24000
# Where a Kokoro-82M folder is looked for when none is given: this environment variable, then the reference's
# ``weights/Kokoro-82M`` (relative to the working directory), then the Hugging Face cache (no download).
KOKORO_DIR_ENV = "MULTITALK_KOKORO_DIR"
DEFAULT_KOKORO_DIR = Path("weights") / "Kokoro-82M"
KOKORO_DOWNLOAD_HINT = (
    "download it with `multitalk download --target weights --tts` (Kokoro-82M goes to weights/Kokoro-82M), "
    f"or point kokoro_dir / ${KOKORO_DIR_ENV} at a folder with {KOKORO_CONFIG_NAME}, {KOKORO_WEIGHTS_NAME} and "
    f"{KOKORO_VOICES_DIR}/<name>.pt"
)
KOKORO_INSTALL_HINT = "pip install 'diffusers-multitalk[tts]' (or: pip install kokoro)"
ESPEAK_INSTALL_HINT = "apt-get install espeak-ng (Debian/Ubuntu; brew install espeak-ng on macOS)"

# Kokoro's language codes (KPipeline's ``lang_code``), their aliases, and the espeak-ng voice of each language.
KOKORO_LANG_ALIASES = {
    "en-us": "a", "en-gb": "b", "es": "e", "fr-fr": "f", "hi": "h", "it": "i", "pt-br": "p", "ja": "j", "zh": "z",
}
ESPEAK_LANGUAGE = {
    "a": "en-us", "b": "en-gb", "e": "es", "f": "fr-fr", "h": "hi", "i": "it", "j": "ja", "p": "pt-br", "z": "cmn",
}
# Kokoro-82M voices used when a speaker has none: the reference's pair (af_heart, am_adam) for American English,
# a female and a male voice for the others; further speakers take the language's other voices in the folder.
KOKORO_DEFAULT_VOICES = {
    "a": ("af_heart", "am_adam"),
    "b": ("bf_emma", "bm_george"),
    "e": ("ef_dora", "em_alex"),
    "f": ("ff_siwis",),
    "h": ("hf_alpha", "hm_omega"),
    "i": ("if_sara", "im_nicola"),
    "j": ("jf_alpha", "jm_kumo"),
    "p": ("pf_dora", "pm_alex"),
    "z": ("zf_xiaobei", "zm_yunjian"),
}
# A Kokoro voice name: <language letter><f|m>_<name>, e.g. af_heart.
_KOKORO_VOICE_NAME = re.compile(r"^([abefhijpz])([fm])_\w+$")

ESPEAK_DEFAULT_RATE = 175  # espeak-ng's own default, words per minute
# espeak-ng voice variants given to speakers 1, 2, 3, ... when they have no voice: female, male, alternating.
_ESPEAK_SPEAKER_VARIANTS = ("f3", "m3", "f2", "m1", "f4", "m7", "f1", "m2")
_ESPEAK_FEMALE = ("f3", "f2", "f4", "f1", "f5")
_ESPEAK_MALE = ("m3", "m1", "m7", "m2", "m4", "m6")

# A speaker tag: (s1), (s2), ... (also ( s1 ) and (S1)).
_SPEAKER_TAG = re.compile(r"\(\s*[sS]\s*(\d+)\s*\)")
_ESPEAK_NAMES = ("espeak", "espeak-ng", "espeakng", "espeak_ng")


class TTSEngineUnavailableError(RuntimeError):
    """The requested TTS engine cannot run here (package, program or weights missing)."""


class DialogueTurn(NamedTuple):
    """One turn of a dialogue: ``speaker`` is the 0-based speaker index (``(s1)`` -> 0), ``text`` what is said."""

    speaker: int
    text: str


@dataclass
class TTSResult:
    """What :func:`tts_from_json_block` returns.

    ``tracks``: one 16 kHz float32 track per speaker (all of the mixed track's length, silent where the others
    speak); ``mixed``: their sum; ``sampling_rate``: 16000; ``engine``: the engine that ran ("kokoro" or
    "espeak-ng"); ``voices``: the voice each speaker got; ``turns``: the parsed turns. Unpacks like
    :func:`synthesize_dialogue`'s result: ``tracks, mixed = result``.
    """

    tracks: List[np.ndarray]
    mixed: np.ndarray
    sampling_rate: int = TARGET_SAMPLE_RATE
    engine: str = ""
    voices: List[str] = field(default_factory=list)
    turns: List[DialogueTurn] = field(default_factory=list)

    def __iter__(self):
        yield self.tracks
        yield self.mixed


# --------------------------------------------------------------------------------------------------
# dialogue text
# --------------------------------------------------------------------------------------------------


def parse_dialogue(text: str) -> List[DialogueTurn]:
    """Split a dialogue into turns.

    ``"(s1) Hi! (s2) Hello."`` -> ``[DialogueTurn(0, "Hi!"), DialogueTurn(1, "Hello.")]``: a ``(sN)`` tag (``N``
    from 1; ``( s1 )`` and ``(S1)`` also count) starts speaker ``N``'s turn, which runs to the next tag. Each turn's
    text is stripped of surrounding whitespace; newlines inside a turn are kept (Kokoro speaks each line as a
    segment, like the reference). Other parentheses are ordinary text. Text without any tag is one turn of speaker
    1. Empty turns (``(s1) (s2) Hi``) are dropped with a warning.

    Raises:
        ValueError: the text is empty, has text before its first tag, has a ``(s0)`` tag, or has only empty turns.
    """
    if not isinstance(text, str):
        raise TypeError(f"The dialogue text must be a string, got {type(text).__name__}.")
    if not text.strip():
        raise ValueError("The TTS text is empty; give the words to speak, e.g. '(s1) Hello! (s2) Hi, how are you?'.")
    tags = list(_SPEAKER_TAG.finditer(text))
    if not tags:
        return [DialogueTurn(0, text.strip())]
    before = text[: tags[0].start()].strip()
    if before:
        raise ValueError(
            f"The TTS text has words before its first speaker tag ({before!r}); start it with the tag of the "
            f"speaker who says them, e.g. '(s1) {before} ...'."
        )
    turns: List[DialogueTurn] = []
    empty = []
    for i, tag in enumerate(tags):
        number = int(tag.group(1))
        if number < 1:
            raise ValueError(f"Unknown speaker tag {tag.group(0)!r}: speakers are numbered from 1, (s1), (s2), ...")
        end = tags[i + 1].start() if i + 1 < len(tags) else len(text)
        content = text[tag.end(): end].strip()
        if content:
            turns.append(DialogueTurn(number - 1, content))
        else:
            empty.append(f"(s{number}) at character {tag.start()}")
    if not turns:
        raise ValueError("Every turn of the TTS text is empty; put the words after each tag, e.g. '(s1) Hello!'.")
    if empty:
        logger.warning("TTS text: skipping empty turn(s): %s.", ", ".join(empty))
    return turns


# --------------------------------------------------------------------------------------------------
# espeak-ng
# --------------------------------------------------------------------------------------------------


def _espeak_voice_for_kokoro(name: str) -> Optional[str]:
    """The espeak-ng voice standing in for a Kokoro voice name (language from its first letter, a female or male
    variant from its second, chosen by name so that different Kokoro voices tend to sound different)."""
    match = _KOKORO_VOICE_NAME.match(name)
    if not match:
        return None
    variants = _ESPEAK_FEMALE if match.group(2) == "f" else _ESPEAK_MALE
    return f"{ESPEAK_LANGUAGE[match.group(1)]}+{variants[zlib.crc32(name.encode()) % len(variants)]}"


def _looks_like_path(voice: str) -> bool:
    return voice.endswith((".pt", ".pth")) or "/" in voice or os.sep in voice


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
                logger.warning("espeak-ng: speaker %d's voice %r is not a Kokoro voice name; using espeak-ng voice %r.",
                               speaker + 1, voice, mapped)
            else:
                logger.info("espeak-ng: speaker %d's Kokoro voice %r is spoken with espeak-ng voice %r.",
                            speaker + 1, voice, mapped)
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
                proc = subprocess.run(cmd, input=text.encode("utf-8"), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, timeout=600)
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


# --------------------------------------------------------------------------------------------------
# Kokoro-82M
# --------------------------------------------------------------------------------------------------


def _normalize_lang_code(lang_code: str) -> str:
    code = str(lang_code).strip().lower()
    code = KOKORO_LANG_ALIASES.get(code, code)
    if code not in ESPEAK_LANGUAGE:
        options = ", ".join(f"'{c}' ({ESPEAK_LANGUAGE[c]})" for c in ESPEAK_LANGUAGE)
        raise ValueError(f"Unknown TTS lang_code {lang_code!r}; use one of Kokoro's: {options}.")
    return code


def _kokoro_files_missing(directory: Path) -> List[str]:
    return [name for name in (KOKORO_CONFIG_NAME, KOKORO_WEIGHTS_NAME) if not (directory / name).is_file()]


def _spacy_model_installed(name: str = "en_core_web_sm") -> bool:
    return importlib.util.find_spec(name) is not None


def _check_speed(speed: Any) -> float:
    if isinstance(speed, bool) or not isinstance(speed, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(speed)) or float(speed) <= 0:
        raise ValueError(f"speed must be a positive number (1.0 = normal), got {speed!r}.")
    return float(speed)


class KokoroEngine:
    """Kokoro-82M through the ``kokoro`` package (``KModel`` + ``KPipeline``), loaded from a local folder.

    Args:
        repo_dir: a folder in the layout of ``hexgrad/Kokoro-82M``: ``config.json``, ``kokoro-v1_0.pth`` and
            ``voices/<name>.pt``. Nothing is downloaded.
        lang_code: Kokoro's language code: ``"a"`` American English (the reference's), ``"b"`` British English,
            ``"e"`` Spanish, ``"f"`` French, ``"h"`` Hindi, ``"i"`` Italian, ``"p"`` Brazilian Portuguese,
            ``"j"`` Japanese (``misaki[ja]``), ``"z"`` Mandarin (``misaki[zh]``); aliases such as ``"en-us"`` work.
            English needs spaCy's ``en_core_web_sm`` (misaki downloads it on first use when online).
        speed: speaking speed, 1.0 as in the reference.
        device: where the model runs (default: CUDA when available, else CPU).
        split_pattern: Kokoro speaks each piece of a turn split by this pattern (the reference's ``\\n+``).

    Voices are ``.pt`` files (a path, or a name looked up as ``repo_dir/voices/<name>.pt``) or voice tensors.
    The model is loaded on first use; ``synthesize`` returns Kokoro's 24 kHz waveform.
    """

    name = "kokoro"
    sample_rate = KOKORO_SAMPLE_RATE

    def __init__(self, repo_dir: Union[str, os.PathLike], lang_code: str = "a", speed: float = 1.0,
                 device: Optional[str] = None, split_pattern: Optional[str] = r"\n+"):
        if repo_dir is None:
            raise ValueError(f"KokoroEngine needs the Kokoro-82M folder; {KOKORO_DOWNLOAD_HINT}.")
        directory = Path(os.fspath(repo_dir)).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(f"Kokoro-82M folder '{directory}' does not exist; {KOKORO_DOWNLOAD_HINT}.")
        missing = _kokoro_files_missing(directory)
        if missing:
            raise FileNotFoundError(
                f"Kokoro-82M folder '{directory}' lacks {', '.join(missing)}; {KOKORO_DOWNLOAD_HINT}."
            )
        self.repo_dir = directory
        self.lang_code = _normalize_lang_code(lang_code)
        self.speed = _check_speed(speed)
        self.device = device
        self.split_pattern = split_pattern
        self._model = None
        self._pipeline = None
        self._voices: dict = {}

    def __repr__(self) -> str:
        return f"KokoroEngine(repo_dir='{self.repo_dir}', lang_code={self.lang_code!r}, speed={self.speed})"

    # ---- model -------------------------------------------------------------------------------------------
    @property
    def model(self):
        """The ``kokoro.KModel`` (loaded on first access)."""
        if self._model is None:
            self._load()
        return self._model

    @property
    def pipeline(self):
        """The ``kokoro.KPipeline`` wrapping :attr:`model` (built on first access)."""
        if self._pipeline is None:
            self._load()
        return self._pipeline

    def _style_width(self) -> int:
        import json

        try:
            with open(self.repo_dir / KOKORO_CONFIG_NAME, "r", encoding="utf-8") as handle:
                return 2 * int(json.load(handle)["style_dim"])
        except Exception:
            return 256

    def _load(self) -> None:
        try:
            import torch
            from kokoro import KModel, KPipeline
        except ImportError as exc:
            raise TTSEngineUnavailableError(
                f"The Kokoro TTS engine needs the kokoro package ({exc}); install it with `{KOKORO_INSTALL_HINT}`."
            ) from exc
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        # config and weights are given as files, so KModel reads them and downloads nothing.
        model = KModel(
            repo_id=KOKORO_REPO_ID,
            config=str(self.repo_dir / KOKORO_CONFIG_NAME),
            model=str(self.repo_dir / KOKORO_WEIGHTS_NAME),
        )
        model = model.to(device).eval()
        try:
            pipeline = KPipeline(lang_code=self.lang_code, repo_id=KOKORO_REPO_ID, model=model)
        except (Exception, SystemExit) as exc:  # spaCy's model download exits on failure
            if self.lang_code in "ab" and not _spacy_model_installed():
                raise TTSEngineUnavailableError(
                    "Kokoro's English text frontend (misaki) needs the spaCy model en_core_web_sm, which is not "
                    f"installed and could not be downloaded ({type(exc).__name__}: {exc}); install it with "
                    "`python -m spacy download en_core_web_sm`, or use the espeak-ng engine."
                ) from exc
            raise TTSEngineUnavailableError(
                f"Kokoro's text frontend for lang_code {self.lang_code!r} could not be set up "
                f"({type(exc).__name__}: {exc}); Japanese needs `pip install misaki[ja]`, Mandarin `pip install "
                "misaki[zh]`."
            ) from exc
        self._model, self._pipeline = model, pipeline

    # ---- voices ------------------------------------------------------------------------------------------
    def available_voices(self) -> List[str]:
        """The voice names in ``repo_dir/voices``."""
        folder = self.repo_dir / KOKORO_VOICES_DIR
        return sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []

    def voice_path(self, voice: Union[str, os.PathLike]) -> Path:
        """The ``.pt`` file of a voice: a path as given, or a name as ``repo_dir/voices/<name>.pt``."""
        text = os.fspath(voice).strip()
        if _looks_like_path(text):
            path = Path(text).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"Kokoro voice file '{path}' does not exist; give a voices/<name>.pt file of Kokoro-82M "
                    f"(e.g. '{self.repo_dir / KOKORO_VOICES_DIR / 'af_heart.pt'}') or a voice name."
                )
            return path
        path = self.repo_dir / KOKORO_VOICES_DIR / f"{text}.pt"
        if not path.is_file():
            names = self.available_voices()
            listing = ", ".join(names) if names else f"none: '{path.parent}' has no .pt files"
            raise FileNotFoundError(
                f"Kokoro voice file '{path}' does not exist (voice {text!r}); available voices: {listing}."
            )
        return path

    def load_voice(self, voice):
        """A voice as Kokoro's style tensor ``[positions, 1, 256]`` (float32, CPU) from a name, a ``.pt`` path or
        a tensor."""
        import torch

        if isinstance(voice, torch.Tensor):
            tensor, source = voice, "the voice tensor"
        else:
            path = self.voice_path(voice)
            key = str(path.resolve())
            if key in self._voices:
                return self._voices[key]
            try:
                tensor = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as exc:
                raise ValueError(f"Could not load Kokoro voice file '{path}' ({type(exc).__name__}: {exc}).") from exc
            source = f"Kokoro voice file '{path}'"
        width = self._style_width()
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.ndim not in (2, 3) \
                or tensor.shape[-1] != width:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(
                f"{source} is not a Kokoro voice: expected a float tensor [positions, 1, {width}], got {shape}."
            )
        tensor = tensor.detach().to("cpu", torch.float32)
        if tensor.ndim == 2:
            tensor = tensor.unsqueeze(1)
        if not isinstance(voice, torch.Tensor):
            self._voices[key] = tensor
        return tensor

    def default_voice(self, speaker: int) -> str:
        """The voice of speaker ``speaker`` (0-based) when none is given: the language's default pair (the
        reference's af_heart / am_adam for American English), then its other voices in the folder."""
        available = self.available_voices()
        preferred = [v for v in KOKORO_DEFAULT_VOICES[self.lang_code] if v in available]
        others = [v for v in available if v.startswith(self.lang_code) and v not in preferred]
        candidates = preferred + others
        if not candidates:
            raise FileNotFoundError(
                f"No Kokoro voice for speaker {speaker + 1}: '{self.repo_dir / KOKORO_VOICES_DIR}' has no "
                f"voices of language {self.lang_code!r} (e.g. {KOKORO_DEFAULT_VOICES[self.lang_code][0]}.pt); "
                "give the voices explicitly."
            )
        return candidates[speaker % len(candidates)]

    def voice_for(self, voice: Any, speaker: int):
        """Checks speaker ``speaker``'s voice (None -> :meth:`default_voice`) and returns it; a missing voice
        file raises ``FileNotFoundError`` naming it."""
        if voice is None or (isinstance(voice, str) and not voice.strip()):
            voice = self.default_voice(speaker)
        self.load_voice(voice)
        return voice

    # ---- speech ------------------------------------------------------------------------------------------
    def synthesize(self, text: str, voice=None) -> Tuple[np.ndarray, int]:
        """Speak ``text`` with ``voice`` (default: speaker 1's); returns ``(float32 waveform, 24000)``."""
        import torch

        style = self.load_voice(self.voice_for(voice, 0))
        pieces = []
        for result in self.pipeline(text, voice=style, speed=self.speed, split_pattern=self.split_pattern):
            audio = result.audio if hasattr(result, "audio") else result[2]
            if audio is not None:
                pieces.append(torch.as_tensor(audio).detach().float().reshape(-1).cpu())
        if not pieces:
            return np.zeros(0, dtype=np.float32), self.sample_rate
        return torch.cat(pieces).numpy().astype(np.float32, copy=False), self.sample_rate


# --------------------------------------------------------------------------------------------------
# engine choice
# --------------------------------------------------------------------------------------------------


def _hf_cached_kokoro_dir() -> Optional[Path]:
    """The Kokoro-82M snapshot in the Hugging Face cache, if one was downloaded before (no network access)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(KOKORO_REPO_ID, KOKORO_CONFIG_NAME)
    except Exception:
        return None
    return Path(found).parent if isinstance(found, str) else None


def _kokoro_candidates(hints: Sequence[Path] = ()) -> List[Path]:
    candidates = list(hints)
    env = os.environ.get(KOKORO_DIR_ENV)
    if env:
        candidates.append(Path(env).expanduser())
    candidates.append(DEFAULT_KOKORO_DIR)
    cached = _hf_cached_kokoro_dir()
    if cached is not None:
        candidates.append(cached)
    unique, seen = [], set()
    for candidate in candidates:
        key = os.path.abspath(candidate)
        if key not in seen:
            seen.add(key)
            unique.append(candidate)
    return unique


def find_kokoro_dir(kokoro_dir: Union[str, os.PathLike, None] = None) -> Optional[Path]:
    """The Kokoro-82M folder to use: ``kokoro_dir`` if given (None when it lacks the weights), else the first of
    ``$MULTITALK_KOKORO_DIR``, ``weights/Kokoro-82M`` and the Hugging Face cache that holds ``config.json`` and
    ``kokoro-v1_0.pth``; None when there is none."""
    return _find_kokoro_dir(kokoro_dir)[0]


def _find_kokoro_dir(kokoro_dir=None, hints: Sequence[Path] = ()) -> Tuple[Optional[Path], List[Path]]:
    candidates = [Path(os.fspath(kokoro_dir)).expanduser()] if kokoro_dir is not None else _kokoro_candidates(hints)
    for candidate in candidates:
        if candidate.is_dir() and not _kokoro_files_missing(candidate):
            return candidate, candidates
    return None, candidates


def _espeak_for(lang_code: str, speed: float) -> EspeakEngine:
    return EspeakEngine(voice=ESPEAK_LANGUAGE[lang_code], rate=max(1, int(round(ESPEAK_DEFAULT_RATE * speed))))


def _resolve_engine(engine, kokoro_dir, lang_code: str, speed: float, hints: Sequence[Path] = ()):
    if engine is not None and not isinstance(engine, str):
        if not callable(getattr(engine, "synthesize", None)):
            raise TypeError(
                f"engine must be None, 'kokoro', 'espeak-ng' or an object with synthesize(text, voice), got "
                f"{type(engine).__name__}."
            )
        logger.info("TTS engine: %s (given).", getattr(engine, "name", type(engine).__name__))
        return engine
    choice = "auto" if engine is None else engine.strip().lower()
    lang_code = _normalize_lang_code(lang_code)
    speed = _check_speed(speed)

    if choice in _ESPEAK_NAMES:
        chosen = _espeak_for(lang_code, speed)
        logger.info("TTS engine: espeak-ng (asked for), voice %s, rate %d wpm.", chosen.voice, chosen.rate)
        return chosen

    if choice == "kokoro":
        directory, looked = _find_kokoro_dir(kokoro_dir, hints)
        if directory is None:
            where = ", ".join(f"'{p}'" for p in looked)
            raise FileNotFoundError(
                f"engine='kokoro' was asked for, but no Kokoro-82M weights ({KOKORO_CONFIG_NAME} + "
                f"{KOKORO_WEIGHTS_NAME}) were found (looked in {where}); {KOKORO_DOWNLOAD_HINT}. "
                "(engine=None uses espeak-ng when Kokoro is absent.)"
            )
        if importlib.util.find_spec("kokoro") is None:
            raise TTSEngineUnavailableError(
                f"engine='kokoro' was asked for, but the kokoro package is not installed; `{KOKORO_INSTALL_HINT}`."
            )
        logger.info("TTS engine: Kokoro-82M (kokoro) from '%s', lang_code %r, speed %s.", directory, lang_code, speed)
        return KokoroEngine(directory, lang_code=lang_code, speed=speed)

    if choice != "auto":
        raise ValueError(f"Unknown TTS engine {engine!r}; use None (automatic), 'kokoro' or 'espeak-ng'.")

    if kokoro_dir is not None:
        directory = Path(os.fspath(kokoro_dir)).expanduser()
        missing = _kokoro_files_missing(directory) if directory.is_dir() else ["the folder itself"]
        if missing:
            raise FileNotFoundError(
                f"kokoro_dir '{directory}' lacks {', '.join(missing)}; {KOKORO_DOWNLOAD_HINT} "
                "(or leave kokoro_dir unset to use espeak-ng when Kokoro is absent)."
            )
    directory, looked = _find_kokoro_dir(kokoro_dir, hints)
    if directory is None:
        reason = "no Kokoro-82M weights found (looked in " + ", ".join(f"'{p}'" for p in looked) + ")"
    elif importlib.util.find_spec("kokoro") is None:
        reason = f"Kokoro-82M weights are at '{directory}' but the kokoro package is not installed ({KOKORO_INSTALL_HINT})"
    elif lang_code in "ab" and not _spacy_model_installed():
        reason = (f"Kokoro-82M is at '{directory}' but its English text frontend needs the spaCy model "
                  "en_core_web_sm (python -m spacy download en_core_web_sm; engine='kokoro' lets misaki fetch it)")
    else:
        logger.info("TTS engine: Kokoro-82M (kokoro) from '%s', lang_code %r, speed %s.", directory, lang_code, speed)
        return KokoroEngine(directory, lang_code=lang_code, speed=speed)
    try:
        chosen = _espeak_for(lang_code, speed)
    except TTSEngineUnavailableError as exc:
        raise TTSEngineUnavailableError(
            f"No TTS engine is available: {reason}, and espeak-ng is not installed (`{ESPEAK_INSTALL_HINT}`)."
        ) from exc
    logger.warning("TTS engine: espeak-ng (voice %s, rate %d wpm), because %s.", chosen.voice, chosen.rate, reason)
    return chosen


def resolve_tts_engine(engine=None, kokoro_dir: Union[str, os.PathLike, None] = None, lang_code: str = "a",
                       speed: float = 1.0):
    """Pick the TTS engine and log which one it is.

    Args:
        engine: None (automatic: Kokoro-82M when its weights, the kokoro package and, for English, spaCy's
            en_core_web_sm are all here, else espeak-ng, with a warning saying why); ``"kokoro"`` (an error, never
            a fallback, when Kokoro cannot run); ``"espeak-ng"`` (or ``"espeak"``); or an engine object with
            ``synthesize(text, voice) -> (waveform, sample_rate)``, returned as is.
        kokoro_dir: the Kokoro-82M folder (default: ``$MULTITALK_KOKORO_DIR``, ``weights/Kokoro-82M``, the
            Hugging Face cache). An explicit folder without the weights is an error, not a fallback.
        lang_code: Kokoro's language code (see :class:`KokoroEngine`); for espeak-ng it picks the language.
        speed: speaking speed (Kokoro's ``speed``; espeak-ng's rate is 175 wpm times it).

    Returns:
        a :class:`KokoroEngine`, an :class:`EspeakEngine` or the given engine.
    """
    return _resolve_engine(engine, kokoro_dir, lang_code, speed)


# --------------------------------------------------------------------------------------------------
# dialogue synthesis
# --------------------------------------------------------------------------------------------------


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

    return librosa.resample(wave, orig_sr=int(sample_rate), target_sr=TARGET_SAMPLE_RATE,
                            res_type=_librosa_default_res_type()).astype(np.float32, copy=False)


def _voice_label(voice) -> Optional[str]:
    if voice is None or isinstance(voice, (str, os.PathLike)):
        return None if voice is None else os.fspath(voice)
    return f"<{type(voice).__name__}>"


def _synthesize(text, voices=None, engine=None, pause: float = 0.0, speed: float = 1.0, lang_code: str = "a",
                kokoro_dir=None, loudness_normalize_tracks: bool = False, hints: Sequence[Path] = (),
                voice_keys: Optional[Sequence[str]] = None) -> TTSResult:
    turns = parse_dialogue(text)
    if isinstance(pause, bool) or not isinstance(pause, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(pause)) or pause < 0:
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
        logger.warning("TTS: speaker(s) %s have no turn in the text; their tracks are silent.",
                       ", ".join(f"(s{i})" for i in silent))

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
        tracks[speaker][offset: offset + wave.shape[0]] = wave
        offset += wave.shape[0] + gap
    if loudness_normalize_tracks:
        tracks = [loudness_normalize(t).astype(np.float32) if np.any(t) else t for t in tracks]
    tracks, mixed = combine_speakers(tracks, "para")
    engine_name = getattr(engine, "name", type(engine).__name__)
    logger.info("TTS (%s): %d turn(s), %d speaker track(s) of %.2f s at %d Hz.", engine_name, len(segments),
                len(tracks), total / TARGET_SAMPLE_RATE, TARGET_SAMPLE_RATE)
    return TTSResult(tracks=tracks, mixed=mixed, sampling_rate=TARGET_SAMPLE_RATE, engine=engine_name,
                     voices=[_voice_label(v) for v in resolved], turns=turns)


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
    result = _synthesize(text, voices, engine, pause=pause, speed=speed, lang_code=lang_code, kokoro_dir=kokoro_dir,
                         loudness_normalize_tracks=loudness_normalize)
    return result.tracks, result.mixed


_VOICE_KEY = re.compile(r"^human([1-9][0-9]*)_voice$")


def tts_from_json_block(block: dict, kokoro_dir: Union[str, os.PathLike, None] = None, engine=None,
                        **kwargs) -> TTSResult:
    """The reference's ``tts_audio`` block of the input JSON -> speech for each person.

    ``{"text": "(s1) ... (s2) ...", "human1_voice": "weights/Kokoro-82M/voices/af_heart.pt", "human2_voice":
    ...}``: ``humanN_voice`` is person N's voice (a Kokoro ``.pt`` file or voice name, or an espeak-ng voice) and
    ``(sN)`` marks person N's turns; with only ``human1_voice`` the text (tags optional) is person 1's. When the
    voices are files of a Kokoro-82M folder (``<folder>/voices/<name>.pt``) that folder is used for Kokoro; with
    no Kokoro weights espeak-ng speaks instead, with a warning (``engine="kokoro"`` makes that an error).

    Args:
        block: the ``tts_audio`` dict.
        kokoro_dir, engine: as in :func:`synthesize_dialogue`.
        **kwargs: ``pause``, ``speed``, ``lang_code``, ``loudness_normalize`` of :func:`synthesize_dialogue`.

    Returns:
        a :class:`TTSResult` (``.tracks`` person1, person2, ...; ``.mixed``; ``.sampling_rate`` 16000;
        ``.engine``); ``tracks, mixed = result`` also works.
    """
    if not isinstance(block, dict):
        raise TypeError(f"tts_audio must be a JSON object with text and human1_voice, got {type(block).__name__}.")
    allowed = {"pause", "speed", "lang_code", "loudness_normalize"}
    extra = sorted(set(kwargs) - allowed)
    if extra:
        raise TypeError(f"tts_from_json_block got unexpected argument(s) {', '.join(extra)}.")
    unknown = sorted(k for k in block if k != "text" and not _VOICE_KEY.match(str(k)))
    if unknown:
        raise ValueError(
            f"tts_audio has unknown key(s) {', '.join(map(repr, unknown))}; it takes 'text' and 'human1_voice', "
            "'human2_voice', ..."
        )
    text = block.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("tts_audio.text is missing or empty; give the words to speak, e.g. '(s1) Hi! (s2) Hello.'")
    numbers = sorted(int(_VOICE_KEY.match(k).group(1)) for k in block if k != "text")
    if not numbers:
        raise ValueError("tts_audio has no human1_voice; give one voice per person (human1_voice, human2_voice).")
    gaps = [n for n in range(1, numbers[-1] + 1) if n not in numbers]
    if gaps:
        raise ValueError(f"tts_audio lacks {', '.join(f'human{n}_voice' for n in gaps)} (voices are numbered 1, 2, ...).")
    keys = [f"human{n}_voice" for n in numbers]
    voices = []
    for key in keys:
        value = block[key]
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
            raise ValueError(f"tts_audio.{key} must be a voice (a .pt file or a voice name), got {value!r}.")
        voices.append(os.fspath(value).strip())
    hints = []
    for voice in voices:
        path = Path(voice).expanduser()
        if _looks_like_path(voice) and path.parent.name == KOKORO_VOICES_DIR and path.parent.parent not in hints:
            hints.append(path.parent.parent)
    return _synthesize(text, voices, engine, kokoro_dir=kokoro_dir, hints=hints, voice_keys=keys,
                       pause=kwargs.get("pause", 0.0), speed=kwargs.get("speed", 1.0),
                       lang_code=kwargs.get("lang_code", "a"),
                       loudness_normalize_tracks=kwargs.get("loudness_normalize", False))
