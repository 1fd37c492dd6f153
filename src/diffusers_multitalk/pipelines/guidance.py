"""MultiTalk's classifier-free guidance over text and audio, with optional adaptive projected guidance (APG).

The momentum buffer is diffusers' (`diffusers.guiders.adaptive_projected_guidance.MomentumBuffer`). The projection is
written here: MultiTalk projects the audio difference `drop_text - uncond` on the *conditional* prediction `cond`,
which diffusers' `normalized_guidance` (it projects `pred_cond - pred_uncond` on its own `pred_cond`) cannot express.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer as DiffusersMomentumBuffer


__all__ = [
    "MomentumBuffer",
    "APGState",
    "adaptive_projected_guidance",
    "combine_guidance",
    "combine_guidance_two_pass",
]


class MomentumBuffer(DiffusersMomentumBuffer):
    """diffusers' APG momentum buffer, ``r <- d + momentum * r``, as MultiTalk uses it: it starts empty (the first
    difference is taken as is), `update` returns the new average, and `reset` empties it for the next chunk."""

    def __init__(self, momentum: float = -0.75):
        super().__init__(float(momentum))
        self.running_average: Optional[torch.Tensor] = None

    def update(self, value: torch.Tensor) -> torch.Tensor:
        if self.running_average is None:
            self.running_average = value
        else:
            super().update(value)
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
        return (
            noise_uncond + text_scale * (noise_cond - noise_drop_text) + audio_scale * (noise_drop_text - noise_uncond)
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
