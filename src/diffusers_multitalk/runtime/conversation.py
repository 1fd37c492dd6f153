"""The input JSON's `cond_audio.conversation` (one mixed recording) turned into the per-person input of a request.

The front ends call :func:`resolve_conversation` after the input's checks and before loading the model: it diarizes
the recording, finds the persons on the image (or on the first frame of the video to dub) unless the input gives
boxes, says which voice drives which face, draws the binding preview when asked, and returns the input with
`cond_audio` person1, person2, ... as `(waveform, 16000)` tracks that play together (`audio_type` "para"), each as
long as the recording and silent where that person listens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .errors import note


__all__ = ["resolve_conversation"]


def resolve_conversation(
    input_data: dict,
    preview_path: str | os.PathLike | None = None,
    say: Callable[[str], None] = note,
) -> dict:
    """`input_data` (as `input_json.validate_input` returns it) with its conversation split into persons; an input
    without one is returned as it is. `say` gets one line per finding (the speakers, where the boxes come from, each
    speaker's person); `preview_path` gets the PNG of the boxes labelled with their speakers."""
    conversation = input_data.get("conversation")
    if not conversation:
        return input_data
    from ..pipelines.conversation import prepare_conversation

    given = input_data.get("bbox")
    boxes = [given[f"person{n}"] for n in range(1, len(given) + 1)] if given else None
    talk = prepare_conversation(
        conversation["recording"],
        input_data.get("cond_image") or input_data.get("cond_video"),
        conversation.get("num_persons"),
        conversation.get("binding"),
        boxes=boxes,
    )
    for line in talk.lines():
        say(f"conversation: {line}")
    if preview_path is not None:  # written whole: under a temporary name, renamed when complete
        path = Path(preview_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.part")
        try:
            talk.preview().save(part, format="PNG")
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
        say(f"conversation: the binding preview is {path}")
    persons = [f"person{n}" for n in range(1, talk.num_persons + 1)]
    return dict(
        input_data,
        cond_audio={person: (track, talk.sample_rate) for person, track in zip(persons, talk.tracks)},
        bbox=talk.bbox if talk.num_persons > 1 else None,
        audio_type="para",
        num_persons=talk.num_persons,
    )
