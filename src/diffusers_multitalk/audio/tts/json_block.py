"""The input JSON's ``tts_audio`` block (the reference's ``--audio_mode tts``) -> speech for each person."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Union

from .dialogue import TTSResult
from .kokoro import KOKORO_VOICES_DIR, _looks_like_path
from .synthesis import _synthesize


logger = logging.getLogger(__name__)


_VOICE_KEY = re.compile(r"^human([1-9][0-9]*)_voice$")


def tts_from_json_block(
    block: dict, kokoro_dir: Union[str, os.PathLike, None] = None, engine=None, **kwargs
) -> TTSResult:
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
        raise ValueError(
            f"tts_audio lacks {', '.join(f'human{n}_voice' for n in gaps)} (voices are numbered 1, 2, ...)."
        )
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
    return _synthesize(
        text,
        voices,
        engine,
        kokoro_dir=kokoro_dir,
        hints=hints,
        voice_keys=keys,
        pause=kwargs.get("pause", 0.0),
        speed=kwargs.get("speed", 1.0),
        lang_code=kwargs.get("lang_code", "a"),
        loudness_normalize_tracks=kwargs.get("loudness_normalize", False),
    )
