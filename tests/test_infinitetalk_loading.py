"""WanInfiniteTalkPipeline.from_original on tiny copies of the downloads: MeiGen-AI/InfiniteTalk's adapter files on the
Wan2.1-I2V folder, full `--dit_path` checkpoints, the quantised `quant_models/` files, and the errors for missing
ones."""

import json
import shutil

import pytest
import torch

from diffusers_multitalk import WanInfiniteTalkPipeline
from diffusers_multitalk.loaders.infinitetalk import (
    infinitetalk_problems,
    load_infinitetalk_transformer,
    save_quantized_infinitetalk_transformer,
)
from diffusers_multitalk.loaders.transformer_original import convert_multitalk_transformer_to_original
from diffusers_multitalk.testing import write_tiny_infinitetalk_folders
from diffusers_multitalk.tiny import make_tiny_components


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_tiny_infinitetalk_folders(tmp_path_factory.mktemp("downloads"), seed=0)


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_components(0)


def assert_same_weights(model, reference):
    got, expected = model.state_dict(), reference.state_dict()
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def _video_latents(pipe):
    video = (torch.rand(12, 64, 96, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    embedding = torch.randn(12, 2, 32, generator=torch.Generator().manual_seed(1))
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        video=video, audio=[embedding], prompt="a person talks", height=64, width=96, num_frames=9, motion_frames=5,
        num_inference_steps=1, output_type="latent", generator=torch.Generator().manual_seed(0),
    ).frames  # fmt: skip


@pytest.mark.parametrize("variant", ["single/infinitetalk.safetensors", "multi/infinitetalk.safetensors", ""])
def test_adapter_file_on_the_wan_folder(folders, tiny, variant):
    # "" = the InfiniteTalk/ folder itself, which means its single/ file
    pipe = WanInfiniteTalkPipeline.from_original(
        folders["wan_dir"], folders["infinitetalk_dir"] / variant, folders["wav2vec_dir"], torch_dtype=torch.float32
    )
    assert isinstance(pipe, WanInfiniteTalkPipeline)
    assert_same_weights(pipe.transformer, tiny["transformer"])
    if variant.startswith("single"):
        expected = _video_latents(WanInfiniteTalkPipeline(**make_tiny_components(0)))
        for got, want in zip(_video_latents(pipe), expected):
            assert torch.equal(got, want)


def test_the_adapter_file_wins_over_the_shards(folders, tiny, tmp_path):
    # The reference merges the Wan shards, then the adapter file, into one state dict: a key in both comes from the
    # adapter. Here the adapter also carries a changed `head.head.weight`.
    from safetensors.torch import load_file, save_file

    adapter = load_file(folders["infinitetalk_dir"] / "single" / "infinitetalk.safetensors")
    head = tiny["transformer"].state_dict()["proj_out.weight"]
    adapter["head.head.weight"] = head + 1
    path = tmp_path / "infinitetalk.safetensors"
    save_file(adapter, str(path))
    model = load_infinitetalk_transformer(folders["wan_dir"], path, torch_dtype=torch.float32)
    assert torch.equal(model.state_dict()["proj_out.weight"], head + 1)


def test_a_linked_multitalk_index_is_not_followed(folders, tiny, tmp_path):
    # MultiTalk's README links its index (naming multitalk.safetensors) into the Wan folder; InfiniteTalk loads the
    # Wan shards and its own file, so neither the index nor multitalk.safetensors matter.
    wan_dir = tmp_path / "Wan2.1-I2V-14B-480P"
    shutil.copytree(folders["wan_dir"], wan_dir)
    multitalk_index = folders["wan_dir"].parent / "MeiGen-MultiTalk" / "diffusion_pytorch_model.safetensors.index.json"
    shutil.copyfile(multitalk_index, wan_dir / "diffusion_pytorch_model.safetensors.index.json")
    assert infinitetalk_problems(wan_dir, folders["infinitetalk_dir"], folders["wav2vec_dir"]) == []
    model = load_infinitetalk_transformer(wan_dir, folders["infinitetalk_dir"], torch_dtype=torch.float32)
    assert_same_weights(model, tiny["transformer"])


@pytest.mark.parametrize("wrapped", [True, False])
def test_dit_path_full_checkpoint(folders, tiny, tmp_path, wrapped):
    state_dict = convert_multitalk_transformer_to_original(tiny["transformer"].state_dict())
    path = tmp_path / "infinitetalk_dit.pth"
    torch.save({"state_dict": state_dict} if wrapped else state_dict, path)
    # The Wan folder's own DiT shards are not needed with a full checkpoint.
    wan_dir = tmp_path / "Wan2.1-I2V-14B-480P"
    shutil.copytree(folders["wan_dir"], wan_dir, ignore=shutil.ignore_patterns("diffusion_pytorch_model*"))
    pipe = WanInfiniteTalkPipeline.from_original(wan_dir, None, folders["wav2vec_dir"], dit_path=path)
    assert_same_weights(pipe.transformer, tiny["transformer"])


def test_dit_path_that_is_not_a_checkpoint(folders, tmp_path):
    path = tmp_path / "notes.pth"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, path)
    with pytest.raises(ValueError, match="not a DiT checkpoint: the reference's --dit_path files hold"):
        load_infinitetalk_transformer(folders["wan_dir"], dit_path=path)
    with pytest.raises(FileNotFoundError, match="does not exist: it is a full `torch.save` checkpoint"):
        load_infinitetalk_transformer(folders["wan_dir"], dit_path=tmp_path / "missing.pth")


def test_missing_files_are_named_with_the_download_command(folders, tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        WanInfiniteTalkPipeline.from_original(folders["wan_dir"], tmp_path / "InfiniteTalk", folders["wav2vec_dir"])
    message = str(error.value)
    assert str(tmp_path / "InfiniteTalk" / "single" / "infinitetalk.safetensors") in message
    assert "huggingface-cli download MeiGen-AI/InfiniteTalk --include 'single/*'" in message

    with pytest.raises(FileNotFoundError, match="InfiniteTalk weights are not given: pass infinitetalk_file"):
        WanInfiniteTalkPipeline.from_original(folders["wan_dir"], None, folders["wav2vec_dir"])

    wan_dir = tmp_path / "Wan2.1-I2V-14B-480P"
    shutil.copytree(folders["wan_dir"], wan_dir)
    (wan_dir / "Wan2.1_VAE.pth").unlink()
    shard = sorted(wan_dir.glob("diffusion_pytorch_model-*.safetensors"))[0]
    shard.unlink()
    problems = "\n".join(infinitetalk_problems(wan_dir, folders["infinitetalk_dir"], tmp_path / "no-wav2vec"))
    assert "Wan2.1_VAE.pth is missing" in problems and "huggingface-cli download Wan-AI/Wan2.1-I2V-14B-480P" in problems
    assert shard.name in problems
    assert "wav2vec2 folder" in problems
    assert "multitalk" not in problems.lower()  # InfiniteTalk does not need MultiTalk's file


def test_a_plain_wan_file_as_adapter_is_refused(folders):
    shard = sorted(folders["wan_dir"].glob("diffusion_pytorch_model-*.safetensors"))[0]
    with pytest.raises(ValueError, match="holds no audio weights .* not InfiniteTalk's infinitetalk.safetensors"):
        load_infinitetalk_transformer(folders["wan_dir"], shard)


# ------------------------------------------------------------------------------------------------------------------
# Quantised files (optimum-quanto)
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quant_files(folders, tiny):
    pytest.importorskip("optimum.quanto")
    from diffusers_multitalk.loaders.quantized import quantize_model

    files = {}
    for quant in ("int8", "fp8"):
        model = quantize_model(load_infinitetalk_transformer(folders["wan_dir"], folders["infinitetalk_dir"]), quant)
        root = folders["infinitetalk_dir"].parent / f"InfiniteTalk-{quant}"
        files[quant] = (model, *save_quantized_infinitetalk_transformer(model, root, quant))
    return files


@pytest.mark.parametrize("quant", ["int8", "fp8"])
def test_quantised_files_as_the_reference_names_them(folders, quant_files, quant, tmp_path):
    model, checkpoint, map_path = quant_files[quant]
    assert checkpoint.name == f"infinitetalk_single_{quant}.safetensors"
    assert map_path.name == f"infinitetalk_single_{quant}.json" and "blocks.0.self_attn.q" in json.load(open(map_path))
    # The DiT shards are not needed: the quantised file holds every DiT weight.
    wan_dir = tmp_path / "Wan2.1-I2V-14B-480P"
    shutil.copytree(folders["wan_dir"], wan_dir, ignore=shutil.ignore_patterns("diffusion_pytorch_model*"))
    for quant_path in (checkpoint, checkpoint.parent.parent):  # the file (the reference's --quant_dir) or the folder
        pipe = WanInfiniteTalkPipeline.from_original(
            wan_dir, None, folders["wav2vec_dir"], quant=quant, quant_path=quant_path
        )
        state, expected = pipe.transformer.state_dict(), model.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k].dequantize() if hasattr(state[k], "dequantize") else state[k],
                               expected[k].dequantize() if hasattr(expected[k], "dequantize") else expected[k])
                   for k in expected)  # fmt: skip


def test_quantised_map_missing_is_named(folders, quant_files, tmp_path):
    _, checkpoint, _ = quant_files["int8"]
    lonely = tmp_path / "quant_models" / checkpoint.name
    lonely.parent.mkdir()
    shutil.copyfile(checkpoint, lonely)
    with pytest.raises(FileNotFoundError) as error:
        WanInfiniteTalkPipeline.from_original(
            folders["wan_dir"], None, folders["wav2vec_dir"], quant="int8", quant_path=lonely
        )
    assert "infinitetalk_single_int8.json is missing (--quant int8)" in str(error.value)
    assert "huggingface-cli download MeiGen-AI/InfiniteTalk --include 'quant_models/infinitetalk_single_int8*'" in str(
        error.value
    )
    with pytest.raises(ValueError, match="needs quant='int8' or 'fp8'"):
        WanInfiniteTalkPipeline.from_original(folders["wan_dir"], None, folders["wav2vec_dir"], quant_path=lonely)


def test_lora_on_the_downloaded_weights(folders, tmp_path):
    from safetensors.torch import save_file

    # A LoRA in Wan trainers' naming on every block's self-attention query.
    tiny = make_tiny_components(0)["transformer"]
    dim = tiny.config.num_attention_heads * tiny.config.attention_head_dim
    g = torch.Generator().manual_seed(0)
    lora = {}
    for i in range(tiny.config.num_layers):
        lora[f"diffusion_model.blocks.{i}.self_attn.q.lora_down.weight"] = torch.randn(2, dim, generator=g) * 0.5
        lora[f"diffusion_model.blocks.{i}.self_attn.q.lora_up.weight"] = torch.randn(dim, 2, generator=g) * 0.5
    path = tmp_path / "wan_lora.safetensors"
    save_file(lora, str(path))
    pipe = WanInfiniteTalkPipeline.from_original(
        folders["wan_dir"], folders["infinitetalk_dir"], folders["wav2vec_dir"], lora_path=path, lora_scale=0.5
    )
    assert "infinitetalk_lora" in pipe.transformer.blocks[0].attn1.to_q.lora_A
    with_lora = _video_latents(pipe)
    pipe.set_adapters(["infinitetalk_lora"], [0.0])
    without = _video_latents(pipe)
    assert not torch.allclose(with_lora[0], without[0], atol=1e-4)
    expected = _video_latents(WanInfiniteTalkPipeline(**make_tiny_components(0)))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(without, expected))


def test_save_pretrained_round_trip(tmp_path):
    from diffusers import DiffusionPipeline

    from diffusers_multitalk import make_tiny_pipeline

    pipe = make_tiny_pipeline(0, pipeline_class=WanInfiniteTalkPipeline)
    pipe.save_pretrained(tmp_path / "tiny-infinitetalk")
    assert (
        json.load(open(tmp_path / "tiny-infinitetalk" / "model_index.json"))["_class_name"] == "WanInfiniteTalkPipeline"
    )
    for loader in (WanInfiniteTalkPipeline, DiffusionPipeline):
        back = loader.from_pretrained(tmp_path / "tiny-infinitetalk")
        assert type(back) is WanInfiniteTalkPipeline
        assert_same_weights(back.transformer, pipe.transformer)
