"""CUDA-only checks (skipped on CPU machines): diffusers' offloading routes, attention backends and compilation on the
tiny models, each compared with a plain resident run. Run on the lent GPU with `pytest tests/test_cuda.py`."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_dispatch import (
    AttentionBackendName,
    _AttentionBackendRegistry,
    _check_attention_backend_requirements,
)
from test_low_vram import CUDA, generate

from diffusers_multitalk import MultiTalkTransformer3DModel, make_tiny_pipeline
from diffusers_multitalk.testing import column_person_masks


pytestmark = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def restore_the_active_attention_backend():
    """diffusers' `set_attention_backend` also sets a process-wide default, which every attention module without a
    backend of its own then uses: keep one test's choice out of the next one's models."""
    active = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(active)


@pytest.fixture(scope="module")
def resident_latents():
    return generate(make_tiny_pipeline(seed=0).to("cuda"), device="cuda")


def _assert_same_latents(latents, expected):
    # three streamed chunks of 3 latent frames joined without their 2-frame overlap, cut to the 17 kept frames
    assert latents.shape == expected.shape and latents.shape[2] == 5
    torch.testing.assert_close(latents, expected, rtol=1e-5, atol=1e-5)


def _component_devices(pipe):
    return {
        name: {p.device.type for p in getattr(pipe, name).parameters()}
        for name in ("text_encoder", "image_encoder", "audio_encoder", "transformer", "vae")
    }


def test_model_cpu_offload_matches_the_resident_pipeline(resident_latents):
    pipe = make_tiny_pipeline(seed=0)
    pipe.enable_model_cpu_offload()
    assert pipe._execution_device.type == "cuda"
    _assert_same_latents(generate(pipe, device="cuda"), resident_latents)
    assert all(devices == {"cpu"} for devices in _component_devices(pipe).values())


def test_sequential_cpu_offload_matches_the_resident_pipeline(resident_latents):
    pipe = make_tiny_pipeline(seed=0)
    pipe.enable_sequential_cpu_offload()
    _assert_same_latents(generate(pipe, device="cuda"), resident_latents)


@pytest.mark.parametrize("use_stream", [False, True])
def test_diffusers_group_offloading_of_the_transformer(resident_latents, use_stream):
    pipe = make_tiny_pipeline(seed=0)
    for name in ("text_encoder", "image_encoder", "audio_encoder", "vae"):
        getattr(pipe, name).to("cuda")
    pipe.transformer.enable_group_offload(
        onload_device=torch.device("cuda"),
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=use_stream,
    )
    _assert_same_latents(generate(pipe, device="cuda"), resident_latents)
    assert {p.device.type for p in pipe.transformer.blocks.parameters()} == {"cpu"}


def _head_dim_128_transformer():
    """Small, but with the real head dimension (128), which the fused kernels are built for."""
    torch.manual_seed(0)
    config = dict(
        num_attention_heads=4,
        attention_head_dim=128,
        text_dim=64,
        ffn_dim=1024,
        num_layers=2,
        image_dim=64,
        added_kv_proj_dim=512,
        audio_layers=2,
        audio_channels=32,
        intermediate_dim=16,
        output_dim=16,
        context_tokens=4,
    )
    return MultiTalkTransformer3DModel(**config).eval().to("cuda", torch.bfloat16)


def _inputs(model, persons):
    c = model.config
    g = torch.Generator("cuda").manual_seed(persons)
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    frames, latent_h, latent_w = 9, 16, 24
    masks = column_person_masks(persons, latent_h, latent_w, device="cuda")
    return dict(
        hidden_states=torch.randn(1, c.in_channels, (frames - 1) // 4 + 1, latent_h, latent_w, generator=g, **bf16),
        timestep=torch.tensor([700.0], device="cuda"),
        encoder_hidden_states=torch.randn(1, 512, c.text_dim, generator=g, **bf16),
        encoder_hidden_states_image=torch.randn(1, 257, c.image_dim, generator=g, **bf16),
        audio_embeds=torch.randn(1, persons, frames, 5, c.audio_layers, c.audio_channels, generator=g, **bf16),
        ref_target_masks=masks if persons > 1 else None,
    )


def _backend_available(name):
    try:
        _check_attention_backend_requirements(AttentionBackendName(name))
    except (RuntimeError, ImportError, ValueError):
        return False
    return True


BACKENDS = ["native", "_native_cudnn", "_native_flash", "_native_efficient", "_flash_3"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_backends_agree_with_the_math_kernel(backend):
    if not _backend_available(backend):
        pytest.skip(f"{backend} is not installed here")
    model = _head_dim_128_transformer()
    inputs = _inputs(model, persons=1)
    with torch.no_grad():
        model.set_attention_backend("_native_math")
        expected = model(**inputs, return_dict=False)[0].float()
        model.set_attention_backend(backend)
        out = model(**inputs, return_dict=False)[0].float()
    # bf16 kernels differ in their accumulation order only
    assert (out - expected).abs().max().item() < 0.03 * expected.abs().max().item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_person_scores_agree_across_backends(backend):
    """The person map runs through the dispatcher too. (Whole 2-person outputs are not compared in bf16: L-RoPE takes
    an argmax over these scores, so a rounding difference can move a token to another person's range.)"""
    from diffusers_multitalk.models.attention_processor import person_attention_scores

    if not _backend_available(backend):
        pytest.skip(f"{backend} is not installed here")
    g = torch.Generator("cuda").manual_seed(0)
    query = torch.randn(1, 3 * 384, 4, 128, generator=g, device="cuda", dtype=torch.bfloat16)
    key = torch.randn(1, 384, 4, 128, generator=g, device="cuda", dtype=torch.bfloat16)
    masks = torch.zeros(3, 384, device="cuda")
    masks[0, :192], masks[1, 192:], masks[2, :32] = 1, 1, 1
    expected = person_attention_scores(query, key, masks, backend="_native_math")
    scores = person_attention_scores(query, key, masks, backend=backend)
    assert scores.shape == (1, 3, 3 * 384)
    torch.testing.assert_close(scores, expected, rtol=2e-2, atol=2e-3 * expected.abs().max().item())


@pytest.mark.parametrize("persons", [1, 2])
def test_compiled_blocks_match_eager(persons):
    model = _head_dim_128_transformer().float()  # float32: no argmax flips between the two runs
    inputs = {
        k: v.float() if v is not None and v.is_floating_point() else v for k, v in _inputs(model, persons).items()
    }
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0]
        model.compile_repeated_blocks(fullgraph=False)
        out = model(**inputs, return_dict=False)[0]
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)


def _fp8_capable():
    return torch.cuda.get_device_capability() >= (8, 9)


def test_fp8_block_linears_run_in_float8_and_stay_close_to_bf16():
    """torchao's row-wise FP8 on the block linears: every one of them holds float8 weights, the audio adapter and
    the head stay bf16, and the forward stays near the bf16 one (random weights: FP8 e4m3 rounds to ~3 significant
    bits, a few percent)."""
    pytest.importorskip("torchao")
    if not _fp8_capable():
        pytest.skip("FP8 matrix products need compute capability >= 8.9")
    from diffusers_multitalk.models.fp8 import enable_fp8, quantized_linear_count

    model = _head_dim_128_transformer()
    inputs = _inputs(model, persons=2)
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0].float()
        names = enable_fp8(model, "fp8")
        out = model(**inputs, return_dict=False)[0].float()
    assert len(names) == 8 * len(model.blocks)  # the cross-attention's 4 context k/v projections stay bf16
    assert type(model.blocks[0].attn2.to_out[0]).__name__ == "TokenMeanFloatLinear"
    assert quantized_linear_count(model) == {"Float8Tensor": len(names)}
    assert type(model.blocks[0].audio_attn.to_q.weight) is torch.nn.Parameter
    assert type(model.proj_out.weight) is torch.nn.Parameter
    assert torch.isfinite(out).all()
    rel = ((out - expected).norm() / expected.norm()).item()
    assert 0 < rel < 0.15


def test_quant_fp8_on_an_fp8_gpu_runs_torchao_through_the_runtime(capsys):
    """`multitalk generate --quant fp8` without MultiTalk's files on an FP8 GPU: the default backend is torchao, the
    block linears hold float8 weights, and the tiny model generates finite frames (the mp4 writing is the CPU
    tests' part: the lent GPU has no ffmpeg)."""
    pytest.importorskip("torchao")
    if not _fp8_capable():
        pytest.skip("FP8 matrix products need compute capability >= 8.9")
    import shlex

    import numpy as np

    from diffusers_multitalk import cli, runtime
    from diffusers_multitalk.models.fp8 import quantized_linear_count

    flags = "--tiny --device cuda --dtype bfloat16 --input_json examples/single_tiny.json --mode clip --frame_num 5 "
    flags += "--sample_steps 1 --height 64 --width 96 --quant fp8 --offload_model False"
    args = cli.build_parser().parse_args(["generate", *shlex.split(flags)])
    runtime.check_generate_args(args)
    pipe = runtime.load_pipeline(args, torch.device("cuda"), torch.bfloat16)
    assert quantized_linear_count(pipe.transformer) == {"Float8Tensor": 8 * len(pipe.transformer.blocks)}
    said = capsys.readouterr().err
    assert "torchao: " in said and "run in FP8" in said
    # the input JSON's fields as load_input_json gives them, the speech as a 16 kHz array (the lent GPU's image has
    # neither jsonschema nor librosa)
    speech = (0.3 * np.sin(np.linspace(0, 2 * np.pi * 220, 16000))).astype(np.float32)
    input_data = {"prompt": "A person talks.", "cond_image": "examples/assets/one_person.png",
                  "cond_audio": {"person1": (speech, 16000)}, "audio_type": "add"}  # fmt: skip
    kwargs = runtime.build_generation_kwargs(args, input_data)
    frames = pipe(**kwargs, output_type="np").frames
    assert np.isfinite(np.asarray(frames, dtype=np.float32)).all()


def test_flash3_fp8_self_attention_is_close_to_sdpa():
    """FlashAttention-3's FP8 forward (an FA3 wheel built with FA3_FP8=1) at the DiT's head size."""
    pytest.importorskip("flash_attn_interface")
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("FlashAttention-3 runs on Hopper")
    from diffusers_multitalk.models.attention_processor import flash3_fp8_attention

    g = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 2048, 4, 128, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = flash3_fp8_attention(q, k, v).float()
    expected = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert out.shape == q.shape
    # 0.053 on the H200 (2026-12-01): unit-normal Q, K, V give a flat softmax, whose small average output leaves
    # e4m3's rounding (of Q, K, V and of P inside FA3) large beside it; the DiT's own deviation is 1.7%
    # (docs/performance.md)
    assert ((out - expected.float()).norm() / expected.float().norm()).item() < 0.08
    # the kernel the fast preset picks ("auto") is found usable at the 14B DiT's head size
    from diffusers_multitalk.models.fp8 import self_attention_kernel_problem

    assert self_attention_kernel_problem("flash3_fp8", "cuda", head_dim=128) is None


def test_fa3_fp8_benchmark_measures_every_entry():
    """benchmarks/bench_fa3_fp8.py at a small sequence: one row per kernel, each with a time (and a rate)."""
    pytest.importorskip("flash_attn_interface")
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("FlashAttention-3 runs on Hopper")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_fa3_fp8 import measure

    rows = measure(2048, heads=4)
    assert len(rows) == 6
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == "2048" and float(cells[2]) > 0
        assert cells[3] or cells[1].startswith("its ")


def test_sage_triton_self_attention_is_close_to_sdpa():
    pytest.importorskip("sageattention")
    from diffusers_multitalk.models.attention_processor import sage_triton_attention

    g = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 2048, 4, 128, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    k_before = k.clone()
    out = sage_triton_attention(q, k, v).float()
    expected = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert torch.equal(k, k_before)  # the kernel's in-place smoothing of K does not leak out
    assert ((out - expected.float()).norm() / expected.float().norm()).item() < 0.05


def test_sage_triton_as_a_per_block_choice_in_the_model():
    pytest.importorskip("sageattention")
    from diffusers_multitalk.models.fp8 import set_self_attention_kernel

    model = _head_dim_128_transformer()
    inputs = _inputs(model, persons=1)
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0].float()
        set_self_attention_kernel(model, "sage_triton", blocks=[1])
        out = model(**inputs, return_dict=False)[0].float()
    assert [b.attn1.processor.self_attention_kernel for b in model.blocks] == [None, "sage_triton"]
    rel = ((out - expected).norm() / expected.norm()).item()
    assert 0 < rel < 0.05


def test_fast_preset_set_up_on_the_tiny_pipeline():
    """apply_preset on CUDA: VAE in bf16, the block linears in FP8 where FP8 runs (quant "auto"), compiled blocks,
    the preset's sampling arguments; finite latents."""
    from diffusers_multitalk.models.fp8 import fp8_runs_on, quantized_linear_count
    from diffusers_multitalk.presets import apply_preset

    pipe = make_tiny_pipeline(seed=0).to("cuda")
    pipe.transformer.to(torch.bfloat16)
    kwargs = apply_preset(pipe, "fast")
    assert pipe.vae.dtype == torch.bfloat16
    fp8_linears = 8 * len(pipe.transformer.blocks) if fp8_runs_on("cuda") else 0
    assert sum(quantized_linear_count(pipe.transformer).values()) == fp8_linears
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in pipe.transformer.blocks)
    kwargs["num_inference_steps"] = 2
    latents = generate(pipe, device="cuda", **{k: v for k, v in kwargs.items() if k != "num_inference_steps"})
    assert all(torch.isfinite(x).all() for x in latents)


# ----------------------------------------------------------------------------------------------------------------
# diffusers' GPU-only pipeline contracts (its PipelineTesterMixin's offload, half-precision and compile tests)
# ----------------------------------------------------------------------------------------------------------------
def test_pipeline_group_offload_matches_the_resident_pipeline(resident_latents):
    pipe = make_tiny_pipeline(seed=0)
    pipe.enable_group_offload(onload_device=torch.device("cuda"), offload_type="leaf_level")
    torch.testing.assert_close(generate(pipe, device="cuda"), resident_latents, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_save_load_round_trip(tmp_path, dtype):
    pipe = make_tiny_pipeline(seed=0)
    pipe.transformer.to(dtype)
    pipe.to("cuda")
    before = generate(pipe, device="cuda")
    pipe.save_pretrained(tmp_path)
    loaded = type(pipe).from_pretrained(tmp_path, dtype={"transformer": dtype, "default": torch.float32}).to("cuda")
    assert loaded.transformer.dtype == dtype
    torch.testing.assert_close(generate(loaded, device="cuda"), before, rtol=1e-3, atol=1e-3)


def test_compiled_pipeline_does_not_recompile_across_chunks(resident_latents):
    import torch._dynamo

    pipe = make_tiny_pipeline(seed=0).to("cuda")
    pipe.transformer.compile_repeated_blocks(fullgraph=True)
    generate(pipe, device="cuda")  # compiles on the first chunk
    with torch._dynamo.config.patch(error_on_recompile=True):
        latents = generate(pipe, device="cuda")  # three chunks again: no recompilation
    torch.testing.assert_close(latents, resident_latents, rtol=1e-3, atol=1e-3)
