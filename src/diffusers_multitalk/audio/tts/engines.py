"""Which TTS engine runs: Kokoro-82M when its folder is found (or asked for), espeak-ng otherwise."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from .dialogue import TTSEngineUnavailableError
from .espeak import (
    _ESPEAK_NAMES,
    ESPEAK_DEFAULT_RATE,
    ESPEAK_INSTALL_HINT,
    EspeakEngine,
)
from .kokoro import (
    DEFAULT_KOKORO_DIR,
    ESPEAK_LANGUAGE,
    KOKORO_CONFIG_NAME,
    KOKORO_DIR_ENV,
    KOKORO_DOWNLOAD_HINT,
    KOKORO_INSTALL_HINT,
    KOKORO_REPO_ID,
    KOKORO_WEIGHTS_NAME,
    KokoroEngine,
    _check_speed,
    _kokoro_files_missing,
    _normalize_lang_code,
    _spacy_model_installed,
)


logger = logging.getLogger(__name__)


# engine choice


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
        reason = (
            f"Kokoro-82M weights are at '{directory}' but the kokoro package is not installed ({KOKORO_INSTALL_HINT})"
        )
    elif lang_code in "ab" and not _spacy_model_installed():
        reason = (
            f"Kokoro-82M is at '{directory}' but its English text frontend needs the spaCy model "
            "en_core_web_sm (python -m spacy download en_core_web_sm; engine='kokoro' lets misaki fetch it)"
        )
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


def resolve_tts_engine(
    engine=None, kokoro_dir: Union[str, os.PathLike, None] = None, lang_code: str = "a", speed: float = 1.0
):
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
