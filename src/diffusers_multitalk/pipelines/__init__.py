from .pipeline_wan_multitalk import DEFAULT_NEGATIVE_PROMPT, WanMultiTalkPipeline, WanMultiTalkPipelineOutput
from .pipeline_wan_infinitetalk import WanInfiniteTalkPipeline
from .video_io import VideoWriter, export_to_video_with_audio
from .low_vram import disable_low_vram, enable_low_vram
from .context_parallel import enable_context_parallelism
from .model_index import register_with_diffusers as _register_with_diffusers

# `DiffusionPipeline.from_pretrained` resolves saved folders' names in diffusers' namespace: register ours there as
# soon as a pipeline can be touched (see pipelines/model_index.py).
_register_with_diffusers((WanMultiTalkPipeline, WanInfiniteTalkPipeline))
