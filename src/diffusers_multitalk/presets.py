"""Named generation presets: sampling settings (pipeline call arguments and the matching `multitalk generate` flags)
plus the execution set-up that goes with them (quantisation, attention kernel, VAE dtype, compilation).

The "fast" preset is MultiTalk's FusionX / lightx2v few-step setting: 8 steps, text guidance 1 (so two DiT passes
per step: conditional and audio-dropped), audio guidance 2, shift 2. Its execution set-up is the fastest one whose
deviation from bf16 was measured to stay within that of MultiTalk's own int8 weights (docs/performance.md): on the
H200 that is the DiT's block linears in FP8 with their default float parts (`models.fp8.enable_fp8`) where FP8 runs
("auto": a GPU of compute capability 8.9+ with torchao installed; bf16 otherwise), FlashAttention-3's FP8 forward for
the video self-attention where it runs ("auto": a Hopper GPU and an FA3 build with FP8; diffusers' dispatcher
otherwise), compiled, and the VAE in bf16. `quant=None` keeps the DiT in bf16.

    from diffusers_multitalk.presets import apply_preset
    call_kwargs = apply_preset(pipe, "fast")        # sets up pipe.transformer / pipe.vae, returns pipe(...) kwargs
    out = pipe(image=..., audio=[...], prompt=..., **call_kwargs)
"""

from __future__ import annotations

import copy

import torch
from diffusers.utils import logging


logger = logging.get_logger(__name__)

PRESETS = {
    "fast": {
        # pipeline call arguments
        "call": {
            "num_inference_steps": 8,
            "guidance_scale": 1.0,
            "audio_guidance_scale": 2.0,
            "shift": 2.0,
        },
        # execution set-up (see apply_setup)
        "setup": {
            # torchao mode of models.fp8.enable_fp8, "auto" (fp8 where models.fp8.fp8_runs_on) or None (bf16)
            "quant": "auto",
            # a name of attention_processor.SELF_ATTENTION_KERNELS, "auto" (models.fp8.resolve_self_attention_kernel)
            # or None (diffusers' dispatcher)
            "self_attention_kernel": "auto",
            "vae_dtype": "bfloat16",
            "compile": True,
            # torchao's Inductor tuning of a torchao-quantised DiT (models.fp8.enable_kernel_tuning): off, it was
            # measured no faster on the H200 (2.180 s vs 2.165 s per forward) for 150-275 s of compilation instead
            # of 7-22 s
            "tune_kernels": False,
        },
    },
}

# pipeline call argument -> `multitalk generate` flag (MultiTalk's own flag names)
CALL_TO_FLAG = {
    "num_inference_steps": "--sample_steps",
    "guidance_scale": "--sample_text_guide_scale",
    "audio_guidance_scale": "--sample_audio_guide_scale",
    "shift": "--sample_shift",
}

FAST_PRESET = PRESETS["fast"]


def preset_call_kwargs(name: str = "fast") -> dict:
    """The pipeline call arguments of a preset."""
    return dict(_preset(name)["call"])


def preset_setup(name: str = "fast") -> dict:
    """The execution set-up of a preset (a copy)."""
    return dict(_preset(name)["setup"])


def preset_cli_flags(name: str = "fast") -> list[str]:
    """The `multitalk generate` flags that give a preset's sampling settings, e.g.
    `["--sample_steps", "8", "--sample_text_guide_scale", "1.0", ...]`."""
    flags = []
    for key, value in _preset(name)["call"].items():
        flags += [CALL_TO_FLAG[key], str(value)]
    return flags


def _preset(name):
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return copy.deepcopy(PRESETS[name])


def apply_setup(
    pipe, quant=None, self_attention_kernel=None, vae_dtype=None, compile=False, tune_kernels=False
) -> dict:
    """Applies an execution set-up to a `WanMultiTalkPipeline` in place: torchao quantisation of the DiT's block
    linears (`models.fp8.enable_fp8`; "auto": "fp8" where `models.fp8.fp8_runs_on` the DiT's device, none
    elsewhere), a self-attention kernel ("auto": the FP8 FlashAttention-3 kernel where it runs on the DiT's device),
    the VAE's dtype, and `compile_repeated_blocks` (last, after quantising). A DiT that already holds torchao
    linears is not quantised again. Compilation is skipped off CUDA; `tune_kernels` switches on torchao's
    process-wide Inductor tuning before it when the DiT holds torchao-quantised linears, and does nothing otherwise.
    Returns what was chosen:
    `{"quant": mode or None, "self_attention_kernel": name or None, "why_not": reason or None, "tuned": bool}`."""
    from .models.fp8 import (
        enable_fp8,
        enable_kernel_tuning,
        fp8_runs_on,
        is_torchao_quantized,
        resolve_self_attention_kernel,
        set_self_attention_kernel,
    )

    if quant == "auto":
        quant = "fp8" if fp8_runs_on(pipe.transformer.device) else None
    if is_torchao_quantized(pipe.transformer):
        quant = getattr(pipe.transformer, "_multitalk_quant_mode", None)
    elif quant is not None:
        enable_fp8(pipe.transformer, quant)
    kernel, why_not = resolve_self_attention_kernel(self_attention_kernel, pipe.transformer)
    if why_not is not None:
        logger.info(f"self-attention through diffusers' dispatcher: {why_not}")
    if kernel is not None:
        set_self_attention_kernel(pipe.transformer, kernel)
    if vae_dtype is not None:
        pipe.vae.to(getattr(torch, vae_dtype) if isinstance(vae_dtype, str) else vae_dtype)
    tuned = False
    if compile and pipe.transformer.device.type == "cuda":
        if tune_kernels and is_torchao_quantized(pipe.transformer):
            enable_kernel_tuning()
            tuned = True
        pipe.transformer.compile_repeated_blocks(fullgraph=False)
    return {"quant": quant, "self_attention_kernel": kernel, "why_not": why_not, "tuned": tuned}


def apply_preset(pipe, name: str = "fast", setup: bool = True, **overrides) -> dict:
    """Sets up `pipe` for a preset (unless `setup=False`) and returns the call arguments; keyword `overrides`
    replace set-up entries (e.g. `quant="fp8"`, `compile=False`)."""
    if setup:
        options = preset_setup(name)
        unknown = set(overrides) - set(options)
        if unknown:
            raise ValueError(f"Unknown set-up options {sorted(unknown)}; known: {sorted(options)}.")
        options.update(overrides)
        apply_setup(pipe, **options)
    return preset_call_kwargs(name)
