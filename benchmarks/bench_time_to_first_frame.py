"""Time to first frame (issue 25, part 4): seconds from the pipeline call to the first playable live segment (the
HLS playlist lists it) against the whole call (the mp4 in place), for MultiTalk, InfiniteTalk and SoulX-FlashTalk on
the tiny random pipelines (`make_tiny_pipeline(seed=0, pipeline_class=...)`), each with its own chunking defaults
(81/25, 81/9 and 33/5 frames) and its own sampler, on the CPU.

A watcher thread polls the live folder's playlist every 5 ms; the first time it lists a segment is the first frame a
viewer can play. Each model runs once to warm up, then `--repeats` times (medians reported):

    python benchmarks/bench_time_to_first_frame.py --seconds 6 --json docs/bench_time_to_first_frame_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf


ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "examples" / "assets"
# model -> (pipeline class name, its chunk frames, motion frames, steps, text / audio guidance): each one's defaults
MODELS = {
    "multitalk": ("WanMultiTalkPipeline", 81, 25, 8, 5.0, 4.0),
    "infinitetalk": ("WanInfiniteTalkPipeline", 81, 9, 8, 5.0, 4.0),
    "flashtalk": ("WanFlashTalkPipeline", 33, 5, 4, 1.0, 1.0),
}


def pipeline_class(name: str):
    from diffusers_multitalk import pipelines

    return getattr(pipelines, name)


class PlaylistWatcher(threading.Thread):
    """Notes when `folder/live.m3u8` first lists a segment (seconds since `start`)."""

    def __init__(self, folder: Path, start: float):
        super().__init__(daemon=True)
        self.folder, self.start_time, self.first = folder, start, None
        self.done = threading.Event()

    def run(self):
        playlist = self.folder / "live.m3u8"
        while not self.done.is_set() and self.first is None:
            try:
                if any(line.endswith(".ts") for line in playlist.read_text().splitlines()):
                    self.first = time.perf_counter() - self.start_time
            except OSError:
                pass
            time.sleep(0.005)


def speech(seconds: float) -> np.ndarray:
    wave, rate = sf.read(ASSETS / "speaker1.wav", dtype="float32")
    assert rate == 16000, rate
    return np.resize(wave, int(seconds * rate))


def one_run(pipe, model: str, audio: np.ndarray, size: int, folder: Path) -> dict:
    import torch

    _, frames, motion, steps, text, audio_scale = MODELS[model]
    image = (np.random.RandomState(0).rand(2 * size, 2 * size, 3) * 255).astype(np.uint8)
    live = folder / "live"
    start = time.perf_counter()
    watcher = PlaylistWatcher(live, start)
    watcher.start()
    out = pipe(
        image=image, audio=[(audio, 16000)], prompt="a person talks", height=size, width=size, num_frames=frames,
        motion_frames=motion, num_inference_steps=steps, guidance_scale=text, audio_guidance_scale=audio_scale,
        generator=torch.Generator().manual_seed(0), output_path=folder / "video.mp4", live_dir=live,
    )  # fmt: skip
    whole = time.perf_counter() - start
    watcher.done.set()
    watcher.join()
    segments = sum(1 for line in (live / "live.m3u8").read_text().splitlines() if line.endswith(".ts"))
    return {"first_segment_s": watcher.first, "whole_s": whole, "segments": segments, "path": out.video_path}


def bench(model: str, seconds: float, size: int, repeats: int) -> dict:
    from diffusers_multitalk import make_tiny_pipeline

    name, frames, motion, steps, text, audio_scale = MODELS[model]
    pipe = make_tiny_pipeline(seed=0, pipeline_class=pipeline_class(name))
    pipe.set_progress_bar_config(disable=True)
    audio = speech(seconds)
    runs = []
    for i in range(repeats + 1):  # the first warms up
        with tempfile.TemporaryDirectory() as folder:
            run = one_run(pipe, model, audio, size, Path(folder))
        if i:
            runs.append(run)
    first = statistics.median(r["first_segment_s"] for r in runs)
    whole = statistics.median(r["whole_s"] for r in runs)
    result = {
        "pipeline": name, "chunk_frames": frames, "motion_frames": motion, "steps": steps,
        "guidance": [text, audio_scale], "segments": runs[0]["segments"],
        "first_segment_s": round(first, 3), "whole_s": round(whole, 3), "first_over_whole": round(first / whole, 3),
        "runs": [{k: round(r[k], 3) for k in ("first_segment_s", "whole_s")} for r in runs],
    }  # fmt: skip
    print(f"{model}: first segment {first:.2f} s of {whole:.2f} s ({result['segments']} segments)", flush=True)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds of speech (the bundled speaker, looped)")
    parser.add_argument("--size", type=int, default=64, help="frame height and width (multiple of 16)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()  # other work on the machine stretches every number alike; the ratios less
    results = {model: bench(model, args.seconds, args.size, args.repeats) for model in args.models}
    report = {
        "what": "seconds from the pipeline call to the first playable live segment, against the whole call",
        "device": "cpu", "model": "tiny random pipelines (make_tiny_pipeline(seed=0))",
        "speech_seconds": args.seconds, "size": [args.size, args.size], "repeats": args.repeats,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "loadavg_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)], "results": results,
    }  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
