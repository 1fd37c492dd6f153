"""Writing generated frames (and the driving audio) to an H.264 / AAC mp4 with ffmpeg.

The ffmpeg binary is the one bundled with ``imageio-ffmpeg``. Frames are streamed to ffmpeg's
stdin as raw RGB; the output is first written to a hidden temporary file next to ``path`` and moved
into place only when ffmpeg succeeds, so a failed export never leaves a partial video behind.

Frame sizes must be even for yuv420p: odd heights/widths are padded by repeating the last row/column
(the video is then one pixel larger; a warning says so).
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
import uuid
import warnings
from typing import Union

import numpy as np
import PIL.Image
import torch

__all__ = ["export_to_video", "export_to_video_with_audio", "get_ffmpeg_exe"]

PathLike = Union[str, os.PathLike]


def get_ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped with imageio-ffmpeg."""
    try:
        import imageio_ffmpeg
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError("video export needs imageio-ffmpeg: pip install imageio-ffmpeg") from err
    return imageio_ffmpeg.get_ffmpeg_exe()


# ---------------------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------------------


def _frame_to_uint8(frame, index: int) -> np.ndarray:
    """One frame -> [H, W, 3] uint8. Floats are taken as [0, 1] and clipped (x * 255 truncated, as
    the original's writer)."""
    if isinstance(frame, PIL.Image.Image):
        arr = np.asarray(frame.convert("RGB"))
    else:
        if isinstance(frame, torch.Tensor):
            frame = frame.detach().cpu()
            frame = frame.float() if frame.is_floating_point() else frame
            frame = frame.numpy()
        arr = np.asarray(frame)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
            raise ValueError(f"frame {index}: expected [H, W, 3] (channels last), got shape {arr.shape}")
        if np.issubdtype(arr.dtype, np.floating):
            if not np.isfinite(arr).all():
                raise ValueError(f"frame {index}: contains NaN or infinite values")
            arr = np.clip(arr * 255.0, 0, 255).astype(np.uint8)
        elif arr.dtype == np.bool_:
            arr = arr.astype(np.uint8) * 255
        elif np.issubdtype(arr.dtype, np.integer):
            if arr.dtype != np.uint8:
                if arr.size and (arr.min() < 0 or arr.max() > 255):
                    raise ValueError(f"frame {index}: integer frames must be in [0, 255]")
                arr = arr.astype(np.uint8)
        else:
            raise ValueError(f"frame {index}: unsupported dtype {arr.dtype}")
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"frame {index}: empty frame of shape {arr.shape}")
    return arr


def _frame_sequence(frames) -> list:
    """Split the input into a list of per-frame objects (no pixel conversion yet)."""
    if frames is None:
        raise ValueError("no frames to write")
    if isinstance(frames, (np.ndarray, torch.Tensor)):
        if frames.ndim != 4:
            raise ValueError(
                f"frame arrays must be [T, H, W, 3] (channels last), got shape {tuple(frames.shape)}; "
                "pass a list for single frames"
            )
        if frames.shape[0] == 0:
            raise ValueError("no frames to write (empty array)")
        return [frames[i] for i in range(frames.shape[0])]
    if isinstance(frames, PIL.Image.Image):
        return [frames]
    seq = list(frames)
    if not seq:
        raise ValueError("no frames to write (empty list)")
    return seq


def _even_pad(arr: np.ndarray, pad_h: int, pad_w: int) -> np.ndarray:
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return arr


# ---------------------------------------------------------------------------------------------------
# audio
# ---------------------------------------------------------------------------------------------------


def _audio_array(audio) -> np.ndarray:
    """Waveform -> [samples, channels] (float32 or int16)."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu()
        audio = audio.float() if audio.is_floating_point() else audio
        audio = audio.numpy()
    arr = np.asarray(audio)
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim == 2:
        # soundfile's layout is [samples, channels]; accept [channels, samples] for 1-2 channels
        if arr.shape[0] in (1, 2) and arr.shape[1] > 2:
            arr = arr.T
    else:
        raise ValueError(f"audio must be [samples] or [samples, channels], got shape {arr.shape}")
    if arr.shape[1] > 8:
        raise ValueError(f"audio has {arr.shape[1]} channels; expected [samples, channels]")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError("audio contains NaN or infinite values")
        return arr.astype(np.float32)
    if arr.dtype == np.int16:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < -32768 or arr.max() > 32767):
            raise ValueError(f"integer audio of dtype {arr.dtype} must be in the int16 range")
        return arr.astype(np.int16)
    raise ValueError(f"unsupported audio dtype {arr.dtype}")


def _fit_length(arr: np.ndarray, num_samples: int) -> np.ndarray:
    if arr.shape[0] >= num_samples:
        return arr[:num_samples]
    pad = np.zeros((num_samples - arr.shape[0], arr.shape[1]), dtype=arr.dtype)
    return np.concatenate([arr, pad], axis=0)


# ---------------------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------------------


def _write(
    frames,
    path: PathLike,
    fps: float,
    crf: int,
    preset: str,
    audio=None,
    sample_rate: int = 16000,
    audio_bitrate: str = "192k",
) -> str:
    if not fps or fps <= 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not 0 <= int(crf) <= 51:
        raise ValueError(f"crf must be in [0, 51], got {crf!r}")
    seq = _frame_sequence(frames)
    first = _frame_to_uint8(seq[0], 0)
    height, width = first.shape[:2]
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        warnings.warn(
            f"frame size {width}x{height} is odd; padding to {width + pad_w}x{height + pad_h} "
            "(last row/column repeated) for H.264 yuv420p",
            stacklevel=3,
        )
    num_frames = len(seq)
    duration = num_frames / fps

    path = os.fspath(path)
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    tmp_path = os.path.join(out_dir, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.part")

    with tempfile.TemporaryDirectory(prefix="multitalk_export_") as work:
        audio_args: list[str] = []
        if audio is not None:
            if isinstance(audio, (str, os.PathLike)):
                audio_path = os.fspath(audio)
                if not os.path.isfile(audio_path):
                    raise FileNotFoundError(f"audio file not found: {audio_path}")
                # ffmpeg decodes it; apad + -t below pad/trim it to the video's duration
                audio_args = ["-i", audio_path]
            else:
                if not sample_rate or sample_rate <= 0:
                    raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
                import soundfile as sf

                wav = _fit_length(_audio_array(audio), int(round(duration * sample_rate)))
                audio_path = os.path.join(work, "audio.wav")
                subtype = "PCM_16" if wav.dtype == np.int16 else "FLOAT"
                sf.write(audio_path, wav, int(sample_rate), subtype=subtype)
                audio_args = ["-i", audio_path]

        cmd = [
            get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width + pad_w}x{height + pad_h}",
            "-framerate", repr(float(fps)), "-i", "pipe:0",
            *audio_args,
            "-map", "0:v:0",
        ]  # fmt: skip
        if audio is not None:
            cmd += ["-map", "1:a:0", "-c:a", "aac", "-b:a", audio_bitrate, "-af", "apad", "-t", repr(duration)]
        cmd += [
            "-c:v", "libx264", "-preset", preset, "-crf", str(int(crf)), "-pix_fmt", "yuv420p",
            "-frames:v", str(num_frames), "-movflags", "+faststart", "-f", "mp4", tmp_path,
        ]  # fmt: skip

        err_path = os.path.join(work, "ffmpeg.log")
        ok = False
        try:
            with open(err_path, "wb") as err_file:
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err_file)
                try:
                    broken = _feed_frames(proc, seq, first, height, width, pad_h, pad_w)
                except BaseException:
                    proc.kill()  # bad input: stop ffmpeg rather than let it finish a short video
                    proc.wait()
                    raise
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    broken = True
                returncode = proc.wait()
            if returncode != 0 or broken:
                with open(err_path, "rb") as f:
                    log = f.read().decode("utf-8", "replace").strip()
                raise RuntimeError(f"ffmpeg failed (exit code {returncode}) writing {path}:\n{log[-2000:]}")
            os.replace(tmp_path, path)
            ok = True
        finally:
            if not ok and os.path.exists(tmp_path):
                os.remove(tmp_path)
    return path


def _feed_frames(proc, seq, first, height, width, pad_h, pad_w) -> bool:
    """Stream the frames to ffmpeg's stdin; True if ffmpeg closed the pipe early."""
    for i, frame in enumerate(seq):
        arr = first if i == 0 else _frame_to_uint8(frame, i)
        if arr.shape[:2] != (height, width):
            raise ValueError(f"frame {i} has size {arr.shape[1]}x{arr.shape[0]}, expected {width}x{height}")
        try:
            proc.stdin.write(np.ascontiguousarray(_even_pad(arr, pad_h, pad_w)).tobytes())
        except BrokenPipeError:
            return True
    return False


def export_to_video(
    frames,
    path: PathLike,
    fps: float = 25,
    crf: int = 18,
    preset: str = "medium",
) -> str:
    """Write frames to an H.264 mp4 (yuv420p, no audio); returns ``path``.

    ``frames``: a list of PIL images / ``[H, W, 3]`` arrays or tensors, or one ``[T, H, W, 3]``
    array/tensor; uint8 in ``[0, 255]`` or float in ``[0, 1]`` (clipped, ``x * 255`` truncated).
    The container is always mp4, whatever the extension.
    """
    return _write(frames, path, fps=fps, crf=crf, preset=preset)


def export_to_video_with_audio(
    frames,
    audio,
    path: PathLike,
    fps: float = 25,
    sample_rate: int = 16000,
    crf: int = 18,
    preset: str = "medium",
    audio_bitrate: str = "192k",
) -> str:
    """Write frames with an AAC audio track to an H.264 mp4; returns ``path``.

    ``audio`` is a waveform (numpy/torch ``[samples]`` or ``[samples, channels]``, float in
    ``[-1, 1]`` or int16) at ``sample_rate``, or a path to any audio file ffmpeg can read. It is
    trimmed or zero-padded to the video's length ``len(frames) / fps``. See :func:`export_to_video`
    for ``frames``.
    """
    if audio is None:
        raise ValueError("audio is None; use export_to_video for a silent video")
    return _write(frames, path, fps=fps, crf=crf, preset=preset, audio=audio, sample_rate=sample_rate,
                  audio_bitrate=audio_bitrate)  # fmt: skip
