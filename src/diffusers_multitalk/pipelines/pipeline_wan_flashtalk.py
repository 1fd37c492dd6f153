"""WanFlashTalkPipeline: real-time audio-driven animation of an image as SoulX-FlashTalk does it (4 steps, no CFG)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import logging, replace_example_docstring

from .._diffusers_compat import reset_stateful_cache, resolve_dtype
from ..audio.encoder import audio_windows, encode_speech
from ..audio.processing import TARGET_SAMPLE_RATE, loudness_normalize
from .chunking import Chunk, ChunkConditioning, ChunkedVideo, VideoPlan
from .color_correction import match_color_lab_flashtalk
from .image_processing import closest_bucket, load_image_any, resize_and_center_crop, resolution_buckets
from .pipeline_output import WanMultiTalkPipelineOutput
from .pipeline_wan_audio_base import FPS, WanAudioPipelineBase, audio_entries, check_motion_frames
from .sampling import make_flashtalk_scheduler, set_chunk_timesteps, set_flashtalk_timesteps


__all__ = ["WanFlashTalkPipeline"]

logger = logging.get_logger(__name__)

# The reference's default prompt (generate_video.py --input_prompt).
DEFAULT_PROMPT = "A person is talking. Only the foreground characters are moving, the background remains static."

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_multitalk import WanFlashTalkPipeline

        >>> # SoulX-FlashTalk-14B as downloaded (the merged DiT, Wan's T5/CLIP/VAE), chinese-wav2vec2-base beside it
        >>> pipe = WanFlashTalkPipeline.from_pretrained("weights/SoulX-FlashTalk-14B", dtype=torch.bfloat16)
        >>> pipe.to("cuda" if torch.cuda.is_available() else "cpu")

        >>> output = pipe(
        ...     image="examples/assets/one_person.png",
        ...     audio="examples/assets/single.wav",
        ...     prompt="A person is talking. Only the foreground characters are moving, the background remains static.",
        ...     guidance_scale=1.0,  # the reference's: no classifier-free guidance, one DiT pass per step
        ...     generator=torch.Generator().manual_seed(9999),
        ...     output_path="flashtalk.mp4",
        ... )
        >>> output.video_path
        'flashtalk.mp4'
        ```
"""


@dataclass
class FlashTalkConditioning:
    """What conditions every chunk (SoulX-FlashTalk makes it once): the prepared image `[1, 3, 1, H, W]` in [-1, 1]
    (also the colour reference), its CLIP tokens and the VAE condition (the image as frame 0, then zeros)."""

    image: torch.Tensor
    image_embeds: torch.Tensor
    condition: torch.Tensor


class RollingAudio:
    """SoulX-FlashTalk's streaming audio: chunk k brings `slice_frames` new video frames' worth of speech into a
    `window_seconds` buffer (silence at first); the whole buffer is loudness-normalised and encoded by wav2vec2, and
    the chunk is driven by the buffer's last `chunk_frames` frames (each with its window of 5, clamped inside the
    buffer). The speech is zero-padded to whole slices: the last, partial slice is generated too (and cut)."""

    def __init__(self, track: np.ndarray, chunk_frames: int, slice_frames: int, window_seconds: float, normalize=True):
        self.slice = slice_frames * TARGET_SAMPLE_RATE // FPS
        self.window = int(round(window_seconds * TARGET_SAMPLE_RATE))
        self.chunk_frames, self.normalize = chunk_frames, normalize
        num_slices = max(1, math.ceil(len(track) / self.slice))
        self.padded = np.zeros(self.window + num_slices * self.slice, dtype=np.float64)
        self.padded[self.window : self.window + len(track)] = track

    def samples(self, index: int) -> np.ndarray:
        """The buffer when chunk `index` runs: the `window` samples ending with its slice."""
        end = self.window + (index + 1) * self.slice
        return self.padded[end - self.window : end]

    def windows(self, pipe: WanAudioPipelineBase, index: int, device, dtype) -> torch.Tensor:
        """`[1, 1, chunk_frames, 5, layers, hidden]`: the chunk's audio input."""
        buffer = self.samples(index)
        if self.normalize:
            buffer = loudness_normalize(buffer)
        embedding = encode_speech(pipe.audio_encoder, pipe.audio_feature_extractor, buffer, fps=FPS).float()
        frames = embedding.shape[0]
        return audio_windows(embedding, self.chunk_frames, start=frames - self.chunk_frames)[None, None].to(
            device=device, dtype=dtype
        )


class WanFlashTalkPipeline(WanAudioPipelineBase):
    r"""
    SoulX-FlashTalk (Soul-AILab/SoulX-FlashTalk, "Real-Time Infinite Streaming of Audio-Driven Avatars via
    Self-Correcting Bidirectional Distillation"): InfiniteTalk's DiT distilled to 4 steps without classifier-free
    guidance, animating one person's image for as long as the audio lasts, chunk after chunk as the speech streams in.

    The components are [`WanAudioPipelineBase`]'s (the DiT has InfiniteTalk's architecture and key names); the
    scheduler is [`~diffusers.FlowMatchEulerDiscreteScheduler`] with `stochastic_sampling=True` (each step predicts
    `x0 = x - sigma * v` and re-noises it to the next level with fresh noise), on SoulX-FlashTalk's fixed timesteps
    `[1000, 750, 500, 250]` shifted by 5. Each chunk of 33 frames continues from the last 5 frames of the one before,
    whose clean latents are pasted over its leading latents after every step; the image's CLIP tokens and VAE
    condition are the same for every chunk; the audio is a rolling 8 s wav2vec2 window; the first 5 frames of every
    chunk are dropped (28 new frames per chunk).
    """

    @classmethod
    def from_original(
        cls,
        wan_dir,
        flashtalk_dir=None,
        wav2vec_dir=None,
        dtype: torch.dtype | None = None,
        lora_path=None,
        lora_scale: float = 1.0,
        quant: str | None = None,
        quant_path=None,
        torch_dtype: torch.dtype | None = None,
    ) -> WanFlashTalkPipeline:
        """Builds the pipeline from the folders as SoulX-FlashTalk's README downloads them.

        Args:
            wan_dir: `SoulX-FlashTalk-14B/` (the reference's `--ckpt_dir`: the merged DiT's shards, index and
                `config.json`, with Wan's `models_t5_umt5-xxl-enc-bf16.pth`, CLIP, `Wan2.1_VAE.pth` and
                `google/umt5-xxl/`), or a Wan2.1-I2V-14B folder for those encoders when `flashtalk_dir` is given.
            flashtalk_dir: `SoulX-FlashTalk-14B/` when `wan_dir` is another folder (`--flashtalk_dir`).
            wav2vec_dir: `chinese-wav2vec2-base/`.
            dtype: dtype of the DiT, text and image encoders (the VAE and wav2vec2 stay float32; the release is
                bfloat16). `torch_dtype` is its deprecated name.
            lora_path / lora_scale: an optional LoRA loaded into the transformer.
            quant: "int8" or "fp8" (optimum-quanto), applied to the float weights on the fly (after the LoRA).
            quant_path: not supported (SoulX-FlashTalk ships no quantised files); must be None.
        """
        from ..loaders.flashtalk import load_flashtalk_components
        from .original_loading import assemble_original_pipeline

        if quant_path is not None:
            raise ValueError("SoulX-FlashTalk ships no quantised DiT: drop quant_path (quant= quantises on the fly).")
        if quant is not None:
            from ..loaders.quantized import validate_quant

            validate_quant(quant)
        torch_dtype = resolve_dtype(dtype, torch_dtype)
        flashtalk_dir = Path(flashtalk_dir if flashtalk_dir is not None else wan_dir)
        encoders = Path(wan_dir)
        models = load_flashtalk_components(flashtalk_dir, wav2vec_dir, torch_dtype, wan_dir=encoders)
        return assemble_original_pipeline(
            cls, encoders, wav2vec_dir, models["transformer"], models["text_encoder"], torch_dtype=torch_dtype,
            lora_path=lora_path, lora_scale=lora_scale, adapter_name="flashtalk_lora", quantize=quant,
        )  # fmt: skip

    @staticmethod
    def default_scheduler():
        """SoulX-FlashTalk's sampler: `FlowMatchEulerDiscreteScheduler(stochastic_sampling=True, shift=5)`."""
        return make_flashtalk_scheduler()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """A converted folder or repository as for the other pipelines; SoulX-FlashTalk-14B's folder as downloaded
        (`wav2vec_dir=`, or the `chinese-wav2vec2-base/` folder beside it); or its Hub id,
        `Soul-AILab/SoulX-FlashTalk-14B`, fetched with chinese-wav2vec2-base into the Hugging Face cache (the files
        `multitalk download` fetches; `cache_dir`, `local_files_only`, `revision`, `token`, `force_download` apply as
        in diffusers, HF_HUB_OFFLINE too). The original routes load with `from_original` (`dtype=`)."""
        from ..loaders.flashtalk import FLASHTALK_REPO
        from ..loaders.original_folders import original_folder_kind

        name = pretrained_model_name_or_path
        if isinstance(name, str) and name.strip("/").casefold() == FLASHTALK_REPO.casefold():
            return cls._from_flashtalk_hub(kwargs)
        path = Path(os.fspath(name))
        if path.is_dir() and not (path / "model_index.json").is_file() and original_folder_kind(path) == "flashtalk":
            wav2vec_dir = kwargs.pop("wav2vec_dir", None) or path.parent / "chinese-wav2vec2-base"
            return cls.from_original(path, wav2vec_dir=wav2vec_dir, dtype=cls._original_dtype(path, kwargs))
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def _original_dtype(cls, what, kwargs: dict):
        """`dtype` (or `torch_dtype`) of an original route's keywords; any other keyword is refused."""
        dtype = resolve_dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None))
        if kwargs:
            raise TypeError(
                f"{cls.__name__}.from_pretrained of {what} takes wav2vec_dir and dtype, not {sorted(kwargs)}"
            )
        return dtype

    @classmethod
    def _from_flashtalk_hub(cls, kwargs: dict):
        from ..loaders.flashtalk import FLASHTALK_ALLOW_PATTERNS, FLASHTALK_REPO
        from ..loaders.original_folders import (
            WAV2VEC_ALLOW_PATTERNS,
            WAV2VEC_REPO,
            WAV2VEC_SAFETENSORS_PATTERNS,
            WAV2VEC_SAFETENSORS_REVISION,
        )
        from .release_loading import _HUB_KWARGS, _hub_offline, _snapshot

        hub = {key: kwargs.pop(key) for key in _HUB_KWARGS if kwargs.get(key) is not None}
        revision = hub.pop("revision", None)
        hub.setdefault("local_files_only", _hub_offline())
        folder = _snapshot(FLASHTALK_REPO, list(FLASHTALK_ALLOW_PATTERNS), revision, hub)
        wav2vec_dir = kwargs.pop("wav2vec_dir", None)
        if wav2vec_dir is None:  # the pull request holding model.safetensors carries main's configs too
            patterns = [*WAV2VEC_ALLOW_PATTERNS, *WAV2VEC_SAFETENSORS_PATTERNS]
            wav2vec_dir = _snapshot(WAV2VEC_REPO, patterns, WAV2VEC_SAFETENSORS_REVISION, hub)
        return cls.from_original(folder, wav2vec_dir=wav2vec_dir, dtype=cls._original_dtype(FLASHTALK_REPO, kwargs))

    # ------------------------------------------------------------------------------------------------------------
    # Inputs
    # ------------------------------------------------------------------------------------------------------------
    def check_flashtalk_inputs(self, image, video, audio, dialogue, num_frames, motion_frames, window_seconds):
        if video is not None:
            raise ValueError(
                "SoulX-FlashTalk animates an image: it takes no `video` (its reference conditions every chunk on one "
                "image). Give `image`; to dub a video use WanInfiniteTalkPipeline (--task infinitetalk-14B)."
            )
        if image is None:
            raise ValueError("`image` is required: the person to animate (a path, PIL image or array).")
        persons = self.count_persons(audio, dialogue) if (audio is not None or dialogue is not None) else 1
        if persons != 1:
            what = "one speaker in the dialogue" if dialogue is not None else "one audio track"
            raise ValueError(f"SoulX-FlashTalk animates one person: give {what}, got {persons}.")
        check_motion_frames(motion_frames, num_frames)
        if window_seconds * FPS < num_frames:
            raise ValueError(
                f"`audio_window_seconds` ({window_seconds}) must cover a chunk of {num_frames} frames "
                f"({num_frames / FPS:.2f} s)."
            )

    def prepare_source(self, image, resolution, height, width, allow_upscale) -> torch.Tensor:
        """The image resized and centre-cropped to the size (`resolution`'s bucket, or `height` x `width`):
        `[1, 3, 1, H, W]` in [-1, 1], as the reference prepares it."""
        pil = load_image_any(image)
        if height is None:
            height, width = closest_bucket(pil.height, pil.width, resolution_buckets(resolution))
        if not allow_upscale and (pil.height < height or pil.width < width):
            raise ValueError(
                f"The `image` is {pil.width}x{pil.height} (w x h), smaller than the {width}x{height} target; give a "
                "larger image or pass `allow_upscale=True` (the reference's behaviour) to upscale it."
            )
        return resize_and_center_crop(pil, height, width)[None, :, None]

    def prepare_flashtalk_conditioning(self, image: torch.Tensor, num_frames: int, device) -> FlashTalkConditioning:
        image_embeds = self.encode_image(image, device)
        condition, _ = self.prepare_condition(image, num_frames, 1, device)
        return FlashTalkConditioning(image, image_embeds, condition)

    def load_speech(self, audio, dialogue, dialogue_voices, tts_engine) -> np.ndarray:
        """The speech as the reference reads it (16 kHz mono float32, not loudness-normalised: each rolling window
        is); refused when silent or shorter than one video frame."""
        if dialogue is not None:
            audio, _, _ = self.dialogue_audio(dialogue, dialogue_voices, tts_engine)
        entry = audio_entries(audio)[0]
        if isinstance(entry, torch.Tensor) and entry.ndim == 3:
            raise ValueError("SoulX-FlashTalk encodes its audio per chunk (a rolling window): give the waveform.")
        track = self._load_track(entry, 0, normalize_loudness=False)
        if track is None:
            raise ValueError("The person's audio is None: give the speech to animate.")
        if len(track) * FPS < TARGET_SAMPLE_RATE:
            raise ValueError(f"The audio is shorter than one video frame (1/{FPS} s); give the person's speech.")
        return track

    @staticmethod
    def plan_stream(num_samples, num_frames, motion_frames, max_frames=None, mode=None, warn=True) -> VideoPlan:
        """SoulX-FlashTalk's chunks for `num_samples` of 16 kHz speech: each brings `num_frames - motion_frames`
        new frames; as many as cover the audio (its last, partial slice included: the reference drops it), or one
        (`mode="clip"`), capped at `max_frames`."""
        stride = num_frames - motion_frames
        audio_frames = max(1, num_samples * FPS // TARGET_SAMPLE_RATE)
        limit = audio_frames if max_frames is None else min(max_frames, audio_frames)
        if warn and max_frames is not None and max_frames < audio_frames:
            logger.warning(
                f"max_frames={max_frames} cuts the video at {max_frames / FPS:.2f} s: the last "
                f"{(audio_frames - max_frames) / FPS:.2f} s of the {audio_frames / FPS:.2f} s audio are not used."
            )
        if mode == "clip":
            if warn and limit > stride:
                logger.warning(
                    f"mode='clip' makes one chunk of {stride} new frames ({stride / FPS:.2f} s): the rest of the "
                    f"{limit / FPS:.2f} s audio is dropped; leave the mode unset for the whole audio."
                )
            return VideoPlan(chunk_frames=num_frames, num_chunks=1, num_frames=min(limit, stride))
        return VideoPlan(chunk_frames=num_frames, num_chunks=math.ceil(limit / stride), num_frames=limit)

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
        video: Any = None,
        resolution: str = "flashtalk-448",
        height: int | None = None,
        width: int | None = None,
        allow_upscale: bool = True,
        mode: str | None = None,
        num_frames: int = 33,
        motion_frames: int = 5,
        max_frames: int | None = None,
        num_inference_steps: int = 4,
        shift: float | None = None,
        guidance_scale: float = 1.0,
        audio_guidance_scale: float = 1.0,
        num_videos_per_prompt: int = 1,
        color_correction_strength: float = 1.0,
        audio_window_seconds: float = 8.0,
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
        **ignored: Any,
    ):
        r"""
        Animates `image` with `audio` (one person) for as long as the audio lasts, as SoulX-FlashTalk does.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or `str`):
                The person to animate (or its path): resized and centre-cropped to the output size.
            audio (a path, a `(waveform, sampling_rate)` tuple or a dict; or a list of one):
                The person's speech (any rate, mono or stereo: resampled to 16 kHz mono, as the reference's librosa).
            prompt (`str`, *optional*):
                The prompt; by default the reference's ("A person is talking. Only the foreground characters are
                moving, the background remains static.").
            negative_prompt (`str`, *optional*):
                Used only with text guidance (`guidance_scale` other than 1; the reference has none).
            video:
                Not taken: SoulX-FlashTalk animates an image (use [`WanInfiniteTalkPipeline`] to dub a video).
            resolution (`str`, *optional*, defaults to `"flashtalk-448"`):
                The size table: `"flashtalk-448"` is the reference's only size, 768 x 448 (h x w).
            height (`int`, *optional*) / width (`int`, *optional*):
                Another output size (multiples of 16).
            allow_upscale (`bool`, *optional*, defaults to `True`):
                Upscale an image smaller than the output size (the reference does); False refuses it.
            mode (`str`, *optional*):
                None/`"auto"`/`"streaming"`: the whole audio, chunk after chunk; `"clip"`: one chunk.
            num_frames (`int`, *optional*, defaults to 33) / motion_frames (`int`, *optional*, defaults to 5):
                Frames per chunk (4n+1) and the frames each chunk continues from (4n+1); a chunk adds
                `num_frames - motion_frames` new frames (the reference's frame_num / motion_frames_num).
            max_frames (`int`, *optional*):
                A cap on the video's length in frames (a warning says how much audio it cuts).
            num_inference_steps (`int`, *optional*, defaults to 4):
                Steps per chunk: 4 (timesteps 1000, 750, 500, 250) and 2 (1000, 500) are the distilled schedules;
                other counts space them as MultiTalk does.
            shift (`float`, *optional*):
                The timestep shift (the scheduler's, 5, when None).
            guidance_scale (`float`, *optional*, defaults to 1.0) / audio_guidance_scale (`float`, *optional*,
            defaults to 1.0):
                1 and 1: one DiT pass per step, the reference's (distilled without classifier-free guidance). Other
                values run MultiTalk's guidance (2 or 3 passes), which the model was not trained for.
            num_videos_per_prompt (`int`, *optional*, defaults to 1):
                Videos per call (each from its own noise).
            color_correction_strength (`float`, *optional*, defaults to 1.0):
                SoulX-FlashTalk's LAB colour matching of every chunk to the image (0 disables).
            audio_window_seconds (`float`, *optional*, defaults to 8.0):
                The rolling audio buffer each chunk's wav2vec2 features come from (the reference's
                cached_audio_duration).
            generator / latents / prompt_embeds / negative_prompt_embeds / max_sequence_length / output_type /
            return_dict / callback_on_step_end / callback_on_step_end_tensor_inputs / attention_kwargs / dialogue /
            dialogue_voices / tts_engine / output_path / live_dir:
                As for [`WanMultiTalkPipeline`] (`latents`: the first chunk's noise `[videos, 16, T, h, w]`).
            normalize_loudness (`bool`, *optional*, defaults to `True`):
                Normalise every rolling window to -23 LUFS, as the reference does.
            ignored:
                Settings of the other pipelines that SoulX-FlashTalk has no use for (`audio_type`, `bbox`,
                `face_scale`, `video_fps`, `use_apg`, ...): accepted so that front ends can pass one set of arguments,
                and logged when set.

        Examples:

        Returns:
            [`WanMultiTalkPipelineOutput`] or `tuple`: the frames (as long as the audio, or `max_frames`) and the
            audio; with `return_dict=False` the tuple `(frames, audio)`.
        """
        self.log_ignored(ignored)
        prompt = DEFAULT_PROMPT if prompt is None and prompt_embeds is None else prompt
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. Check inputs. Raise error if not correct
        self.check_flashtalk_inputs(image, video, audio, dialogue, num_frames, motion_frames, audio_window_seconds)
        self.check_inputs(
            audio, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, height=height, width=width,
            mode=mode, num_frames=num_frames, motion_frames=motion_frames, max_frames=max_frames,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            audio_guidance_scale=audio_guidance_scale, num_videos_per_prompt=num_videos_per_prompt,
            generator=generator, latents=latents, output_type=output_type, output_path=output_path,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, dialogue=dialogue,
            dialogue_voices=dialogue_voices, live_dir=live_dir,
        )  # fmt: skip
        self.start_call(guidance_scale, audio_guidance_scale, attention_kwargs, False, 0.0, 0.0)
        device = self._execution_device
        try:
            # 2. Prepare the image (resized and cropped to the output size) and the speech
            source = self.prepare_source(image, resolution, height, width, allow_upscale)
            speech = self.load_speech(audio, dialogue, dialogue_voices, tts_engine)

            # 3. Encode input prompt, and the image (CLIP, VAE condition): once, for every chunk
            prompt_embeds, negative_prompt_embeds = self.encode_prompt(
                prompt, negative_prompt, self.do_text_guidance, 1, prompt_embeds, negative_prompt_embeds,
                max_sequence_length, device, self.transformer.dtype,
            )  # fmt: skip
            conditioning = self.prepare_flashtalk_conditioning(source, num_frames, device)

            # 4. Plan the chunks and prepare timesteps
            plan = self.plan_stream(len(speech), num_frames, motion_frames, max_frames, mode)
            timesteps = self.set_chunk_timesteps(num_inference_steps, shift, device)
            shape = self.latent_shape(plan, source.shape[-2:])

            # 5. Denoising loop: chunk after chunk, each continuing from the last frames of the one before
            videos, audio_out = [], None
            with self.progress_bar(total=num_videos_per_prompt * plan.num_chunks * len(timesteps)) as progress_bar:
                for take in range(num_videos_per_prompt):
                    take_generator = generator[take] if isinstance(generator, list) else generator
                    take_latents = None if latents is None else latents[take : take + 1]
                    rolling = RollingAudio(
                        speech, num_frames, num_frames - motion_frames, audio_window_seconds, normalize_loudness
                    )
                    previous_video = None
                    with ChunkedVideo(
                        plan, speech, output_type, output_path, FPS, self.vae_scale_factor_temporal, live_dir
                    ) as video_out:
                        for index in range(plan.num_chunks):
                            chunk = Chunk(index, index * (num_frames - motion_frames), index == plan.num_chunks - 1)
                            if plan.num_chunks > 1:
                                progress_bar.set_description(f"chunk {index + 1}/{plan.num_chunks}")
                            audio_embeds = rolling.windows(self, index, device, self.transformer.dtype)
                            chunk_latents = self.prepare_latents(
                                shape, take_generator, device, take_latents if chunk.is_first else None
                            )
                            timesteps = self.set_chunk_timesteps(num_inference_steps, shift, device)
                            chunk_conditioning = self.prepare_chunk_conditioning(
                                conditioning, chunk, previous_video, num_frames, motion_frames, device
                            )
                            chunk_latents = self.denoise_chunk(
                                chunk_latents, chunk_conditioning, chunk, timesteps, audio_embeds, prompt_embeds,
                                negative_prompt_embeds, None, take_generator, progress_bar, callback_on_step_end,
                                callback_on_step_end_tensor_inputs,
                            )  # fmt: skip
                            previous_video = self.finish_chunk(
                                chunk_latents, chunk, chunk_conditioning, video_out, source, color_correction_strength,
                            )  # fmt: skip
                            if self.interrupt or previous_video is None:  # interrupted, or the last latent chunk
                                break
                    video, audio_out = video_out.result()
                    videos.append(video)
        finally:
            self.end_call()

        # 6. Post-process
        frames = self.postprocess(videos, output_type)
        if not return_dict:
            return (frames, audio_out)
        return WanMultiTalkPipelineOutput(
            frames=frames, audio=audio_out, video_path=output_path and os.fspath(output_path)
        )

    @staticmethod
    def log_ignored(ignored: dict) -> None:
        """The other pipelines' settings a front end passes (unused here): an unknown name is an error."""
        known = {"audio_type", "bbox", "face_scale", "video_fps", "use_apg", "apg_momentum", "apg_norm_threshold"}
        unknown = sorted(set(ignored) - known)
        if unknown:
            raise TypeError(f"WanFlashTalkPipeline.__call__ got unexpected keyword arguments {unknown}")
        used = {k: v for k, v in ignored.items() if v not in (None, False, "add")}
        if used and set(used) - {"face_scale", "apg_momentum", "apg_norm_threshold"}:
            logger.info(f"SoulX-FlashTalk does not use {sorted(used)} (one person, no guidance): ignored.")

    # ------------------------------------------------------------------------------------------------------------
    # Denoising one chunk
    # ------------------------------------------------------------------------------------------------------------
    def set_chunk_timesteps(self, num_inference_steps: int, shift: float | None, device) -> torch.Tensor:
        """SoulX-FlashTalk's fixed timesteps on a FlowMatchEulerDiscreteScheduler (stochastic: the reference's step);
        another flow-matching scheduler on its own schedule (as the other pipelines run it)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        reset_stateful_cache(self.transformer)
        if isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler):
            own_shift = float(self.scheduler.shift)
            timesteps = set_flashtalk_timesteps(
                self.scheduler, num_inference_steps, own_shift if shift is None else shift, device=device
            )
        else:
            timesteps = set_chunk_timesteps(self.scheduler, num_inference_steps, shift, device=device)
        self._num_timesteps = len(timesteps)
        return timesteps

    def prepare_chunk_conditioning(
        self, conditioning: FlashTalkConditioning, chunk: Chunk, previous_video, num_frames, motion_frames, device
    ) -> ChunkConditioning:
        """SoulX-FlashTalk's rule for a chunk: the image's CLIP tokens and VAE condition (the same for every chunk);
        the motion latents are the clean latents of the image (first chunk) or of the last `motion_frames` frames of
        the chunk before, as colour-corrected. Every chunk drops its first `motion_frames` frames."""
        frames = conditioning.image if chunk.is_first else previous_video[:, :, -motion_frames:]
        motion = self.encode_frames(frames, device)
        return ChunkConditioning(conditioning.image_embeds, conditioning.condition, motion, motion_frames)

    def pin_motion_latents(self, latents: torch.Tensor, motion_latents: torch.Tensor) -> torch.Tensor:
        """The chunk's leading latents are the clean motion latents, after the noise is drawn and after every step."""
        latents[:, :, : motion_latents.shape[2]] = motion_latents
        return latents

    def denoise_chunk(self, latents, conditioning, chunk, timesteps, audio_embeds, prompt_embeds,
                      negative_prompt_embeds, person_masks, generator, progress_bar, callback_on_step_end=None,
                      callback_on_step_end_tensor_inputs=("latents",)):  # fmt: skip
        """Denoises one chunk over `timesteps` with `self.scheduler.step`: one DiT pass per step (guided passes only
        when the call asks for guidance), the clean motion latents pinned before the loop and after every step; no
        motion re-noising (the reference draws no noise for them)."""
        dtype = self.transformer.dtype
        image_embeds, condition = conditioning.image_embeds.to(dtype), conditioning.condition.to(dtype)
        motion = conditioning.motion_latents
        latents = self.pin_motion_latents(latents, motion)
        for i, t in enumerate(timesteps):
            if self.interrupt:
                continue
            self._current_timestep = t
            latent_model_input = torch.cat([latents.to(dtype), condition], dim=1)
            if self.do_classifier_free_guidance:
                noise_pred = self.predict_noise(
                    latent_model_input, t, i, prompt_embeds, negative_prompt_embeds, image_embeds, audio_embeds,
                    person_masks, None,
                )  # fmt: skip
            else:
                noise_pred = self.predict_flow(latent_model_input, t, i, prompt_embeds, image_embeds, audio_embeds)
            latents = self.scheduler.step(noise_pred, t, latents, generator=generator, return_dict=False)[0]
            latents = self.pin_motion_latents(latents, motion)
            if callback_on_step_end is not None:
                latents, prompt_embeds, negative_prompt_embeds = self.run_step_callback(
                    callback_on_step_end, callback_on_step_end_tensor_inputs, chunk.index * len(timesteps) + i, t,
                    latents=latents, noise_pred=noise_pred, prompt_embeds=prompt_embeds,
                    negative_prompt_embeds=negative_prompt_embeds, audio_embeds=audio_embeds,
                )  # fmt: skip
            progress_bar.update()
        return latents

    def predict_flow(self, latent_model_input, t, step, prompt_embeds, image_embeds, audio_embeds) -> torch.Tensor:
        """The DiT's flow prediction with the prompt and the audio: the one pass of a step."""
        from .sampling import scheduler_noise_level

        sigma = float(scheduler_noise_level(self.scheduler))
        context = dict(step_index=step, num_inference_steps=self._num_timesteps, timestep=t, sigma=sigma)
        with self.transformer.cache_context("cond", **context):
            return self.transformer(
                latent_model_input, t.expand(1), prompt_embeds, image_embeds, audio_embeds, ref_target_masks=None,
                return_dict=False, attention_kwargs=self.attention_kwargs,
            )[0].float()  # fmt: skip

    def finish_chunk(self, latents, chunk: Chunk, conditioning: ChunkConditioning, video_out: ChunkedVideo,
                     color_reference, color_correction_strength: float):  # fmt: skip
        """Decodes the chunk, matches its colours to the image (SoulX-FlashTalk's LAB transfer) and hands all but its
        first `motion_frames` frames to `video_out` (the first chunk's too). Returns the corrected frames, whose
        last frames the next chunk continues from (None after the last chunk of a latent output)."""
        if video_out.output_type == "latent":
            video_out.add_latents(latents, chunk, conditioning.motion_latents.shape[2])
            if chunk.is_last:
                return None
        video = self.decode_latents(latents)
        if color_reference is not None and color_correction_strength > 0:
            video = match_color_lab_flashtalk(video, color_reference.to(video), color_correction_strength)
        if video_out.output_type != "latent":
            skip = conditioning.num_motion_frames
            video_out.add_frames(video, chunk, skip, self.video_processor.postprocess_video, skip=skip)
        return video
