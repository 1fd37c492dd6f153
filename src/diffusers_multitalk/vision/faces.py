"""Faces found automatically: one box per person, in the bbox convention of MultiTalk's input JSON.

The detector is OpenCV's LBP frontal-face cascade (``lbpcascade_frontalface_opencv.xml``) as shipped inside the
scikit-image wheel (``skimage/data/``, 52 kB) and run by ``skimage.feature.Cascade``: no download, no OpenCV needed.
(OpenCV 5's wheels ship no cascades and no cascade classifier, mediapipe's current wheels no face model, YuNet's
ONNX file is in no wheel.) It finds frontal and near-frontal photographed faces; drawings, profiles and small faces
are often missed, and then :func:`person_boxes` falls back to the reference's vertical strips with a warning.

Box convention (``pipelines/person_masks.person_masks_from_bboxes``, ``input_json``): ``[x_min, y_min, x_max,
y_max]`` whose first pair indexes **rows**, i.e. ``[top, left, bottom, right]`` in pixels of the source image.
Persons are numbered left to right.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


__all__ = [
    "Face",
    "PersonBoxes",
    "detect_faces",
    "head_box",
    "load_image",
    "person_boxes",
    "strip_boxes",
]

FACE_INSTALL_HINT = 'pip install "diffusers-multitalk[conversation]" (or: pip install scikit-image)'
DETECT_MAX_SIDE = 1024  # images are searched at most this large (the cascade's time grows with the pixels)
MIN_FACE = 24  # pixels at the searched size: the cascade's own window
STRIP_FACE_SCALE = 0.05  # the reference's margin of its default strips (person_masks.default_person_masks)


@dataclass(frozen=True)
class Face:
    """A detected face: the tight box ``top, left, bottom, right`` in source-image pixels and ``hits``, the number
    of overlapping detector windows that agreed on it (its confidence)."""

    top: int
    left: int
    bottom: int
    right: int
    hits: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def centre(self) -> Tuple[float, float]:
        """(row, column) of the box centre."""
        return (self.top + self.bottom) / 2, (self.left + self.right) / 2

    def bbox(self) -> List[int]:
        return [self.top, self.left, self.bottom, self.right]


@dataclass
class PersonBoxes:
    """One box per person, left to right, ``[top, left, bottom, right]`` (the input JSON's ``[x_min, y_min, x_max,
    y_max]``); ``source`` is ``"faces"`` (from detected faces, ``faces[i]`` inside ``boxes[i]``) or ``"strips"``
    (the reference's default layout, used when too few faces were found); ``image_size`` is ``(height, width)``."""

    boxes: List[List[int]]
    source: str
    image_size: Tuple[int, int]
    faces: List[Face] = field(default_factory=list)
    message: str = ""

    def as_bbox(self) -> Dict[str, List[int]]:
        """``{"person1": [x_min, y_min, x_max, y_max], ...}`` as the input JSON's ``bbox`` takes it."""
        return {f"person{i + 1}": list(box) for i, box in enumerate(self.boxes)}


def load_image(image) -> np.ndarray:
    """An RGB ``uint8`` array ``[H, W, 3]`` from a path, a PIL image or an array (gray, RGB or RGBA; floats in
    [0, 1] are scaled)."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        with Image.open(os.fspath(image)) as opened:
            return np.asarray(opened.convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an image [H, W, 3] (or a path / PIL image), got an array of shape {array.shape}")
    array = array[:, :, :3]
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(array * 255.0 + 0.5, 0, 255)
    return array.astype(np.uint8)


@lru_cache(maxsize=1)
def _cascade():
    try:
        from skimage import data, feature
    except ImportError as exc:
        raise ImportError(
            f"Finding faces needs scikit-image (its wheel ships the face cascade): {FACE_INSTALL_HINT}"
        ) from exc
    return feature.Cascade(data.lbp_frontal_face_cascade_filename())


def _group(raw: Sequence[Tuple[int, int, int, int]], cover: float = 0.5, max_ratio: float = 2.5):
    """Greedy grouping of the detector's square windows ``(top, left, bottom, right)``, largest first: a window
    joins the first group whose first window covers more than ``cover`` of it and is at most ``max_ratio`` times
    its side (a face fires windows over a few scale steps around it). Returns ``(box, count)`` per group, the box a
    square of the members' median centre and side."""
    groups: List[List[Tuple[int, int, int, int]]] = []
    for box in sorted(raw, key=lambda b: -(b[2] - b[0])):
        for members in groups:
            seed = members[0]
            rows = max(0, min(box[2], seed[2]) - max(box[0], seed[0]))
            cols = max(0, min(box[3], seed[3]) - max(box[1], seed[1]))
            side = box[2] - box[0]
            if rows * cols > cover * side * side and seed[2] - seed[0] <= max_ratio * side:
                members.append(box)
                break
        else:
            groups.append([box])
    out = []
    for members in groups:
        boxes = np.asarray(members, dtype=float)
        row, col = np.median((boxes[:, 0] + boxes[:, 2]) / 2), np.median((boxes[:, 1] + boxes[:, 3]) / 2)
        half = np.median(boxes[:, 2] - boxes[:, 0]) / 2
        out.append(([row - half, col - half, row + half, col + half], len(members)))
    return out


def detect_faces(image, *, min_hits: int = 3, max_side: int = DETECT_MAX_SIDE) -> List[Face]:
    """Frontal faces in an image, left to right (by box centre): every group of at least ``min_hits`` agreeing
    detector windows (the cascade fires on many windows around a real face, and on few around a false match)."""
    from PIL import Image

    rgb = load_image(image)
    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    gray = Image.fromarray(rgb).convert("L")
    if scale < 1.0:
        gray = gray.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
    pixels = np.asarray(gray, dtype=np.float32) / 255.0
    side = min(pixels.shape)
    if side < MIN_FACE:
        return []
    # intersection_score_threshold > 1 keeps the cascade from merging its windows: they are grouped (and counted)
    # here, the count being the confidence the cascade does not report.
    found = _cascade().detect_multi_scale(
        img=pixels,
        scale_factor=1.2,
        step_ratio=1,
        min_size=(MIN_FACE, MIN_FACE),
        max_size=(side, side),
        min_neighbor_number=1,
        intersection_score_threshold=1.01,
    )
    raw = [(d["r"], d["c"], d["r"] + d["height"], d["c"] + d["width"]) for d in found]
    faces = []
    for box, hits in _group(raw):
        if hits < min_hits:
            continue
        top, left, bottom, right = (v / scale for v in box)
        faces.append(
            Face(
                max(0, int(round(top))),
                max(0, int(round(left))),
                min(height, int(round(bottom))),
                min(width, int(round(right))),
                hits,
            )
        )
    return sorted(faces, key=lambda f: f.centre[1])


def strip_boxes(num_persons: int, height: int, width: int, face_scale: float = STRIP_FACE_SCALE) -> List[List[int]]:
    """The reference's default layout as boxes (the rule of ``person_masks.default_person_masks``): one person = the
    whole image; N persons = N vertical strips of width ``s = width // N``, strip k covering columns
    ``int(s * fs + k * s) : int(s * (1 - fs) + k * s)`` and rows ``int(height * fs) : int(height * (1 - fs))``."""
    if int(num_persons) != num_persons or num_persons < 1:
        raise ValueError(f"num_persons must be a positive integer, got {num_persons!r}")
    n = int(num_persons)
    if n == 1:
        return [[0, 0, int(height), int(width)]]
    strip = width // n
    if strip == 0:
        raise ValueError(f"image width {width} too small for {n} persons")
    top, bottom = int(height * face_scale), int(height * (1 - face_scale))
    return [
        [top, int(strip * face_scale + k * strip), bottom, int(strip * (1 - face_scale) + k * strip)] for k in range(n)
    ]


def head_box(face: Face, height: int, width: int, above: float = 0.6, below: float = 1.6, side: float = 0.6):
    """A person's region around a tight face box: ``above`` face heights up (hair), ``below`` down (chin, neck,
    shoulders: the parts that move with speech) and ``side`` face widths to each side, clipped to the image."""
    return [
        max(0, int(round(face.top - above * face.height))),
        max(0, int(round(face.left - side * face.width))),
        min(height, int(round(face.bottom + below * face.height))),
        min(width, int(round(face.right + side * face.width))),
    ]


def _separate(boxes: List[List[int]], faces: Sequence[Face]) -> List[List[int]]:
    """Neighbours' boxes (left to right) made disjoint in columns where they overlap: cut half way between the two
    faces' facing edges, so each person's audio reaches only their own region."""
    boxes = [list(b) for b in boxes]
    for i in range(len(boxes) - 1):
        left, right = boxes[i], boxes[i + 1]
        if left[3] > right[1]:
            a, b = faces[i], faces[i + 1]
            # half way between the faces' facing edges, or between their centres when the faces overlap
            cut = (a.right + b.left) / 2 if a.right <= b.left else (a.centre[1] + b.centre[1]) / 2
            cut = int(round(cut))
            left[3], right[1] = min(left[3], cut), max(right[1], cut)
    return boxes


def _pick(faces: Sequence[Face], count: int, min_relative: float) -> List[Face]:
    """The persons among the faces, left to right: the ``count`` faces with the most agreeing windows times side
    (the people in the shot, rather than false matches, which gather few windows, or faces in the background),
    dropping any narrower than ``min_relative`` times the widest picked."""
    chosen = sorted(faces, key=lambda f: f.hits * f.width, reverse=True)[:count]
    if chosen:
        widest = max(f.width for f in chosen)
        chosen = [f for f in chosen if f.width >= min_relative * widest]
    return sorted(chosen, key=lambda f: f.centre[1])


def person_boxes(
    image,
    num_persons: int,
    *,
    faces: Optional[Sequence[Face]] = None,
    min_relative: float = 0.5,
    warn: bool = True,
) -> PersonBoxes:
    """One box per person, left to right, from the faces in ``image`` (detected unless ``faces`` is given).

    With at least ``num_persons`` faces, the largest ``num_persons`` (within ``min_relative`` of the widest) are the
    persons, each box the face grown to head and shoulders (:func:`head_box`), neighbours cut apart. With fewer, the
    boxes are the reference's default strips (:func:`strip_boxes`) and a warning says so (``warn=False``: only
    ``message``)."""
    if isinstance(num_persons, bool) or int(num_persons) != num_persons or num_persons < 1:
        raise ValueError(f"num_persons must be a positive integer, got {num_persons!r}")
    rgb = load_image(image)
    height, width = rgb.shape[:2]
    found = list(detect_faces(rgb) if faces is None else faces)
    chosen = _pick(found, int(num_persons), min_relative)
    if len(chosen) == num_persons:
        boxes = _separate([head_box(f, height, width) for f in chosen], chosen)
        message = f"{num_persons} person(s) placed on the {len(chosen)} largest of {len(found)} face(s) found"
        return PersonBoxes(boxes, "faces", (height, width), chosen, message)
    layout = "the whole image" if num_persons == 1 else f"{num_persons} vertical strips, person 1 on the left"
    message = (
        f"found {len(chosen)} usable face(s) ({len(found)} detected) for {num_persons} person(s): the face detector "
        f"(a frontal-face cascade) misses drawings, profiles and small faces. Using the reference's default layout "
        f"({layout}); pass boxes (the input JSON's bbox) to place the persons yourself."
    )
    if warn:
        warnings.warn(message, stacklevel=2)
    return PersonBoxes(strip_boxes(num_persons, height, width), "strips", (height, width), [], message)
