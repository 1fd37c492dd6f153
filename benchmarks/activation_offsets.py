"""How much of each block linear's input is shared by all tokens: ||token mean|| / ||input - token mean||, per block.

A large ratio means the per-token rows differ little beside a common part, which a per-token e4m3 (or int8) scale
spends its precision on; the FP8 deviation study in docs/performance.md found the text/image cross-attention's output
projection so. Builds the 14B config with random bf16 weights from seed 0 (as `bench_fp8.py`), runs one forward with
forward pre-hooks on every block linear and prints one row per linear name (block index -> ratio).

    python benchmarks/activation_offsets.py --device cpu --layers 4 --frames 9 --size 320 [--out docs/...md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_transformer import FULL_CONFIG, build_model, make_inputs, write_report  # noqa: E402


def main() -> None:
    from diffusers_multitalk.models.fp8 import is_block_linear

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_model(dict(FULL_CONFIG, num_layers=args.layers), args.device)
    inputs, (lt, lh, lw) = make_inputs(1, args.frames, args.size, args.size, args.device)
    ratios: dict[str, dict[int, float]] = {}

    def record(fqn):
        block, name = int(fqn.split(".")[1]), ".".join(fqn.split(".")[2:])

        def hook(module, hook_args):
            x = hook_args[0].float().flatten(0, -2)
            mean = x.mean(0, keepdim=True)
            ratios.setdefault(name, {})[block] = float(mean.norm() * x.shape[0] ** 0.5 / (x - mean).norm())

        return hook

    for fqn, module in model.named_modules():
        if is_block_linear(module, fqn):
            module.register_forward_pre_hook(record(fqn))
    with torch.no_grad():
        model(**inputs, return_dict=False)
    blocks = sorted({b for per_block in ratios.values() for b in per_block})
    lines = [
        f"Device: {args.device}; 14B widths, {args.layers} blocks, random bf16 weights (seed 0); 1 person, "
        f"{args.frames} frames at {args.size}×{args.size} ({lt * lh * lw // 4} tokens). ||token mean|| / "
        "||input − token mean|| of each block linear's input (the audio adapter's linears are not block linears).",
        "",
        "| linear | " + " | ".join(f"block {b}" for b in blocks) + " |",
        "|---|" + "---|" * len(blocks),
    ]
    for name, per_block in ratios.items():
        lines.append(f"| `{name}` | " + " | ".join(f"{per_block[b]:.2f}" for b in blocks) + " |")
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
