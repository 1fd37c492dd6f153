"""MultiTalkTransformer3DModel against the reference's outputs on tiny random weights (tests/fixtures/dit_*)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusers_multitalk.loaders.transformer_original import (
    convert_multitalk_transformer_to_diffusers,
    convert_multitalk_transformer_to_original,
)
from diffusers_multitalk.models import attention_processor, transformer_multitalk
from diffusers_multitalk.models.transformer_multitalk import MultiTalkTransformer3DModel


FIXTURES = Path(__file__).parent / "fixtures"
WEIGHTS = FIXTURES / "dit_tiny_weights"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model():
    return MultiTalkTransformer3DModel.from_original(WEIGHTS, torch_dtype=torch.float32)


def _inputs(name):
    inputs = load_file(FIXTURES / name / "inputs.safetensors")
    outputs = load_file(FIXTURES / name / "outputs.safetensors")
    return inputs, outputs


def _pad_text(context, text_len=16):
    return torch.cat([context, context.new_zeros(text_len - context.shape[0], context.shape[1])])[None]


def _forward(model, inputs, context, audio):
    hidden_states = torch.cat([inputs["x"][None], inputs["y"]], dim=1)
    with torch.no_grad():
        return model(
            hidden_states,
            inputs["timestep"],
            _pad_text(context),
            inputs["clip_fea"],
            audio[None],
            ref_target_masks=inputs["ref_target_masks"],
            return_dict=False,
        )[0]


def _max_err(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", ["dit_single", "dit_two"])
def test_forward_matches_reference(model, name):
    inputs, outputs = _inputs(name)
    branches = {
        "out": (inputs["context"], inputs["audio"]),
        "out_null_text": (inputs["context_null"], inputs["audio"]),
        # The CFG branch without audio: one silent person.
        "out_null_audio": (inputs["context"], torch.zeros_like(inputs["audio"])[-1:]),
    }
    errors = {key: _max_err(_forward(model, inputs, *args), outputs[key]) for key, args in branches.items()}
    assert max(errors.values()) < TOLERANCE, f"{name}: max abs errors {errors}"


@pytest.mark.parametrize("name", ["dit_single", "dit_two"])
def test_audio_projection_matches_reference(model, name):
    inputs, outputs = _inputs(name)
    with torch.no_grad():
        tokens = model.audio_proj(inputs["audio"])
    err = _max_err(tokens, outputs["audio_proj_out"])
    assert err < TOLERANCE, f"{name}: audio_proj max abs error {err}"


@pytest.mark.parametrize("name", ["dit_single", "dit_two"])
def test_block0_audio_attention_and_lrope_positions(model, name, monkeypatch):
    inputs, outputs = _inputs(name)
    captured, block_out = [], []
    original = transformer_multitalk.LRoPE.query_positions

    def spy(self, scores):
        positions = original(self, scores)
        captured.append((positions, self.key_positions))
        return positions

    monkeypatch.setattr(transformer_multitalk.LRoPE, "query_positions", spy)
    handle = model.blocks[0].audio_attn.register_forward_hook(lambda mod, args, out: block_out.append(out))
    try:
        _forward(model, inputs, inputs["context"], inputs["audio"])
    finally:
        handle.remove()
    err = _max_err(block_out[0], outputs["block0_audio_attn_out"])
    assert err < TOLERANCE, f"block 0 audio attention max abs error {err}"
    if name == "dit_single":
        assert captured == [], "one person must not compute the person map"
        return
    q_pos, k_pos = captured[0]
    num_frames = inputs["x"].shape[1]
    q_err = _max_err(q_pos[0], outputs["block0_lrope_q_pos"])
    assert q_err < 1e-4, f"L-RoPE query positions differ by {q_err}"
    assert torch.equal(k_pos.repeat(num_frames), outputs["block0_lrope_k_pos"])


def test_one_person_skips_person_map_and_ignores_masks(model, monkeypatch):
    inputs, _ = _inputs("dit_single")
    hidden_states = torch.cat([inputs["x"][None], inputs["y"]], dim=1)
    args = (hidden_states, inputs["timestep"], _pad_text(inputs["context"]), inputs["clip_fea"], inputs["audio"][None])

    def forbidden(*a, **k):
        raise AssertionError("person_attention_scores called for one person")

    monkeypatch.setattr(attention_processor, "person_attention_scores", forbidden)
    with torch.no_grad():
        with_masks = model(*args, ref_target_masks=inputs["ref_target_masks"], return_dict=False)[0]
        without = model(*args, return_dict=False)[0]
    assert torch.equal(with_masks, without)


def _random_model(**overrides):
    config = dict(
        num_attention_heads=2,
        attention_head_dim=16,
        text_dim=8,
        ffn_dim=32,
        num_layers=2,
        image_dim=16,
        added_kv_proj_dim=32,
        audio_layers=2,
        audio_channels=4,
        intermediate_dim=8,
        output_dim=8,
        context_tokens=3,
    )
    config.update(overrides)
    torch.manual_seed(0)
    return MultiTalkTransformer3DModel(**config).eval()


def _random_inputs(persons, frames=2, height=8, width=8, text_len=5):
    torch.manual_seed(1)
    return dict(
        hidden_states=torch.randn(1, 36, frames, height, width),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, text_len, 8),
        encoder_hidden_states_image=torch.randn(1, 257, 16),
        audio_embeds=torch.randn(1, persons, 4 * (frames - 1) + 1, 5, 2, 4),
    )


def test_three_persons_get_their_own_label_ranges(monkeypatch):
    model = _random_model()
    inputs = _random_inputs(persons=3)
    masks = torch.zeros(4, 8, 8)
    masks[0, :, :3], masks[1, :, 3:5], masks[2, :, 5:] = 1, 1, 1
    masks[3, :2] = 1  # background strip
    captured = []
    original = transformer_multitalk.LRoPE.query_positions
    monkeypatch.setattr(
        transformer_multitalk.LRoPE,
        "query_positions",
        lambda self, scores: captured.append(self) or original(self, scores),
    )
    with torch.no_grad():
        out = model(**inputs, ref_target_masks=masks, return_dict=False)[0]
    assert out.shape == (1, 16, 2, 8, 8) and torch.isfinite(out).all()
    lrope = captured[0]
    assert lrope.ranges == [(0.0, 4.0), (10.0, 14.0), (20.0, 24.0)]
    assert lrope.key_positions.tolist() == [2.0] * 3 + [12.0] * 3 + [22.0] * 3
    scores = torch.rand(1, 4, 16)
    positions = lrope.query_positions(scores)[0]
    winner = scores[0].argmax(0)
    for token, cls in enumerate(winner.tolist()):
        if cls == 3:
            assert positions[token] == 12.0
        else:
            lo, hi = lrope.ranges[cls]
            assert lo - 1e-5 <= positions[token] <= hi + 1e-5


def test_several_persons_need_masks():
    model = _random_model()
    inputs = _random_inputs(persons=2)
    with pytest.raises(ValueError, match="ref_target_masks"):
        model(**inputs)
    with pytest.raises(ValueError, match="persons \\+ 1"):
        model(**inputs, ref_target_masks=torch.ones(2, 8, 8))
    empty = torch.ones(3, 8, 8)
    empty[1] = 0
    with pytest.raises(ValueError, match="at least one latent token"):
        model(**inputs, ref_target_masks=empty)


def test_audio_frame_count_is_checked():
    model = _random_model()
    inputs = _random_inputs(persons=1)
    inputs["audio_embeds"] = inputs["audio_embeds"][:, :, :-1]
    with pytest.raises(ValueError, match="latent frames need 5"):
        model(**inputs)


def test_attention_backend_switch_keeps_outputs():
    model = _random_model()
    inputs = _random_inputs(persons=2)
    masks = torch.zeros(3, 8, 8)
    masks[0, :, :4], masks[1, :, 4:], masks[2] = 1, 1, 1
    with torch.no_grad():
        default = model(**inputs, ref_target_masks=masks, return_dict=False)[0]
        model.set_attention_backend("native")
        native = model(**inputs, ref_target_masks=masks, return_dict=False)[0]
        model.reset_attention_backend()
    assert torch.allclose(default, native, atol=1e-5)
    assert all(
        p._attention_backend is None for p in (model.blocks[0].attn1.processor, model.blocks[0].audio_attn.processor)
    )


def test_save_pretrained_round_trip(tmp_path):
    model = _random_model()
    inputs = _random_inputs(persons=1)
    model.save_pretrained(tmp_path)
    reloaded = MultiTalkTransformer3DModel.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
    with torch.no_grad():
        # Same weights; CPU kernels may take another path for memory-mapped tensors, hence not bit-equal.
        diff = (model(**inputs, return_dict=False)[0] - reloaded(**inputs, return_dict=False)[0]).abs().max()
    assert diff < 1e-5


def test_bf16_loading_keeps_fp32_modules():
    model = MultiTalkTransformer3DModel.from_original(WEIGHTS, torch_dtype=torch.bfloat16)
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert model.blocks[0].scale_shift_table.dtype == torch.float32
    assert model.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32


def test_key_conversion_round_trip_and_agrees_with_diffusers():
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    original = {}
    for file in ("diffusion_pytorch_model.safetensors", "multitalk.safetensors"):
        original.update(load_file(WEIGHTS / file))
    converted = convert_multitalk_transformer_to_diffusers(dict(original))
    back = convert_multitalk_transformer_to_original(dict(converted))
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)
    # Wan's base keys: the same names as diffusers' own Wan converter gives.
    base = {k: v for k, v in original.items() if "audio" not in k and "norm_x" not in k}
    ours = {k for k in converted if not k.startswith("audio_proj") and ".audio_" not in k}
    assert ours == set(convert_wan_transformer_to_diffusers(dict(base)))


def _copy_weights(tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(WEIGHTS, target)
    return target


def test_missing_key_is_named(tmp_path):
    target = _copy_weights(tmp_path)
    audio = load_file(target / "multitalk.safetensors")
    audio.pop("blocks.1.audio_cross_attn.proj.weight")
    save_file(audio, target / "multitalk.safetensors")
    with pytest.raises(ValueError, match=r"missing keys: blocks\.1\.audio_cross_attn\.proj\.weight"):
        MultiTalkTransformer3DModel.from_original(target)


def test_misshaped_and_unexpected_keys_are_named(tmp_path):
    target = _copy_weights(tmp_path)
    audio = load_file(target / "multitalk.safetensors")
    audio["blocks.0.audio_cross_attn.proj.bias"] = torch.zeros(7)
    audio["blocks.0.extra_layer.weight"] = torch.zeros(3)
    save_file(audio, target / "multitalk.safetensors")
    with pytest.raises(ValueError) as info:
        MultiTalkTransformer3DModel.from_original(target)
    message = str(info.value)
    assert "blocks.0.audio_cross_attn.proj.bias: checkpoint (7,)" in message
    assert "unexpected keys: blocks.0.extra_layer.weight" in message


def test_plain_wan_folder_without_audio_weights(tmp_path):
    target = _copy_weights(tmp_path)
    (target / "multitalk.safetensors").unlink()
    (target / "diffusion_pytorch_model.safetensors.index.json").unlink()
    with pytest.raises(ValueError, match="no MultiTalk audio weights"):
        MultiTalkTransformer3DModel.from_original(target)
    # Passing the MultiTalk file explicitly fixes it.
    model = MultiTalkTransformer3DModel.from_original(target, multitalk_path=WEIGHTS / "multitalk.safetensors")
    assert model.config.context_tokens == 4


def test_missing_folder_and_shards(tmp_path):
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        MultiTalkTransformer3DModel.from_original(tmp_path / "nowhere")
    target = _copy_weights(tmp_path)
    (target / "multitalk.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="multitalk.safetensors"):
        MultiTalkTransformer3DModel.from_original(target)


def test_config_inferred_from_shapes_without_audio_fields(tmp_path):
    target = _copy_weights(tmp_path)
    config = json.loads((target / "config.json").read_text())
    for key in ("audio_window", "intermediate_dim", "output_dim", "context_tokens", "vae_scale"):
        config.pop(key)
    (target / "config.json").write_text(json.dumps(config))
    model = MultiTalkTransformer3DModel.from_original(target)
    assert (model.config.intermediate_dim, model.config.output_dim, model.config.context_tokens) == (8, 32, 4)
    assert (model.config.audio_window, model.config.vae_scale) == (5, 4)
