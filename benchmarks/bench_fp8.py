"""Times and checks FP8 / 8-bit set-ups of the MultiTalk DiT forward at full size (random bf16 weights), against bf16.

Each job is SETUP@SHAPE, run in the order given (put the important ones first: with --budget-s the rest are
skipped once the budget is spent). Every set-up gets a freshly built model from the same seed (identical random
weights), so one forward's output of each set-up is compared with bf16's on the same inputs (relative L2).

SETUP: a '+'-list of
  bf16 | fp8 (torchao row-wise e4m3, dynamic activations) | fp8_tensor | int8_dynamic (torchao W8A8 int8)
  | quanto_int8 (MultiTalk's own int8 weights-only quantisation, optimum-quanto; always eager)
  and options: sage (SageAttention 1 Triton kernel for the video self-attention), fa3fp8 (FlashAttention-3's FP8
  forward for it: an FA3 wheel built with FA3_FP8=1 benchmarks/build_flash_attention_3.sh), eager (no
  compile_repeated_blocks), tuned (torchao's Inductor tuning, `enable_fp8(..., tune_kernels=True)`: process-wide,
  so every set-up after it in the run is compiled with it too); the torchao modes keep `enable_fp8`'s default float
  parts (FP8: the cross-attention's context k/v in bf16, its output projection a `TokenMeanFloatLinear`) unless
  `all` (every block linear quantised); keep:NAME[/NAME...] and mean:NAME[/NAME...] add block modules to
  `keep_float` (linears left in bf16) and `float_token_mean`, e.g. keep:attn2 or mean:attn1.to_out; audio (the
  audio adapter's q and output projections of the video tokens quantised too, `enable_fp8(audio_projections=True)`;
  with mean:audio_attn.to_out its output projection as a `TokenMeanFloatLinear`)
SHAPE: 480p1, 480p2 (81 frames at 640x640, 1 / 2 persons: 33,600 tokens), 720p1, 720p2 (960x960: 75,600 tokens),
  480p2b2 (2 persons, batch 2: the two guidance passes of a step in one forward)

    python benchmarks/bench_fp8.py --jobs bf16@480p1,fp8@480p1,fp8+sage@480p1 --out $OUT

Also measures the bf16 and FP8 (row-wise scaled, torch._scaled_mm) matmul rates in the same run. Writes
bench_fp8.json (and .md) to --out after every job.

Deviation studies on the CPU (no timings worth reporting; eager): --device cpu --fp8-on-cpu stands torchao's FP8
hardware check down (torch's CPU _scaled_mm runs e4m3 products), with fewer --layers and --frames, e.g.

    python benchmarks/bench_fp8.py --device cpu --fp8-on-cpu --layers 4 --frames 9 --frames-scale 2 \
        --jobs bf16@480p1,quanto_int8@480p1,fp8@480p1,fp8+keep:attn2@480p1
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config as inductor_config


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_transformer import FULL_CONFIG, build_model, forward_flops, make_inputs, matmul_rate  # noqa: E402


SHAPES = {
    "480p1": (1, 640, 640, 1),
    "480p2": (2, 640, 640, 1),
    "720p1": (1, 960, 960, 1),
    "720p2": (2, 960, 960, 1),
    "480p2b2": (2, 640, 640, 2),
}


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def fp8_matmul_rate(n=8192, repeats=20):
    """Row-wise scaled e4m3 x e4m3 -> bf16 through torch._scaled_mm (what torchao's row-wise FP8 linears call)."""
    a = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn).t()  # column-major second operand
    sa = torch.ones(n, 1, device="cuda")
    sb = torch.ones(1, n, device="cuda")
    for _ in range(3):
        torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
    sync()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def shape_inputs(shape, device, frames=81):
    persons, height, width, batch = SHAPES[shape]
    inputs, dims = make_inputs(persons, frames, height, width, device)
    if batch > 1:
        for key in ("hidden_states", "encoder_hidden_states", "encoder_hidden_states_image", "audio_embeds"):
            inputs[key] = torch.cat([inputs[key]] * batch)
        inputs["timestep"] = inputs["timestep"].expand(batch)
    return inputs, dims, persons, batch


def fp8_options(flags, mode="fp8") -> dict:
    """`enable_fp8` keywords from a set-up's options: `tuned`, `all` (no float parts: every block linear
    quantised), `keep:NAME[/NAME...]` and `mean:NAME[/NAME...]` (added to the float parts), `audio` (the audio
    adapter's q and output projections in FP8 too)."""
    from diffusers_multitalk.models.fp8 import DEFAULT_FLOAT_PARTS, NO_FLOAT_PARTS

    def named(prefix):
        return tuple(
            name for flag in sorted(flags) if flag.startswith(prefix) for name in flag[len(prefix) :].split("/")
        )

    parts = NO_FLOAT_PARTS if "all" in flags else DEFAULT_FLOAT_PARTS[mode]
    return dict(
        tune_kernels="tuned" in flags,
        keep_float=(*parts["keep_float"], *named("keep:")),
        float_token_mean=(*parts["float_token_mean"], *named("mean:")),
        audio_projections="audio" in flags,
    )


def build_setup(setup, config, device):
    """A fresh model (seed 0) with the set-up applied; returns (model, description)."""
    from diffusers_multitalk.models.fp8 import enable_fp8, quantized_linear_count, set_self_attention_kernel

    options = setup.split("+")
    base, flags = options[0], set(options[1:])
    torch.manual_seed(0)
    model = build_model(config, device)
    model.set_attention_backend("native")
    info = {}
    if base in ("fp8", "fp8_tensor", "int8_dynamic"):
        options = fp8_options(flags, base)
        info["quantized_linears"] = len(enable_fp8(model, base, **options))
        info["kept_in_bf16"] = list(options["keep_float"])
        info["float_token_mean"] = list(options["float_token_mean"])
        info["weight_types"] = quantized_linear_count(model)
    elif base == "quanto_int8":
        from diffusers_multitalk.loaders import quantized

        quantized.quantize_model(model, "int8")
        flags.add("eager")
    elif base != "bf16":
        raise ValueError(f"unknown set-up {setup}")
    if "sage" in flags:
        set_self_attention_kernel(model, "sage_triton")
    if "fa3fp8" in flags:
        set_self_attention_kernel(model, "flash3_fp8")
    compiled = "eager" not in flags and torch.device(device).type == "cuda"
    if compiled:
        model.compile_repeated_blocks(fullgraph=False)
    info["compiled"] = compiled
    info["inductor_coordinate_descent_tuning"] = bool(inductor_config.coordinate_descent_tuning)
    info["weights_gb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    info["checksum"] = float(model.blocks[0].attn1.to_q.bias.float().sum())  # same seed -> same weights
    return model, info


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", default="bf16@480p1,fp8@480p1,fp8+sage@480p1")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=1e9, help="skip jobs that would start after this many s")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--dim-scale", type=int, default=1, help="divide widths by this (smoke tests only)")
    parser.add_argument("--frames-scale", type=int, default=1, help="divide height/width by this (smoke tests only)")
    parser.add_argument("--frames", type=int, default=81, help="video frames of every shape")
    parser.add_argument(
        "--fp8-on-cpu", action="store_true", help="stand torchao's FP8 hardware check down (CPU deviation studies)"
    )
    args = parser.parse_args()
    if args.fp8_on_cpu:
        import torchao.float8.inference as float8_inference
        import torchao.quantization.quant_api as quant_api

        for module in (float8_inference, quant_api):  # torch's CPU _scaled_mm runs e4m3; torchao refuses it
            module._check_hardware_support = lambda *a, **k: None

    t_start = time.perf_counter()
    device = args.device
    on_cuda = torch.device(device).type == "cuda"
    config = dict(FULL_CONFIG, num_layers=args.layers)
    if args.dim_scale > 1:
        config.update(
            num_attention_heads=40 // args.dim_scale,
            ffn_dim=13824 // args.dim_scale,
            added_kv_proj_dim=5120 // args.dim_scale,
        )
    if args.frames_scale > 1:
        for key, (p, h, w, b) in list(SHAPES.items()):
            SHAPES[key] = (p, h // args.frames_scale, w // args.frames_scale, b)
    torch._dynamo.config.cache_size_limit = 64
    torch._dynamo.config.automatic_dynamic_shapes = False  # one static graph per shape, as a user's run has

    result = dict(
        device=torch.cuda.get_device_name() if on_cuda else "cpu",
        torch=torch.__version__,
        config=config,
        bf16_matmul_tflops=matmul_rate(device, n=8192 if on_cuda else 256) / 1e12,
        rows=[],
        skipped=[],
    )
    result["fp8_matmul_tflops"] = fp8_matmul_rate() / 1e12 if on_cuda else None
    try:
        import torchao

        result["torchao"] = torchao.__version__
    except ImportError:
        result["torchao"] = None
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)

    references = {}  # shape -> bf16 output (compiled bf16 first, eager bf16 otherwise)
    model, current = None, None
    for job in args.jobs.split(","):
        setup, shape = job.split("@")
        elapsed = time.perf_counter() - t_start
        if elapsed > args.budget_s:
            result["skipped"].append(job)
            print(f"skip {job}: {elapsed:.0f} s spent", flush=True)
            continue
        row = dict(setup=setup, shape=shape)
        try:
            if setup != current:
                model = None
                gc.collect()
                if on_cuda:
                    torch.cuda.empty_cache()
                torch._dynamo.reset()
                t0 = time.perf_counter()
                model, info = build_setup(setup, config, device)
                current = setup
                row["build_s"] = time.perf_counter() - t0
                row.update(info)
            inputs, (lt, lh, lw), persons, batch = shape_inputs(shape, device, args.frames)
            if on_cuda:
                torch.cuda.reset_peak_memory_stats()
            times = []
            with torch.no_grad():
                for _i in range(args.warmup + args.repeats):
                    sync()
                    t0 = time.perf_counter()
                    out = model(**inputs, return_dict=False)[0]
                    sync()
                    times.append(time.perf_counter() - t0)
            measured = times[args.warmup :] or times
            seconds = statistics.median(measured)
            flops = batch * forward_flops(config, lt, lh, lw, persons)
            out = out.float()
            row.update(
                persons=persons,
                batch=batch,
                tokens=lt * lh * lw // 4,
                first_forward_s=times[0],
                all_seconds=measured,
                seconds=seconds,
                seconds_per_sample=seconds / batch,
                tflop=flops / 1e12,
                tflops_per_s=flops / seconds / 1e12,
                of_bf16_matmul_rate=flops / seconds / 1e12 / result["bf16_matmul_tflops"],
                peak_gb=torch.cuda.max_memory_allocated() / 1e9 if on_cuda else None,
                output_rms=float(out.pow(2).mean().sqrt()),
                finite=bool(torch.isfinite(out).all()),
            )
            if result["fp8_matmul_tflops"]:
                row["of_fp8_matmul_rate"] = row["tflops_per_s"] / result["fp8_matmul_tflops"]
            if setup in ("bf16", "bf16+eager") and shape not in references:
                references[shape] = (setup, out.cpu())
            elif shape in references:
                ref_setup, ref = references[shape]
                out = out.cpu()
                row["rel_l2_vs_bf16"] = float((out - ref).norm() / ref.norm())
                row["max_abs_vs_bf16"] = float((out - ref).abs().max())
                row["reference"] = ref_setup
            del inputs, out
        except Exception as e:  # keep going: one broken set-up must not cost the others' device time
            row["error"] = f"{type(e).__name__}: {e}"[:2000]
            model, current = None, None
        row["elapsed_s"] = time.perf_counter() - t_start
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "bench_fp8.json").write_text(json.dumps(result, indent=1))

    header = (
        f"device: {result['device']}; torch {result['torch']}; torchao {result['torchao']}; 14B MultiTalk DiT, "
        f"{args.layers} layers, random bf16 weights (seed 0, identical for every set-up), {args.frames} frames; "
        f"matmul rates measured in the same run ({'8192^3' if on_cuda else '256^3, CPU'}): "
        f"bf16 {result['bf16_matmul_tflops']:.1f} TFLOP/s, fp8 row-wise "
        f"{(result['fp8_matmul_tflops'] or float('nan')):.0f} TFLOP/s; median of {args.repeats} after {args.warmup} "
        "warm-up forward(s) (compilation in the warm-up)"
    )
    lines = [
        "| set-up | shape | tokens | s / forward | TFLOP/s | of bf16 rate | of fp8 rate | peak GB | rel L2 vs bf16 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['setup']} | {r['shape']} | error: {r['error'][:120]} | | | | | | |")
            continue
        lines.append(
            f"| {r['setup']} | {r['shape']} | {r['tokens']} | {r['seconds']:.3f} | {r['tflops_per_s']:.0f} | "
            f"{r['of_bf16_matmul_rate']:.0%} | {r.get('of_fp8_matmul_rate', float('nan')):.0%} | "
            f"{(r['peak_gb'] or float('nan')):.1f} | {r.get('rel_l2_vs_bf16', float('nan')):.4f} |"
        )
    text = header + "\n\n" + "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench_fp8.json").write_text(json.dumps(result, indent=1))
        (Path(args.out) / "bench_fp8.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
