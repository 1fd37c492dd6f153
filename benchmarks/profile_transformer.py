"""Where a compiled full-size MultiTalk DiT forward spends its GPU time, by kernel kind.

Builds the 14B config with random bf16 weights (as `bench_transformer.py`), compiles the repeated blocks, warms up,
then records one forward with torch.profiler and sums the GPU kernel time into attention, matmul and the rest
(elementwise, norms, RoPE, modulation: Triton kernels after compilation). Prints a table last.

    python benchmarks/profile_transformer.py [--persons 1] [--out docs/profile_transformer.md]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_transformer import FULL_CONFIG, build_model, forward_flops, make_inputs, matmul_rate  # noqa: E402


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
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    config = dict(FULL_CONFIG)
    model = build_model(config, "cuda")
    model.compile_repeated_blocks(fullgraph=False)
    inputs, (lt, lh, lw) = make_inputs(args.persons, args.frames, args.size, args.size, "cuda")
    with torch.no_grad():
        for _ in range(2):
            model(**inputs, return_dict=False)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            model(**inputs, return_dict=False)
            torch.cuda.synchronize()

    per_kind = collections.Counter()
    per_kernel = collections.Counter()
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = event.device_time_total if hasattr(event, "device_time_total") else event.cuda_time_total
        per_kind[kind_of(event.name)] += us
        per_kernel[event.name] += us
    total_us = sum(per_kind.values())
    rate = matmul_rate("cuda")
    flops = forward_flops(config, lt, lh, lw, args.persons)
    attention_flops = config["num_layers"] * 4 * (lt * lh * lw // 4) ** 2 * 5120

    lines = [
        f"Device: {torch.cuda.get_device_name()}, torch {torch.__version__}. 14B DiT (dim 5120, 40 layers), random "
        f"bf16 weights, `compile_repeated_blocks`, PyTorch SDPA; {args.persons} person(s), {args.frames} frames at "
        f"{args.size}×{args.size} ({lt * lh * lw // 4} tokens). One profiled forward after 2 warm-ups; bf16 matmul "
        f"rate in the same run (8192³): {rate / 1e12:.0f} TFLOP/s. Counted FLOPs: {flops / 1e12:.0f} TFLOP, of which "
        f"self-attention {attention_flops / 1e12:.0f}.",
        "",
        "Top kernels:",
        "",
        "| kernel | kind | ms |",
        "|---|---|---|",
    ]
    for name, us in per_kernel.most_common(12):
        lines.append(f"| `{name[:90]}` | {kind_of(name)} | {us / 1e3:.1f} |")
    lines += [
        "",
        "| kind | GPU ms | share |",
        "|---|---|---|",
    ]
    for kind in ("attention", "matmul", "other"):
        lines.append(f"| {kind} | {per_kind[kind] / 1e3:.0f} | {per_kind[kind] / total_us:.0%} |")
    lines.append(f"| **total kernel time** | **{total_us / 1e3:.0f}** | 100% |")
    text = "\n".join(lines)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
