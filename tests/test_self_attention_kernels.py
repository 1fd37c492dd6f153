"""CPU tests of the video self-attention's kernel choice: FlashAttention-3's FP8 kernel's smoothing and scaling
(against a stand-in FA3 that dequantises into SDPA), its availability check, "auto", `--self_attention_kernel` and
the fast preset's default. The real kernel runs in tests/test_cuda.py."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from test_fp8 import TINY_CLI, _generate_args  # the tiny generate run those tests use

from diffusers_multitalk import make_tiny_pipeline
from diffusers_multitalk.models import fp8
from diffusers_multitalk.models.attention_processor import flash3_fp8_attention, quantize_per_head_fp8
from diffusers_multitalk.presets import apply_preset


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def _dequantizing_fa3(calls):
    """A stand-in `flash_attn_interface`: records what FA3 would get, dequantises it and runs SDPA."""

    def flash_attn_func(q, k, v, q_descale=None, k_descale=None, v_descale=None):
        deq = [t.float() * d[:, None, :, None] for t, d in ((q, q_descale), (k, k_descale), (v, v_descale))]
        calls.append(dict(dtypes={t.dtype for t in (q, k, v)}, descale=q_descale.shape, k=deq[1], v=deq[2]))
        return _sdpa(*deq).to(torch.bfloat16)

    return types.SimpleNamespace(flash_attn_func=flash_attn_func)


def test_flash3_fp8_smooths_k_and_v_which_cuts_the_error_of_a_common_offset(monkeypatch):
    """K and V with a large offset shared by all tokens (as biased projections give): FA3 gets them with their token
    mean taken out (softmax ignores q·mean(k); mean(v) is added back), and the output is closer to exact attention
    than quantising them as they are."""
    calls = []
    monkeypatch.setitem(sys.modules, "flash_attn_interface", _dequantizing_fa3(calls))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 256, 2, 128, generator=g) for _ in range(3))
    offset = 8 * torch.randn(1, 1, 2, 128, generator=g)
    k, v = k + offset, v + offset
    expected = _sdpa(q, k, v)

    out = flash3_fp8_attention(q, k, v).float()
    assert calls[0]["dtypes"] == {torch.float8_e4m3fn} and calls[0]["descale"] == (1, 2)
    for name in ("k", "v"):  # what FA3 gets has (nearly) no common offset left
        assert calls[0][name].mean(dim=1).abs().max().item() < 0.05
    smoothed = ((out - expected).norm() / expected.norm()).item()

    unsmoothed_inputs = [t.float() * d[:, None, :, None] for t, d in map(quantize_per_head_fp8, (q, k, v))]
    unsmoothed = ((_sdpa(*unsmoothed_inputs) - expected).norm() / expected.norm()).item()
    assert smoothed < 0.05
    assert smoothed < unsmoothed / 2


def test_kernel_problems_name_what_is_missing(monkeypatch):
    assert "runs on CUDA GPUs, not cpu" in fp8.self_attention_kernel_problem("flash3_fp8", "cpu")
    assert "unknown kernel" in fp8.self_attention_kernel_problem("flash4", "cpu")
    # on a Hopper GPU with no FA3 installed, the hint names the build script
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)  # import fails
    problem = fp8.self_attention_kernel_problem("flash3_fp8", torch.device("cuda"))
    assert "not installed" in problem and "FA3_FP8=1 bash benchmarks/build_flash_attention_3.sh" in problem
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L40S")
    assert "Hopper" in fp8.self_attention_kernel_problem("flash3_fp8", torch.device("cuda"))


def test_a_build_without_fp8_is_found_by_the_probe(monkeypatch):
    """An FA3 build made without FP8 imports and fails only when called: the probe call finds it."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))

    def no_fp8(*args, **kwargs):
        raise RuntimeError("FlashAttention-3 was built without FP8")

    monkeypatch.setitem(sys.modules, "flash_attn_interface", types.SimpleNamespace(flash_attn_func=no_fp8))
    monkeypatch.setattr(torch, "randn", lambda *a, device=None, **k: torch.zeros(*a, **k))  # no CUDA tensors here
    problem = fp8.self_attention_kernel_problem("flash3_fp8", torch.device("cuda"), head_dim=128)
    assert "no FP8 forward for head size 128" in problem and "built without FP8" in problem


def test_auto_uses_the_dispatcher_where_fa3_fp8_cannot_run():
    pipe = make_tiny_pipeline(seed=0)
    kernel, why_not = fp8.resolve_self_attention_kernel("auto", pipe.transformer)
    assert kernel is None and "CUDA" in why_not
    assert fp8.resolve_self_attention_kernel("sage_triton", pipe.transformer) == ("sage_triton", None)
    # the fast preset's default is "auto": on the CPU every block keeps the dispatcher, and the reason is returned
    apply_preset(pipe, "fast")
    assert [b.attn1.processor.self_attention_kernel for b in pipe.transformer.blocks] == [None] * len(
        pipe.transformer.blocks
    )


def test_the_fast_preset_sets_fa3_fp8_where_it_runs(monkeypatch):
    monkeypatch.setattr(fp8, "self_attention_kernel_problem", lambda kernel, device, head_dim=128: None)
    pipe = make_tiny_pipeline(seed=0)
    apply_preset(pipe, "fast", compile=False)
    assert {b.attn1.processor.self_attention_kernel for b in pipe.transformer.blocks} == {"flash3_fp8"}
    pipe = make_tiny_pipeline(seed=0)
    apply_preset(pipe, "fast", self_attention_kernel=None)  # opting out
    assert {b.attn1.processor.self_attention_kernel for b in pipe.transformer.blocks} == {None}


def test_a_named_kernel_that_cannot_run_is_refused_before_anything_loads(monkeypatch, capsys, tmp_path):
    from diffusers_multitalk import cli, tiny

    monkeypatch.setattr(tiny, "make_tiny_pipeline", lambda *a, **k: pytest.fail("a model loaded"))
    out = tmp_path / "video"
    flags = [*TINY_CLI.split(), "--self_attention_kernel", "flash3_fp8", "--save_file", str(out)]
    assert cli.main(["generate", *flags]) == 1
    err = capsys.readouterr().err
    assert "error: --self_attention_kernel flash3_fp8: it runs on CUDA GPUs, not cpu" in err
    assert "'dispatcher'" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_the_flag_sets_the_kernel_and_says_so(monkeypatch, capsys):
    """Through the runtime (as generate, the app and the server load): a kernel that runs is set on every block and
    printed; 'dispatcher' overrides the preset's "auto"; "auto" falling back says why."""
    from diffusers_multitalk import runtime

    pipe = runtime.load_pipeline(_generate_args(f"{TINY_CLI} --preset fast"), torch.device("cpu"), torch.float32)
    assert {b.attn1.processor.self_attention_kernel for b in pipe.transformer.blocks} == {None}
    assert "self_attention_kernel auto: self-attention through diffusers' dispatcher (it runs on CUDA" in (
        capsys.readouterr().err
    )

    monkeypatch.setattr(fp8, "self_attention_kernel_problem", lambda kernel, device, head_dim=128: None)
    for flags, expected in [
        ("--self_attention_kernel flash3_fp8", "flash3_fp8"),
        ("--preset fast", "flash3_fp8"),
        ("--preset fast --self_attention_kernel dispatcher", None),
    ]:
        args = _generate_args(f"{TINY_CLI} {flags}")
        runtime.check_generate_args(args)
        pipe = runtime.load_pipeline(args, torch.device("cpu"), torch.float32)
        assert {b.attn1.processor.self_attention_kernel for b in pipe.transformer.blocks} == {expected}, flags
        printed = capsys.readouterr().err
        assert ("FlashAttention-3's FP8 forward (flash3_fp8) in every block" in printed) == (expected is not None)


def test_head_sizes_the_fa3_build_lacks_are_refused_without_calling_it(monkeypatch):
    """FA3 called at a head size its build left out crashed the process on the H200 (the tiny model's 24): the
    kernel refuses it, and the availability check says so without probing."""
    calls = []
    monkeypatch.setitem(sys.modules, "flash_attn_interface", _dequantizing_fa3(calls))
    x = torch.randn(1, 16, 2, 24)
    with pytest.raises(ValueError, match="head size \\(128,\\)"):
        flash3_fp8_attention(x, x, x)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    problem = fp8.self_attention_kernel_problem("flash3_fp8", torch.device("cuda"), head_dim=24)
    assert problem == "it runs at head size 128 (the Wan DiTs'), not 24"
    assert calls == []
    pipe = make_tiny_pipeline(seed=0)
    assert fp8.resolve_self_attention_kernel("auto", pipe.transformer, torch.device("cuda")) == (None, problem)
