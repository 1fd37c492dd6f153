"""TeaCache for the MultiTalk transformer, as diffusers hooks.

TeaCache skips the whole block stack on steps where the timestep modulation hardly changed, reusing the residual
(blocks' output minus input) of the last computed step. MultiTalk's variant ("retention steps"): the change is the
relative L1 distance of the timestep projection fed to the blocks, rescaled by a fitted polynomial and accumulated;
the blocks run when the accumulation reaches the threshold (which resets it), and always on the first 5 steps.
Each guidance branch ("cond", "drop_text", "uncond", "drop_audio") keeps its own state through diffusers'
`cache_context`, which `WanMultiTalkPipeline` sets around every transformer call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook

from .._diffusers_compat import BaseState, StateManager, context_parallel_input_hook_name, hook_order
from ..utils.defaults import TEACACHE_COEFFICIENTS_480, TEACACHE_COEFFICIENTS_720


TEACACHE_HOOK = "multitalk_teacache"

# Polynomial coefficients (highest power first) fitted by MultiTalk for its retention-steps variant, by its sizes.
# Other models' sizes take theirs from the variant registry (`variants.get_size(size).teacache_coefficients`), which
# the callers pass as `coefficients=`: this layer knows no model.
TEACACHE_COEFFICIENTS = {"multitalk-480": TEACACHE_COEFFICIENTS_480, "multitalk-720": TEACACHE_COEFFICIENTS_720}
RETENTION_STEPS = 5


@dataclass
class TeaCacheConfig:
    """
    Args:
        threshold (`float`, defaults to 0.2): accumulated rescaled change below which the blocks are skipped
            (MultiTalk's `--teacache_thresh`; higher is faster and less faithful).
        resolution (`str`, defaults to "multitalk-480"): picks the fitted coefficients ("multitalk-480" or
            "multitalk-720") when `coefficients` is not given.
        coefficients (`tuple`, *optional*): explicit polynomial coefficients, highest power first (a size's, from
            `diffusers_multitalk.variants.get_size(size).teacache_coefficients`).
        retention_steps (`int`, defaults to 5): first steps of every chunk that always run the blocks.
    """

    threshold: float = 0.2
    resolution: str = "multitalk-480"
    coefficients: tuple[float, ...] | None = None
    retention_steps: int = RETENTION_STEPS

    def polynomial(self) -> np.poly1d:
        if self.coefficients is not None:
            return np.poly1d(self.coefficients)
        if self.resolution not in TEACACHE_COEFFICIENTS:
            raise ValueError(
                f"TeaCache has coefficients for {sorted(TEACACHE_COEFFICIENTS)}, not {self.resolution!r}; pass "
                "`coefficients=` to use others."
            )
        return np.poly1d(TEACACHE_COEFFICIENTS[self.resolution])


class TeaCacheState(BaseState):
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.accumulated = 0.0
        self.previous_modulation: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.head_input: torch.Tensor | None = None
        self.skip = False
        self.computed_steps: list[int] = []


def _hidden_states_and_temb(args, kwargs):
    hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    temb = kwargs["temb"] if "temb" in kwargs else args[2]
    return hidden_states, temb


class TeaCacheHeadHook(ModelHook):
    """On the first block: decides whether this step runs the blocks, and if not returns input + residual."""

    _is_stateful = True

    def __init__(self, state_manager: StateManager, config: TeaCacheConfig, is_tail: bool):
        super().__init__()
        self.state_manager = state_manager
        self.config = config
        self.polynomial = config.polynomial()
        self.is_tail = is_tail

    def _should_compute(self, state: TeaCacheState, modulation: torch.Tensor) -> bool:
        context = self.state_manager.context
        if context.step_index is None or context.num_inference_steps is None:
            raise ValueError(
                "TeaCache needs the step index: call the transformer inside "
                "`cache_context(name, step_index=i, num_inference_steps=n)` (WanMultiTalkPipeline does)."
            )
        step = context.step_index
        if step < self.config.retention_steps or state.previous_modulation is None:
            compute = True
        else:
            previous = state.previous_modulation
            change = ((modulation - previous).abs().mean() / previous.abs().mean()).item()
            state.accumulated += float(self.polynomial(change))
            compute = state.accumulated >= self.config.threshold
        if compute:
            state.accumulated = 0.0
            state.computed_steps.append(step)
        state.previous_modulation = modulation.detach().clone()
        return compute

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        hidden_states, temb = _hidden_states_and_temb(args, kwargs)
        state: TeaCacheState = self.state_manager.get_state()
        if not self._should_compute(state, temb):
            state.skip = True
            return hidden_states + state.residual
        state.skip = False
        state.head_input = hidden_states
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.is_tail:
            state.residual = output - hidden_states
        return output

    def reset_state(self, module):
        self.state_manager.reset()
        return module


class TeaCacheBlockHook(ModelHook):
    """On the other blocks: pass through when the step is skipped; the last block records the residual."""

    _is_stateful = True

    def __init__(self, state_manager: StateManager, is_tail: bool):
        super().__init__()
        self.state_manager = state_manager
        self.is_tail = is_tail

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        hidden_states, _ = _hidden_states_and_temb(args, kwargs)
        state: TeaCacheState = self.state_manager.get_state()
        if state.skip:
            return hidden_states
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.is_tail:
            state.residual = output - state.head_input
        return output

    def reset_state(self, module):
        self.state_manager.reset()
        return module


def apply_teacache(transformer: torch.nn.Module, config: TeaCacheConfig) -> StateManager:
    """Registers TeaCache on `transformer.blocks`; returns the shared state manager (per cache context)."""
    blocks = transformer.blocks
    if len(blocks) == 0:
        raise ValueError("TeaCache needs a transformer with blocks.")
    state_manager = StateManager(TeaCacheState)
    last = len(blocks) - 1
    for index, block in enumerate(blocks):
        registry = HookRegistry.check_if_exists_or_initialize(block)
        if TEACACHE_HOOK in registry.hooks:
            raise ValueError("TeaCache is already enabled on this transformer; call `remove_teacache` first.")
        hook = (
            TeaCacheHeadHook(state_manager, config, is_tail=index == last)
            if index == 0
            else TeaCacheBlockHook(state_manager, is_tail=index == last)
        )
        split_hook = _detach_context_parallel_split(registry) if index == 0 else None
        registry.register_hook(hook, TEACACHE_HOOK)
        if split_hook is not None:  # back outside TeaCache: TeaCache must see (and cache) this rank's tokens only
            registry.register_hook(split_hook, _context_parallel_split_name())
    # The transformer's registry caches its children's registries for `cache_context`: refresh it.
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    return state_manager


def _context_parallel_split_name() -> str:
    return context_parallel_input_hook_name("blocks.0")


def _detach_context_parallel_split(registry: HookRegistry):
    """With context parallelism, a hook on block 0 splits the video tokens; returns it, removed, or None."""
    name = _context_parallel_split_name()
    if name not in registry.hooks:
        return None
    if hook_order(registry)[-1] != name:
        raise ValueError(
            "TeaCache must run inside the context-parallel split of block 0, but other hooks were added after "
            "`enable_parallelism`; enable TeaCache before them (or before `enable_parallelism`)."
        )
    split_hook = registry.get_hook(name)
    registry.remove_hook(name, recurse=False)
    return split_hook


def remove_teacache(transformer: torch.nn.Module) -> None:
    for block in transformer.blocks:
        registry = HookRegistry.check_if_exists_or_initialize(block)
        if TEACACHE_HOOK in registry.hooks:
            registry.remove_hook(TEACACHE_HOOK, recurse=False)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
