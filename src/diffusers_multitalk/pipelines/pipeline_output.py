"""The output class of the audio-driven Wan pipelines (every subclass of `WanAudioPipelineBase`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from diffusers.utils import BaseOutput

from ..audio.processing import TARGET_SAMPLE_RATE


@dataclass
class WanMultiTalkPipelineOutput(BaseOutput):
    r"""
    Output of the audio-driven Wan pipelines ([`WanMultiTalkPipeline`] and its siblings on [`WanAudioPipelineBase`]).

    Args:
        frames (`np.ndarray`, `torch.Tensor` or `list[list[PIL.Image.Image]]`):
            The videos, one per `num_videos_per_prompt`: `[videos, frames, height, width, 3]` in [0, 1] ("np"),
            `[videos, frames, 3, height, width]` ("pt"), lists of PIL images ("pil"), or for `output_type="latent"`
            one tensor `[videos, 16, T, h, w]`: the chunks' latents joined along time without their overlap (the
            leading motion latents of every chunk after the first are dropped), cut to the latent frames that cover
            the kept video frames. None when the video was written to `output_path`.
        audio (`np.ndarray`, *optional*):
            The mixed 16 kHz audio track the video carries, trimmed to the video's length (None when only precomputed
            embeddings were given).
        sample_rate (`int`, defaults to 16000): sample rate of `audio`.
        fps (`int`, defaults to 25): frame rate of `frames`.
        video_path (`str`, *optional*): the mp4 written when `output_path` was given.
    """

    frames: Any
    audio: np.ndarray | None
    sample_rate: int = TARGET_SAMPLE_RATE
    fps: int = 25
    video_path: str | None = None
