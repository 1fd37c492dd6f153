"""Timesteps for the pipelines' chunk loop: MultiTalk's exact shifted schedule on diffusers'
`FlowMatchEulerDiscreteScheduler` (the reference's sampler), and any other flow-matching scheduler of diffusers
(UniPC or DPM++ with flow sigmas, FlowMatchHeun, ...) on its own schedule with the call's shift.

The numbers follow the original MultiTalk implementation (MeiGen-AI/MultiTalk); the comments say where its
conventions are unusual.
"""

from __future__ import annotations

import inspect
from typing import Optional, Union

import numpy as np
import torch


__all__ = [
    "check_flow_scheduler",
    "scheduler_shift",
    "scheduler_noise_level",
    "set_chunk_timesteps",
    "multitalk_timesteps",
    "multitalk_sigmas",
    "make_multitalk_scheduler",
    "set_multitalk_timesteps",
    "add_noise_flow",
    "flashtalk_timesteps",
    "make_flashtalk_scheduler",
    "set_flashtalk_timesteps",
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


def flashtalk_timesteps(num_inference_steps: int, shift: float, num_train_timesteps: int = 1000) -> torch.Tensor:
    """SoulX-FlashTalk's timesteps in ``[0, num_train_timesteps]``, terminal ``0`` included: the fixed ``[T, T/2]``
    for 2 steps and ``[T, 3T/4, T/2, T/4]`` for 4 (the steps it was distilled for), MultiTalk's ``linspace(T, 1,
    steps)`` otherwise; then ``0``, every value shifted as :func:`multitalk_timesteps` does (``shift * s / (1 +
    (shift - 1) * s)`` on ``s = t / T``, float32). With shift 5 and 4 steps: 1000, 937.5, 833.33, 625, 0."""
    if int(num_inference_steps) != num_inference_steps or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    if not (shift > 0):
        raise ValueError(f"shift must be > 0, got {shift!r}")
    steps, total = int(num_inference_steps), num_train_timesteps
    fixed = {2: [total, total // 2], 4: [total, total * 3 // 4, total // 2, total // 4]}
    base = (
        np.array(fixed[steps], dtype=np.float32) if steps in fixed else np.linspace(total, 1, steps, dtype=np.float32)
    )
    s = torch.from_numpy(np.concatenate([base, np.zeros(1, dtype=np.float32)])) / total
    s = shift * s / (1 + (shift - 1) * s)
    return s * total


def make_flashtalk_scheduler(shift: float = 5.0, num_train_timesteps: int = 1000):
    """SoulX-FlashTalk's sampler as diffusers' `FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)`: each step
    predicts ``x0 = x - sigma * v`` and re-noises it to the next level with fresh noise, ``(1 - sigma_next) * x0 +
    sigma_next * noise`` (drawn from the call's generator), which is the reference's update exactly.
    :func:`set_flashtalk_timesteps` loads its fixed timesteps per chunk."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=num_train_timesteps,
        shift=float(shift),
        use_dynamic_shifting=False,
        stochastic_sampling=True,
    )


def set_flashtalk_timesteps(scheduler, num_inference_steps: int, shift: float, device=None) -> torch.Tensor:
    """Loads :func:`flashtalk_timesteps` into a ``FlowMatchEulerDiscreteScheduler`` (stochastic or not; the other
    options of `set_multitalk_timesteps` refused); returns its timesteps."""
    return _load_timesteps(scheduler, flashtalk_timesteps, num_inference_steps, shift, device, ("stochastic_sampling",))


def make_multitalk_scheduler(
    shift: float = 7.0,
    num_inference_steps: Optional[int] = None,
    device: Union[str, torch.device, None] = None,
    num_train_timesteps: int = 1000,
):
    """A :class:`~diffusers.FlowMatchEulerDiscreteScheduler` configured for MultiTalk: its ``shift`` is MultiTalk's
    (7 at 480P, 11 at 720P), used by the pipelines when a call gives none, and dynamic shifting is off.

    :func:`set_multitalk_timesteps` loads MultiTalk's exact schedule into it; it is called here when
    ``num_inference_steps`` is given (the pipelines call it per chunk).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=num_train_timesteps, shift=float(shift), use_dynamic_shifting=False
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

    The scheduler's ``shift`` is 1.0 (``set_shift``) while ``set_timesteps`` runs, because it applies its
    shift to custom sigmas too; its own shift is restored afterwards. Schedulers configured with dynamic shifting, Karras/exponential/beta
    sigmas, inverted sigmas, a terminal stretch or stochastic sampling are rejected.
    """
    return _load_timesteps(scheduler, multitalk_timesteps, num_inference_steps, shift, device)


def _load_timesteps(scheduler, schedule, num_inference_steps, shift, device, allowed=()) -> torch.Tensor:
    """`schedule(steps, shift, T)` (timesteps with the terminal 0) loaded into a FlowMatchEulerDiscreteScheduler as
    its exact sigmas and timesteps; config options of `_INCOMPATIBLE_SCHEDULER_FLAGS` not in `allowed` refused."""
    config = getattr(scheduler, "config", None)
    if config is None or not hasattr(scheduler, "set_timesteps") or not hasattr(scheduler, "set_shift"):
        raise TypeError(f"expected a diffusers FlowMatchEulerDiscreteScheduler, got {type(scheduler).__name__}")
    bad = [flag for flag in _INCOMPATIBLE_SCHEDULER_FLAGS if config.get(flag, None) and flag not in allowed]
    if bad:
        raise ValueError(
            "this model's schedule needs a plain FlowMatchEulerDiscreteScheduler; these config options are set: "
            + ", ".join(bad)
        )
    num_train_timesteps = int(config.get("num_train_timesteps", 1000))
    timesteps = schedule(num_inference_steps, shift, num_train_timesteps)
    sigmas = timesteps / num_train_timesteps

    own_shift = scheduler.shift
    scheduler.set_shift(1.0)
    kwargs = {"sigmas": sigmas[:-1].numpy(), "device": device}
    params = inspect.signature(scheduler.set_timesteps).parameters
    pass_timesteps = "timesteps" in params
    if pass_timesteps:
        kwargs["timesteps"] = timesteps[:-1].numpy()
    try:
        scheduler.set_timesteps(**kwargs)
    finally:
        scheduler.set_shift(own_shift)
    if not pass_timesteps:  # older diffusers: timesteps are sigmas * T there; use the original's values
        scheduler.timesteps = timesteps[:-1].to(device=scheduler.timesteps.device)

    got = scheduler.sigmas.detach().to("cpu", torch.float32)
    if got.shape != sigmas.shape or not torch.equal(got, sigmas):
        raise RuntimeError(
            "FlowMatchEulerDiscreteScheduler.set_timesteps changed the sigmas it was given; "
            "this diffusers version is not supported by set_multitalk_timesteps / set_flashtalk_timesteps"
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


# Schedulers whose class name says flow matching; others qualify by predicting flow on flow sigmas (UniPC, DPM++).
_FLOW_CLASS_PREFIX = "FlowMatch"


def check_flow_scheduler(scheduler) -> None:
    """Raises a TypeError/ValueError saying why `scheduler` cannot drive MultiTalk's DiT, if it cannot.

    The DiT predicts a flow velocity, so the scheduler must be one of diffusers' flow-matching schedulers
    (`FlowMatch*`) or a multistep solver configured for flow (`prediction_type="flow_prediction"`,
    `use_flow_sigmas=True`: UniPC, DPM++). Dynamic shifting is refused: it needs a resolution-dependent `mu` that
    MultiTalk does not define (give `shift` instead)."""
    config = getattr(scheduler, "config", None)
    if config is None or not hasattr(scheduler, "set_timesteps") or not hasattr(scheduler, "step"):
        raise TypeError(f"expected a diffusers scheduler, got {type(scheduler).__name__}")
    name = type(scheduler).__name__
    is_flow = name.startswith(_FLOW_CLASS_PREFIX) or (
        config.get("prediction_type") == "flow_prediction" and config.get("use_flow_sigmas", False)
    )
    if not is_flow:
        raise TypeError(
            f"{name} (prediction_type={config.get('prediction_type')!r}) is not a flow-matching scheduler: MultiTalk's "
            "DiT predicts a flow velocity. Use FlowMatchEulerDiscreteScheduler (the reference's), FlowMatchHeun, or "
            "UniPC / DPM++ with prediction_type='flow_prediction', use_flow_sigmas=True."
        )
    if config.get("use_dynamic_shifting", False):
        raise ValueError(
            f"{name} has use_dynamic_shifting=True, which needs a resolution-dependent `mu` that MultiTalk does not "
            "define; build it with use_dynamic_shifting=False and give `shift`."
        )


def _shift_key(scheduler) -> str | None:
    for key in ("flow_shift", "shift"):
        if key in scheduler.config:
            return key
    return None


def scheduler_shift(scheduler) -> float | None:
    """The scheduler's own timestep shift (`shift` or `flow_shift`), or None if it has none."""
    if hasattr(scheduler, "set_shift") and hasattr(scheduler, "shift"):
        return float(scheduler.shift)
    key = _shift_key(scheduler)
    return None if key is None else float(scheduler.config[key])


def _is_multitalk_euler(scheduler) -> bool:
    """A plain FlowMatchEulerDiscreteScheduler: it runs MultiTalk's exact schedule (the parity path)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return isinstance(scheduler, FlowMatchEulerDiscreteScheduler) and not any(
        scheduler.config.get(flag, None) for flag in _INCOMPATIBLE_SCHEDULER_FLAGS
    )


def set_chunk_timesteps(
    scheduler, num_inference_steps: int, shift: float | None = None, device: Union[str, torch.device, None] = None
) -> torch.Tensor:
    """Sets `scheduler`'s timesteps for one chunk (and resets its step state); returns them.

    A plain FlowMatchEulerDiscreteScheduler gets MultiTalk's exact schedule (`set_multitalk_timesteps`); any other
    flow-matching scheduler its own `set_timesteps`, with `shift` as its `shift` / `flow_shift` for that call (the
    scheduler's config is restored afterwards). `shift=None` keeps the scheduler's own shift."""
    check_flow_scheduler(scheduler)
    if _is_multitalk_euler(scheduler):
        return set_multitalk_timesteps(
            scheduler, num_inference_steps, scheduler_shift(scheduler) if shift is None else shift, device=device
        )
    key = _shift_key(scheduler)
    if shift is None or key is None:
        scheduler.set_timesteps(num_inference_steps, device=device)
        return scheduler.timesteps
    own = scheduler.config[key]
    scheduler.register_to_config(**{key: float(shift)})
    try:
        scheduler.set_timesteps(num_inference_steps, device=device)
    finally:
        scheduler.register_to_config(**{key: own})
    return scheduler.timesteps


def scheduler_noise_level(scheduler) -> torch.Tensor:
    """The noise level (sigma) of the sample the scheduler holds now: `sigmas[step_index]` (the first sigma before
    any step). After `step`, this is the level the sample moved to, for first- and second-order schedulers alike:
    the level at which the pinned motion latents are re-noised."""
    index = getattr(scheduler, "step_index", None)
    return scheduler.sigmas[0 if index is None else index]
