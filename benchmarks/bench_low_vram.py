"""Low-VRAM mode (MultiTalk's --num_persistent_param_in_dit) on the full-size DiT: seconds per forward and peak GPU
memory with the whole DiT resident versus N = 0 and N = 7e9 resident block parameters (diffusers group offloading,
the other blocks streamed from pinned CPU memory with prefetch on a side CUDA stream).

Default: the 14B config with random bf16 weights (bench_transformer's FULL_CONFIG / build_model / make_inputs), 81
frames at 640x640 (33,600 tokens), 1 person, SDPA attention; median of 3 forwards after 1 warm-up per setup (the
warm-up of an offloaded setup also learns the blocks' order for the prefetching). Prints a markdown table last and,
with --out DIR, writes it to DIR/bench_low_vram.md.

    python benchmarks/bench_low_vram.py --out docs/                      # on an H100: about 3-5 minutes
    python benchmarks/bench_low_vram.py --device cpu --layers 2 --dim-scale 8 --frames 5 --height 64 --width 64 \\
        --setups resident,0,1e7                                          # CPU smoke run

Memory: the weights (about 38 GB in bf16) are built on the GPU (fast random init; --init-device cpu builds them on
the CPU, about 2 minutes single-threaded) and then live in host RAM for the offloaded setups: one pinned copy of the
streamed blocks (about 36 GB at N = 0; --low-cpu-mem-usage pins at each transfer instead). A 128 GB host is enough.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_transformer import FULL_CONFIG, build_model, make_inputs  # noqa: E402

from diffusers_multitalk.pipelines.low_vram import apply_dit_low_vram, remove_dit_low_vram  # noqa: E402


BACKENDS = {"sdpa": "native", "cudnn": "_native_cudnn", "flash": "flash"}


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def gb(n_bytes: float) -> float:
    return n_bytes / 1e9


def h2d_bandwidth(device, n_bytes=1 << 30, repeats=5):
    """Pinned host -> device copy rate (bytes/s), the rate the streamed blocks move at."""
    if torch.device(device).type != "cuda":
        return float("nan")
    host = torch.empty(n_bytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dev.copy_(host, non_blocking=True)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        dev.copy_(host, non_blocking=True)
    sync(device)
    rate = n_bytes * repeats / (time.perf_counter() - start)
    del host, dev
    return rate


def time_forward(model, inputs, warmup, repeats, device):
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            sync(device)
            start = time.perf_counter()
            out = model(**inputs, return_dict=False)[0]
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
            del out
    return times


def parse_setup(text: str):
    """'resident' -> None; '0', '7e9', '7000000000' -> an int budget."""
    if text == "resident":
        return None
    value = float(text)
    if value < 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"a setup is 'resident' or a parameter count >= 0, got {text!r}")
    return int(value)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", default="resident,0,7e9", help="comma list: resident and/or parameter budgets N")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=640)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--persons", type=int, default=1)
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--dim-scale", type=int, default=1, help="divide widths by this (smoke tests only)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="sdpa", choices=sorted(BACKENDS), help="attention backend (sdpa)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--init-device", default=None, help="where the random weights are built (default: --device)")
    parser.add_argument("--no-stream", action="store_true", help="synchronous block copies (no prefetch stream)")
    parser.add_argument("--low-cpu-mem-usage", action="store_true", help="pin at each transfer, no pinned copy kept")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    setups = [parse_setup(s.strip()) for s in args.setups.split(",") if s.strip()]
    config = dict(FULL_CONFIG, num_layers=args.layers)
    if args.dim_scale > 1:
        config.update(
            num_attention_heads=40 // args.dim_scale,
            ffn_dim=13824 // args.dim_scale,
            added_kv_proj_dim=5120 // args.dim_scale,
        )

    started = time.perf_counter()
    bandwidth = h2d_bandwidth(device)
    model = build_model(config, args.init_device or args.device)
    model.set_attention_backend(BACKENDS[args.backend])
    built = time.perf_counter() - started
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    block_params = sum(p.numel() for p in model.blocks[0].parameters())
    block_bytes = sum(p.numel() * p.element_size() for p in model.blocks[0].parameters())
    inputs, (lt, lh, lw) = make_inputs(args.persons, args.frames, args.height, args.width, device)
    print(
        f"built {weights / 1e9:.1f} GB of weights in {built:.0f} s; one block: {block_params / 1e6:.0f} M parameters, "
        f"{block_bytes / 1e9:.2f} GB; pinned H2D {bandwidth / 1e9:.1f} GB/s",
        flush=True,
    )

    rows = []
    for budget in setups:
        if getattr(model, "_multitalk_low_vram_plan", None) is not None:
            remove_dit_low_vram(model)
        if on_cuda:
            torch.cuda.empty_cache()
        t0 = time.perf_counter()
        if budget is None:
            model.to(device)
            resident, streamed = args.layers, 0
        else:
            model.to("cpu")  # the streamed blocks start in host RAM, as a low-VRAM user's would
            if on_cuda:
                torch.cuda.empty_cache()
            plan = apply_dit_low_vram(
                model, device, budget, use_stream=not args.no_stream, low_cpu_mem_usage=args.low_cpu_mem_usage
            )
            resident, streamed = len(plan.resident_blocks), len(plan.offloaded_blocks)
            print(plan.summary(), flush=True)
        sync(device)
        placed = time.perf_counter() - t0
        at_rest = torch.cuda.memory_allocated() if on_cuda else float("nan")
        if on_cuda:
            torch.cuda.reset_peak_memory_stats()
        times = time_forward(model, inputs, args.warmup, args.repeats, device)
        median = statistics.median(times)
        row = dict(
            setup="resident" if budget is None else f"N={budget:.3g}",
            budget=budget,
            resident_blocks=resident,
            streamed_blocks=streamed,
            seconds=median,
            all_seconds=times,
            at_rest_gb=gb(at_rest),
            peak_gb=gb(torch.cuda.max_memory_allocated()) if on_cuda else float("nan"),
            streamed_gb_per_forward=gb(streamed * block_bytes),
            placement_seconds=placed,
        )
        rows.append(row)
        print(json.dumps(row), flush=True)

    base = next((r["seconds"] for r in rows if r["budget"] is None), None)
    device_name = torch.cuda.get_device_name(device) if on_cuda else "cpu"
    header = (
        f"device: {device_name}; torch {torch.__version__}; config: dim {config['num_attention_heads'] * 128}, "
        f"{args.layers} layers ({block_params / 1e6:.0f} M parameters, {block_bytes / 1e9:.2f} GB a block), "
        f"{args.persons} person(s), {args.frames} frames at {args.width}x{args.height} ({lt * lh * lw // 4} tokens); "
        f"bf16 random weights ({weights / 1e9:.1f} GB); attention {args.backend}; "
        f"{'prefetch on a side stream' if on_cuda and not args.no_stream else 'synchronous copies'}"
        f"{', low_cpu_mem_usage' if args.low_cpu_mem_usage else ''}; pinned H2D {bandwidth / 1e9:.1f} GB/s; "
        f"median of {args.repeats} after {args.warmup} warm-up forward(s); total run {time.perf_counter() - started:.0f} s"
    )
    table = [
        "| setup | resident blocks | streamed blocks | s / forward | vs resident | GB on GPU at rest | peak GB | GB streamed / forward |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['seconds'] / base:.2f}x" if base else "-"
        table.append(
            f"| {r['setup']} | {r['resident_blocks']} | {r['streamed_blocks']} | {r['seconds']:.3f} | {ratio} | "
            f"{r['at_rest_gb']:.1f} | {r['peak_gb']:.1f} | {r['streamed_gb_per_forward']:.2f} |"
        )
    text = header + "\n\n" + "\n".join(table) + "\n"
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench_low_vram.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
