"""Binding diarized speakers to the persons in the picture, and a preview of that binding.

Speakers are numbered by who speaks first (``audio.diarization``), persons left to right (``vision.faces``). The
default binding is speaker k = person k: the first voice heard goes to the leftmost face. ``binding=[2, 1]`` says
speaker 1 goes to person 2 and speaker 2 to person 1. :func:`tracks_for_persons` puts the speakers' tracks in the
persons' order (MultiTalk's ``cond_audio`` person1, person2, ...), and :func:`draw_binding_preview` draws the boxes
with their speaker labels to a PNG, to check who will move their lips before generating.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence, Union

from .faces import PersonBoxes, load_image


__all__ = ["bind_speakers", "binding_lines", "draw_binding_preview", "tracks_for_persons"]

# Box colours of persons 1, 2, 3, 4 (distinct for colour-blind viewers: blue, orange, green, magenta).
COLOURS = ((0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167))


def bind_speakers(num_speakers: int, binding: Optional[Sequence[int]] = None) -> List[int]:
    """The person (1-based, left to right) each speaker (1-based, by first turn) drives: ``binding`` itself when
    given (``binding[k]`` = person of speaker k + 1; a permutation of 1..N), else ``[1, 2, ..., N]``."""
    if isinstance(num_speakers, bool) or int(num_speakers) != num_speakers or num_speakers < 1:
        raise ValueError(f"num_speakers must be a positive integer, got {num_speakers!r}")
    n = int(num_speakers)
    if binding is None:
        return list(range(1, n + 1))
    values = list(binding)
    if any(isinstance(v, bool) or not isinstance(v, int) and not float(v).is_integer() for v in values):
        raise ValueError(f"binding must list whole person numbers, got {values!r}")
    values = [int(v) for v in values]
    if sorted(values) != list(range(1, n + 1)):
        raise ValueError(
            f"binding must give each of the {n} speakers a different person 1..{n} (e.g. {list(range(n, 0, -1))}: "
            f"speaker 1 -> person {n}), got {values!r}"
        )
    return values


def tracks_for_persons(tracks: Sequence, binding: Sequence[int]) -> list:
    """The speakers' ``tracks`` (speaker 1, 2, ...) reordered for the persons (person 1, 2, ...): person p gets the
    track of the speaker bound to p."""
    binding = bind_speakers(len(tracks), binding)
    out = [None] * len(tracks)
    for speaker, person in enumerate(binding):
        out[person - 1] = tracks[speaker]
    return out


def binding_lines(binding: Sequence[int], boxes: Optional[PersonBoxes] = None, first_heard=None) -> List[str]:
    """Human-readable lines, one per speaker: ``speaker 1 (first heard at 0.42 s) -> person 2 (face 2 from the
    left, box [top, left, bottom, right])``."""
    lines = []
    for speaker, person in enumerate(bind_speakers(len(binding), binding), start=1):
        heard = f" (first heard at {first_heard[speaker - 1]:.2f} s)" if first_heard is not None else ""
        where = ""
        if boxes is not None:
            what = {"faces": "face", "strips": "default strip"}.get(boxes.source, "box")
            what = f"{what} {person} from the left"
            where = f" ({what}, box {boxes.boxes[person - 1]})"
        lines.append(f"speaker {speaker}{heard} -> person {person}{where}")
    return lines


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def draw_binding_preview(
    image,
    boxes: PersonBoxes,
    binding: Optional[Sequence[int]] = None,
    path: Optional[Union[str, os.PathLike]] = None,
):
    """The image with each person's box and label ``person p = speaker s`` (and the detected faces, thin), saved as
    PNG to ``path`` when given; returns the PIL image. A strip layout (no faces found) is marked as such."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(load_image(image))
    draw = ImageDraw.Draw(picture)
    count = len(boxes.boxes)
    binding = bind_speakers(count, binding)
    speaker_of = {person: speaker for speaker, person in enumerate(binding, start=1)}
    height, width = picture.height, picture.width
    line = max(2, round(min(height, width) / 200))
    font = _font(max(12, round(min(height, width) / 28)))
    for index, (top, left, bottom, right) in enumerate(boxes.boxes):
        colour = COLOURS[index % len(COLOURS)]
        draw.rectangle([left, top, right - 1, bottom - 1], outline=colour, width=line)
        if index < len(boxes.faces):
            face = boxes.faces[index]
            draw.rectangle([face.left, face.top, face.right - 1, face.bottom - 1], outline=colour, width=1)
        label = f"person {index + 1} = speaker {speaker_of[index + 1]}"
        x0, y0, x1, y1 = draw.textbbox((left + line + 2, top + line + 2), label, font=font)
        draw.rectangle([x0 - 3, y0 - 3, x1 + 3, y1 + 3], fill=colour)
        draw.text((left + line + 2, top + line + 2), label, fill=(255, 255, 255), font=font)
    if boxes.source != "faces":
        note = "no faces found: default strips"
        x0, y0, x1, y1 = draw.textbbox((line, height - line), note, font=font, anchor="ld")
        draw.rectangle([x0 - 3, y0 - 3, x1 + 3, y1 + 3], fill=(0, 0, 0))
        draw.text((line, height - line), note, fill=(255, 255, 255), font=font, anchor="ld")
    if path is not None:
        picture.save(os.fspath(path), format="PNG")
    return picture
