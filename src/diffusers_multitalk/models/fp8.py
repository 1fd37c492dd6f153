"""FP8 (and int8) execution of the MultiTalk DiT's block linears through torchao, and 8-bit self-attention choices.

The block linears (self-attention q/k/v/o, text/image cross-attention q/k/v/o and the image k/v, the FFN) are
quantised in place with torchao's `quantize_`: weights to float8 e4m3 with one scale per output row, activations to
float8 e4m3 per token at run time (`Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`), so the matrix
products run through `torch._scaled_mm` on the tensor cores' FP8 path (Hopper, Ada, MI300). Everything else stays as
diffusers keeps it: the audio adapter (`audio_proj`, every block's `audio_attn`), the norms, the modulation tables,
the time/text/image embedders, the patch embedding and the output head.

By default (`FP8_FLOAT_PARTS`) two more parts of the text/image cross-attention (`attn2`) keep float where FP8's
error would be common to every video token: its k/v projections of the 769 context tokens stay in bf16 (they cost
almost nothing), and its output projection, whose input is nearly the same for every video token (it averages the
context's values), applies its float weight to that input's token mean and its FP8 weight to the rest
(`TokenMeanFloatLinear`). On the 14B DiT (random weights, H200) that brings the FP8 forward's deviation from bf16
within MultiTalk's int8 weights' for ~2% of its speed (docs/performance.md); `keep_float=()` and `float_token_mean=()`
quantise every block linear.

    from diffusers_multitalk.models.fp8 import enable_fp8, set_self_attention_kernel
    enable_fp8(pipe.transformer)                               # "fp8" (row-wise) | "fp8_tensor" | "int8_dynamic"
    set_self_attention_kernel(pipe.transformer, "flash3_fp8")   # FlashAttention-3's FP8 video self-attention
    pipe.transformer.compile_repeated_blocks(fullgraph=False)   # compile after quantising

The same selection through diffusers' quantization config, for `from_pretrained` of a converted repo:

    transformer = MultiTalkTransformer3DModel.from_pretrained(repo, subfolder="transformer",
        quantization_config=torchao_quantization_config("fp8"), torch_dtype=torch.bfloat16)
"""

from __future__ import annotations

import torch
import torch.nn as nn


# Modules kept in their float dtype (diffusers' `_keep_in_fp32_modules`, the norms, are never linears anyway).
KEEP_FLOAT_MODULES = ("audio_proj", "audio_attn", "condition_embedder", "patch_embedding", "proj_out")

QUANT_MODES = ("fp8", "fp8_tensor", "int8_dynamic")

# What `enable_fp8` keeps in float inside each block unless told otherwise, by mode: `keep_float` (linears left in
# float) and `float_token_mean` (linears whose input's token mean goes through their float weight). int8's 7 bits
# need neither (measured: docs/performance.md).
FP8_FLOAT_PARTS = {
    "keep_float": ("attn2.to_k", "attn2.to_v", "attn2.add_k_proj", "attn2.add_v_proj"),
    "float_token_mean": ("attn2.to_out",),
}
NO_FLOAT_PARTS = {"keep_float": (), "float_token_mean": ()}

# The audio adapter's two projections of the video tokens (33,600 tokens x 5120^2 each at 480P, ~9% of a block's
# linear FLOPs), which `enable_fp8(..., audio_projections=True)` quantises too; its projection of the audio tokens
# (`to_audio_kv`, a few hundred tokens) and `audio_proj` stay in float either way.
AUDIO_VIDEO_PROJECTIONS = ("audio_attn.to_q", "audio_attn.to_out")
DEFAULT_FLOAT_PARTS = {"fp8": FP8_FLOAT_PARTS, "fp8_tensor": FP8_FLOAT_PARTS, "int8_dynamic": NO_FLOAT_PARTS}


class TokenMeanFloatLinear(nn.Linear):
    """A linear layer whose input is split into its mean over the tokens and the rest: the quantised weight
    (`weight`, after `quantize_`) multiplies the rest, a float copy of the weight (`float_weight`) the mean.

    Exact in real arithmetic for any mean, `W (x - m) + W m`; in FP8 it keeps the weight's rounding error off the
    part of the input all tokens share, which would otherwise add the same error to every token. The float copy is
    a non-persistent buffer (`state_dict` keeps the one weight)."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> TokenMeanFloatLinear:
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.in_features, module.out_features = linear.in_features, linear.out_features
        module.register_parameter("weight", linear.weight)
        module.register_parameter("bias", linear.bias)
        module.register_buffer("float_weight", linear.weight.detach().clone(), persistent=False)
        return module

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mean = hidden_states.mean(dim=-2, keepdim=True, dtype=torch.float32).to(hidden_states.dtype)
        return super().forward(hidden_states - mean) + nn.functional.linear(mean, self.float_weight)


def is_block_linear(module: nn.Module, fqn: str, audio_projections: bool = False) -> bool:
    """The filter of `enable_fp8`: a linear layer inside `blocks.N` that is not part of the audio adapter (with
    `audio_projections`, the adapter's projections of the video tokens, `AUDIO_VIDEO_PROJECTIONS`, count too)."""
    parts = fqn.split(".")
    if not (isinstance(module, nn.Linear) and parts[0] == "blocks"):
        return False
    if audio_projections and any(_names_a_module(key, fqn) for key in AUDIO_VIDEO_PROJECTIONS):
        return True
    return not any(k in parts for k in KEEP_FLOAT_MODULES)


def torchao_config(mode: str = "fp8", tune_kernels: bool = False):
    """The torchao config of a quantisation mode.

    - "fp8": float8 e4m3 weights (per output row) and activations (per token, dynamic); the recommended FP8 layout.
    - "fp8_tensor": the same with one scale per tensor (cheaper scaling, coarser).
    - "int8_dynamic": int8 weights (per row) and int8 activations (per token, dynamic) through `torch._int_mm`.

    `tune_kernels`: torchao's `set_inductor_config` (its default is True), which switches on Inductor's
    coordinate-descent tuning (in all directions) of every Triton kernel, for the whole process and everything
    compiled after it. Off here, so quantising leaves global state alone. On the H200 the FP8 DiT's compiling
    forward took 150-275 s with it on and 7-22 s with it off, for forwards as fast (docs/performance.md).
    """
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Int8DynamicActivationInt8WeightConfig,
            PerRow,
            PerTensor,
        )
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('FP8 execution needs torchao: pip install "diffusers-multitalk[fp8]"') from e
    if mode == "fp8":
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=tune_kernels)
    if mode == "fp8_tensor":
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor(), set_inductor_config=tune_kernels)
    if mode == "int8_dynamic":
        return Int8DynamicActivationInt8WeightConfig(set_inductor_config=tune_kernels)
    raise ValueError(f"Unknown quantisation mode {mode!r}; choose one of {QUANT_MODES}.")


def _selected_blocks(transformer, blocks) -> set[int]:
    num_blocks = len(transformer.blocks)
    chosen = set(range(num_blocks)) if blocks is None else {int(b) for b in blocks}
    if not chosen <= set(range(num_blocks)):
        raise ValueError(f"Block indices {sorted(chosen)} out of range for {num_blocks} blocks.")
    return chosen


def _names_a_module(key: str, fqn: str) -> bool:
    """Whether the dotted name `key` ("attn2", "attn2.to_out") is a whole run of `fqn`'s parts."""
    return f".{key}." in f".{fqn}."


def enable_fp8(
    transformer: nn.Module,
    mode: str = "fp8",
    blocks=None,
    tune_kernels: bool = False,
    keep_float=None,
    float_token_mean=None,
    audio_projections: bool = False,
) -> list[str]:
    """Quantises the block linears of `transformer` in place (see the module docstring); returns their names.

    Args:
        transformer: a `MultiTalkTransformer3DModel` (bf16 weights; FP8 needs a GPU of compute capability >= 8.9).
        mode: one of `QUANT_MODES` (see `torchao_config`).
        blocks: indices of the blocks to quantise (default: all).
        tune_kernels: torchao's process-wide Inductor tuning (see `torchao_config`): minutes more compilation.
        keep_float: more modules whose linears stay in float, by (dotted) name inside a block, e.g. `("attn2",)`
            (the text/image cross-attention) or `("attn2.to_out",)`; each must name a block linear. Default: the
            mode's `DEFAULT_FLOAT_PARTS` (for FP8, the cross-attention's context k/v projections).
        float_token_mean: block linears, by the same names, quantised as `TokenMeanFloatLinear` (their input's
            token mean through a float copy of the weight). Default: the mode's (for FP8, `attn2.to_out`).
        audio_projections: quantise the audio adapter's q and output projections of the video tokens as well
            (`AUDIO_VIDEO_PROJECTIONS`; off by default: measured in docs/performance.md).
    """
    from torchao.quantization import quantize_

    defaults = DEFAULT_FLOAT_PARTS.get(mode, NO_FLOAT_PARTS)  # an unknown mode is refused by torchao_config
    keep_float = defaults["keep_float"] if keep_float is None else tuple(keep_float)
    float_token_mean = defaults["float_token_mean"] if float_token_mean is None else tuple(float_token_mean)
    linears = [fqn for fqn, module in transformer.named_modules() if is_block_linear(module, fqn, audio_projections)]
    for option, keys in (("keep_float", keep_float), ("float_token_mean", float_token_mean)):
        unknown = [key for key in keys if not any(_names_a_module(key, fqn) for fqn in linears)]
        if unknown:
            raise ValueError(
                f"{option} {unknown} names no block linear; give module names inside a block such as 'attn1', "
                "'attn2', 'ffn', 'attn2.to_out'"
            )
    config = torchao_config(mode, tune_kernels)
    chosen = _selected_blocks(transformer, blocks)
    for fqn in linears:
        if int(fqn.split(".")[1]) in chosen and any(_names_a_module(key, fqn) for key in float_token_mean):
            if not any(_names_a_module(key, fqn) for key in keep_float):
                parent, _, child = fqn.rpartition(".")
                transformer.get_submodule(parent).register_module(
                    child, TokenMeanFloatLinear.from_linear(transformer.get_submodule(fqn))
                )
    names = []

    def filter_fn(module, fqn):
        if (
            is_block_linear(module, fqn, audio_projections)
            and int(fqn.split(".")[1]) in chosen
            and not any(_names_a_module(key, fqn) for key in keep_float)
        ):
            names.append(fqn)
            return True
        return False

    quantize_(transformer, config, filter_fn=filter_fn)
    transformer._multitalk_quant_mode = mode
    return names


def runs_fp8_products(device) -> bool:
    """Whether `device` has FP8 tensor cores (`torch._scaled_mm` in e4m3): CUDA compute capability >= 8.9."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_runs_on(device) -> bool:
    """Whether `enable_fp8(..., "fp8")` runs on `device`: FP8 tensor cores and torchao installed."""
    import importlib.util

    return runs_fp8_products(device) and importlib.util.find_spec("torchao") is not None


def is_torchao_quantized(transformer: nn.Module) -> bool:
    """Whether `enable_fp8` (or a torchao `quantization_config`) left torchao tensors in `transformer`'s linears
    (optimum-quanto's, MultiTalk's int8 files, are not)."""
    return any(
        isinstance(m, nn.Linear) and type(m.weight).__module__.startswith("torchao") for m in transformer.modules()
    )


def enable_kernel_tuning() -> None:
    """torchao's recommended Inductor settings (coordinate-descent tuning of every Triton kernel, in all
    directions), for the whole process: what `tune_kernels=True` sets. Call it before compiling."""
    from torchao.quantization.utils import recommended_inductor_config_setter

    recommended_inductor_config_setter()


def torchao_quantization_config(mode: str = "fp8", tune_kernels: bool = False, keep_float=None):
    """diffusers' `TorchAoConfig` doing what `enable_fp8` does, for `from_pretrained(..., quantization_config=)`
    (or inside a `PipelineQuantizationConfig(quant_mapping={"transformer": ...})`). Quantising while loading leaves
    no float weight for `TokenMeanFloatLinear`, so by default the mode's `float_token_mean` linears stay in float
    too (FP8: the whole cross-attention but its q projection; `enable_fp8` on a loaded model is ~2% faster)."""
    from diffusers import TorchAoConfig

    if keep_float is None:
        defaults = DEFAULT_FLOAT_PARTS.get(mode, NO_FLOAT_PARTS)
        keep_float = (*defaults["keep_float"], *defaults["float_token_mean"])
    return TorchAoConfig(torchao_config(mode, tune_kernels), modules_to_not_convert=[*KEEP_FLOAT_MODULES, *keep_float])


def set_self_attention_kernel(transformer: nn.Module, kernel: str | None, blocks=None) -> None:
    """Chooses the kernel of the video self-attention (`attn1`) of the given blocks (default: all).

    `kernel`: a name of `attention_processor.SELF_ATTENTION_KERNELS` ("sage_triton": SageAttention 1's Triton kernel,
    int8 Q·K with per-block scales and fp16 P·V; "flash3_fp8": FlashAttention-3's FP8 forward, Q, K, V in e4m3 with
    per-head scales) or None for diffusers' dispatcher (the transformer's attention backend). The person map and the
    cross-attentions keep the dispatcher.
    """
    from .attention_processor import SELF_ATTENTION_KERNELS

    if kernel is not None and kernel not in SELF_ATTENTION_KERNELS:
        raise ValueError(f"Unknown self-attention kernel {kernel!r}; choose one of {sorted(SELF_ATTENTION_KERNELS)}.")
    chosen = _selected_blocks(transformer, blocks)
    for index, block in enumerate(transformer.blocks):
        if index in chosen:
            block.attn1.processor.self_attention_kernel = kernel


# The kernel "auto" picks where it runs: FlashAttention-3's FP8 forward, the one 8-bit self-attention measured to
# deviate less than MultiTalk's int8 weights on the H200 (docs/performance.md).
AUTO_SELF_ATTENTION_KERNEL = "flash3_fp8"
FA3_FP8_HINT = "build FlashAttention-3 with FP8 kept: FA3_FP8=1 bash benchmarks/build_flash_attention_3.sh SRC.tgz DEST"


def self_attention_kernel_problem(kernel: str, device, head_dim: int = 128) -> str | None:
    """Why `kernel` cannot run on `device` (a sentence that says what to do), or None when it can. For "flash3_fp8"
    that is a Hopper GPU and a FlashAttention-3 build with its FP8 forward at `head_dim` (the 14B DiT's is 128),
    probed with one small call: a build made without FP8, or without that head size, imports fine and fails only
    when called."""
    from .attention_processor import FLASH3_FP8_HEAD_DIMS, SELF_ATTENTION_KERNELS, flash3_fp8_attention

    device = torch.device(device)
    if kernel not in SELF_ATTENTION_KERNELS:
        return f"unknown kernel; choose one of {', '.join(sorted(SELF_ATTENTION_KERNELS))}"
    if device.type != "cuda":
        return f"it runs on CUDA GPUs, not {device}"
    if kernel == "sage_triton":
        try:
            import sageattention  # noqa: F401
        except ImportError:
            return "SageAttention is not installed: pip install sageattention"
        return None
    if head_dim not in FLASH3_FP8_HEAD_DIMS:  # never probed: FA3 at a head size its build lacks crashes
        return f"it runs at head size {', '.join(map(str, FLASH3_FP8_HEAD_DIMS))} (the Wan DiTs'), not {head_dim}"
    if torch.cuda.get_device_capability(device)[0] != 9:
        return (
            f"FlashAttention-3 runs on Hopper GPUs (compute capability 9.x), not {torch.cuda.get_device_name(device)}"
        )
    try:
        import flash_attn_interface  # noqa: F401
    except ImportError:
        return f"FlashAttention-3 (flash_attn_interface) is not installed; {FA3_FP8_HINT}"
    try:
        probe = torch.randn(1, 128, 1, head_dim, device=device, dtype=torch.bfloat16)
        flash3_fp8_attention(probe, probe, probe)
    except Exception as err:  # noqa: BLE001 - any failure of the probe means the kernel is unusable here
        return (
            f"this FlashAttention-3 build has no FP8 forward for head size {head_dim} "
            f"({type(err).__name__}: {str(err)[:120]}); {FA3_FP8_HINT}"
        )
    return None


def resolve_self_attention_kernel(
    kernel: str | None, transformer: nn.Module, device=None
) -> tuple[str | None, str | None]:
    """`(kernel, why_not)` for `transformer` run on `device` (default: where it is): "auto" becomes
    `AUTO_SELF_ATTENTION_KERNEL` where that runs and None (diffusers' dispatcher) where not, with the reason; a named
    kernel is returned as it is."""
    if kernel != "auto":
        return kernel, None
    head_dim = transformer.config.attention_head_dim
    device = transformer.device if device is None else device
    problem = self_attention_kernel_problem(AUTO_SELF_ATTENTION_KERNEL, device, head_dim)
    return (AUTO_SELF_ATTENTION_KERNEL, None) if problem is None else (None, problem)


def quantized_linear_count(transformer: nn.Module) -> dict[str, int]:
    """How many linears hold torchao tensor-subclass weights, by weight type (for checks and reports)."""
    counts: dict[str, int] = {}
    for module in transformer.modules():
        if isinstance(module, nn.Linear) and type(module.weight) not in (torch.Tensor, nn.Parameter):
            name = type(module.weight).__name__
            counts[name] = counts.get(name, 0) + 1
    return counts
