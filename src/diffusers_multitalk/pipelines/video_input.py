"""Source-video input of the dubbing pipelines: frames picked by time from a file, an array or a list of images."""

from __future__ import annotations

import math
import os
from typing import Any, Iterator, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers.utils import logging

from .image_processing import load_image_any


logger = logging.get_logger(__name__)

__all__ = ["SourceVideo", "open_source_video", "frame_index_at"]

# Extensions opened with PIL rather than ffmpeg (a still image as `video=` animates that image).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def frame_index_at(seconds: float, fps: float) -> int:
    """Index of the frame on screen at `seconds` in a constant-rate video (the small slack keeps a time that is an
    exact multiple of the frame period, such as 8 / 25 s in a 25 fps video, on its own frame despite rounding)."""
    return max(0, int(math.floor(seconds * fps + 1e-6)))


class SourceVideo:
    """Frames of the video being dubbed, read in time order.

    `frame_at(seconds)` gives the `[H, W, 3]` uint8 frame on screen at that time. Files are decoded by ffmpeg
    (imageio-ffmpeg's binary: every container and codec it decodes, AV1 included) as a stream: only the current frame
    is held, so memory does not grow with the video's length; times must then not go backwards. Past the last frame
    the last frame is held, with one warning.

    Args:
        frames: an iterator of `[H, W, 3]` uint8 frames.
        fps: the source's frame rate.
        description: how errors name the source.
        num_frames: the frame count when known up front (arrays, lists), else None.
        still: a still image (image-to-video): held for every time, without a warning.
    """

    def __init__(
        self,
        frames: Iterator[np.ndarray],
        fps: float,
        description: str,
        num_frames: int | None = None,
        still: bool = False,
    ):
        if not fps or not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"`video` {description}: its frame rate is unknown ({fps!r}); pass `video_fps=`.")
        self.fps = float(fps)
        self.description = description
        self.num_frames = num_frames
        self.still = still
        self._frames = frames
        self._index = -1
        self._current: np.ndarray | None = None
        self._exhausted = False
        self.held_last_frame = False
        self.duration = None if num_frames is None else num_frames / self.fps  # seconds, when known up front
        self._advance_to(0)
        if self._current is None:
            raise ValueError(
                f"`video` {description} has no frames; give a video with at least one frame, or pass the still "
                "image as `image=` for image-to-video."
            )
        self.first_frame = self._current

    @property
    def size(self) -> tuple[int, int]:
        """`(height, width)` of the first frame."""
        return self.first_frame.shape[0], self.first_frame.shape[1]

    def _advance_to(self, index: int) -> None:
        while self._index < index and not self._exhausted:
            try:
                frame = next(self._frames)
            except StopIteration:
                self._exhausted = True
                break
            self._index += 1
            self._current = frame

    def frame_at(self, seconds: float) -> np.ndarray:
        index = frame_index_at(seconds, self.fps)
        if index < self._index:
            raise ValueError(
                f"`video` {self.description} is read forwards; frame {index} was asked after {self._index}."
            )
        self._advance_to(index)
        if index > self._index and not self.held_last_frame and not self.still:
            self.held_last_frame = True
            logger.warning(
                f"The audio outlasts the source video {self.description} ({self._index + 1} frames, "
                f"{(self._index + 1) / self.fps:.2f} s at {self.fps:g} fps): its last frame is held from "
                f"{seconds:.2f} s on. Trim the audio or give a longer video to avoid a frozen background."
            )
        return self._current

    def warn_if_outlasted(self, seconds: float) -> None:
        """Before a dub of `seconds`: one warning when it outlasts the source (its duration known up front), said
        once for the whole call (`frame_at` then holds the last frame without another)."""
        if self.still or self.held_last_frame or self.duration is None or seconds <= self.duration + 0.5 / self.fps:
            return
        self.held_last_frame = True
        logger.warning(
            f"The audio outlasts the source video {self.description}: the dub runs {seconds:.2f} s, the video "
            f"{self.duration:.2f} s, so its last frame is held from {self.duration:.2f} s on. Trim the audio or give a "
            "longer video to avoid a frozen background."
        )

    def close(self) -> None:
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()


def _array_frames(video: np.ndarray) -> Iterator[np.ndarray]:
    yield from video


def _as_uint8_frame(frame: Any, index: int) -> np.ndarray:
    try:
        return np.asarray(load_image_any(frame))
    except (TypeError, ValueError, FileNotFoundError) as error:
        raise ValueError(f"`video` frame {index}: {error}") from error


def _list_frames(frames: Sequence[Any]) -> Iterator[np.ndarray]:
    for index, frame in enumerate(frames):
        yield _as_uint8_frame(frame, index)


def _ffmpeg_frames(path: str) -> tuple[Iterator[np.ndarray], float, float | None]:
    """Streams the RGB frames of a video file through ffmpeg; returns the frame iterator, the frame rate and the
    duration in seconds its header gives (None when it gives none)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as error:
        reader.close()
        raise ValueError(
            f"`video` {path!r} cannot be read by ffmpeg ({str(error).strip().splitlines()[-1] if str(error) else error!r}); "
            "give a video file ffmpeg decodes (mp4, mov, mkv, webm; H.264, H.265, VP9, AV1, ...), an array "
            "[frames, H, W, 3] or a list of images."
        ) from error
    width, height = meta["size"]
    fps = float(meta.get("fps") or 0)
    duration = float(meta["duration"]) if meta.get("duration") else None

    def frames() -> Iterator[np.ndarray]:
        try:
            for raw in reader:
                yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
        except (OSError, RuntimeError) as error:
            raise ValueError(f"`video` {path!r}: ffmpeg failed while decoding ({error}).") from error
        finally:
            reader.close()

    return frames(), fps, duration


def open_source_video(video: Any, fps: float | None = None) -> SourceVideo:
    """A [`SourceVideo`] from a path (any video ffmpeg decodes; an image file gives a one-frame video), an array
    `[frames, H, W, 3]` (uint8, or floats in [0, 1]), a tensor of that layout, or a list of images (PIL, arrays,
    paths). `fps` is the source's frame rate: read from the file when omitted, 25 for arrays and lists. A
    [`SourceVideo`] (e.g. one shot of a file, `scene_split.open_shot`) is used as it is."""
    if isinstance(video, SourceVideo):
        return video
    if isinstance(video, (str, os.PathLike)):
        path = os.fspath(video)
        if not os.path.isfile(path):
            raise ValueError(f"`video` file {path!r} does not exist; give the path of the video to dub.")
        if path.lower().endswith(IMAGE_EXTENSIONS):
            frame = _as_uint8_frame(path, 0)
            return SourceVideo(iter([frame]), fps or 25.0, repr(path), num_frames=1, still=True)
        frames, file_fps, duration = _ffmpeg_frames(path)
        source = SourceVideo(frames, fps or file_fps, repr(path))
        source.duration = duration  # from the container's header (None when it does not say)
        return source
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().numpy()
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"`video` arrays must be [frames, height, width, 3], got shape {video.shape}.")
        if np.issubdtype(video.dtype, np.floating):
            if video.size and (video.min() < -1e-3 or video.max() > 1 + 1e-3):
                raise ValueError("`video` float arrays must hold values in [0, 1]; pass uint8 for 0..255.")
            video = np.round(np.clip(video, 0, 1) * 255).astype(np.uint8)
        elif video.dtype != np.uint8:
            raise ValueError(f"`video` arrays must be uint8 or float in [0, 1], got {video.dtype}.")
        return SourceVideo(_array_frames(video), fps or 25.0, f"array {tuple(video.shape)}", num_frames=len(video))
    if isinstance(video, (list, tuple)):
        return SourceVideo(_list_frames(video), fps or 25.0, f"list of {len(video)} images", num_frames=len(video))
    if isinstance(video, PIL.Image.Image):
        return SourceVideo(iter([_as_uint8_frame(video, 0)]), fps or 25.0, "image", num_frames=1, still=True)
    raise ValueError(
        f"`video` must be a path, an array [frames, H, W, 3] or a list of images, got {type(video).__name__}."
    )
