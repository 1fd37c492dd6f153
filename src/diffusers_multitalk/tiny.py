"""A tiny random MultiTalk pipeline: the real classes at toy sizes, built locally (no downloads).

It runs the whole generation path on a CPU in seconds; its output is noise-like, since nothing is trained.
"""

from __future__ import annotations

import torch


TINY_TEXT_DIM = 32
TINY_IMAGE_DIM = 32
TINY_AUDIO_LAYERS = 2
TINY_AUDIO_CHANNELS = 32
# The widths the references hard-code (umT5-XXL's 4096-wide states, Wan's CLIP ViT-H 1280 wide, the audio
# projection's wav2vec2-base input of 12 layers x 768 channels): `make_tiny_components(seed, reference_widths=True)`
# keeps them, so that the reference's own code runs on the tiny weights (its `WanModel.from_pretrained` ignores a
# config's `text_dim`, and it builds `MLPProj(1280, dim)` and `AudioProjModel(blocks=12, channels=768)` whatever the
# config says).
REFERENCE_TEXT_DIM = 4096
REFERENCE_IMAGE_DIM = 1280
REFERENCE_IMAGE_HEADS = 16
REFERENCE_AUDIO_LAYERS = 12
REFERENCE_AUDIO_CHANNELS = 768


def make_tiny_tokenizer():
    """A character-level umT5-style tokenizer (pad 0, eos 1, unk 2) built with `tokenizers`, no files needed."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    characters = list("abcdefghijklmnopqrstuvwxyz0123456789 .,!?'-")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    vocab.update({c: i + 3 for i, c in enumerate(characters)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def make_tiny_components(seed: int = 0, reference_widths: bool = False) -> dict:
    """The components of `WanMultiTalkPipeline` at toy sizes, randomly initialised with `seed`. With
    `reference_widths`, umT5's states are 4096 wide, the CLIP tower is 1280 wide (16 heads, 2 layers) and wav2vec2 has
    12 layers of 768 channels (everything else as small as ever): the widths the reference code hard-codes (FlashTalk's parity harness)."""
    from diffusers import AutoencoderKLWan
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
    )

    from .models.transformer_multitalk import MultiTalkTransformer3DModel
    from .pipelines.sampling import make_multitalk_scheduler

    text_dim, image_dim, image_heads, image_layers = TINY_TEXT_DIM, TINY_IMAGE_DIM, 2, 3
    audio_layers, audio_channels, pos_groups = TINY_AUDIO_LAYERS, TINY_AUDIO_CHANNELS, 2
    if reference_widths:
        text_dim, image_dim, image_heads, image_layers = (
            REFERENCE_TEXT_DIM,
            REFERENCE_IMAGE_DIM,
            REFERENCE_IMAGE_HEADS,
            2,
        )
        audio_layers, audio_channels, pos_groups = REFERENCE_AUDIO_LAYERS, REFERENCE_AUDIO_CHANNELS, 16
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=64,
            d_model=text_dim,
            d_kv=8,
            d_ff=48,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=32,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
        )
    ).eval()
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=image_dim,
            intermediate_size=64,
            num_hidden_layers=image_layers,
            num_attention_heads=image_heads,
            image_size=224,
            patch_size=14,
            hidden_act="gelu",
        )
    ).eval()
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
    ).eval()
    audio_encoder = Wav2Vec2Model(
        Wav2Vec2Config(
            hidden_size=audio_channels,
            num_hidden_layers=audio_layers,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=(32,) * 7,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=pos_groups,
            feat_extract_norm="group",
            do_stable_layer_norm=False,
        )
    ).eval()
    transformer = MultiTalkTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=24,
        in_channels=36,
        out_channels=16,
        text_dim=text_dim,
        ffn_dim=64,
        num_layers=2,
        image_dim=image_dim,
        added_kv_proj_dim=48,
        audio_layers=audio_layers,
        audio_channels=audio_channels,
        intermediate_dim=16,
        output_dim=16,
        context_tokens=4,
    ).eval()
    return dict(
        tokenizer=make_tiny_tokenizer(),
        text_encoder=text_encoder,
        image_encoder=image_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=make_multitalk_scheduler(),
        audio_encoder=audio_encoder,
        audio_feature_extractor=Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
        ),
    )


def make_tiny_pipeline(seed: int = 0, pipeline_class=None):
    """A `WanMultiTalkPipeline` (or `pipeline_class`: any model's, `variants.get_variant(task).pipeline_class`,
    which takes the same components) with tiny random components (CPU-friendly, no downloads, noise-like output)."""
    if pipeline_class is None:
        from .pipelines.pipeline_wan_multitalk import WanMultiTalkPipeline as pipeline_class

    components = make_tiny_components(seed)
    components["scheduler"] = pipeline_class.default_scheduler()  # the model's own sampler
    return pipeline_class(**components)
