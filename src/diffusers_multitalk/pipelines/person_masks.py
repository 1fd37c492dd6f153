"""The person masks of MultiTalk's multi-person audio routing (L-RoPE): from bounding boxes, default halves, latent
resolution."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..utils.input_checks import box_problem
from .image_processing import resize_and_center_crop_masks


__all__ = [
    "person_masks_from_bboxes",
    "default_person_masks",
    "latent_person_masks",
]


def _as_bbox_list(bboxes) -> list:
    if isinstance(bboxes, Mapping):
        return list(bboxes.values())
    if isinstance(bboxes, torch.Tensor):
        return bboxes.detach().cpu().tolist()
    if isinstance(bboxes, np.ndarray):
        return bboxes.tolist()
    return list(bboxes)


def person_masks_from_bboxes(bboxes, height: int, width: int, num_persons: Optional[int] = None) -> torch.Tensor:
    """Person masks from boxes: float ``[P + 1, height, width]`` (persons in order, then background).

    Convention (the original's, from its indexing): each box is ``[top, left, bottom, right]`` in
    pixels of the image of size ``height x width`` (the *source* image, before bucketing), i.e.
    the original names it ``[x_min, y_min, x_max, y_max]`` but its first pair indexes **rows**:
    ``mask[int(top):int(bottom), int(left):int(right)] = 1``. Its example (2560 wide, 1440 high)
    uses ``[160, 120, 1280, 1080]`` and ``[160, 1320, 1280, 2280]`` for the left and right person.
    Background = pixels in no person's box. ``bboxes`` is a sequence of 4-sequences or a mapping
    (``{"person1": [...], ...}``, in insertion order).

    Note: for a single person the original ignores any box and uses three all-ones masks
    (:func:`default_person_masks` with 1 person); this function always builds masks from the boxes.
    """
    boxes = _as_bbox_list(bboxes)
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if len(boxes) == 0:
        raise ValueError("no bounding boxes given")
    if num_persons is not None and len(boxes) != num_persons:
        raise ValueError(f"got {len(boxes)} bounding boxes for {num_persons} persons (audio tracks)")
    masks = torch.zeros(len(boxes) + 1, height, width)
    for i, box in enumerate(boxes):
        box = list(box)
        # the front ends' one box check (persons named from 1), on the pixel rows and columns the mask covers
        problem = box_problem([int(v) for v in box] if len(box) == 4 else box, (width, height))
        if problem is not None:
            raise ValueError(f"person {i + 1}'s bbox: {problem}")
        top, left, bottom, right = (int(v) for v in box)
        masks[i, top:bottom, left:right] = 1
    masks[-1] = (masks[:-1].sum(0) == 0).float()
    return masks


def default_person_masks(num_persons: int, height: int, width: int, face_scale: float = 0.05) -> torch.Tensor:
    """Masks without boxes, float ``[max(P, 2) + 1, height, width]``.

    * 1 person: three all-ones masks (as the original: two "persons" and the background, all ones);
    * 2 persons: the original's halves: rows ``int(h * fs) : int(h * (1 - fs))``; with
      ``half = w // 2``, columns ``int(half * fs) : int(half * (1 - fs))`` (left) and
      ``int(half * fs + half) : int(half * (1 - fs) + half)`` (right);
    * N > 2 persons (an extension): N vertical strips of width ``s = w // N``, strip k covering
      columns ``int(s * fs + k * s) : int(s * (1 - fs) + k * s)``, same rows; for N = 2 this is
      exactly the original's rule.

    The last mask is the background (no person).
    """
    if int(num_persons) != num_persons or num_persons < 1:
        raise ValueError(f"num_persons must be a positive integer, got {num_persons!r}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if not 0 <= face_scale < 0.5:
        raise ValueError(f"face_scale must be in [0, 0.5), got {face_scale}")
    n = int(num_persons)
    if n == 1:
        return torch.ones(3, height, width)
    if width // n == 0:
        raise ValueError(f"image width {width} too small for {n} persons")
    masks = torch.zeros(n + 1, height, width)
    row0, row1 = int(height * face_scale), int(height * (1 - face_scale))
    strip = width // n
    for k in range(n):
        col0 = int(strip * face_scale + k * strip)
        col1 = int(strip * (1 - face_scale) + k * strip)
        masks[k, row0:row1, col0:col1] = 1
    masks[-1] = (masks[:-1].sum(0) == 0).float()
    return masks


def latent_person_masks(
    masks: torch.Tensor,
    latent_h: int,
    latent_w: int,
    pixel_size: Optional[tuple[int, int]] = None,
) -> torch.Tensor:
    """Masks at latent resolution, float 0/1 ``[N, latent_h, latent_w]``.

    As the original: with ``pixel_size = (target_h, target_w)`` (the bucket size) the source-size
    masks are first nearest-resized to cover it and centre-cropped (:func:`resize_and_center_crop_masks`,
    following the image); then ``F.interpolate(mode="nearest")`` to the latent size and ``> 0``.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got {tuple(masks.shape)}")
    if latent_h <= 0 or latent_w <= 0:
        raise ValueError(f"latent size must be positive, got {latent_h}x{latent_w}")
    masks = masks.float()
    if pixel_size is not None:
        masks = resize_and_center_crop_masks(masks, int(pixel_size[0]), int(pixel_size[1]))
    out = F.interpolate(masks[None], size=(latent_h, latent_w), mode="nearest")[0]
    return (out > 0).float()
