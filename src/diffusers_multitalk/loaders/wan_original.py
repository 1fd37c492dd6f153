"""The components both pipelines' `from_original` take from the official folders besides the DiT and umT5: the
umT5 tokenizer, CLIP and the VAE of the Wan2.1-I2V folder, and wav2vec2 with its feature extractor."""

from __future__ import annotations

from pathlib import Path

import torch


__all__ = ["load_wan_original_components"]


def load_wan_original_components(wan_dir, wav2vec_dir, torch_dtype: torch.dtype | None = None) -> dict:
    """`tokenizer`, `image_encoder` (in `torch_dtype`), `vae`, `audio_encoder` and `audio_feature_extractor`; the VAE
    and wav2vec2 stay float32, as the references run them."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from .wan_clip import load_clip_vision_from_original
    from .wan_tokenizers import load_umt5_tokenizer
    from .wan_vae import load_vae_from_original

    wan_dir = Path(wan_dir)
    return dict(
        tokenizer=load_umt5_tokenizer(wan_dir),
        image_encoder=load_clip_vision_from_original(wan_dir, torch_dtype=torch_dtype),
        vae=load_vae_from_original(wan_dir, torch_dtype=torch.float32),
        audio_encoder=Wav2Vec2Model.from_pretrained(wav2vec_dir).eval(),
        audio_feature_extractor=Wav2Vec2FeatureExtractor.from_pretrained(wav2vec_dir),
    )
