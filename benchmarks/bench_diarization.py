"""Diarization of synthetic conversations: diarization error rate (DER) by speaker count, speed and peak memory.

Conversations are spoken by espeak-ng voices (one voice and speaking rate per speaker) at known turn times: speakers
take turns in a random order, with pauses of 0.2-1.0 s and, for about one turn in six, an overlap of 0.2-0.5 s
with the previous turn. Reference turns span each utterance's first to last audible sample (espeak-ng's leading and
trailing silence trimmed). DER = (missed + false alarm + confusion) / reference speech on 10 ms frames, no collar,
overlap scored, speakers mapped one to one for the least error (``audio.diarization.diarization_error_rate``).

    python benchmarks/bench_diarization.py --out docs/        # DER runs + 10 minutes for speed/memory (~3 min)
    python benchmarks/bench_diarization.py --quick            # a smoke run: short conversations, no speed run

Writes ``bench_diarization.json`` (and prints a markdown table) with the machine and the configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffusers_multitalk.audio.diarization import Turn  # noqa: E402


SAMPLE_RATE = 16000
# One espeak-ng voice and rate (words per minute) per speaker: two men, two women, three accents. ("en-gb+f2" is not
# a variant: espeak-ng 1.51 ignores variants on "en-gb", so those voices would all be one.)
VOICES = (("en-us+m3", 165), ("en-us+f3", 185), ("en-gb-x-rp+f4", 160), ("en-gb-scotland+m1", 175))
SENTENCES = (
    "I think we should start with the budget before anything else",
    "That sounds reasonable to me",
    "Did you see the numbers from last quarter",
    "Honestly I was surprised by how well the launch went",
    "We need more people on the support team",
    "Let me push back on that a little",
    "The weather has been strange all week",
    "Can you send me the slides after the call",
    "I agree, but the timeline is too tight",
    "My brother moved to the coast last summer",
    "Nobody expected the train to be that late",
    "We could try a smaller pilot first",
    "What would you do differently next time",
    "The kitchen renovation took three months",
    "I have never been a fan of long meetings",
    "Tell me more about the new design",
    "The garden looks wonderful in the spring",
    "Our customers keep asking for a mobile app",
    "Yes, exactly",
    "I would rather wait until the data is in",
    "Maybe we should ask the engineering team",
    "That was the best concert I have heard in years",
    "The museum opens at nine on weekdays",
    "Please remind me to call the bank tomorrow",
    "It depends on what the board decides",
    "We spent the whole afternoon walking by the river",
    "I am not sure that is the right question",
    "Right, and the second point is about pricing",
    "The children loved the science exhibition",
    "Could we move the review to Thursday",
    "The recipe needs less salt and more lemon",
    "Okay, let us wrap up for today",
)


@lru_cache(maxsize=512)
def _utterance(text: str, voice: str, rate: int) -> np.ndarray:
    """espeak-ng speech of ``text`` at 16 kHz with its leading and trailing silence cut off."""
    import librosa

    from diffusers_multitalk.audio.tts.espeak import EspeakEngine

    wave, sr = EspeakEngine(voice=voice, rate=rate).synthesize(text, voice)
    wave = librosa.resample(wave, orig_sr=sr, target_sr=SAMPLE_RATE)
    wave, _ = librosa.effects.trim(wave, top_db=40, frame_length=320, hop_length=80)
    return wave.astype(np.float32)


def synthesize_conversation(num_speakers: int, seconds: float, seed: int = 0, overlap_prob: float = 0.15):
    """A conversation of about ``seconds`` seconds: ``(16 kHz waveform, reference turns)``.

    Speakers take turns in a random order without one speaking twice in a row (each speaks once first, in order
    1..N, so the reference numbering is by first turn); the next turn starts 0.2-1.0 s after the previous one ends,
    or 0.2-0.5 s before it with probability ``overlap_prob`` (never with one speaker)."""
    rng = np.random.default_rng(seed)
    pieces, turns, cursor, previous = [], [], 0.3, None
    while cursor < seconds:
        index = len(turns)
        others = [s for s in range(num_speakers) if s != previous] or [0]  # one speaker: a monologue with pauses
        speaker = index if index < num_speakers else int(rng.choice(others))
        voice, rate = VOICES[speaker]
        wave = _utterance(str(rng.choice(SENTENCES)), voice, rate)
        if turns and num_speakers > 1 and rng.random() < overlap_prob:  # a monologue does not overlap itself
            start = max(turns[-1].start + 0.5, turns[-1].end - rng.uniform(0.2, 0.5))
        else:
            start = (turns[-1].end if turns else cursor) + rng.uniform(0.2, 1.0)
        offset = int(round(start * SAMPLE_RATE))
        start = offset / SAMPLE_RATE  # on the sample grid, so the reference is exact
        turns.append(Turn(start, start + len(wave) / SAMPLE_RATE, speaker + 1))
        pieces.append((offset, wave))
        cursor, previous = turns[-1].end, speaker
    total = max(offset + len(wave) for offset, wave in pieces) + SAMPLE_RATE // 2
    mix = np.zeros(total, dtype=np.float32)
    for offset, wave in pieces:
        mix[offset : offset + len(wave)] += wave
    return mix / max(1.0, float(np.abs(mix).max()) / 0.9), turns


def der_runs(counts, seeds, seconds: float) -> list:
    """DER with the speaker count given and estimated, for each count and seed (seeds 1000+ are not the ones the
    defaults were tuned on, 100 N + 0..2)."""
    from diffusers_multitalk.audio.diarization import diarization_error_rate, diarize

    rows = []
    for count in counts:
        for seed in seeds:
            wave, reference = synthesize_conversation(count, seconds, seed=1000 + 100 * count + seed)
            row = {"speakers": count, "seed": seed, "seconds": round(len(wave) / SAMPLE_RATE, 1)}
            overlap = sum(max(0.0, a.end - b.start) for a, b in zip(reference, reference[1:]))
            row["overlap_share"] = round(overlap / sum(t.end - t.start for t in reference), 4)
            for mode, given in (("known", count), ("estimated", None)):
                started = time.perf_counter()
                result = diarize(wave, given, sample_rate=SAMPLE_RATE)
                score = diarization_error_rate(reference, result.turns)
                row[mode] = {
                    "der": round(score.der, 4),
                    "missed": round(score.missed / score.speech, 4),
                    "false_alarm": round(score.false_alarm / score.speech, 4),
                    "confusion": round(score.confusion / score.speech, 4),
                    "speakers_found": result.num_speakers,
                    "seconds": round(time.perf_counter() - started, 2),
                }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


SPEED_CHILD = """
import json, resource, sys, time
import numpy as np, soundfile as sf
from diffusers_multitalk.audio.diarization import diarize, person_tracks
wave, sr = sf.read(sys.argv[1], dtype="float32")
count = int(sys.argv[2]) if sys.argv[2] != "none" else None
before = resource.getrusage(resource.RUSAGE_SELF)
started = time.perf_counter()
result = diarize(wave, count, sample_rate=sr)
tracks = person_tracks(wave, result)
wall = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "maxrss_mb": after.ru_maxrss / 1024, "speakers": result.num_speakers,
                  "turns": len(result.turns), "details": result.details}))
"""


def speed_run(seconds: float, count: int, seed: int = 7) -> dict:
    """Diarize (and split into tracks) a ``seconds`` conversation of ``count`` speakers, count estimated, in a fresh
    process (so its peak resident memory is its own); the model load is included in the time."""
    import soundfile as sf

    from diffusers_multitalk.audio.diarization import diarization_error_rate

    wave, reference = synthesize_conversation(count, seconds, seed=seed)
    with __import__("tempfile").TemporaryDirectory() as tmp:
        path = Path(tmp) / "conversation.wav"
        sf.write(path, wave, SAMPLE_RATE, subtype="FLOAT")
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
        done = subprocess.run(
            [sys.executable, "-c", SPEED_CHILD, str(path), "none"], capture_output=True, text=True, env=env, check=True
        )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out.update(audio_seconds=round(len(wave) / SAMPLE_RATE, 1), speakers_true=count)
    out["realtime_factor"] = round(out["audio_seconds"] / out["wall_s"], 1)
    del reference, diarization_error_rate
    return out


def machine() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def summary(rows: list) -> dict:
    out = {}
    for count in sorted({r["speakers"] for r in rows}):
        mine = [r for r in rows if r["speakers"] == count]
        out[str(count)] = {
            "runs": len(mine),
            "der_known_mean": round(float(np.mean([r["known"]["der"] for r in mine])), 4),
            "der_known_max": round(float(np.max([r["known"]["der"] for r in mine])), 4),
            "der_estimated_mean": round(float(np.mean([r["estimated"]["der"] for r in mine])), 4),
            "count_right": sum(r["estimated"]["speakers_found"] == count for r in mine),
            "missed_mean": round(float(np.mean([r["known"]["missed"] for r in mine])), 4),
            "false_alarm_mean": round(float(np.mean([r["known"]["false_alarm"] for r in mine])), 4),
            "confusion_mean": round(float(np.mean([r["known"]["confusion"] for r in mine])), 4),
            "overlap_share_mean": round(float(np.mean([r["overlap_share"] for r in mine])), 4),
        }
    return out


def markdown(result: dict) -> str:
    lines = [
        "| speakers | runs | DER (count given) mean / max | DER (count estimated) | count right | missed | false alarm | confusion | overlap |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for count, s in result["summary"].items():
        lines.append(
            f"| {count} | {s['runs']} | {s['der_known_mean']:.1%} / {s['der_known_max']:.1%} | "
            f"{s['der_estimated_mean']:.1%} | {s['count_right']}/{s['runs']} | {s['missed_mean']:.1%} | "
            f"{s['false_alarm_mean']:.1%} | {s['confusion_mean']:.1%} | {s['overlap_share_mean']:.1%} |"
        )
    for run in result.get("speed", []):
        lines.append(
            f"\n{run['audio_seconds']:.0f} s of {run['speakers_true']} speakers: {run['wall_s']:.1f} s wall, "
            f"{run['cpu_s']:.1f} s CPU, peak RSS {run['maxrss_mb']:.0f} MB, {run['speakers']} speakers found"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--seeds", type=int, default=4, help="conversations per speaker count")
    parser.add_argument("--seconds", type=float, default=120.0, help="length of each DER conversation")
    parser.add_argument("--speed-seconds", type=float, nargs="*", default=[150.0, 600.0])
    parser.add_argument("--quick", action="store_true", help="2 seeds of 40 s, no speed run")
    parser.add_argument("--out", type=Path, default=None, help="folder for bench_diarization.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.seconds, args.speed_seconds = 2, 40.0, []
    from diffusers_multitalk.audio.diarization import EmbeddedOptions

    result = {"machine": machine(), "configuration": EmbeddedOptions().__dict__, "voices": VOICES}
    result["der_runs"] = der_runs(args.counts, range(args.seeds), args.seconds)
    result["summary"] = summary(result["der_runs"])
    result["speed"] = [speed_run(seconds, 4) for seconds in args.speed_seconds]
    result["machine"]["load_average_at_end"] = os.getloadavg()
    print(markdown(result))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_diarization.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
