"""diffusers' private names that diffusers-multitalk relies on, all in one module.

Each import or accessor says what it relies on. They were checked against diffusers 0.42 (the range in setup.cfg:
`diffusers>=0.42,<0.43`; 0.42 is the floor because the pipeline calls `cache_context(name, step_index=...)`). When
moving to a new diffusers minor, re-check this file first: nothing else in the package reaches past diffusers'
public API. Besides these imports, `pipelines.model_index.MultiTalkModelIndexMixin` overrides
`ConfigMixin._dict_from_json_file` (read by `load_config` and `DiffusionPipeline.download`) to read a model index
that names remote code as the package's own classes.
"""

from __future__ import annotations

# Cache hooks (FirstBlockCache, ...) find a block's outputs through this registry (models/transformer_multitalk.py):
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry  # noqa: F401

# Context parallelism (models/transformer_multitalk.py's `_cp_plan`, hooks/teacache.py):
from diffusers.hooks.context_parallel import (
    _CONTEXT_PARALLEL_INPUT_HOOK_TEMPLATE,  # "<template>".format("blocks.0"): the registry name of the split hook
)

# Group offloading (pipelines/low_vram.py builds the DiT's offload groups by hand, one per streamed block):
from diffusers.hooks.group_offloading import (  # noqa: F401
    _GROUP_OFFLOADING,  # the registry name of a module's GroupOffloadingHook
    _LAYER_EXECUTION_TRACKER,  # the registry name of the hooks that trace the layer order for lazy prefetching
    _LAZY_PREFETCH_GROUP_OFFLOADING,  # the registry name of the hook that sets the prefetch chain after a forward
    GroupOffloadingConfig,  # the config a GroupOffloadingHook takes (fields: onload/offload device, type, stream...)
    GroupOffloadingHook,  # the hook that onloads its ModuleGroup before the forward and offloads it after
    GroupOffloadingType,  # BLOCK_LEVEL / LEAF_LEVEL
    ModuleGroup,  # a set of modules onloaded and offloaded together (constructor keywords as in 0.42)
    _is_group_offload_enabled,  # whether a module carries a _GROUP_OFFLOADING hook
    _raise_error_if_accelerate_model_or_sequential_hook_present,  # refuses modules with accelerate hooks
)

# Hook state (hooks/teacache.py keeps one TeaCache state per `cache_context`, as diffusers' own caches do):
from diffusers.hooks.hooks import BaseState, StateManager  # noqa: F401

# LoRA loading (loaders/lora.py): the reader of a LoRA file, folder or Hub repo that every diffusers LoRA loader calls,
# and the converter of Wan LoRAs in Wan's own names (`diffusion_model.blocks.N.self_attn.q.lora_down.weight`, ...).
from diffusers.loaders.lora_base import _fetch_state_dict
from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers

# Context-parallel plan entries (models/transformer_multitalk.py's `_cp_plan`):
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput  # noqa: F401

# Wan's projections, reused by MultiTalk's attention processor (fused or separate q/k/v, the image key/value):
from diffusers.models.transformers.transformer_wan import (  # noqa: F401
    _get_added_kv_projections,
    _get_qkv_projections,
)


__all__ = [
    "BaseState",
    "ContextParallelInput",
    "ContextParallelOutput",
    "GroupOffloadingConfig",
    "GroupOffloadingHook",
    "GroupOffloadingType",
    "ModuleGroup",
    "StateManager",
    "TransformerBlockMetadata",
    "TransformerBlockRegistry",
    "attention_backend_constraints",
    "check_attention_backend_requirements",
    "context_parallel_input_hook_name",
    "context_parallel_process_group",
    "convert_original_wan_lora",
    "exclude_from_cpu_offload",
    "execution_device",
    "fetch_lora_state_dict",
    "hook_order",
    "reset_stateful_cache",
    "resolve_dtype",
    "set_prefetch_next_group",
]


def context_parallel_input_hook_name(module_name: str) -> str:
    """The HookRegistry name of the hook that splits `module_name`'s inputs under context parallelism."""
    return _CONTEXT_PARALLEL_INPUT_HOOK_TEMPLATE.format(module_name)


def hook_order(registry) -> list[str]:
    """The names of a HookRegistry's hooks in registration order (its private `_hook_order` list)."""
    return registry._hook_order


def context_parallel_process_group(context_parallel_config):
    """The process group over all context-parallel ranks (ring x ulysses, flattened): the private
    `ContextParallelConfig._flattened_mesh`, a DeviceMesh set up by `enable_parallelism`."""
    return context_parallel_config._flattened_mesh.get_group()


def set_prefetch_next_group(hook, group) -> None:
    """Makes `hook` (a GroupOffloadingHook) start `group`'s transfer when it onloads its own: the `next_group`
    attribute that diffusers' lazy prefetching sets after tracing the first forward."""
    hook.next_group = group


def attention_backend_constraints() -> dict:
    """backend -> the checks diffusers' attention dispatcher runs for it (`_AttentionBackendRegistry._constraints`)."""
    from diffusers.models import attention_dispatch

    return getattr(attention_dispatch._AttentionBackendRegistry, "_constraints", {})


def check_attention_backend_requirements(backend) -> None:
    """Raises when `backend`'s packages are missing (the dispatcher's `_check_attention_backend_requirements`)."""
    from diffusers.models import attention_dispatch

    attention_dispatch._check_attention_backend_requirements(backend)


def reset_stateful_cache(model) -> None:
    """Resets every cache hook's state on `model` (a `CacheMixin` model's private `_reset_stateful_cache`): each chunk
    of a long video starts its caches afresh, as the reference's TeaCache counter does."""
    model._reset_stateful_cache()


def exclude_from_cpu_offload(pipe, component: str) -> None:
    """Keeps `component` out of `enable_model_cpu_offload`'s hooks (the pipeline's private
    `_exclude_from_cpu_offload` list, which diffusers reads when it installs them)."""
    pipe._exclude_from_cpu_offload = [*pipe._exclude_from_cpu_offload, component]


def fetch_lora_state_dict(pretrained_model_name_or_path_or_dict, **kwargs) -> tuple[dict, dict | None]:
    """A LoRA's state dict and diffusers' adapter metadata (None when there is none), read as diffusers' Wan loader
    reads it: `_fetch_state_dict` with `weight_name`, `subfolder`, `cache_dir`, ... from `kwargs` (others are
    ignored). Without `use_safetensors`, a pickled file may load when no safetensors file is found, as in diffusers."""
    use_safetensors = kwargs.get("use_safetensors")
    return _fetch_state_dict(
        pretrained_model_name_or_path_or_dict=pretrained_model_name_or_path_or_dict,
        weight_name=kwargs.get("weight_name"),
        use_safetensors=True if use_safetensors is None else use_safetensors,
        local_files_only=kwargs.get("local_files_only"),
        cache_dir=kwargs.get("cache_dir"),
        force_download=kwargs.get("force_download", False),
        proxies=kwargs.get("proxies"),
        token=kwargs.get("token"),
        revision=kwargs.get("revision"),
        subfolder=kwargs.get("subfolder"),
        user_agent={"file_type": "attn_procs_weights", "framework": "pytorch"},
        allow_pickle=use_safetensors is None,
    )


def convert_original_wan_lora(state_dict: dict) -> dict:
    """diffusers' `_convert_non_diffusers_wan_lora_to_diffusers`: Wan-named LoRA keys (`diffusion_model.` prefix,
    lora_down/lora_up, alpha, diff_b) -> `transformer.`-prefixed peft keys. It needs at least one `blocks.N` key and
    raises a ValueError on keys it leaves over, unless they are all `diff` keys, which it drops."""
    return _convert_non_diffusers_wan_lora_to_diffusers(state_dict)


def resolve_dtype(dtype, torch_dtype):
    """`dtype`, or the deprecated `torch_dtype` with diffusers' deprecation warning (its private `_resolve_dtype`,
    which `from_pretrained` uses, so that both loading routes say the same)."""
    from diffusers.utils.deprecation_utils import _resolve_dtype

    return _resolve_dtype(dtype, torch_dtype)


def execution_device(pipe):
    """The device a pipeline runs its models on (`DiffusionPipeline._execution_device`, which follows offload
    hooks): for the front ends, which place their generators and options on it."""
    return pipe._execution_device
