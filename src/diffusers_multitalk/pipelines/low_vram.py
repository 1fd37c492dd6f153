"""Low-VRAM mode: MultiTalk's ``--num_persistent_param_in_dit N`` with diffusers' group-offloading hooks.

MultiTalk's VRAM manager keeps the first layers of the DiT (in module order) whose parameters add up to at most
``N`` on the GPU and leaves every later layer on the CPU, copying its weights to the GPU at each call. Here the unit
is a whole DiT block, and the copies are diffusers' group offloading:

* the first ``k`` blocks whose parameters add up to at most ``num_persistent_params`` stay resident on the device,
  together with the small modules outside the blocks (patch embedding, text/time/image embedders, audio projection,
  output head: about 0.3 B parameters at 14B), which are not counted against the budget;
* every other block is its own offload group (diffusers' ``block_level`` offloading, one block per group): its
  weights live on the CPU and are onloaded just before the block runs and dropped right after. On CUDA the next
  block is prefetched from pinned memory on a side stream while the current one computes (the blocks run in index
  order, so the prefetch chain is set up front);
* the other components (umT5, CLIP, the VAE, wav2vec2) are group-offloaded too, one layer or block on the device at
  a time, so that they stay out of the way of the denoising loop (or kept resident, or umT5 kept on the CPU).

Use::

    from diffusers_multitalk.pipelines.low_vram import enable_low_vram

    pipe = WanMultiTalkPipeline.from_pretrained(..., torch_dtype=torch.bfloat16)   # stays on the CPU
    enable_low_vram(pipe, "cuda", num_persistent_params=0)                       # lowest VRAM
    video = pipe(...)

``apply_dit_low_vram`` / ``remove_dit_low_vram`` do the DiT part on a bare transformer. See docs/low_vram.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from diffusers.hooks import HookRegistry, apply_group_offloading

from .._diffusers_compat import (
    _GROUP_OFFLOADING,
    _LAYER_EXECUTION_TRACKER,
    _LAZY_PREFETCH_GROUP_OFFLOADING,
    GroupOffloadingConfig,
    GroupOffloadingHook,
    GroupOffloadingType,
    ModuleGroup,
    _is_group_offload_enabled,
    _raise_error_if_accelerate_model_or_sequential_hook_present,
    set_prefetch_next_group,
)


__all__ = [
    "COMPONENT_OFFLOADING",
    "LowVRAMPlan",
    "apply_dit_low_vram",
    "disable_low_vram",
    "enable_low_vram",
    "plan_resident_blocks",
    "remove_dit_low_vram",
]

# How each other component is group-offloaded (diffusers' apply_group_offloading arguments), chosen by how the
# pipeline calls it:
# * umT5 is called through its forward; its layers are `encoder.block` (a ModuleList under `encoder`), the embedding
#   and final norm form the groups of the top module and of `encoder` (the top module's group also moves the token
#   ids and attention mask to the device).
# * CLIP is called through its forward; its layers are `vision_model.encoder.layers`.
# * The VAE declares its own blocks (`_group_offload_block_modules`) and the feature-cache kwargs to leave alone.
# * wav2vec2: `encode_speech` calls its forward (with a hook resampling the conv features); each leaf gets its own group
#   ("leaf_level") and moves its own inputs.
COMPONENT_OFFLOADING = {
    "text_encoder": dict(offload_type="block_level", num_blocks_per_group=1, block_modules=["encoder"]),
    "image_encoder": dict(
        offload_type="block_level", num_blocks_per_group=1, block_modules=["vision_model", "encoder"]
    ),
    "vae": dict(offload_type="block_level", num_blocks_per_group=1),
    "audio_encoder": dict(offload_type="leaf_level"),
}
_FALLBACK_OFFLOADING = dict(offload_type="leaf_level")

_TOP_GROUP_ID = "multitalk_low_vram_resident"
_PLAN_ATTR = "_multitalk_low_vram_plan"


@dataclass
class LowVRAMPlan:
    """Where the DiT's blocks (and the other components) were put by :func:`apply_dit_low_vram` /
    :func:`enable_low_vram`."""

    device: torch.device
    num_persistent_params: int
    resident_blocks: list[int]
    offloaded_blocks: list[int]
    block_params: list[int]
    non_block_params: int
    use_stream: bool
    low_cpu_mem_usage: bool
    components: dict[str, str] = field(default_factory=dict)

    @property
    def resident_block_params(self) -> int:
        return sum(self.block_params[i] for i in self.resident_blocks)

    @property
    def offloaded_params(self) -> int:
        return sum(self.block_params[i] for i in self.offloaded_blocks)

    def summary(self) -> str:
        blocks = len(self.block_params)
        text = (
            f"low VRAM on {self.device}: {len(self.resident_blocks)} of {blocks} DiT blocks resident "
            f"({self.resident_block_params / 1e9:.2f} B of the budget {self.num_persistent_params / 1e9:.2f} B "
            f"parameters, plus {self.non_block_params / 1e9:.2f} B outside the blocks), {len(self.offloaded_blocks)} "
            f"streamed from the CPU block by block ({self.offloaded_params / 1e9:.2f} B parameters per forward"
        )
        if self.offloaded_blocks:
            text += ", prefetched on a side stream" if self.use_stream else ", synchronous copies"
        text += ")"
        if self.components:
            text += "; " + ", ".join(f"{name}: {where}" for name, where in self.components.items())
        return text


def plan_resident_blocks(block_params: Sequence[int], num_persistent_params: int) -> list[int]:
    """Indices of the blocks kept resident: the longest run of first blocks whose parameters add up to at most
    `num_persistent_params` (as MultiTalk's manager, which fills its budget in module order and stops at the first
    layer that does not fit)."""
    if num_persistent_params < 0:
        raise ValueError(f"num_persistent_params must be 0 or more, got {num_persistent_params}.")
    resident, total = [], 0
    for index, count in enumerate(block_params):
        if total + count > num_persistent_params:
            break
        total += count
        resident.append(index)
    return resident


def _blocks(transformer: torch.nn.Module) -> torch.nn.ModuleList:
    blocks = getattr(transformer, "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList):
        raise TypeError(f"{type(transformer).__name__} has no `blocks` ModuleList (the DiT's blocks) to stream.")
    return blocks


def _pop_teacache(transformer: torch.nn.Module):
    """Removes TeaCache from the blocks (returning its config) so that it can be put back outside the offload hooks:
    a step it skips then moves no weights."""
    from ..hooks.teacache import TEACACHE_HOOK, remove_teacache

    blocks = _blocks(transformer)
    registry = getattr(blocks[0], "_diffusers_hook", None) if len(blocks) else None
    hook = registry.get_hook(TEACACHE_HOOK) if registry is not None else None
    if hook is None:
        return None
    config = hook.config
    remove_teacache(transformer)
    return config


def _restore_teacache(transformer: torch.nn.Module, config) -> None:
    from ..hooks.teacache import apply_teacache

    state = apply_teacache(transformer, config)
    if hasattr(transformer, "_teacache_state"):
        transformer._teacache_state = state


def _move_param_data(module: torch.nn.Module, device: torch.device) -> None:
    """Moves the module's own (not its children's) parameters and buffers."""
    for param in module._parameters.values():
        if param is not None:
            param.data = param.data.to(device)
    for name, buffer in module._buffers.items():
        if buffer is not None:
            module._buffers[name] = buffer.to(device)


def _use_stream(use_stream: bool, device: torch.device) -> bool:
    if not use_stream or device.type == "cpu":
        return False
    module = getattr(torch, device.type, None)
    return module is not None and hasattr(module, "Stream")


def apply_dit_low_vram(
    transformer: torch.nn.Module,
    device: str | torch.device,
    num_persistent_params: int = 0,
    *,
    offload_device: str | torch.device = "cpu",
    use_stream: bool = True,
    record_stream: bool = False,
    low_cpu_mem_usage: bool = False,
) -> LowVRAMPlan:
    """Keeps the first blocks of `transformer` that fit in `num_persistent_params` parameters (and everything outside
    the blocks) on `device`, and puts every other block under diffusers' group offloading, one block per group.

    Args:
        transformer: a :class:`MultiTalkTransformer3DModel` (anything with a `blocks` ModuleList), on any device; the
            streamed blocks are moved to `offload_device` first, so it never needs to fit on `device` whole.
        device: where the DiT computes (e.g. "cuda").
        num_persistent_params: parameter budget for the resident blocks (MultiTalk's
            `--num_persistent_param_in_dit`); 0 streams every block. Blocks count whole: a block that does not fit
            entirely is streamed, and so is every block after it.
        offload_device: where streamed blocks are kept ("cpu").
        use_stream: on CUDA, prefetch the next block on a side stream while the current one computes (weights are
            copied once into pinned CPU memory). Ignored on the CPU.
        record_stream: diffusers' `record_stream` (with `use_stream`): a little faster, a little more memory.
        low_cpu_mem_usage: pin the weights at each transfer instead of keeping a pinned copy (no second copy of the
            streamed weights in RAM, slower transfers). Only matters with `use_stream`.

    TeaCache, if enabled, is moved outside the offload hooks so that a skipped step moves no weights. Load LoRAs
    before this call: a LoRA loaded afterwards makes diffusers re-apply its own group offloading to the whole DiT.
    Undo with :func:`remove_dit_low_vram`.
    """
    device = torch.device(device)
    offload_device = torch.device(offload_device)
    if _is_group_offload_enabled(transformer):
        raise ValueError("The transformer already has group offloading; call `remove_dit_low_vram` first.")
    _raise_error_if_accelerate_model_or_sequential_hook_present(transformer)
    blocks = _blocks(transformer)
    block_params = [sum(p.numel() for p in block.parameters()) for block in blocks]
    resident = plan_resident_blocks(block_params, num_persistent_params)
    offloaded = [i for i in range(len(blocks)) if i not in set(resident)]
    stream_on = _use_stream(use_stream, device) and bool(offloaded)
    in_blocks = {id(p) for p in blocks.parameters()}
    plan = LowVRAMPlan(
        device=device,
        num_persistent_params=int(num_persistent_params),
        resident_blocks=resident,
        offloaded_blocks=offloaded,
        block_params=block_params,
        non_block_params=sum(p.numel() for p in transformer.parameters() if id(p) not in in_blocks),
        use_stream=stream_on,
        low_cpu_mem_usage=low_cpu_mem_usage,
    )

    teacache = _pop_teacache(transformer)

    # Streamed blocks leave the device first (the model may have been on it), then the resident part moves in.
    for i in offloaded:
        blocks[i].to(offload_device)
    for _name, child in transformer.named_children():
        if child is not blocks:
            child.to(device)
    _move_param_data(transformer, device)
    for i in resident:
        blocks[i].to(device)

    stream = getattr(torch, device.type).Stream(device=device) if stream_on else None
    config = GroupOffloadingConfig(
        onload_device=device,
        offload_device=offload_device,
        offload_type=GroupOffloadingType.BLOCK_LEVEL,
        non_blocking=stream_on,
        record_stream=record_stream and stream_on,
        low_cpu_mem_usage=low_cpu_mem_usage,
        num_blocks_per_group=1,
        stream=stream,
        exclude_kwargs=getattr(transformer, "_skip_keys", None),
    )
    hooks = []
    for i in offloaded:
        group = ModuleGroup(
            modules=[blocks[i]],
            offload_device=offload_device,
            onload_device=device,
            offload_leader=blocks[i],
            onload_leader=blocks[i],
            non_blocking=stream_on,
            stream=stream,
            record_stream=config.record_stream,
            low_cpu_mem_usage=low_cpu_mem_usage,
            onload_self=True,
            group_id=f"blocks_{i}_{i}",
        )
        hooks.append(GroupOffloadingHook(group, config=config))
        # Registering offloads the block (to pinned memory when streaming).
        HookRegistry.check_if_exists_or_initialize(blocks[i]).register_hook(hooks[-1], _GROUP_OFFLOADING)
    # The transformer itself: an empty group (its resident part stays put) whose hook moves the forward's inputs
    # to the device and, when streaming, starts the first streamed block's transfer. Registered even when every
    # block is resident: the pipeline's `_execution_device` then reads the device from it (umT5 may sit on the CPU).
    top = ModuleGroup(
        modules=[],
        offload_device=offload_device,
        onload_device=device,
        offload_leader=transformer,
        onload_leader=transformer,
        parameters=[],
        buffers=[],
        non_blocking=False,
        stream=None,
        record_stream=False,
        onload_self=True,
        group_id=_TOP_GROUP_ID,
    )
    top_hook = GroupOffloadingHook(top, config=config)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(top_hook, _GROUP_OFFLOADING)
    if stream_on:
        # The blocks run in index order, so the prefetch chain is set here (the transformer starts the first streamed
        # block's copy, each block the next one's; a block waits for its own copy through the shared stream), rather
        # than traced in the first forward by diffusers' LazyPrefetchGroupOffloadingHook, whose removal of its tracer
        # hooks would silently unhook a TeaCache registered above them.
        for before, hook in zip([top_hook, *hooks[:-1]], hooks):
            set_prefetch_next_group(before, hook.group)
            hook.group.onload_self = False
    registry.invalidate_child_registries_cache()

    if teacache is not None:
        _restore_teacache(transformer, teacache)
    setattr(transformer, _PLAN_ATTR, plan)
    return plan


def remove_dit_low_vram(transformer: torch.nn.Module, offload_device: str | torch.device | None = None) -> None:
    """Removes what :func:`apply_dit_low_vram` added. The streamed blocks are left on the offload device (pinned
    when streaming) and the resident part where it is; move the model with `.to()` afterwards."""
    plan = getattr(transformer, _PLAN_ATTR, None)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    for name in (_LAZY_PREFETCH_GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _GROUP_OFFLOADING):
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()
    if plan is not None:
        blocks = _blocks(transformer)
        target = torch.device(offload_device) if offload_device is not None else torch.device("cpu")
        for i in plan.offloaded_blocks:  # a block prefetched but not run (after a TeaCache skip) may be on the device
            blocks[i].to(target)
        delattr(transformer, _PLAN_ATTR)


def _offload_component(component: torch.nn.Module, spec: dict, device, offload_device) -> None:
    kwargs = dict(onload_device=device, offload_device=offload_device, **spec)
    if hasattr(component, "enable_group_offload") and "block_modules" not in spec:
        component.enable_group_offload(**kwargs)  # a diffusers model (the VAE): its own block list and skip keys
    else:
        apply_group_offloading(component, **kwargs)


def enable_low_vram(
    pipe,
    device: str | torch.device,
    num_persistent_params: int = 0,
    use_stream: bool = True,
    record_stream: bool = False,
    low_cpu_mem_usage: bool = False,
    *,
    offload_components: bool = True,
    text_encoder_on_cpu: bool = False,
    offload_device: str | torch.device = "cpu",
) -> LowVRAMPlan:
    """Low-VRAM placement of a :class:`WanMultiTalkPipeline` (MultiTalk's `--num_persistent_param_in_dit`).

    The DiT as in :func:`apply_dit_low_vram` (`num_persistent_params`, `use_stream`, `record_stream`,
    `low_cpu_mem_usage`). The other components:

    * `offload_components=True` (MultiTalk's default `--offload_model True` on one GPU): each is group-offloaded
      without a stream, one layer or block on the device at a time (see :data:`COMPONENT_OFFLOADING`), so the peak
      is the DiT's;
    * `offload_components=False` (`--offload_model False`): they stay resident on `device`;
    * `text_encoder_on_cpu=True` (`--t5_cpu`): umT5 stays on the CPU and runs there.

    Replaces `enable_model_cpu_offload` (whose hooks are removed first); the pipeline's execution device becomes
    `device`. The pipeline itself needs no change. Returns the plan (also in `pipe._multitalk_low_vram_plan`).
    """
    device = torch.device(device)
    offload_device = torch.device(offload_device)
    if getattr(pipe, "_all_hooks", None) or any(
        hasattr(c, "_hf_hook") for c in pipe.components.values() if isinstance(c, torch.nn.Module)
    ):
        pipe.remove_all_hooks()  # model CPU offload's accelerate hooks
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and _is_group_offload_enabled(component):
            raise ValueError(f"`{name}` already has group offloading; call `disable_low_vram(pipe)` first.")

    placements = {}
    # The other components first: none of them is moved onto the device whole.
    for name, component in pipe.components.items():
        if name == "transformer" or not isinstance(component, torch.nn.Module):
            continue
        if name == "text_encoder" and text_encoder_on_cpu:
            component.to("cpu")
            placements[name] = "on the CPU"
        elif not offload_components:
            component.to(device)
            placements[name] = "resident"
        else:
            spec = COMPONENT_OFFLOADING.get(name, _FALLBACK_OFFLOADING)
            _offload_component(component, spec, device, offload_device)
            placements[name] = f"group offloading ({spec['offload_type'].replace('_', ' ')})"

    plan = apply_dit_low_vram(
        pipe.transformer,
        device,
        num_persistent_params,
        offload_device=offload_device,
        use_stream=use_stream,
        record_stream=record_stream,
        low_cpu_mem_usage=low_cpu_mem_usage,
    )
    plan.components = placements
    setattr(pipe, _PLAN_ATTR, plan)
    return plan


def disable_low_vram(pipe, device: str | torch.device | None = None) -> None:
    """Removes every group-offloading hook of the pipeline (the DiT's and the other components') and, with
    `device`, moves the whole pipeline there."""
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        if name == "transformer":
            remove_dit_low_vram(component)
        elif _is_group_offload_enabled(component):
            registry = HookRegistry.check_if_exists_or_initialize(component)
            for hook in (_LAZY_PREFETCH_GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _GROUP_OFFLOADING):
                registry.remove_hook(hook, recurse=True)
            component.to("cpu")
    if hasattr(pipe, _PLAN_ATTR):
        delattr(pipe, _PLAN_ATTR)
    if device is not None:
        pipe.to(device)
