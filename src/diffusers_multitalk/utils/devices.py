"""Devices: where to hand a component its inputs when offloading hooks may own its weights."""

from __future__ import annotations

import torch


def input_device(module: torch.nn.Module) -> torch.device:
    """The device of `module`'s weights, or the CPU when they are on "meta": accelerate's sequential offload loads
    them in hooks, which also move the inputs (inputs on "meta" could not be moved)."""
    device = next(module.parameters()).device
    return torch.device("cpu") if device.type == "meta" else device
