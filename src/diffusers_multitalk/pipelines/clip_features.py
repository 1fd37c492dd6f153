"""The CLIP image features MultiTalk's pipeline feeds the DiT: Wan's preprocessing and the penultimate CLIP block."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..utils.devices import input_device


__all__ = ["CLIP_IMAGE_MEAN", "CLIP_IMAGE_STD", "clip_image_features", "preprocess_clip_frames"]

# Normalisation that Wan applies to the CLIP input (the OpenAI CLIP statistics).
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess_clip_frames(frames: torch.Tensor, layout: str | None = None, image_size: int = 224) -> torch.Tensor:
    """Turn video frames in [-1, 1] into CLIP pixel values, the way Wan prepares its CLIP input.

    Each frame is resized to ``image_size`` x ``image_size`` (bicubic, ``align_corners=False``, no antialiasing and
    no clamping), mapped to [0, 1] and normalised with :data:`CLIP_IMAGE_MEAN` / :data:`CLIP_IMAGE_STD`.

    Args:
        frames: ``[C, T, H, W]`` (one video: every frame becomes one image), ``[B, C, T, H, W]`` (a batch of
            videos, images ordered video by video) or ``[B, C, H, W]`` (images). MultiTalk passes the last
            condition frame, ``cond_image[:, :, -1:]``.
        layout: ``"CTHW"``, ``"BCTHW"`` or ``"BCHW"``. Leave it ``None`` to detect the layout from the rank and
            which axis holds the 3 colour channels. A 4-D tensor whose first two axes are both 3 is ambiguous and
            needs it.
        image_size: side of the square CLIP input (224 for Wan's ViT-H/14).

    Returns:
        ``[N, 3, image_size, image_size]`` in the dtype of ``frames`` (floating point).
    """
    if not frames.is_floating_point():
        raise TypeError(f"frames must be a floating point tensor in [-1, 1], got {frames.dtype}.")
    if layout is None:
        if frames.ndim == 5:
            layout = "BCTHW"
        elif frames.ndim == 4:
            c_first, c_second = frames.shape[0] == 3, frames.shape[1] == 3
            if c_first and c_second:
                raise ValueError(
                    f"Ambiguous frames of shape {tuple(frames.shape)}: pass layout='CTHW' or layout='BCHW'."
                )
            if not (c_first or c_second):
                raise ValueError(f"frames of shape {tuple(frames.shape)} have no axis of 3 colour channels.")
            layout = "CTHW" if c_first else "BCHW"
        else:
            raise ValueError(f"frames must be 4-D or 5-D, got shape {tuple(frames.shape)}.")
    layout = layout.upper()
    expected_ndim = {"CTHW": 4, "BCHW": 4, "BCTHW": 5}
    if layout not in expected_ndim:
        raise ValueError(f"layout must be one of {sorted(expected_ndim)}, got {layout!r}.")
    if frames.ndim != expected_ndim[layout]:
        raise ValueError(f"layout {layout!r} needs a {expected_ndim[layout]}-D tensor, got {tuple(frames.shape)}.")
    if layout == "CTHW":
        images = frames.transpose(0, 1)
    elif layout == "BCTHW":
        images = frames.transpose(1, 2).flatten(0, 1)
    else:
        images = frames
    if images.shape[1] != 3:
        raise ValueError(f"expected 3 colour channels, got {images.shape[1]} (shape {tuple(frames.shape)}).")

    images = F.interpolate(images, size=(image_size, image_size), mode="bicubic", align_corners=False)
    images = images * 0.5 + 0.5
    mean = torch.tensor(CLIP_IMAGE_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_IMAGE_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def clip_image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The CLIP features Wan feeds the DiT: the output of all blocks but the last, without the post-norm.

    In transformers terms this is ``model(pixel_values, output_hidden_states=True).hidden_states[-2]``
    (``hidden_states[0]`` is the embedding after ``pre_layrnorm``, ``hidden_states[i]`` the output of block ``i``).
    Returns ``[B, 1 + num_patches, hidden_size]`` (``[B, 257, 1280]`` for Wan).
    """
    pixel_values = pixel_values.to(device=input_device(model), dtype=next(model.parameters()).dtype)
    out = model(pixel_values=pixel_values, output_hidden_states=True)
    return out.hidden_states[-2]
