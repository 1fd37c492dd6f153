"""FlashAttention-3's FP8 forward at the 14B DiT's self-attention shapes: the kernel alone, the model's whole
`flash3_fp8` path (K/V smoothing and per-head e4m3 quantisation, compiled and eager), the quantisation alone, and the
bf16 kernels (PyTorch SDPA's choice, FA3 bf16), on 1 × S tokens × 40 heads × 128 (S = 33,600 at 480P, 75,600 at 720P).

Each entry: 3 untimed calls (compilation in them), then the mean of 10 calls between two synchronisations;
TFLOP/s over 4·S²·H·D. Needs a Hopper GPU and an FA3 build with FP8 (`FA3_FP8=1 benchmarks/build_flash_attention_3.sh`).

    python benchmarks/bench_fa3_fp8.py [--tokens 33600,75600] [--out docs/bench_fa3_fp8_h200.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_transformer import write_report  # noqa: E402


def mean_seconds(fn, repeats: int = 10) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def measure(tokens: int, heads: int = 40, head_dim: int = 128) -> list[str]:
    """The table rows of one sequence length."""
    from flash_attn_interface import flash_attn_func

    from diffusers_multitalk.models.attention_processor import (
        flash3_fp8_attention,
        quantize_per_head_fp8,
        smoothed_fp8_inputs,
    )

    flops = 4 * tokens * tokens * head_dim * heads
    q, k, v = (torch.randn(1, tokens, heads, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    (q8, qd), (k8, kd), (v8, vd) = (quantize_per_head_fp8(t) for t in (q, k, v))
    compiled_path = torch.compile(flash3_fp8_attention)
    compiled_quantisation = torch.compile(smoothed_fp8_inputs)
    entries = {
        "PyTorch SDPA, bf16 (its choice)": lambda: F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        ),
        "FA3, bf16": lambda: flash_attn_func(q, k, v),
        "FA3, e4m3 kernel alone (inputs quantised beforehand)": lambda: flash_attn_func(
            q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd
        ),
        "`flash3_fp8_attention`, compiled (the model's path)": lambda: compiled_path(q, k, v),
        "`flash3_fp8_attention`, eager": lambda: flash3_fp8_attention(q, k, v),
        "its smoothing + quantisation alone, compiled": lambda: compiled_quantisation(q, k, v),
    }
    rows = []
    for name, fn in entries.items():
        seconds = mean_seconds(fn)
        rate = "" if name.startswith("its ") else f"{flops / seconds / 1e12:.0f}"
        rows.append(f"| {tokens} | {name} | {seconds * 1e3:.2f} | {rate} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="33600,75600")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    lines = [
        f"Device: {torch.cuda.get_device_name()}, torch {torch.__version__}. 1 × S × 40 heads × 128, no mask; mean "
        "of 10 calls after 3 untimed ones; TFLOP/s over 4·S²·H·D.",
        "",
        "| tokens | what | ms / call | TFLOP/s |",
        "|---|---|---|---|",
    ]
    for tokens in (int(t) for t in args.tokens.split(",")):
        lines += measure(tokens)
        torch.cuda.empty_cache()
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
