"""Writing generated frames (and the driving audio) to an H.264 / AAC mp4 with ffmpeg.

The ffmpeg binary is the one bundled with ``imageio-ffmpeg``. Frames are streamed to ffmpeg's
stdin as raw RGB as they come (:class:`VideoWriter`, which the pipeline feeds chunk by chunk); the output is first written to a hidden temporary file next to ``path`` and moved
into place only when ffmpeg succeeds, so a failed export never leaves a partial video behind.

Frame sizes must be even for yuv420p: odd heights/widths are padded by repeating the last row/column
(the video is then one pixel larger; a warning says so).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
import uuid
import warnings
from typing import Union

import numpy as np
import PIL.Image
import torch


__all__ = ["VideoWriter", "export_to_video", "export_to_video_with_audio", "get_ffmpeg_exe"]

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


# ---------------------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------------------


class VideoWriter:
    """Streams frames into an H.264 mp4 (yuv420p), with an optional AAC track, as they are made.

    Frames go to ffmpeg's stdin as soon as :meth:`write` gets them, so a long video never sits in memory. The file
    is written as a hidden ``.NAME.<hex>.part`` beside ``path`` and moved into place by :meth:`close`;
    :meth:`abort` (or leaving a ``with`` block by an exception, ``KeyboardInterrupt`` and ``SystemExit`` included)
    stops ffmpeg and removes it. ``audio`` (a waveform at ``sample_rate`` or a path ffmpeg reads) is padded with
    silence or cut to the video's length.
    """

    def __init__(
        self,
        path: PathLike,
        fps: float = 25,
        audio=None,
        sample_rate: int = 16000,
        crf: int = 18,
        preset: str = "medium",
        audio_bitrate: str = "192k",
    ):
        if not fps or fps <= 0 or not math.isfinite(fps):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        if not 0 <= int(crf) <= 51:
            raise ValueError(f"crf must be in [0, 51], got {crf!r}")
        self.path = os.fspath(path)
        self.fps, self.crf, self.preset, self.audio_bitrate = float(fps), int(crf), preset, audio_bitrate
        self.num_frames = 0
        out_dir = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(out_dir, exist_ok=True)
        self.part_path = os.path.join(out_dir, f".{os.path.basename(self.path)}.{uuid.uuid4().hex[:8]}.part")
        self._work = tempfile.mkdtemp(prefix="multitalk_export_")
        self._proc = None
        self._err_file = None
        self._size = None
        self._audio_path = None
        try:
            if audio is not None:
                self._audio_path = self._audio_file(audio, sample_rate)
        except BaseException:
            self._cleanup()
            raise

    def _audio_file(self, audio, sample_rate) -> str:
        if isinstance(audio, (str, os.PathLike)):
            audio_path = os.fspath(audio)
            if not os.path.isfile(audio_path):
                raise FileNotFoundError(f"audio file not found: {audio_path}")
            return audio_path
        if not sample_rate or sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
        import soundfile as sf

        wav = _audio_array(audio)
        audio_path = os.path.join(self._work, "audio.wav")
        sf.write(audio_path, wav, int(sample_rate), subtype="PCM_16" if wav.dtype == np.int16 else "FLOAT")
        return audio_path

    def _start(self, height: int, width: int) -> None:
        pad_h, pad_w = height % 2, width % 2
        if pad_h or pad_w:
            warnings.warn(
                f"frame size {width}x{height} is odd; padding to {width + pad_w}x{height + pad_h} "
                "(last row/column repeated) for H.264 yuv420p",
                stacklevel=4,
            )
        self._size, self._pad = (height, width), (pad_h, pad_w)
        cmd = [
            get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width + pad_w}x{height + pad_h}",
            "-framerate", repr(self.fps), "-i", "pipe:0",
        ]  # fmt: skip
        # The video stream first; the audio is muxed on at close, cut or padded to the frames written.
        self._video_path = (
            self.part_path if self._audio_path is None else self.part_path[: -len(".part")] + ".video.part"
        )
        cmd += [
            "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p",
            "-movflags", "+faststart", "-f", "mp4", self._video_path,
        ]  # fmt: skip
        self._err_file = open(os.path.join(self._work, "ffmpeg.log"), "wb")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err_file)

    def write(self, frames) -> None:
        """Appends frames: a ``[T, H, W, 3]`` array/tensor or a list of frames (see :func:`export_to_video`)."""
        for frame in _frame_sequence(frames):
            arr = _frame_to_uint8(frame, self.num_frames)
            if self._proc is None:
                self._start(*arr.shape[:2])
            if arr.shape[:2] != self._size:
                raise ValueError(
                    f"frame {self.num_frames} has size {arr.shape[1]}x{arr.shape[0]}, expected "
                    f"{self._size[1]}x{self._size[0]}"
                )
            try:
                self._proc.stdin.write(np.ascontiguousarray(_even_pad(arr, *self._pad)).tobytes())
            except BrokenPipeError:
                raise RuntimeError(f"ffmpeg stopped while writing {self.path}:\n{self._log()}") from None
            self.num_frames += 1

    def close(self) -> str:
        """Finishes the file and moves it into place; returns its path."""
        try:
            if self._proc is None:
                raise ValueError("no frames to write")
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
            returncode = self._proc.wait()
            if returncode != 0:
                raise RuntimeError(f"ffmpeg failed (exit code {returncode}) writing {self.path}:\n{self._log()}")
            if self._audio_path is not None:
                self._mux_audio()
                os.remove(self._video_path)
            os.replace(self.part_path, self.path)
        except BaseException:
            self.abort()
            raise
        self._cleanup()
        return self.path

    def _mux_audio(self) -> None:
        duration = self.num_frames / self.fps
        cmd = [
            get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-i", self._video_path, "-i", self._audio_path, "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
            "-c:a", "aac", "-b:a", self.audio_bitrate, "-af", "apad", "-t", repr(duration),
            "-movflags", "+faststart", "-f", "mp4", self.part_path,
        ]  # fmt: skip
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err_file)
        returncode = self._proc.wait()
        if returncode != 0:
            raise RuntimeError(
                f"ffmpeg failed (exit code {returncode}) adding the audio to {self.path}:\n{self._log()}"
            )

    def abort(self) -> None:
        """Stops ffmpeg and removes the unfinished file."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        for path in {self.part_path, getattr(self, "_video_path", self.part_path)}:
            if os.path.exists(path):
                os.remove(path)
        self._cleanup()

    def _log(self) -> str:
        self._err_file.flush()
        with open(self._err_file.name, "rb") as f:
            return f.read().decode("utf-8", "replace").strip()[-2000:]

    def _cleanup(self) -> None:
        if self._err_file is not None:
            self._err_file.close()
        shutil.rmtree(self._work, ignore_errors=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _write(frames, path: PathLike, fps: float, crf: int, preset: str, audio=None, sample_rate: int = 16000,
           audio_bitrate: str = "192k") -> str:  # fmt: skip
    seq = _frame_sequence(frames)  # an empty input fails before any file is made
    writer = VideoWriter(path, fps=fps, audio=audio, sample_rate=sample_rate, crf=crf, preset=preset,
                         audio_bitrate=audio_bitrate)  # fmt: skip
    with writer:
        writer.write(seq)
    return writer.path


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
