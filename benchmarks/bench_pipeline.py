"""End-to-end WanMultiTalkPipeline timing with full-size random components, split into phases.

Full size: umT5-XXL text encoder, ViT-H/14 CLIP vision tower, Wan2.1 VAE, wav2vec2-base, the 14B MultiTalk DiT; all
random (bf16 for the text/image encoders and the DiT, float32 for the VAE and wav2vec2, as the reference runs them).
One 2-person clip of 81 frames at the 480P 1:1 bucket (640x640). A warm-up call (1 step) runs first so the compiled
blocks and kernels are ready; the timed call runs `--steps` steps, and the DiT time is also extrapolated to 40 steps.

    python benchmarks/bench_pipeline.py --steps 10 --out docs/
    python benchmarks/bench_pipeline.py --tiny --device cpu   # smoke test of the script itself
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffusers_multitalk import WanMultiTalkPipeline, make_tiny_pipeline  # noqa: E402
from diffusers_multitalk.tiny import make_tiny_tokenizer  # noqa: E402


def build_full_pipeline(device):
    from diffusers import AutoencoderKLWan
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
    )

    from diffusers_multitalk.pipelines.sampling import make_multitalk_scheduler

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_transformer import FULL_CONFIG, build_model

    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            text_encoder = UMT5EncoderModel(
                UMT5Config(
                    vocab_size=256384,
                    d_model=4096,
                    d_kv=64,
                    d_ff=10240,
                    num_layers=24,
                    num_heads=64,
                    relative_attention_num_buckets=32,
                    feed_forward_proj="gated-gelu",
                    dropout_rate=0.0,
                )
            )
            image_encoder = CLIPVisionModel(
                CLIPVisionConfig(
                    hidden_size=1280,
                    intermediate_size=5120,
                    num_hidden_layers=32,
                    num_attention_heads=16,
                    image_size=224,
                    patch_size=14,
                    hidden_act="gelu",
                )
            )
    finally:
        torch.set_default_dtype(torch.float32)
    # Built then moved: some wav2vec2 parameters are created with torch.Tensor(), which ignores the device context.
    vae = AutoencoderKLWan().to(device)
    audio_encoder = Wav2Vec2Model(Wav2Vec2Config()).to(device)
    transformer = build_model(FULL_CONFIG, device)
    return WanMultiTalkPipeline(
        tokenizer=make_tiny_tokenizer(),
        text_encoder=text_encoder.eval(),
        image_encoder=image_encoder.eval(),
        transformer=transformer,
        vae=vae.eval(),
        scheduler=make_multitalk_scheduler(),
        audio_encoder=audio_encoder.eval(),
        audio_feature_extractor=Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
        ),
    )


class PhaseTimer:
    """Wraps callables so their (device-synchronised) wall time adds up per phase."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def wrap(self, fn, phase):
        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.sync()
            self.seconds[phase] += time.perf_counter() - start
            self.calls[phase] += 1
            return out

        return timed


def speech(seconds, pitch, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * pitch * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny random pipeline (smoke test)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--attention-backend", default=None, help="a diffusers attention backend for the DiT, e.g. _flash_3"
    )
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()

    device = args.device
    on_cuda = torch.device(device).type == "cuda"
    start = time.perf_counter()
    pipe = make_tiny_pipeline().to(device) if args.tiny else build_full_pipeline(device)
    build_seconds = time.perf_counter() - start
    pipe.set_progress_bar_config(disable=True)
    if args.attention_backend:
        pipe.transformer.set_attention_backend(args.attention_backend)
    if on_cuda and not args.no_compile:
        pipe.transformer.compile_repeated_blocks(fullgraph=False)

    size = dict(height=64, width=96, num_frames=9) if args.tiny else dict(resolution="multitalk-480", num_frames=81)
    image = (np.random.RandomState(0).rand(640, 640, 3) * 255).astype(np.uint8)
    seconds_per_person = 0.4 if args.tiny else 2.0
    audio = [(speech(seconds_per_person, 150), 16000), (speech(seconds_per_person, 240), 16000)]
    # mode="clip": one chunk, as measured (with no mode the pipeline would stream the rest of the 4 s of speech)
    call = dict(image=image, audio=audio, prompt="Two people talk in a studio.", audio_type="add", mode="clip", **size)

    # Warm-up: compiles the blocks, loads kernels.
    pipe(**call, num_inference_steps=1, generator=torch.Generator(device).manual_seed(0))

    timer = PhaseTimer(device)
    pipe.encode_prompt = timer.wrap(pipe.encode_prompt, "text encoder")
    pipe.encode_image = timer.wrap(pipe.encode_image, "image encoder")
    pipe.encode_audio = timer.wrap(pipe.encode_audio, "audio load + wav2vec2")
    pipe.prepare_condition = timer.wrap(pipe.prepare_condition, "VAE encode")
    pipe.transformer.forward = timer.wrap(pipe.transformer.forward, "DiT forwards")
    pipe.decode_latents = timer.wrap(pipe.decode_latents, "VAE decode")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    timer.sync()
    start = time.perf_counter()
    out = pipe(**call, num_inference_steps=args.steps, generator=torch.Generator(device).manual_seed(0))
    timer.sync()
    total = time.perf_counter() - start
    frames = out.frames.shape[1]

    phases = dict(timer.seconds)
    phases["other (guidance, scheduler, colour correction, post-processing)"] = total - sum(phases.values())
    dit = timer.seconds["DiT forwards"]
    passes = timer.calls["DiT forwards"]
    device_name = torch.cuda.get_device_name() if on_cuda else "cpu"
    peak = torch.cuda.max_memory_allocated() / 1e9 if on_cuda else float("nan")
    header = (
        f"device: {device_name}; torch {torch.__version__}; {'tiny random' if args.tiny else 'full-size random'} "
        f"components; 2 persons, {frames} frames at {out.frames.shape[2]}x{out.frames.shape[3]}, clip mode, "
        f"{args.steps} steps x 3 passes (text scale 5, audio scale 4); DiT compiled: "
        f"{on_cuda and not args.no_compile}; DiT attention: {args.attention_backend or 'PyTorch SDPA'}; pipeline build {build_seconds:.0f} s (not counted); peak memory "
        f"{peak:.1f} GB"
    )
    rows = ["| phase | seconds | calls |", "|---|---|---|"]
    for name, seconds in phases.items():
        rows.append(f"| {name} | {seconds:.2f} | {timer.calls.get(name, '')} |")
    rows.append(f"| **total, {args.steps} steps (measured)** | **{total:.2f}** | |")
    per_pass = dit / max(passes, 1)
    estimate = total - dit + per_pass * 3 * 40
    rows.append(f"| total at 40 steps (DiT scaled by {per_pass:.3f} s per pass x 120) | {estimate:.1f} | |")
    text = header + "\n\n" + "\n".join(rows) + "\n"
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench_pipeline.md").write_text(text)
        (Path(args.out) / "bench_pipeline.json").write_text(
            json.dumps(dict(header=header, phases=phases, total=total, estimate_40=estimate, passes=passes), indent=1)
        )
    print(text)


if __name__ == "__main__":
    main()
