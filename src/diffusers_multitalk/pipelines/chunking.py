"""The chunks of a talking video: which frames and audio each chunk covers, what conditions it, and how the decoded
chunks become the output (frames gathered, streamed to an mp4, or latents joined along time).

The pipelines generate a video as chunks of `num_frames` frames, each continuing from the last `motion_frames`
frames of the one before (MultiTalk's streaming mode, the dubbing pipeline's only mode); the pipelines' `__call__`
runs the loop, this module keeps its bookkeeping out of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np
import torch
from diffusers.utils import logging

from ..audio.encoder import audio_windows, mirror_pad_embedding
from ..audio.processing import TARGET_SAMPLE_RATE
from ..utils.host_memory import release_host_memory
from .live_stream import LiveStream
from .video_io import VideoWriter


__all__ = ["Chunk", "ChunkConditioning", "ChunkedAudio", "ChunkedVideo", "VideoPlan"]

logger = logging.get_logger(__name__)


class VideoPlan(NamedTuple):
    """What one call generates: chunks of `chunk_frames` frames, `num_chunks` of them, `num_frames` kept."""

    chunk_frames: int
    num_chunks: int
    num_frames: int


@dataclass(frozen=True)
class Chunk:
    """One chunk of the plan: its index, the video frame its audio window starts at, and whether it is the last."""

    index: int
    audio_start: int
    is_last: bool

    @property
    def is_first(self) -> bool:
        return self.index == 0


@dataclass
class ChunkConditioning:
    """What conditions one chunk.

    Args:
        image_embeds (`torch.Tensor`): CLIP tokens `[1, 257, dim]` the DiT's image cross-attention sees.
        condition (`torch.Tensor`): the VAE condition `[1, 4 + 16, T, h, w]` (known-frame mask channels, then latents).
        motion_latents (`torch.Tensor`): latents of the frames the chunk continues from `[1, 16, t, h, w]`; re-noised
            into the chunk's leading latent frames (for every chunk but the first) before the loop and after every
            step.
        num_motion_frames (`int`): pixel frames of the chunk that repeat the previous chunk's (dropped from the
            output).
    """

    image_embeds: torch.Tensor
    condition: torch.Tensor
    motion_latents: torch.Tensor
    num_motion_frames: int


class ChunkedAudio:
    """Each chunk's audio windows, as the references cut them: the windows advance by `chunk_frames -
    motion_frames`, and the embeddings are mirror-padded (cumulatively, as the references do) before the chunk that
    reaches the end of the kept frames. Iterate it for the chunks; `windows(chunk)` gives a chunk's audio input."""

    def __init__(self, embeddings: list[torch.Tensor], plan: VideoPlan, motion_frames: int, window: int = 5):
        self.plan, self.motion_frames, self.window = plan, motion_frames, window
        if plan.num_chunks == 1:  # a chunk past the audio's end is driven by its mirrored tail, as streaming's last
            embeddings = [mirror_pad_embedding(e, plan.chunk_frames) for e in embeddings]
        self.embeddings = embeddings

    def __iter__(self) -> Iterator[Chunk]:
        audio_start = 0
        for index in range(self.plan.num_chunks):
            yield Chunk(index, audio_start, index == self.plan.num_chunks - 1)
            audio_start += self.plan.chunk_frames - self.motion_frames
            audio_end = audio_start + self.plan.chunk_frames
            if audio_end >= self.plan.num_frames:
                self.embeddings = [mirror_pad_embedding(e, audio_end) for e in self.embeddings]

    def windows(self, chunk: Chunk, device, dtype) -> torch.Tensor:
        """`[1, persons, chunk_frames, window, layers, hidden]`: every frame's audio window, for each person."""
        windows = [audio_windows(e, self.plan.chunk_frames, start=chunk.audio_start) for e in self.embeddings]
        return torch.stack(windows)[None].to(device=device, dtype=dtype)


class ChunkedVideo:
    """Gathers one take's chunks into the output: the new frames of each decoded chunk (streamed to `output_path` as
    an mp4 with `audio`, or kept), or, for `output_type="latent"`, the chunks' latents joined along time without
    their overlap. With `live_dir`, each decoded chunk's new frames are also appended to a live HLS stream there
    (`live_stream.LiveStream`: one segment per chunk, with its audio). Use it as a context manager: a half-written
    mp4 and live stream are removed on any error; on success the stream is ended (`#EXT-X-ENDLIST`)."""

    def __init__(
        self, plan: VideoPlan, audio: np.ndarray | None, output_type: str, output_path=None, fps: int = 25, vae_scale=4,
        live_dir=None,
    ):  # fmt: skip
        self.plan, self.output_type, self.fps, self.vae_scale = plan, output_type, fps, vae_scale
        self.audio = None
        if audio is not None:
            length = int(round(plan.num_frames / fps * TARGET_SAMPLE_RATE))
            self.audio = np.pad(audio, (0, max(0, length - len(audio))))[:length].astype(np.float32)
        self.writer = (
            VideoWriter(output_path, fps=fps, audio=self.audio, sample_rate=TARGET_SAMPLE_RATE) if output_path else None
        )
        self.live = None
        if live_dir is not None and output_type != "latent":
            self.live = LiveStream(live_dir, fps, self.audio, TARGET_SAMPLE_RATE, plan.chunk_frames / fps)
        self.frames, self.latents = [], []
        self.frames_done = 0

    def __enter__(self) -> ChunkedVideo:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.writer is not None and exc_type is None:
                self.writer.close()  # an interrupted video's audio ends with its frames (the writer cuts it)
            elif self.writer is not None:
                self.writer.abort()
        except BaseException:
            if self.live is not None:
                self.live.abort()
            raise
        if self.live is not None:  # ended once the mp4 is in place; removed with it
            self.live.close() if exc_type is None else self.live.abort()

    def add_latents(self, latents: torch.Tensor, chunk: Chunk, num_motion_latents: int) -> None:
        """Keeps a chunk's latents, less the leading frames that repeat the previous chunk's."""
        self.latents.append(latents if chunk.is_first else latents[:, :, num_motion_latents:])

    def add_frames(self, video: torch.Tensor, chunk: Chunk, num_motion_frames: int, postprocess, skip=None) -> None:
        """Keeps (or writes) a decoded chunk's new frames, up to the plan's length: all but the leading
        `num_motion_frames` (the first chunk's all), or all but the first `skip` when given (SoulX-FlashTalk drops
        them from every chunk, the first too)."""
        if skip is None:
            skip = 0 if chunk.is_first else num_motion_frames
        new_frames = video[:, :, skip:]
        new_frames = new_frames[:, :, : self.plan.num_frames - self.frames_done]
        self.frames_done += new_frames.shape[2]
        frames = None
        if self.live is not None:  # the live segment first: it is what a viewer waits for
            frames = postprocess(new_frames, output_type="np")[0]
            self.write_live(frames)
        if self.writer is not None:
            self.writer.write(postprocess(new_frames, output_type="np")[0] if frames is None else frames)
            release_host_memory()  # this chunk's temporaries go back to the OS: flat RSS in length
        else:
            self.frames.append(new_frames)

    def write_live(self, frames) -> None:
        """Appends a chunk to the live stream; a stream that fails (ffmpeg, a full disk) is removed with a warning
        and the video goes on without it: the mp4 is what the call was asked for."""
        try:
            self.live.write(frames)
        except Exception as err:  # noqa: BLE001 - said, and the stream dropped
            logger.warning(f"the live stream in {self.live.folder} stopped and was removed ({err}); the video goes on")
            self.live.abort()
            self.live = None

    def result(self):
        """`(video, audio)`: the frames `[1, 3, F, H, W]` in [-1, 1] (None when written to a file), or the latents
        `[1, 16, T, h, w]` for "latent" (the latent frames that cover the kept frames); the audio trimmed to the
        frames made."""
        audio = self.audio
        if audio is not None and self.frames_done and self.frames_done < self.plan.num_frames:
            audio = audio[: int(round(self.frames_done / self.fps * TARGET_SAMPLE_RATE))]
        if self.output_type == "latent":
            latents = torch.cat(self.latents, dim=2)
            return latents[:, :, : 1 + math.ceil((self.plan.num_frames - 1) / self.vae_scale)], audio
        if self.writer is not None:
            return None, audio
        return torch.cat(self.frames, dim=2), audio
