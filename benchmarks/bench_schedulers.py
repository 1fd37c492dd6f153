"""How far other flow-matching schedulers' videos are from the reference's Euler sampler, at equal step counts.

The tiny random MultiTalk pipeline on the CPU (its outputs mean nothing as pictures, but the sampling ODE is real: a
fixed velocity field the schedulers integrate). For each step count, the final latents of one video (`--seconds`
0.3: one 9-frame chunk; 0.68: two chunks with 5 motion frames, whose re-noised motion latents draw fresh noise every
step, so the second chunk differs with the step count; 64x96, two guidance passes, seed 0) from FlowMatchEuler
(MultiTalk's exact schedule) and from UniPC, DPM++ (flow) and FlowMatchHeun, all with shift 5. Reported: the relative
L2 distance of each to Euler at the same steps, and of each to Euler at `--reference-steps` (a near-converged
solution of the same ODE: the solver's own error).

    python benchmarks/bench_schedulers.py --out docs/bench_schedulers_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffusers import DPMSolverMultistepScheduler, FlowMatchHeunDiscreteScheduler, UniPCMultistepScheduler  # noqa: E402

from diffusers_multitalk import make_tiny_pipeline  # noqa: E402
from diffusers_multitalk.pipelines.sampling import make_multitalk_scheduler  # noqa: E402


SHIFT = 5.0
FLOW = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT)
SCHEDULERS = {
    "euler": lambda: make_multitalk_scheduler(shift=SHIFT),
    "unipc": lambda: UniPCMultistepScheduler(**FLOW),
    "dpm++": lambda: DPMSolverMultistepScheduler(**FLOW),
    "heun": lambda: FlowMatchHeunDiscreteScheduler(shift=SHIFT),
}


def latents(pipe, scheduler, steps: int, seconds: float) -> torch.Tensor:
    sr = 16000
    t = np.arange(int(seconds * sr)) / sr
    speech = (0.3 * np.sin(2 * np.pi * 200 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    pipe.scheduler = scheduler
    return pipe(
        image=(np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8),
        audio=[(speech, sr)],
        prompt="a person talks",
        height=64,
        width=96,
        num_frames=9,
        motion_frames=5,
        num_inference_steps=steps,
        guidance_scale=1.0,
        audio_guidance_scale=2.0,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).frames


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--reference-steps", type=int, default=100)
    parser.add_argument(
        "--seconds", type=float, default=0.3, help="audio length: 0.3 s is one 9-frame chunk, 0.68 s two chunks"
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = make_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    reference = latents(pipe, SCHEDULERS["euler"](), args.reference_steps, args.seconds)
    rows = []
    for steps in args.steps:
        euler = latents(pipe, SCHEDULERS["euler"](), steps, args.seconds)
        for name, build in SCHEDULERS.items():
            result = euler if name == "euler" else latents(pipe, build(), steps, args.seconds)
            print(f"{name} at {steps} steps done ({time.perf_counter() - start:.0f} s)", flush=True)
            rows.append(
                {
                    "scheduler": name,
                    "steps": steps,
                    "rel_l2_vs_euler_same_steps": rel_l2(result, euler),
                    f"rel_l2_vs_euler_{args.reference_steps}": rel_l2(result, reference),
                }
            )
    report = {
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "software": {"torch": torch.__version__, "python": platform.python_version()},
        "configuration": f"tiny random MultiTalk, {args.seconds} s of audio at 64x96 in chunks of 9 frames (5 motion), "
        "shift 5, seed 0, guidance_scale 1, audio_guidance_scale 2, final latents",
        "reference": f"FlowMatchEuler at {args.reference_steps} steps",
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    print(f"{'scheduler':<8} {'steps':>5} {'vs Euler (same)':>16} {'vs Euler@' + str(args.reference_steps):>14}")
    for row in rows:
        print(
            f"{row['scheduler']:<8} {row['steps']:>5} {row['rel_l2_vs_euler_same_steps']:>16.4f} "
            f"{row[f'rel_l2_vs_euler_{args.reference_steps}']:>14.4f}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
