"""`multitalk diarize` and `multitalk boxes`: the two halves of a conversation input, one command each.

    multitalk diarize podcast.wav --out tracks/      # tracks/person1.wav ... personN.wav and tracks/turns.json
    multitalk boxes photo.png --num_persons 2        # {"person1": [x_min, y_min, x_max, y_max], ...} (one line)

The files are checked before torch is imported (a bad path answers at once); the outputs are written whole (each
file under a temporary name, renamed when complete), and an existing file is replaced with a note that says so.
"""

from __future__ import annotations

import json
import os
import warnings
from argparse import Namespace
from pathlib import Path

from ..runtime.errors import note
from ..runtime.spec import FieldProblem, RequestError
from ..utils.input_checks import audio_problem, image_problem


__all__ = ["cmd_boxes", "cmd_diarize"]


def _replace(path: Path, write) -> None:
    """Writes `path` through `write(temporary path)` and renames it into place: no half-written file, whatever
    stops the command."""
    if path.exists():
        note(f"{path}: exists; replaced")
    part = path.with_name(f".{path.name}.part")
    try:
        write(part)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def cmd_diarize(args: Namespace) -> int:
    why = audio_problem(args.recording)
    if why is not None:
        raise RequestError([FieldProblem("recording", f"{args.recording!r}: {why}")])
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise RequestError([FieldProblem("out", f"{str(out)!r} is a file; give a folder")])
    import soundfile as sf

    from ..audio.diarization import SAMPLE_RATE, diarize, person_tracks

    talk = diarize(args.recording, args.num_persons, diarizer=args.diarizer)
    tracks = person_tracks(args.recording, talk)
    out.mkdir(parents=True, exist_ok=True)
    for number, track in enumerate(tracks, start=1):
        _replace(out / f"person{number}.wav", lambda part, t=track: sf.write(part, t, SAMPLE_RATE, format="WAV"))
    turns = talk.to_json()
    _replace(out / "turns.json", lambda part: part.write_text(json.dumps({"turns": turns}, indent=1) + "\n"))
    spoken = ", ".join(f"speaker {k + 1} {s:.1f} s" for k, s in enumerate(talk.speaking_time()))
    print(f"{talk.num_speakers} speaker(s) in {talk.duration:.1f} s: {spoken}")
    for turn in turns:
        print(f"{turn['start']:8.2f} {turn['end']:8.2f}  speaker {turn['speaker']}")
    print(f"wrote {', '.join(f'person{n}.wav' for n in range(1, len(tracks) + 1))} and turns.json to {out}")
    return 0


def cmd_boxes(args: Namespace) -> int:
    why, _ = image_problem(args.image)
    if why is not None:
        raise RequestError([FieldProblem("image", f"{args.image!r}: {why}")])
    from ..vision.binding import draw_binding_preview
    from ..vision.faces import person_boxes

    with warnings.catch_warnings(record=True):  # the fallback is said below, in one line
        warnings.simplefilter("always")
        boxes = person_boxes(args.image, args.num_persons)
    note(boxes.message)
    if args.preview:
        _replace(Path(args.preview), lambda part: draw_binding_preview(args.image, boxes, None).save(part, "PNG"))
    print(json.dumps(boxes.as_bbox()))
    return 0
