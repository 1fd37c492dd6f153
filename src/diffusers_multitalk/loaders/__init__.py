"""Loaders of the official checkpoints, one converter per component. Names load on first use, so that the front ends
can read `loaders.original_folders` without importing torch."""

import importlib


_LAZY_NAMES = {
    "convert_multitalk_transformer_to_diffusers": ".transformer_original",
    "convert_multitalk_transformer_to_original": ".transformer_original",
    "load_multitalk_transformer_from_original": ".transformer_original",
    "convert_clip_vision_to_original": ".wan_clip",
    "load_clip_vision_from_original": ".wan_clip",
    "load_umt5_tokenizer": ".wan_tokenizers",
    "convert_umt5_encoder_to_original": ".wan_umt5",
    "load_umt5_encoder_from_original": ".wan_umt5",
    "convert_vae_to_original": ".wan_vae",
    "load_vae_from_original": ".wan_vae",
}

__all__ = sorted(_LAZY_NAMES)


def __getattr__(name: str):
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
