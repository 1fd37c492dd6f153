"""LoRAs in Wan's original naming load into the MultiTalk transformer through diffusers' own Wan converter."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffusers_multitalk import make_tiny_pipeline


SR = 16000


def _wan_style_lora(transformer, rank=2, seed=0):
    """A LoRA as Wan trainers save it: `diffusion_model.blocks.N.self_attn.q.lora_down.weight`, ..."""
    g = torch.Generator().manual_seed(seed)
    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    ffn = transformer.config.ffn_dim
    lora = {}
    for i in range(transformer.config.num_layers):
        targets = {
            f"blocks.{i}.self_attn.q": (dim, dim),
            f"blocks.{i}.self_attn.o": (dim, dim),
            f"blocks.{i}.cross_attn.k": (dim, dim),
            f"blocks.{i}.ffn.0": (dim, ffn),
        }
        for name, (fan_in, fan_out) in targets.items():
            lora[f"diffusion_model.{name}.lora_down.weight"] = torch.randn(rank, fan_in, generator=g) * 0.5
            lora[f"diffusion_model.{name}.lora_up.weight"] = torch.randn(fan_out, rank, generator=g) * 0.5
    return lora


def _latents(pipe, **kwargs):
    t = np.arange(int(0.5 * SR)) / SR
    wave = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    image = (np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8)
    return pipe(
        image=image,
        audio=[(wave, SR)],
        prompt="a person talks",
        height=64,
        width=96,
        num_frames=9,
        mode="clip",
        num_inference_steps=1,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    ).frames[0]


@pytest.fixture(scope="module")
def pipe():
    pipe = make_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_original_wan_lora_loads_scales_and_fuses(pipe, tmp_path):
    base = _latents(pipe)
    path = tmp_path / "wan_lora.safetensors"
    save_file(_wan_style_lora(pipe.transformer), path)

    pipe.load_lora_weights(str(path), adapter_name="speed")
    lora_layer = pipe.transformer.blocks[0].attn1.to_q
    assert "speed" in lora_layer.lora_A, "the LoRA did not land on attn1.to_q"
    with_lora = _latents(pipe)
    assert not torch.allclose(with_lora, base, atol=1e-4)

    # attention_kwargs={"scale": s} scales the LoRA for one call, as diffusers' Wan pipelines take it
    assert torch.allclose(_latents(pipe, attention_kwargs={"scale": 0.0}), base, atol=1e-5)
    assert torch.allclose(_latents(pipe, attention_kwargs={"scale": 1.0}), with_lora, atol=1e-6)

    pipe.set_adapters(["speed"], [0.0])
    assert torch.allclose(_latents(pipe), base, atol=1e-5)

    pipe.set_adapters(["speed"], [1.0])
    pipe.fuse_lora(components=["transformer"], lora_scale=1.0)
    pipe.unload_lora_weights()
    fused = _latents(pipe)
    assert torch.allclose(fused, with_lora, atol=1e-4), (fused - with_lora).abs().max()
