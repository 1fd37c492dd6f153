"""MultiTalk's sampler: its shifted flow-matching timesteps on diffusers' `FlowMatchEulerDiscreteScheduler`.

The numbers follow the original MultiTalk implementation (MeiGen-AI/MultiTalk); the comments say where its
conventions are unusual.
"""

from __future__ import annotations

import inspect
from typing import Optional, Union

import numpy as np
import torch


__all__ = [
    "multitalk_timesteps",
    "multitalk_sigmas",
    "make_multitalk_scheduler",
    "set_multitalk_timesteps",
    "add_noise_flow",
]


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
        raise TypeError(f"expected a diffusers FlowMatchEulerDiscreteScheduler, got {type(scheduler).__name__}")
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


def add_noise_flow(x0: torch.Tensor, noise: torch.Tensor, sigma: Union[float, torch.Tensor]) -> torch.Tensor:
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
