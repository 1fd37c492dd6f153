"""Self-attention kernels at the 14B DiT's shape (one block's 40 heads of 128 over 33,600 tokens, bf16).

The self-attention is about half of a forward's FLOPs (925 of 1,895 TFLOP), so its kernel decides how close a
forward gets to the matmul floor. This times each attention kernel PyTorch offers here, for both the layout
diffusers' dispatcher hands it ([B, S, H, D] transposed to [B, H, S, D], not contiguous) and a contiguous
[B, H, S, D] one, and prints a table (last) with TFLOP/s over 4·S²·H·D.

    python benchmarks/bench_attention.py [--tokens 33600] [--heads 40] [--head-dim 128] [--out docs/bench_attention.md]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def _time(fn, warmup: int = 2, repeats: int = 5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _matmul_rate() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return 2 * 8192**3 / _time(lambda: a @ b, repeats=10) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=33600)
    parser.add_argument("--heads", type=int, default=40)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = parser.parse_args()

    s, h, d = args.tokens, args.heads, args.head_dim
    flops = 4 * s * s * h * d
    torch.manual_seed(0)
    # what the dispatcher receives: [B, S, H, D]
    q, k, v = (torch.randn(1, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    reference = None
    rows = []
    backends = [
        ("SDPA's own choice", None),
        ("flash (SDPA)", SDPBackend.FLASH_ATTENTION),
        ("cuDNN (SDPA)", SDPBackend.CUDNN_ATTENTION),
        ("efficient (SDPA)", SDPBackend.EFFICIENT_ATTENTION),
    ]
    for layout in ("transposed view", "contiguous [B,H,S,D]"):
        if layout == "transposed view":
            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        else:
            qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        for name, backend in backends:

            def call(qt=qt, kt=kt, vt=vt, backend=backend):
                if backend is None:
                    return F.scaled_dot_product_attention(qt, kt, vt)
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(qt, kt, vt)

            try:
                out = call()
                seconds = _time(call)
            except RuntimeError as err:
                rows.append((name, layout, "n/a", "n/a", "n/a", str(err).splitlines()[0][:60]))
                continue
            if reference is None:
                reference = out.float()
            error = (out.float() - reference).abs().max().item()
            rows.append((name, layout, f"{seconds * 1e3:.1f}", f"{flops / seconds / 1e12:.0f}", f"{error:.1e}", ""))
            del out
            torch.cuda.empty_cache()

    if importlib.util.find_spec("flash_attn_interface"):  # FlashAttention-3 takes [B, S, H, D] as it is
        from flash_attn_interface import flash_attn_func

        def fa3_call():
            out = flash_attn_func(q, k, v)
            return out[0] if isinstance(out, tuple) else out

        try:
            out = fa3_call()
            seconds = _time(fa3_call)
            error = (out.float().transpose(1, 2) - reference).abs().max().item()
            rows.append(
                (
                    "FlashAttention-3",
                    "[B,S,H,D]",
                    f"{seconds * 1e3:.1f}",
                    f"{flops / seconds / 1e12:.0f}",
                    f"{error:.1e}",
                    "",
                )
            )
        except RuntimeError as err:
            rows.append(("FlashAttention-3", "[B,S,H,D]", "n/a", "n/a", "n/a", str(err).splitlines()[0][:60]))

    extras = [
        m for m in ("flash_attn", "flash_attn_interface", "sageattention", "xformers") if importlib.util.find_spec(m)
    ]
    rate = _matmul_rate()
    lines = [
        f"Device: {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}; "
        f"attention packages installed besides PyTorch: {', '.join(extras) or 'none'}.",
        f"Shape: 1 × {h} heads × {s} tokens × {d}, bf16, no mask; {flops / 1e12:.1f} TFLOP per call (4·S²·H·D); "
        f"median of 5 after 2 warm-ups. bf16 matmul rate in the same run (8192³): {rate:.0f} TFLOP/s.",
        "",
        "| kernel | layout | ms / call | TFLOP/s | max abs diff vs SDPA's choice | note |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    text = "\n".join(lines)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
