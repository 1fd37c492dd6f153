"""CPU tests of the FP8/int8 execution plumbing (models/fp8.py), the self-attention kernel choice, the fast preset
(presets.py) and the deviation benchmark on tiny weights. The FP8 kernels themselves need a GPU (tests/test_cuda.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diffusers_multitalk import make_tiny_pipeline
from diffusers_multitalk.models import attention_processor
from diffusers_multitalk.models.fp8 import (
    FP8_FLOAT_PARTS,
    KEEP_FLOAT_MODULES,
    TokenMeanFloatLinear,
    enable_fp8,
    is_block_linear,
    quantized_linear_count,
    set_self_attention_kernel,
    torchao_config,
    torchao_quantization_config,
)
from diffusers_multitalk.presets import FAST_PRESET, apply_preset, preset_call_kwargs, preset_cli_flags


ROOT = Path(__file__).resolve().parents[1]


def tiny_transformer():
    return make_tiny_pipeline(seed=0).transformer.eval()


def tiny_inputs(model, persons=1, seed=0):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    frames = 5
    return dict(
        hidden_states=torch.randn(1, c.in_channels, 2, 8, 12, generator=g),
        timestep=torch.tensor([700.0]),
        encoder_hidden_states=torch.randn(1, 16, c.text_dim, generator=g),
        encoder_hidden_states_image=torch.randn(1, 257, c.image_dim, generator=g),
        audio_embeds=torch.randn(1, persons, frames, 5, c.audio_layers, c.audio_channels, generator=g),
    )


def block_linear_names(model):
    return [name for name, module in model.named_modules() if is_block_linear(module, name)]


def test_block_linears_are_the_attention_and_ffn_layers_only():
    model = tiny_transformer()
    names = block_linear_names(model)
    per_block = {name.split(".", 2)[2] for name in names}
    assert per_block == {
        "attn1.to_q",
        "attn1.to_k",
        "attn1.to_v",
        "attn1.to_out.0",
        "attn2.to_q",
        "attn2.to_k",
        "attn2.to_v",
        "attn2.to_out.0",
        "attn2.add_k_proj",
        "attn2.add_v_proj",
        "ffn.net.0.proj",
        "ffn.net.2",
    }
    assert len(names) == 12 * len(model.blocks)
    assert not any(part in name.split(".") for name in names for part in KEEP_FLOAT_MODULES)


def test_unknown_quant_mode_is_refused():
    with pytest.raises(ValueError, match="Unknown quantisation mode"):
        torchao_config("fp4")


def test_fp8_mode_on_the_cpu_says_it_needs_a_gpu():
    pytest.importorskip("torchao")
    if torch.cuda.is_available():
        pytest.skip("runs the real FP8 path in tests/test_cuda.py")
    with pytest.raises(AssertionError, match="compute capability"):
        enable_fp8(tiny_transformer(), "fp8")


@pytest.fixture
def fp8_on_the_cpu(monkeypatch):
    """torchao refuses FP8 below CUDA compute capability 8.9 (or MI300, XPU), but torch's CPU `_scaled_mm` runs e4m3
    products (slowly): with torchao's hardware check stood down, the real FP8 tensors and kernels run here."""
    pytest.importorskip("torchao")
    import torchao.float8.inference as float8_inference
    import torchao.quantization.quant_api as quant_api

    try:
        a = torch.ones(16, 16).to(torch.float8_e4m3fn)
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError) as err:
        pytest.skip(f"this torch has no row-wise FP8 _scaled_mm on the CPU ({err})")
    for module in (float8_inference, quant_api):
        monkeypatch.setattr(module, "_check_hardware_support", lambda *args, **kwargs: None)


def test_fp8_block_linears_run_in_float8_and_compile_into_one_graph(fp8_on_the_cpu):
    """The FP8 path on the tiny model: every block linear holds a float8 e4m3 weight, the output stays near bf16's,
    and compile_repeated_blocks traces one graph for all blocks (the H200's minutes of FP8 compilation were
    torchao's Inductor tuning, not a recompilation per block)."""
    from diffusers_multitalk.models import MultiTalkTransformer3DModel

    base = tiny_transformer()
    config = {k: v for k, v in base.config.items() if not k.startswith("_")}
    model = MultiTalkTransformer3DModel(**dict(config, num_layers=4)).eval().to(torch.bfloat16)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tiny_inputs(model).items()}
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0].float()
        names = enable_fp8(model, "fp8")
        eager = model(**inputs, return_dict=False)[0].float()
    kept = [f"blocks.{i}.{part}" for i in range(4) for part in FP8_FLOAT_PARTS["keep_float"]]
    assert names == [name for name in block_linear_names(model) if name not in kept]
    assert all(type(model.get_submodule(name).weight) is torch.nn.Parameter for name in kept)
    weights = [model.get_submodule(name).weight for name in names]
    assert all(w.qdata.dtype == torch.float8_e4m3fn for w in weights)
    outputs = [block.attn2.to_out[0] for block in model.blocks]
    assert all(isinstance(m, TokenMeanFloatLinear) and m.float_weight.dtype == torch.bfloat16 for m in outputs)
    assert "float_weight" not in " ".join(model.state_dict())  # one weight per linear is saved
    rel = ((eager - expected).norm() / expected.norm()).item()
    assert 0 < rel < 0.1
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model.compile_repeated_blocks(fullgraph=False)
    with torch.no_grad():
        compiled = model(**inputs, return_dict=False)[0].float()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert ((compiled - eager).norm() / eager.norm()).item() < 0.02
    torch._dynamo.reset()


def test_token_mean_float_linear_is_exact_in_float_and_keeps_fp8_error_off_the_shared_part(fp8_on_the_cpu):
    """TokenMeanFloatLinear computes W (x - m) + W m: the plain linear in float; in FP8, an input whose tokens share
    a large common part (what the cross-attention's output projection sees) comes out far closer to bf16 than
    through a plain FP8 linear, whose weight rounding error would reach every token alike."""
    from torchao.quantization import quantize_

    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 256).to(torch.bfloat16)
    x = (torch.randn(1, 1, 256) * 4 + 0.2 * torch.randn(1, 300, 256)).to(torch.bfloat16)  # tokens share a mean
    split = TokenMeanFloatLinear.from_linear(linear)
    with torch.no_grad():
        expected = linear(x).float()
        torch.testing.assert_close(split(x).float(), expected, rtol=0.02, atol=0.05)
        plain = torch.nn.Sequential(torch.nn.Linear(256, 256).to(torch.bfloat16))
        plain[0].load_state_dict(linear.state_dict())
        model = torch.nn.Sequential(split)
        quantize_(plain, torchao_config("fp8"))
        quantize_(model, torchao_config("fp8"))
        assert type(model[0].weight).__name__ == type(plain[0].weight).__name__ == "Float8Tensor"
        err_plain = ((plain(x).float() - expected).norm() / expected.norm()).item()
        err_split = ((model(x).float() - expected).norm() / expected.norm()).item()
    assert 0 < err_split < err_plain / 3


def test_fp8_float_parts_can_be_named_or_dropped(fp8_on_the_cpu):
    """keep_float / float_token_mean replace the FP8 defaults: () quantises every block linear as a plain one."""
    model = tiny_transformer().to(torch.bfloat16)
    names = enable_fp8(model, "fp8", keep_float=(), float_token_mean=())
    assert names == block_linear_names(model)
    assert not any(isinstance(m, TokenMeanFloatLinear) for m in model.modules())
    model = tiny_transformer().to(torch.bfloat16)
    enable_fp8(model, "fp8", keep_float=("attn2.to_out",), float_token_mean=("attn1.to_out", "attn2.to_out"))
    assert [type(b.attn1.to_out[0]) for b in model.blocks] == [TokenMeanFloatLinear] * 2
    assert all(type(b.attn2.to_out[0]) is torch.nn.Linear for b in model.blocks)  # kept wins: left as it was
    with pytest.raises(ValueError, match="float_token_mean"):
        enable_fp8(tiny_transformer(), "fp8", float_token_mean=("attn9",))


def test_int8_dynamic_quantises_the_block_linears_and_keeps_the_rest():
    """The same plumbing as FP8 through a torchao config that runs on the CPU (W8A8 int8)."""
    pytest.importorskip("torchao")
    model = tiny_transformer()
    inputs = tiny_inputs(model)
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0]
        audio_q = model.blocks[0].audio_attn.to_q.weight.detach().clone()
        names = enable_fp8(model, "int8_dynamic", blocks=[1])
        out = model(**inputs, return_dict=False)[0]
    assert names == [n for n in block_linear_names(model) if n.startswith("blocks.1.")]
    assert sum(quantized_linear_count(model).values()) == 12
    assert type(model.blocks[0].attn1.to_q.weight) is torch.nn.Parameter  # block 0 not chosen
    assert type(model.blocks[1].audio_attn.to_q.weight) is torch.nn.Parameter
    torch.testing.assert_close(model.blocks[0].audio_attn.to_q.weight, audio_q, rtol=0, atol=0)
    rel = ((out - expected).norm() / expected.norm()).item()
    assert 0 < rel < 0.05


def test_audio_projections_of_the_video_tokens_are_quantised_only_when_asked():
    """`audio_projections=True` adds the audio adapter's q and output projections (the video tokens' side) to the
    quantised linears; its projection of the audio tokens and `audio_proj` stay in float."""
    pytest.importorskip("torchao")
    model = tiny_transformer()
    inputs = tiny_inputs(model)
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0]
        names = enable_fp8(model, "int8_dynamic", audio_projections=True, float_token_mean=("audio_attn.to_out",))
        out = model(**inputs, return_dict=False)[0]
    audio = sorted({name.split(".", 2)[2] for name in names if ".audio_attn." in name})
    assert audio == ["audio_attn.to_out", "audio_attn.to_q"]
    assert len(names) == 14 * len(model.blocks)
    block = model.blocks[0].audio_attn
    assert type(block.to_audio_kv.weight) is torch.nn.Parameter
    assert isinstance(block.to_out, TokenMeanFloatLinear) and type(block.to_q.weight) is not torch.nn.Parameter
    assert all(type(p) is torch.nn.Parameter for p in model.audio_proj.parameters())
    rel = ((out - expected).norm() / expected.norm()).item()
    assert 0 < rel < 0.05


@pytest.mark.parametrize("tune_kernels", [False, True])
def test_quantising_changes_inductor_settings_only_when_asked(tune_kernels):
    """torchao's configs switch on Inductor's coordinate-descent tuning for the whole process by default (minutes of
    compilation on the H200); enable_fp8 and torchao_quantization_config leave it alone unless tune_kernels=True."""
    pytest.importorskip("torchao")
    import torch._inductor.config as inductor_config

    assert torchao_config("fp8", tune_kernels).set_inductor_config is tune_kernels
    assert torchao_quantization_config("int8_dynamic", tune_kernels).quant_type.set_inductor_config is tune_kernels
    # the config's own patch() restores both settings afterwards, whatever enable_fp8 did
    with inductor_config.patch(coordinate_descent_tuning=False, coordinate_descent_check_all_directions=False):
        enable_fp8(tiny_transformer(), "int8_dynamic", tune_kernels=tune_kernels)
        assert inductor_config.coordinate_descent_tuning is tune_kernels
        assert inductor_config.coordinate_descent_check_all_directions is tune_kernels


def test_keep_float_leaves_the_named_block_modules_in_float():
    """keep_float keeps more linears out of quantisation by module name inside a block (whole dotted parts only);
    a name that matches no block linear is refused."""
    pytest.importorskip("torchao")
    model = tiny_transformer()
    names = enable_fp8(model, "int8_dynamic", keep_float=("attn2.to_out", "ffn"))
    assert names and not [n for n in names if ".attn2.to_out." in n + "." or ".ffn." in n]
    assert [n for n in names if ".attn2.to_q" in n]  # the rest of attn2 is quantised
    assert type(model.blocks[0].attn2.to_out[0].weight) is torch.nn.Parameter
    assert type(model.blocks[0].ffn.net[2].weight) is torch.nn.Parameter
    assert type(model.blocks[0].attn2.to_q.weight) is not torch.nn.Parameter
    with pytest.raises(ValueError, match="names no block linear"):
        enable_fp8(tiny_transformer(), "int8_dynamic", keep_float=("attn9",))
    with pytest.raises(ValueError, match="names no block linear"):
        enable_fp8(tiny_transformer(), "int8_dynamic", keep_float=("ttn2",))  # parts, not substrings
    config = torchao_quantization_config("fp8", keep_float=("attn2",))
    assert config.modules_to_not_convert == [*KEEP_FLOAT_MODULES, "attn2"]


def test_block_indices_out_of_range_are_refused():
    with pytest.raises(ValueError, match="out of range"):
        set_self_attention_kernel(tiny_transformer(), None, blocks=[7])


def test_torchao_quantization_config_keeps_the_audio_adapter_in_float():
    pytest.importorskip("torchao")
    from diffusers import TorchAoConfig
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig

    config = torchao_quantization_config("fp8")
    assert isinstance(config, TorchAoConfig)
    assert isinstance(config.quant_type, Float8DynamicActivationFloat8WeightConfig)
    # quantised at loading, the token-mean linears have no float weight left: they stay in float too
    fp8_parts = {*FP8_FLOAT_PARTS["keep_float"], *FP8_FLOAT_PARTS["float_token_mean"]}
    assert set(config.modules_to_not_convert) == {*KEEP_FLOAT_MODULES, *fp8_parts}
    assert set(torchao_quantization_config("int8_dynamic").modules_to_not_convert) == set(KEEP_FLOAT_MODULES)


def test_torchao_quantization_config_through_from_pretrained(tmp_path):
    pytest.importorskip("torchao")
    from diffusers_multitalk import MultiTalkTransformer3DModel

    model = tiny_transformer()
    model.save_pretrained(tmp_path)
    loaded = MultiTalkTransformer3DModel.from_pretrained(
        tmp_path, quantization_config=torchao_quantization_config("int8_dynamic"), torch_dtype=torch.float32
    )
    quantized = {n for n, m in loaded.named_modules() if type(getattr(m, "weight", None)).__name__ == "Int8Tensor"}
    assert quantized == set(block_linear_names(loaded))
    inputs = tiny_inputs(model)
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0]
        out = loaded(**inputs, return_dict=False)[0]
    assert ((out - expected).norm() / expected.norm()).item() < 0.05


def test_self_attention_kernel_is_a_per_block_choice(monkeypatch):
    calls = []

    def sdpa_kernel(q, k, v):  # a stand-in kernel (SageAttention needs CUDA): [B, S, H, D] in and out
        calls.append(q.shape)
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    monkeypatch.setitem(attention_processor.SELF_ATTENTION_KERNELS, "test_sdpa", sdpa_kernel)
    model = tiny_transformer()
    inputs = tiny_inputs(model, persons=2)
    inputs["ref_target_masks"] = torch.zeros(3, 8, 12)
    inputs["ref_target_masks"][0, :, :6], inputs["ref_target_masks"][1, :, 6:] = 1, 1
    inputs["ref_target_masks"][2, :2] = 1
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0]
        set_self_attention_kernel(model, "test_sdpa", blocks=[0])
        out = model(**inputs, return_dict=False)[0]
    assert len(calls) == 1  # block 0's self-attention only; the person map and cross-attention keep the dispatcher
    assert [b.attn1.processor.self_attention_kernel for b in model.blocks] == ["test_sdpa", None]
    assert model.blocks[0].attn2.processor.self_attention_kernel is None
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="Unknown self-attention kernel"):
        set_self_attention_kernel(model, "nope")


def test_fast_preset_maps_to_multitalk_flags():
    assert preset_call_kwargs("fast") == dict(
        num_inference_steps=8, guidance_scale=1.0, audio_guidance_scale=2.0, shift=2.0
    )
    assert preset_cli_flags("fast") == [
        "--sample_steps",
        "8",
        "--sample_text_guide_scale",
        "1.0",
        "--sample_audio_guide_scale",
        "2.0",
        "--sample_shift",
        "2.0",
    ]
    with pytest.raises(ValueError, match="Unknown preset"):
        preset_call_kwargs("slow")


def test_fast_preset_flags_are_generate_flags():
    from diffusers_multitalk import cli

    parser = cli.build_parser() if hasattr(cli, "build_parser") else None
    if parser is None:
        pytest.skip("cli.build_parser is not there")
    args = parser.parse_args(["generate", *preset_cli_flags("fast")])
    assert (args.sample_steps, args.sample_text_guide_scale, args.sample_audio_guide_scale, args.sample_shift) == (
        8,
        1.0,
        2.0,
        2.0,
    )


def test_apply_preset_sets_up_the_pipeline():
    pipe = make_tiny_pipeline(seed=0)
    kwargs = apply_preset(pipe, "fast")
    assert kwargs == FAST_PRESET["call"]
    assert pipe.vae.dtype == torch.bfloat16
    # compilation is for CUDA only; on the CPU the blocks stay eager
    assert all(getattr(b, "_compiled_call_impl", None) is None for b in pipe.transformer.blocks)
    with pytest.raises(ValueError, match="Unknown set-up options"):
        apply_preset(pipe, "fast", attention="sage")
    assert apply_preset(pipe, "fast", setup=False) == kwargs


@pytest.mark.parametrize("quantised", [False, True])
def test_preset_tunes_kernels_only_for_a_torchao_quantised_dit(monkeypatch, quantised):
    """apply_setup's tune_kernels switches on torchao's Inductor tuning just before compiling, and only when the
    DiT holds torchao linears; a bf16 DiT compiles untuned, and so does the fast preset's (its tuning is off). CUDA
    is stood in for: the compile call is recorded, not run."""
    pytest.importorskip("torchao")
    import torch._inductor.config as inductor_config

    from diffusers_multitalk.models import MultiTalkTransformer3DModel
    from diffusers_multitalk.models.fp8 import is_torchao_quantized
    from diffusers_multitalk.presets import apply_setup

    pipe = make_tiny_pipeline(seed=0)
    if quantised:
        enable_fp8(pipe.transformer, "int8_dynamic")
    assert is_torchao_quantized(pipe.transformer) is quantised
    compiled = []
    monkeypatch.setattr(MultiTalkTransformer3DModel, "device", property(lambda self: torch.device("cuda")))
    monkeypatch.setattr(
        MultiTalkTransformer3DModel,
        "compile_repeated_blocks",
        lambda self, **kw: compiled.append(bool(inductor_config.coordinate_descent_tuning)),
    )
    with inductor_config.patch(coordinate_descent_tuning=False, coordinate_descent_check_all_directions=False):
        chosen = apply_setup(pipe, compile=True, tune_kernels=True)
        assert chosen["tuned"] is quantised
        assert compiled == [quantised]  # tuned (or not) when compilation was asked for
        assert inductor_config.coordinate_descent_check_all_directions is quantised
    assert FAST_PRESET["setup"]["tune_kernels"] is False  # measured no faster on the H200, minutes more compile


def test_deviation_benchmark_on_tiny_weights(tmp_path):
    """bench_fp8.py on a 1-layer narrow model on the CPU: the same seed gives the same weights in every set-up, the
    int8 and FP8 set-ups deviate from bf16 by a little, not by nothing, and keep: leaves the named linears in bf16."""
    pytest.importorskip("optimum.quanto")
    pytest.importorskip("torchao")
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_fp8.py"),
        "--device",
        "cpu",
        "--layers",
        "1",
        "--dim-scale",
        "10",
        "--frames-scale",
        "16",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--frames",
        "9",
        "--fp8-on-cpu",
        "--out",
        str(tmp_path),
        "--jobs",
        "bf16+eager@480p1,quanto_int8@480p1,bf16+eager@480p2,fp8+eager@480p1,fp8+eager+keep:attn2/ffn@480p1,"
        "fp8+eager+all@480p1",
    ]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, timeout=600)
    result = json.loads((tmp_path / "bench_fp8.json").read_text())
    rows = {(r["setup"], r["shape"]): r for r in result["rows"]}
    assert not [r for r in result["rows"] if "error" in r]
    assert rows[("bf16+eager", "480p1")]["checksum"] == rows[("quanto_int8", "480p1")]["checksum"]
    assert 1e-4 < rows[("quanto_int8", "480p1")]["rel_l2_vs_bf16"] < 0.1
    assert rows[("bf16+eager", "480p2")]["persons"] == 2 and rows[("bf16+eager", "480p2")]["finite"]
    fp8, kept = rows[("fp8+eager", "480p1")], rows[("fp8+eager+keep:attn2/ffn", "480p1")]
    assert 1e-4 < fp8["rel_l2_vs_bf16"] < 0.1 and kept["rel_l2_vs_bf16"] > 0
    assert kept["kept_in_bf16"] == [*FP8_FLOAT_PARTS["keep_float"], "attn2", "ffn"]
    assert kept["quantized_linears"] == 4  # attn1's q, k, v, out
    # enable_fp8's defaults: the cross-attention's 4 context k/v in bf16, its output projection split by token mean
    assert fp8["quantized_linears"] == 8 and fp8["float_token_mean"] == ["attn2.to_out"]
    every = rows[("fp8+eager+all", "480p1")]
    assert every["quantized_linears"] == 12 and every["kept_in_bf16"] == every["float_token_mean"] == []
    assert every["rel_l2_vs_bf16"] > 0 and every["checksum"] == fp8["checksum"]
    assert (tmp_path / "bench_fp8.md").exists()


# ---- `--quant ... --quant_backend`: torchao on the fly through the runtime (the CLI, the app and the server) ----
def _generate_args(flags: str):
    import shlex

    from diffusers_multitalk import cli

    return cli.build_parser().parse_args(["generate", *shlex.split(flags)])


TINY_CLI = "--tiny --device cpu --input_json examples/single_tiny.json --mode clip --frame_num 5 --sample_steps 1 "
TINY_CLI += "--height 64 --width 96"


def test_quant_int8_with_torchao_runs_the_block_linears_in_int8_through_the_cli(tmp_path, capsys):
    """torchao's W8A8 runs on the CPU, so the whole on-the-fly route runs here: the block linears only, umT5 left
    float, the choice printed, a video written."""
    pytest.importorskip("torchao")
    from diffusers_multitalk import cli, runtime
    from diffusers_multitalk.runtime.quantization import check_quantization

    args = _generate_args(f"{TINY_CLI} --quant int8 --quant_backend torchao")
    runtime.check_generate_args(args)
    assert check_quantization(args, torch.device("cpu")) == "torchao"
    pipe = runtime.load_pipeline(args, torch.device("cpu"), torch.float32)
    quantized = {
        n for n, m in pipe.transformer.named_modules() if type(getattr(m, "weight", None)).__name__ == "Int8Tensor"
    }
    assert quantized == set(block_linear_names(pipe.transformer))
    assert all(
        type(m.weight) is torch.nn.Parameter for m in pipe.text_encoder.modules() if isinstance(m, torch.nn.Linear)
    )
    assert "24 DiT block linears run in int8" in capsys.readouterr().err

    out = tmp_path / "video"
    assert (
        cli.main(
            ["generate", *TINY_CLI.split(), "--quant", "int8", "--quant_backend", "torchao", "--save_file", str(out)]
        )
        == 0
    )
    assert out.with_suffix(".mp4").stat().st_size > 0


def test_torchao_fuses_a_lora_before_quantising(tmp_path):
    pytest.importorskip("torchao")
    from safetensors.torch import save_file
    from test_lora import _wan_style_lora  # the layout Wan trainers save

    from diffusers_multitalk import runtime

    lora = _wan_style_lora(tiny_transformer())
    path = tmp_path / "lora.safetensors"
    save_file(lora, str(path))
    args = _generate_args(f"{TINY_CLI} --quant int8 --quant_backend torchao --lora_dir {path} --lora_scale 1.0")
    runtime.check_generate_args(args)
    pipe = runtime.load_pipeline(args, torch.device("cpu"), torch.float32)
    assert not getattr(pipe.transformer, "peft_config", None)  # fused and unloaded: no adapter layers left
    to_q = pipe.transformer.blocks[0].attn1.to_q
    assert isinstance(to_q, torch.nn.Linear) and type(to_q.weight).__name__ == "Int8Tensor"
    base = tiny_transformer().blocks[0].attn1.to_q.weight
    # W + B A: no alpha in the file, so it is the rank, and --lora_scale 1.0
    fused = (
        base
        + lora["diffusion_model.blocks.0.self_attn.q.lora_up.weight"]
        @ lora["diffusion_model.blocks.0.self_attn.q.lora_down.weight"]
    )
    dequantized = to_q.weight.dequantize().float()
    assert ((dequantized - fused).norm() / fused.norm()).item() < 0.02  # the LoRA is in the int8 weights


def test_fp8_with_torchao_on_the_cpu_is_refused_before_anything_loads(monkeypatch, capsys):
    pytest.importorskip("torchao")
    if torch.cuda.is_available():
        pytest.skip("this machine runs FP8: tests/test_cuda.py covers it")
    from diffusers_multitalk import cli, tiny

    monkeypatch.setattr(tiny, "make_tiny_pipeline", lambda *a, **k: pytest.fail("a model loaded"))
    assert cli.main(["generate", *TINY_CLI.split(), "--quant", "fp8", "--quant_backend", "torchao"]) == 1
    err = capsys.readouterr().err
    assert (
        "error: --quant_backend torchao: with --quant fp8: FP8 products need a CUDA GPU of compute capability 8.9"
        in err
    )
    assert "--quant int8 --quant_backend torchao" in err and "Traceback" not in err


def test_auto_backend_picks_torchao_for_fp8_on_an_fp8_gpu_only(monkeypatch):
    pytest.importorskip("torchao")
    from diffusers_multitalk import runtime
    from diffusers_multitalk.runtime import quantization

    fp8 = _generate_args(f"{TINY_CLI} --quant fp8")
    int8 = _generate_args(f"{TINY_CLI} --quant int8")
    cpu = torch.device("cpu")
    assert quantization.check_quantization(fp8, cpu) == "quanto"  # the CPU has no FP8 products: MultiTalk's scheme
    monkeypatch.setattr(quantization, "runs_fp8_products", lambda device: True)
    assert quantization.check_quantization(fp8, cpu) == "torchao"
    assert quantization.check_quantization(int8, cpu) == "quanto"  # int8 stays MultiTalk's own (weights only)
    assert quantization.choose_quant_backend(fp8, cpu, quant_files=True) == "quanto"  # MeiGen's files are quanto
    assert quantization.check_quantization(_generate_args(TINY_CLI), cpu) is None
    with pytest.raises(runtime.UserError, match="optimum-quanto checkpoints"):
        runtime.check_generate_args(_generate_args(f"{TINY_CLI} --quant fp8 --quant_backend torchao --quant_dir q"))
    with pytest.raises(runtime.UserError, match="optimum-quanto checkpoints"):
        quantization.choose_quant_backend(_generate_args(f"{TINY_CLI} --quant fp8 --quant_backend torchao"), cpu, True)


def test_torchao_backend_needs_torchao_and_not_quanto(monkeypatch):
    from diffusers_multitalk import runtime
    from diffusers_multitalk.runtime import options, quantization

    monkeypatch.setattr(quantization, "torchao_available", lambda: False)
    with pytest.raises(runtime.UserError, match=r'torchao is not installed: pip install "diffusers-multitalk\[fp8\]"'):
        runtime.check_generate_args(_generate_args(f"{TINY_CLI} --quant int8 --quant_backend torchao"))
    monkeypatch.setattr(quantization, "torchao_available", lambda: True)
    monkeypatch.setattr(options, "quanto_available", lambda: False)
    runtime.check_generate_args(_generate_args(f"{TINY_CLI} --quant int8 --quant_backend torchao"))  # no quanto needed
    with pytest.raises(runtime.UserError, match="optimum-quanto is not installed"):
        runtime.check_generate_args(_generate_args(f"{TINY_CLI} --quant int8"))
    with pytest.raises(runtime.UserError, match="quant fp8: on cpu runs with optimum-quanto, which is not installed"):
        quantization.check_quantization(_generate_args(f"{TINY_CLI} --quant fp8"), torch.device("cpu"))


def test_flash3_fp8_kernel_quantizes_per_head_and_calls_fa3_with_the_descales(monkeypatch):
    """The FP8 self-attention kernel's own part (per-head e4m3 scaling, the FA3 call): FA3 needs Hopper, so a stand-in
    `flash_attn_interface` dequantizes what it is given and runs SDPA; the block's output stays within FP8 rounding
    of the dispatcher's, and FA3 gets e4m3 tensors with float32 [B, H] descales."""
    import types

    from diffusers_multitalk.models.attention_processor import quantize_per_head_fp8

    x = torch.randn(2, 50, 3, 24, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.1, 1.0, 30.0])[:, None]
    x8, descale = quantize_per_head_fp8(x)
    assert x8.dtype == torch.float8_e4m3fn and descale.shape == (2, 3) and descale.dtype == torch.float32
    back = x8.float() * descale[:, None, :, None]
    assert ((back - x).norm() / x.norm()).item() < 0.05  # e4m3: 3 mantissa bits, every head at its own scale
    assert x8.float().abs().amax().item() == 448.0

    calls = []

    def flash_attn_func(q, k, v, q_descale=None, k_descale=None, v_descale=None):
        calls.append((q.dtype, k.dtype, v.dtype, q_descale.shape, q_descale.dtype))
        q, k, v = (t.float() * d[:, None, :, None] for t, d in ((q, q_descale), (k, k_descale), (v, v_descale)))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2).to(torch.bfloat16), None  # like older FA3 builds: (out, lse)

    monkeypatch.setitem(sys.modules, "flash_attn_interface", types.SimpleNamespace(flash_attn_func=flash_attn_func))
    model = tiny_transformer()
    # the stand-in takes any head size; the real kernel is held to the one FA3 is built for (128)
    monkeypatch.setattr(attention_processor, "FLASH3_FP8_HEAD_DIMS", (model.config.attention_head_dim,))
    inputs = tiny_inputs(model)
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0]
        set_self_attention_kernel(model, "flash3_fp8", blocks=[1])
        out = model(**inputs, return_dict=False)[0]
    heads = model.config.num_attention_heads
    assert calls == [(torch.float8_e4m3fn,) * 3 + ((1, heads), torch.float32)]
    assert out.dtype == expected.dtype
    rel = ((out - expected).norm() / expected.norm()).item()
    assert 0 < rel < 0.05


@pytest.mark.parametrize("model", ["multitalk", "infinitetalk"])
def test_torchao_on_the_fly_from_the_official_folders(tmp_path, model):
    """`--ckpt_dir ... --quant int8 --quant_backend torchao` on the downloaded layouts: the float weights load as
    usual (InfiniteTalk's from_original is asked for no quanto step) and torchao quantises the block linears after."""
    pytest.importorskip("torchao")
    from diffusers_multitalk import runtime
    from diffusers_multitalk.testing import write_tiny_infinitetalk_folders

    folders = write_tiny_infinitetalk_folders(tmp_path, seed=0)
    source = f"--ckpt_dir {folders['wan_dir']} --wav2vec_dir {folders['wav2vec_dir']} --input_json x.json"
    if model == "multitalk":
        source += f" --multitalk_dir {tmp_path / 'MeiGen-MultiTalk'}"
    else:
        source += f" --task infinitetalk-14B --infinitetalk_dir {folders['infinitetalk_dir'] / 'single' / 'infinitetalk.safetensors'}"
    args = _generate_args(f"{source} --device cpu --quant int8 --quant_backend torchao")
    runtime.check_generate_args(args)
    pipe = runtime.load_pipeline(args, torch.device("cpu"), torch.float32)
    assert type(pipe).__name__ == ("WanMultiTalkPipeline" if model == "multitalk" else "WanInfiniteTalkPipeline")
    quantized = {
        n for n, m in pipe.transformer.named_modules() if type(getattr(m, "weight", None)).__name__ == "Int8Tensor"
    }
    assert quantized == set(block_linear_names(pipe.transformer))
    assert not any("quanto" in type(m).__module__ for m in pipe.text_encoder.modules())


def test_preset_fast_asks_for_fp8_where_it_runs_and_quant_none_opts_out(monkeypatch, capsys):
    """--preset fast leaves --quant at auto when neither --quant nor --quant_dir is given; auto becomes fp8 through
    torchao on a GPU with FP8 products (stood in for here) and no quantisation elsewhere, each said in one line."""
    pytest.importorskip("torchao")
    from diffusers_multitalk import runtime
    from diffusers_multitalk.models import fp8
    from diffusers_multitalk.runtime import quantization
    from diffusers_multitalk.runtime.options import apply_preset_options

    def preset_args(flags=""):
        args = apply_preset_options(_generate_args(f"{TINY_CLI} --preset fast {flags}"))
        runtime.check_generate_args(args)  # auto is decided on the device: nothing refused before
        return args

    cpu = torch.device("cpu")
    args = preset_args()
    assert args.quant == "auto" and args.sample_audio_guide_scale == 2.0  # TINY_CLI gives --sample_steps 1
    quantization.resolve_auto_quant(args, cpu)
    assert args.quant is None and quantization.check_quantization(args, cpu) is None
    assert (
        "quant auto: no quantisation (the default of preset fast): cpu has no FP8 products" in capsys.readouterr().err
    )

    monkeypatch.setattr(fp8, "runs_fp8_products", lambda device: True)
    args = preset_args()
    quantization.resolve_auto_quant(args, cpu)
    assert (args.quant, args.quant_backend) == ("fp8", "torchao")
    assert "quant auto: fp8 (torchao)" in capsys.readouterr().err
    args = preset_args("--quant_backend quanto")
    quantization.resolve_auto_quant(args, cpu)
    assert (
        args.quant is None
        and "no quantisation (the default of preset fast): quant_backend quanto" in capsys.readouterr().err
    )

    assert preset_args("--quant none").quant is None  # the opt-out, kept under the preset
    assert apply_preset_options(_generate_args(f"{TINY_CLI} --preset fast --ulysses_size 2")).quant is None
    # the server and the app load through load_pipeline, which settles auto / none itself (here: on the CPU)
    monkeypatch.undo()
    served = _generate_args(f"{TINY_CLI} --quant none")
    runtime.check_generate_args(served)
    assert runtime.load_pipeline(served, cpu, torch.float32) is not None and served.quant is None
    served = _generate_args(f"{TINY_CLI} --quant auto")
    runtime.check_generate_args(served)
    assert quantized_linear_count(runtime.load_pipeline(served, cpu, torch.float32).transformer) == {}
    assert served.quant is None and "quant auto: no quantisation" in capsys.readouterr().err
    assert preset_args("--quant int8").quant == "int8"
    assert apply_preset_options(_generate_args(f"{TINY_CLI} --quant none")).quant is None
    with pytest.raises(runtime.UserError, match="MultiTalk's quantisations are int8 and fp8 \\(or auto, none\\)"):
        runtime.check_generate_args(_generate_args(f"{TINY_CLI} --quant fp4"))


def test_apply_setup_quantises_only_where_fp8_runs(monkeypatch, fp8_on_the_cpu):
    """apply_setup(quant="auto"): nothing on the CPU; fp8 with the default float parts where FP8 runs (stood in for);
    a DiT quantised before is not quantised again."""
    from diffusers_multitalk.models import fp8
    from diffusers_multitalk.presets import apply_setup

    pipe = make_tiny_pipeline(seed=0)
    assert apply_setup(pipe, quant="auto")["quant"] is None
    assert quantized_linear_count(pipe.transformer) == {}
    monkeypatch.setattr(fp8, "runs_fp8_products", lambda device: True)
    pipe.transformer.to(torch.bfloat16)
    assert apply_setup(pipe, quant="auto")["quant"] == "fp8"
    assert quantized_linear_count(pipe.transformer) == {"Float8Tensor": 8 * len(pipe.transformer.blocks)}
    assert apply_setup(pipe, quant="fp8")["quant"] == "fp8"  # already quantised: left as it is
    assert quantized_linear_count(pipe.transformer) == {"Float8Tensor": 8 * len(pipe.transformer.blocks)}
