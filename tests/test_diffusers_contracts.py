"""The contracts diffusers' own pipeline and model test mixins check, written for our two pipelines on the tiny model.

diffusers' `PipelineTesterMixin` (tests/pipelines/test_pipelines_common.py) and its model mixins
(tests/models/testing_utils/) check these on every pipeline: save/load round trips, optional components, dict vs
tuple output, callbacks with every tensor input (and one that changes the latents), `output_type="latent"`, dtype,
`encode_prompt` in isolation, `from_pipe`, `num_videos_per_prompt` and generator lists, the call signature, the
model's attention processors and fused projections. These tests are ours; they follow the contracts, not the code.
"""

import inspect
import logging

import numpy as np
import pytest
import torch

from diffusers_multitalk import WanInfiniteTalkPipeline, WanMultiTalkPipeline, make_tiny_pipeline


SR = 16000


def _speech(seconds=0.5, freq=200.0):
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32), SR


def _image():
    return (np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8)


def _inputs(pipe, seed=0, **overrides):
    source = {"video": [_image()] * 3} if isinstance(pipe, WanInfiniteTalkPipeline) else {"image": _image()}
    inputs = dict(
        **source,
        audio=[_speech()],
        prompt="a person talks",
        height=64,
        width=96,
        num_frames=5,
        mode="clip",
        num_inference_steps=2,
        guidance_scale=1.0,
        audio_guidance_scale=2.0,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
    )
    inputs.update(overrides)
    return inputs


@pytest.fixture(scope="module", params=[WanMultiTalkPipeline, WanInfiniteTalkPipeline], ids=["multitalk", "infinite"])
def pipe(request):
    pipe = make_tiny_pipeline(seed=0, pipeline_class=request.param)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_signature_follows_diffusers(pipe):
    parameters = inspect.signature(pipe.__call__).parameters
    for name in (
        "prompt",
        "negative_prompt",
        "height",
        "width",
        "num_inference_steps",
        "guidance_scale",
        "num_videos_per_prompt",
        "generator",
        "latents",
        "prompt_embeds",
        "negative_prompt_embeds",
        "output_type",
        "return_dict",
        "callback_on_step_end",
        "callback_on_step_end_tensor_inputs",
        "attention_kwargs",
        "max_sequence_length",
    ):
        assert name in parameters, name
    doc = pipe.__call__.__doc__
    assert "Examples:" in doc and "Returns:" in doc and "`, *optional*, defaults to" in doc


def test_dict_and_tuple_outputs_agree(pipe):
    as_dict = pipe(**_inputs(pipe)).frames
    as_tuple = pipe(**_inputs(pipe), return_dict=False)
    assert isinstance(as_tuple, tuple)
    np.testing.assert_array_equal(as_dict, as_tuple[0])


def test_latent_output_is_one_tensor_that_decodes_to_the_frames(pipe):
    latents = pipe(**_inputs(pipe, output_type="latent")).frames
    assert isinstance(latents, torch.Tensor) and latents.shape == (1, 16, 2, 8, 12)
    frames = pipe(**_inputs(pipe, output_type="pt")).frames
    decoded = pipe.decode_latents(latents)
    if isinstance(pipe, WanMultiTalkPipeline):  # colour correction runs after decoding: compare without it
        frames = pipe(**_inputs(pipe, output_type="pt", color_correction_strength=0.0)).frames
    else:
        frames = pipe(**_inputs(pipe, output_type="pt", color_correction_strength=0.0)).frames
    torch.testing.assert_close(frames[0].permute(1, 0, 2, 3), (decoded[0] + 1) / 2, atol=1e-5, rtol=0)


def test_streaming_latents_join_the_chunks_without_their_overlap(pipe):
    overrides = dict(mode="streaming", num_frames=9, motion_frames=5, output_type="latent")
    latents = pipe(**_inputs(pipe, audio=[_speech(0.9)], **overrides)).frames  # 22 frames: 4 chunks of 9, stride 4
    # The first chunk's 3 latent frames, then 1 new latent frame per later chunk, cut to the 22 kept frames (6).
    assert latents.shape[:3] == (1, 16, 1 + (22 - 1 + 3) // 4)


def test_num_videos_per_prompt_and_generator_lists(pipe):
    single = [pipe(**_inputs(pipe, seed=s)).frames[0] for s in (1, 2)]
    generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
    both = pipe(**_inputs(pipe, num_videos_per_prompt=2, generator=generators)).frames
    assert both.shape[0] == 2
    np.testing.assert_allclose(both[0], single[0], atol=1e-6)
    np.testing.assert_allclose(both[1], single[1], atol=1e-6)
    assert not np.allclose(both[0], both[1])
    one_generator = pipe(**_inputs(pipe, num_videos_per_prompt=2)).frames
    assert not np.allclose(one_generator[0], one_generator[1])  # different noise from one generator
    with pytest.raises(ValueError, match="2 generators for num_videos_per_prompt=3"):
        pipe(**_inputs(pipe, num_videos_per_prompt=3, generator=generators))


def test_callback_receives_every_tensor_input(pipe):
    seen = []

    def callback(p, step, timestep, kwargs):
        assert set(kwargs) == set(p._callback_tensor_inputs)
        assert all(isinstance(v, torch.Tensor) for v in kwargs.values() if v is not None)
        seen.append((step, p.num_timesteps, p.current_timestep is not None))
        return kwargs

    pipe(
        **_inputs(pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)
    )
    assert [s for s, _, _ in seen] == [0, 1] and all(n == 2 and current for _, n, current in seen)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe(**_inputs(pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["not_a_tensor"]))


def test_callback_that_zeroes_the_latents_changes_the_output(pipe):
    def zero_at_last_step(p, step, timestep, kwargs):
        if step == p.num_timesteps - 1:
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    latents = pipe(**_inputs(pipe, output_type="latent", callback_on_step_end=zero_at_last_step)).frames
    if isinstance(pipe, WanInfiniteTalkPipeline):  # the clean motion latent is pinned after the callback's step
        assert latents[:, :, 1:].abs().max() == 0
    else:
        assert latents.abs().max() == 0


def test_interrupt_from_a_callback_stops_the_loop(pipe):
    steps = []

    def interrupt(p, step, timestep, kwargs):
        steps.append(step)
        p._interrupt = True
        return kwargs

    pipe(**_inputs(pipe, num_inference_steps=4, callback_on_step_end=interrupt))
    assert steps == [0]


def test_encode_prompt_in_isolation_matches_the_call(pipe):
    prompt_embeds, negative_embeds = pipe.encode_prompt("a person talks", None, True, device="cpu")
    assert prompt_embeds.shape == (1, 512, 32) and negative_embeds.shape == (1, 512, 32)
    repeated, _ = pipe.encode_prompt("a person talks", None, False, num_videos_per_prompt=3, device="cpu")
    assert repeated.shape[0] == 3 and torch.equal(repeated[2], prompt_embeds[0])
    by_text = pipe(**_inputs(pipe, guidance_scale=3.0)).frames
    del_prompt = _inputs(pipe, guidance_scale=3.0)
    del_prompt.pop("prompt")
    by_embeds = pipe(**del_prompt, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds).frames
    np.testing.assert_allclose(by_text, by_embeds, atol=1e-6)


def test_save_load_round_trip_and_optional_components(pipe, tmp_path):
    before = pipe(**_inputs(pipe)).frames
    pipe.save_pretrained(tmp_path)
    loaded = type(pipe).from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.image_processor is None and "image_processor" in loaded._optional_components
    np.testing.assert_allclose(loaded(**_inputs(loaded)).frames, before, atol=1e-5)


def test_load_is_quiet(pipe, tmp_path, caplog):
    pipe.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        type(pipe).from_pretrained(tmp_path)
    assert not [r for r in caplog.records if "type annotation" in r.getMessage()], caplog.text


def test_dtype_of_components(tmp_path):
    pipe = make_tiny_pipeline(seed=0)
    pipe.save_pretrained(tmp_path)
    loaded = WanMultiTalkPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.transformer.dtype == torch.bfloat16
    # diffusers keeps the modules `_keep_in_fp32_modules` names in float32
    assert loaded.transformer.blocks[0].audio_norm.weight.dtype == torch.float32


def test_from_pipe_both_ways_shares_the_modules():
    multitalk = make_tiny_pipeline(seed=0)
    infinite = WanInfiniteTalkPipeline.from_pipe(multitalk)
    assert isinstance(infinite, WanInfiniteTalkPipeline)
    for name in ("transformer", "vae", "text_encoder", "image_encoder", "audio_encoder"):
        assert getattr(infinite, name) is getattr(multitalk, name), name
    back = WanMultiTalkPipeline.from_pipe(infinite)
    assert isinstance(back, WanMultiTalkPipeline) and back.transformer is multitalk.transformer
    back.set_progress_bar_config(disable=True)
    infinite.set_progress_bar_config(disable=True)
    assert back(**_inputs(back)).frames.shape == (1, 5, 64, 96, 3)
    assert infinite(**_inputs(infinite)).frames.shape == (1, 5, 64, 96, 3)


def test_attention_processors_and_fused_projections():
    pipe = make_tiny_pipeline(seed=0)
    model = pipe.transformer
    processors = model.attn_processors
    assert len(processors) == 3 * model.config.num_layers  # attn1, attn2, audio_attn per block
    model.set_attn_processor(dict(processors))
    hidden = torch.randn(1, 36, 2, 8, 12)
    args = (torch.tensor([500.0]), torch.randn(1, 16, 32), torch.randn(1, 257, 32), torch.randn(1, 1, 5, 5, 2, 32))
    with torch.no_grad():
        before = model(hidden, *args, return_dict=False)[0]
        model.fuse_qkv_projections()
        assert all(m.fused_projections for m in model.modules() if hasattr(m, "to_qkv") or hasattr(m, "to_kv"))
        fused = model(hidden, *args, return_dict=False)[0]
        model.unfuse_qkv_projections()
        assert not any(hasattr(m, "to_kv") or hasattr(m, "to_qkv") for m in model.modules())
        after = model(hidden, *args, return_dict=False)[0]
    torch.testing.assert_close(fused, before, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(after, before, atol=0, rtol=0)
