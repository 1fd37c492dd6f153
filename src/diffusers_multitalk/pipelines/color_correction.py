"""LAB colour correction of generated chunks towards the conditioning image, as MultiTalk does it (scikit-image's
conversions), and as SoulX-FlashTalk does it (its own torch conversion, other constants: `match_color_lab_flashtalk`)."""

from __future__ import annotations

import numpy as np
import torch


__all__ = [
    "rgb_to_lab",
    "lab_to_rgb",
    "match_color_lab",
    "match_color_lab_flashtalk",
]


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
    srgb = np.where(lin > 0.0031308, 1.055 * np.power(np.maximum(lin, 0.0031308), 1 / 2.4) - 0.055, lin * 12.92)
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


_FRAMES_PER_SLICE = 4


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

    # float64 on the frames' device: on a GPU this takes milliseconds instead of seconds on the CPU. Each frame is
    # matched on its own, so a few frames at a time give the same numbers with a fraction of the float64 temporaries
    # (a whole 81-frame 480P chunk would need several GB of them).
    span = hi - lo
    ref01 = ((ref_t - lo) / span).clamp(0.0, 1.0)
    out_t = torch.empty_like(frames_t)
    for start in range(0, frames_t.shape[0], _FRAMES_PER_SLICE):
        frames01 = ((frames_t[start : start + _FRAMES_PER_SLICE] - lo) / span).clamp(0.0, 1.0)
        out_t[start : start + _FRAMES_PER_SLICE] = _match_color(frames01, ref01, float(strength)) * span + lo

    if isinstance(frames, torch.Tensor):
        result = out_t.permute(3, 0, 1, 2).contiguous()
        return result.reshape(shape).to(device=device, dtype=dtype)
    out = out_t.numpy()
    out_dtype = frames_np.dtype if not isinstance(frames, np.ndarray) else frames.dtype
    if not np.issubdtype(out_dtype, np.floating):
        out_dtype = np.float64
    return out.astype(out_dtype)


# SoulX-FlashTalk's constants: the sRGB matrices to more digits, and the CIE kappa (903.3) form of the LAB curve.
_FT_XYZ_FROM_RGB = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_FT_RGB_FROM_XYZ = (
    (3.2404542, -1.5371385, -0.4985314),
    (-0.9692660, 1.8760108, 0.0415560),
    (0.0556434, -0.2040259, 1.0572252),
)
_FT_EPS, _FT_KAPPA = 0.008856, 903.3


def _flashtalk_lab(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3] RGB in [0, 1] -> LAB, as SoulX-FlashTalk converts (normalised XYZ clamped to [1e-8, 1])."""
    matrix = torch.tensor(_FT_XYZ_FROM_RGB, dtype=rgb.dtype, device=rgb.device)
    white = torch.tensor(_D65_WHITE.tolist(), dtype=rgb.dtype, device=rgb.device)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = (linear.reshape(-1, 3) @ matrix.T).reshape(rgb.shape)
    xyz = (xyz / white).clamp(1e-8, 1.0)
    f = torch.where(xyz > _FT_EPS, xyz ** (1 / 3), (_FT_KAPPA * xyz + 16) / 116)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], dim=-1)


def _flashtalk_rgb(lab: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_flashtalk_lab` (lightness through its own branch), clipped to [0, 1]."""
    lightness = lab[..., 0]
    fy = (lightness + 16) / 116
    fx, fz = lab[..., 1] / 500 + fy, fy - lab[..., 2] / 200
    x = torch.where(fx**3 > _FT_EPS, fx**3, (116 * fx - 16) / _FT_KAPPA)
    y = torch.where(lightness > _FT_KAPPA * _FT_EPS, fy**3, lightness / _FT_KAPPA)
    z = torch.where(fz**3 > _FT_EPS, fz**3, (116 * fz - 16) / _FT_KAPPA)
    white = torch.tensor(_D65_WHITE.tolist(), dtype=lab.dtype, device=lab.device)
    xyz = torch.stack([x, y, z], dim=-1) * white
    matrix = torch.tensor(_FT_RGB_FROM_XYZ, dtype=lab.dtype, device=lab.device)
    linear = (xyz.reshape(-1, 3) @ matrix.T).reshape(xyz.shape)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0.0, 1.0)


def match_color_lab_flashtalk(frames: torch.Tensor, reference: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """SoulX-FlashTalk's colour correction: `frames` `[B, 3, T, H, W]` and `reference` `[B, 3, 1, H, W]` in [-1, 1];
    each frame's LAB mean and population std per channel moved to the reference's (a channel whose std is below 1e-8
    keeps its spread), back to RGB, blended with the frame by `strength`. Computed in the frames' dtype, as the
    reference does; `strength == 0` returns `frames`."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0.0 and 1.0, got {strength}")
    if strength == 0.0:
        return frames
    source = ((frames + 1) / 2).permute(0, 2, 3, 4, 1)  # [B, T, H, W, 3]
    ref = ((reference.to(frames) + 1) / 2).permute(0, 2, 3, 4, 1)
    source_lab, ref_lab = _flashtalk_lab(source), _flashtalk_lab(ref)
    ref_mean, ref_std = ref_lab.mean(dim=[2, 3], keepdim=True), ref_lab.std(dim=[2, 3], keepdim=True, unbiased=False)
    mean, std = source_lab.mean(dim=[2, 3], keepdim=True), source_lab.std(dim=[2, 3], keepdim=True, unbiased=False)
    std = torch.where(std < 1e-8, torch.ones_like(std), std)
    corrected = _flashtalk_rgb((source_lab - mean) * (ref_std / std) + ref_mean)
    blended = (1 - strength) * source + strength * corrected
    return (blended.permute(0, 4, 1, 2, 3) * 2 - 1).contiguous()
