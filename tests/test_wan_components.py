"""Parity of the Wan2.1 component loaders (umT5, CLIP vision tower, VAE) with the reference, plus error handling.

The fixtures were produced by the reference implementation at toy sizes (see fixtures/wan_components_tiny/MANIFEST.md).
Everything runs in float32 on CPU. The tolerance is 1e-4 and the measured errors are about 1e-6 or lower.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusers_multitalk.loaders.original_folders import WAN_CLIP_CHECKPOINT, WAN_T5_CHECKPOINT, WAN_VAE_CHECKPOINT
from diffusers_multitalk.loaders.wan_clip import (
    clip_vision_config_from_wan_state_dict,
    convert_wan_clip_visual_state_dict,
    load_clip_vision_from_original,
)
from diffusers_multitalk.loaders.wan_tokenizers import load_tokenizer, load_umt5_tokenizer
from diffusers_multitalk.loaders.wan_umt5 import (
    convert_wan_t5_state_dict,
    load_umt5_encoder_from_original,
    umt5_config_from_wan_state_dict,
)
from diffusers_multitalk.loaders.wan_vae import (
    convert_wan_vae_state_dict,
    load_vae_from_original,
    vae_config_from_wan_state_dict,
)
from diffusers_multitalk.pipelines.clip_features import clip_image_features, preprocess_clip_frames


FIXTURES = Path(__file__).parent / "fixtures" / "wan_components_tiny"
T5_FILE = FIXTURES / "models_t5_umt5-tiny-enc.pth"
CLIP_FILE = FIXTURES / "models_clip_tiny.pth"
VAE_FILE = FIXTURES / "Wan2.1_VAE_tiny.pth"
TOL = 1e-4


@pytest.fixture(scope="module")
def ref():
    return load_file(FIXTURES / "outputs.safetensors")


@pytest.fixture(scope="module")
def t5():
    return load_umt5_encoder_from_original(T5_FILE)


@pytest.fixture(scope="module")
def clip():
    # The toy tower has 2 heads; a 64-wide tower has no default head count.
    return load_clip_vision_from_original(CLIP_FILE, num_attention_heads=2)


@pytest.fixture(scope="module")
def vae(ref):
    return load_vae_from_original(VAE_FILE, latents_mean=ref["vae_latents_mean"], latents_std=ref["vae_latents_std"])


def _err(a, b):
    return (a.float() - b.float()).abs().max().item()


def _meta(shape):
    return torch.empty(shape, device="meta")


# --------------------------------------------------------------------------------------------------------------------
# umT5
# --------------------------------------------------------------------------------------------------------------------


def test_umt5_config_and_tied_embeddings(t5):
    cfg = t5.config
    assert (cfg.vocab_size, cfg.d_model, cfg.d_kv, cfg.num_heads, cfg.d_ff, cfg.num_layers) == (96, 32, 8, 4, 48, 2)
    assert cfg.relative_attention_num_buckets == 32 and cfg.relative_attention_max_distance == 128
    # Wan's GELU is the tanh approximation, i.e. gelu_new, what "gated-gelu" selects.
    assert cfg.is_gated_act and cfg.dense_act_fn == "gelu_new"
    assert t5.encoder.embed_tokens.weight is t5.shared.weight
    assert all(layer.layer[0].SelfAttention.has_relative_attention_bias for layer in t5.encoder.block)
    assert not t5.training
    assert next(t5.parameters()).dtype == torch.float32


def test_umt5_matches_reference(t5, ref):
    ids, mask, expected = ref["t5_ids"], ref["t5_mask"], ref["t5_out"]
    with torch.no_grad():
        out = t5(input_ids=ids, attention_mask=mask).last_hidden_state
    assert out.shape == expected.shape
    lens = mask.sum(1).tolist()
    assert lens == [12, 7]
    # Real tokens, which the pipeline keeps (out[i, :len_i], zero-padded to text_len afterwards).
    valid = max(_err(out[i, :n], expected[i, :n]) for i, n in enumerate(lens))
    assert valid < TOL, f"umT5 max abs error on real tokens: {valid:.3e}"
    # Padded positions: Wan's encoder does not zero them. A padded query still attends to the real keys, so its row
    # is finite and non-zero, and the transformers model computes the same values. The pipeline drops them anyway.
    padded = _err(out[1, 7:], expected[1, 7:])
    assert padded < TOL, f"umT5 max abs error on padded positions: {padded:.3e}"
    assert expected[1, 7:].abs().amax().item() > 0.1 and torch.isfinite(out).all()


def test_umt5_torch_dtype(ref):
    model = load_umt5_encoder_from_original(T5_FILE, torch_dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        out = model(input_ids=ref["t5_ids"][:1], attention_mask=ref["t5_mask"][:1]).last_hidden_state
    assert _err(out, ref["t5_out"][:1]) < 0.1


def test_umt5_xxl_layout_inferred_from_shapes():
    """The real umt5-xxl (vocab 256384, 4096 wide, 64 heads, 24 layers) on meta tensors: config and key coverage."""
    from accelerate import init_empty_weights
    from transformers import UMT5EncoderModel

    d, ff, layers, heads = 4096, 10240, 24, 64
    sd = {"token_embedding.weight": _meta((256384, d)), "norm.weight": _meta((d,))}
    for i in range(layers):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": _meta((d,)), p + "norm2.weight": _meta((d,))})
        sd.update({f"{p}attn.{n}.weight": _meta((d, d)) for n in "qkvo"})
        sd.update({p + "ffn.gate.0.weight": _meta((ff, d)), p + "ffn.fc1.weight": _meta((ff, d))})
        sd.update({p + "ffn.fc2.weight": _meta((d, ff)), p + "pos_embedding.embedding.weight": _meta((32, heads))})
    cfg = umt5_config_from_wan_state_dict(sd)
    assert (cfg.vocab_size, cfg.d_model, cfg.d_kv, cfg.num_heads, cfg.d_ff, cfg.num_layers) == (
        256384,
        4096,
        64,
        64,
        10240,
        24,
    )
    converted = convert_wan_t5_state_dict(sd)
    with init_empty_weights():
        model = UMT5EncoderModel(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected


# --------------------------------------------------------------------------------------------------------------------
# CLIP vision tower
# --------------------------------------------------------------------------------------------------------------------


def test_clip_preprocess_matches_reference(ref):
    frame = ref["clip_frame"]  # [C, T, H, W] = [3, 1, 64, 96] in [-1, 1]
    pixels = preprocess_clip_frames(frame)
    err = _err(pixels, ref["clip_pixel_values"])
    assert pixels.shape == (1, 3, 224, 224)
    assert err < 1e-5, f"CLIP preprocessing max abs error: {err:.3e}"
    # The same frame given as a [B, C, T, H, W] batch (as the pipeline slices cond_image[:, :, -1:]) or as images.
    assert torch.equal(preprocess_clip_frames(frame[None]), pixels)
    assert torch.equal(preprocess_clip_frames(frame.transpose(0, 1)), pixels)
    assert torch.equal(preprocess_clip_frames(frame.transpose(0, 1), layout="BCHW"), pixels)


def test_clip_preprocess_layout_errors():
    with pytest.raises(ValueError, match="Ambiguous"):
        preprocess_clip_frames(torch.zeros(3, 3, 8, 8))
    assert preprocess_clip_frames(torch.zeros(3, 3, 8, 8), layout="CTHW").shape == (3, 3, 224, 224)
    with pytest.raises(ValueError, match="colour channels"):
        preprocess_clip_frames(torch.zeros(4, 5, 8, 8))
    with pytest.raises(ValueError, match="4-D or 5-D"):
        preprocess_clip_frames(torch.zeros(3, 8, 8))
    with pytest.raises(TypeError):
        preprocess_clip_frames(torch.zeros(3, 1, 8, 8, dtype=torch.uint8))


def test_clip_config(clip):
    cfg = clip.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 256, 3, 2)
    assert (cfg.patch_size, cfg.image_size, cfg.hidden_act, cfg.layer_norm_eps) == (14, 224, "gelu", 1e-5)
    assert clip.embeddings.patch_embedding.bias is None


def test_clip_features_match_reference(clip, ref):
    with torch.no_grad():
        feats = clip_image_features(clip, ref["clip_pixel_values"])
        full = clip(pixel_values=ref["clip_pixel_values"], output_hidden_states=True)
    assert feats.shape == ref["clip_out"].shape == (1, 257, 64)
    err = _err(feats, ref["clip_out"])
    assert err < TOL, f"CLIP features (all blocks but the last) max abs error: {err:.3e}"
    # hidden_states[-2] is what Wan uses: there are num_layers + 1 states and the last one is the full tower.
    assert len(full.hidden_states) == clip.config.num_hidden_layers + 1
    assert torch.equal(full.hidden_states[-1], full.last_hidden_state)
    assert _err(full.last_hidden_state, ref["clip_out"]) > 1e-2


def test_clip_end_to_end_from_frame(clip, ref):
    with torch.no_grad():
        feats = clip_image_features(clip, preprocess_clip_frames(ref["clip_frame"]))
    err = _err(feats, ref["clip_out"])
    assert err < TOL, f"CLIP frame -> features max abs error: {err:.3e}"


def test_clip_vit_h_layout_inferred_from_shapes():
    """Wan's ViT-H/14 (1280 wide, 32 layers, 16 heads) on meta tensors: config and key coverage."""
    from accelerate import init_empty_weights
    from transformers import CLIPVisionModel

    d, layers = 1280, 32
    sd = {
        "log_scale": _meta(()),
        "textual.token_embedding.weight": _meta((250002, 1024)),
        "visual.head": _meta((d, 1024)),
        "visual.cls_embedding": _meta((1, 1, d)),
        "visual.pos_embedding": _meta((1, 257, d)),
        "visual.patch_embedding.weight": _meta((d, 3, 14, 14)),
    }
    for n in ("pre_norm", "post_norm"):
        sd.update({f"visual.{n}.weight": _meta((d,)), f"visual.{n}.bias": _meta((d,))})
    for i in range(layers):
        p = f"visual.transformer.{i}."
        for n, shape in [("norm1", d), ("norm2", d), ("attn.proj", (d, d)), ("attn.to_qkv", (3 * d, d))]:
            shape = shape if isinstance(shape, tuple) else (shape,)
            sd.update({p + n + ".weight": _meta(shape), p + n + ".bias": _meta((shape[0],))})
        sd.update({p + "mlp.0.weight": _meta((4 * d, d)), p + "mlp.0.bias": _meta((4 * d,))})
        sd.update({p + "mlp.2.weight": _meta((d, 4 * d)), p + "mlp.2.bias": _meta((d,))})
    cfg = clip_vision_config_from_wan_state_dict(sd)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (
        1280,
        5120,
        32,
        16,
    )
    assert (cfg.patch_size, cfg.image_size, cfg.hidden_act) == (14, 224, "gelu")
    with init_empty_weights():
        model = CLIPVisionModel(cfg)
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in model.state_dict()) else ""
    converted = convert_wan_clip_visual_state_dict(sd, prefix=prefix)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()
    }


def test_clip_unknown_width_needs_head_count():
    with pytest.raises(ValueError, match="num_attention_heads"):
        load_clip_vision_from_original(CLIP_FILE)


# --------------------------------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------------------------------


def test_vae_config(vae, ref):
    cfg = vae.config
    assert (cfg.base_dim, cfg.z_dim, list(cfg.dim_mult), cfg.num_res_blocks) == (8, 16, [1, 2, 4, 4], 1)
    assert list(cfg.temperal_downsample) == [False, True, True] and list(cfg.attn_scales) == []
    assert torch.allclose(torch.tensor(cfg.latents_mean), ref["vae_latents_mean"])
    assert torch.allclose(torch.tensor(cfg.latents_std), ref["vae_latents_std"])


def test_vae_encode_matches_reference(vae, ref):
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        mu = vae.encode(ref["vae_video"]).latent_dist.mean
    latent = (mu - mean) / std
    assert latent.shape == ref["vae_latent"].shape == (1, 16, 3, 4, 6)
    err = _err(latent, ref["vae_latent"])
    assert err < TOL, f"VAE normalised latent max abs error: {err:.3e}"


def test_vae_decode_matches_reference(vae, ref):
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        video = vae.decode(ref["vae_latent"] * std + mean).sample.clamp(-1, 1)
    assert video.shape == ref["vae_decoded"].shape == (1, 3, 9, 32, 48)
    err = _err(video, ref["vae_decoded"])
    assert err < TOL, f"VAE decoded video max abs error: {err:.3e}"


def test_vae_default_latent_statistics_are_wan21():
    import inspect

    from diffusers import AutoencoderKLWan

    vae = load_vae_from_original(VAE_FILE)
    params = inspect.signature(AutoencoderKLWan.__init__).parameters
    assert list(vae.config.latents_mean) == list(params["latents_mean"].default)
    assert list(vae.config.latents_std) == list(params["latents_std"].default)
    with pytest.raises(ValueError, match="16 values"):
        load_vae_from_original(VAE_FILE, latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    with pytest.raises(ValueError, match="both"):
        load_vae_from_original(VAE_FILE, latents_mean=[0.0] * 16)


def _wan_vae_original_shapes(dim, z_dim=16, dim_mult=(1, 2, 4, 4), nrb=2, temporal=(False, True, True)):
    """Key -> shape of a Wan ``WanVAE_`` state dict, written from the reference layout (attn_scales empty)."""
    sd = {}

    def conv3(p, cin, cout, k=3):
        sd[p + ".weight"], sd[p + ".bias"] = (cout, cin, k, k, k), (cout,)

    def res(p, cin, cout):
        sd[p + ".residual.0.gamma"] = (cin, 1, 1, 1)
        conv3(p + ".residual.2", cin, cout)
        sd[p + ".residual.3.gamma"] = (cout, 1, 1, 1)
        conv3(p + ".residual.6", cout, cout)
        if cin != cout:
            conv3(p + ".shortcut", cin, cout, 1)

    def middle(p, c):
        res(p + ".0", c, c)
        sd[p + ".1.norm.gamma"] = (c, 1, 1)
        sd[p + ".1.to_qkv.weight"], sd[p + ".1.to_qkv.bias"] = (3 * c, c, 1, 1), (3 * c,)
        sd[p + ".1.proj.weight"], sd[p + ".1.proj.bias"] = (c, c, 1, 1), (c,)
        res(p + ".2", c, c)

    def head(p, cin, cout):
        sd[p + ".0.gamma"] = (cin, 1, 1, 1)
        conv3(p + ".2", cin, cout)

    dims = [dim * m for m in (1, *dim_mult)]
    conv3("encoder.conv1", 3, dims[0])
    n = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(nrb):
            res(f"encoder.downsamples.{n}", cin, cout)
            cin, n = cout, n + 1
        if i < len(dim_mult) - 1:
            p = f"encoder.downsamples.{n}"
            sd[p + ".resample.1.weight"], sd[p + ".resample.1.bias"] = (cout, cout, 3, 3), (cout,)
            if temporal[i]:
                sd[p + ".time_conv.weight"], sd[p + ".time_conv.bias"] = (cout, cout, 3, 1, 1), (cout,)
            n += 1
    middle("encoder.middle", dims[-1])
    head("encoder.head", dims[-1], 2 * z_dim)
    conv3("conv1", 2 * z_dim, 2 * z_dim, 1)
    conv3("conv2", z_dim, z_dim, 1)

    dims = [dim * m for m in (dim_mult[-1], *dim_mult[::-1])]
    conv3("decoder.conv1", z_dim, dims[0])
    middle("decoder.middle", dims[0])
    n = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        cin = cin // 2 if i > 0 else cin
        for _ in range(nrb + 1):
            res(f"decoder.upsamples.{n}", cin, cout)
            cin, n = cout, n + 1
        if i < len(dim_mult) - 1:
            p = f"decoder.upsamples.{n}"
            sd[p + ".resample.1.weight"], sd[p + ".resample.1.bias"] = (cout // 2, cout, 3, 3), (cout // 2,)
            if temporal[::-1][i]:
                sd[p + ".time_conv.weight"], sd[p + ".time_conv.bias"] = (2 * cout, cout, 3, 1, 1), (2 * cout,)
            n += 1
    head("decoder.head", dims[-1], 3)
    return sd


def test_vae_layout_generator_matches_fixture_file():
    """Sanity check of the helper above against a real reference state dict (the toy one)."""
    sd = torch.load(VAE_FILE, map_location="cpu", weights_only=True, mmap=True)
    assert _wan_vae_original_shapes(8, nrb=1) == {k: tuple(v.shape) for k, v in sd.items()}


def test_vae_released_layout_matches_diffusers_conversion():
    """Released Wan2.1 VAE (base 96, 2 res blocks): config inference, and key names equal to diffusers' converter."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    shapes = _wan_vae_original_shapes(96, nrb=2)
    sd = {k: _meta(s) for k, s in shapes.items()}
    cfg = vae_config_from_wan_state_dict(sd)
    assert cfg["base_dim"] == 96 and cfg["z_dim"] == 16 and cfg["num_res_blocks"] == 2
    assert cfg["dim_mult"] == [1, 2, 4, 4] and cfg["temperal_downsample"] == [False, True, True]
    assert "decoder_base_dim" not in cfg

    converted = convert_wan_vae_state_dict(dict(sd))
    reference = convert_wan_vae_to_diffusers(dict(sd))
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    with init_empty_weights():
        model = AutoencoderKLWan()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()
    }


# --------------------------------------------------------------------------------------------------------------------
# errors and paths
# --------------------------------------------------------------------------------------------------------------------

LOADERS = [
    (load_umt5_encoder_from_original, WAN_T5_CHECKPOINT, T5_FILE),
    (lambda p: load_clip_vision_from_original(p, num_attention_heads=2), WAN_CLIP_CHECKPOINT, CLIP_FILE),
    (load_vae_from_original, WAN_VAE_CHECKPOINT, VAE_FILE),
]


@pytest.mark.parametrize("loader,filename,_", LOADERS)
def test_missing_file(tmp_path, loader, filename, _):
    with pytest.raises(FileNotFoundError, match="huggingface-cli download Wan-AI/Wan2.1-I2V-14B-480P") as e:
        loader(tmp_path / filename)
    assert filename in str(e.value)
    # A folder without the file names the expected file.
    with pytest.raises(FileNotFoundError, match=filename.replace(".", r"\.")):
        loader(tmp_path)


@pytest.mark.parametrize("loader,filename,fixture", LOADERS)
def test_folder_is_accepted(tmp_path, loader, filename, fixture):
    (tmp_path / filename).symlink_to(fixture.resolve())
    model = loader(tmp_path)
    assert not any(p.is_meta for p in model.parameters())


@pytest.mark.parametrize(
    "loader,wrong,missing,unexpected",
    [
        (load_umt5_encoder_from_original, VAE_FILE, "token_embedding.weight", "encoder.conv1.weight"),
        (load_umt5_encoder_from_original, CLIP_FILE, "token_embedding.weight", "visual.cls_embedding"),
        (load_clip_vision_from_original, T5_FILE, "visual.patch_embedding.weight", "token_embedding.weight"),
        (load_clip_vision_from_original, VAE_FILE, "visual.patch_embedding.weight", "encoder.conv1.weight"),
        (load_vae_from_original, T5_FILE, "encoder.conv1.weight", "token_embedding.weight"),
        (load_vae_from_original, CLIP_FILE, "encoder.conv1.weight", "visual.cls_embedding"),
    ],
)
def test_wrong_checkpoint_layout(loader, wrong, missing, unexpected):
    with pytest.raises(ValueError, match="Missing keys") as e:
        loader(wrong)
    msg = str(e.value)
    assert repr(missing) in msg and "Unexpected keys" in msg and repr(unexpected) in msg


def test_incomplete_or_extended_checkpoint(tmp_path):
    sd = torch.load(T5_FILE, map_location="cpu", weights_only=True)
    broken = dict(sd)
    del broken["blocks.1.ffn.fc2.weight"]
    torch.save(broken, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"Missing keys.*encoder\.block\.1\.layer\.1\.DenseReluDense\.wo\.weight"):
        load_umt5_encoder_from_original(tmp_path / "missing.pth")

    torch.save({**sd, "blocks.0.attn.extra": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"Unexpected keys.*blocks\.0\.attn\.extra"):
        load_umt5_encoder_from_original(tmp_path / "extra.pth")

    vae_sd = torch.load(VAE_FILE, map_location="cpu", weights_only=True)
    del vae_sd["decoder.upsamples.3.shortcut.weight"]
    torch.save(vae_sd, tmp_path / "vae.pth")
    with pytest.raises(ValueError, match=r"Missing keys.*decoder\.up_blocks\.1\.resnets\.0\.conv_shortcut\.weight"):
        load_vae_from_original(tmp_path / "vae.pth")

    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state dict"):
        load_umt5_encoder_from_original(tmp_path / "list.pth")


# --------------------------------------------------------------------------------------------------------------------
# tokenizers
# --------------------------------------------------------------------------------------------------------------------


def _save_toy_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2, "hello": 3, "world": 4}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    wrapped.save_pretrained(folder)


def test_umt5_tokenizer_from_wan_folder_or_subfolder(tmp_path):
    _save_toy_tokenizer(tmp_path / "google" / "umt5-xxl")
    for folder in (tmp_path, tmp_path / "google" / "umt5-xxl"):
        tok = load_umt5_tokenizer(folder)
        assert tok("hello world").input_ids[:2] == [3, 4]


def test_tokenizer_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        load_umt5_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_tokenizer(tmp_path / "nope")
