"""Pure helpers of the MultiTalk generation loop.

Everything here is stateless (apart from :class:`APGState`) and runs on the CPU in tests:

* the sampler: MultiTalk's shifted flow-matching timesteps, mapped onto diffusers'
  :class:`~diffusers.FlowMatchEulerDiscreteScheduler`;
* classifier-free guidance over text and audio, with optional adaptive projected guidance (APG);
* the conditioning image: aspect-ratio buckets, resize + centre crop, loading from many inputs;
* the person masks used by the multi-person audio routing (L-RoPE);
* LAB colour correction of generated chunks towards the conditioning image.

The numbers follow the original MultiTalk implementation (MeiGen-AI/MultiTalk); the comments say
where its conventions are unusual.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping, Sequence
from typing import Optional, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

__all__ = [
    "multitalk_timesteps",
    "multitalk_sigmas",
    "make_multitalk_scheduler",
    "set_multitalk_timesteps",
    "add_noise_flow",
    "MomentumBuffer",
    "APGState",
    "adaptive_projected_guidance",
    "combine_guidance",
    "combine_guidance_two_pass",
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
    "person_masks_from_bboxes",
    "default_person_masks",
    "latent_person_masks",
    "rgb_to_lab",
    "lab_to_rgb",
    "match_color_lab",
]


# ---------------------------------------------------------------------------------------------------
# 1. Sampler
# ---------------------------------------------------------------------------------------------------


def multitalk_timesteps(num_inference_steps: int, shift: float, num_train_timesteps: int = 1000) -> torch.Tensor:
    """MultiTalk's timesteps in ``[0, num_train_timesteps]``, terminal ``0`` included.

    ``linspace(T, 1, steps)`` (float32) followed by ``0``; every value ``t`` is shifted as
    ``s' = shift * s / (1 + (shift - 1) * s)`` with ``s = t / T`` and scaled back by ``T``. The
    arithmetic is float32, in the same order as the original, so the values fed to the transformer
    are the original's exactly. Returns a float32 tensor of length ``num_inference_steps + 1``.
    """
    if int(num_inference_steps) != num_inference_steps or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    if not (shift > 0):
        raise ValueError(f"shift must be > 0, got {shift!r}")
    steps = int(num_inference_steps)
    base = np.linspace(num_train_timesteps, 1, steps, dtype=np.float32)
    t = torch.from_numpy(np.concatenate([base, np.zeros(1, dtype=np.float32)]))
    s = t / num_train_timesteps
    s = shift * s / (1 + (shift - 1) * s)
    return s * num_train_timesteps


def multitalk_sigmas(num_inference_steps: int, shift: float, num_train_timesteps: int = 1000) -> torch.Tensor:
    """Noise levels in ``[0, 1]`` (length ``steps + 1``, last ``0``): :func:`multitalk_timesteps` ``/ T``.

    These are exactly the values the original uses when it re-noises motion latents
    (``timestep / 1000``), i.e. ``x_sigma = (1 - sigma) * x0 + sigma * noise``.
    """
    return multitalk_timesteps(num_inference_steps, shift, num_train_timesteps) / num_train_timesteps


def make_multitalk_scheduler(
    shift: float = 7.0,
    num_inference_steps: Optional[int] = None,
    device: Union[str, torch.device, None] = None,
    num_train_timesteps: int = 1000,
):
    """A :class:`~diffusers.FlowMatchEulerDiscreteScheduler` configured for MultiTalk.

    The scheduler's own ``shift`` is 1.0 and dynamic shifting is off, so it never re-shifts the
    sigmas; MultiTalk's ``shift`` is applied by :func:`set_multitalk_timesteps`, which is called here
    when ``num_inference_steps`` is given (call it again per generation otherwise).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=num_train_timesteps, shift=1.0, use_dynamic_shifting=False
    )
    if num_inference_steps is not None:
        set_multitalk_timesteps(scheduler, num_inference_steps, shift, device=device)
    return scheduler


_INCOMPATIBLE_SCHEDULER_FLAGS = (
    "use_dynamic_shifting",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "invert_sigmas",
    "stochastic_sampling",
    "shift_terminal",
)


def set_multitalk_timesteps(
    scheduler,
    num_inference_steps: int,
    shift: float,
    device: Union[str, torch.device, None] = None,
) -> torch.Tensor:
    """Load MultiTalk's schedule into a ``FlowMatchEulerDiscreteScheduler``; returns its timesteps.

    Afterwards ``scheduler.sigmas`` is :func:`multitalk_sigmas` (terminal 0 appended by diffusers),
    ``scheduler.timesteps`` is :func:`multitalk_timesteps` without the terminal 0 (equal to
    ``sigmas[:-1] * 1000`` up to float32 rounding; these are the original's exact values) and
    ``scheduler.step(v, t, x).prev_sample == x + (sigma_next - sigma) * v``, the original's Euler
    step ``x - v * (t_i - t_{i+1}) / 1000``.

    The scheduler's ``shift`` is set to 1.0 (``set_shift``) because ``set_timesteps`` applies its
    shift to custom sigmas too. Schedulers configured with dynamic shifting, Karras/exponential/beta
    sigmas, inverted sigmas, a terminal stretch or stochastic sampling are rejected.
    """
    config = getattr(scheduler, "config", None)
    if config is None or not hasattr(scheduler, "set_timesteps") or not hasattr(scheduler, "set_shift"):
        raise TypeError(
            f"expected a diffusers FlowMatchEulerDiscreteScheduler, got {type(scheduler).__name__}"
        )
    bad = [flag for flag in _INCOMPATIBLE_SCHEDULER_FLAGS if config.get(flag, None)]
    if bad:
        raise ValueError(
            "MultiTalk's schedule needs a plain FlowMatchEulerDiscreteScheduler; these config options are set: "
            + ", ".join(bad)
        )
    num_train_timesteps = int(config.get("num_train_timesteps", 1000))
    timesteps = multitalk_timesteps(num_inference_steps, shift, num_train_timesteps)
    sigmas = timesteps / num_train_timesteps

    scheduler.set_shift(1.0)
    kwargs = {"sigmas": sigmas[:-1].numpy(), "device": device}
    params = inspect.signature(scheduler.set_timesteps).parameters
    pass_timesteps = "timesteps" in params
    if pass_timesteps:
        kwargs["timesteps"] = timesteps[:-1].numpy()
    scheduler.set_timesteps(**kwargs)
    if not pass_timesteps:  # older diffusers: timesteps are sigmas * T there; use the original's values
        scheduler.timesteps = timesteps[:-1].to(device=scheduler.timesteps.device)

    got = scheduler.sigmas.detach().to("cpu", torch.float32)
    if got.shape != sigmas.shape or not torch.equal(got, sigmas):
        raise RuntimeError(
            "FlowMatchEulerDiscreteScheduler.set_timesteps changed the sigmas it was given; "
            "this diffusers version is not supported by set_multitalk_timesteps"
        )
    return scheduler.timesteps


def add_noise_flow(
    x0: torch.Tensor, noise: torch.Tensor, sigma: Union[float, torch.Tensor]
) -> torch.Tensor:
    """Flow-matching forward process ``(1 - sigma) * x0 + sigma * noise``.

    The original's ``add_noise`` (used to re-noise the motion-frame latents, also at the terminal
    ``sigma = 0``, which ``scheduler.scale_noise`` cannot look up). A tensor ``sigma`` of shape
    ``[B]`` is broadcast over the trailing dimensions of ``x0``.
    """
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.to(device=x0.device, dtype=x0.dtype)
        if sigma.ndim == 1 and sigma.numel() > 1:
            sigma = sigma.view(sigma.shape + (1,) * (x0.ndim - 1))
    return (1 - sigma) * x0 + sigma * noise


# ---------------------------------------------------------------------------------------------------
# 2. Guidance
# ---------------------------------------------------------------------------------------------------


class MomentumBuffer:
    """Running average ``r <- d + momentum * r`` (starting from 0) of a guidance difference."""

    def __init__(self, momentum: float = -0.75):
        self.momentum = float(momentum)
        self.running_average: Optional[torch.Tensor] = None

    def update(self, value: torch.Tensor) -> torch.Tensor:
        if self.running_average is None:
            self.running_average = value
        else:
            self.running_average = value + self.momentum * self.running_average
        return self.running_average

    def reset(self) -> None:
        self.running_average = None


_APG_DIMS = (-1, -2, -3, -4)


def adaptive_projected_guidance(
    diff: torch.Tensor,
    pred_cond: torch.Tensor,
    momentum_buffer: Optional[MomentumBuffer] = None,
    eta: float = 0.0,
    norm_threshold: float = 55.0,
) -> torch.Tensor:
    """APG (Sadat et al. 2024, arXiv:2410.02416) as MultiTalk applies it to one guidance difference.

    1. with a buffer: ``diff`` is replaced by the buffer's running average after adding ``diff``;
    2. ``norm_threshold > 0``: scaled by ``min(1, threshold / ||diff||)``, the L2 norm taken over the
       last four dimensions (``C, T, H, W``: per sample);
    3. split (in float64) into the part parallel to the *conditional prediction* ``pred_cond`` and the
       orthogonal rest (same four dimensions); returns ``orthogonal + eta * parallel``.
    """
    if diff.ndim < 4:
        raise ValueError(f"APG expects tensors with at least 4 dims ([..., C, T, H, W]), got {tuple(diff.shape)}")
    if diff.shape != pred_cond.shape:
        raise ValueError(f"shape mismatch: diff {tuple(diff.shape)} vs pred_cond {tuple(pred_cond.shape)}")
    if momentum_buffer is not None:
        diff = momentum_buffer.update(diff)
    if norm_threshold > 0:
        diff_norm = diff.norm(p=2, dim=_APG_DIMS, keepdim=True)
        diff = diff * torch.clamp(norm_threshold / diff_norm, max=1.0)
    dtype = diff.dtype
    v0 = diff.double()
    v1 = F.normalize(pred_cond.double(), dim=_APG_DIMS)
    parallel = (v0 * v1).sum(dim=_APG_DIMS, keepdim=True) * v1
    orthogonal = v0 - parallel
    return orthogonal.to(dtype) + eta * parallel.to(dtype)


class APGState:
    """Adaptive projected guidance settings plus one momentum buffer per guidance difference.

    ``text`` buffers ``cond - drop_text``; ``audio`` buffers ``drop_text - uncond`` (three passes) or
    ``cond - drop_audio`` (two passes). Create one per chunk (or call :meth:`reset`), as the original
    starts fresh buffers for every streamed chunk.
    """

    def __init__(self, momentum: float = -0.75, norm_threshold: float = 55.0, eta: float = 0.0):
        self.momentum = float(momentum)
        self.norm_threshold = float(norm_threshold)
        self.eta = float(eta)
        self.text = MomentumBuffer(self.momentum)
        self.audio = MomentumBuffer(self.momentum)

    def reset(self) -> None:
        self.text.reset()
        self.audio.reset()

    def guide(self, diff: torch.Tensor, pred_cond: torch.Tensor, buffer: MomentumBuffer) -> torch.Tensor:
        return adaptive_projected_guidance(
            diff, pred_cond, momentum_buffer=buffer, eta=self.eta, norm_threshold=self.norm_threshold
        )

    def __repr__(self) -> str:
        return f"APGState(momentum={self.momentum}, norm_threshold={self.norm_threshold}, eta={self.eta})"


def combine_guidance(
    noise_cond: torch.Tensor,
    noise_drop_text: torch.Tensor,
    noise_uncond: torch.Tensor,
    text_scale: float,
    audio_scale: float,
    apg: Optional[APGState] = None,
) -> torch.Tensor:
    """Three-pass guidance (text scale != 1).

    Passes: ``cond`` (prompt + audio), ``drop_text`` (negative prompt + audio), ``uncond`` (negative
    prompt + silent audio). Without APG::

        uncond + text_scale * (cond - drop_text) + audio_scale * (drop_text - uncond)

    With APG (the same sum written around ``cond``) each difference goes through
    :func:`adaptive_projected_guidance`, projected against ``cond``::

        cond + (text_scale - 1) * apg(cond - drop_text) + (audio_scale - 1) * apg(drop_text - uncond)
    """
    if apg is None:
        return noise_uncond + text_scale * (noise_cond - noise_drop_text) + audio_scale * (
            noise_drop_text - noise_uncond
        )
    text_term = apg.guide(noise_cond - noise_drop_text, noise_cond, apg.text)
    audio_term = apg.guide(noise_drop_text - noise_uncond, noise_cond, apg.audio)
    return noise_cond + (text_scale - 1) * text_term + (audio_scale - 1) * audio_term


def combine_guidance_two_pass(
    noise_cond: torch.Tensor,
    noise_drop_audio: torch.Tensor,
    audio_scale: float,
    apg: Optional[APGState] = None,
) -> torch.Tensor:
    """Two-pass guidance (text scale == 1): ``drop_audio + audio_scale * (cond - drop_audio)``.

    ``drop_audio`` is the prompt with silent audio. With APG:
    ``cond + (audio_scale - 1) * apg(cond - drop_audio)`` using the ``audio`` buffer.
    """
    if apg is None:
        return noise_drop_audio + audio_scale * (noise_cond - noise_drop_audio)
    audio_term = apg.guide(noise_cond - noise_drop_audio, noise_cond, apg.audio)
    return noise_cond + (audio_scale - 1) * audio_term


# ---------------------------------------------------------------------------------------------------
# 3. Image
# ---------------------------------------------------------------------------------------------------

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

RESOLUTION_BUCKETS: dict[str, dict[str, tuple[int, int]]] = {
    "multitalk-480": ASPECT_RATIO_627,
    "multitalk-720": ASPECT_RATIO_960,
}

_RESOLUTION_ALIASES = {"480": "multitalk-480", "480p": "multitalk-480", "720": "multitalk-720", "720p": "multitalk-720"}


def resolution_buckets(resolution: Union[str, int] = "multitalk-480") -> dict[str, tuple[int, int]]:
    """The bucket table of ``"multitalk-480"`` or ``"multitalk-720"`` (also ``480``/``"720p"``...)."""
    key = str(resolution).strip().lower()
    key = _RESOLUTION_ALIASES.get(key, key)
    if key not in RESOLUTION_BUCKETS:
        raise ValueError(
            f"unknown resolution {resolution!r}; expected one of {sorted(RESOLUTION_BUCKETS)}"
        )
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

    * ``str`` / ``os.PathLike``: opened with PIL (``convert("RGB")``, alpha dropped as the original);
    * numpy: ``[H, W]``, ``[H, W, 1|3|4]``; uint8 (or ints in 0..255), bool, or float in ``[0, 1]``;
    * torch: ``[3, H, W]`` / ``[1, 3, H, W]`` (channels first) or ``[H, W, 3]``; same value rules.
    """
    if isinstance(image, PIL.Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
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


# ---------------------------------------------------------------------------------------------------
# 4. Person masks
# ---------------------------------------------------------------------------------------------------


def _as_bbox_list(bboxes) -> list:
    if isinstance(bboxes, Mapping):
        return list(bboxes.values())
    if isinstance(bboxes, torch.Tensor):
        return bboxes.detach().cpu().tolist()
    if isinstance(bboxes, np.ndarray):
        return bboxes.tolist()
    return list(bboxes)


def person_masks_from_bboxes(
    bboxes, height: int, width: int, num_persons: Optional[int] = None
) -> torch.Tensor:
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
        if len(box) != 4:
            raise ValueError(f"bbox {i} must have 4 numbers [top, left, bottom, right], got {box}")
        top, left, bottom, right = (int(v) for v in box)
        if top < 0 or left < 0 or bottom > height or right > width:
            raise ValueError(
                f"bbox {i} [top, left, bottom, right] = {box} is outside the {height}x{width} (rows x cols) image"
            )
        if bottom <= top or right <= left:
            raise ValueError(f"bbox {i} [top, left, bottom, right] = {box} is empty")
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


# ---------------------------------------------------------------------------------------------------
# 5. Colour correction
# ---------------------------------------------------------------------------------------------------

# sRGB (D65) <-> CIE XYZ matrix of the sRGB specification, and the D65 / 2 degree white point;
# these are the constants scikit-image's rgb2lab / lab2rgb use.
_XYZ_FROM_RGB = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])
_LAB_EPS = 0.008856  # ~ (6/29)^3
_LAB_KAPPA = 7.787  # ~ (29/6)^2 / 3
_LAB_DELTA = 0.2068966  # ~ 6/29


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in ``[0, 1]`` (channels last) to CIE LAB (D65, 2 deg), float64; matches ``skimage.color.rgb2lab``."""
    c = np.asarray(rgb, dtype=np.float64)
    if c.shape[-1] != 3:
        raise ValueError(f"expected channels-last RGB, got shape {c.shape}")
    lin = np.where(c > 0.04045, np.power((np.maximum(c, 0.04045) + 0.055) / 1.055, 2.4), c / 12.92)
    xyz = lin @ _XYZ_FROM_RGB.T / _D65_WHITE
    f = np.where(xyz > _LAB_EPS, np.cbrt(xyz), _LAB_KAPPA * xyz + 16.0 / 116.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE LAB (D65, 2 deg) to sRGB clipped to ``[0, 1]``, float64; matches ``skimage.color.lab2rgb``.

    As scikit-image, negative ``z`` (colours out of gamut on the blue side) is set to 0 before the
    inverse companding, and the result is clipped.
    """
    v = np.asarray(lab, dtype=np.float64)
    if v.shape[-1] != 3:
        raise ValueError(f"expected channels-last LAB, got shape {v.shape}")
    fy = (v[..., 0] + 16.0) / 116.0
    fx = v[..., 1] / 500.0 + fy
    fz = np.maximum(fy - v[..., 2] / 200.0, 0.0)
    f = np.stack([fx, fy, fz], axis=-1)
    xyz = np.where(f > _LAB_DELTA, f**3, (f - 16.0 / 116.0) / _LAB_KAPPA) * _D65_WHITE
    lin = xyz @ _RGB_FROM_XYZ.T
    srgb = np.where(
        lin > 0.0031308, 1.055 * np.power(np.maximum(lin, 0.0031308), 1 / 2.4) - 0.055, lin * 12.92
    )
    return np.clip(srgb, 0.0, 1.0)


def _rgb_to_lab_torch(rgb: torch.Tensor) -> torch.Tensor:
    """Torch twin of :func:`rgb_to_lab` (same constants), on any device, in the input's dtype."""
    xyz_from_rgb = torch.as_tensor(_XYZ_FROM_RGB, dtype=rgb.dtype, device=rgb.device)
    white = torch.as_tensor(_D65_WHITE, dtype=rgb.dtype, device=rgb.device)
    lin = torch.where(rgb > 0.04045, ((rgb.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = lin @ xyz_from_rgb.T / white
    f = torch.where(xyz > _LAB_EPS, xyz.clamp(min=0) ** (1.0 / 3.0), _LAB_KAPPA * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(-1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-1)


def _lab_to_rgb_torch(lab: torch.Tensor) -> torch.Tensor:
    """Torch twin of :func:`lab_to_rgb`."""
    rgb_from_xyz = torch.as_tensor(_RGB_FROM_XYZ, dtype=lab.dtype, device=lab.device)
    white = torch.as_tensor(_D65_WHITE, dtype=lab.dtype, device=lab.device)
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = lab[..., 1] / 500.0 + fy
    fz = (fy - lab[..., 2] / 200.0).clamp(min=0.0)
    f = torch.stack([fx, fy, fz], dim=-1)
    xyz = torch.where(f > _LAB_DELTA, f**3, (f - 16.0 / 116.0) / _LAB_KAPPA) * white
    lin = xyz @ rgb_from_xyz.T
    srgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=0.0031308) ** (1 / 2.4) - 0.055, lin * 12.92)
    return srgb.clamp(0.0, 1.0)


def _match_color(frames01: torch.Tensor, ref01: torch.Tensor, strength: float) -> torch.Tensor:
    """frames01 [T, H, W, 3], ref01 [H, W, 3], both clipped to [0, 1] (float64, any device); returns the blend."""
    ref_lab = _rgb_to_lab_torch(ref01)
    ref_mean = ref_lab.mean(dim=(0, 1))
    ref_std = ref_lab.std(dim=(0, 1), unbiased=False)
    src_lab = _rgb_to_lab_torch(frames01)  # [T, H, W, 3]
    src_mean = src_lab.mean(dim=(1, 2), keepdim=True)
    src_std = src_lab.std(dim=(1, 2), keepdim=True, unbiased=False)
    # exact zero in numpy; torch's reductions can leave ~1e-15 on a constant channel
    flat = src_std <= 1e-9
    matched = (src_lab - src_mean) * (ref_std / torch.where(flat, torch.ones_like(src_std), src_std)) + ref_mean
    # a channel without variation is set to the reference mean, as the original
    matched = torch.where(flat, ref_mean.expand_as(matched), matched)
    return (1 - strength) * frames01 + strength * _lab_to_rgb_torch(matched)


def match_color_lab(frames, reference, strength: float = 1.0, value_range: tuple[float, float] = (-1.0, 1.0)):
    """The original's colour correction: LAB mean/std of each frame matched to the reference image,
    blended with the frame by ``strength``.

    Per frame and per LAB channel: ``(x - mean_src) * std_ref / std_src + mean_ref`` (population std;
    a constant channel becomes ``mean_ref``), back to RGB (clipped), then
    ``(1 - strength) * frame + strength * corrected``. Frames and reference are clipped to the value
    range first (the blend uses the clipped frame); ``strength == 0`` returns ``frames`` unchanged.

    Layouts (values in ``value_range``, default ``[-1, 1]`` = the VAE's output, as the original):

    * torch: ``frames`` ``[C, T, H, W]`` or ``[1, C, T, H, W]``; ``reference`` ``[C, H, W]``,
      ``[C, 1, H, W]`` or ``[1, C, 1, H, W]``; the result has ``frames``' shape, dtype and device;
    * numpy: ``frames`` ``[T, H, W, 3]``, ``reference`` ``[H, W, 3]`` (or ``[1, H, W, 3]``).

    Computed in float64 (the original works in the frames' dtype, float32: differences ~1e-6).
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0.0 and 1.0, got {strength}")
    if strength == 0.0:
        return frames
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise ValueError(f"invalid value_range {value_range}")

    if isinstance(frames, torch.Tensor):
        shape, dtype, device = frames.shape, frames.dtype, frames.device
        f = frames.detach()
        if f.ndim == 5:
            if f.shape[0] != 1:
                raise ValueError(f"batched frames need batch size 1, got {tuple(f.shape)}")
            f = f[0]
        if f.ndim != 4 or f.shape[0] != 3:
            raise ValueError(f"torch frames must be [3, T, H, W] or [1, 3, T, H, W], got {tuple(shape)}")
        r = reference.detach() if isinstance(reference, torch.Tensor) else torch.as_tensor(np.asarray(reference))
        while r.ndim > 3 and r.shape[0] == 1:  # [1, C, 1, H, W] -> [C, 1, H, W]
            r = r[0]
        if r.ndim == 4:
            if r.shape[1] != 1:
                raise ValueError(f"reference must hold a single frame, got {tuple(reference.shape)}")
            r = r[:, 0]
        if r.ndim != 3 or r.shape[0] != 3:
            raise ValueError(f"torch reference must be [3, H, W] (or [1, 3, 1, H, W]), got {tuple(reference.shape)}")
        frames_t = f.permute(1, 2, 3, 0).double()
        ref_t = r.permute(1, 2, 0).to(device=f.device, dtype=torch.float64)
    else:
        frames_np = np.asarray(frames, dtype=np.float64)
        ref_np = np.asarray(reference, dtype=np.float64)
        if ref_np.ndim == 4 and ref_np.shape[0] == 1:
            ref_np = ref_np[0]
        if frames_np.ndim != 4 or frames_np.shape[-1] != 3:
            raise ValueError(f"numpy frames must be [T, H, W, 3], got {frames_np.shape}")
        if ref_np.ndim != 3 or ref_np.shape[-1] != 3:
            raise ValueError(f"numpy reference must be [H, W, 3], got {ref_np.shape}")
        frames_t, ref_t = torch.from_numpy(frames_np), torch.from_numpy(ref_np)

    # float64 on the frames' device: on a GPU this takes milliseconds instead of seconds on the CPU.
    span = hi - lo
    frames01 = ((frames_t - lo) / span).clamp(0.0, 1.0)
    ref01 = ((ref_t - lo) / span).clamp(0.0, 1.0)
    out_t = _match_color(frames01, ref01, float(strength)) * span + lo

    if isinstance(frames, torch.Tensor):
        result = out_t.permute(3, 0, 1, 2).contiguous()
        return result.reshape(shape).to(device=device, dtype=dtype)
    out = out_t.numpy()
    out_dtype = frames_np.dtype if not isinstance(frames, np.ndarray) else frames.dtype
    if not np.issubdtype(out_dtype, np.floating):
        out_dtype = np.float64
    return out.astype(out_dtype)
