"""WanMultiTalkPipeline: audio-driven (multi-person) talking video from a reference image, as MultiTalk does it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKLWan
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import logging, replace_example_docstring
from transformers import CLIPVisionModel, UMT5EncoderModel, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from .._diffusers_compat import resolve_dtype
from ..models.transformer_multitalk import MultiTalkTransformer3DModel
from .chunking import Chunk, ChunkConditioning, ChunkedAudio, ChunkedVideo
from .image_processing import closest_bucket, load_image_any, resize_and_center_crop, resolution_buckets
from .pipeline_output import WanMultiTalkPipelineOutput
from .pipeline_wan_audio_base import DEFAULT_NEGATIVE_PROMPT, FPS, WanAudioPipelineBase, audio_entries


__all__ = ["DEFAULT_NEGATIVE_PROMPT", "WanMultiTalkPipeline", "WanMultiTalkPipelineOutput"]

logger = logging.get_logger(__name__)

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_multitalk import WanMultiTalkPipeline, export_to_video_with_audio

        >>> # The original releases as users download them (the Wan base, MeiGen-MultiTalk, chinese-wav2vec2-base)
        >>> pipe = WanMultiTalkPipeline.from_pretrained("MeiGen-AI/MeiGen-MultiTalk", dtype=torch.bfloat16)
        >>> pipe.to("cuda" if torch.cuda.is_available() else "cpu")

        >>> output = pipe(
        ...     image="examples/assets/two_people.png",
        ...     audio=["examples/assets/speaker1.wav", "examples/assets/speaker2.wav"],
        ...     prompt="Two friends chat at a table.",
        ...     guidance_scale=5.0,
        ...     audio_guidance_scale=4.0,
        ...     num_inference_steps=40,
        ...     generator=torch.Generator().manual_seed(42),
        ... )
        >>> export_to_video_with_audio(output.frames[0], output.audio, "podcast.mp4", fps=output.fps)
        ```
"""


class WanMultiTalkPipeline(WanAudioPipelineBase):
    r"""
    Audio-driven talking video generation with MultiTalk (Wan2.1-I2V-14B + audio adapter): from a reference image, one
    audio track per person and a prompt, a video in which each person's lips, face and body follow their own voice.

    The components are [`WanAudioPipelineBase`]'s. MultiTalk's conditioning of a chunk: the first is conditioned on the
    reference image, later ones on the last `motion_frames` generated frames (all marked known in the VAE condition;
    CLIP sees the last of them), whose latents are re-noised into the chunk's leading latent frames.
    """

    @classmethod
    def from_original(
        cls,
        wan_dir,
        multitalk_dir=None,
        wav2vec_dir=None,
        dtype: torch.dtype | None = None,
        lora_path=None,
        lora_scale: float = 1.0,
        quant: str | None = None,
        quant_dir=None,
        quant_dit_path=None,
        torch_dtype: torch.dtype | None = None,
    ) -> WanMultiTalkPipeline:
        """Builds the pipeline from the official folders as users download them.

        Args:
            wan_dir: `Wan2.1-I2V-14B-480P/` (or 720P): DiT shards, `models_t5_umt5-xxl-enc-bf16.pth`,
                `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`, `Wan2.1_VAE.pth`, `google/umt5-xxl/`.
            multitalk_dir: `MeiGen-MultiTalk/` (its `multitalk.safetensors`); not needed if already linked into
                `wan_dir` with its index, as MultiTalk's README does.
            wav2vec_dir: `chinese-wav2vec2-base/`.
            dtype: dtype of the DiT, text and image encoders (the VAE and wav2vec2 stay float32, as the
                reference runs them). `torch_dtype` is its deprecated name.
            lora_path / lora_scale: an optional LoRA (e.g. a step-distillation LoRA) loaded into the transformer.
            quant: "int8" or "fp8" (MultiTalk's `--quant`; needs optimum-quanto): with `quant_dir` (the
                MeiGen-MultiTalk folder) the DiT and umT5 come from its `quant_models/` files, or the DiT from
                `quant_dit_path` (e.g. `quant_model_int8_FusionX.safetensors`, MultiTalk's `--lora_dir` with
                `--quant`); with neither, the float weights (and `lora_path`, fused) are quantised on the fly. See
                [`~diffusers_multitalk.loaders.quantized`].
        """
        from ..loaders.original_folders import check_original_folders
        from ..loaders.wan_umt5 import load_umt5_encoder_from_original
        from .original_loading import assemble_original_pipeline

        torch_dtype = resolve_dtype(dtype, torch_dtype)
        # Every missing file is named (with the command that downloads it) before anything heavy loads.
        quant_files = quant is not None and (quant_dir is not None or quant_dit_path is not None)
        if quant is not None:
            from ..loaders.quantized import load_quantized_components, quant_folder_problems, validate_quant

            validate_quant(quant)
            if quant_files and lora_path is not None:
                raise ValueError(
                    "A LoRA cannot be applied to MultiTalk's quantised files; for FusionX pass its quantised model "
                    "(quant_models/quant_model_int8_FusionX.safetensors) as quant_dit_path, or drop quant_dir to "
                    "quantise the float weights on the fly after fusing the LoRA."
                )
        problems = check_original_folders(wan_dir, multitalk_dir, wav2vec_dir)
        if quant_files:
            problems = quant_folder_problems(problems, wan_dir, quant, quant_dir, quant_dit_path)
        if problems:
            raise FileNotFoundError("\n".join(problems))
        wan_dir = Path(wan_dir)
        if quant_files:
            transformer, text_encoder = load_quantized_components(
                wan_dir, quant, quant_dir, quant_dit_path, torch_dtype=torch_dtype
            )
        else:
            transformer = MultiTalkTransformer3DModel.from_original(
                wan_dir, torch_dtype=torch_dtype, multitalk_path=_multitalk_file(wan_dir, multitalk_dir)
            )
            text_encoder = load_umt5_encoder_from_original(wan_dir, torch_dtype=torch_dtype)
        return assemble_original_pipeline(
            cls,
            wan_dir,
            wav2vec_dir,
            transformer,
            text_encoder,
            torch_dtype=torch_dtype,
            lora_path=lora_path,
            lora_scale=lora_scale,
            adapter_name="multitalk_lora",
            quantize=quant if quant is not None and not quant_files else None,
        )

    @classmethod
    def from_wan_diffusers(
        cls,
        wan_diffusers_dir,
        multitalk_dir,
        wav2vec_dir,
        dtype: torch.dtype | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> WanMultiTalkPipeline:
        """Builds the pipeline from diffusers' Wan2.1-I2V repo (`Wan-AI/Wan2.1-I2V-14B-480P-Diffusers`: tokenizer,
        text_encoder, image_encoder, image_processor, vae and transformer subfolders), MeiGen-MultiTalk's
        `multitalk.safetensors` and chinese-wav2vec2-base. The repo's scheduler is replaced by MultiTalk's
        flow-matching schedule."""
        from transformers import AutoTokenizer

        from ..audio.encoder import WAV2VEC_DOWNLOAD_HINT
        from .sampling import make_multitalk_scheduler

        torch_dtype = resolve_dtype(dtype, torch_dtype)
        root = Path(wan_diffusers_dir)
        missing = [
            name
            for name in ("tokenizer", "text_encoder", "image_encoder", "vae", "transformer")
            if not (root / name).is_dir()
        ]
        if missing:
            raise FileNotFoundError(
                f"{root} lacks the subfolders {missing}. Download the diffusers-format Wan with "
                f"`huggingface-cli download Wan-AI/Wan2.1-I2V-14B-480P-Diffusers --local-dir {root}`."
            )
        if wav2vec_dir is None or not (Path(wav2vec_dir) / "config.json").exists():
            raise FileNotFoundError(
                f"wav2vec2 folder {wav2vec_dir!r} is missing or has no config.json. {WAV2VEC_DOWNLOAD_HINT}"
            )
        audio_encoder = Wav2Vec2Model.from_pretrained(wav2vec_dir).eval()
        transformer = MultiTalkTransformer3DModel.from_wan_diffusers(
            root / "transformer",
            multitalk_dir,
            torch_dtype=torch_dtype,
            audio_layers=audio_encoder.config.num_hidden_layers,
            audio_channels=audio_encoder.config.hidden_size,
        )
        image_processor = None
        if (root / "image_processor").is_dir():
            image_processor = clip_image_processor_class().from_pretrained(root, subfolder="image_processor")
        return cls(
            tokenizer=AutoTokenizer.from_pretrained(root / "tokenizer"),
            text_encoder=UMT5EncoderModel.from_pretrained(
                root, subfolder="text_encoder", torch_dtype=torch_dtype
            ).eval(),
            image_encoder=CLIPVisionModel.from_pretrained(
                root, subfolder="image_encoder", torch_dtype=torch_dtype
            ).eval(),
            transformer=transformer,
            vae=AutoencoderKLWan.from_pretrained(root, subfolder="vae", torch_dtype=torch.float32).eval(),
            scheduler=make_multitalk_scheduler(),
            audio_encoder=audio_encoder,
            audio_feature_extractor=Wav2Vec2FeatureExtractor.from_pretrained(wav2vec_dir),
            image_processor=image_processor,
        )

    # ------------------------------------------------------------------------------------------------------------
    # MultiTalk's source and conditioning
    # ------------------------------------------------------------------------------------------------------------
    def prepare_image(self, image, resolution, height, width, allow_upscale):
        """Loads the image and resizes/crops it to the bucket (or the given size): `([1, 3, 1, H, W] in [-1, 1],
        (source_h, source_w))`."""
        pil = load_image_any(image)
        src_h, src_w = pil.height, pil.width
        # One DiT token covers vae_scale x patch pixels: a smaller image holds no detail to animate.
        cell = self.vae_scale_factor_spatial * self.transformer.config.patch_size[-1]
        if src_h < cell or src_w < cell:
            raise ValueError(
                f"The image is {src_w}x{src_h} (w x h), smaller than one {cell}x{cell}-pixel patch of the model; give "
                "a real picture of the person(s) (480P or larger works best)."
            )
        if height is None:
            height, width = closest_bucket(src_h, src_w, resolution_buckets(resolution))
        if not allow_upscale and (src_h < height or src_w < width):
            raise ValueError(
                f"The image is {src_w}x{src_h} (w x h), smaller than the {width}x{height} (w x h) target "
                f"({'bucket of ' + str(resolution) if resolution else 'size asked'}). Use a larger image, a smaller "
                "`resolution`/`height`/`width`, or pass `allow_upscale=True` to upscale it as the original does."
            )
        pixels = resize_and_center_crop(pil, height, width)
        return pixels[None, :, None], (src_h, src_w)

    def prepare_chunk_conditioning(
        self, source, chunk: Chunk, previous_video, num_frames, motion_frames, device
    ) -> ChunkConditioning:
        """MultiTalk's rule for a chunk: the first is conditioned on the reference image `source`, later ones on the
        last `motion_frames` generated frames (all marked known in the VAE condition; CLIP sees the last of them)."""
        if chunk.is_first:
            cond_frames, num_motion = source, 1
        else:
            cond_frames, num_motion = previous_video[:, :, -motion_frames:], motion_frames
        image_embeds = self.encode_image(cond_frames, device)
        condition, motion_latents = self.prepare_condition(cond_frames, num_frames, num_motion, device)
        return ChunkConditioning(image_embeds, condition, motion_latents, num_motion)

    # ------------------------------------------------------------------------------------------------------------
    # Generation
    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image: PIL.Image.Image | np.ndarray | torch.Tensor | str,
        audio: Sequence[Any] | Any = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        audio_type: str = "add",
        bbox: Sequence[Sequence[float]] | None = None,
        face_scale: float = 0.05,
        resolution: str = "multitalk-480",
        height: int | None = None,
        width: int | None = None,
        allow_upscale: bool = False,
        mode: str | None = None,
        num_frames: int = 81,
        motion_frames: int = 25,
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
        The call function to the pipeline for generation.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or `str`):
                The reference image of the person(s) (or its path).
            audio (`list` or a single entry, *optional*):
                One entry per person: a path (wav/mp3/flac/m4a or a video file), a `(waveform, sampling_rate)` tuple, a
                `{"array", "sampling_rate"}` dict, or precomputed wav2vec2 embeddings `[frames at 25 fps, layers,
                hidden]`. `None` makes a person silent (a listener; the reference's `"None"` audio). Give `audio` or
                `dialogue`.
            prompt (`str`, *optional*):
                The prompt to guide the video. Give `prompt` or `prompt_embeds`.
            negative_prompt (`str`, *optional*):
                The prompt not to guide the video; defaults to the reference's.
            audio_type (`str`, *optional*, defaults to `"add"`):
                `"add"`: persons speak in turn (person 1's track, then person 2's); `"para"`: simultaneously.
            bbox (`list[list[float]]`, *optional*):
                One box per person, `[top, left, bottom, right]` in source-image pixels (the reference's `[x_min,
                y_min, x_max, y_max]` whose first pair indexes rows). Without boxes two persons get the left/right
                halves with `face_scale` margins, N persons N vertical strips.
            face_scale (`float`, *optional*, defaults to 0.05):
                The margin of the default person regions.
            resolution (`str`, *optional*, defaults to `"multitalk-480"`):
                `"multitalk-480"` or `"multitalk-720"`: the nearest aspect bucket of the image (resize + centre crop).
                Ignored when `height` and `width` are given.
            height (`int`, *optional*) / width (`int`, *optional*):
                The output size, multiples of 16.
            allow_upscale (`bool`, *optional*, defaults to `False`):
                Allow images smaller than the target size (the reference upsamples silently).
            mode (`str`, *optional*):
                None or `"auto"`: the whole audio, as one clip when it fits in `num_frames`, else streaming; `"clip"`:
                the reference's one chunk of `num_frames` (longer audio is cut, with a warning); `"streaming"`: chunks
                overlapping by `motion_frames` until the audio ends.
            num_frames (`int`, *optional*, defaults to 81):
                Frames per chunk, 4n+1.
            motion_frames (`int`, *optional*, defaults to 25):
                The generated frames each later chunk continues from, 4n+1.
            max_frames (`int`, *optional*):
                A cap on the video's length in frames (a warning says how much audio it cuts).
            num_inference_steps (`int`, *optional*, defaults to 40):
                Denoising steps per chunk.
            shift (`float`, *optional*):
                The timestep shift; defaults to the scheduler's own (7 in the scheduler this package builds; MultiTalk
                uses 11 at 720P).
            guidance_scale (`float`, *optional*, defaults to 5.0):
                The text guidance scale. With 1, two passes run per step (conditional and silent audio); otherwise
                three (conditional, negative text, negative text + silent audio).
            audio_guidance_scale (`float`, *optional*, defaults to 4.0):
                The audio guidance scale.
            num_videos_per_prompt (`int`, *optional*, defaults to 1):
                The videos to make, each from its own noise; they are generated one after another.
            use_apg (`bool`, *optional*, defaults to `False`) / apg_momentum (`float`, defaults to -0.75) /
            apg_norm_threshold (`float`, defaults to 55.0):
                Adaptive projected guidance.
            color_correction_strength (`float`, *optional*, defaults to 1.0):
                LAB colour matching of every chunk to the reference image (0 disables).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                Generators for reproducible noise: one, or one per video. The reference's `torch.manual_seed(seed)` on
                the execution device draws the same numbers.
            latents (`torch.Tensor`, *optional*):
                The first chunk's initial noise, `[num_videos_per_prompt, 16, T, h, w]`.
            prompt_embeds (`torch.Tensor`, *optional*) / negative_prompt_embeds (`torch.Tensor`, *optional*):
                Precomputed umT5 states `[1, L, dim]`.
            max_sequence_length (`int`, *optional*, defaults to 512):
                The text length.
            output_type (`str`, *optional*, defaults to `"np"`):
                `"np"`, `"pt"`, `"pil"` or `"latent"` (see [`WanMultiTalkPipelineOutput`] for the latents' layout).
            return_dict (`bool`, *optional*, defaults to `True`):
                Return a [`WanMultiTalkPipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                Called after every step as `callback(pipe, step, timestep, callback_kwargs)` (`step` counts over the
                chunks); may return a dict replacing `latents`, `prompt_embeds` or `negative_prompt_embeds`.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*, defaults to `["latents"]`):
                The tensors passed in `callback_kwargs`: any of `_callback_tensor_inputs`.
            attention_kwargs (`dict`, *optional*):
                Passed to the transformer (e.g. `{"scale": 0.5}` for a LoRA).
            dialogue (`str`, *optional*):
                Instead of `audio`, a script to speak with text-to-speech: `"(s1) Do you know MultiTalk? (s2) Yes!"`.
                Each person gets a track that is silent while the others speak, so `audio_type` does not apply.
            dialogue_voices (`list`, *optional*):
                One voice per person for `dialogue` (Kokoro names, `.pt` files, or espeak-ng voices).
            tts_engine (`str`, *optional*):
                None (Kokoro-82M when its weights are found, else espeak-ng, with a warning), `"kokoro"` or
                `"espeak-ng"`.
            normalize_loudness (`bool`, *optional*, defaults to `True`):
                Bring each person's speech to -23 LUFS before wav2vec2, as the reference does for recordings.
            output_path (`str` or `os.PathLike`, *optional*):
                Write the video (with the mixed audio) to this mp4 as each chunk is decoded, so memory stays flat however
                long the video is; `frames` is then None. The file appears only when complete.
            live_dir (`str` or `os.PathLike`, *optional*):
                Also stream each decoded chunk, with its audio, to an HLS stream in this folder while the video is made:
                `live.m3u8` (an EVENT playlist, ended with `#EXT-X-ENDLIST` when the call returns) and one MPEG-TS
                segment per chunk; removed on an error, as the mp4's part file (see docs/streaming.md).
            text_guidance_scale (`float`, *optional*):
                Deprecated: use `guidance_scale`.

        Examples:

        Returns:
            [`WanMultiTalkPipelineOutput`] or `tuple`: the output, or with `return_dict=False` the tuple `(frames,
            audio)`.
        """
        guidance_scale = self.resolve_guidance_scale(guidance_scale, text_guidance_scale)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. Check inputs. Raise error if not correct
        if image is None:
            raise ValueError("`image` is required: the reference image of the person(s).")
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

        try:
            # 2. Prepare the reference image: the bucket's size, resized and centre-cropped
            cond_image, source_size = self.prepare_image(image, resolution, height, width, allow_upscale)
            pixel_size = tuple(cond_image.shape[-2:])
            color_reference = cond_image.clone() if color_correction_strength > 0 else None

            # 3. Where each person stands (boxes checked before any encoder runs), then encode the audio
            person_masks = self.prepare_person_masks(
                len(audio_entries(audio)), bbox, face_scale, source_size, pixel_size, device
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
            timesteps = self.set_chunk_timesteps(num_inference_steps, shift, device)
            shape = self.latent_shape(plan, pixel_size)

            # 6. Denoising loop: chunk after chunk, each continuing from the last frames of the one before
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
                                cond_image, chunk, previous_video, plan.chunk_frames, motion_frames, device
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

        # 7. Post-process
        frames = self.postprocess(videos, output_type)
        if not return_dict:
            return (frames, audio_out)
        return WanMultiTalkPipelineOutput(
            frames=frames, audio=audio_out, video_path=output_path and os.fspath(output_path)
        )


def clip_image_processor_class():
    """transformers' CLIP image processor class: without torchvision, transformers 5's PIL one (its plain
    `CLIPImageProcessor` then warns and falls back to it anyway); transformers 4's `CLIPImageProcessor`."""
    import importlib.util

    import transformers

    if importlib.util.find_spec("torchvision") is None and hasattr(transformers, "CLIPImageProcessorPil"):
        return transformers.CLIPImageProcessorPil
    return transformers.CLIPImageProcessor


def _multitalk_file(wan_dir: Path, multitalk_dir) -> Path | None:
    if multitalk_dir is None:
        return None
    multitalk_dir = Path(multitalk_dir)
    candidate = multitalk_dir / "multitalk.safetensors" if multitalk_dir.is_dir() else multitalk_dir
    if not candidate.exists():
        raise FileNotFoundError(
            f"{candidate} is missing. Download it with `huggingface-cli download MeiGen-AI/MeiGen-MultiTalk "
            f"--local-dir {multitalk_dir}`."
        )
    # Already linked into the Wan folder (MultiTalk README's step): the index names it.
    if (wan_dir / "multitalk.safetensors").exists():
        return None
    return candidate
