"""A tagged dialogue (``(s1) ... (s2) ...``) split into turns, and what the TTS returns."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import List, NamedTuple

import numpy as np

from ..processing import (
    TARGET_SAMPLE_RATE,
)


logger = logging.getLogger(__name__)


# A speaker tag: (s1), (s2), ... (also ( s1 ) and (S1)).
_SPEAKER_TAG = re.compile(r"\(\s*[sS]\s*(\d+)\s*\)")


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


# dialogue text


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
        content = text[tag.end() : end].strip()
        if content:
            turns.append(DialogueTurn(number - 1, content))
        else:
            empty.append(f"(s{number}) at character {tag.start()}")
    if not turns:
        raise ValueError("Every turn of the TTS text is empty; put the words after each tag, e.g. '(s1) Hello!'.")
    if empty:
        logger.warning("TTS text: skipping empty turn(s): %s.", ", ".join(empty))
    return turns
