"""The fast preset end to end: a 2-person 81-frame 480P clip, 8 steps x 2 passes (text scale 1, audio scale 2,
shift 2; `presets.FAST_PRESET`), full-size random components, timed by phase, and the deviation of its final latents
from the bf16 run's.

Each SETUP in --setups gets a freshly built DiT from the same seed (identical random weights) in the same pipeline:
  bf16 | fp8 | fp8_tensor | int8_dynamic (torchao, `models.fp8.enable_fp8`) | quanto_int8 (MultiTalk's int8 weights)
  options: +sage (SageAttention 1 Triton self-attention), +fa3fp8 (FlashAttention-3's FP8 self-attention: an FA3
  wheel built with FA3_FP8=1), +eager (no compile), +vae32 (VAE in float32),
  +latents (deviation only: no warm-up call, no decode), +tuned (torchao's Inductor tuning, `enable_fp8(...,
  tune_kernels=True)`: process-wide, so every set-up after it in the run is compiled with it too),
  +all, +keep:NAME[/NAME...], +mean:NAME[/NAME...], +audio (the FP8 linears' float parts: every block linear
  quantised, or more of them left in bf16 / as `TokenMeanFloatLinear`, or the audio adapter's projections of the
  video tokens quantised too; bench_fp8.py says more),
  +unipc (diffusers' UniPCMultistepScheduler with flow sigmas and the preset's shift instead of MultiTalk's Euler
  schedule), +steps:N (N denoising steps instead of the preset's 8)
The first set-up is the reference of the latent deviation (and every run also reports its deviation from each
earlier run, `latents_rel_l2_vs`, so a many-step Euler run with +latents can serve as the converged reference); "total_s" reports the first one timed in full (not
+latents), so `bf16+latents,fp8+fa3fp8` times the fast set-up against a bf16 reference. Compiled set-ups get a
1-step warm-up call first (compilation), not counted. Also reports the VAE's bf16 decode error (the reference's
final latents decoded in bf16 and in float32).

    python benchmarks/bench_fast_preset.py --setups bf16,quanto_int8+latents,fp8+eager+latents --out $OUT
    python benchmarks/bench_fast_preset.py --tiny --device cpu --setups bf16,quanto_int8   # smoke test

Writes bench_fast_preset.json ("preset": "fast", "total_s", device, set-up, peak memory) and .md to --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch._inductor.config as inductor_config


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_fp8 import fp8_options  # noqa: E402
from bench_pipeline import PhaseTimer, build_full_pipeline, speech  # noqa: E402

from diffusers_multitalk.presets import preset_call_kwargs, preset_cli_flags  # noqa: E402


def fresh_transformer(args, device):
    torch.manual_seed(0)
    if args.tiny:
        from diffusers_multitalk import make_tiny_pipeline

        return make_tiny_pipeline(seed=0).transformer.to(device)
    from bench_transformer import FULL_CONFIG, build_model

    return build_model(FULL_CONFIG, device)


def make_scheduler(name):
    """MultiTalk's Euler schedule (the pipeline's default) or UniPC configured for flow matching, both with the
    preset's shift (the call passes it too)."""
    from diffusers import UniPCMultistepScheduler

    from diffusers_multitalk.pipelines.sampling import make_multitalk_scheduler

    shift = preset_call_kwargs("fast")["shift"]
    if name == "unipc":
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    return make_multitalk_scheduler(shift=shift)


def apply(pipe, setup, args, device):
    from diffusers_multitalk.models.fp8 import enable_fp8, set_self_attention_kernel

    options = setup.split("+")
    base, flags = options[0], set(options[1:])
    pipe.transformer = None
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    transformer = fresh_transformer(args, device)
    transformer.set_attention_backend("native")
    if base in ("fp8", "fp8_tensor", "int8_dynamic"):
        enable_fp8(transformer, base, **fp8_options(flags, base))
    elif base == "quanto_int8":
        from diffusers_multitalk.loaders import quantized

        quantized.quantize_model(transformer, "int8")
        flags.add("eager")
    elif base != "bf16":
        raise ValueError(f"unknown set-up {setup}")
    kernel = "sage_triton" if "sage" in flags else "flash3_fp8" if "fa3fp8" in flags else None
    if kernel is not None:
        set_self_attention_kernel(transformer, kernel)
    compiled = "eager" not in flags and torch.device(device).type == "cuda"
    if compiled:
        transformer.compile_repeated_blocks(fullgraph=False)
    pipe.transformer = transformer
    pipe.scheduler = make_scheduler("unipc" if "unipc" in flags else "euler")
    steps = [int(flag.split(":", 1)[1]) for flag in flags if flag.startswith("steps:")]
    vae_dtype = torch.float32 if "vae32" in flags else torch.bfloat16
    pipe.vae.to(vae_dtype)
    return dict(
        dit=base,
        self_attention=kernel or "PyTorch SDPA",
        compiled=compiled,
        vae_dtype=str(vae_dtype).replace("torch.", ""),
        latents_only="latents" in flags,
        scheduler=type(pipe.scheduler).__name__,
        num_inference_steps=steps[0] if steps else preset_call_kwargs("fast")["num_inference_steps"],
        inductor_coordinate_descent_tuning=bool(inductor_config.coordinate_descent_tuning),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", default="bf16")
    parser.add_argument("--persons", type=int, default=2)
    parser.add_argument("--resolution", default="multitalk-480")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny random pipeline (smoke test)")
    parser.add_argument("--budget-s", type=float, default=1e9, help="skip set-ups that would start after this many s")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    parser.add_argument("--name", default="bench_fast_preset")
    args = parser.parse_args()

    t_start = time.perf_counter()
    device = args.device
    on_cuda = torch.device(device).type == "cuda"
    torch._dynamo.config.cache_size_limit = 64
    if args.tiny:
        from diffusers_multitalk import make_tiny_pipeline

        pipe = make_tiny_pipeline(seed=0).to(device)
    else:
        pipe = build_full_pipeline(device)
    build_seconds = time.perf_counter() - t_start
    pipe.set_progress_bar_config(disable=True)

    preset = preset_call_kwargs("fast")
    size = dict(height=64, width=96, num_frames=9) if args.tiny else dict(resolution=args.resolution, num_frames=81)
    side = 960 if "720" in args.resolution else 640
    image = (np.random.RandomState(0).rand(side, side, 3) * 255).astype(np.uint8)
    seconds_per_person = 0.4 if args.tiny else 3.3 / args.persons
    audio = [(speech(seconds_per_person, 150 + 90 * p), 16000) for p in range(args.persons)]
    # mode="clip": one chunk, as measured (with no mode the pipeline would stream the speech's last frames as well)
    call = dict(
        image=image, audio=audio, prompt="Two people talk in a studio.", audio_type="add", mode="clip", **size, **preset
    )

    result = dict(
        preset="fast",
        preset_call=preset,
        preset_flags=preset_cli_flags("fast"),
        device=torch.cuda.get_device_name() if on_cuda else "cpu",
        torch=torch.__version__,
        clip=f"{args.persons} person(s), 81 frames, {args.resolution}, clip mode, colour correction on",
        components="tiny random"
        if args.tiny
        else "full-size random (umT5-XXL, ViT-H/14 CLIP, Wan2.1 VAE, "
        "wav2vec2-base, 14B MultiTalk DiT with seed-0 weights)",
        pipeline_build_s=build_seconds,
        runs=[],
        skipped=[],
    )
    reference = None
    all_latents = {}
    for setup in args.setups.split(","):
        elapsed = time.perf_counter() - t_start
        if elapsed > args.budget_s:
            result["skipped"].append(setup)
            print(f"skip {setup}: {elapsed:.0f} s spent", flush=True)
            continue
        run = dict(setup=setup)
        try:
            run.update(apply(pipe, setup, args, device))
            if run["compiled"] and not run["latents_only"]:
                t0 = time.perf_counter()
                pipe(**dict(call, num_inference_steps=1), generator=torch.Generator(device).manual_seed(0))
                run["warmup_s"] = time.perf_counter() - t0
            timer = PhaseTimer(device)
            originals = {}
            for attr, phase in [
                ("encode_prompt", "text encoder"),
                ("encode_image", "image encoder"),
                ("encode_audio", "audio load + wav2vec2"),
                ("prepare_condition", "VAE encode"),
                ("decode_latents", "VAE decode"),
            ]:
                if hasattr(pipe, attr):
                    originals[attr] = getattr(pipe, attr)
                    setattr(pipe, attr, timer.wrap(originals[attr], phase))
            dit_forward = pipe.transformer.forward
            pipe.transformer.forward = timer.wrap(dit_forward, "DiT forwards")
            final = {}

            def keep_latents(p, step, t, kwargs):
                final["latents"] = kwargs["latents"].detach().float().clone()  # noqa: B023 - used in this pass only
                return {}

            if on_cuda:
                torch.cuda.reset_peak_memory_stats()
            timer.sync()
            t0 = time.perf_counter()
            pipe(
                **dict(call, num_inference_steps=run["num_inference_steps"]),
                generator=torch.Generator(device).manual_seed(0),
                callback_on_step_end=keep_latents,
                callback_on_step_end_tensor_inputs=["latents"],
                output_type="latent" if run["latents_only"] else "np",
            )
            timer.sync()
            total = time.perf_counter() - t0
            for attr, fn in originals.items():
                setattr(pipe, attr, fn)
            pipe.transformer.forward = dit_forward
            phases = dict(timer.seconds)
            phases["other (guidance, scheduler, colour correction, post-processing)"] = total - sum(phases.values())
            run.update(
                total_s=total,
                phases=phases,
                dit_forwards=timer.calls["DiT forwards"],
                s_per_dit_forward=timer.seconds["DiT forwards"] / max(timer.calls["DiT forwards"], 1),
                peak_memory_gb=torch.cuda.max_memory_allocated() / 1e9 if on_cuda else None,
            )
            latents = final["latents"].cpu()
            run["latents_finite"] = bool(torch.isfinite(latents).all())
            run["latents_rel_l2_vs"] = {
                earlier: float((latents - other).norm() / other.norm()) for earlier, other in all_latents.items()
            }
            all_latents[setup] = latents
            if reference is None:
                reference = (setup, latents)
            else:
                run["latents_rel_l2_vs_reference"] = float((latents - reference[1]).norm() / reference[1].norm())
                run["reference"] = reference[0]
        except Exception as e:  # keep going: one broken set-up must not cost the others' device time
            run["error"] = f"{type(e).__name__}: {e}"[:2000]
            pipe.transformer = None  # its DiT would stay on the GPU beside the next set-up's (out of memory)
            gc.collect()
            if on_cuda:
                torch.cuda.empty_cache()
        run["elapsed_s"] = time.perf_counter() - t_start
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
        timed = [r for r in result["runs"] if "total_s" in r and not r["latents_only"]]
        if timed and "total_s" not in result:
            first = timed[0]
            result.update(total_s=first["total_s"], setup=first["setup"], peak_memory_gb=first["peak_memory_gb"])
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / f"{args.name}.json").write_text(json.dumps(result, indent=1))

    # The VAE's bf16 decode error, on the reference run's final latents.
    if reference is not None and (time.perf_counter() - t_start) < args.budget_s + 60:
        try:
            lat = reference[1].to(device)
            decoded = {}
            for dtype in (torch.float32, torch.bfloat16):
                pipe.vae.to(dtype)
                timer = PhaseTimer(device)
                decoded[dtype] = timer.wrap(pipe.decode_latents, "decode")(lat).float().cpu()
                result[f"vae_decode_s_{str(dtype).replace('torch.', '')}"] = timer.seconds["decode"]
            ref = decoded[torch.float32]
            result["vae_bf16_decode_rel_l2"] = float((decoded[torch.bfloat16] - ref).norm() / ref.norm())
            result["vae_bf16_decode_max_abs"] = float((decoded[torch.bfloat16] - ref).abs().max())
        except Exception as e:
            result["vae_error"] = f"{type(e).__name__}: {e}"[:1000]

    lines = [
        f"device: {result['device']}; torch {result['torch']}; {result['components']}; {result['clip']}; "
        f"preset fast: {result['preset_call']}",
        "",
        "| set-up | total s | DiT forwards | s / forward | VAE decode s | peak GB | latents rel L2 vs first |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        if "error" in r:
            lines.append(f"| {r['setup']} | error: {r['error'][:150]} | | | | | |")
            continue
        lines.append(
            f"| {r['setup']} | {r['total_s']:.2f} | {r['dit_forwards']} | {r['s_per_dit_forward']:.3f} | "
            f"{r['phases'].get('VAE decode', 0):.2f} | {(r['peak_memory_gb'] or float('nan')):.1f} | "
            f"{r.get('latents_rel_l2_vs_reference', float('nan')):.4f} |"
        )
    if "vae_bf16_decode_rel_l2" in result:
        lines.append(
            f"\nVAE decode of the first run's latents in bf16 vs float32: rel L2 "
            f"{result['vae_bf16_decode_rel_l2']:.4f}, max abs {result['vae_bf16_decode_max_abs']:.4f}; "
            f"{result['vae_decode_s_bfloat16']:.2f} s vs {result['vae_decode_s_float32']:.2f} s"
        )
    text = "\n".join(lines) + "\n"
    if args.out:
        (Path(args.out) / f"{args.name}.json").write_text(json.dumps(result, indent=1))
        (Path(args.out) / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
