"""Faces found automatically (vision.faces) and speakers bound to them (vision.binding): real photographs that ship
in scikit-image (the astronaut, tiled 1-4 times, every other tile mirrored), the fallback on the bundled drawing,
the boxes' convention against the pipeline's person masks, and the binding preview."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


pytest.importorskip("skimage", reason="face finding needs scikit-image (pip install -e '.[conversation]')")

from skimage import data

from diffusers_multitalk.pipelines.person_masks import default_person_masks, person_masks_from_bboxes
from diffusers_multitalk.vision import (
    PersonBoxes,
    bind_speakers,
    binding_lines,
    detect_faces,
    draw_binding_preview,
    person_boxes,
    strip_boxes,
    tracks_for_persons,
)


ASSETS = Path(__file__).resolve().parents[1] / "examples" / "assets"
# Where the astronaut's face is in data.astronaut() (512 x 512), measured by hand: rows 60-175, columns 170-290.
FACE_ROWS, FACE_COLS = (60, 175), (170, 290)


def _tiled(tiles: int, mirror_first: bool) -> tuple[np.ndarray, list[float]]:
    """The astronaut ``tiles`` times side by side, every other tile mirrored, and the face centres' columns."""
    image = data.astronaut()
    width = image.shape[1]
    parts, centres = [], []
    for i in range(tiles):
        mirrored = (i % 2 == 0) == mirror_first
        parts.append(image[:, ::-1] if mirrored else image)
        centre = (FACE_COLS[0] + FACE_COLS[1]) / 2
        centres.append(i * width + (width - centre if mirrored else centre))
    return np.concatenate(parts, axis=1), centres


@pytest.mark.parametrize("tiles,mirror_first", [(1, False), (1, True), (2, False), (3, True), (4, False), (4, True)])
def test_one_box_per_face_left_to_right(tiles, mirror_first):
    image, centres = _tiled(tiles, mirror_first)
    boxes = person_boxes(image, tiles, warn=False)
    assert boxes.source == "faces", boxes.message
    assert len(boxes.boxes) == len(boxes.faces) == tiles
    face_width = FACE_COLS[1] - FACE_COLS[0]
    for face, box, centre in zip(boxes.faces, boxes.boxes, centres):
        row, col = face.centre
        assert abs(col - centre) < face_width / 3, (face, centre)  # the right face, in left-to-right order
        assert FACE_ROWS[0] <= row <= FACE_ROWS[1]
        top, left, bottom, right = box  # the head-and-shoulders box holds the face, in [top, left, bottom, right]
        assert top <= face.top and left <= face.left and bottom >= face.bottom and right >= face.right
        assert bottom - top > 2 * face.height and right - left > 1.5 * face.width
    lefts = [b[1] for b in boxes.boxes]
    assert lefts == sorted(lefts)
    for a, b in zip(boxes.boxes, boxes.boxes[1:]):
        assert a[3] <= b[1]  # neighbours do not overlap: each person's audio reaches only their own region


def test_detect_faces_finds_the_face_and_more_than_false_matches():
    faces = detect_faces(data.astronaut())
    best = max(faces, key=lambda f: f.hits * f.width)
    row, col = best.centre
    assert FACE_ROWS[0] <= row <= FACE_ROWS[1] and FACE_COLS[0] <= col <= FACE_COLS[1]
    assert [f.centre[1] for f in faces] == sorted(f.centre[1] for f in faces)


def test_fewer_faces_than_persons_falls_back_to_the_reference_strips_with_a_warning():
    # One astronaut, two persons: the second "face" would be a false match far smaller than the real one.
    with pytest.warns(UserWarning, match="default layout"):
        boxes = person_boxes(data.astronaut(), 2)
    assert boxes.source == "strips" and boxes.boxes == strip_boxes(2, 512, 512)
    assert "found 1 usable face" in boxes.message


def test_bundled_drawing_has_no_frontal_faces_and_gets_the_strips():
    # The cartoon of examples/assets is no photograph: the cascade finds no face there (measured), so the persons
    # are the reference's halves, person 1 on the left.
    path = ASSETS / "two_people.png"
    assert detect_faces(path) == []
    with pytest.warns(UserWarning, match="found 0 usable face"):
        boxes = person_boxes(path, 2)
    assert boxes.source == "strips" and boxes.image_size == (480, 832)
    assert boxes.as_bbox() == {"person1": [24, 20, 456, 395], "person2": [24, 436, 456, 811]}


@pytest.mark.parametrize("persons", [1, 2, 3, 4])
def test_strips_are_the_pipelines_default_masks(persons):
    height, width = 90, 160
    from_boxes = person_masks_from_bboxes(strip_boxes(persons, height, width), height, width)
    default = default_person_masks(persons, height, width)
    if persons == 1:  # the reference's one-person default is all ones (whole image) for every mask
        assert bool(from_boxes[0].all()) and bool(default[0].all())
    else:
        assert bool((from_boxes == default).all())


def test_face_boxes_are_valid_pipeline_boxes_in_rows_first_order():
    image, _ = _tiled(2, False)
    boxes = person_boxes(image, 2, warn=False)
    masks = person_masks_from_bboxes(boxes.as_bbox(), *image.shape[:2], num_persons=2)
    for face, mask in zip(boxes.faces, masks[:2]):
        row, col = (int(v) for v in face.centre)
        assert mask[row, col] == 1  # rows first: the face centre lies inside its own person's mask
    assert masks[0, :, image.shape[1] // 2 :].sum() == 0  # person 1 is the left astronaut only


def test_binding_defaults_to_first_speaker_leftmost_and_can_be_overridden():
    assert bind_speakers(3) == [1, 2, 3]
    assert bind_speakers(2, [2, 1]) == [2, 1]
    assert tracks_for_persons(["voice of speaker 1", "voice of speaker 2"], [2, 1]) == [
        "voice of speaker 2",
        "voice of speaker 1",
    ]
    for bad in ([1, 1], [1, 3], [1], [0, 1], [True, 2]):
        with pytest.raises(ValueError, match="binding"):
            bind_speakers(2, bad)
    lines = binding_lines([2, 1], PersonBoxes([[0, 0, 5, 5], [0, 5, 5, 10]], "faces", (5, 10)), first_heard=[0.4, 2.5])
    assert lines[0].startswith("speaker 1 (first heard at 0.40 s) -> person 2 (face 2 from the left")


def test_binding_preview_draws_each_box_in_its_colour(tmp_path):
    from PIL import Image

    from diffusers_multitalk.vision.binding import COLOURS

    image, _ = _tiled(2, True)
    boxes = person_boxes(image, 2, warn=False)
    out = tmp_path / "preview.png"
    picture = draw_binding_preview(image, boxes, [2, 1], out)
    saved = np.asarray(Image.open(out).convert("RGB"))
    assert saved.shape == image.shape and picture.size == (image.shape[1], image.shape[0])
    for index, (top, left, bottom, _) in enumerate(boxes.boxes):
        edge = saved[(top + bottom) // 2, left]  # the middle of the box's left edge
        assert tuple(edge) == COLOURS[index]
    assert not np.array_equal(saved, image)
