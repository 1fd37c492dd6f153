"""The conditioning image of MultiTalk: aspect-ratio buckets, resize + centre crop, loading from many inputs."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.utils import load_image


__all__ = [
    "ASPECT_RATIO_627",
    "ASPECT_RATIO_960",
    "RESOLUTION_BUCKETS",
    "resolution_buckets",
    "closest_bucket",
    "center_crop_offsets",
    "resize_and_center_crop",
    "resize_and_center_crop_masks",
    "load_image_any",
    "preprocess_image",
]


# Aspect-ratio buckets: key = height / width as written by the original (rounded, and the key, not
# the bucket's exact ratio, is what the nearest-bucket rule compares), value = (height, width).
# Insertion order matters: ties go to the first key.
ASPECT_RATIO_627: dict[str, tuple[int, int]] = {
    "0.26": (320, 1216), "0.38": (384, 1024), "0.50": (448, 896), "0.67": (512, 768),
    "0.82": (576, 704), "1.00": (640, 640), "1.22": (704, 576), "1.50": (768, 512),
    "1.86": (832, 448), "2.00": (896, 448), "2.50": (960, 384), "2.83": (1088, 384),
    "3.60": (1152, 320), "3.80": (1216, 320), "4.00": (1280, 320),
}  # fmt: skip

ASPECT_RATIO_960: dict[str, tuple[int, int]] = {
    "0.22": (448, 2048), "0.29": (512, 1792), "0.36": (576, 1600), "0.45": (640, 1408),
    "0.55": (704, 1280), "0.63": (768, 1216), "0.76": (832, 1088), "0.88": (896, 1024),
    "1.00": (960, 960), "1.14": (1024, 896), "1.31": (1088, 832), "1.50": (1152, 768),
    "1.58": (1216, 768), "1.82": (1280, 704), "1.91": (1344, 704), "2.20": (1408, 640),
    "2.30": (1472, 640), "2.67": (1536, 576), "2.89": (1664, 576), "3.62": (1856, 512),
    "3.75": (1920, 512),
}  # fmt: skip

# SoulX-FlashTalk generates at one size, 768 x 448 (h x w, portrait), whatever the image's aspect (its
# infer_params.yaml; the reference has no bucket table): every image is resized and centre-cropped to it.
FLASHTALK_448: dict[str, tuple[int, int]] = {"1.71": (768, 448)}

RESOLUTION_BUCKETS: dict[str, dict[str, tuple[int, int]]] = {
    "multitalk-480": ASPECT_RATIO_627,
    "multitalk-720": ASPECT_RATIO_960,
    "flashtalk-448": FLASHTALK_448,
}

# Other models' sizes name their bucket table in the variant registry (`variants.Size.buckets`); their pipelines map
# their own size names to it.
_RESOLUTION_ALIASES = {"480": "multitalk-480", "480p": "multitalk-480", "720": "multitalk-720", "720p": "multitalk-720"}


def resolution_buckets(resolution: Union[str, int] = "multitalk-480") -> dict[str, tuple[int, int]]:
    """The bucket table of ``"multitalk-480"`` or ``"multitalk-720"`` (also ``480``/``"720p"``...)."""
    key = str(resolution).strip().lower()
    key = _RESOLUTION_ALIASES.get(key, key)
    if key not in RESOLUTION_BUCKETS:
        raise ValueError(f"unknown resolution {resolution!r}; expected one of {sorted(RESOLUTION_BUCKETS)}")
    return RESOLUTION_BUCKETS[key]


def closest_bucket(
    height: int, width: int, buckets: Union[str, Mapping[str, Sequence[int]]] = "multitalk-480"
) -> tuple[int, int]:
    """``(target_h, target_w)`` of the bucket whose key is closest to ``height / width``.

    As the original: compares ``|float(key) - h / w|`` over the keys in table order and keeps the
    first minimum. ``buckets`` is a table or a resolution name.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    table = resolution_buckets(buckets) if isinstance(buckets, (str, int)) else buckets
    if not table:
        raise ValueError("empty bucket table")
    ratio = height / width
    best = min(table.keys(), key=lambda k: abs(float(k) - ratio))  # min keeps the first minimum
    value = table[best]
    # accept the original's layout ([h, w], 1) as well as (h, w)
    if len(value) == 2 and isinstance(value[0], (list, tuple)):
        value = value[0]
    return int(value[0]), int(value[1])


def _scaled_size(orig_h: int, orig_w: int, target_h: int, target_w: int) -> tuple[int, int]:
    # The cover size: scale by the larger factor, rounded up (float arithmetic as the original,
    # so e.g. 2560 * (896 / 2560) may round to 897 rather than 896).
    scale = max(target_h / orig_h, target_w / orig_w)
    return math.ceil(scale * orig_h), math.ceil(scale * orig_w)


def center_crop_offsets(height: int, width: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    """``(top, left)`` of a centred crop, torchvision's rule: ``int(round((size - crop) / 2))``.

    Python's ``round`` rounds halves to even, so an odd surplus of 1 crops at 0 and of 3 at 2.
    """
    if crop_h > height or crop_w > width:
        raise ValueError(f"crop {crop_h}x{crop_w} larger than the image {height}x{width}")
    return int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))


def resize_and_center_crop(image: PIL.Image.Image, height: int, width: int) -> torch.Tensor:
    """The original's image preprocessing: ``[3, height, width]`` float32 in ``[-1, 1]``.

    The image (converted to RGB) is resized with PIL bilinear to cover the target,
    ``ceil(max(height / h, width / w) * (h, w))``, centre-cropped (torchvision's offsets), then mapped
    ``x / 255`` and ``(x - 0.5) * 2``. Small images are upsampled, as in the original; size checks
    belong to the caller.
    """
    if not isinstance(image, PIL.Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}; see load_image_any")
    if height <= 0 or width <= 0:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    final_h, final_w = _scaled_size(image.height, image.width, height, width)
    resized = np.array(image.resize((final_w, final_h), resample=PIL.Image.BILINEAR))
    top, left = center_crop_offsets(final_h, final_w, height, width)
    crop = torch.from_numpy(resized[top : top + height, left : left + width]).permute(2, 0, 1).contiguous()
    out = crop / 255  # uint8 -> float32, as the original
    return (out - 0.5) * 2


def resize_and_center_crop_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The original's tensor branch of resize-and-crop: nearest resize to cover, centre crop.

    ``masks`` is ``[N, h, w]``; returns ``[N, height, width]`` (float).
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got {tuple(masks.shape)}")
    _, orig_h, orig_w = masks.shape
    final_h, final_w = _scaled_size(orig_h, orig_w, height, width)
    resized = F.interpolate(masks[None].float(), size=(final_h, final_w), mode="nearest")[0]
    top, left = center_crop_offsets(final_h, final_w, height, width)
    return resized[:, top : top + height, left : left + width].contiguous()


def _array_to_pil(arr: np.ndarray, what: str) -> PIL.Image.Image:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what}: expected an [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] image, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what}: empty image of shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{what}: image contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(
                f"{what}: float images must be in [0, 1] (got values in [{lo:.3f}, {hi:.3f}]); "
                "map [-1, 1] tensors with (x + 1) / 2 first, or pass uint8"
            )
        arr = np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.dtype != np.uint8:
            if arr.min() < 0 or arr.max() > 255:
                raise ValueError(f"{what}: integer images must be in [0, 255], got dtype {arr.dtype}")
            arr = arr.astype(np.uint8)
    else:
        raise ValueError(f"{what}: unsupported dtype {arr.dtype}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    mode = "RGBA" if arr.shape[-1] == 4 else "RGB"
    return PIL.Image.fromarray(np.ascontiguousarray(arr), mode=mode).convert("RGB")


def load_image_any(image) -> PIL.Image.Image:
    """An RGB PIL image from a PIL image, a path, a numpy array or a torch tensor.

    * ``str`` / ``os.PathLike``: opened with PIL (``convert("RGB")``, alpha dropped as the original); an
      ``http(s)://`` URL goes through diffusers' :func:`~diffusers.utils.load_image` (which also applies the EXIF
      orientation; local files are read as the original reads them, without it, so the parity holds);
    * numpy: ``[H, W]``, ``[H, W, 1|3|4]``; uint8 (or ints in 0..255), bool, or float in ``[0, 1]``;
    * torch: ``[3, H, W]`` / ``[1, 3, H, W]`` (channels first) or ``[H, W, 3]``; same value rules.
    """
    if isinstance(image, PIL.Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        return load_image(image)
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            with PIL.Image.open(path) as img:
                return img.convert("RGB")
        except PIL.UnidentifiedImageError as err:
            raise ValueError(f"not an image file PIL can read: {path}") from err
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ValueError(f"expected a single image, got a batch of shape {tuple(t.shape)}")
            t = t[0]
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
            t = t.permute(1, 2, 0)
        elif t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] in (1, 3, 4):
            raise ValueError(f"ambiguous tensor layout {tuple(t.shape)}; pass a PIL image or numpy [H, W, C]")
        if t.is_floating_point():
            t = t.float()
        return _array_to_pil(t.numpy(), "tensor image")
    if isinstance(image, np.ndarray):
        return _array_to_pil(image, "array image")
    raise TypeError(
        f"unsupported image type {type(image).__name__}; expected PIL.Image, path, numpy array or torch tensor"
    )


def preprocess_image(
    image, resolution: Union[str, Mapping[str, Sequence[int]]] = "multitalk-480"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Load, pick the bucket and resize/crop: ``([3, H, W] in [-1, 1], (src_h, src_w))``."""
    pil = load_image_any(image)
    height, width = closest_bucket(pil.height, pil.width, resolution)
    return resize_and_center_crop(pil, height, width), (pil.height, pil.width)
