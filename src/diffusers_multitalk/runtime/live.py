"""Following a generation's live stream from a front end (the web app): the generation runs in a thread while its
HLS playlist (`pipelines.live_stream`) is polled; each new segment is handed out as a small mp4 (the segment remuxed,
no re-encoding: a browser's <video> plays it without an HLS player), then the generation's result.

Gradio's own `gr.Video(streaming=True)` would play the HLS stream itself, but it needs ffmpeg and ffprobe on PATH
(the system's; imageio-ffmpeg ships ffmpeg alone), which a pip install does not bring: the web app shows the newest
chunk instead, then the whole video.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from ..pipelines.live_stream import PLAYLIST_NAME, SEGMENT_PATTERN
from ..pipelines.video_io import get_ffmpeg_exe


__all__ = ["follow_live", "listed_segments", "segment_preview"]


def listed_segments(folder) -> list[Path]:
    """The segments `folder`'s playlist lists now (none before the first chunk)."""
    try:
        lines = (Path(folder) / PLAYLIST_NAME).read_text().splitlines()
    except OSError:
        return []
    return [Path(folder) / line for line in lines if SEGMENT_PATTERN.fullmatch(line)]


def segment_preview(segment: Path) -> Path | None:
    """The segment as an mp4 beside it (`preview_00000.mp4`, the same H.264 and AAC), or None when it could not be
    made (the stream was removed meanwhile: the generation failed)."""
    target = segment.with_name(segment.name.replace("segment_", "preview_").replace(".ts", ".mp4"))
    cmd = [get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(segment), "-c", "copy",
           "-movflags", "+faststart", "-f", "mp4", str(target)]  # fmt: skip
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return target if done.returncode == 0 and target.is_file() else None


def follow_live(work: Callable[[], Any], folder, poll_seconds: float = 0.25) -> Iterator[tuple[str, Any]]:
    """Runs `work()` (a generation writing its live stream to `folder`) in a thread. Yields `("chunk", (mp4, n))`
    for each new segment (its preview and how many chunks are out), then `("done", work's result)`; re-raises what
    `work` raised. The folder is removed at the end either way (the previews were handed out)."""
    outcome: dict[str, Any] = {}

    def run():
        try:
            outcome["result"] = work()
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=run, name="generation", daemon=True)
    thread.start()
    shown = 0
    try:
        while thread.is_alive():
            thread.join(poll_seconds)
            segments = listed_segments(folder)
            if len(segments) > shown and thread.is_alive():
                shown = len(segments)
                preview = segment_preview(segments[-1])
                if preview is not None:
                    yield "chunk", (preview, shown)
        if "error" in outcome:
            raise outcome["error"]
        yield "done", outcome["result"]
    finally:
        thread.join()
        shutil.rmtree(folder, ignore_errors=True)
