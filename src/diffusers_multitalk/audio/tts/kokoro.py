"""The Kokoro-82M engine (the reference's TTS): its folder layout, languages, voices, and speech."""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import numpy as np

from .dialogue import TTSEngineUnavailableError


logger = logging.getLogger(__name__)


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
# Kokoro's language codes (KPipeline's ``lang_code``), their aliases, and the espeak-ng voice of each language.
KOKORO_LANG_ALIASES = {
    "en-us": "a",
    "en-gb": "b",
    "es": "e",
    "fr-fr": "f",
    "hi": "h",
    "it": "i",
    "pt-br": "p",
    "ja": "j",
    "zh": "z",
}
ESPEAK_LANGUAGE = {
    "a": "en-us",
    "b": "en-gb",
    "e": "es",
    "f": "fr-fr",
    "h": "hi",
    "i": "it",
    "j": "ja",
    "p": "pt-br",
    "z": "cmn",
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
# Kokoro-82M


def _looks_like_path(voice: str) -> bool:
    return voice.endswith((".pt", ".pth")) or "/" in voice or os.sep in voice


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
    if (
        isinstance(speed, bool)
        or not isinstance(speed, (int, float, np.floating, np.integer))
        or not math.isfinite(float(speed))
        or float(speed) <= 0
    ):
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

    def __init__(
        self,
        repo_dir: Union[str, os.PathLike],
        lang_code: str = "a",
        speed: float = 1.0,
        device: Optional[str] = None,
        split_pattern: Optional[str] = r"\n+",
    ):
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
            with open(self.repo_dir / KOKORO_CONFIG_NAME, encoding="utf-8") as handle:
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
        if (
            not isinstance(tensor, torch.Tensor)
            or not tensor.is_floating_point()
            or tensor.ndim not in (2, 3)
            or tensor.shape[-1] != width
        ):
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
