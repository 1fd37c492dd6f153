from .attention_processor import MultiTalkAttnProcessor, MultiTalkAudioAttention, MultiTalkAudioAttnProcessor
from .transformer_multitalk import (
    LRoPE,
    MultiTalkAudioProjection,
    MultiTalkTransformer3DModel,
    MultiTalkTransformerBlock,
)
