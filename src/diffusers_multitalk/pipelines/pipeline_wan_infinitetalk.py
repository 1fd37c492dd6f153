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

from .._diffusers_compat import resolve_dtype
from .chunking import Chunk, ChunkConditioning, ChunkedAudio, ChunkedVideo
from .image_processing import closest_bucket, resize_and_center_crop, resolution_buckets
from .pipeline_output import WanMultiTalkPipelineOutput
from .pipeline_wan_audio_base import FPS, WanAudioPipelineBase, audio_entries
from .video_input import SourceVideo, open_source_video


logger = logging.get_logger(__name__)

# InfiniteTalk's size names use MultiTalk's bucket tables (ASPECT_RATIO_627 / ASPECT_RATIO_960) and shifts.
INFINITETALK_RESOLUTIONS = {"infinitetalk-480": "multitalk-480", "infinitetalk-720": "multitalk-720"}

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_multitalk import WanInfiniteTalkPipeline

        >>> # The original releases as users download them (the Wan base, InfiniteTalk's single/ adapter, wav2vec2)
        >>> pipe = WanInfiniteTalkPipeline.from_pretrained("MeiGen-AI/InfiniteTalk", dtype=torch.bfloat16)
        >>> pipe.to("cuda" if torch.cuda.is_available() else "cpu")

        >>> output = pipe(
        ...     video="examples/assets/source_clip.mp4",
        ...     audio="examples/assets/single.wav",
        ...     prompt="A person talks to the camera.",
        ...     guidance_scale=5.0,
        ...     audio_guidance_scale=4.0,
        ...     output_path="dubbed.mp4",
        ... )
        >>> output.video_path
        'dubbed.mp4'
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


class WanInfiniteTalkPipeline(WanAudioPipelineBase):
    r"""
    InfiniteTalk (MeiGen-AI/InfiniteTalk): dubs a video, or animates an image, for as long as the audio lasts.

    The components are [`WanAudioPipelineBase`]'s (InfiniteTalk's DiT has MultiTalk's architecture and key names).
    What differs from [`WanMultiTalkPipeline`] is the conditioning of each chunk: the condition image is the source
    video's frame at the chunk's start time (image-to-video: the image), it alone is marked known in the VAE condition,
    CLIP sees it, and the chunk's leading latents are the clean latents of that image (first chunk) or of the last
    `motion_frames` generated frames (later chunks), pasted back before every forward pass and after every step.
    """

    @classmethod
    def from_original(
        cls,
        wan_dir,
        infinitetalk_file=None,
        wav2vec_dir=None,
        dtype: torch.dtype | None = None,
        dit_path=None,
        lora_path=None,
        lora_scale: float = 1.0,
        quant: str | None = None,
        quant_path=None,
        torch_dtype: torch.dtype | None = None,
    ) -> WanInfiniteTalkPipeline:
        """Builds the pipeline from the folders and files as users download them.

        Args:
            wan_dir: `Wan2.1-I2V-14B-480P/` (DiT shards, umT5, CLIP, VAE, `google/umt5-xxl/`).
            infinitetalk_file: `InfiniteTalk/single/infinitetalk.safetensors` (one person) or
                `multi/infinitetalk.safetensors` (several), the reference's `--infinitetalk_dir`; or the
                `InfiniteTalk/` folder (then `single/`). Not needed with `dit_path` or `quant_path`.
            wav2vec_dir: `chinese-wav2vec2-base/`.
            dtype: dtype of the DiT, text and image encoders (the VAE and wav2vec2 stay float32). `torch_dtype` is its
                deprecated name.
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

        torch_dtype = resolve_dtype(dtype, torch_dtype)
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

    def prepare_source(self, image, video, video_fps, resolution, height, width, allow_upscale, num_persons, bbox):
        """Opens the source and sizes it: an [`InfiniteTalkSource`] (close its `video` when done)."""
        video_source = self.open_source(image, video, video_fps)
        try:
            height, width = self.check_source_size(
                video_source, video is not None, resolution, height, width, allow_upscale
            )
        except BaseException:
            video_source.close()
            raise
        first_frame = self.prepare_source_frame(video_source.first_frame, height, width)
        if video is not None and num_persons > 1 and bbox is None:
            logger.warning(
                f"{num_persons} persons on a video without `bbox`: each is taken to stand in an equal vertical "
                "strip of the first frame (the reference's default); pass `bbox` (one [top, left, bottom, right] "
                "box per person, in the first frame's pixels) when they stand elsewhere."
            )
        return InfiniteTalkSource(video_source, height, width, first_frame)

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
        bbox: Sequence[Sequence[float]] | None = None,
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
        guidance_scale: float = 5.0,
        audio_guidance_scale: float = 4.0,
        num_videos_per_prompt: int = 1,
        use_apg: bool = False,
        apg_momentum: float = -0.75,
        apg_norm_threshold: float = 55.0,
        color_correction_strength: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int = 512,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - diffusers' signature
        attention_kwargs: dict[str, Any] | None = None,
        dialogue: str | None = None,
        dialogue_voices: Sequence[Any] | None = None,
        tts_engine: str | Any | None = None,
        normalize_loudness: bool = True,
        output_path: str | os.PathLike | None = None,
        live_dir: str | os.PathLike | None = None,
        text_guidance_scale: float | None = None,
    ):
        r"""
        Dubs `video` with new audio (video-to-video), or animates `image` (image-to-video), for as long as the audio.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or `str`, *optional*):
                A still image to animate (or its path). Give `image` or `video`.
            audio (`list` or a single entry, *optional*):
                One entry per person, as for [`WanMultiTalkPipeline`]: paths, `(waveform, sampling_rate)` tuples,
                dicts, precomputed wav2vec2 embeddings, or None for a silent listener.
            prompt (`str`, *optional*) / negative_prompt (`str`, *optional*):
                The prompt, and the prompt not to guide the video (defaults to the reference's).
            video (`str`, `np.ndarray` or `list`, *optional*):
                The video to dub: a path (any container/codec ffmpeg decodes; decoded as a stream), an array
                `[frames, H, W, 3]` (uint8 or floats in [0, 1]) or a list of images. Each chunk is conditioned on the
                source frame on screen at the chunk's start time (a 24 or 30 fps source stays in step with the 25 fps
                output); when the audio outlasts the video its last frame is held (a warning says so). Its first frame
                picks the size bucket and places the persons. Its own sound is not used: the output carries `audio`.
            video_fps (`float`, *optional*):
                The frame rate of an array or list `video` (25); files report their own.
            audio_type (`str`, *optional*, defaults to `"add"`) / bbox (`list[list[float]]`, *optional*) /
            face_scale (`float`, *optional*, defaults to 0.05):
                As for [`WanMultiTalkPipeline`]; boxes are in the first frame's pixels. Without boxes two persons get
                the left/right halves of the frame (the reference's default), for a video too.
            resolution (`str`, *optional*, defaults to `"infinitetalk-480"`):
                `"infinitetalk-480"` or `"infinitetalk-720"` (MultiTalk's bucket tables; `"multitalk-*"` too).
            height (`int`, *optional*) / width (`int`, *optional*) / allow_upscale (`bool`, *optional*, defaults to
            `False`):
                As for [`WanMultiTalkPipeline`].
            mode (`str`, *optional*):
                None or `"auto"`: the whole audio, one clip when it fits in `num_frames`, else streaming;
                `"streaming"`; or `"clip"` (one chunk of `num_frames`; longer audio is cut, with a warning). Audio
                shorter than a chunk gives one chunk of the shortest 4n+1 length covering it.
            num_frames (`int`, *optional*, defaults to 81):
                Frames per chunk, 4n+1.
            motion_frames (`int`, *optional*, defaults to 9):
                The generated frames each later chunk continues from (InfiniteTalk's `--motion_frame`).
            max_frames (`int`, *optional*):
                A cap on the video's length in frames (the reference's `--max_frame_num`); a warning says how much
                audio it cuts.
            num_inference_steps (`int`, *optional*, defaults to 40) / shift (`float`, *optional*) / guidance_scale
            (`float`, *optional*, defaults to 5.0) / audio_guidance_scale (`float`, *optional*, defaults to 4.0) /
            num_videos_per_prompt (`int`, *optional*, defaults to 1) / use_apg / apg_momentum / apg_norm_threshold:
                As for [`WanMultiTalkPipeline`] (InfiniteTalk uses shift 7 at 480P and 11 at 720P; the scheduler's own
                shift when none is given).
            color_correction_strength (`float`, *optional*, defaults to 1.0):
                LAB colour matching of every chunk to the source's first frame (0 disables).
            generator / latents / prompt_embeds / negative_prompt_embeds / max_sequence_length / output_type /
            return_dict / callback_on_step_end / callback_on_step_end_tensor_inputs / attention_kwargs / dialogue /
            dialogue_voices / tts_engine / normalize_loudness / text_guidance_scale:
                As for [`WanMultiTalkPipeline`].
            output_path (`str` or `os.PathLike`, *optional*):
                Write the dubbed video with the new audio to this mp4 as each chunk is decoded (flat memory); `frames`
                is then None and `video_path` names the file.
            live_dir (`str` or `os.PathLike`, *optional*):
                As for [`WanMultiTalkPipeline`]: a live HLS stream of the chunks as they are decoded.

        Examples:

        Returns:
            [`WanMultiTalkPipelineOutput`] or `tuple`: the frames (as long as the audio, or `max_frames`) and the mixed
            audio; with `return_dict=False` the tuple `(frames, audio)`.
        """
        guidance_scale = self.resolve_guidance_scale(guidance_scale, text_guidance_scale)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. Check inputs. Raise error if not correct
        self.check_source_arguments(image, video)
        self.check_inputs(
            audio, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, audio_type=audio_type, bbox=bbox,
            height=height, width=width, mode=mode, num_frames=num_frames, motion_frames=motion_frames,
            max_frames=max_frames, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            audio_guidance_scale=audio_guidance_scale, num_videos_per_prompt=num_videos_per_prompt,
            generator=generator, latents=latents, output_type=output_type, output_path=output_path,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, dialogue=dialogue,
            dialogue_voices=dialogue_voices, live_dir=live_dir,
        )  # fmt: skip
        if dialogue is not None:
            audio, audio_type, normalize_loudness = self.dialogue_audio(dialogue, dialogue_voices, tts_engine)
        self.start_call(
            guidance_scale, audio_guidance_scale, attention_kwargs, use_apg, apg_momentum, apg_norm_threshold
        )
        device = self._execution_device

        source = None
        try:
            # 2. Open the source (the video to dub, or the image): the bucket of its first frame
            source = self.prepare_source(
                image, video, video_fps, resolution, height, width, allow_upscale, len(audio_entries(audio)), bbox
            )
            pixel_size = (source.height, source.width)
            color_reference = source.first_frame.clone() if color_correction_strength > 0 else None

            # 3. Where each person stands (boxes checked before any encoder runs), then encode the audio
            person_masks = self.prepare_person_masks(
                len(audio_entries(audio)), bbox, face_scale, source.video.size, pixel_size, device
            )
            audio_embeds, mixed_audio = self.encode_audio(
                audio, audio_type, device, normalize_loudness=normalize_loudness
            )

            # 4. Encode input prompt
            prompt_embeds, negative_prompt_embeds = self.encode_prompt(
                prompt, negative_prompt, self.do_text_guidance, 1, prompt_embeds, negative_prompt_embeds,
                max_sequence_length, device, self.transformer.dtype,
            )  # fmt: skip

            # 5. Plan the chunks and prepare timesteps
            plan = self.plan_video(min(len(e) for e in audio_embeds), num_frames, motion_frames, max_frames, mode)
            source.video.warn_if_outlasted(plan.num_frames / FPS)  # said once, before the chunks
            timesteps = self.set_chunk_timesteps(num_inference_steps, shift, device)
            shape = self.latent_shape(plan, pixel_size)

            # 6. Denoising loop: chunk after chunk, each continuing from the last frames of the one before (the loop
            # of WanMultiTalkPipeline.__call__, repeated so that each pipeline's __call__ reads whole, as in diffusers)
            videos, audio_out = [], None
            with self.progress_bar(total=num_videos_per_prompt * plan.num_chunks * len(timesteps)) as progress_bar:
                for take in range(num_videos_per_prompt):
                    take_generator = generator[take] if isinstance(generator, list) else generator
                    take_latents = None if latents is None else latents[take : take + 1]
                    chunked_audio = ChunkedAudio(audio_embeds, plan, motion_frames)
                    previous_video = None
                    with ChunkedVideo(
                        plan, mixed_audio, output_type, output_path, FPS, self.vae_scale_factor_temporal, live_dir
                    ) as video_out:
                        for chunk in chunked_audio:
                            if plan.num_chunks > 1:
                                progress_bar.set_description(f"chunk {chunk.index + 1}/{plan.num_chunks}")
                            chunk_latents = self.prepare_latents(
                                shape, take_generator, device, take_latents if chunk.is_first else None
                            )
                            conditioning = self.prepare_chunk_conditioning(
                                source, chunk, previous_video, plan.chunk_frames, motion_frames, device
                            )
                            timesteps = self.set_chunk_timesteps(num_inference_steps, shift, device)
                            chunk_latents = self.denoise_chunk(
                                chunk_latents, conditioning, chunk, timesteps,
                                chunked_audio.windows(chunk, device, self.transformer.dtype), prompt_embeds,
                                negative_prompt_embeds, person_masks, take_generator, progress_bar,
                                callback_on_step_end, callback_on_step_end_tensor_inputs,
                            )  # fmt: skip
                            previous_video = self.finish_chunk(
                                chunk_latents,
                                chunk,
                                conditioning,
                                video_out,
                                color_reference,
                                color_correction_strength,
                            )
                            if self.interrupt:  # the video ends with this chunk
                                break
                    video, audio_out = video_out.result()
                    videos.append(video)
        finally:
            self.end_call()
            if source is not None:
                source.video.close()

        # 7. Post-process
        frames = self.postprocess(videos, output_type)
        if not return_dict:
            return (frames, audio_out)
        return WanMultiTalkPipelineOutput(
            frames=frames, audio=audio_out, video_path=output_path and os.fspath(output_path)
        )

    def prepare_chunk_conditioning(
        self, source: InfiniteTalkSource, chunk: Chunk, previous_video, num_frames, motion_frames, device
    ) -> ChunkConditioning:
        """InfiniteTalk's rule for a chunk: the source frame on screen at the chunk's start time (the image, for
        image-to-video) is the condition image: CLIP sees it and it alone is marked known in the VAE condition. The
        motion latents are the clean latents of that frame (first chunk) or of the last `motion_frames` generated
        frames (later chunks)."""
        if chunk.is_first:
            cond_image = source.first_frame
        else:
            frame = source.video.frame_at(chunk.audio_start / FPS)
            cond_image = self.prepare_source_frame(frame, source.height, source.width)
        image_embeds = self.encode_image(cond_image, device)
        condition, _ = self.prepare_condition(cond_image, num_frames, 1, device)
        if chunk.is_first:
            motion_pixels, num_motion = cond_image, 1
        else:
            motion_pixels, num_motion = previous_video[:, :, -motion_frames:], motion_frames
        return ChunkConditioning(image_embeds, condition, self.encode_frames(motion_pixels, device), num_motion)

    def pin_motion_latents(self, latents: torch.Tensor, motion_latents: torch.Tensor) -> torch.Tensor:
        """InfiniteTalk keeps the chunk's leading latents at the clean motion latents before every forward pass and
        after every step (over the re-noised ones, whose noise is still drawn: the reference's noise order)."""
        latents[:, :, : motion_latents.shape[2]] = motion_latents
        return latents
