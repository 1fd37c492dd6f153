"""WanInfiniteTalkPipeline: audio-driven dubbing of a video (or animation of an image) as InfiniteTalk does it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import logging, replace_example_docstring

from ..utils.defaults import DEFAULT_SHIFT
from .chunk_loop import ChunkConditioning
from .image_processing import closest_bucket, resize_and_center_crop, resolution_buckets
from .pipeline_wan_multitalk import (
    FPS,
    WanMultiTalkPipeline,
    WanMultiTalkPipelineOutput,
    _audio_entries,
    _dialogue_audio,
)
from .video_input import SourceVideo, open_source_video


logger = logging.get_logger(__name__)

# InfiniteTalk's size names use MultiTalk's bucket tables (ASPECT_RATIO_627 / ASPECT_RATIO_960) and shifts.
INFINITETALK_RESOLUTIONS = {"infinitetalk-480": "multitalk-480", "infinitetalk-720": "multitalk-720"}

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_multitalk import WanInfiniteTalkPipeline, export_to_video_with_audio

        >>> pipe = WanInfiniteTalkPipeline.from_original(
        ...     "weights/Wan2.1-I2V-14B-480P", "weights/InfiniteTalk/single/infinitetalk.safetensors",
        ...     "weights/chinese-wav2vec2-base", torch_dtype=torch.bfloat16,
        ... ).to("cuda")
        >>> out = pipe(video="interview.mp4", audio="new_voice.wav", prompt="A man talks to the camera.")
        >>> export_to_video_with_audio(out.frames[0], out.audio, "dubbed.mp4", fps=25)
        ```
"""


def bucket_resolution(resolution: str | int) -> str | int:
    """The MultiTalk bucket table name an InfiniteTalk size name (`infinitetalk-480`, `infinitetalk-720`) uses."""
    return INFINITETALK_RESOLUTIONS.get(str(resolution).strip().lower(), resolution)


@dataclass
class InfiniteTalkSource:
    """What InfiniteTalk's chunks are conditioned on: the source video (or still image), the output size and the
    first frame prepared (`[1, 3, 1, H, W]` in [-1, 1])."""

    video: SourceVideo
    height: int
    width: int
    first_frame: torch.Tensor


class WanInfiniteTalkPipeline(WanMultiTalkPipeline):
    r"""
    InfiniteTalk (MeiGen-AI/InfiniteTalk): dubs a video, or animates an image, for as long as the audio lasts.

    The components are [`WanMultiTalkPipeline`]'s (InfiniteTalk's DiT has MultiTalk's architecture and key names).
    What differs is the conditioning of each chunk: the condition image is the source video's frame at the chunk's
    start time (image-to-video: the image), it alone is marked known in the VAE condition, CLIP sees it, and the
    chunk's leading latents are the clean latents of that image (first chunk) or of the last `motion_frames`
    generated frames (later chunks), pasted back before every forward pass and after every step.
    """

    # ------------------------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def from_original(
        cls,
        wan_dir,
        infinitetalk_file=None,
        wav2vec_dir=None,
        torch_dtype: torch.dtype | None = None,
        dit_path=None,
        lora_path=None,
        lora_scale: float = 1.0,
        quant: str | None = None,
        quant_path=None,
    ) -> WanInfiniteTalkPipeline:
        """Builds the pipeline from the folders and files as users download them.

        Args:
            wan_dir: `Wan2.1-I2V-14B-480P/` (DiT shards, umT5, CLIP, VAE, `google/umt5-xxl/`).
            infinitetalk_file: `InfiniteTalk/single/infinitetalk.safetensors` (one person) or
                `multi/infinitetalk.safetensors` (several), the reference's `--infinitetalk_dir`; or the
                `InfiniteTalk/` folder (then `single/`). Not needed with `dit_path` or `quant_path`.
            wav2vec_dir: `chinese-wav2vec2-base/`.
            torch_dtype: dtype of the DiT, text and image encoders (the VAE and wav2vec2 stay float32).
            dit_path: a full DiT checkpoint saved with `torch.save({"state_dict": ...})` (the reference's
                `--dit_path`), used instead of the Wan shards + adapter file.
            lora_path / lora_scale: an optional LoRA loaded into the transformer.
            quant: "int8" or "fp8" (needs optimum-quanto). Without `quant_path` the float weights are quantised on
                the fly (after fusing `lora_path`).
            quant_path: the quantised DiT, InfiniteTalk's `quant_models/infinitetalk_single_<quant>.safetensors` (the
                reference's `--quant_dir`, a file; its map `infinitetalk_single_<quant>.json` beside it), or the
                `InfiniteTalk/` folder holding it. The umT5 is quantised too when `t5_<quant>.safetensors` and
                `t5_map_<quant>.json` lie beside the file, where the reference reads them; else it loads in float.
        """
        from ..loaders.infinitetalk import load_infinitetalk_components
        from .original_loading import assemble_original_pipeline

        models, needs_quantize = load_infinitetalk_components(
            wan_dir,
            infinitetalk_file,
            wav2vec_dir,
            torch_dtype=torch_dtype,
            dit_path=dit_path,
            quant=quant,
            quant_path=quant_path,
            lora_path=lora_path,
        )
        return assemble_original_pipeline(
            cls,
            wan_dir,
            wav2vec_dir,
            models["transformer"],
            models["text_encoder"],
            torch_dtype=torch_dtype,
            lora_path=lora_path,
            lora_scale=lora_scale,
            adapter_name="infinitetalk_lora",
            quantize=quant if needs_quantize else None,
        )

    # ------------------------------------------------------------------------------------------------------------
    # Inputs
    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def check_source_arguments(image, video) -> None:
        if (image is None) == (video is None):
            raise ValueError(
                "Give `video` (the video to dub: a path, an array [frames, H, W, 3] or a list of images) or `image` "
                "(a still image to animate), exactly one of them."
            )

    def open_source(self, image, video, video_fps) -> SourceVideo:
        """The condition source: the video to dub, or the still image (a one-frame source, held every chunk)."""
        self.check_source_arguments(image, video)
        if video is not None:
            return open_source_video(video, fps=video_fps)
        source = open_source_video([image], fps=FPS)
        source.still = True  # the image conditions every chunk
        return source

    def prepare_source_frame(self, frame: np.ndarray, height: int, width: int) -> torch.Tensor:
        """A source frame resized/centre-cropped to the output size: `[1, 3, 1, H, W]` in [-1, 1]."""
        return resize_and_center_crop(PIL.Image.fromarray(frame), height, width)[None, :, None]

    def check_source_size(self, source: SourceVideo, is_video: bool, resolution, height, width, allow_upscale):
        """The output size: the bucket nearest the source's first frame (or `height`/`width`); refuses upscaling
        unless allowed, as for images."""
        src_h, src_w = source.size
        if height is None:
            height, width = closest_bucket(src_h, src_w, resolution_buckets(bucket_resolution(resolution)))
        if not allow_upscale and (src_h < height or src_w < width):
            what = "video" if is_video else "image"
            raise ValueError(
                f"The `{what}` is {src_w}x{src_h} (w x h), smaller than the {width}x{height} target "
                f"({'bucket of ' + str(resolution) if resolution else 'size asked'}). Give a larger {what}, a smaller "
                "`resolution`/`height`/`width`, or pass `allow_upscale=True` to upscale it as the original does."
            )
        return height, width

    def encode_motion_frames(self, frames: torch.Tensor, device) -> torch.Tensor:
        """Normalised VAE latents of pixel frames `[1, 3, F, H, W]` (the clean motion latents of a chunk)."""
        with torch.no_grad():
            latent = self.vae.encode(frames.to(device=device, dtype=self.vae.dtype)).latent_dist.mode()
        mean, std = self._vae_stats(device)
        return ((latent.float() - mean) / std).float()

    # ------------------------------------------------------------------------------------------------------------
    # Generation
    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image: PIL.Image.Image | np.ndarray | torch.Tensor | str | None = None,
        audio: Sequence[Any] | Any = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        video: str | np.ndarray | Sequence[Any] | None = None,
        video_fps: float | None = None,
        audio_type: str = "add",
        bbox: Sequence[Sequence[float]] | dict | None = None,
        face_scale: float = 0.05,
        resolution: str = "infinitetalk-480",
        height: int | None = None,
        width: int | None = None,
        allow_upscale: bool = False,
        mode: str | None = None,
        num_frames: int = 81,
        motion_frames: int = 9,
        max_frames: int | None = None,
        num_inference_steps: int = 40,
        shift: float | None = None,
        text_guidance_scale: float = 5.0,
        audio_guidance_scale: float = 4.0,
        use_apg: bool = False,
        apg_momentum: float = -0.75,
        apg_norm_threshold: float = 55.0,
        color_correction_strength: float = 1.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int = 512,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        dialogue: str | None = None,
        dialogue_voices: Sequence[Any] | None = None,
        tts_engine: str | Any | None = None,
        normalize_loudness: bool = True,
        output_path: str | os.PathLike | None = None,
    ):
        r"""
        Dubs `video` with new audio (video-to-video), or animates `image` (image-to-video).

        Args:
            image: a still image to animate (PIL, array, tensor or path); give it or `video`.
            audio: one entry per person, as for [`WanMultiTalkPipeline`] (paths, `(waveform, rate)` tuples, dicts,
                precomputed wav2vec2 embeddings, None for a silent listener).
            prompt / negative_prompt: text; the negative prompt defaults to the reference's.
            video: the video to dub: a path (any container/codec ffmpeg decodes, AV1 included; decoded as a
                stream), an array `[frames, H, W, 3]` (uint8 or floats in [0, 1]) or a list of images. Each chunk is
                conditioned on the source frame on screen at the chunk's start time (a 24 or 30 fps source stays in
                step with the 25 fps output); when the audio outlasts the video its last frame is held (a warning
                says so). Its first frame picks the size bucket and places the persons; later frames of another size
                are resized/cropped to that size. Its own sound is not used: the output carries `audio`.
            video_fps: the frame rate of an array/list `video` (25); files report their own.
            audio_type, bbox, face_scale: as for [`WanMultiTalkPipeline`]; boxes are in the first frame's pixels.
                Without boxes two persons get the left/right halves of the frame (the reference's default), for a
                video too: pass `bbox` when they stand elsewhere.
            resolution: "infinitetalk-480" or "infinitetalk-720" (MultiTalk's bucket tables; "multitalk-*" too).
            height / width / allow_upscale: as for [`WanMultiTalkPipeline`].
            mode: None or "auto" (the default: the whole audio, one clip when it fits in `num_frames`, else
                streaming), "streaming" (chunks overlapping by `motion_frames` until the audio ends) or "clip" (one
                chunk of `num_frames`; longer audio is cut, with a warning). Audio shorter than a chunk gives one chunk
                of the shortest 4n+1 length covering it (the reference refuses such audio).
            num_frames: frames per chunk, 4n+1 (81).
            motion_frames: generated frames each later chunk continues from (InfiniteTalk's `--motion_frame`, 9).
            max_frames: a cap on the video's length in frames (None: no cap; the reference's `--max_frame_num`,
                1000 by default there); a warning says how much audio it cuts.
            num_inference_steps, shift, text_guidance_scale, audio_guidance_scale, use_apg, apg_momentum,
            apg_norm_threshold: as for [`WanMultiTalkPipeline`] (shift 7 at 480P, 11 at 720P).
            color_correction_strength: LAB colour matching of every chunk to the source's first frame (0 disables).
            generator, latents, prompt_embeds, negative_prompt_embeds, max_sequence_length, output_type,
            return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs, attention_kwargs, dialogue,
            dialogue_voices, tts_engine, normalize_loudness: as for [`WanMultiTalkPipeline`].
            output_path: write the dubbed video with the new audio (the source's own sound is not carried over) to
                this mp4 as each chunk is decoded, so memory stays flat however long the video is; `frames` is then
                None and `video_path` names the file.

        Returns:
            [`WanMultiTalkPipelineOutput`]: the frames (as long as the audio, or `max_frames`) and the mixed audio.

        Examples:
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        self.check_source_arguments(image, video)
        self.check_inputs(
            image if image is not None else video,
            audio,
            prompt,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            audio_type,
            bbox,
            height,
            width,
            mode,
            num_frames,
            motion_frames,
            max_frames,
            num_inference_steps,
            output_type,
            callback_on_step_end_tensor_inputs,
            dialogue,
            dialogue_voices,
            text_guidance_scale,
            audio_guidance_scale,
            output_path,
        )
        video_source = self.open_source(image, video, video_fps)
        try:
            if dialogue is not None:
                audio, audio_type, normalize_loudness = _dialogue_audio(dialogue, dialogue_voices, tts_engine)
            shift = DEFAULT_SHIFT.get(str(resolution), 7.0) if shift is None else shift
            self._interrupt = False
            self._current_timestep = None

            # 1. Source, persons and audio (cheap checks first, then the audio encoder)
            height, width = self.check_source_size(
                video_source, video is not None, resolution, height, width, allow_upscale
            )
            first_frame = self.prepare_source_frame(video_source.first_frame, height, width)
            source = InfiniteTalkSource(video_source, height, width, first_frame)
            color_reference = first_frame.clone() if color_correction_strength > 0 else None
            num_persons = len(_audio_entries(audio))
            if video is not None and num_persons > 1 and bbox is None:
                logger.warning(
                    f"{num_persons} persons on a video without `bbox`: each is taken to stand in an equal vertical "
                    "strip of the first frame (the reference's default); pass `bbox` (one [top, left, bottom, right] "
                    "box per person, in the first frame's pixels) when they stand elsewhere."
                )
            frames, audio_out, video_path = self.generate_chunks(
                source, video_source.size, (height, width), num_persons, color_reference,
                audio=audio, audio_type=audio_type, normalize_loudness=normalize_loudness, bbox=bbox,
                face_scale=face_scale, mode=mode, num_frames=num_frames, motion_frames=motion_frames,
                max_frames=max_frames, prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds, max_sequence_length=max_sequence_length,
                num_inference_steps=num_inference_steps, shift=shift, text_guidance_scale=text_guidance_scale,
                audio_guidance_scale=audio_guidance_scale, use_apg=use_apg, apg_momentum=apg_momentum,
                apg_norm_threshold=apg_norm_threshold, color_correction_strength=color_correction_strength,
                output_type=output_type, callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, attention_kwargs=attention_kwargs,
                generator=generator, latents=latents, output_path=output_path,
            )  # fmt: skip
        finally:
            video_source.close()
        if not return_dict:
            return (frames, audio_out)
        return WanMultiTalkPipelineOutput(frames=frames, audio=audio_out, video_path=video_path)

    def prepare_chunk_conditioning(
        self, source: InfiniteTalkSource, chunk_index, audio_start, previous_video, num_frames, motion_frames, device
    ) -> ChunkConditioning:
        """InfiniteTalk's rule for a chunk: the source frame on screen at the chunk's start time (the image, for
        image-to-video) is the condition image: CLIP sees it and it alone is marked known in the VAE condition. The
        motion latents are the clean latents of that frame (first chunk) or of the last `motion_frames` generated
        frames (later chunks)."""
        if chunk_index == 0:
            cond_image = source.first_frame
        else:
            frame = source.video.frame_at(audio_start / FPS)
            cond_image = self.prepare_source_frame(frame, source.height, source.width)
        image_embeds = self.encode_image(cond_image, device)
        condition, _ = self.prepare_condition(cond_image, num_frames, 1, device)
        if chunk_index == 0:
            motion_pixels, num_motion = cond_image, 1
        else:
            motion_pixels, num_motion = previous_video[:, :, -motion_frames:], motion_frames
        return ChunkConditioning(image_embeds, condition, self.encode_motion_frames(motion_pixels, device), num_motion)

    def pin_motion_latents(self, latents: torch.Tensor, motion_latents: torch.Tensor) -> torch.Tensor:
        """InfiniteTalk keeps the chunk's leading latents at the clean motion latents before every forward pass and
        after every step (over the re-noised ones, whose noise is still drawn: the reference's noise order)."""
        latents[:, :, : motion_latents.shape[2]] = motion_latents
        return latents
