"""Where a compiled full-size MultiTalk DiT forward spends its GPU time, by kernel kind.

Builds the 14B config with random bf16 weights (as `bench_transformer.py`) in one of `bench_fp8.py`'s set-ups
(default bf16; e.g. fp8+fa3fp8), compiles the repeated blocks, warms up, then records one forward with torch.profiler
and sums the GPU kernel time into attention, matmul and the rest (elementwise, norms, RoPE, modulation, FP8
quantisation: Triton kernels after compilation). Also reports the compiling forward's time and how many graphs
Dynamo compiled (one per distinct block graph: a count near the number of blocks means a recompile per block).

    python benchmarks/profile_transformer.py [--persons 1] [--setup fp8+fa3fp8] [--out docs/profile_transformer.md]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fp8 import build_setup, fp8_matmul_rate  # noqa: E402
from bench_transformer import FULL_CONFIG, forward_flops, make_inputs, matmul_rate, write_report  # noqa: E402


KINDS = [
    ("attention", re.compile(r"fmha|flash|cudnn|attention|sdpa|fprop", re.I)),
    ("matmul", re.compile(r"gemm|nvjet|xmma|cutlass|matmul|sm90_", re.I)),
]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=1)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--setup", default="bf16", help="a set-up of bench_fp8.py (bf16, fp8+fa3fp8, ...)")
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--top", type=int, default=12, help="how many kernels to list")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    config = dict(FULL_CONFIG, num_layers=args.layers)
    model, _info = build_setup(args.setup, config, "cuda")
    inputs, (lt, lh, lw) = make_inputs(args.persons, args.frames, args.size, args.size, "cuda")
    warm_s = []
    with torch.no_grad():
        for _ in range(2):
            torch.cuda.synchronize()
            start = time.perf_counter()
            model(**inputs, return_dict=False)
            torch.cuda.synchronize()
            warm_s.append(time.perf_counter() - start)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            model(**inputs, return_dict=False)
            torch.cuda.synchronize()

    per_kind = collections.Counter()
    per_kernel = collections.Counter()
    calls = collections.Counter()
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = event.device_time_total if hasattr(event, "device_time_total") else event.cuda_time_total
        per_kind[kind_of(event.name)] += us
        per_kernel[event.name] += us
        calls[event.name] += 1
    total_us = sum(per_kind.values())
    rate, fp8_rate = matmul_rate("cuda"), fp8_matmul_rate()
    flops = forward_flops(config, lt, lh, lw, args.persons)
    attention_flops = config["num_layers"] * 4 * (lt * lh * lw // 4) ** 2 * 5120

    lines = [
        f"Device: {torch.cuda.get_device_name()}, torch {torch.__version__}. 14B DiT (dim 5120, {args.layers} layers), "
        f"random bf16 weights, set-up `{args.setup}` (benchmarks/bench_fp8.py), `compile_repeated_blocks`; "
        f"{args.persons} person(s), {args.frames} frames at {args.size}×{args.size} ({lt * lh * lw // 4} tokens). "
        f"Warm-up forwards {warm_s[0]:.1f} s (compiling; {graphs} graphs compiled) and {warm_s[1]:.3f} s, then one "
        f"profiled forward; matmul rates in the same run (8192³): bf16 {rate / 1e12:.0f}, FP8 row-wise "
        f"{fp8_rate / 1e12:.0f} TFLOP/s. Counted FLOPs: {flops / 1e12:.0f} TFLOP, of which self-attention "
        f"{attention_flops / 1e12:.0f}.",
        "",
        "Top kernels:",
        "",
        "| kernel | kind | calls | ms |",
        "|---|---|---|---|",
    ]
    for name, us in per_kernel.most_common(args.top):
        lines.append(f"| `{name[:90]}` | {kind_of(name)} | {calls[name]} | {us / 1e3:.1f} |")
    lines += [
        "",
        "| kind | GPU ms | share |",
        "|---|---|---|",
    ]
    for kind in ("attention", "matmul", "other"):
        lines.append(f"| {kind} | {per_kind[kind] / 1e3:.0f} | {per_kind[kind] / total_us:.0%} |")
    lines.append(f"| **total kernel time** | **{total_us / 1e3:.0f}** | 100% |")
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
