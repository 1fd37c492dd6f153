"""The checks of a request's media that need no model, in one place for every front end: speech that decodes and is
not silent, an image that decodes and is large enough, a box inside its image, a prompt within the text encoder's
length. Light libraries only (soundfile, PIL, numpy, ffmpeg's binary for other containers): the command line
answers before torch is imported. Each returns what is wrong as a message without the field's name (None when all
is well); the front ends put the field's name in their words before it."""

from __future__ import annotations

import io
import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np


__all__ = [
    "MAX_PROMPT_TOKENS",
    "MIN_IMAGE_SIDE",
    "SILENT_DBFS",
    "audio_problem",
    "box_problem",
    "image_problem",
    "prompt_warning",
]

# Speech whose loudest sample is below this (dBFS) is taken for silence: a track of zeros, or hiss far below speech.
SILENT_DBFS = -60.0
# The smallest image side the models are given (smaller images would be upscaled from almost nothing).
MIN_IMAGE_SIDE = 32
# umT5's text length: the pipelines' default `max_sequence_length`, past which a prompt is cut.
MAX_PROMPT_TOKENS = 512

_SOUNDFILE_ERRORS = (RuntimeError, TypeError, ValueError, OSError)


def _peak_dbfs(peak: float) -> float:
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def _soundfile_peak(source) -> tuple[float, int] | None:
    """(peak, frames) read by libsndfile in blocks, or None when libsndfile cannot read the source."""
    import soundfile as sf

    try:
        with sf.SoundFile(source) as audio:
            frames, peak = audio.frames, 0.0
            for block in audio.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
                if block.size:
                    peak = max(peak, float(np.abs(block).max()))
            return peak, frames
    except _SOUNDFILE_ERRORS:
        return None


def _ffmpeg_peak(path: Path) -> tuple[float, int]:
    """(peak, frames) of any container ffmpeg decodes (m4a, aac, a video's sound), at 16 kHz mono."""
    import imageio_ffmpeg

    run = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(path), "-vn",
         "-f", "s16le", "-ac", "1", "-ar", "16000", "-"],
        capture_output=True,
    )  # fmt: skip
    if run.returncode != 0:
        why = (run.stderr.decode(errors="replace").strip().splitlines() or ["ffmpeg failed"])[-1]
        raise ValueError(why)
    samples = np.frombuffer(run.stdout, dtype=np.int16)
    return (float(np.abs(samples.astype(np.int32)).max()) / 32768.0 if samples.size else 0.0), int(samples.size)


def audio_problem(source) -> str | None:
    """What is wrong with one person's speech (None when nothing): a path that is a folder, a file that does not
    decode, no samples, or silence (its peak below `SILENT_DBFS`). `source`: a path, the file's bytes, or a
    `(waveform, sampling_rate)` pair."""
    if isinstance(source, tuple):
        wave = np.asarray(source[0], dtype=np.float32)
        if wave.size == 0:
            return "holds no samples"
        peak, frames = float(np.abs(wave).max()), wave.size
    elif isinstance(source, (bytes, bytearray)):
        found = _soundfile_peak(io.BytesIO(source))
        if found is None:
            return "cannot be decoded as audio (WAV, FLAC, OGG or MP3)"
        peak, frames = found
    else:
        path = Path(os.fspath(source)).expanduser()
        if path.is_dir():
            return "is a directory; give an audio file"
        if not path.is_file():
            return "does not exist"
        found = _soundfile_peak(str(path))
        if found is None:
            try:
                found = _ffmpeg_peak(path)
            except (ValueError, OSError, RuntimeError) as err:
                return f"cannot be decoded as audio ({err})"
        peak, frames = found
    if frames == 0:
        return "holds no samples"
    if _peak_dbfs(peak) < SILENT_DBFS:
        level = "all zeros" if peak == 0 else f"its loudest sample is {_peak_dbfs(peak):.0f} dBFS"
        return f"the track is silent ({level}; speech needs more than {SILENT_DBFS:g} dBFS)"
    return None


def image_problem(source) -> tuple[str | None, tuple[int, int] | None]:
    """(what is wrong, (width, height)) of a reference image: a folder, a file PIL cannot decode, or a side under
    `MIN_IMAGE_SIDE`. `source`: a path, the file's bytes, or a PIL image."""
    from PIL import Image

    if isinstance(source, Image.Image):
        return _size_problem(source.width, source.height), (source.width, source.height)
    if isinstance(source, (bytes, bytearray)):
        opened = io.BytesIO(source)
    else:
        path = Path(os.fspath(source)).expanduser()
        if path.is_dir():
            return "is a directory; give an image file", None
        if not path.is_file():
            return "does not exist", None
        opened = path
    try:
        with Image.open(opened) as image:
            size = image.size
            image.load()  # the whole picture decodes, not only its header
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds for a broken file
        return f"cannot be decoded as an image ({err})", None
    return _size_problem(*size), size


def _size_problem(width: int, height: int) -> str | None:
    if min(width, height) >= MIN_IMAGE_SIDE:
        return None
    return (
        f"{width}x{height} (WxH) is too small: each side needs at least {MIN_IMAGE_SIDE} pixels (a face the model can "
        "follow; 480P or 720P pictures suit it best)"
    )


def box_problem(box, image_size: tuple[int, int]) -> str | None:
    """What is wrong with one person's box `[top, left, bottom, right]` (the reference's `[x_min, y_min, x_max,
    y_max]` whose first pair indexes rows) in an image of `image_size` = (width, height): not four numbers,
    negative, empty, or outside the image."""
    width, height = image_size
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4 or any(isinstance(v, bool) for v in box):
        return f"expected four numbers [top, left, bottom, right] in image pixels, got {box!r}"
    top, left, bottom, right = values
    shown = "[" + ", ".join(f"{v:g}" for v in values) + "]"
    if min(values) < 0:
        return f"{shown} has negative coordinates (outside the image)"
    if bottom <= top or right <= left:
        return f"{shown} is empty: need bottom > top and right > left ([top, left, bottom, right])"
    if bottom > height or right > width:
        return (
            f"{shown} is outside the {width}x{height} (WxH) image: [top, left, bottom, right] needs bottom <= "
            f"{height} and right <= {width}"
        )
    return None


def _words_lower_bound(prompt: str) -> int:
    """At least this many umT5 tokens: one a word (SentencePiece starts a piece at each word), and the end mark."""
    return len(re.findall(r"\S+", prompt)) + 1


def prompt_warning(prompt: str, count_tokens=None, limit: int = MAX_PROMPT_TOKENS) -> str | None:
    """The warning for a prompt the text encoder will cut (None when it fits): `count_tokens(prompt)` counts its
    tokens when a tokenizer is at hand; else a lower bound (one token a word) that never warns wrongly."""
    if not isinstance(prompt, str):
        return None
    tokens = count_tokens(prompt) if count_tokens is not None else _words_lower_bound(prompt)
    if tokens <= limit:
        return None
    counted = f"{tokens} tokens" if count_tokens is not None else f"at least {tokens} tokens"
    return f"the prompt is {counted} long; the text encoder reads its first {limit} and cuts the rest: shorten it"
