"""LoRAs in every published Wan key layout (Wan's own names, kohya, diffusers/peft, FusionX, lightx2v) load into the
MultiTalk transformer, its audio adapter included, and act as W + scale * alpha / rank * up @ down."""

import pytest
import torch
from safetensors.torch import save_file

from diffusers_multitalk import make_tiny_pipeline
from diffusers_multitalk.loaders import lora as lora_module
from diffusers_multitalk.loaders.lora import MultiTalkLoraLoaderMixin, convert_multitalk_lora_to_diffusers
from diffusers_multitalk.loaders.transformer_original import original_to_diffusers_key


# Layers the test LoRAs target, in Wan's / MultiTalk's own names: base Wan layers and the audio adapter's.
BLOCK_LINEARS = [
    "self_attn.q",
    "self_attn.o",
    "cross_attn.k",
    "cross_attn.k_img",
    "cross_attn.v_img",
    "ffn.0",
    "ffn.2",
    "audio_cross_attn.q_linear",
    "audio_cross_attn.kv_linear",
    "audio_cross_attn.proj",
]
TOP_LINEARS = ["audio_proj.proj1", "audio_proj.proj1_vf", "audio_proj.proj3", "head.head", "time_projection.1"]
ALL_LINEARS = [f"blocks.{i}.{name}" for i in range(2) for name in BLOCK_LINEARS] + TOP_LINEARS
# Layers lightx2v stores as a whole-weight delta (`diff`): the extractor does so for small matrices.
DIFF_LAYERS = {"head.head", "audio_proj.proj3", "blocks.1.audio_cross_attn.proj"}
LAYOUTS = ["original", "kohya", "peft", "fusionx", "lightx2v"]


def _diffusers_name(original: str) -> str:
    return original_to_diffusers_key(f"{original}.weight").removesuffix(".weight")


def _layer(transformer, original: str):
    return transformer.get_submodule(_diffusers_name(original))


def _truth(transformer, layout: str, names=ALL_LINEARS, seed=0) -> dict:
    """Per layer: the LoRA's down/up/alpha (or a whole `diff`) and bias delta, as the layout carries them."""
    g = torch.Generator().manual_seed(seed)
    truth = {}
    for i, name in enumerate(names):
        out_features, in_features = _layer(transformer, name).weight.shape
        rank = 3 if "audio" in name else 2
        entry = {"bias": None, "alpha": None, "diff": None}
        if layout == "lightx2v" and name in DIFF_LAYERS:
            entry["diff"] = torch.randn(out_features, in_features, generator=g) * 0.1
        else:
            entry["down"] = torch.randn(rank, in_features, generator=g) * 0.3
            entry["up"] = torch.randn(out_features, rank, generator=g) * 0.3
        if layout in ("original", "kohya"):
            entry["alpha"] = float(1 + i % 4)
        if layout in ("fusionx", "lightx2v") or (layout == "peft" and i % 2):
            entry["bias"] = torch.randn(out_features, generator=g) * 0.1
        truth[name] = entry
    return truth


def _delta(entry) -> torch.Tensor:
    if entry["diff"] is not None:
        return entry["diff"]
    scale = entry["alpha"] / entry["down"].shape[0] if entry["alpha"] is not None else 1.0
    return scale * entry["up"] @ entry["down"]


def _stem(layout: str, name: str) -> str:
    if layout == "peft":
        return f"transformer.{_diffusers_name(name)}"
    if layout == "kohya":
        if name.startswith("blocks.1."):
            # Block 1 as some kohya files write it, dots kept after the block index (`lora_unet_blocks_1.self_attn.q`).
            return "lora_unet_blocks_1." + name.removeprefix("blocks.1.")
        return "lora_unet_" + name.replace(".", "_")
    return f"diffusion_model.{name}"


def _write(truth: dict, layout: str) -> dict:
    down, up = ("lora_A.weight", "lora_B.weight") if layout == "peft" else ("lora_down.weight", "lora_up.weight")
    bias = "lora_B.bias" if layout == "peft" else "diff_b"
    state_dict = {}
    for name, entry in truth.items():
        stem = _stem(layout, name)
        if entry["diff"] is not None:
            state_dict[f"{stem}.diff"] = entry["diff"]
        else:
            state_dict[f"{stem}.{down}"], state_dict[f"{stem}.{up}"] = entry["down"], entry["up"]
        if entry["alpha"] is not None:
            state_dict[f"{stem}.alpha"] = torch.tensor(entry["alpha"])
        if entry["bias"] is not None:
            state_dict[f"{stem}.{bias}"] = entry["bias"]
    return state_dict


def _unappliable_deltas(transformer, layout: str) -> dict:
    """The FusionX / lightx2v deltas no LoRA layer can hold: norm weights and biases; lightx2v's modulation
    (`diff_m`), patch-embedding and image-embedding-norm deltas besides."""
    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    extras = {}
    for i in range(2):
        for norm in ("self_attn.norm_q", "cross_attn.norm_k_img", "norm3", "norm_x"):
            extras[f"diffusion_model.blocks.{i}.{norm}.diff"] = torch.randn(dim)
        extras[f"diffusion_model.blocks.{i}.norm3.diff_b"] = torch.randn(dim)
        if layout == "lightx2v":
            extras[f"diffusion_model.blocks.{i}.diff_m"] = torch.randn(1, 6, dim)
    if layout == "lightx2v":
        extras["diffusion_model.head.diff_m"] = torch.randn(1, 2, dim)
        extras["diffusion_model.patch_embedding.diff"] = torch.randn_like(transformer.patch_embedding.weight)
        extras["diffusion_model.patch_embedding.diff_b"] = torch.randn(dim)
        extras["diffusion_model.img_emb.proj.0.diff"] = torch.randn(transformer.config.image_dim)
    return extras


@pytest.fixture(scope="module")
def pipe():
    pipe = make_tiny_pipeline(seed=0)
    if not isinstance(pipe, MultiTalkLoraLoaderMixin):
        # Until the pipelines' shared base takes the mixin: the same pipeline with it in front of diffusers' Wan one.
        wired = type("WiredMultiTalkPipeline", (type(pipe), MultiTalkLoraLoaderMixin), {})
        pipe = make_tiny_pipeline(seed=0, pipeline_class=wired)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def fresh(pipe):
    """The pipeline, its transformer restored to the original weights after the test."""
    original = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    yield pipe
    pipe.unload_lora_weights()
    pipe.transformer.load_state_dict(original)


def _save(tmp_path, state_dict) -> str:
    path = tmp_path / "lora.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    return str(path)


def _expected_names(truth: dict) -> set:
    names = set()
    for name, entry in truth.items():
        stem = f"transformer.{_diffusers_name(name)}"
        names |= {f"{stem}.lora_A.weight", f"{stem}.lora_B.weight"}
        if entry["bias"] is not None:
            names.add(f"{stem}.lora_B.bias")
    return names


def _check_fused(transformer, original: dict, truth: dict, weight: float):
    for name, entry in truth.items():
        diffusers_name = _diffusers_name(name)
        fused = transformer.get_submodule(diffusers_name)
        expected = original[f"{diffusers_name}.weight"] + weight * _delta(entry)
        torch.testing.assert_close(fused.weight, expected, atol=1e-5, rtol=1e-4, msg=f"{name} weight")
        expected_bias = original[f"{diffusers_name}.bias"]
        if entry["bias"] is not None:
            expected_bias = expected_bias + weight * entry["bias"]
        torch.testing.assert_close(fused.bias, expected_bias, atol=1e-5, rtol=1e-4, msg=f"{name} bias")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_converts_loads_and_fuses_as_a_manual_merge(fresh, tmp_path, monkeypatch, layout):
    transformer = fresh.transformer
    truth = _truth(transformer, layout)
    extras = _unappliable_deltas(transformer, layout) if layout in ("fusionx", "lightx2v") else {}
    path = _save(tmp_path, {**_write(truth, layout), **extras})
    warnings = []
    monkeypatch.setattr(lora_module.logger, "warning", lambda message, *a: warnings.append(message))

    converted = MultiTalkLoraLoaderMixin.lora_state_dict(path)
    assert set(converted) == _expected_names(truth)
    assert "transformer.blocks.1.audio_attn.to_audio_kv.lora_A.weight" in converted
    assert "transformer.audio_proj.proj1_vf.lora_B.weight" in converted
    assert "transformer.blocks.0.attn2.add_k_proj.lora_A.weight" in converted
    if extras:
        # Named in one warning: nothing is dropped silently.
        assert len(warnings) == 1 and "diffusion_model.blocks.0.norm_x.diff" in warnings[0]
        assert f"({len(extras)} in all)" in warnings[0]
        if layout == "lightx2v":
            assert "diffusion_model.blocks.0.diff_m" in warnings[0]

    original = {k: v.clone() for k, v in transformer.state_dict().items()}
    fresh.load_lora_weights(path, adapter_name=layout)
    for name in ALL_LINEARS:
        assert layout in _layer(transformer, name).lora_A, f"no adapter on {_diffusers_name(name)}"
    assert layout in transformer.blocks[0].audio_attn.to_audio_kv.lora_A
    assert not hasattr(transformer.blocks[0].attn1.to_k, "lora_A"), "a layer the LoRA does not name got an adapter"

    fresh.set_adapters([layout], [0.5])
    fresh.fuse_lora(components=["transformer"], lora_scale=1.0)
    _check_fused(transformer, original, truth, weight=0.5)


def _inputs(transformer):
    g = torch.Generator().manual_seed(1)
    config = transformer.config
    return dict(
        hidden_states=torch.randn(1, config.in_channels, 2, 8, 8, generator=g),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, 5, config.text_dim, generator=g),
        encoder_hidden_states_image=torch.randn(1, 257, config.image_dim, generator=g),
        audio_embeds=torch.randn(1, 1, 5, config.audio_window, config.audio_layers, config.audio_channels, generator=g),
        return_dict=False,
    )


@pytest.mark.parametrize("layout", ["original", "lightx2v"])
def test_forward_with_the_adapter_equals_the_merged_weights(fresh, tmp_path, layout):
    transformer = fresh.transformer
    inputs = _inputs(transformer)
    truth = _truth(transformer, layout, seed=3)
    extras = _unappliable_deltas(transformer, layout) if layout == "lightx2v" else {}
    with torch.no_grad():
        base = transformer(**inputs)[0]
        fresh.load_lora_weights(_save(tmp_path, {**_write(truth, layout), **extras}), adapter_name="a")
        with_lora = transformer(**inputs)[0]
        fresh.unload_lora_weights()
        for name, entry in truth.items():
            layer = _layer(transformer, name)
            layer.weight += _delta(entry)
            if entry["bias"] is not None:
                layer.bias += entry["bias"]
        merged = transformer(**inputs)[0]
    assert (with_lora - base).abs().max() > 1e-2, "the LoRA changed nothing: the check below would prove nothing"
    torch.testing.assert_close(with_lora, merged, atol=1e-5, rtol=1e-4)


def test_audio_adapter_only_lora_and_top_level_base_layers(fresh, tmp_path):
    """Without any base block layer diffusers' converter cannot run (it reads the block range off the keys)."""
    transformer = fresh.transformer
    names = [f"blocks.{i}.{n}" for i in range(2) for n in BLOCK_LINEARS if "audio" in n] + ["audio_proj.proj2"]
    truth = _truth(transformer, "original", names=[*names, "head.head"])
    path = _save(tmp_path, _write(truth, "original"))
    assert set(MultiTalkLoraLoaderMixin.lora_state_dict(path)) == _expected_names(truth)

    original = {k: v.clone() for k, v in transformer.state_dict().items()}
    fresh.load_lora_weights(path, adapter_name="audio")
    assert "audio" in transformer.blocks[1].audio_attn.to_q.lora_A and "audio" in transformer.proj_out.lora_A
    fresh.fuse_lora(components=["transformer"], lora_scale=1.0)
    _check_fused(transformer, original, truth, weight=1.0)


def test_peft_names_pass_through_with_their_metadata(tmp_path):
    state_dict = {
        "transformer.blocks.0.audio_attn.to_audio_kv.lora_A.weight": torch.randn(2, 16),
        "transformer.blocks.0.audio_attn.to_audio_kv.lora_B.weight": torch.randn(96, 2),
    }
    assert convert_multitalk_lora_to_diffusers(state_dict) == state_dict
    unprefixed = {k.removeprefix("transformer."): v for k, v in state_dict.items()}
    assert convert_multitalk_lora_to_diffusers(unprefixed) == state_dict
    # Wan-named keys are converted, so diffusers' adapter metadata (which describes peft keys) is not passed on.
    converted, metadata = MultiTalkLoraLoaderMixin.lora_state_dict(
        {
            "diffusion_model.blocks.0.audio_cross_attn.kv_linear.lora_down.weight": torch.randn(2, 16),
            "diffusion_model.blocks.0.audio_cross_attn.kv_linear.lora_up.weight": torch.randn(96, 2),
        },
        return_lora_metadata=True,
    )
    assert set(converted) == set(state_dict) and metadata is None


def test_unknown_keys_are_named_with_a_count(fresh, tmp_path):
    transformer = fresh.transformer
    good = _write(_truth(transformer, "original", names=["blocks.0.self_attn.q"]), "original")
    unknown = {
        "diffusion_model.blocks.0.audio_cross_attn.qkv_linear.lora_down.weight": torch.zeros(2, 48),
        "lora_unet_blocks_0_audio_cross_attn_nope.alpha": torch.tensor(1.0),
        # The audio key/value layer's name before the rename is no layer of the model now.
        "transformer.blocks.0.audio_attn.to_kv.lora_A.weight": torch.zeros(2, 16),
        "diffusion_model.blocks.0.self_attn.q.lora_mid.weight": torch.zeros(2, 2),
    }
    unknown.update({f"zz_unknown_{i}.lora_down.weight": torch.zeros(2, 48) for i in range(8)})
    with pytest.raises(ValueError) as raised:
        MultiTalkLoraLoaderMixin.lora_state_dict({**good, **unknown})
    message = str(raised.value)
    for key in list(unknown)[:4]:
        assert key in message
    assert f"({len(unknown)} in all)" in message
    assert "diffusion_model.blocks.0.self_attn.q.lora_down.weight" not in message

    with pytest.raises(ValueError, match="qkv_linear"):
        fresh.load_lora_weights(_save(tmp_path, {**good, **unknown}), adapter_name="bad")


def test_half_pairs_and_double_namings_are_refused():
    down = torch.zeros(2, 48)
    with pytest.raises(ValueError, match="without its lora_up"):
        convert_multitalk_lora_to_diffusers({"diffusion_model.blocks.0.audio_cross_attn.proj.lora_down.weight": down})
    twice = {
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
        "lora_unet_blocks_0_self_attn_q.lora_down.weight": down,
    }
    with pytest.raises(ValueError, match="twice"):
        convert_multitalk_lora_to_diffusers(twice)
