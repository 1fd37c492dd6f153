from .transformer_original import (
    convert_multitalk_transformer_to_diffusers,
    convert_multitalk_transformer_to_original,
    load_multitalk_transformer_from_original,
)
from .wan_clip import convert_clip_vision_to_original, load_clip_vision_from_original
from .wan_tokenizers import load_umt5_tokenizer
from .wan_umt5 import convert_umt5_encoder_to_original, load_umt5_encoder_from_original
from .wan_vae import convert_vae_to_original, load_vae_from_original
