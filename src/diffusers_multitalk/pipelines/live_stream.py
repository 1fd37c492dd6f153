"""Live video while it generates: an HLS stream (an EVENT `.m3u8` playlist and one MPEG-TS segment per chunk, H.264
with its AAC audio) that grows as each chunk is decoded, playable before the whole video exists.

The pipelines write it beside the mp4 (`live_dir=`, through `ChunkedVideo`); `multitalk generate --live DIR`, the
HTTP API (`GET /v1/jobs/{id}/live.m3u8`) and the web app read it. Each segment is encoded by its own run of the
ffmpeg binary imageio-ffmpeg ships, into a hidden part file moved into place when complete; the playlist is rewritten
(atomically) after each segment, so a reader never sees a segment that is half written. `close` appends
`#EXT-X-ENDLIST`; `abort` (an error, a cancelled job) removes the stream, as the mp4's part file is removed.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .video_io import _even_pad, _frame_sequence, _frame_to_uint8, get_ffmpeg_exe


__all__ = ["PLAYLIST_NAME", "SEGMENT_PATTERN", "LiveStream", "segment_name"]

PLAYLIST_NAME = "live.m3u8"
SEGMENT_PATTERN = re.compile(r"segment_[0-9]{5}\.ts")
AUDIO_RATE = 48000  # the segments' AAC rate (what browsers' HLS players are surest of)


def segment_name(index: int) -> str:
    return f"segment_{index:05d}.ts"


class LiveStream:
    """An HLS stream in `folder`: `live.m3u8` and `segment_00000.ts`, ... (one per `write`).

    Args:
        folder: where the stream goes (made if missing; a previous stream's playlist and segments there are removed).
        fps: the video's frame rate.
        audio: the whole video's waveform (mono float at `sample_rate`), or None for silent segments; each segment
            carries the samples of its own frames.
        sample_rate: the waveform's rate.
        max_segment_seconds: the longest segment (a chunk), the playlist's `#EXT-X-TARGETDURATION`.
    """

    def __init__(self, folder, fps: float, audio=None, sample_rate: int = 16000, max_segment_seconds: float = 10.0,
                 crf: int = 18, preset: str = "veryfast"):  # fmt: skip
        self.folder = Path(folder)
        self.fps, self.audio, self.sample_rate, self.crf, self.preset = float(fps), audio, sample_rate, crf, preset
        self.target_duration = max(1, math.ceil(max_segment_seconds))
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_stream()
        self.segments: list[tuple[str, float]] = []
        self.frames_done = 0
        self.ended = False
        self._work = tempfile.mkdtemp(prefix="multitalk_live_")

    @property
    def playlist_path(self) -> Path:
        return self.folder / PLAYLIST_NAME

    def write(self, frames) -> Path:
        """Encodes `frames` (`[T, H, W, 3]`, float in [0, 1] or uint8) and their audio as the next segment, then adds
        it to the playlist. Returns the segment's path."""
        arrays = [_frame_to_uint8(frame, self.frames_done + i) for i, frame in enumerate(_frame_sequence(frames))]
        height, width = arrays[0].shape[:2]
        pad = (height % 2, width % 2)
        start, count = self.frames_done, len(arrays)
        path = self.folder / segment_name(len(self.segments))
        part = self.folder / f".{path.name}.part"
        cmd = [
            get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width + pad[1]}x{height + pad[0]}",
            "-framerate", repr(self.fps), "-i", "pipe:0",
        ]  # fmt: skip
        audio_path = self._audio_slice(start, count)
        if audio_path is not None:
            cmd += ["-i", audio_path, "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "128k",
                    "-ar", str(AUDIO_RATE), "-af", "apad"]  # fmt: skip
        cmd += [
            "-c:v", "libx264", "-preset", self.preset, "-bf", "0", "-crf", str(self.crf), "-pix_fmt", "yuv420p",
            "-t", repr(count / self.fps), "-avoid_negative_ts", "disabled", "-output_ts_offset", repr(start / self.fps), "-f", "mpegts", str(part),
        ]  # fmt: skip
        data = b"".join(np.ascontiguousarray(_even_pad(a, *pad)).tobytes() for a in arrays)
        done = subprocess.run(cmd, input=data, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if done.returncode != 0:
            part.unlink(missing_ok=True)
            message = done.stderr.decode("utf-8", "replace").strip()[-2000:]
            raise RuntimeError(f"ffmpeg failed (exit code {done.returncode}) writing {path}:\n{message}")
        os.replace(part, path)
        self.segments.append((path.name, count / self.fps))
        self.frames_done += count
        self._write_playlist()
        return path

    def _audio_slice(self, start: int, count: int) -> str | None:
        """The samples of frames `[start, start + count)` as a wav in the work folder (None without audio)."""
        if self.audio is None:
            return None
        import soundfile as sf

        first = int(round(start / self.fps * self.sample_rate))
        last = int(round((start + count) / self.fps * self.sample_rate))
        samples = np.asarray(self.audio, dtype=np.float32)[first:last]
        samples = np.pad(samples, (0, max(0, last - first - len(samples))))
        path = os.path.join(self._work, "audio.wav")
        sf.write(path, samples, int(self.sample_rate), subtype="FLOAT")
        return path

    def _write_playlist(self) -> None:
        # EXT-X-START: players start at the beginning, not at the live edge (a talk is watched from its start)
        lines = [
            "#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-PLAYLIST-TYPE:EVENT", "#EXT-X-INDEPENDENT-SEGMENTS",
            "#EXT-X-START:TIME-OFFSET=0", f"#EXT-X-TARGETDURATION:{self.target_duration}", "#EXT-X-MEDIA-SEQUENCE:0",
        ]  # fmt: skip
        for name, seconds in self.segments:
            lines += [f"#EXTINF:{seconds:.6f},", name]
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        part = self.folder / f".{PLAYLIST_NAME}.part"
        part.write_text("\n".join(lines) + "\n")
        os.replace(part, self.playlist_path)

    def close(self) -> None:
        """Ends the stream: the playlist gets `#EXT-X-ENDLIST` (a stream with no segment leaves no playlist)."""
        self.ended = True
        if self.segments:
            self._write_playlist()
        shutil.rmtree(self._work, ignore_errors=True)

    def abort(self) -> None:
        """Removes the stream (its playlist, segments and part files; the folder too when this stream made it)."""
        self._remove_stream()
        if self.created:
            shutil.rmtree(self.folder, ignore_errors=True)
        shutil.rmtree(self._work, ignore_errors=True)

    def _remove_stream(self) -> None:
        for path in self.folder.iterdir():
            name = path.name.removeprefix(".").removesuffix(".part")
            if path.is_file() and (name == PLAYLIST_NAME or SEGMENT_PATTERN.fullmatch(name)):
                path.unlink(missing_ok=True)
