"""InfiniteTalk streaming dub end to end: a 2-person 480P dub of a 10 s source video, 8 steps x 2 passes (text scale 1,
audio scale 2, shift 2: the fast preset's sampling), full-size random components, streamed to an mp4 (`output_path`).

Full size: umT5-XXL, CLIP ViT-H/14, Wan2.1 VAE, wav2vec2-base, the 14B DiT (InfiniteTalk's DiT has MultiTalk's
architecture), random weights built directly on the device (bench_pipeline.build_full_pipeline); DiT bf16, compiled
(`compile_repeated_blocks`, as the fast preset sets it up; a 1-step clip call warms it up, not counted), VAE bf16.
The source video is synthetic (832x480, 25 fps, moving gradients, made with numpy, passed as an array), the speech
two synthetic tracks of `--seconds` each ("add": one after the other would double the length, so "para": both at once).

Reported: seconds per chunk (from one chunk's decoded frames to the next's; the first from the call's start), DiT
seconds per chunk, total seconds, peak GPU memory (torch's allocator), peak host RSS of this process (ru_maxrss; the
ffmpeg encoder is a child process, not counted), and the DiT's FLOP-based utilisation against the matmul rate measured
in the same run (FLOPs as bench_transformer.forward_flops counts them).

Where no ffmpeg binary is available (the lent GPU image has none, and imageio-ffmpeg's 172 MB binary does not fit the
64 MiB a device call carries), `--ffmpeg-shim` (or automatically, when imageio_ffmpeg is missing) puts a stand-in on
the path: it encodes the streamed frames with OpenCV's mp4v writer and does not mux the audio. The JSON says which.

    python benchmarks/bench_infinitetalk.py --out $OUT                       # full size, on the GPU
    python benchmarks/bench_infinitetalk.py --tiny --device cpu --out /tmp/b  # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

FPS = 25

SHIM = '''\
"""Stand-in for the two ffmpeg commands VideoWriter runs: raw RGB from stdin -> mp4 (OpenCV mp4v); mux -> copy."""
import os, shutil, sys
args = sys.argv[1:]
out = args[-1]
inputs = [args[i + 1] for i, a in enumerate(args) if a == "-i"]
if inputs == ["pipe:0"]:
    import cv2, numpy as np
    w, h = map(int, args[args.index("-s") + 1].split("x"))
    fps = float(args[args.index("-framerate") + 1])
    tmp = out + ".shim.mp4"
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    n = w * h * 3
    while True:
        buf = sys.stdin.buffer.read(n)
        if len(buf) < n:
            break
        writer.write(np.frombuffer(buf, np.uint8).reshape(h, w, 3)[:, :, ::-1])
    writer.release()
    os.replace(tmp, out)
else:
    shutil.copyfile(inputs[0], out)
'''


def install_ffmpeg_shim() -> str:
    """Puts a fake `imageio_ffmpeg` module (get_ffmpeg_exe -> the shim script) first on sys.path."""
    folder = Path(tempfile.mkdtemp(prefix="ffmpeg_shim_"))
    exe = folder / "ffmpeg"
    exe.write_text(f"#!{sys.executable}\n" + SHIM)
    exe.chmod(0o755)
    (folder / "imageio_ffmpeg").mkdir()
    (folder / "imageio_ffmpeg" / "__init__.py").write_text(
        textwrap.dedent(f"""\
        __version__ = "shim"
        def get_ffmpeg_exe():
            return {str(exe)!r}
        def read_frames(*a, **k):
            raise OSError("no ffmpeg here (benchmark shim)")
        """)
    )
    sys.path.insert(0, str(folder))
    sys.modules.pop("imageio_ffmpeg", None)
    return str(exe)


def source_video(seconds, height, width):
    """Moving colour gradients with a block per person: [T, H, W, 3] uint8."""
    t = np.arange(int(round(seconds * FPS)), dtype=np.float32)[:, None, None] / FPS
    y = np.linspace(0, 1, height, dtype=np.float32)[None, :, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, None, :]
    video = np.empty((t.shape[0], height, width, 3), np.uint8)
    for c, (a, b) in enumerate([(1.0, 0.3), (0.5, 0.7), (0.2, 1.1)]):
        video[..., c] = (127 + 100 * np.sin(2 * np.pi * (a * x + b * y + 0.2 * t))).astype(np.uint8)
    return video


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--persons", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny random pipeline (smoke test)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--ffmpeg-shim", action="store_true", help="use the OpenCV stand-in for ffmpeg")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    parser.add_argument("--name", default="bench_infinitetalk")
    args = parser.parse_args()

    shim = None
    if args.ffmpeg_shim:
        shim = install_ffmpeg_shim()
    else:
        try:
            import imageio_ffmpeg

            imageio_ffmpeg.get_ffmpeg_exe()
        except Exception:
            shim = install_ffmpeg_shim()

    from bench_pipeline import PhaseTimer, build_full_pipeline, speech

    from diffusers_multitalk import WanInfiniteTalkPipeline
    from diffusers_multitalk.presets import preset_call_kwargs

    t_start = time.perf_counter()
    device = args.device
    on_cuda = torch.device(device).type == "cuda"
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="bench_infinitetalk_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from diffusers_multitalk import make_tiny_pipeline

        pipe = make_tiny_pipeline(0, pipeline_class=WanInfiniteTalkPipeline).to(device)
    else:
        pipe = WanInfiniteTalkPipeline(**build_full_pipeline(device).components)
        pipe.vae.to(torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    compiled = on_cuda and not args.no_compile
    if compiled:
        torch._dynamo.config.cache_size_limit = 64
        pipe.transformer.compile_repeated_blocks(fullgraph=False)
    build_s = time.perf_counter() - t_start

    if on_cuda:
        from bench_transformer import matmul_rate

        peak_rate = matmul_rate(device)
    else:
        peak_rate = None

    src_h, src_w = (96, 160) if args.tiny else (480, 832)
    video = source_video(args.seconds, src_h, src_w)
    audio = [(speech(args.seconds, 150 + 90 * p), 16000) for p in range(args.persons)]
    sampling = preset_call_kwargs("fast")  # 8 steps, text 1, audio 2, shift 2
    size = (
        dict(height=64, width=96, num_frames=9, motion_frames=1)
        if args.tiny
        else dict(resolution="infinitetalk-480", allow_upscale=True)  # 832x480 -> the 896x448 bucket, as the reference
    )
    call = dict(
        video=video,
        video_fps=FPS,
        audio=audio,
        audio_type="para",
        prompt="Two people talk in a studio.",
        **size,
        **sampling,
    )

    if args.tiny:  # the full-size call's source-size check too, so the smoke test catches what the GPU run would
        from diffusers_multitalk.pipelines.video_input import open_source_video

        full = open_source_video(source_video(0.04, 480, 832), FPS)
        pipe.check_source_size(full, True, "infinitetalk-480", None, None, True)

    result = dict(
        benchmark="InfiniteTalk streaming dub",
        device=torch.cuda.get_device_name() if on_cuda else "cpu",
        torch=torch.__version__,
        configuration=dict(
            persons=args.persons,
            source=f"{src_w}x{src_h} {FPS} fps synthetic array, {args.seconds:g} s",
            resolution=size.get("resolution", f"{size.get('width')}x{size.get('height')}"),
            mode="streaming (auto)",
            num_frames=size.get("num_frames", 81),
            motion_frames=size.get("motion_frames", 9),
            **sampling,
            audio_type="para",
            colour_correction=True,
            dit="bf16, PyTorch SDPA",
            compiled=compiled,
            vae_dtype=str(pipe.vae.dtype).replace("torch.", ""),
            output="streamed mp4 (output_path)",
            components="tiny random"
            if args.tiny
            else "full-size random (umT5-XXL, ViT-H/14 CLIP, Wan2.1 VAE, wav2vec2-base, 14B DiT)",
            ffmpeg=(
                "OpenCV mp4v stand-in, no audio mux (no ffmpeg binary on the device)"
                if shim
                else "imageio-ffmpeg libx264 + AAC"
            ),
        ),
        pipeline_build_s=build_s,
    )

    def save():
        (out_dir / f"{args.name}.json").write_text(json.dumps(result, indent=1))

    if compiled:
        t0 = time.perf_counter()
        pipe(**dict(call, num_inference_steps=1, mode="clip"), generator=torch.Generator(device).manual_seed(0))
        result["warmup_s"] = time.perf_counter() - t0
        save()

    timer = PhaseTimer(device)
    marks, dit_marks = [], []
    dit_forward = pipe.transformer.forward
    timed_forward = timer.wrap(dit_forward, "DiT forwards")
    pipe.transformer.forward = timed_forward
    decode = pipe.decode_latents
    shape = {}

    def decode_and_mark(latent, *a, **k):
        shape.setdefault("latent", tuple(latent.shape))
        out = timer.wrap(decode, "VAE decode")(latent, *a, **k)
        marks.append(time.perf_counter())
        dit_marks.append((timer.seconds["DiT forwards"], timer.calls["DiT forwards"]))
        result["chunks_done"] = len(marks)
        result["chunk_s_so_far"] = [b - a for a, b in zip([t0] + marks[:-1], marks)]
        save()
        return out

    pipe.decode_latents = decode_and_mark
    output_path = Path(tempfile.mkdtemp(prefix="dub_")) / "dub.mp4"  # not under --out: not sent back
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = pipe(**call, generator=torch.Generator(device).manual_seed(0), output_path=str(output_path))
    timer.sync()
    total = time.perf_counter() - t0
    pipe.transformer.forward = dit_forward
    pipe.decode_latents = decode

    chunk_s = [b - a for a, b in zip([t0] + marks[:-1], marks)]
    dit_s = [s - p for (s, _), (p, _) in zip(dit_marks, [(0.0, 0)] + dit_marks[:-1])]
    forwards = timer.calls["DiT forwards"]
    result.update(
        num_chunks=len(marks),
        chunk_s=chunk_s,
        dit_s_per_chunk=dit_s,
        total_s=total,
        output_frames=None,
        output_path_exists=output_path.exists(),
        output_bytes=output_path.stat().st_size if output_path.exists() else None,
        dit_forwards=forwards,
        s_per_dit_forward=timer.seconds["DiT forwards"] / max(forwards, 1),
        vae_decode_s=timer.seconds["VAE decode"],
        peak_gpu_memory_gb=torch.cuda.max_memory_allocated() / 1e9 if on_cuda else None,
        peak_gpu_reserved_gb=torch.cuda.max_memory_reserved() / 1e9 if on_cuda else None,
        peak_host_rss_gb=peak_rss_gb(),
        video_path=str(out.video_path),
    )
    lt, lh, lw = shape["latent"][2:5]
    result["latent_shape"] = list(shape["latent"])
    if not args.tiny:
        from bench_transformer import FULL_CONFIG, forward_flops

        flops = forward_flops(FULL_CONFIG, lt, lh, lw, args.persons)
        result.update(
            tflop_per_forward=flops / 1e12,
            tokens=lt * lh * lw // 4,
            dit_tflops_per_s=flops / result["s_per_dit_forward"] / 1e12,
        )
        if peak_rate:
            result.update(
                matmul_rate_tflops=peak_rate / 1e12, dit_utilisation=flops / result["s_per_dit_forward"] / peak_rate
            )
    result["elapsed_s"] = time.perf_counter() - t_start
    save()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
