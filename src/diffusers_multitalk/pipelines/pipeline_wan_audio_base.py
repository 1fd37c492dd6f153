"""WanAudioPipelineBase: the audio-driven Wan steps every model shares, as pipeline methods.

[`WanMultiTalkPipeline`] and the pipelines of the other models (one per entry of `variants.py`) are siblings on this
base: the same components, the same prompt, image and audio encoders, person masks, chunk plan, guided denoising of a
chunk and decoding. Each sibling writes its own `__call__` (its source: a reference image, or a video to dub) and its
conditioning of a chunk (`prepare_chunk_conditioning`, `pin_motion_latents`).
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import deprecate, logging
from diffusers.video_processor import VideoProcessor
from transformers import (
    CLIPVisionModel,
    PreTrainedTokenizerBase,
    UMT5EncoderModel,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)
from transformers.image_processing_utils import BaseImageProcessor

from .._diffusers_compat import reset_stateful_cache
from ..audio.encoder import encode_speech
from ..audio.processing import TARGET_SAMPLE_RATE, combine_speakers, prepare_audio
from ..audio.tts import parse_dialogue, synthesize_dialogue
from ..loaders.lora import MultiTalkLoraLoaderMixin
from ..models.transformer_multitalk import MultiTalkTransformer3DModel
from ..utils.devices import input_device
from .chunking import Chunk, ChunkConditioning, ChunkedVideo, VideoPlan
from .clip_features import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, clip_image_features, preprocess_clip_frames
from .color_correction import match_color_lab
from .guidance import APGState, combine_guidance, combine_guidance_two_pass
from .model_index import MultiTalkModelIndexMixin
from .person_masks import default_person_masks, latent_person_masks, person_masks_from_bboxes
from .release_loading import OriginalReleaseLoadingMixin
from .sampling import (
    add_noise_flow,
    check_flow_scheduler,
    make_multitalk_scheduler,
    scheduler_noise_level,
    set_chunk_timesteps,
)


logger = logging.get_logger(__name__)

# The reference's default negative prompt (English translation it ships with).
DEFAULT_NEGATIVE_PROMPT = (
    "bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, overall "
    "gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn hands, "
    "poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy background, three "
    "legs, many people in the background, walking backwards"
)
FPS = 25
OUTPUT_TYPES = ("np", "pt", "pil", "latent")


def _whitespace_clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _is_embedding(entry) -> bool:
    return isinstance(entry, torch.Tensor) and entry.ndim == 3


def audio_entries(audio) -> list:
    """The per-person entries of a call's `audio`: a list as given, or a single entry (a path, a `(waveform, rate)`
    tuple, ...) as a list of one."""
    if isinstance(audio, (list, tuple)) and not (
        isinstance(audio, tuple) and len(audio) == 2 and isinstance(audio[1], (int, np.integer))
    ):
        return list(audio)
    return [audio]


def check_motion_frames(motion_frames: int, num_frames: int) -> None:
    if motion_frames < 1 or (motion_frames - 1) % 4 or motion_frames >= num_frames:
        raise ValueError(
            f"`motion_frames` must be 4n+1 and smaller than `num_frames` ({num_frames}) for audio longer than one "
            f"chunk, got {motion_frames}."
        )


def _check_audio_length(num_audio_frames: int, min_frames: int) -> None:
    if num_audio_frames < 1:
        raise ValueError(f"The audio is shorter than one video frame (1/{FPS} s); give the person's speech.")
    if min_frames and num_audio_frames <= min_frames:
        raise ValueError(
            f"The audio covers {num_audio_frames} frames ({num_audio_frames / FPS:.2f} s at {FPS} fps); more than "
            f"{min_frames} are needed here."
        )


def _processor_image_size(processor) -> int:
    """The square input size of a CLIP image processor, whatever type transformers gives its `crop_size`/`size`
    (a dict, transformers 5's `SizeDict`, or an int)."""
    for attribute in ("crop_size", "size"):
        size = getattr(processor, attribute, None)
        if size is None:
            continue
        if isinstance(size, (int, float)):
            return int(size)
        lookup = size.get if hasattr(size, "get") else lambda key, size=size: getattr(size, key, None)
        for key in ("height", "shortest_edge", "width"):
            value = lookup(key)
            if value:
                return int(value)
    raise ValueError(
        f"{type(processor).__name__} has no usable crop_size/size ({getattr(processor, 'crop_size', None)!r}); "
        "Wan's CLIP takes 224x224 images."
    )


class WanAudioPipelineBase(
    MultiTalkModelIndexMixin, OriginalReleaseLoadingMixin, DiffusionPipeline, MultiTalkLoraLoaderMixin
):
    r"""
    The shared base of the audio-driven Wan pipelines (one per model of `diffusers_multitalk.variants`).

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]): umT5 tokenizer (`google/umt5-xxl`).
        text_encoder ([`~transformers.UMT5EncoderModel`]): Wan's umT5-XXL encoder.
        image_encoder ([`~transformers.CLIPVisionModel`]): Wan's open-clip XLM-RoBERTa ViT-H/14 vision tower.
        transformer ([`MultiTalkTransformer3DModel`]): the MultiTalk DiT (every model's has its architecture).
        vae ([`~diffusers.AutoencoderKLWan`]): Wan2.1's VAE.
        scheduler ([`~diffusers.FlowMatchEulerDiscreteScheduler`]): any flow-matching scheduler of diffusers (see
            [`~pipelines.sampling.check_flow_scheduler`]); a plain FlowMatchEuler runs MultiTalk's exact schedule.
            Its own shift is used when a call gives none.
        audio_encoder ([`~transformers.Wav2Vec2Model`]): chinese-wav2vec2-base.
        audio_feature_extractor ([`~transformers.Wav2Vec2FeatureExtractor`]): its feature extractor.
        image_processor ([`~transformers.CLIPImageProcessor`], *optional*): any CLIP image processor (annotated as
            their base class: transformers 5 picks a PIL or a torchvision class at run time). Only its `image_mean`,
            `image_std` and crop size are used; the pixels follow the reference's tensor path (bicubic resize of the
            [-1, 1] frame), whose numbers differ from the PIL path.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->audio_encoder->transformer->vae"
    _optional_components = ["image_processor"]
    _callback_tensor_inputs = ["latents", "noise_pred", "prompt_embeds", "negative_prompt_embeds", "audio_embeds"]

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder: UMT5EncoderModel,
        image_encoder: CLIPVisionModel,
        transformer: MultiTalkTransformer3DModel,
        vae: AutoencoderKLWan,
        scheduler: FlowMatchEulerDiscreteScheduler,
        audio_encoder: Wav2Vec2Model,
        audio_feature_extractor: Wav2Vec2FeatureExtractor,
        image_processor: BaseImageProcessor | None = None,
    ):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            image_encoder=image_encoder,
            transformer=transformer,
            vae=vae,
            scheduler=scheduler,
            audio_encoder=audio_encoder,
            audio_feature_extractor=audio_feature_extractor,
            image_processor=image_processor,
        )
        self.vae_scale_factor_temporal = self.vae.config.scale_factor_temporal if getattr(self, "vae", None) else 4
        self.vae_scale_factor_spatial = self.vae.config.scale_factor_spatial if getattr(self, "vae", None) else 8
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)

    @staticmethod
    def default_scheduler():
        """The model's own sampler, which `from_original` and the tiny pipeline build: MultiTalk's flow-matching Euler
        (a sibling whose model samples otherwise overrides it)."""
        return make_multitalk_scheduler()

    # ------------------------------------------------------------------------------------------------------------
    # Inputs
    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def resolve_guidance_scale(guidance_scale: float, text_guidance_scale: float | None) -> float:
        """`guidance_scale`, or the deprecated `text_guidance_scale` when that is given."""
        if text_guidance_scale is None:
            return guidance_scale
        deprecate(
            "text_guidance_scale",
            "1.0.0",
            "`text_guidance_scale` is deprecated: pass the text scale as `guidance_scale`, as diffusers' pipelines do.",
            standard_warn=False,
        )
        return text_guidance_scale

    def count_persons(self, audio, dialogue=None, dialogue_voices=None) -> int:
        """The persons a call animates: one per `audio` entry, or per speaker of a `dialogue` script."""
        if dialogue is None:
            return len(audio_entries(audio))
        turns = parse_dialogue(dialogue)  # clear errors for empty text, text before the first tag, (s0)
        return max(len(dialogue_voices or ()), max(turn.speaker for turn in turns) + 1)

    def check_audio_inputs(self, audio, dialogue, dialogue_voices) -> None:
        if dialogue is not None:
            if audio is not None:
                raise ValueError("Give either `audio` (recordings) or `dialogue` (a script to speak), not both.")
            if not isinstance(dialogue, str):
                raise ValueError(
                    f"`dialogue` must be a string such as '(s1) Hi! (s2) Hello.', got {type(dialogue).__name__}."
                )
            spoken = {turn.speaker for turn in parse_dialogue(dialogue)}
            silent = sorted({*range(self.count_persons(None, dialogue, dialogue_voices))} - spoken)
            if silent:
                raise ValueError(
                    f"`dialogue` has no turn for speaker(s) {', '.join(f'(s{n + 1})' for n in silent)}: every person "
                    "needs speech; give them a turn or fewer `dialogue_voices`."
                )
        elif audio is None or (isinstance(audio, (list, tuple)) and len(audio) == 0):
            raise ValueError(
                "`audio` is required: one entry per person (path, (waveform, rate) or embeddings); or give a "
                "`dialogue` script to speak."
            )
        num_persons = self.count_persons(audio, dialogue, dialogue_voices)
        max_persons = self.transformer.config.class_range // self.transformer.config.class_interval
        if num_persons > max_persons:
            raise ValueError(
                f"{num_persons} audio tracks given; this model tells at most {max_persons} persons apart "
                f"(class_range {self.transformer.config.class_range} / class_interval "
                f"{self.transformer.config.class_interval}). MultiTalk was trained with 1 or 2."
            )

    def check_prompt_inputs(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds) -> None:
        if prompt is None and prompt_embeds is None:
            raise ValueError("Provide `prompt` or `prompt_embeds`.")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Provide either `prompt` or `prompt_embeds`, not both.")
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(f"`prompt` must be a string (one video per call), got {type(prompt).__name__}.")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError(f"`negative_prompt` must be a string, got {type(negative_prompt).__name__}.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Provide either `negative_prompt` or `negative_prompt_embeds`, not both.")

    def check_inputs(
        self,
        audio,
        prompt,
        negative_prompt=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        *,
        audio_type="add",
        bbox=None,
        height=None,
        width=None,
        mode=None,
        num_frames=81,
        motion_frames=25,
        max_frames=None,
        num_inference_steps=40,
        guidance_scale=5.0,
        audio_guidance_scale=4.0,
        num_videos_per_prompt=1,
        generator=None,
        latents=None,
        output_type="np",
        output_path=None,
        callback_on_step_end_tensor_inputs=None,
        dialogue=None,
        dialogue_voices=None,
        live_dir=None,
    ):
        """Every check that needs no model run, before any encoder runs; each error names the argument."""
        self.check_audio_inputs(audio, dialogue, dialogue_voices)
        self.check_prompt_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        num_persons = self.count_persons(audio, dialogue, dialogue_voices)
        if audio_type not in ("add", "para"):
            raise ValueError(f"`audio_type` must be 'add' (turns) or 'para' (simultaneous), got {audio_type!r}.")
        if bbox is not None and len(bbox) != num_persons:
            raise ValueError(f"{len(bbox)} bounding boxes for {num_persons} persons: give one `bbox` per person.")
        if (height is None) != (width is None):
            raise ValueError("Give both `height` and `width`, or neither (then `resolution` picks the bucket).")
        if height is not None and (height % 16 or width % 16 or height <= 0 or width <= 0):
            raise ValueError(f"`height` and `width` must be positive multiples of 16, got {width}x{height} (WxH).")
        if mode not in (None, "auto", "clip", "streaming"):
            raise ValueError(
                f"`mode` must be None/'auto' (the whole audio), 'clip' (one chunk) or 'streaming', got {mode!r}."
            )
        if num_frames < 5 or (num_frames - 1) % 4:
            raise ValueError(f"`num_frames` must be 4n+1 and at least 5 (e.g. 81), got {num_frames}.")
        if mode == "streaming":  # the default mode checks it in plan_video, once it knows the audio's length
            check_motion_frames(motion_frames, num_frames)
        if max_frames is not None and max_frames < 5:
            raise ValueError(f"`max_frames` must be None (no cap) or at least 5 frames, got {max_frames}.")
        for name, scale in (("guidance_scale", guidance_scale), ("audio_guidance_scale", audio_guidance_scale)):
            if not math.isfinite(scale) or scale < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0 (1 turns that guidance off), got {scale}.")
        if num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be >= 1, got {num_inference_steps}.")
        self.check_output_inputs(num_videos_per_prompt, generator, output_type, output_path, live_dir)
        if latents is not None and (latents.ndim != 5 or latents.shape[0] != num_videos_per_prompt):
            raise ValueError(
                f"`latents` must be [num_videos_per_prompt, 16, T, h, w] (the first chunk's noise, one per video), got "
                f"{tuple(latents.shape)} for num_videos_per_prompt={num_videos_per_prompt}."
            )
        check_flow_scheduler(self.scheduler)
        if callback_on_step_end_tensor_inputs is not None:
            bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if bad:
                raise ValueError(f"`callback_on_step_end_tensor_inputs` {bad} not in {self._callback_tensor_inputs}.")

    @staticmethod
    def check_output_inputs(num_videos_per_prompt, generator, output_type, output_path, live_dir=None) -> None:
        if int(num_videos_per_prompt) != num_videos_per_prompt or num_videos_per_prompt < 1:
            raise ValueError(f"`num_videos_per_prompt` must be a positive integer, got {num_videos_per_prompt!r}.")
        if isinstance(generator, list) and len(generator) != num_videos_per_prompt:
            raise ValueError(
                f"{len(generator)} generators for num_videos_per_prompt={num_videos_per_prompt}: give one generator, "
                "or one per video."
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be 'np', 'pt', 'pil' or 'latent', got {output_type!r}.")
        if output_path is not None and output_type == "latent":
            raise ValueError("`output_path` writes decoded frames: it cannot be combined with output_type='latent'.")
        if output_path is not None and num_videos_per_prompt > 1:
            raise ValueError("`output_path` writes one video: use num_videos_per_prompt=1 with it.")
        if live_dir is not None and (output_type == "latent" or num_videos_per_prompt > 1):
            raise ValueError("`live_dir` streams one decoded video: use it with num_videos_per_prompt=1, not 'latent'.")

    # ------------------------------------------------------------------------------------------------------------
    # Encoders
    # ------------------------------------------------------------------------------------------------------------
    def dialogue_audio(self, dialogue: str, voices=None, engine=None) -> tuple[list, str, bool]:
        """A TTS script -> the call's `audio`, `audio_type` and `normalize_loudness`: the script's turns are laid out
        on the tracks already, so they are mixed as they are ("para"), their loudness left as the engine made it."""
        tracks, _ = synthesize_dialogue(dialogue, voices=voices, engine=engine)
        return [(track, TARGET_SAMPLE_RATE) for track in tracks], "para", False

    def encode_audio(self, audio, audio_type, device, min_frames: int = 0, normalize_loudness: bool = True):
        """Turns the per-person audio entries into wav2vec2 embeddings `[frames, layers, hidden]` (float32) and the
        mixed track. Entries: a path, a `(waveform, sampling_rate)` tuple, a `{"array", "sampling_rate"}` dict, or a
        precomputed embedding tensor `[frames, layers, hidden]` (then no mixed track). Audio shorter than one video
        frame (or covering no more than `min_frames` frames, when given) is refused before the audio encoder runs."""
        entries = audio_entries(audio)
        if all(e is None for e in entries):
            raise ValueError("Every person's audio is None (silent); give at least one person's speech.")
        if all(_is_embedding(e) for e in entries):
            embeddings = [e.float().to(device) for e in entries]
            _check_audio_length(min(len(e) for e in embeddings), min_frames)
            return embeddings, None
        if any(_is_embedding(e) for e in entries):
            raise ValueError("Give either waveforms/paths for every person or embeddings for every person, not a mix.")
        tracks = [self._load_track(entry, index, normalize_loudness) for index, entry in enumerate(entries)]
        # A silent person gets silence as long as the longest speech, as the reference's "None" audio does.
        longest = max(len(t) for t in tracks if t is not None)
        tracks = [np.zeros(longest, dtype=np.float32) if t is None else t for t in tracks]
        per_person, mixed = combine_speakers(tracks, audio_type)
        _check_audio_length(int(len(mixed) / TARGET_SAMPLE_RATE * FPS), min_frames)
        embeddings = [
            encode_speech(self.audio_encoder, self.audio_feature_extractor, track, fps=FPS).float().to(device)
            for track in per_person
        ]
        return embeddings, mixed

    @staticmethod
    def _load_track(entry, index: int, normalize_loudness: bool) -> np.ndarray | None:
        if entry is None:  # a silent person (a listener); filled in by the caller
            return None
        if isinstance(entry, dict):
            entry = (entry.get("array"), entry.get("sampling_rate"))
        try:
            if isinstance(entry, tuple):
                if len(entry) != 2:
                    raise ValueError("a waveform entry must be (waveform, sampling_rate)")
                track = prepare_audio(entry[0], sampling_rate=entry[1], normalize_loudness=normalize_loudness)
            else:
                track = prepare_audio(entry, normalize_loudness=normalize_loudness)
        except (ValueError, FileNotFoundError, TypeError) as error:
            raise type(error)(f"audio of person {index + 1}: {error}") from error
        if float(np.abs(track).max()) < 1e-4:
            raise ValueError(
                f"audio of person {index + 1} is silent; give the person's speech, or None for a person who only "
                "listens."
            )
        return track

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int = 512,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        r"""
        Encodes the prompt (and, for classifier-free guidance, the negative prompt) into umT5 states.

        Args:
            prompt (`str` or `list[str]`, *optional*): the prompt (a list of one is accepted).
            negative_prompt (`str` or `list[str]`, *optional*): the negative prompt; defaults to the reference's.
            do_classifier_free_guidance (`bool`, *optional*, defaults to `True`): also encode the negative prompt.
            num_videos_per_prompt (`int`, *optional*, defaults to 1): repeats of the states along the batch.
            prompt_embeds / negative_prompt_embeds (`torch.Tensor`, *optional*): precomputed states `[1, L, dim]`.
            max_sequence_length (`int`, defaults to 512): the text length (Wan zero-pads past the real tokens).
            device (`torch.device`, *optional*) / dtype (`torch.dtype`, *optional*): where and in which dtype.

        Returns:
            `tuple[torch.Tensor, torch.Tensor | None]`: the prompt states and the negative prompt states (None without
            guidance).
        """
        device = device or self._execution_device
        if prompt_embeds is None:
            prompt_embeds = self._t5_embeds(prompt, max_sequence_length, device, dtype)
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype or prompt_embeds.dtype)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt = DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
            negative_prompt_embeds = self._t5_embeds(negative_prompt, max_sequence_length, device, dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(
                device=device, dtype=dtype or negative_prompt_embeds.dtype
            )
        if num_videos_per_prompt > 1:
            prompt_embeds = prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)
            if negative_prompt_embeds is not None:
                negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds

    def _t5_embeds(self, text, max_sequence_length, device, dtype):
        if isinstance(text, (list, tuple)):
            if len(text) != 1:
                raise ValueError(f"One prompt per call (a video takes one prompt), got a list of {len(text)}.")
            text = text[0]
        text = _whitespace_clean(text)
        num_tokens = len(self.tokenizer(text, add_special_tokens=True, verbose=False).input_ids)  # said below
        if num_tokens > max_sequence_length:
            logger.warning(
                f"The prompt is {num_tokens} tokens long; umT5 reads its first {max_sequence_length} "
                f"(`max_sequence_length`) and the rest is cut: shorten it to keep all of it."
            )
        inputs = self.tokenizer(
            [text],
            padding="max_length",
            max_length=max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        length = int(inputs.attention_mask.gt(0).sum())
        encoder_device = input_device(self.text_encoder)  # umT5 may stay on the CPU (enable_low_vram)
        with torch.no_grad():
            states = self.text_encoder(
                inputs.input_ids.to(encoder_device), inputs.attention_mask.to(encoder_device)
            ).last_hidden_state
        states = states[:, :length].to(device=device, dtype=dtype or states.dtype)
        # Wan keeps the real tokens and zero-pads (padded positions of umT5's output are not zero).
        return torch.cat([states, states.new_zeros(1, max_sequence_length - length, states.shape[-1])], dim=1)

    def encode_image(self, frames: torch.Tensor, device) -> torch.Tensor:
        """CLIP tokens of the last condition frame `[1, 257, dim]`, preprocessed as the reference does."""
        kwargs = {}
        if self.image_processor is not None:
            kwargs["image_size"] = _processor_image_size(self.image_processor)
        pixel_values = preprocess_clip_frames(frames[:, :, -1:].float(), layout="BCTHW", **kwargs)
        if self.image_processor is not None and (
            tuple(self.image_processor.image_mean) != CLIP_IMAGE_MEAN
            or tuple(self.image_processor.image_std) != CLIP_IMAGE_STD
        ):
            # Re-normalise with the processor's statistics (Wan's CLIP uses OpenAI's, the default).
            to_tensor = lambda v: torch.tensor(v).view(1, 3, 1, 1)  # noqa: E731
            pixels01 = pixel_values * to_tensor(CLIP_IMAGE_STD) + to_tensor(CLIP_IMAGE_MEAN)
            pixel_values = (pixels01 - to_tensor(self.image_processor.image_mean)) / to_tensor(
                self.image_processor.image_std
            )
        with torch.no_grad():
            return clip_image_features(self.image_encoder, pixel_values).to(device)

    def _vae_stats(self, device):
        mean = torch.tensor(self.vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)
        return mean, std

    def encode_frames(self, frames: torch.Tensor, device) -> torch.Tensor:
        """Normalised VAE latents of pixel frames `[1, 3, F, H, W]` in [-1, 1]."""
        with torch.no_grad():
            latent = self.vae.encode(frames.to(device=device, dtype=self.vae.dtype)).latent_dist.mode()
        mean, std = self._vae_stats(device)
        return ((latent.float() - mean) / std).float()

    def prepare_condition(self, cond_frames, num_frames, num_motion_frames, device):
        """VAE condition `[1, 4 + 16, T, h, w]` (mask channels, then the latent of the known frames zero-padded to
        `num_frames`) and the latents of the known frames."""
        _, channels, known, height, width = cond_frames.shape
        padded = torch.cat([cond_frames, cond_frames.new_zeros(1, channels, num_frames - known, height, width)], dim=2)
        latent = self.encode_frames(padded, device)
        lat_t, lat_h, lat_w = latent.shape[2:]
        mask = torch.zeros(1, num_frames, lat_h, lat_w, device=device)
        mask[:, :num_motion_frames] = 1
        mask = torch.cat([mask[:, :1].repeat_interleave(self.vae_scale_factor_temporal, dim=1), mask[:, 1:]], dim=1)
        mask = mask.view(1, lat_t, self.vae_scale_factor_temporal, lat_h, lat_w).transpose(1, 2)
        motion_latents = latent[:, :, : 1 + (num_motion_frames - 1) // self.vae_scale_factor_temporal]
        return torch.cat([mask, latent], dim=1), motion_latents

    def prepare_latents(self, shape, generator, device, latents=None):
        """Initial noise `[1, 16, T, h, w]` in float32 (drawn like the reference: one `randn` per chunk)."""
        if latents is not None:
            if tuple(latents.shape) != tuple(shape):
                raise ValueError(f"`latents` must have shape {tuple(shape)}, got {tuple(latents.shape)}.")
            return latents.to(device=device, dtype=torch.float32)
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixel frames `[1, 3, F, H, W]` in [-1, 1] of normalised latents."""
        mean, std = self._vae_stats(latents.device)
        latents = (latents * std + mean).to(self.vae.dtype)
        with torch.no_grad():
            return self.vae.decode(latents, return_dict=False)[0].float().clamp(-1, 1)

    def prepare_person_masks(self, num_persons, bbox, face_scale, source_size, pixel_size, device):
        """`[persons + 1, h, w]` masks at latent resolution, or None for one person (the model needs none)."""
        if num_persons == 1:
            return None
        src_h, src_w = source_size
        if bbox is not None:
            masks = person_masks_from_bboxes(bbox, src_h, src_w, num_persons=num_persons)
        else:
            masks = default_person_masks(num_persons, src_h, src_w, face_scale=face_scale)
        lat_h, lat_w = (size // self.vae_scale_factor_spatial for size in pixel_size)
        masks = latent_person_masks(masks, lat_h, lat_w, pixel_size=pixel_size)
        empty = [i for i in range(num_persons + 1) if masks[i].sum() == 0]
        if empty:
            names = ["background" if i == num_persons else f"person {i + 1}" for i in empty]
            raise ValueError(f"The masks of {names} cover no latent pixel; make the bounding boxes larger.")
        return masks.to(device)

    # ------------------------------------------------------------------------------------------------------------
    # The chunk plan
    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def plan_video(num_audio_frames, num_frames, motion_frames, max_frames=None, mode=None, warn=True) -> VideoPlan:
        """What to generate for audio of `num_audio_frames` video frames: the chunk length, the number of chunks and
        the frames kept. `mode` None/"auto" covers the whole audio (one clip when it fits, else streaming); "clip"
        is the reference's single chunk; audio (or a `max_frames` cap) shorter than a chunk gives one chunk of the
        shortest 4n+1 length that covers it. Logs a warning for audio that is not used (unless `warn` is False: an
        estimate made before the call, which will say it)."""
        limit = num_audio_frames if max_frames is None else min(max_frames, num_audio_frames)
        if warn and max_frames is not None and max_frames < num_audio_frames:
            logger.warning(
                f"max_frames={max_frames} cuts the video at {max_frames / FPS:.2f} s: the last "
                f"{(num_audio_frames - max_frames) / FPS:.2f} s of the {num_audio_frames / FPS:.2f} s audio are not used."
            )
        if mode == "clip" and limit > num_frames:
            if warn:
                logger.warning(
                    f"mode='clip' makes one chunk of {num_frames} frames ({num_frames / FPS:.2f} s): the last "
                    f"{(limit - num_frames) / FPS:.2f} s of the {limit / FPS:.2f} s audio are dropped; leave the mode "
                    "unset (or use 'streaming') for the whole audio."
                )
            return VideoPlan(chunk_frames=num_frames, num_chunks=1, num_frames=num_frames)
        if limit <= num_frames:
            chunk_frames = max(5, 4 * math.ceil((limit - 1) / 4) + 1)
            return VideoPlan(chunk_frames=chunk_frames, num_chunks=1, num_frames=limit)
        check_motion_frames(motion_frames, num_frames)
        num_chunks, keep = WanAudioPipelineBase.plan_chunks(
            num_audio_frames, num_frames, motion_frames, limit, "streaming"
        )
        return VideoPlan(chunk_frames=num_frames, num_chunks=num_chunks, num_frames=keep)

    @staticmethod
    def plan_chunks(num_audio_frames, num_frames, motion_frames, max_frames, mode):
        """How many chunks the reference's loop generates, and the frames it keeps."""
        if mode == "clip":
            return 1, num_frames
        stride = num_frames - motion_frames
        limit = min(max_frames, num_audio_frames)
        chunks, end = 1, num_frames
        while end < limit:
            end += stride
            chunks += 1
        if chunks == 1:  # the reference always goes round once more before checking
            chunks = 2
        return chunks, limit

    def latent_shape(self, plan: VideoPlan, pixel_size) -> tuple[int, ...]:
        lat_t = (plan.chunk_frames - 1) // self.vae_scale_factor_temporal + 1
        lat_h, lat_w = (size // self.vae_scale_factor_spatial for size in pixel_size)
        return (1, self.transformer.config.out_channels, lat_t, lat_h, lat_w)

    # ------------------------------------------------------------------------------------------------------------
    # Denoising one chunk
    # ------------------------------------------------------------------------------------------------------------
    def prepare_chunk_conditioning(self, source, chunk: Chunk, previous_video, num_frames, motion_frames, device):
        """What conditions `chunk` (a [`ChunkConditioning`]): each sibling pipeline's own rule."""
        raise NotImplementedError

    def pin_motion_latents(self, latents: torch.Tensor, motion_latents: torch.Tensor) -> torch.Tensor:
        """Called before every forward pass and after every step; MultiTalk leaves its re-noised motion latents be."""
        return latents

    def predict_noise(self, latent_model_input, t, step, prompt_embeds, negative_prompt_embeds, image_embeds,
                      audio_embeds, person_masks, apg: APGState | None):  # fmt: skip
        """The guided flow prediction of one step: three passes (prompt + audio, negative prompt + audio, negative
        prompt + silent audio) with a text scale other than 1, else two (prompt + audio, prompt + silent audio)."""
        silent_audio = torch.zeros_like(audio_embeds[:, -1:])
        sigma = float(scheduler_noise_level(self.scheduler))
        cache_step = dict(step_index=step, num_inference_steps=self._num_timesteps, timestep=t, sigma=sigma)

        def run(branch, text, audio):
            # Each guidance branch has its own cache context (TeaCache, FirstBlockCache, ...).
            with self.transformer.cache_context(branch, **cache_step):
                return self.transformer(
                    latent_model_input, t.expand(1), text, image_embeds, audio,
                    ref_target_masks=person_masks, return_dict=False, attention_kwargs=self.attention_kwargs,
                )[0].float()  # fmt: skip

        noise_cond = run("cond", prompt_embeds, audio_embeds)
        if self.do_text_guidance:
            noise_drop_text = run("drop_text", negative_prompt_embeds, audio_embeds)
            noise_uncond = run("uncond", negative_prompt_embeds, silent_audio)
            return combine_guidance(
                noise_cond, noise_drop_text, noise_uncond, self.guidance_scale, self.audio_guidance_scale, apg
            )
        noise_drop_audio = run("drop_audio", prompt_embeds, silent_audio)
        return combine_guidance_two_pass(noise_cond, noise_drop_audio, self.audio_guidance_scale, apg)

    def denoise_chunk(
        self,
        latents: torch.Tensor,
        conditioning: ChunkConditioning,
        chunk: Chunk,
        timesteps: torch.Tensor,
        audio_embeds: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        person_masks: torch.Tensor | None,
        generator: torch.Generator | None,
        progress_bar,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> torch.Tensor:
        """Denoises one chunk's `latents` over `timesteps` (set on `self.scheduler`) with `self.scheduler.step`.

        For every chunk but the first, the motion latents are re-noised into the leading latent frames at the
        scheduler's noise level, before the loop and after every step, as the reference does; then
        `pin_motion_latents` (before every forward pass and after every step) applies the sibling's rule."""
        dtype = self.transformer.dtype
        image_embeds, condition = conditioning.image_embeds.to(dtype), conditioning.condition.to(dtype)
        motion = conditioning.motion_latents
        device = latents.device
        apg = APGState(self._apg_momentum, self._apg_norm_threshold) if self._use_apg else None
        step_kwargs = (
            {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        )
        if not chunk.is_first:
            noise = torch.randn(motion.shape, generator=generator, device=device)
            latents[:, :, : motion.shape[2]] = add_noise_flow(motion, noise, scheduler_noise_level(self.scheduler))
        for i, t in enumerate(timesteps):
            if self.interrupt:
                continue
            self._current_timestep = t
            latents = self.pin_motion_latents(latents, motion)
            latent_model_input = torch.cat([latents.to(dtype), condition], dim=1)
            noise_pred = self.predict_noise(
                latent_model_input, t, i, prompt_embeds, negative_prompt_embeds, image_embeds, audio_embeds,
                person_masks, apg,
            )  # fmt: skip
            latents = self.scheduler.step(noise_pred, t, latents, return_dict=False, **step_kwargs)[0]
            if not chunk.is_first:
                noise = torch.randn(motion.shape, generator=generator, device=device)
                sigma = scheduler_noise_level(self.scheduler)
                latents[:, :, : motion.shape[2]] = add_noise_flow(motion, noise, sigma)
            latents = self.pin_motion_latents(latents, motion)

            if callback_on_step_end is not None:
                latents, prompt_embeds, negative_prompt_embeds = self.run_step_callback(
                    callback_on_step_end, callback_on_step_end_tensor_inputs, chunk.index * len(timesteps) + i, t,
                    latents=latents, noise_pred=noise_pred, prompt_embeds=prompt_embeds,
                    negative_prompt_embeds=negative_prompt_embeds, audio_embeds=audio_embeds,
                )  # fmt: skip
            progress_bar.update()
        return latents

    def run_step_callback(self, callback, tensor_inputs, step: int, t, **available):
        """diffusers' `callback_on_step_end` after one step: the tensors it asks for (`tensor_inputs`) in, and back
        the `latents`, `prompt_embeds` and `negative_prompt_embeds` it returns (or the ones it left alone)."""
        outputs = callback(self, step, t, {k: available[k] for k in tensor_inputs})
        return tuple(outputs.pop(k, available[k]) for k in ("latents", "prompt_embeds", "negative_prompt_embeds"))

    def set_chunk_timesteps(self, num_inference_steps: int, shift: float | None, device) -> torch.Tensor:
        """Resets the scheduler for a chunk (every chunk starts from pure noise) and the cache hooks' state (each
        chunk starts its caches afresh, as the reference's TeaCache counter does)."""
        reset_stateful_cache(self.transformer)
        timesteps = set_chunk_timesteps(self.scheduler, num_inference_steps, shift, device=device)
        self._num_timesteps = len(timesteps)
        return timesteps

    def finish_chunk(self, latents, chunk: Chunk, conditioning: ChunkConditioning, video_out: ChunkedVideo,
                     color_reference, color_correction_strength: float):  # fmt: skip
        """Hands a denoised chunk to `video_out`: its latents, or its decoded frames colour-matched to
        `color_reference`. Returns the decoded chunk, which the next chunk continues from (None after the last
        chunk of a latent output, which is not decoded)."""
        if video_out.output_type == "latent":
            video_out.add_latents(latents, chunk, conditioning.motion_latents.shape[2])
            if chunk.is_last:
                return None
        video = self.decode_latents(latents)
        if color_reference is not None and color_correction_strength > 0:
            video = match_color_lab(video, color_reference, color_correction_strength)
        if video_out.output_type != "latent":
            video_out.add_frames(video, chunk, conditioning.num_motion_frames, self.video_processor.postprocess_video)
        return video

    def postprocess(self, videos: list[torch.Tensor], output_type: str):
        """The takes' frames `[1, 3, F, H, W]` (or latents) as the call's `frames`."""
        if output_type == "latent":
            return torch.cat(videos, dim=0)
        if any(video is None for video in videos):
            return None
        return self.video_processor.postprocess_video(torch.cat(videos, dim=0), output_type=output_type)

    def start_call(self, guidance_scale, audio_guidance_scale, attention_kwargs, use_apg, apg_momentum,
                   apg_norm_threshold) -> None:  # fmt: skip
        """Sets the call-level state that callbacks and `denoise_chunk` read, as diffusers' pipelines do."""
        self._guidance_scale, self._audio_guidance_scale = guidance_scale, audio_guidance_scale
        self._attention_kwargs = attention_kwargs
        self._use_apg, self._apg_momentum, self._apg_norm_threshold = use_apg, apg_momentum, apg_norm_threshold
        self._interrupt = False
        self._current_timestep = None
        self._num_timesteps = None

    def end_call(self) -> None:
        self._current_timestep = None
        reset_stateful_cache(self.transformer)
        self.maybe_free_model_hooks()

    # ------------------------------------------------------------------------------------------------------------
    # Properties used by callbacks
    # ------------------------------------------------------------------------------------------------------------
    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def audio_guidance_scale(self):
        return self._audio_guidance_scale

    @property
    def do_text_guidance(self) -> bool:
        """Whether the text guidance pass runs (a text scale other than 1)."""
        return not math.isclose(self._guidance_scale, 1.0)

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.do_text_guidance or not math.isclose(self._audio_guidance_scale, 1.0)

    @property
    def attention_kwargs(self) -> dict[str, Any] | None:
        return self._attention_kwargs

    @property
    def num_timesteps(self):
        return self._num_timesteps

    @property
    def current_timestep(self):
        return self._current_timestep

    @property
    def interrupt(self):
        return self._interrupt
