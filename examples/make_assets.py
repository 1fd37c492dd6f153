"""Regenerates the example assets in ``examples/assets/``: drawn cartoon pictures and short speech clips.

    python examples/make_assets.py                    # pictures + speech (espeak-ng if installed)
    python examples/make_assets.py --synthetic-audio  # speech-like tones made with numpy instead

Everything here is made from scratch: the pictures are drawn with PIL, the speech is spoken by espeak-ng
(`apt-get install espeak-ng`) and resampled to 16 kHz mono PCM. Without espeak-ng (or with --synthetic-audio)
the clips are a voiced, syllable-shaped signal synthesised with numpy: it drives the tiny pipeline just as
well, but it is not speech.

The bounding boxes in ``two_person_tiny.json`` follow the reference's convention, ``[x_min, y_min, x_max,
y_max]`` in which the first pair indexes rows: ``[top, left, bottom, right]`` in pixels of the picture. They
are printed at the end so the JSON can be checked against the drawing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


HERE = Path(__file__).resolve().parent
ASSETS = HERE / "assets"
SAMPLE_RATE = 16000

# (width, height) of the pictures.
TWO_PEOPLE_SIZE = (832, 480)
ONE_PERSON_SIZE = (512, 512)

# What the speakers say (written for these examples).
LINES = {
    "speaker1.wav": ("en-us+m3", 165, "Hi! Did you try the tiny model today?"),
    "speaker2.wav": ("en-us+f3", 165, "I did, and the video has sound."),
    "single.wav": ("en-us+f2", 160, "Welcome to the tiny demo. Nothing in it is trained."),
}
MIN_SECONDS = {"single.wav": 4.2}  # clip mode with 81 frames needs more than 3.24 s of audio


# --------------------------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------------------------
def draw_person(draw: ImageDraw.ImageDraw, cx: int, top: int, scale: float, skin, hair, shirt, glasses=False, bow=None):
    """One cartoon bust: shoulders, neck, head, hair, eyes, nose and a mouth, centred at column ``cx``."""
    s = scale
    # shoulders / shirt
    draw.rounded_rectangle(
        [cx - 150 * s, top + 250 * s, cx + 150 * s, top + 420 * s],
        radius=int(70 * s),
        fill=shirt,
        outline=(40, 40, 40),
        width=3,
    )
    # neck
    draw.rectangle([cx - 28 * s, top + 200 * s, cx + 28 * s, top + 270 * s], fill=skin, outline=(40, 40, 40), width=2)
    # hair behind the head
    draw.ellipse([cx - 112 * s, top - 8 * s, cx + 112 * s, top + 200 * s], fill=hair)
    # head
    draw.ellipse([cx - 95 * s, top + 20 * s, cx + 95 * s, top + 240 * s], fill=skin, outline=(40, 40, 40), width=3)
    # fringe
    draw.chord([cx - 100 * s, top + 5 * s, cx + 100 * s, top + 130 * s], 180, 360, fill=hair)
    # ears
    for side in (-1, 1):
        ex = cx + side * 97 * s
        draw.ellipse([ex - 14 * s, top + 115 * s, ex + 14 * s, top + 155 * s], fill=skin, outline=(40, 40, 40), width=2)
    # eyes
    for side in (-1, 1):
        ex = cx + side * 38 * s
        draw.ellipse(
            [ex - 17 * s, top + 110 * s, ex + 17 * s, top + 140 * s],
            fill=(255, 255, 255),
            outline=(30, 30, 30),
            width=2,
        )
        draw.ellipse([ex - 8 * s, top + 117 * s, ex + 8 * s, top + 135 * s], fill=(45, 35, 30))
        draw.arc([ex - 20 * s, top + 92 * s, ex + 20 * s, top + 112 * s], 200, 340, fill=(50, 40, 30), width=4)
        if glasses:
            draw.ellipse([ex - 26 * s, top + 101 * s, ex + 26 * s, top + 149 * s], outline=(20, 20, 20), width=4)
    if glasses:
        draw.line([cx - 12 * s, top + 125 * s, cx + 12 * s, top + 125 * s], fill=(20, 20, 20), width=4)
    # nose
    draw.polygon(
        [(cx, top + 140 * s), (cx - 10 * s, top + 172 * s), (cx + 8 * s, top + 172 * s)],
        fill=tuple(max(0, c - 30) for c in skin),
    )
    # open mouth (a talking pose)
    draw.chord(
        [cx - 34 * s, top + 178 * s, cx + 34 * s, top + 218 * s],
        0,
        180,
        fill=(120, 30, 40),
        outline=(40, 20, 20),
        width=2,
    )
    draw.rectangle([cx - 20 * s, top + 197 * s, cx + 20 * s, top + 203 * s], fill=(250, 250, 250))
    # cheeks
    for side in (-1, 1):
        ex = cx + side * 62 * s
        draw.ellipse([ex - 14 * s, top + 160 * s, ex + 14 * s, top + 178 * s], fill=(240, 160, 150))
    if bow is not None:
        bx, by = cx + 70 * s, top + 20 * s
        draw.polygon([(bx, by), (bx - 30 * s, by - 18 * s), (bx - 30 * s, by + 18 * s)], fill=bow)
        draw.polygon([(bx, by), (bx + 30 * s, by - 18 * s), (bx + 30 * s, by + 18 * s)], fill=bow)
        draw.ellipse([bx - 9 * s, by - 9 * s, bx + 9 * s, by + 9 * s], fill=tuple(max(0, c - 40) for c in bow))


def make_two_people(path: Path) -> dict:
    width, height = TWO_PEOPLE_SIZE
    image = Image.new("RGB", (width, height), (214, 232, 244))
    draw = ImageDraw.Draw(image)
    # a plain studio floor and a table edge
    draw.rectangle([0, int(height * 0.78), width, height], fill=(190, 170, 150))
    centres = (width // 4, 3 * width // 4)
    draw_person(draw, centres[0], 70, 0.95, skin=(238, 198, 160), hair=(70, 45, 30), shirt=(60, 110, 190), glasses=True)
    draw_person(
        draw, centres[1], 60, 0.95, skin=(205, 150, 115), hair=(25, 20, 20), shirt=(200, 80, 90), bow=(240, 200, 60)
    )
    image.save(path, optimize=True)
    # [top, left, bottom, right] per person: head and shoulders, well inside each half
    return {
        "person1": [30, 40, height - 10, width // 2 - 24],
        "person2": [30, width // 2 + 24, height - 10, width - 40],
    }


def make_one_person(path: Path) -> None:
    width, height = ONE_PERSON_SIZE
    image = Image.new("RGB", (width, height), (236, 226, 250))
    draw = ImageDraw.Draw(image)
    draw_person(draw, width // 2, 80, 1.0, skin=(245, 210, 175), hair=(160, 70, 40), shirt=(70, 160, 120))
    image.save(path, optimize=True)


# --------------------------------------------------------------------------------------------------------------
# Speech
# --------------------------------------------------------------------------------------------------------------
def _resample(wave: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return wave
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(SAMPLE_RATE, rate)
    return resample_poly(wave, SAMPLE_RATE // g, rate // g).astype(np.float32)


def espeak_line(text: str, voice: str, speed: int) -> np.ndarray:
    import soundfile as sf

    exe = shutil.which("espeak-ng")
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "line.wav"
        subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", str(out), text], check=True, capture_output=True)
        wave, rate = sf.read(out, dtype="float32")
    if wave.ndim > 1:
        wave = wave.mean(axis=1)
    return _resample(wave, rate)


def synthetic_line(text: str, seed: int) -> np.ndarray:
    """A voiced, speech-shaped signal: a glottal pulse train through three formant resonators, one syllable per
    vowel of ``text`` with a rising-falling pitch and short pauses between words."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    base_pitch = 110.0 + 90.0 * (seed % 2)
    pieces = []
    for word in text.split():
        syllables = max(1, sum(ch in "aeiouy" for ch in word.lower()))
        for _ in range(syllables):
            n = int(SAMPLE_RATE * rng.uniform(0.12, 0.2))
            t = np.arange(n) / SAMPLE_RATE
            pitch = base_pitch * (1.0 + 0.15 * np.sin(np.pi * t / t[-1]))
            phase = np.cumsum(pitch / SAMPLE_RATE)
            pulses = (np.diff(np.floor(phase), prepend=0.0) > 0).astype(np.float64)
            voiced = pulses + 0.02 * rng.standard_normal(n)
            formants = rng.choice([(700, 1200, 2500), (400, 2000, 2600), (300, 900, 2300), (500, 1500, 2500)])
            out = np.zeros(n)
            for f in formants:
                r = np.exp(-np.pi * 90.0 / SAMPLE_RATE)
                a = [1.0, -2 * r * np.cos(2 * np.pi * f / SAMPLE_RATE), r * r]
                out += lfilter([1.0 - r], a, voiced)
            pieces.append(out * np.hanning(n))
        pieces.append(np.zeros(int(SAMPLE_RATE * rng.uniform(0.04, 0.1))))
    wave = np.concatenate(pieces)
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


def make_speech(force_synthetic: bool) -> str:
    import soundfile as sf

    use_espeak = not force_synthetic and shutil.which("espeak-ng") is not None
    for index, (name, (voice, speed, text)) in enumerate(LINES.items()):
        wave = espeak_line(text, voice, speed) if use_espeak else synthetic_line(text, seed=index)
        peak = float(np.abs(wave).max())
        wave = 0.8 * wave / peak if peak > 0 else wave
        pad = 0.15  # a little silence before and after
        wave = np.concatenate([np.zeros(int(pad * SAMPLE_RATE)), wave, np.zeros(int(pad * SAMPLE_RATE))])
        minimum = int(MIN_SECONDS.get(name, 0.0) * SAMPLE_RATE)
        if len(wave) < minimum:
            wave = np.concatenate([wave, np.zeros(minimum - len(wave))])
        sf.write(ASSETS / name, wave.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        print(f"{ASSETS / name}: {len(wave) / SAMPLE_RATE:.2f} s")
    return "espeak-ng" if use_espeak else "numpy (synthetic voiced signal, not speech)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-audio", action="store_true", help="make the clips with numpy instead of espeak-ng")
    args = parser.parse_args()
    ASSETS.mkdir(parents=True, exist_ok=True)
    boxes = make_two_people(ASSETS / "two_people.png")
    make_one_person(ASSETS / "one_person.png")
    source = make_speech(args.synthetic_audio)
    print(f"speech made with {source}")
    print("two_people.png boxes [top, left, bottom, right]:", boxes)


if __name__ == "__main__":
    main()
