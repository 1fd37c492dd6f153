from .context_parallel import enable_context_parallelism
from .low_vram import disable_low_vram, enable_low_vram
from .model_index import register_with_diffusers as _register_with_diffusers
from .pipeline_output import WanMultiTalkPipelineOutput
from .pipeline_wan_audio_base import DEFAULT_NEGATIVE_PROMPT, WanAudioPipelineBase
from .pipeline_wan_flashtalk import WanFlashTalkPipeline
from .pipeline_wan_infinitetalk import WanInfiniteTalkPipeline
from .pipeline_wan_multitalk import WanMultiTalkPipeline
from .video_io import VideoWriter, export_to_video_with_audio


# `DiffusionPipeline.from_pretrained` resolves saved folders' names in diffusers' namespace: register ours there as
# soon as a pipeline can be touched (see pipelines/model_index.py).
_register_with_diffusers((WanMultiTalkPipeline, WanInfiniteTalkPipeline, WanFlashTalkPipeline))
