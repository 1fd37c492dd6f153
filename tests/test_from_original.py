"""`WanMultiTalkPipeline.from_original` on the tiny pipeline written in the official folder layouts
(`diffusers_multitalk.testing`), and the diffusers -> Wan key conversions those folders are written with."""

import json
import os
import re

import pytest
import torch
from safetensors import safe_open

from diffusers_multitalk import WanMultiTalkPipeline
from diffusers_multitalk.loaders import transformer_original, wan_checkpoint, wan_clip
from diffusers_multitalk.loaders.original_folders import (
    WAN_CLIP_CHECKPOINT,
    WAN_T5_CHECKPOINT,
    WAN_VAE_CHECKPOINT,
    check_original_folders,
)
from diffusers_multitalk.loaders.wan_clip import (
    convert_clip_vision_to_original,
    convert_wan_clip_visual_state_dict,
    load_clip_vision_from_original,
)
from diffusers_multitalk.loaders.wan_umt5 import (
    convert_umt5_encoder_to_original,
    convert_wan_t5_state_dict,
    load_umt5_encoder_from_original,
)
from diffusers_multitalk.loaders.wan_vae import (
    convert_vae_to_original,
    convert_wan_vae_state_dict,
    load_vae_from_original,
)
from diffusers_multitalk.testing import tiny_generation_latents as generate
from diffusers_multitalk.testing import write_tiny_original_folders
from diffusers_multitalk.tiny import TINY_IMAGE_DIM, make_tiny_components


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "wan_components_tiny")
MODULES = ("text_encoder", "image_encoder", "transformer", "vae", "audio_encoder")
INDEX = "diffusion_pytorch_model.safetensors.index.json"


def link_like_multitalk_readme(wan_dir, multitalk_dir):
    """MultiTalk README, step 2: keep Wan's index as ..._old, link MultiTalk's index and weights into the Wan folder."""
    os.rename(wan_dir / INDEX, wan_dir / (INDEX + "_old"))
    os.symlink((multitalk_dir / INDEX).resolve(), wan_dir / INDEX)
    os.symlink((multitalk_dir / "multitalk.safetensors").resolve(), wan_dir / "multitalk.safetensors")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_tiny_original_folders(tmp_path_factory.mktemp("original"), seed=0)


@pytest.fixture(scope="module")
def reference():
    return make_tiny_components(seed=0)


@pytest.fixture(scope="module")
def reference_latents(reference):
    return generate(WanMultiTalkPipeline(**reference))


# --------------------------------------------------------------------------------------------------------------------
# the written folders
# --------------------------------------------------------------------------------------------------------------------
def _keys(path):
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def test_folders_have_the_release_layout(folders):
    wan, multitalk, wav2vec = folders["wan_dir"], folders["multitalk_dir"], folders["wav2vec_dir"]
    assert (wan.name, multitalk.name, wav2vec.name) == (
        "Wan2.1-I2V-14B-480P",
        "MeiGen-MultiTalk",
        "chinese-wav2vec2-base",
    )
    shards = [
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
    ]
    for name in [
        "config.json",
        INDEX,
        *shards,
        WAN_T5_CHECKPOINT,
        WAN_CLIP_CHECKPOINT,
        WAN_VAE_CHECKPOINT,
        "google/umt5-xxl/tokenizer.json",
    ]:
        assert (wan / name).is_file(), name
    assert sorted(os.listdir(multitalk)) == sorted([INDEX, "multitalk.safetensors"])
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(os.listdir(wav2vec))

    # Wan's index covers its shards; MultiTalk's index covers every key, audio ones in multitalk.safetensors.
    wan_map = json.load(open(wan / INDEX))["weight_map"]
    full_map = json.load(open(multitalk / INDEX))["weight_map"]
    audio_keys = _keys(multitalk / "multitalk.safetensors")
    assert set(wan_map.values()) == set(shards)
    for shard in shards:
        assert _keys(wan / shard) == {k for k, v in wan_map.items() if v == shard}
    assert full_map == {**wan_map, **dict.fromkeys(audio_keys, "multitalk.safetensors")}
    assert audio_keys and all(
        re.match(r"audio_proj\.|blocks\.\d+\.(audio_cross_attn|norm_x)\.", k) for k in audio_keys
    ), sorted(audio_keys)
    assert not any("audio" in k or "norm_x" in k for k in wan_map)
    assert {"patch_embedding.weight", "head.modulation", "blocks.0.self_attn.q.weight", "img_emb.proj.0.weight"} <= set(
        wan_map
    )

    config = json.load(open(wan / "config.json"))
    assert config["model_type"] == "i2v" and config["dim"] == 48 and config["num_heads"] == 2
    assert (config["audio_layers"], config["audio_channels"]) == (2, 32)  # differ from chinese-wav2vec2-base's 12 x 768

    t5 = torch.load(wan / WAN_T5_CHECKPOINT, weights_only=True, mmap=True)
    assert {"token_embedding.weight", "norm.weight", "blocks.1.pos_embedding.embedding.weight"} <= set(t5)
    clip = torch.load(wan / WAN_CLIP_CHECKPOINT, weights_only=True, mmap=True)
    assert {"log_scale", "visual.head", "visual.cls_embedding", "textual.token_embedding.weight"} <= set(clip)
    assert clip["visual.cls_embedding"].shape == (1, 1, TINY_IMAGE_DIM)
    vae = torch.load(wan / WAN_VAE_CHECKPOINT, weights_only=True, mmap=True)
    assert {"conv1.weight", "encoder.downsamples.0.residual.0.gamma", "decoder.upsamples.0.residual.2.weight"} <= set(
        vae
    )


def test_wan_config_gives_the_tiny_transformer_config(folders, reference):
    wan = folders["wan_dir"]
    shapes = transformer_original._tensor_shapes(
        [wan / n for n in sorted(set(json.load(open(wan / INDEX))["weight_map"].values()))]
        + [folders["multitalk_dir"] / "multitalk.safetensors"]
    )
    config = transformer_original.multitalk_config_from_original(json.load(open(wan / "config.json")), shapes)
    expected = dict(reference["transformer"].config)
    assert {k: expected[k] for k in config} == config


def test_clip_head_table_names_the_tiny_tower(reference):
    # The tiny width is in the explicit table of known towers, so `from_original` needs no head count.
    assert wan_clip._KNOWN_VIT_HEADS[TINY_IMAGE_DIM] == reference["image_encoder"].config.num_attention_heads


# --------------------------------------------------------------------------------------------------------------------
# from_original
# --------------------------------------------------------------------------------------------------------------------
def assert_same_components(pipe, reference):
    for name in MODULES:
        got, want = getattr(pipe, name).state_dict(), reference[name].state_dict()
        assert set(got) == set(want), name
        for key in want:
            assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), f"{name}.{key}"
    text = "Hello world, a person talks!"
    assert pipe.tokenizer(text).input_ids == reference["tokenizer"](text).input_ids
    assert dict(pipe.scheduler.config) == dict(reference["scheduler"].config)
    assert pipe.audio_feature_extractor.to_dict() == reference["audio_feature_extractor"].to_dict()
    for name in ("vae", "transformer"):
        got, want = dict(getattr(pipe, name).config), dict(reference[name].config)
        assert {k: v for k, v in got.items() if not k.startswith("_")} == {
            k: v for k, v in want.items() if not k.startswith("_")
        }, name


def test_from_original_equals_the_tiny_components(folders, reference, reference_latents):
    pipe = WanMultiTalkPipeline.from_original(**folders)
    assert_same_components(pipe, reference)
    latents = generate(pipe)
    assert latents.shape == (1, 16, 2, 8, 12)
    assert torch.equal(latents, reference_latents), (latents - reference_latents).abs().max()


@pytest.mark.parametrize("pass_multitalk_dir", [True, False])
def test_from_original_with_multitalk_linked_into_wan_dir(tmp_path, reference, reference_latents, pass_multitalk_dir):
    folders = write_tiny_original_folders(tmp_path, seed=0)
    link_like_multitalk_readme(folders["wan_dir"], folders["multitalk_dir"])
    multitalk_dir = folders["multitalk_dir"] if pass_multitalk_dir else None
    pipe = WanMultiTalkPipeline.from_original(folders["wan_dir"], multitalk_dir, folders["wav2vec_dir"])
    assert_same_components(pipe, reference)
    assert torch.equal(generate(pipe), reference_latents)


def test_other_seeds_give_other_weights(tmp_path, reference):
    pipe = WanMultiTalkPipeline.from_original(**write_tiny_original_folders(tmp_path, seed=1))
    assert_same_components(pipe, make_tiny_components(seed=1))
    assert not torch.equal(pipe.transformer.proj_out.weight, reference["transformer"].proj_out.weight)


# --------------------------------------------------------------------------------------------------------------------
# missing files: named, with the download command, before anything heavy loads
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def nothing_heavy(monkeypatch):
    def heavy(*args, **kwargs):
        raise AssertionError("a checkpoint was loaded before the missing file was reported")

    monkeypatch.setattr(torch, "load", heavy)
    monkeypatch.setattr(transformer_original, "_load_shards", heavy)
    monkeypatch.setattr("transformers.Wav2Vec2Model.from_pretrained", heavy)


MISSING = [
    ("wan_dir", WAN_T5_CHECKPOINT, "huggingface-cli download Wan-AI/Wan2.1-I2V-14B-480P"),
    ("wan_dir", WAN_CLIP_CHECKPOINT, "huggingface-cli download Wan-AI/Wan2.1-I2V-14B-480P"),
    ("wan_dir", WAN_VAE_CHECKPOINT, "huggingface-cli download Wan-AI/Wan2.1-I2V-14B-480P"),
    ("wan_dir", "config.json", "huggingface-cli download Wan-AI/Wan2.1-I2V-14B-480P"),
    (
        "wan_dir",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
        "huggingface-cli download Wan-AI/Wan2.1-I2V-14B-480P",
    ),
    ("multitalk_dir", "multitalk.safetensors", "huggingface-cli download MeiGen-AI/MeiGen-MultiTalk"),
    ("wav2vec_dir", "config.json", "huggingface-cli download TencentGameMate/chinese-wav2vec2-base"),
]


@pytest.mark.parametrize("folder, name, command", MISSING, ids=[f"{f}/{n}" for f, n, _ in MISSING])
def test_missing_file_is_named_before_loading(tmp_path, nothing_heavy, folder, name, command):
    folders = write_tiny_original_folders(tmp_path, seed=0)
    os.remove(folders[folder] / name)
    with pytest.raises(FileNotFoundError) as err:
        WanMultiTalkPipeline.from_original(**folders)
    assert name in str(err.value) and command in str(err.value)


MISSING_LATE = [("wan_dir", "google/umt5-xxl/tokenizer.json"), ("wav2vec_dir", "model.safetensors")]
NAMED_AS = {"google/umt5-xxl/tokenizer.json": "umT5 tokenizer", "model.safetensors": "no weights (model.safetensors)"}


@pytest.mark.parametrize("folder, name", MISSING_LATE)
def test_late_checked_files_are_named_before_loading(tmp_path, nothing_heavy, folder, name):
    """Files the loaders would only miss after the DiT has loaded are reported up front, all at once."""
    folders = write_tiny_original_folders(tmp_path, seed=0)
    os.remove(folders[folder] / name)
    os.remove(folders["wan_dir"] / "Wan2.1_VAE.pth")
    with pytest.raises(FileNotFoundError) as err:
        WanMultiTalkPipeline.from_original(**folders)
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and "Wan2.1_VAE.pth" in lines[0]
    assert NAMED_AS[name] in lines[1] and str(folders[folder]) in lines[1], lines
    assert "huggingface-cli download" in lines[1]


def test_check_original_folders_reports_every_missing_file(tmp_path):
    folders = write_tiny_original_folders(tmp_path, seed=0)
    assert check_original_folders(**folders) == []
    for folder, name, _ in MISSING + [(f, n, None) for f, n in MISSING_LATE]:
        os.remove(folders[folder] / name)
    problems = check_original_folders(**folders)
    assert len(problems) == len(MISSING) + len(MISSING_LATE), problems  # one line per missing file
    text = "\n".join(problems)
    for folder, name, command in MISSING:
        assert str(folders[folder] / name) in text and command in text
    assert "google/umt5-xxl" in text and "has no weights (model.safetensors)" in text
    without_multitalk = check_original_folders(folders["wan_dir"], None, folders["wav2vec_dir"])
    assert any("neither linked" in p and "MeiGen-AI/MeiGen-MultiTalk" in p for p in without_multitalk)


# --------------------------------------------------------------------------------------------------------------------
# diffusers -> Wan conversions
# --------------------------------------------------------------------------------------------------------------------
def _equal_dicts(a, b):
    return set(a) == set(b) and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def test_inverse_conversions_give_back_wans_fixture_files():
    """Wan's own tiny checkpoints (tests/fixtures) -> loaders -> convert_*_to_original: the same keys and tensors."""
    t5_file, clip_file, vae_file = (
        os.path.join(FIXTURES, n)
        for n in ("models_t5_umt5-tiny-enc.pth", "models_clip_tiny.pth", "Wan2.1_VAE_tiny.pth")
    )
    t5 = torch.load(t5_file, weights_only=True)
    assert _equal_dicts(convert_umt5_encoder_to_original(load_umt5_encoder_from_original(t5_file).state_dict()), t5)
    clip = torch.load(clip_file, weights_only=True)
    visual = {k: v for k, v in clip.items() if k.startswith("visual.") and k != "visual.head"}
    model = load_clip_vision_from_original(clip_file, num_attention_heads=2)
    assert _equal_dicts(convert_clip_vision_to_original(model.state_dict()), visual)
    vae = torch.load(vae_file, weights_only=True)
    assert _equal_dicts(convert_vae_to_original(load_vae_from_original(vae_file).state_dict()), vae)


def test_inverse_then_forward_is_the_identity(reference):
    """transformers/diffusers state dicts -> Wan names -> back: the same keys and tensors (the tiny components)."""
    t5 = reference["text_encoder"].state_dict()
    back = convert_wan_t5_state_dict(convert_umt5_encoder_to_original(t5))
    assert _equal_dicts(back, {k: v for k, v in t5.items() if k != "encoder.embed_tokens.weight"})
    clip = reference["image_encoder"].state_dict()
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in clip) else ""
    assert _equal_dicts(convert_wan_clip_visual_state_dict(convert_clip_vision_to_original(clip), prefix=prefix), clip)
    vae = reference["vae"].state_dict()
    assert _equal_dicts(convert_wan_vae_state_dict(convert_vae_to_original(vae)), vae)


def test_inverse_conversions_leave_their_input_alone(reference):
    for convert, name in (
        (convert_umt5_encoder_to_original, "text_encoder"),
        (convert_clip_vision_to_original, "image_encoder"),
        (convert_vae_to_original, "vae"),
    ):
        sd = reference[name].state_dict()
        keys = list(sd)
        convert(sd)
        assert list(sd) == keys, name


def test_inverse_conversions_reject_foreign_keys(reference):
    with pytest.raises(ValueError, match="Unexpected keys"):
        convert_umt5_encoder_to_original({**reference["text_encoder"].state_dict(), "lm_head.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="Unexpected keys"):
        convert_vae_to_original({**reference["vae"].state_dict(), "decoder.extra.weight": torch.zeros(1)})
    clip = reference["image_encoder"].state_dict()
    del clip[next(k for k in clip if k.endswith("self_attn.k_proj.weight"))]
    with pytest.raises(ValueError, match="k_proj"):
        convert_clip_vision_to_original(clip)
    tied = reference["text_encoder"].state_dict()
    tied["encoder.embed_tokens.weight"] = tied["encoder.embed_tokens.weight"] + 1
    with pytest.raises(ValueError, match="shared.weight"):
        convert_umt5_encoder_to_original(tied)


def test_rule_inversion():
    rules = [(re.compile(r"a\.(\d+)\.b\.(x|y)"), r"c.\2.d.\1")]
    ((pattern, repl),) = wan_checkpoint._invert_rules(rules)
    assert pattern.fullmatch("c.y.d.12").expand(repl) == "a.12.b.y"
    with pytest.raises(ValueError, match="cannot be inverted"):
        wan_checkpoint._invert_rules([(re.compile(r"a\.(\d+)"), "b")])
