"""Vision helpers that stand alone (they import only the shared utils): faces found in a photo, boxes per person in
the input JSON's bbox convention, and the binding of diarized speakers to those persons."""

from .binding import bind_speakers, binding_lines, draw_binding_preview, tracks_for_persons
from .faces import Face, PersonBoxes, detect_faces, head_box, load_image, person_boxes, strip_boxes


__all__ = [
    "Face",
    "PersonBoxes",
    "bind_speakers",
    "binding_lines",
    "detect_faces",
    "draw_binding_preview",
    "head_box",
    "load_image",
    "person_boxes",
    "strip_boxes",
    "tracks_for_persons",
]
