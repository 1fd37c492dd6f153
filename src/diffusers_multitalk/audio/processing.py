"""Waveform preparation for MultiTalk: loading, resampling, loudness normalisation and speaker layout.

Everything here works on 16 kHz mono float32 numpy arrays, which is what the wav2vec2 audio encoder of
MultiTalk consumes. The numbers follow the original MultiTalk inference script:

* files are decoded and resampled with ``librosa.load(path, sr=16000)`` (channel average, librosa's
  default resampler);
* video containers have their audio extracted by ffmpeg (16 kHz, 16-bit PCM, two channels) first;
* the track is normalised to an integrated loudness of -23 LUFS with pyloudnorm, unless it is silent
  (``|loudness| > 100``), in which case it is returned as is.
"""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np


logger = logging.getLogger(__name__)
TARGET_SAMPLE_RATE = 16000
TARGET_LUFS = -23.0

# Containers whose audio stream is extracted with ffmpeg before loading.
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")

AudioInput = Union[str, os.PathLike, np.ndarray, "torch.Tensor"]  # noqa: F821

__all__ = [
    "TARGET_SAMPLE_RATE",
    "VIDEO_EXTENSIONS",
    "prepare_audio",
    "load_audio_file",
    "loudness_normalize",
    "combine_speakers",
]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _librosa_default_res_type() -> str:
    """The resampler ``librosa.load`` uses when none is given, so arrays and files resample alike."""
    import librosa

    default = inspect.signature(librosa.load).parameters["res_type"].default
    return default if isinstance(default, str) else "soxr_hq"


def _ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError(
            "An ffmpeg binary is needed to read this file but none was found. Install it with "
            "`pip install imageio-ffmpeg` (it ships its own ffmpeg), or convert the audio to a .wav file first."
        ) from exc


def _run_ffmpeg(args: Sequence[str], source: Path) -> None:
    cmd = [_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", errors="replace").strip().splitlines()
        detail = message[-1] if message else f"exit status {proc.returncode}"
        raise ValueError(
            f"Could not read any audio from '{source}': ffmpeg failed ({detail}). Check that the file is a "
            "valid audio or video file with an audio stream, or convert it to a .wav file first."
        )


def _soundfile_can_read(path: Path) -> bool:
    import soundfile as sf

    try:
        sf.info(str(path))
        return True
    except Exception:
        return False


def _librosa_load(path: Path) -> np.ndarray:
    import librosa

    try:
        audio, _ = librosa.load(str(path), sr=TARGET_SAMPLE_RATE)
    except Exception as exc:
        raise ValueError(
            f"Could not decode audio file '{path}' ({type(exc).__name__}: {exc}). Supported are files that "
            "libsndfile reads (wav, flac, ogg, mp3) and, through ffmpeg, m4a/aac and video containers; "
            "convert the file to .wav if it still fails."
        ) from exc
    return audio


def _soundfile_format(path) -> tuple[int, int]:
    import soundfile as sf

    info = sf.info(str(path))
    return int(info.samplerate), int(info.channels)


def _say_conversion(what: str, rate: int, channels: int) -> None:
    """One line when the speech is resampled or mixed down: wav2vec2 takes 16 kHz mono, and nothing is changed
    without a word."""
    if rate == TARGET_SAMPLE_RATE and channels == 1:
        return
    changes = []
    if rate != TARGET_SAMPLE_RATE:
        changes.append(f"resampled from {rate} Hz to {TARGET_SAMPLE_RATE} Hz")
    if channels > 1:
        changes.append(f"its {channels} channels averaged to mono")
    logger.warning(f"{what}: {' and '.join(changes)} (wav2vec2 takes {TARGET_SAMPLE_RATE // 1000} kHz mono speech)")


def load_audio_file(path: Union[str, os.PathLike]) -> np.ndarray:
    """Decode an audio or video file to a 16 kHz mono float32 waveform (no loudness normalisation).

    Audio files that libsndfile can read go straight to ``librosa.load(path, sr=16000)``. Other audio
    formats (m4a, aac, ...) are first decoded by ffmpeg to a 16-bit wav at their own sample rate and
    channel count, which is what librosa's audioread fallback would feed it. Video containers are
    reduced by ffmpeg to a 16 kHz, 16-bit, two-channel wav as in the original MultiTalk script.
    Temporary files are removed afterwards.
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"Audio file '{path}' does not exist; check the path (relative paths are resolved "
            f"from the working directory '{os.getcwd()}')."
        )
    if path.is_dir():
        raise ValueError(f"'{path}' is a directory; pass the path of an audio or video file.")
    if path.stat().st_size == 0:
        raise ValueError(f"Audio file '{path}' is empty (0 bytes); pass a file that contains audio.")

    ext = path.suffix.lower()
    if ext not in VIDEO_EXTENSIONS and _soundfile_can_read(path):
        _say_conversion(str(path), *_soundfile_format(path))
        return _librosa_load(path)

    with tempfile.TemporaryDirectory(prefix="multitalk_audio_") as tmp:
        wav_path = Path(tmp) / "audio.wav"
        if ext in VIDEO_EXTENSIONS:
            args = [
                "-i",
                str(path),
                "-vn",
                "-acodec",
                "pcm_s16le",
                "-ar",
                str(TARGET_SAMPLE_RATE),
                "-ac",
                "2",
                str(wav_path),
            ]
        else:
            args = ["-i", str(path), "-vn", "-acodec", "pcm_s16le", str(wav_path)]
        _run_ffmpeg(args, path)
        if not wav_path.exists() or wav_path.stat().st_size == 0:
            raise ValueError(f"Could not read any audio from '{path}': it has no audio stream.")
        return _librosa_load(wav_path)


def _to_numpy(audio) -> np.ndarray:
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu()
        if audio.is_floating_point() and audio.dtype not in (torch.float32, torch.float64):
            audio = audio.float()
        return audio.numpy()
    if isinstance(audio, (list, tuple)):
        return np.asarray(audio)
    if isinstance(audio, np.ndarray):
        return audio
    raise TypeError(
        f"Unsupported audio input of type {type(audio).__name__}; pass a file path, a numpy array or a torch tensor."
    )


def _pcm_to_float(audio: np.ndarray) -> np.ndarray:
    """Integer PCM to float32 in [-1, 1) with the same scaling libsndfile uses."""
    kind = audio.dtype.kind
    if kind == "f":
        return audio.astype(np.float32, copy=False)
    if kind == "b":
        return audio.astype(np.float32)
    if kind == "u":
        bits = audio.dtype.itemsize * 8
        offset = 2 ** (bits - 1)
        return ((audio.astype(np.float64) - offset) / offset).astype(np.float32)
    if kind == "i":
        bits = audio.dtype.itemsize * 8
        return (audio.astype(np.float64) / float(2 ** (bits - 1))).astype(np.float32)
    raise TypeError(f"Unsupported audio dtype {audio.dtype}; pass integer PCM or floating point samples.")


def _to_mono(audio: np.ndarray) -> np.ndarray:
    if audio.ndim == 1:
        return audio
    if audio.ndim != 2:
        raise ValueError(
            f"Audio array has {audio.ndim} dimensions (shape {tuple(audio.shape)}); expected a mono waveform "
            "[samples] or a multi-channel one [samples, channels] / [channels, samples]."
        )
    # The smaller axis holds the channels: [channels, samples] (torchaudio) or [samples, channels] (soundfile).
    channel_axis = 0 if audio.shape[0] <= audio.shape[1] else 1
    return np.mean(audio, axis=channel_axis)


def _check_finite_nonempty(audio: np.ndarray, what: str) -> None:
    if audio.size == 0:
        raise ValueError(f"{what} contains no samples; pass a non-empty waveform.")
    if not np.all(np.isfinite(audio)):
        raise ValueError(f"{what} contains NaN or infinite samples; clean the waveform (e.g. np.nan_to_num) first.")


def loudness_normalize(audio: np.ndarray, sr: int = TARGET_SAMPLE_RATE, lufs: float = TARGET_LUFS) -> np.ndarray:
    """Normalise to ``lufs`` integrated loudness (ITU-R BS.1770 via pyloudnorm).

    Silent input (``|loudness| > 100``) is returned unchanged, like the reference. Clips shorter than
    pyloudnorm's 400 ms gating block have no integrated loudness; they are returned unchanged with a warning.
    """
    import pyloudnorm as pyln

    meter = pyln.Meter(sr)
    if audio.shape[0] < meter.block_size * sr:
        warnings.warn(
            f"Audio is shorter than {meter.block_size:.1f} s, too short to measure loudness; it is used "
            "without loudness normalisation.",
            stacklevel=3,
        )
        return audio
    loudness = meter.integrated_loudness(audio)
    if abs(loudness) > 100:
        return audio
    return pyln.normalize.loudness(audio, loudness, lufs)


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def prepare_audio(audio: AudioInput, sampling_rate: int | None = None, normalize_loudness: bool = True) -> np.ndarray:
    """Turn a file or waveform into MultiTalk's driving audio: float32, mono, 16 kHz, -23 LUFS.

    Args:
        audio: a path to an audio file (wav, mp3, flac, ogg, m4a, ...) or a video container (mp4, mov,
            mkv, avi, webm) whose audio is extracted with ffmpeg; or a waveform as numpy array / torch
            tensor, mono ``[samples]`` or multi-channel ``[samples, channels]`` / ``[channels, samples]``
            (channels are averaged). Integer PCM (uint8, int16, int32) is scaled to [-1, 1).
        sampling_rate: the sample rate of a waveform input (required for arrays; ignored for files).
        normalize_loudness: normalise to -23 LUFS (the reference does for recordings; its TTS speech is used as
            synthesised).

    Returns:
        ``np.ndarray`` float32 ``[samples]`` at 16 kHz.
    """
    if isinstance(audio, (str, os.PathLike)):
        if str(audio).strip() == "":
            raise ValueError("Empty audio path; pass the path of an audio or video file.")
        speech = load_audio_file(audio)
        _check_finite_nonempty(speech, f"Audio file '{audio}'")
    else:
        if audio is None:
            raise ValueError("No audio given; pass a file path or a waveform array with its sampling_rate.")
        array = _to_numpy(audio)
        if sampling_rate is None:
            raise ValueError(
                "A waveform array was passed without its sample rate; call "
                "prepare_audio(waveform, sampling_rate=<rate in Hz>) (or pass a file path instead)."
            )
        if (
            isinstance(sampling_rate, bool)
            or not np.isscalar(sampling_rate)
            or float(sampling_rate) <= 0
            or float(sampling_rate) != int(sampling_rate)
        ):
            raise ValueError(f"sampling_rate must be a positive integer number of Hz, got {sampling_rate!r}.")
        sampling_rate = int(sampling_rate)
        if array.ndim == 0 or array.ndim > 2:
            raise ValueError(
                f"Audio array has {array.ndim} dimensions (shape {tuple(array.shape)}); expected a mono waveform "
                "[samples] or a multi-channel one [samples, channels] / [channels, samples]."
            )
        if array.size == 0:
            raise ValueError("Audio array contains no samples; pass a non-empty waveform.")
        array = _pcm_to_float(array)
        _check_finite_nonempty(array, "Audio array")
        speech = np.ascontiguousarray(_to_mono(array), dtype=np.float32)
        _say_conversion("the waveform", sampling_rate, 1 if array.ndim == 1 else min(array.shape))
        if sampling_rate != TARGET_SAMPLE_RATE:
            import librosa

            speech = librosa.resample(
                speech, orig_sr=sampling_rate, target_sr=TARGET_SAMPLE_RATE, res_type=_librosa_default_res_type()
            )
        if speech.size == 0:
            raise ValueError("Audio array is too short to be resampled to 16 kHz; pass a longer waveform.")

    if normalize_loudness:
        speech = loudness_normalize(speech, TARGET_SAMPLE_RATE, TARGET_LUFS)
    return np.ascontiguousarray(speech, dtype=np.float32)


def combine_speakers(tracks: Sequence[np.ndarray], audio_type: str = "add") -> Tuple[List[np.ndarray], np.ndarray]:
    """Lay out the prepared tracks of several persons on a common timeline.

    Args:
        tracks: one prepared 16 kHz waveform per person (see :func:`prepare_audio`), in person order.
        audio_type: ``"add"`` - the persons speak one after another: person ``i``'s track starts where
            persons ``0..i-1`` end and is silent elsewhere; every returned track has the total length.
            ``"para"`` - the persons speak at the same time; shorter tracks are padded with trailing
            silence to the longest (the reference requires equal lengths).

    Returns:
        ``(per_person_tracks, mixed_track)``: float32 arrays of equal length; ``mixed_track`` is their sum,
        the sound the video carries.
    """
    if isinstance(tracks, np.ndarray) and tracks.ndim == 1:
        tracks = [tracks]
    if tracks is None or len(tracks) == 0:
        raise ValueError("combine_speakers needs at least one track; pass a list of prepared waveforms.")
    arrays = []
    for i, track in enumerate(tracks):
        if track is None:
            raise ValueError(
                f"Track {i} is None; for a silent person pass a silent waveform such as np.zeros_like(other_track)."
            )
        arr = _to_numpy(track)
        if arr.ndim != 1:
            raise ValueError(
                f"Track {i} has shape {tuple(arr.shape)}; each track must be a 1-D 16 kHz waveform "
                "(use prepare_audio first)."
            )
        arrays.append(np.asarray(arr, dtype=np.float32))

    mode = str(audio_type).lower()
    if mode == "add":
        total = sum(a.shape[0] for a in arrays)
        per_person = []
        offset = 0
        for a in arrays:
            placed = np.zeros(total, dtype=np.float32)
            placed[offset : offset + a.shape[0]] = a
            offset += a.shape[0]
            per_person.append(placed)
    elif mode == "para":
        total = max(a.shape[0] for a in arrays)
        per_person = []
        for a in arrays:
            placed = np.zeros(total, dtype=np.float32)
            placed[: a.shape[0]] = a
            per_person.append(placed)
    else:
        raise ValueError(f"Unknown audio_type {audio_type!r}; use 'add' (turn taking) or 'para' (simultaneous).")

    mixed = np.sum(np.stack(per_person, axis=0).astype(np.float64), axis=0).astype(np.float32)
    return per_person, mixed
