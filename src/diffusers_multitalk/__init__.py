"""diffusers-multitalk: MultiTalk audio-driven (multi-person) talking video generation for diffusers."""

__version__ = "0.1.0.dev0"

from .audio import (
    MultiTalkAudioEncoder,
    audio_windows,
    combine_speakers,
    encode_speech,
    parse_dialogue,
    prepare_audio,
    synthesize_dialogue,
    tts_from_json_block,
)
from .models import MultiTalkTransformer3DModel
from .pipelines import (
    DEFAULT_NEGATIVE_PROMPT,
    WanInfiniteTalkPipeline,
    WanMultiTalkPipeline,
    WanMultiTalkPipelineOutput,
    export_to_video,
    export_to_video_with_audio,
    disable_low_vram,
    enable_context_parallelism,
    enable_low_vram,
)
from .tiny import make_tiny_pipeline

# `DiffusionPipeline.from_pretrained` resolves saved folders' names in diffusers' namespace: register ours there
# (see diffusers_multitalk.integration).
from .integration import register_with_diffusers as _register_with_diffusers

_register_with_diffusers()

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "MultiTalkAudioEncoder",
    "MultiTalkTransformer3DModel",
    "WanInfiniteTalkPipeline",
    "WanMultiTalkPipeline",
    "WanMultiTalkPipelineOutput",
    "audio_windows",
    "combine_speakers",
    "disable_low_vram",
    "enable_context_parallelism",
    "enable_low_vram",
    "encode_speech",
    "export_to_video",
    "export_to_video_with_audio",
    "make_tiny_pipeline",
    "parse_dialogue",
    "prepare_audio",
    "synthesize_dialogue",
    "tts_from_json_block",
]
