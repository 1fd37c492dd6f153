"""Loading from diffusers' Wan2.1-I2V layout (Wan-AI/Wan2.1-I2V-14B-480P-Diffusers) + MeiGen-MultiTalk."""

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

from diffusers_multitalk import MultiTalkTransformer3DModel, WanMultiTalkPipeline
from diffusers_multitalk.loaders.transformer_original import convert_multitalk_transformer_to_original
from diffusers_multitalk.tiny import make_tiny_components


def _is_audio_key(key):
    return key.startswith("audio_proj.") or ".audio_norm." in key or ".audio_attn." in key


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The tiny components written as a diffusers Wan I2V repo plus MultiTalk's audio file in original names."""
    root = tmp_path_factory.mktemp("wan_diffusers")
    components = make_tiny_components(seed=0)
    transformer = components["transformer"]
    base_state = {k: v for k, v in transformer.state_dict().items() if not _is_audio_key(k)}
    audio_state = {k: v for k, v in transformer.state_dict().items() if _is_audio_key(k)}

    # The base weights must be exactly diffusers' own Wan transformer: load them there strictly.
    cfg = transformer.config
    wan = WanTransformer3DModel(
        patch_size=cfg.patch_size,
        num_attention_heads=cfg.num_attention_heads,
        attention_head_dim=cfg.attention_head_dim,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=cfg.cross_attn_norm,
        qk_norm=cfg.qk_norm,
        eps=cfg.eps,
        image_dim=cfg.image_dim,
        added_kv_proj_dim=cfg.added_kv_proj_dim,
    )
    wan.load_state_dict(base_state, strict=True)
    wan.save_pretrained(root / "transformer")
    for name in ("tokenizer", "text_encoder", "image_encoder", "vae"):
        components[name].save_pretrained(root / name)
    # as Wan-AI/Wan2.1-I2V-14B-480P-Diffusers has it: a CLIPImageProcessor folder
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}).save_pretrained(root / "image_processor")
    multitalk = root / "MeiGen-MultiTalk"
    multitalk.mkdir()
    save_file(
        {k: v.contiguous() for k, v in convert_multitalk_transformer_to_original(audio_state).items()},
        multitalk / "multitalk.safetensors",
    )
    wav2vec = root / "chinese-wav2vec2-base"
    components["audio_encoder"].save_pretrained(wav2vec)
    components["audio_feature_extractor"].save_pretrained(wav2vec)
    return dict(root=root, multitalk=multitalk, wav2vec=wav2vec, components=components)


def test_transformer_from_wan_diffusers(folders):
    with pytest.raises(ValueError, match="not a multiple of the audio encoder's 12 layers x 768"):
        MultiTalkTransformer3DModel.from_wan_diffusers(folders["root"] / "transformer", folders["multitalk"])
    model = MultiTalkTransformer3DModel.from_wan_diffusers(
        folders["root"] / "transformer", folders["multitalk"], audio_layers=2, audio_channels=32
    )
    expected = folders["components"]["transformer"].state_dict()
    got = model.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert model.config.context_tokens == 4 and model.config.output_dim == 16


def test_pipeline_from_wan_diffusers_generates(folders):
    pipe = WanMultiTalkPipeline.from_wan_diffusers(folders["root"], folders["multitalk"], folders["wav2vec"])
    assert pipe.image_processor is not None, "the repo's image_processor/ folder must be loaded"
    reference = WanMultiTalkPipeline(**folders["components"])
    pipe.set_progress_bar_config(disable=True)
    reference.set_progress_bar_config(disable=True)
    t = np.arange(8000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    image = (np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8)
    args = dict(
        image=image,
        audio=[(wave, 16000)],
        prompt="a talk",
        height=64,
        width=96,
        num_frames=9,
        mode="clip",
        num_inference_steps=1,
        output_type="latent",
    )
    a = pipe(**args, generator=torch.Generator().manual_seed(0)).frames[0]
    b = reference(**args, generator=torch.Generator().manual_seed(0)).frames[0]
    assert (a - b).abs().max() < 1e-5


def test_missing_subfolders_are_named(tmp_path, folders):
    with pytest.raises(FileNotFoundError, match="Wan2.1-I2V-14B-480P-Diffusers"):
        WanMultiTalkPipeline.from_wan_diffusers(tmp_path, folders["multitalk"], folders["wav2vec"])
    with pytest.raises(FileNotFoundError, match="MeiGen-MultiTalk"):
        MultiTalkTransformer3DModel.from_wan_diffusers(folders["root"] / "transformer", tmp_path / "none")


def test_encode_image_with_a_processor_loaded_from_a_folder(folders, tmp_path):
    """transformers 5 hands back `crop_size` as a SizeDict from from_pretrained (not a dict): encode_image must take
    it, and give the numbers of the processor-less route (both use OpenAI's CLIP statistics at 224 px)."""
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}).save_pretrained(tmp_path / "image_processor")
    loaded = CLIPImageProcessor.from_pretrained(tmp_path / "image_processor")
    with_processor = WanMultiTalkPipeline(**{**folders["components"], "image_processor": loaded})
    without = WanMultiTalkPipeline(**folders["components"])
    frames = torch.rand(1, 3, 1, 64, 96) * 2 - 1
    a = with_processor.encode_image(frames, "cpu")
    b = without.encode_image(frames, "cpu")
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)
