"""One mixed recording and one picture (or the video to dub) -> the per-person inputs the pipelines take.

:func:`prepare_conversation` diarizes the recording (``audio.diarization``), finds one box per person on the picture
or on the video's first frame (``vision.faces``; the reference's strips with a warning when too few faces are found),
binds speakers to persons (default: the first voice heard drives the leftmost face; ``binding=[2, 1]`` swaps) and
returns a :class:`Conversation`: one track per person (as long as the recording, silent where the others speak), the
boxes in the input JSON's bbox convention, the turns, and the keyword arguments of the pipeline call::

    from diffusers_multitalk.pipelines.conversation import prepare_conversation

    talk = prepare_conversation("podcast.wav", "photo.png")        # or num_persons=2, binding=[2, 1]
    print("\\n".join(talk.lines()))                                # who speaks when, which voice drives which face
    talk.preview("binding.png")                                     # the boxes with their speaker labels
    video = pipe(image="photo.png", prompt="...", **talk.pipeline_kwargs()).frames[0]

The pipelines' `conversation=` argument calls it too. Nothing here loads a diffusion model: the front ends run it
(and show the binding) before any model is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..audio.diarization import SAMPLE_RATE, Diarization, diarize, person_tracks
from ..vision.binding import bind_speakers, binding_lines, draw_binding_preview, tracks_for_persons
from ..vision.faces import PersonBoxes, load_image, person_boxes
from .video_input import open_source_video


__all__ = ["Conversation", "conversation_picture", "prepare_conversation"]


@dataclass
class Conversation:
    """The inputs one mixed recording gives, in the persons' order (person 1 = leftmost box).

    Attributes:
        tracks: one 16 kHz float32 waveform per person, each as long as the recording.
        boxes: the persons' boxes (`boxes.as_bbox()` -> `{"person1": [x_min, y_min, x_max, y_max], ...}`) and whether
            they come from faces or from the default strips.
        diarization: the turns, speakers numbered by who is heard first.
        binding: `binding[k]` is the person speaker k + 1 drives.
        picture: the RGB picture the boxes were found on (`[H, W, 3]` uint8).
    """

    tracks: list[np.ndarray]
    boxes: PersonBoxes
    diarization: Diarization
    binding: list[int]
    picture: np.ndarray = field(repr=False)
    sample_rate: int = SAMPLE_RATE

    @property
    def num_persons(self) -> int:
        return len(self.tracks)

    @property
    def bbox(self) -> dict[str, list[int]]:
        return self.boxes.as_bbox()

    def first_heard(self) -> list[float]:
        """When each speaker (1, 2, ...) is first heard, in seconds."""
        starts = {}
        for turn in self.diarization.turns:
            starts.setdefault(turn.speaker, turn.start)
        return [starts.get(speaker, float("nan")) for speaker in range(1, self.num_persons + 1)]

    def lines(self) -> list[str]:
        """What was found, for people: the speakers and their speaking time, the boxes' origin, and which voice
        drives which face."""
        talk = self.diarization
        spoken = ", ".join(f"speaker {k + 1} {s:.1f} s" for k, s in enumerate(talk.speaking_time()))
        lines = [f"{talk.num_speakers} speaker(s) in {talk.duration:.1f} s, {len(talk.turns)} turn(s): {spoken}"]
        if self.boxes.message:
            lines.append(self.boxes.message)
        lines += binding_lines(self.binding, self.boxes, self.first_heard())
        return lines

    def turns_json(self) -> list[dict[str, float]]:
        """The turns as `[{"start", "end", "speaker"}, ...]` in seconds (what `multitalk diarize` writes)."""
        return self.diarization.to_json()

    def preview(self, path: str | os.PathLike | None = None):
        """The picture with each person's box labelled with its speaker (PNG at `path` when given); the PIL image."""
        return draw_binding_preview(self.picture, self.boxes, self.binding, path)

    def pipeline_kwargs(self) -> dict[str, Any]:
        """`audio`, `audio_type` and `bbox` for the pipeline call: the tracks play together (`"para"`), each silent
        where its person listens. One person needs no box."""
        kwargs = dict(audio=[(track, self.sample_rate) for track in self.tracks], audio_type="para")
        if self.num_persons > 1:
            kwargs["bbox"] = [list(box) for box in self.boxes.boxes]
        return kwargs


def conversation_picture(source) -> np.ndarray:
    """The RGB picture faces are looked for on: the image itself, or the first frame of a video to dub (a path of a
    video file, an array `[frames, H, W, 3]` or a list of frames)."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            raise ValueError(f"{path!r} is a directory; give an image or a video file.")
        if not os.path.isfile(path):
            raise ValueError(f"{path!r} does not exist; give an image or a video file.")
        try:
            return load_image(path)
        except Exception:  # noqa: BLE001 - not an image PIL reads: try it as a video
            pass
    elif not (isinstance(source, np.ndarray) and source.ndim == 4) and not isinstance(source, (list, tuple)):
        return load_image(source)
    return open_source_video(source).frame_at(0.0)


def prepare_conversation(
    recording,
    source,
    num_persons: int | None = None,
    binding: Sequence[int] | None = None,
    *,
    boxes: Sequence[Sequence[float]] | None = None,
    sample_rate: int | None = None,
    diarizer: str = "embedded",
    **diarize_kwargs,
) -> Conversation:
    """Diarizes `recording`, finds the persons on `source` and binds them (see the module docstring).

    Args:
        recording: the mixed recording: a path (any format ffmpeg reads, video containers too) or a waveform with
            `sample_rate`.
        source: the reference image, or the video to dub (its first frame is searched).
        num_persons: the number of persons (1-4), i.e. of speakers; estimated from the recording when omitted.
        binding: `binding[k]` = the person (1-based, left to right) speaker k + 1 (by first turn) drives; default
            `[1, 2, ...]`.
        boxes: the persons' boxes, left to right (`[x_min, y_min, x_max, y_max]` as the input JSON's bbox), when the
            caller places them; then no face is looked for and `num_persons` defaults to their count.
        diarizer: `"embedded"` (offline) or `"pyannote"`; further keywords go to
            [`~audio.diarization.diarize`].
    """
    picture = conversation_picture(source)  # before the diarization: a bad picture is answered at once
    if boxes is not None and num_persons is None:
        num_persons = len(boxes)
    talk = diarize(recording, num_persons, sample_rate=sample_rate, diarizer=diarizer, **diarize_kwargs)
    count = max(talk.num_speakers, 1)
    binding = bind_speakers(count, binding)
    tracks = person_tracks(recording, talk, sample_rate=sample_rate)
    if not tracks:  # nobody heard: one silent person
        tracks = [np.zeros(int(round(talk.duration * SAMPLE_RATE)), dtype=np.float32)]
    if boxes is None:
        placed = person_boxes(picture, count)
    else:
        if len(boxes) != count:
            raise ValueError(f"{len(boxes)} box(es) given for {count} speaker(s) heard; give one box a person")
        placed = PersonBoxes([[int(round(v)) for v in box] for box in boxes], "given", picture.shape[:2])
    return Conversation(tracks_for_persons(tracks, binding), placed, talk, binding, picture)
