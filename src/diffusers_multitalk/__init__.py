"""diffusers-multitalk: MultiTalk audio-driven (multi-person) talking video generation for diffusers.

The top-level names load on first use (a module `__getattr__`), so that `import diffusers_multitalk.cli` and the
other front ends start without importing torch or diffusers. Importing any pipeline registers the package's names
with diffusers (see `diffusers_multitalk.pipelines.model_index.register_with_diffusers`).
"""

import importlib


__version__ = "0.1.0.dev0"

# public name -> the submodule that defines it
_LAZY_NAMES = {
    "MultiTalkAudioEncoder": ".audio",
    "audio_windows": ".audio",
    "combine_speakers": ".audio",
    "encode_speech": ".audio",
    "parse_dialogue": ".audio",
    "prepare_audio": ".audio",
    "synthesize_dialogue": ".audio",
    "tts_from_json_block": ".audio",
    "MultiTalkTransformer3DModel": ".models",
    "DEFAULT_NEGATIVE_PROMPT": ".pipelines",
    "WanFlashTalkPipeline": ".pipelines",
    "WanInfiniteTalkPipeline": ".pipelines",
    "WanMultiTalkPipeline": ".pipelines",
    "WanMultiTalkPipelineOutput": ".pipelines",
    "disable_low_vram": ".pipelines",
    "enable_context_parallelism": ".pipelines",
    "enable_low_vram": ".pipelines",
    "export_to_video_with_audio": ".pipelines",
    "make_tiny_pipeline": ".tiny",
}

__all__ = sorted(_LAZY_NAMES)


def __getattr__(name: str):
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY_NAMES))
