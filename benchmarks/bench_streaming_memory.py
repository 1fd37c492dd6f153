"""Peak host memory of `multitalk generate --tiny` in streaming mode against the audio's length.

Each run is a fresh process (so peaks do not carry over) that generates a video for N seconds of speech (the bundled
recordings, repeated) and reports its peak resident set size (`ru_maxrss`; ffmpeg's own processes are not counted,
their memory does not depend on the length). Frames go to the mp4 as each chunk is decoded, so the peak must not grow
with the length:

    python benchmarks/bench_streaming_memory.py --seconds 8 60 --json docs/bench_streaming_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf


ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "examples" / "assets"

CHILD = """
import json, os, resource, sys
if os.environ.get("BENCH_CHEAP_VAE"):
    sys.path.insert(0, os.environ["BENCH_DIR"])
    from bench_streaming_memory import use_cheap_vae
    use_cheap_vae()
from diffusers_multitalk.cli import main
status = main(sys.argv[1:])
print(json.dumps({"status": status, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def use_cheap_vae() -> None:
    """Replaces AutoencoderKLWan's encode/decode by pooling/upsampling of the same shapes (for the tests: the tiny
    VAE's causal 3D convolutions cost ~0.3 s a frame on a CPU, and the memory under test does not depend on them)."""
    from types import SimpleNamespace

    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKLWan

    def encode(self, x, return_dict=True):
        frames = torch.cat([x[:, :, :1], x[:, :, 1:]], dim=2)
        lat_t = 1 + (frames.shape[2] - 1) // 4
        pooled = F.adaptive_avg_pool3d(frames, (lat_t, x.shape[-2] // 8, x.shape[-1] // 8))
        latent = pooled.repeat(1, 6, 1, 1, 1)[:, :16]
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: latent))

    def decode(self, z, return_dict=True):
        frames = 1 + (z.shape[2] - 1) * 4
        video = F.interpolate(z[:, :3], size=(frames, z.shape[-2] * 8, z.shape[-1] * 8), mode="nearest").tanh()
        return (video,)

    AutoencoderKLWan.encode, AutoencoderKLWan.decode = encode, decode


def speech_file(seconds: float, folder: Path) -> Path:
    """The bundled speech repeated to `seconds`, 16 kHz mono."""
    pieces = []
    for name in ("speaker1.wav", "speaker2.wav"):
        wave, rate = sf.read(ASSETS / name, dtype="float32", always_2d=True)
        pieces.append(wave.mean(axis=1))
    loop = np.concatenate(pieces)
    need = int(seconds * rate)
    wave = np.tile(loop, need // len(loop) + 1)[:need]
    path = folder / f"speech_{seconds:g}s.wav"
    sf.write(path, wave, rate)
    return path


def measure(seconds: float, steps: int, size: int, folder: Path, cheap_vae: bool = False) -> dict:
    audio = speech_file(seconds, folder)
    input_json = folder / f"input_{seconds:g}s.json"
    input_json.write_text(
        json.dumps(
            {
                "prompt": "a person talks",
                "cond_image": str(ASSETS / "two_people.png"),
                "cond_audio": {"person1": str(audio)},
            }
        )
    )
    video = folder / f"video_{seconds:g}s.mp4"
    flags = [
        "generate",
        "--tiny",
        "--input_json",
        str(input_json),
        "--save_file",
        str(video),
        "--device",
        "cpu",
        "--sample_steps",
        str(steps),
        "--sample_text_guide_scale",
        "1",
        "--height",
        str(size),
        "--width",
        str(size),
    ]
    started = time.perf_counter()
    env = dict(os.environ, BENCH_DIR=str(Path(__file__).resolve().parent))
    if cheap_vae:
        env["BENCH_CHEAP_VAE"] = "1"
    run = subprocess.run([sys.executable, "-c", CHILD, *flags], capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"generate failed for {seconds} s:\n{run.stderr[-3000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    return dict(seconds=seconds, peak_rss_mb=round(result["maxrss_mb"], 1), wall_s=round(elapsed, 1),
                video_s=round(video_duration(video), 3))  # fmt: skip


def video_duration(path: Path) -> float:
    """Seconds of the mp4's video stream, counted by ffmpeg."""
    import re

    from diffusers_multitalk.pipelines.video_io import get_ffmpeg_exe

    log = subprocess.run(
        [get_ffmpeg_exe(), "-hide_banner", "-i", str(path), "-map", "0:v:0", "-f", "null", "-"],
        capture_output=True,
        text=True,
    ).stderr
    return int(re.findall(r"frame=\s*(\d+)", log)[-1]) / 25


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[8.0, 60.0], help="audio lengths to compare")
    parser.add_argument("--steps", type=int, default=1, help="sampling steps per chunk (memory does not depend on it)")
    parser.add_argument("--size", type=int, default=80, help="frame height and width (the tiny model's 80x80)")
    parser.add_argument("--json", default=None, help="write the result here")
    parser.add_argument("--cheap-vae", action="store_true", help="pooling in place of the VAE (fast; for tests)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_streaming_memory_") as folder:
        runs = [measure(s, args.steps, args.size, Path(folder), args.cheap_vae) for s in args.seconds]
    result = dict(
        benchmark="streaming_memory",
        device="cpu",
        machine=platform.processor() or platform.machine(),
        configuration=dict(
            model="tiny",
            vae="pooling stand-in" if args.cheap_vae else "tiny AutoencoderKLWan",
            frames_per_chunk=81,
            motion_frames=25,
            steps=args.steps,
            height=args.size,
            width=args.size,
            guidance_passes=2,
        ),  # fmt: skip
        runs=runs,
        peak_rss_growth_mb=round(runs[-1]["peak_rss_mb"] - runs[0]["peak_rss_mb"], 1),
    )
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
