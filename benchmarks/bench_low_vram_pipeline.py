"""The whole pipeline in low VRAM: peak GPU memory and time of a full generation call, resident against low-VRAM.

The 2-person 81-frame 480P clip (640x640, clip mode) end to end with the fast preset (8 steps x 2 passes, text scale 1,
audio scale 2, shift 2) on full-size random components (umT5-XXL, ViT-H/14 CLIP, Wan2.1 VAE, wav2vec2-base and the
14B MultiTalk DiT, bf16; the VAE in bf16 as the fast preset runs it), eager with PyTorch SDPA in every set-up so that
the ratio measures the placement alone. Set-ups, each after a 1-step warm-up call of its own:

  resident        everything on the GPU (`pipe.to("cuda")`)
  low             `enable_low_vram(pipe, "cuda", num_persistent_params=0)`: every DiT block streamed from pinned
                  memory on a side stream (MultiTalk's `--num_persistent_param_in_dit 0`), umT5, CLIP, wav2vec2 and
                  the VAE group-offloaded one layer or block at a time (`--offload_model True`)
  +tiled          the VAE decodes in tiles (`pipe.vae.enable_tiling()`)
  +N=7e9          another DiT budget (parameters kept resident)

Reported per set-up: the whole call's peak of `torch.cuda.max_memory_allocated` and `max_memory_reserved` (the peak
statistics are reset at every phase boundary and the maxima of all segments kept), each phase's peak and seconds,
the total seconds, its ratio to the first set-up's, and the deviation of the final latents and of the frames from the
first set-up's. The CUDA context itself (outside PyTorch's allocator) is measured once and reported beside them.

    python benchmarks/bench_low_vram_pipeline.py --setups resident,low+tiled --out $OUT
    python benchmarks/bench_low_vram_pipeline.py --tiny --device cpu --setups resident,low+tiled   # smoke test

Writes bench_low_vram_pipeline.json and .md to --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_pipeline import build_full_pipeline, speech  # noqa: E402

from diffusers_multitalk.presets import preset_call_kwargs  # noqa: E402


PHASES = [
    ("encode_prompt", "text encoder"),
    ("encode_image", "image encoder"),
    ("encode_audio", "audio load + wav2vec2"),
    ("prepare_condition", "VAE encode"),
    ("decode_latents", "VAE decode"),
]


class PhaseMeter:
    """Wraps callables: device-synchronised seconds per phase and, on CUDA, each phase's peak memory. The peak
    statistics are reset at every phase boundary, and the maxima of all segments (phases and the time between them)
    are kept, so `peak()` is the whole call's peak."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self.phase_peak = defaultdict(float)
        self.segments = []  # (allocated, reserved) peaks of every segment, in bytes

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def cut(self):
        """Closes the current segment; returns its (allocated, reserved) peaks."""
        if not self.cuda:
            return (0, 0)
        self.sync()
        peaks = (torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved())
        self.segments.append(peaks)
        torch.cuda.reset_peak_memory_stats()
        return peaks

    def wrap(self, fn, phase):
        def measured(*args, **kwargs):
            self.cut()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            allocated, _ = self.cut()
            self.seconds[phase] += time.perf_counter() - start
            self.calls[phase] += 1
            self.phase_peak[phase] = max(self.phase_peak[phase], allocated / 1e9)
            return out

        return measured

    def peak(self):
        self.cut()
        return tuple(max((s[i] for s in self.segments), default=0) / 1e9 for i in (0, 1))


def place(pipe, setup, device):
    """Puts the pipeline in the set-up's placement; returns a description."""
    from diffusers_multitalk.pipelines.low_vram import disable_low_vram, enable_low_vram

    options = setup.split("+")
    base, flags = options[0], set(options[1:])
    disable_low_vram(pipe)
    pipe.vae.disable_tiling()
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    info = dict(setup=setup)
    if base == "resident":
        pipe.to(device)
    elif base == "low":
        budgets = [float(flag[2:]) for flag in flags if flag.startswith("N=")]
        pipe.to("cpu")
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        plan = enable_low_vram(pipe, device, num_persistent_params=int(budgets[0]) if budgets else 0)
        info.update(plan=plan.summary(), components=plan.components)
    else:
        raise ValueError(f"unknown set-up {setup}")
    if "tiled" in flags:
        pipe.vae.enable_tiling()
    info["vae_tiling"] = bool(getattr(pipe.vae, "use_tiling", False))
    return info


def run_setup(pipe, setup, call, device, result, reference):
    run = place(pipe, setup, device)
    meter = PhaseMeter(device)
    t0 = time.perf_counter()
    pipe(**dict(call, num_inference_steps=1), generator=torch.Generator(device).manual_seed(0))
    run["warmup_s"] = time.perf_counter() - t0
    meter.cut()
    meter.segments.clear()
    originals = {attr: getattr(pipe, attr) for attr, _ in PHASES}
    for attr, phase in PHASES:
        setattr(pipe, attr, meter.wrap(originals[attr], phase))
    forward = pipe.transformer.forward
    pipe.transformer.forward = meter.wrap(forward, "DiT forwards")
    final = {}

    def keep_latents(p, step, t, kwargs):
        final["latents"] = kwargs["latents"].detach().float().cpu()
        return {}

    try:
        meter.sync()
        t0 = time.perf_counter()
        frames = pipe(
            **call,
            generator=torch.Generator(device).manual_seed(0),
            callback_on_step_end=keep_latents,
            callback_on_step_end_tensor_inputs=["latents"],
            output_type="np",
        ).frames
        meter.sync()
        total = time.perf_counter() - t0
    finally:
        for attr, fn in originals.items():
            setattr(pipe, attr, fn)
        pipe.transformer.forward = forward
    peak_allocated, peak_reserved = meter.peak()
    frames = torch.from_numpy(np.asarray(frames, dtype=np.float32))
    phases = dict(meter.seconds)
    phases["other (guidance, scheduler, colour correction, post-processing)"] = total - sum(phases.values())
    run.update(
        total_s=total,
        phases_s=phases,
        phase_peak_allocated_gb=dict(meter.phase_peak),
        dit_forwards=meter.calls["DiT forwards"],
        s_per_dit_forward=meter.seconds["DiT forwards"] / max(meter.calls["DiT forwards"], 1),
        peak_allocated_gb=peak_allocated if meter.cuda else None,
        peak_reserved_gb=peak_reserved if meter.cuda else None,
        frames_finite=bool(torch.isfinite(frames).all()),
    )
    if reference:
        ref = reference[0]
        run["reference"] = ref["setup"]
        run["vs_reference_time"] = total / ref["total_s"]
        run["latents_rel_l2_vs_reference"] = float((final["latents"] - reference[1]).norm() / reference[1].norm())
        run["frames_rel_l2_vs_reference"] = float((frames - reference[2]).norm() / reference[2].norm())
        run["frames_max_abs_vs_reference"] = float((frames - reference[2]).abs().max())
    else:
        reference.extend([run, final["latents"], frames])
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", default="resident,low+tiled")
    parser.add_argument("--persons", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny random pipeline (smoke test)")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()

    t_start = time.perf_counter()
    device = args.device
    on_cuda = torch.device(device).type == "cuda"
    context_gb = None
    if on_cuda:
        torch.cuda.init()
        free, total_memory = torch.cuda.mem_get_info()
        context_gb = (total_memory - free - torch.cuda.memory_reserved()) / 1e9
    if args.tiny:
        from diffusers_multitalk import make_tiny_pipeline

        pipe = make_tiny_pipeline(seed=0)
    else:
        pipe = build_full_pipeline(device)
    pipe.vae.to(torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    build_s = time.perf_counter() - t_start

    size = dict(height=64, width=96, num_frames=9) if args.tiny else dict(resolution="multitalk-480", num_frames=81)
    image = (np.random.RandomState(0).rand(640, 640, 3) * 255).astype(np.uint8)
    seconds_per_person = 0.4 if args.tiny else 3.3 / args.persons
    audio = [(speech(seconds_per_person, 150 + 90 * p), 16000) for p in range(args.persons)]
    call = dict(
        image=image,
        audio=audio,
        prompt="Two people talk in a studio.",
        audio_type="add",
        mode="clip",
        **size,
        **preset_call_kwargs("fast"),
    )
    result = dict(
        device=torch.cuda.get_device_name() if on_cuda else "cpu",
        torch=torch.__version__,
        clip=f"{args.persons} person(s), {size}, clip mode, fast preset {preset_call_kwargs('fast')}, eager, SDPA",
        components="tiny random"
        if args.tiny
        else "full-size random (umT5-XXL, ViT-H/14 CLIP, Wan2.1 VAE bf16, wav2vec2-base, 14B MultiTalk DiT bf16)",
        cuda_context_gb=context_gb,
        pipeline_build_s=build_s,
        runs=[],
    )
    reference = []
    for setup in args.setups.split(","):
        try:
            run = run_setup(pipe, setup, call, device, result, reference)
        except Exception as e:  # keep going: one broken set-up must not cost the others' device time
            run = dict(setup=setup, error=f"{type(e).__name__}: {e}"[:2000])
        run["elapsed_s"] = time.perf_counter() - t_start
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "bench_low_vram_pipeline.json").write_text(json.dumps(result, indent=1))
    if reference and result["runs"][-1].get("plan"):
        result["decode_only"] = decode_peaks(pipe, reference[1].to(device), device)
        print(json.dumps(result["decode_only"]), flush=True)
    write_table(result, args.out)
    if args.out:
        (Path(args.out) / "bench_low_vram_pipeline.json").write_text(json.dumps(result, indent=1))


def decode_peaks(pipe, latents, device):
    """The VAE decode alone in the last set-up's placement, whole and tiled: peak allocated GB and seconds."""
    rows = {}
    for tiled in (False, True):
        pipe.vae.enable_tiling() if tiled else pipe.vae.disable_tiling()
        meter = PhaseMeter(device)
        meter.wrap(pipe.decode_latents, "decode")(latents)
        rows["tiled" if tiled else "whole"] = dict(
            peak_allocated_gb=meter.phase_peak["decode"], seconds=meter.seconds["decode"]
        )
    return rows


def write_table(result, out):
    lines = [
        f"device: {result['device']}; torch {result['torch']}; {result['components']}; {result['clip']}; "
        f"CUDA context outside PyTorch's allocator: {result['cuda_context_gb'] or 0:.2f} GB",
        "",
        "| set-up | total s | vs first | s / DiT forward | peak allocated GB | peak reserved GB | text enc. peak GB | "
        "VAE decode peak GB | VAE decode s | latents rel L2 | frames rel L2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        if "error" in r:
            lines.append(f"| {r['setup']} | error: {r['error'][:150]} | | | | | | | | | |")
            continue
        nan = float("nan")
        lines.append(
            f"| {r['setup']} | {r['total_s']:.2f} | {r.get('vs_reference_time', 1.0):.2f}x | "
            f"{r['s_per_dit_forward']:.3f} | {r['peak_allocated_gb'] or nan:.2f} | {r['peak_reserved_gb'] or nan:.2f} | "
            f"{r['phase_peak_allocated_gb'].get('text encoder', nan):.2f} | "
            f"{r['phase_peak_allocated_gb'].get('VAE decode', nan):.2f} | {r['phases_s'].get('VAE decode', nan):.2f} | "
            f"{r.get('latents_rel_l2_vs_reference', nan):.2e} | {r.get('frames_rel_l2_vs_reference', nan):.2e} |"
        )
    for name, row in result.get("decode_only", {}).items():
        lines.append(
            f"\nVAE decode alone in the last placement, {name}: peak {row['peak_allocated_gb']:.2f} GB allocated, "
            f"{row['seconds']:.2f} s"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        (Path(out) / "bench_low_vram_pipeline.md").write_text(text)


if __name__ == "__main__":
    main()
