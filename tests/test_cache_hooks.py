"""TeaCache and diffusers' own cache hooks on the MultiTalk transformer and pipeline."""

import numpy as np
import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig

from diffusers_multitalk import make_tiny_pipeline
from diffusers_multitalk.hooks import TEACACHE_COEFFICIENTS


SR = 16000


def _transformer_inputs(model):
    torch.manual_seed(0)
    cfg = model.config
    return dict(
        hidden_states=torch.randn(1, 36, 3, 8, 12),
        encoder_hidden_states=torch.randn(1, 512, cfg.text_dim),
        encoder_hidden_states_image=torch.randn(1, 257, cfg.image_dim),
        audio_embeds=torch.randn(1, 1, 9, 5, cfg.audio_layers, cfg.audio_channels),
    )


@pytest.fixture
def model():
    pipe = make_tiny_pipeline(seed=0)
    return pipe.transformer


def _call(model, inputs, step, t, steps=8, branch="cond"):
    with torch.no_grad(), model.cache_context(branch, step_index=step, num_inference_steps=steps):
        return model(timestep=torch.tensor([t]), return_dict=False, **inputs)[0]


def test_teacache_reuses_the_residual_after_retention_steps(model):
    inputs = _transformer_inputs(model)
    seen = []
    handle = model.norm_out.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    block_calls = []
    model.blocks[1].ffn.register_forward_pre_hook(lambda mod, args: block_calls.append(1))
    model.enable_teacache(threshold=1e12)
    timesteps = [999.0, 990.0, 970.0, 940.0, 900.0, 850.0, 790.0]
    for step, t in enumerate(timesteps):
        _call(model, inputs, step, t)
    handle.remove()
    assert len(block_calls) == 5, "the blocks must run on the 5 retention steps only"
    # A skipped step feeds the head the last computed step's block output: the same input + the same residual.
    # (x4 + (out4 - x4) equals out4 up to rounding)
    assert torch.allclose(seen[5], seen[4], atol=1e-5) and torch.allclose(seen[6], seen[4], atol=1e-5)
    assert not torch.equal(seen[3], seen[4])
    model.disable_teacache()
    block_calls.clear()
    _call(model, inputs, 0, 999.0)
    assert len(block_calls) == 1


def test_teacache_decisions_follow_the_accumulated_rescaled_change(model):
    inputs = _transformer_inputs(model)
    # Close timesteps keep the tiny random model's rescaled changes around the threshold.
    threshold, steps = 0.5, 12
    model.enable_teacache(threshold=threshold, resolution="multitalk-480")
    timesteps = np.linspace(999, 990, steps)
    for step, t in enumerate(timesteps):
        _call(model, inputs, step, float(t), steps=steps)
    # The hand version of the reference's rule: relative L1 change of the timestep projection, rescaled by the
    # polynomial and accumulated; compute (and reset) once it reaches the threshold; always compute 5 first steps.
    poly = np.poly1d(TEACACHE_COEFFICIENTS["multitalk-480"])
    expected, accumulated = [], 0.0
    for step in range(steps):
        compute = step < 5
        if not compute:
            current, previous = _temb_at(model, timesteps[step]), _temb_at(model, timesteps[step - 1])
            accumulated += poly(((current - previous).abs().mean() / previous.abs().mean()).item())
            compute = accumulated >= threshold
        if compute:
            accumulated = 0.0
            expected.append(step)
    state = model._teacache_state._state_cache["cond"]
    assert state.computed_steps == expected
    assert 5 <= len(expected) < steps, f"the threshold should skip some steps: {expected}"


def _temb_at(model, timestep):
    """The timestep projection the blocks receive (the reference's e0)."""
    cfg = model.config
    with torch.no_grad():
        _, projection, _, _ = model.condition_embedder(
            torch.tensor([float(timestep)]), torch.zeros(1, 1, cfg.text_dim), torch.zeros(1, 257, cfg.image_dim)
        )
    return projection.unflatten(1, (6, -1))


def _generate(pipe, steps=7, **kwargs):
    t = np.arange(int(0.5 * SR)) / SR
    wave = (0.3 * np.sin(2 * np.pi * 200 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    image = (np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8)
    return pipe(
        image=image,
        audio=[(wave, SR)],
        prompt="a talk",
        height=64,
        width=96,
        num_frames=9,
        mode="clip",
        num_inference_steps=steps,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    ).frames[0]


def test_pipeline_teacache_per_branch_and_chunk():
    pipe = make_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    baseline = _generate(pipe)
    calls = []
    pipe.transformer.blocks[1].ffn.register_forward_pre_hook(lambda mod, args: calls.append(1))
    pipe.transformer.enable_teacache(threshold=1e12)
    cached = _generate(pipe)
    assert len(calls) == 5 * 3, "three branches, each computing its 5 retention steps"
    assert not torch.equal(cached, baseline)
    calls.clear()
    two_pass = _generate(pipe, guidance_scale=1.0)
    assert len(calls) == 5 * 2, "two branches in two-pass guidance, each with its own state"
    pipe.transformer.disable_teacache()
    assert torch.equal(_generate(pipe), baseline)
    assert torch.isfinite(two_pass).all()


def test_first_block_cache_from_diffusers_runs():
    pipe = make_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    baseline = _generate(pipe, steps=4)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=1e9))
    cached = _generate(pipe, steps=4)
    pipe.transformer.disable_cache()
    assert cached.shape == baseline.shape and torch.isfinite(cached).all()
    assert not torch.equal(cached, baseline)
    assert torch.equal(_generate(pipe, steps=4), baseline)
