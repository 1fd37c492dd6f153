"""Shot boundaries of a source video (PySceneDetect), and one shot of it as a streamed source for the dubbing
pipeline.

Detection follows the dubbing reference's `--scene_seg` (`wan/utils/segvideo.py` there): one `SceneManager` with
PySceneDetect's `ContentDetector`, `AdaptiveDetector` and `ThresholdDetector`, each with its default settings, run
together over the whole video; the scene list it gives (the cuts of all three detectors, merged by the manager) is the shots, as
`(start, end)` times in seconds. Where the reference then drops shots of 0.5 s or less and trims 0.05 s off both ends
of the others (so its output is shorter than the audio), here shots shorter than `min_shot_seconds` (0.5) are merged
into the shot before them (the first into the next) and nothing is trimmed: the shots cover the video end to end.

Needs `scenedetect` and OpenCV (`pip install diffusers-multitalk[video]`: scenedetect, opencv-python-headless).
"""

from __future__ import annotations

import itertools
import os
from typing import Iterator, List, Tuple

import numpy as np

from .video_input import SourceVideo, _ffmpeg_frames, frame_index_at


__all__ = ["detect_shots", "open_shot"]

Shot = Tuple[float, float]


def _scenedetect():
    try:
        import scenedetect
    except ImportError as error:  # pragma: no cover - an optional dependency
        raise ImportError(
            "scene segmentation needs PySceneDetect and OpenCV: pip install scenedetect opencv-python-headless "
            "(or pip install 'diffusers-multitalk[video]')"
        ) from error
    return scenedetect


def _seconds(timecode) -> float:
    """A FrameTimecode in seconds (`.seconds` in PySceneDetect 0.7, `get_seconds()` before)."""
    seconds = getattr(timecode, "seconds", None)
    return float(seconds if seconds is not None else timecode.get_seconds())


def detect_shots(video_path: str | os.PathLike, min_shot_seconds: float = 0.5) -> List[Shot]:
    """The shots of a video file as `(start_s, end_s)` times, in order, covering it from 0 to its end.

    A video without a cut gives one shot. Shots shorter than `min_shot_seconds` are merged into their neighbour.
    """
    sd = _scenedetect()
    path = os.fspath(video_path)
    if not os.path.isfile(path):
        raise ValueError(f"`video` file {path!r} does not exist; scene segmentation needs a video file.")
    video = sd.open_video(path)
    manager = sd.SceneManager()
    manager.add_detector(sd.ContentDetector())
    manager.add_detector(sd.AdaptiveDetector())
    manager.add_detector(sd.ThresholdDetector())
    manager.detect_scenes(video, show_progress=False)
    scenes = manager.get_scene_list()
    duration = _seconds(video.duration) if video.duration is not None else 0.0
    if not scenes:
        return [(0.0, duration)]
    shots = [(_seconds(start), _seconds(end)) for start, end in scenes]
    # The scene list is contiguous; make it start at 0 and end at the video's end.
    shots[0] = (0.0, shots[0][1])
    shots[-1] = (shots[-1][0], max(shots[-1][1], duration))
    return merge_short_shots(shots, min_shot_seconds)


def merge_short_shots(shots: List[Shot], min_shot_seconds: float) -> List[Shot]:
    """Merges shots shorter than `min_shot_seconds` into the shot before them (the first one into the next)."""
    merged: List[Shot] = []
    for start, end in shots:
        if merged and (end - start < min_shot_seconds or merged[-1][1] - merged[-1][0] < min_shot_seconds):
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def open_shot(video_path: str | os.PathLike, start_s: float, end_s: float | None = None) -> SourceVideo:
    """The frames of `video_path` from `start_s` to `end_s` (None: the end) as a [`SourceVideo`] that the pipeline
    takes as `video=`: decoded as a stream by ffmpeg (the frames before the shot are read and dropped), so memory
    does not grow with the shot's length. Its time 0 is the shot's first frame."""
    path = os.fspath(video_path)
    frames, fps, duration = _ffmpeg_frames(path)
    first = frame_index_at(start_s, fps)
    last = None if end_s is None else max(first + 1, frame_index_at(end_s, fps))

    def shot_frames() -> Iterator[np.ndarray]:
        try:
            yield from itertools.islice(frames, first, last)
        finally:
            frames.close()

    shot = SourceVideo(shot_frames(), fps, f"{path!r} ({start_s:.2f}-{'end' if end_s is None else f'{end_s:.2f}'} s)")
    if last is not None:
        shot.duration = (last - first) / fps
    elif duration is not None:
        shot.duration = max(0.0, duration - first / fps)
    return shot
