"""GPU check of the quantised DiT at the real 14B shape (random weights): memory, forward time, error vs bf16,
and the reference-format save -> load round trip (the numbers in docs/quantization.md).

Run from the repo root on a GPU machine with optimum-quanto installed; writes $OUT/quant_gpu.json:

    python benchmarks/bench_quantized.py
"""

import gc
import json
import os
import resource
import sys
import time
import types

import torch


# Import the model and loader modules without the package's top level (which pulls in the audio and app
# dependencies a bare GPU image lacks).
root = os.getcwd()
pkg = types.ModuleType("diffusers_multitalk")
pkg.__path__ = [os.path.join(root, "src", "diffusers_multitalk")]
sys.modules["diffusers_multitalk"] = pkg
from diffusers_multitalk.loaders import quantized  # noqa: E402
from diffusers_multitalk.models.transformer_multitalk import MultiTalkTransformer3DModel  # noqa: E402


OUT = os.environ.get("OUT", "/tmp")
results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
CFG = dict(
    num_attention_heads=40,
    attention_head_dim=128,
    ffn_dim=13824,
    num_layers=40,
    text_dim=4096,
    freq_dim=256,
    in_channels=36,
    out_channels=16,
    image_dim=1280,
    added_kv_proj_dim=5120,
)
T, H, W = 2, 60, 104  # 5 video frames at 480x832: 3120 tokens
g = torch.Generator(device="cuda").manual_seed(1)
inputs = (
    torch.randn(1, 36, T, H, W, device="cuda", generator=g, dtype=torch.bfloat16),
    torch.tensor([700.0], device="cuda"),
    torch.randn(1, 512, 4096, device="cuda", generator=g, dtype=torch.bfloat16),
    torch.randn(1, 257, 1280, device="cuda", generator=g, dtype=torch.bfloat16),
    torch.randn(1, 1, 4 * (T - 1) + 1, 5, 12, 768, device="cuda", generator=g, dtype=torch.bfloat16),
)


def build():
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = MultiTalkTransformer3DModel(**CFG)
    torch.set_default_dtype(torch.float32)
    for name, p in model.named_parameters():  # small random-but-sane norms / tables
        if p.ndim == 1 and "norm" in name:
            p.data.fill_(1.0)
    return model.eval().requires_grad_(False)


def mem():
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def run(model, label, reps=3):
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        out = model(*inputs, return_dict=False)[0].float()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            model(*inputs, return_dict=False)
        torch.cuda.synchronize()
    results[label] = dict(
        weights_gib=round(base / 2**30, 3),
        param_bytes_gib=round(quantized.parameter_bytes(model) / 2**30, 3),
        peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3),
        forward_s=round((time.perf_counter() - t0) / reps, 4),
    )
    print(label, results[label], flush=True)
    return out


model = build()
mem()
ref = run(model, "bf16")
t0 = time.perf_counter()
quantized.quantize_model(model, "int8")
results["quantize_int8_s"] = round(time.perf_counter() - t0, 2)
mem()
q8 = run(model, "int8")
results["int8_rel_err_vs_bf16"] = ((q8 - ref).norm() / ref.norm()).item()
# the reference's file format: save in the original layout, load back through the loader (on the CPU), to the GPU
t0 = time.perf_counter()
ckpt, qmap = quantized.save_quantized_multitalk_transformer(model.to("cpu"), "/tmp/MeiGen-MultiTalk", "int8")
results["save_int8_s"] = round(time.perf_counter() - t0, 1)
results["int8_file_gib"] = round(os.path.getsize(ckpt) / 2**30, 3)
results["int8_map_entries"] = len(json.load(open(qmap)))
del model
mem()
os.makedirs("/tmp/wan", exist_ok=True)
dim = 5120
json.dump(
    dict(
        model_type="i2v",
        dim=dim,
        num_heads=40,
        ffn_dim=13824,
        num_layers=40,
        text_dim=4096,
        freq_dim=256,
        in_dim=36,
        out_dim=16,
        patch_size=[1, 2, 2],
        eps=1e-6,
        cross_attn_norm=True,
    ),
    open("/tmp/wan/config.json", "w"),
)
t0 = time.perf_counter()
loaded = quantized.load_quantized_multitalk_transformer(ckpt, "/tmp/wan", quant="int8")
results["load_int8_cpu_s"] = round(time.perf_counter() - t0, 1)
results["load_int8_max_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
loaded.to("cuda")
mem()
l8 = run(loaded, "int8_loaded")
results["loaded_equals_direct_int8"] = bool(torch.equal(l8, q8))
results["loaded_vs_direct_max_abs"] = (l8 - q8).abs().max().item()
del loaded
os.remove(ckpt)
mem()
model = build()
quantized.quantize_model(model, "fp8")
mem()
f8 = run(model, "fp8")
results["fp8_rel_err_vs_bf16"] = ((f8 - ref).norm() / ref.norm()).item()
results["weight_types"] = sorted({type(m.weight).__name__ for m in model.modules() if hasattr(m, "weight_qtype")})
print(json.dumps(results, indent=1))
json.dump(results, open(os.path.join(OUT, "quant_gpu.json"), "w"), indent=1)
