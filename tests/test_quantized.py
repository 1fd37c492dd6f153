"""MultiTalk's optimum-quanto checkpoints (`--quant int8|fp8 --quant_dir <MeiGen-MultiTalk>`), on tiny models.

The quantised files are made here the way the reference's were: optimum-quanto's `quantize(model, weights=qint8)` +
`freeze` on a module tree with the ORIGINAL (Wan/MultiTalk) names, then `state_dict()` saved as safetensors and
`quantization_map()` as JSON, under the reference's names (`quant_models/dit_model_int8.safetensors`,
`dit_model_map_int8.json`, `t5_int8.safetensors`, `t5_map_int8.json`, `quant_model_int8_FusionX.safetensors`,
`quantization_map_int8_FusionX.json`). The tree is built from the original key names alone (a module with a 2-D
`weight` is a linear layer, except the T5 embeddings), so the loader's renaming is checked against an independent
source. The loaded model must equal our float model quantised directly with the same settings.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file


pytest.importorskip("optimum.quanto")
from optimum.quanto import QTensor, freeze, qfloat8, qint8, quantization_map, quantize  # noqa: E402
from optimum.quanto.nn import QLinear  # noqa: E402

import diffusers_multitalk.runtime.options  # noqa: E402,F401 - runtime.options in the tests
from diffusers_multitalk import WanMultiTalkPipeline, cli, runtime  # noqa: E402
from diffusers_multitalk.cli import CLIError  # noqa: E402
from diffusers_multitalk.loaders import quantized  # noqa: E402
from diffusers_multitalk.loaders.original_folders import WAN_T5_CHECKPOINT  # noqa: E402
from diffusers_multitalk.loaders.quantized import (  # noqa: E402
    QuantizedCheckpointError,
    load_quantized_multitalk_transformer,
    load_quantized_umt5_encoder,
    parameter_bytes,
    quantize_model,
    quantize_pipeline,
    save_quantized_multitalk_transformer,
)
from diffusers_multitalk.models.transformer_multitalk import MultiTalkTransformer3DModel  # noqa: E402
from diffusers_multitalk.testing import tiny_generation_latents as generate  # noqa: E402
from diffusers_multitalk.testing import write_tiny_original_folders
from diffusers_multitalk.tiny import make_tiny_components  # noqa: E402


FIXTURES = Path(__file__).parent / "fixtures"
WEIGHTS = FIXTURES / "dit_tiny_weights"  # the reference's own WanModel keys (tiny, random)
QTYPES = {"int8": qint8, "fp8": qfloat8}


# --------------------------------------------------------------------------------------------------------------------
# Making the reference's files
# --------------------------------------------------------------------------------------------------------------------
class _Node(torch.nn.Module):
    pass


def original_tree(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A module tree whose `state_dict()` has exactly the original keys: `nn.Linear` where the original model has a
    linear layer (a 2-D `weight`, not an embedding table), plain parameter holders elsewhere."""
    linear = {
        key[: -len(".weight")]
        for key, t in state_dict.items()
        if key.endswith(".weight")
        and t.ndim == 2
        and not key[: -len(".weight")].rsplit(".", 1)[-1].endswith("embedding")
    }
    root = _Node()
    for key, tensor in state_dict.items():
        path, _, leaf = key.rpartition(".")
        parent, parts = root, path.split(".") if path else []
        for i, part in enumerate(parts):
            name = ".".join(parts[: i + 1])
            if not hasattr(parent, part):
                if name in linear:
                    weight = state_dict[name + ".weight"]
                    module = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=f"{name}.bias" in state_dict)
                    module.to(weight.dtype)
                else:
                    module = _Node()
                parent.add_module(part, module)
            parent = getattr(parent, part)
        if isinstance(parent, torch.nn.Linear):
            getattr(parent, leaf).data = tensor.clone()
        else:
            parent.register_parameter(leaf, torch.nn.Parameter(tensor.clone(), requires_grad=False))
    assert set(root.state_dict()) == set(state_dict)
    return root


def write_reference_quant(state_dict, folder: Path, file_name: str, map_name: str, qtype) -> dict:
    """quantize + freeze the original-named tree, then save its state dict and quantization map (the reference's
    format). Returns the map."""
    tree = original_tree(state_dict)
    quantize(tree, weights=qtype)
    freeze(tree)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tree.state_dict().items()}, str(folder / file_name))
    qmap = quantization_map(tree)
    with open(folder / map_name, "w") as f:
        json.dump(qmap, f)
    return qmap


def fixture_dit_state_dict(dtype=torch.float32) -> dict[str, torch.Tensor]:
    sd = {}
    for name in ("diffusion_pytorch_model.safetensors", "multitalk.safetensors"):
        sd.update(load_file(WEIGHTS / name))
    return {k: v.to(dtype) for k, v in sd.items()}


def folder_dit_state_dict(wan_dir: Path, multitalk_dir: Path) -> dict[str, torch.Tensor]:
    sd = {}
    for path in [
        *sorted(wan_dir.glob("diffusion_pytorch_model-*.safetensors")),
        multitalk_dir / "multitalk.safetensors",
    ]:
        sd.update(load_file(path))
    return sd


# --------------------------------------------------------------------------------------------------------------------
# DiT forward on the reference's parity inputs
# --------------------------------------------------------------------------------------------------------------------
def _dit_inputs():
    return load_file(FIXTURES / "dit_single" / "inputs.safetensors"), load_file(
        FIXTURES / "dit_single" / "outputs.safetensors"
    )


def dit_forward(model, inputs, dtype=torch.float32):
    context = inputs["context"]
    context = torch.cat([context, context.new_zeros(16 - context.shape[0], context.shape[1])])[None]
    hidden = torch.cat([inputs["x"][None], inputs["y"]], dim=1)
    with torch.no_grad():
        return model(
            hidden.to(dtype),
            inputs["timestep"],
            context.to(dtype),
            inputs["clip_fea"].to(dtype),
            inputs["audio"][None].to(dtype),
            ref_target_masks=inputs["ref_target_masks"],
            return_dict=False,
        )[0].float()


@pytest.fixture(scope="module")
def float_dit():
    return MultiTalkTransformer3DModel.from_original(WEIGHTS, torch_dtype=torch.float32)


@pytest.fixture(scope="module")
def quant_dirs(tmp_path_factory):
    """The reference's DiT files for int8 and fp8 made from the fixture's original weights (float32)."""
    root = tmp_path_factory.mktemp("quant")
    dirs = {}
    for quant, qtype in QTYPES.items():
        folder = root / quant / "MeiGen-MultiTalk"
        write_reference_quant(
            fixture_dit_state_dict(), folder / "quant_models", *quantized.dit_quant_files(quant), qtype
        )
        dirs[quant] = folder
    return dirs


@pytest.mark.parametrize("quant", ["int8", "fp8"])
def test_loaded_dit_equals_quantising_our_float_model(quant, quant_dirs, float_dit):
    folder = quant_dirs[quant] / "quant_models"
    dit_file, map_file = quantized.dit_quant_files(quant)
    # the reference's format: original module names in the map, quanto's suffixes in the file
    qmap = json.load(open(folder / map_file))
    expected_weights = "qint8" if quant == "int8" else "qfloat8_e4m3fn"
    assert "blocks.0.self_attn.q" in qmap and "blocks.1.audio_cross_attn.kv_linear" in qmap and "head.head" in qmap
    assert all(v == {"weights": expected_weights, "activations": "none"} for v in qmap.values())
    stored = load_file(folder / dit_file)
    assert stored["blocks.0.self_attn.q.weight._data"].dtype == (torch.int8 if quant == "int8" else torch.float8_e4m3fn)
    assert "blocks.0.self_attn.q.weight._scale" in stored and "head.modulation" in stored

    model = load_quantized_multitalk_transformer(folder / dit_file, WEIGHTS / "config.json", quant=quant)
    qlinears = {n for n, m in model.named_modules() if isinstance(m, QLinear)}
    linears = {n for n, m in float_dit.named_modules() if isinstance(m, torch.nn.Linear)}
    assert qlinears == linears and len(qlinears) == len(qmap)
    assert all(isinstance(model.get_submodule(n).weight, QTensor) for n in qlinears)

    direct = quantize_model(MultiTalkTransformer3DModel.from_original(WEIGHTS, torch_dtype=torch.float32), quant)
    inputs, outputs = _dit_inputs()
    loaded_out, direct_out, float_out = (dit_forward(m, inputs) for m in (model, direct, float_dit))
    assert torch.equal(loaded_out, direct_out)
    # close to the float model (and to the reference's float output), but really quantised
    rel = ((loaded_out - float_out).norm() / float_out.norm()).item()
    limit = 0.02 if quant == "int8" else 0.1
    assert 1e-4 < rel < limit, rel
    assert ((loaded_out - outputs["out"]).norm() / outputs["out"].norm()).item() < limit
    print(f"\n{quant}: relative L2 error vs float {rel:.4f}, max abs {(loaded_out - float_out).abs().max():.4f}")


def test_parameter_bytes_shrink(quant_dirs):
    model = load_quantized_multitalk_transformer(
        quant_dirs["int8"] / "quant_models" / "dit_model_int8.safetensors", WEIGHTS, torch_dtype=torch.bfloat16
    )
    float_bf16 = MultiTalkTransformer3DModel.from_original(WEIGHTS, torch_dtype=torch.bfloat16)
    # each linear weight: from 2 bytes (4 in the float32-kept time embedder) to 1 byte per value, plus one scale
    # per output row and the two (unused) activation scales, in the weight's float dtype
    expected = 0
    for m in float_bf16.modules():
        if isinstance(m, torch.nn.Linear):
            size = m.weight.element_size()
            expected += m.weight.numel() * (size - 1) - m.weight.shape[0] * size - 2 * size
    assert parameter_bytes(float_bf16) - parameter_bytes(model) == expected
    assert parameter_bytes(model) < 0.6 * parameter_bytes(float_bf16)
    print(f"\nbf16 {parameter_bytes(float_bf16)} B -> int8 {parameter_bytes(model)} B")


def linears_in(model):
    return [m for m in model.modules() if isinstance(m, QLinear)]


def test_bfloat16_load_keeps_the_float32_modules(tmp_path):
    folders = write_tiny_original_folders(tmp_path / "orig", seed=0)
    sd = {
        k: v.to(torch.bfloat16) for k, v in folder_dit_state_dict(folders["wan_dir"], folders["multitalk_dir"]).items()
    }
    out = tmp_path / "MeiGen-MultiTalk" / "quant_models"
    write_reference_quant(sd, out, *quantized.dit_quant_files("int8"), qint8)
    assert load_file(out / "dit_model_int8.safetensors")["blocks.0.self_attn.q.weight._scale"].dtype == torch.bfloat16
    model = load_quantized_multitalk_transformer(
        out / "dit_model_int8.safetensors", folders["wan_dir"], torch_dtype=torch.bfloat16
    )
    params = dict(model.named_parameters())
    assert params["blocks.0.attn1.to_q.weight"].dtype == torch.bfloat16
    assert params["condition_embedder.time_embedder.linear_1.weight"].dtype == torch.float32  # kept float32
    assert isinstance(params["condition_embedder.time_embedder.linear_1.weight"], QTensor)
    assert (
        params["blocks.0.scale_shift_table"].dtype == torch.float32
        and params["patch_embedding.weight"].dtype == torch.bfloat16
    )
    # torch_dtype=None keeps the file's dtypes
    stored = load_quantized_multitalk_transformer(out / "dit_model_int8.safetensors", folders["wan_dir"])
    assert dict(stored.named_parameters())["condition_embedder.time_embedder.linear_1.weight"].dtype == torch.bfloat16

    direct = make_tiny_components(0)["transformer"].to(torch.bfloat16)
    quantize_model(direct, "int8")
    torch.manual_seed(0)
    hidden = torch.randn(1, 36, 2, 8, 8, dtype=torch.bfloat16)
    args = (
        hidden,
        torch.tensor([500.0]),
        torch.randn(1, 16, 32, dtype=torch.bfloat16),
        torch.randn(1, 257, 32, dtype=torch.bfloat16),
        torch.randn(1, 1, 5, 5, 2, 32, dtype=torch.bfloat16),
    )
    with torch.no_grad():
        a = model(*args, return_dict=False)[0].float()
        b = direct(*args, return_dict=False)[0].float()
    assert torch.isfinite(a).all()
    assert ((a - b).norm() / b.norm()).item() < 0.02


def test_writer_produces_the_reference_files(quant_dirs, tmp_path):
    model = quantize_model(MultiTalkTransformer3DModel.from_original(WEIGHTS, torch_dtype=torch.float32), "int8")
    ckpt, map_path = save_quantized_multitalk_transformer(model, tmp_path / "MeiGen-MultiTalk", "int8")
    assert (ckpt.name, map_path.name) == ("dit_model_int8.safetensors", "dit_model_map_int8.json")
    reference = load_file(quant_dirs["int8"] / "quant_models" / "dit_model_int8.safetensors")
    written = load_file(ckpt)
    assert set(written) == set(reference)
    assert all(torch.equal(written[k], reference[k]) for k in reference)
    assert json.load(open(map_path)) == json.load(open(quant_dirs["int8"] / "quant_models" / "dit_model_map_int8.json"))
    # FusionX naming round trip: the loader finds the map by the reference's names
    ckpt, map_path = save_quantized_multitalk_transformer(
        model, tmp_path / "M2", "int8", name="quant_model_int8_FusionX"
    )
    assert map_path.name == "quantization_map_int8_FusionX.json"
    assert quantized.find_quantization_map(ckpt, "int8") == map_path


def test_quantised_umt5_equals_quantising_ours(tmp_path):
    folders = write_tiny_original_folders(tmp_path / "orig", seed=0)
    t5_sd = torch.load(folders["wan_dir"] / WAN_T5_CHECKPOINT, weights_only=True)
    out = tmp_path / "MeiGen-MultiTalk" / "quant_models"
    qmap = write_reference_quant(t5_sd, out, *quantized.t5_quant_files("int8"), qint8)
    assert "blocks.0.attn.q" in qmap and "blocks.0.ffn.gate.0" in qmap and "token_embedding" not in qmap
    model = load_quantized_umt5_encoder(out / "t5_int8.safetensors", quant="int8")
    assert model.encoder.embed_tokens.weight is model.shared.weight
    direct = quantize_model(make_tiny_components(0)["text_encoder"], "int8")
    ids = torch.tensor([[5, 9, 3, 1, 0, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        a = model(ids, attention_mask=mask).last_hidden_state
        b = direct(ids, attention_mask=mask).last_hidden_state
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------------
def _copy_quant(quant_dirs, tmp_path, quant="int8") -> Path:
    folder = tmp_path / "MeiGen-MultiTalk"
    shutil.copytree(quant_dirs[quant], folder)
    return folder / "quant_models"


def test_missing_map_and_checkpoint_are_named(quant_dirs, tmp_path):
    folder = _copy_quant(quant_dirs, tmp_path)
    (folder / "dit_model_map_int8.json").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"dit_model_map_int8\.json.*huggingface-cli download MeiGen-AI/MeiGen-MultiTalk"
    ):
        load_quantized_multitalk_transformer(folder / "dit_model_int8.safetensors", WEIGHTS, quant="int8")
    with pytest.raises(FileNotFoundError, match=r"dit_model_fp8\.safetensors is missing"):
        load_quantized_multitalk_transformer(folder / "dit_model_fp8.safetensors", WEIGHTS, map_path=folder / "x.json")
    with pytest.raises(FileNotFoundError, match=r"config\.json is missing"):
        load_quantized_multitalk_transformer(
            quant_dirs["int8"] / "quant_models" / "dit_model_int8.safetensors", tmp_path, quant="int8"
        )


def _edit_map(folder: Path, edit) -> None:
    path = folder / "dit_model_map_int8.json"
    qmap = json.load(open(path))
    edit(qmap)
    json.dump(qmap, open(path, "w"))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.pop("blocks.0.self_attn.q"), r"disagree on which layers are quantised"),
        (
            lambda m: m.__setitem__("blocks.0.norm3", {"weights": "qint8", "activations": "none"}),
            r"not quantisable layers.*blocks\.0\.norm3 \(FP32LayerNorm\)",
        ),
        (
            lambda m: m.__setitem__("blocks.0.wrong_name", {"weights": "qint8", "activations": "none"}),
            r"module names that are not .*blocks\.0\.wrong_name",
        ),
        (
            lambda m: m.__setitem__("head.head", {"weights": "qfloat8_e4m3fn", "activations": "none"}),
            r"holds qfloat8_e4m3fn weights, not int8",
        ),
        (lambda m: m.__setitem__("head.head", {"weights": "qint4", "activations": "none"}), r"qint4.*not supported"),
    ],
    ids=["module-missing-from-map", "norm-in-map", "unknown-name", "fp8-map-for-int8", "int4"],
)
def test_mismatched_map_fails_clearly(quant_dirs, tmp_path, edit, match):
    folder = _copy_quant(quant_dirs, tmp_path)
    _edit_map(folder, edit)
    with pytest.raises(QuantizedCheckpointError, match=match):
        load_quantized_multitalk_transformer(folder / "dit_model_int8.safetensors", WEIGHTS, quant="int8")


def test_wrong_files_fail_clearly(quant_dirs, tmp_path):
    folder = _copy_quant(quant_dirs, tmp_path)
    # an fp8 file asked for as int8
    with pytest.raises(QuantizedCheckpointError, match="not int8"):
        load_quantized_multitalk_transformer(
            quant_dirs["fp8"] / "quant_models" / "dit_model_fp8.safetensors", WEIGHTS, quant="int8"
        )
    # a float checkpoint is not a quantised one
    with pytest.raises(QuantizedCheckpointError, match="holds no quantised weights"):
        load_quantized_multitalk_transformer(
            WEIGHTS / "multitalk.safetensors", WEIGHTS, map_path=folder / "dit_model_map_int8.json"
        )
    # a config that does not fit the weights
    config = json.load(open(WEIGHTS / "config.json"))
    with pytest.raises(QuantizedCheckpointError, match="mis-shaped|missing"):
        load_quantized_multitalk_transformer(
            folder / "dit_model_int8.safetensors", dict(config, ffn_dim=128), quant="int8"
        )
    with pytest.raises(ValueError, match="int8"):
        load_quantized_multitalk_transformer(folder / "dit_model_int8.safetensors", WEIGHTS, quant="int4")


def test_missing_optimum_quanto_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "optimum.quanto", None)
    with pytest.raises(ImportError, match=r'pip install "diffusers-multitalk\[quant\]"'):
        quantized.require_optimum_quanto()
    with pytest.raises(ImportError, match="optimum-quanto"):
        load_quantized_multitalk_transformer("x.safetensors", WEIGHTS)


# --------------------------------------------------------------------------------------------------------------------
# The pipeline and the CLI
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quant_folders(tmp_path_factory):
    """The tiny official folders plus MeiGen-MultiTalk's quant_models/ (DiT, FusionX-named DiT, umT5; int8)."""
    folders = write_tiny_original_folders(tmp_path_factory.mktemp("pipe"), seed=0)
    out = folders["multitalk_dir"] / "quant_models"
    dit = folder_dit_state_dict(folders["wan_dir"], folders["multitalk_dir"])
    write_reference_quant(dit, out, *quantized.dit_quant_files("int8"), qint8)
    write_reference_quant(dit, out, *quantized.fusionx_quant_files("int8"), qint8)
    t5 = torch.load(folders["wan_dir"] / WAN_T5_CHECKPOINT, weights_only=True)
    write_reference_quant(t5, out, *quantized.t5_quant_files("int8"), qint8)
    return folders


@pytest.fixture(scope="module")
def quantised_reference_latents():
    pipe = WanMultiTalkPipeline(**make_tiny_components(seed=0))
    quantize_pipeline(pipe, "int8")
    return generate(pipe)


def test_pipeline_from_quant_files_needs_no_float_dit(quant_folders, quantised_reference_latents, tmp_path):
    # a Wan folder without DiT shards, multitalk.safetensors or umT5 .pth: the quantised files replace them
    wan = tmp_path / "Wan2.1-I2V-14B-480P"
    shutil.copytree(quant_folders["wan_dir"], wan)
    for path in [*wan.glob("diffusion_pytorch_model*"), wan / WAN_T5_CHECKPOINT]:
        path.unlink()
    pipe = WanMultiTalkPipeline.from_original(
        wan,
        None,
        quant_folders["wav2vec_dir"],
        torch_dtype=torch.float32,
        quant="int8",
        quant_dir=quant_folders["multitalk_dir"],
    )
    assert linears_in(pipe.transformer) and any(isinstance(m, QLinear) for m in pipe.text_encoder.modules())
    latents = generate(pipe)
    assert torch.equal(latents, quantised_reference_latents)

    # missing quantised files are named with the download command
    with pytest.raises(
        FileNotFoundError,
        match=r"dit_model_fp8\.safetensors is missing \(--quant fp8\).*huggingface-cli download MeiGen-AI/MeiGen-MultiTalk",
    ):
        WanMultiTalkPipeline.from_original(
            wan, None, quant_folders["wav2vec_dir"], quant="fp8", quant_dir=quant_folders["multitalk_dir"]
        )
    with pytest.raises(FileNotFoundError, match=r"--quant_dir .*nowhere does not exist"):
        WanMultiTalkPipeline.from_original(
            wan, None, quant_folders["wav2vec_dir"], quant="int8", quant_dir=tmp_path / "nowhere"
        )
    with pytest.raises(ValueError, match="quant must be one of"):
        WanMultiTalkPipeline.from_original(wan, None, quant_folders["wav2vec_dir"], quant="int4", quant_dir=tmp_path)
    with pytest.raises(ValueError, match="LoRA cannot be applied"):
        WanMultiTalkPipeline.from_original(
            wan,
            None,
            quant_folders["wav2vec_dir"],
            quant="int8",
            quant_dir=quant_folders["multitalk_dir"],
            lora_path="x",
        )


def test_pipeline_quantised_on_the_fly_equals_files(quant_folders, quantised_reference_latents):
    pipe = WanMultiTalkPipeline.from_original(
        quant_folders["wan_dir"],
        quant_folders["multitalk_dir"],
        quant_folders["wav2vec_dir"],
        torch_dtype=torch.float32,
        quant="int8",
    )
    assert linears_in(pipe.transformer)
    assert torch.equal(generate(pipe), quantised_reference_latents)


def _args(flags: str):
    return cli.build_parser().parse_args(["generate", *shlex.split(flags)])


def _base(folders) -> str:
    return f"--ckpt_dir {folders['wan_dir']} --wav2vec_dir {folders['wav2vec_dir']} --input_json x.json"


@pytest.fixture
def recorded_from_original(monkeypatch):
    calls = []

    def fake(cls, *args, **kwargs):
        calls.append((args, kwargs))
        return WanMultiTalkPipeline(**make_tiny_components(seed=0))

    monkeypatch.setattr(WanMultiTalkPipeline, "from_original", classmethod(fake))
    return calls


def test_cli_quant_flags_reach_from_original(quant_folders, recorded_from_original, capsys):
    multitalk = quant_folders["multitalk_dir"]
    args = _args(f"{_base(quant_folders)} --quant int8 --quant_dir {multitalk}")
    runtime.check_generate_args(args)
    assert runtime.unsupported_flags(args, environ={}) == []
    runtime.load_pipeline(args, torch.device("cpu"), torch.float32)
    ((positional, kwargs),) = recorded_from_original
    assert positional[0] == quant_folders["wan_dir"]
    assert kwargs == dict(torch_dtype=torch.float32, quant="int8", quant_dir=str(multitalk), quant_dit_path=None)

    # MultiTalk's FusionX command: --lora_dir is the quantised FusionX DiT, loaded as the DiT (not as a LoRA)
    fusionx = multitalk / "quant_models" / "quant_model_int8_FusionX.safetensors"
    args = _args(f"{_base(quant_folders)} --quant int8 --quant_dir {multitalk} --lora_dir {fusionx} --sample_steps 8")
    runtime.check_generate_args(args)
    pipe = runtime.load_pipeline(args, torch.device("cpu"), torch.float32)
    assert recorded_from_original[-1][1]["quant_dit_path"] == str(fusionx)
    assert not getattr(pipe.transformer, "peft_config", None)
    assert "FusionX" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, match",
    [
        ("--quant int4 --quant_dir {m}", r"quant int4: MultiTalk's quantisations are int8 and fp8"),
        ("--quant_dir {m}", r"quant_dir .*: only used with quant int8"),
        ("--quant int8 --quant_dir {m} --lora_dir {lora}", r"a float LoRA cannot be applied to the quantised"),
        ("--lora_dir {fusionx}", r"a quantised DiT .* not a LoRA: add quant int8"),
        ("--quant int8 --lora_dir {fusionx} {lora}", r"a LoRA cannot be applied to the quantised DiT"),
    ],
    ids=["int4", "quant_dir-alone", "float-lora-with-files", "fusionx-without-quant", "fusionx-plus-lora"],
)
def test_cli_refuses_what_it_cannot_load(quant_folders, tmp_path, flags, match):
    lora = tmp_path / "lora.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 48)}, str(lora))
    fusionx = quant_folders["multitalk_dir"] / "quant_models" / "quant_model_int8_FusionX.safetensors"
    args = _args(
        f"{_base(quant_folders)} " + flags.format(m=quant_folders["multitalk_dir"], lora=lora, fusionx=fusionx)
    )
    with pytest.raises(CLIError, match=match):
        runtime.check_generate_args(args)


def test_cli_refuses_quant_without_optimum_quanto_and_quant_dir_with_tiny(monkeypatch):
    args = _args("--tiny --quant int8 --input_json x.json")
    assert runtime.unsupported_flags(args, environ={}) == []
    monkeypatch.setattr(runtime.options, "quanto_available", lambda: False)
    with pytest.raises(
        CLIError, match=r'quant int8: optimum-quanto is not installed: pip install "diffusers-multitalk\[quant\]"'
    ):
        runtime.check_generate_args(args)
    monkeypatch.undo()
    with pytest.raises(CLIError, match=r"quant int8: with quant_dir q: .*load only with ckpt_dir"):
        runtime.check_generate_args(_args("--tiny --quant int8 --quant_dir q --input_json x.json"))


def test_cli_tiny_quantised_on_the_fly():
    args = _args("--tiny --quant fp8 --input_json x.json")
    pipe = runtime.load_pipeline(args, torch.device("cpu"), torch.float32)
    assert linears_in(pipe.transformer) and all(
        m.weight.qtype.name == "qfloat8_e4m3fn" for m in linears_in(pipe.transformer)
    )
    assert any(isinstance(m, QLinear) for m in pipe.text_encoder.modules())


def test_diffusers_quantization_configs_apply_to_the_transformer(tmp_path):
    """diffusers' own route: `quantization_config=` on `from_pretrained` of the model or of the whole pipeline."""
    from diffusers import DiffusionPipeline, PipelineQuantizationConfig, QuantoConfig

    from diffusers_multitalk import make_tiny_pipeline
    from diffusers_multitalk.testing import tiny_generation_latents

    pipe = make_tiny_pipeline(seed=0)
    pipe.save_pretrained(tmp_path)
    reference = tiny_generation_latents(pipe)
    model = MultiTalkTransformer3DModel.from_pretrained(
        tmp_path, subfolder="transformer", quantization_config=QuantoConfig(weights_dtype="int8")
    )
    assert isinstance(model.blocks[0].attn1.to_q, QLinear) and isinstance(model.blocks[0].audio_attn.to_q, QLinear)
    quantized_pipe = DiffusionPipeline.from_pretrained(
        tmp_path,
        quantization_config=PipelineQuantizationConfig(
            quant_mapping={"transformer": QuantoConfig(weights_dtype="int8")}
        ),
    )
    assert isinstance(quantized_pipe.transformer.blocks[0].ffn.net[2], QLinear)
    latents = tiny_generation_latents(quantized_pipe)
    error = (latents - reference).abs().max().item()
    assert 0 < error < 0.05 * reference.abs().max().item(), error  # int8 weights: close, not equal
