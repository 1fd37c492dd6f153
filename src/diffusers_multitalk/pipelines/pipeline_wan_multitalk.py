"""WanMultiTalkPipeline: audio-driven (multi-person) talking video from a reference image, as MultiTalk does it."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.loaders import WanLoraLoaderMixin
from diffusers.utils import BaseOutput, logging, replace_example_docstring
from diffusers.video_processor import VideoProcessor
from transformers import (
    CLIPVisionModel,
    PreTrainedTokenizerBase,
    UMT5EncoderModel,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from ..audio.encoder import encode_speech
from ..audio.processing import TARGET_SAMPLE_RATE, combine_speakers, prepare_audio
from ..audio.tts import parse_dialogue, synthesize_dialogue
from ..models.transformer_multitalk import MultiTalkTransformer3DModel
from ..utils.defaults import DEFAULT_SHIFT
from ..utils.devices import input_device
from .chunk_loop import ChunkConditioning, ChunkLoopSettings, run_chunk_loop
from .clip_features import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, clip_image_features, preprocess_clip_frames
from .image_processing import closest_bucket, load_image_any, resize_and_center_crop, resolution_buckets
from .model_index import MultiTalkModelIndexMixin
from .person_masks import default_person_masks, latent_person_masks, person_masks_from_bboxes


logger = logging.get_logger(__name__)

# The reference's default negative prompt (English translation it ships with).
DEFAULT_NEGATIVE_PROMPT = (
    "bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, overall "
    "gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn hands, "
    "poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy background, three "
    "legs, many people in the background, walking backwards"
)
FPS = 25

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_multitalk import WanMultiTalkPipeline, export_to_video_with_audio

        >>> pipe = WanMultiTalkPipeline.from_original(
        ...     "weights/Wan2.1-I2V-14B-480P", "weights/MeiGen-MultiTalk", "weights/chinese-wav2vec2-base",
        ...     torch_dtype=torch.bfloat16,
        ... ).to("cuda")
        >>> out = pipe(image="podcast.png", audio=["host.wav", "guest.wav"], prompt="Two people talk in a studio.")
        >>> export_to_video_with_audio(out.frames[0], out.audio, "podcast.mp4", fps=25)
        ```
"""


@dataclass
class WanMultiTalkPipelineOutput(BaseOutput):
    """
    Output of [`WanMultiTalkPipeline`].

    Args:
        frames: the video, `[batch, frames, height, width, 3]` (np, in [0, 1]), a tensor `[batch, frames, 3, H, W]`
            ("pt"), a list of lists of PIL images ("pil"), or, for `output_type="latent"`, the list of each chunk's
            latents `[1, 16, T, h, w]`.
        audio: the mixed 16 kHz audio track the video carries, trimmed to the video's length (None when only
            precomputed embeddings were given).
        sample_rate: sample rate of `audio`.
        fps: frame rate of `frames`.
        video_path: the mp4 written when `output_path` was given (`frames` is then None).
    """

    frames: Any
    audio: np.ndarray | None
    sample_rate: int = TARGET_SAMPLE_RATE
    fps: int = FPS
    video_path: str | None = None


class VideoPlan(NamedTuple):
    """What one call generates: chunks of `chunk_frames` frames, `num_chunks` of them, `num_frames` kept."""

    chunk_frames: int
    num_chunks: int
    num_frames: int


def _whitespace_clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _is_embedding(entry) -> bool:
    return isinstance(entry, torch.Tensor) and entry.ndim == 3


class WanMultiTalkPipeline(MultiTalkModelIndexMixin, DiffusionPipeline, WanLoraLoaderMixin):
    r"""
    Audio-driven talking video generation with MultiTalk (Wan2.1-I2V-14B + audio adapter).

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]): umT5 tokenizer (`google/umt5-xxl`).
        text_encoder ([`~transformers.UMT5EncoderModel`]): Wan's umT5-XXL encoder.
        image_encoder ([`~transformers.CLIPVisionModel`]): Wan's open-clip XLM-RoBERTa ViT-H/14 vision tower.
        transformer ([`MultiTalkTransformer3DModel`]): the MultiTalk DiT.
        vae ([`~diffusers.AutoencoderKLWan`]): Wan2.1's VAE.
        scheduler ([`~diffusers.FlowMatchEulerDiscreteScheduler`]): loaded with MultiTalk's shifted schedule each
            chunk (see `set_multitalk_timesteps`).
        audio_encoder ([`~transformers.Wav2Vec2Model`]): chinese-wav2vec2-base.
        audio_feature_extractor ([`~transformers.Wav2Vec2FeatureExtractor`]): its feature extractor.
        image_processor ([`~transformers.CLIPImageProcessor`], *optional*): only its `image_mean`, `image_std` and
            crop size are used; the pixels follow the reference's tensor path (bicubic resize of the [-1, 1] frame),
            whose numbers differ from the PIL path.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->audio_encoder->transformer->vae"
    _optional_components = ["image_processor"]
    _callback_tensor_inputs = ["latents", "noise_pred"]

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
        image_processor: CLIPImageProcessor | None = None,  # noqa: F821 - any CLIP image processor class
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

    # ------------------------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def from_original(
        cls,
        wan_dir,
        multitalk_dir=None,
        wav2vec_dir=None,
        torch_dtype: torch.dtype | None = None,
        lora_path=None,
        lora_scale: float = 1.0,
        quant: str | None = None,
        quant_dir=None,
        quant_dit_path=None,
    ) -> WanMultiTalkPipeline:
        """Builds the pipeline from the official folders as users download them.

        Args:
            wan_dir: `Wan2.1-I2V-14B-480P/` (or 720P): DiT shards, `models_t5_umt5-xxl-enc-bf16.pth`,
                `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`, `Wan2.1_VAE.pth`, `google/umt5-xxl/`.
            multitalk_dir: `MeiGen-MultiTalk/` (its `multitalk.safetensors`); not needed if already linked into
                `wan_dir` with its index, as MultiTalk's README does.
            wav2vec_dir: `chinese-wav2vec2-base/`.
            torch_dtype: dtype of the DiT, text and image encoders (the VAE and wav2vec2 stay float32, as the
                reference runs them).
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
        torch_dtype: torch.dtype | None = None,
    ) -> WanMultiTalkPipeline:
        """Builds the pipeline from diffusers' Wan2.1-I2V repo (`Wan-AI/Wan2.1-I2V-14B-480P-Diffusers`: tokenizer,
        text_encoder, image_encoder, image_processor, vae and transformer subfolders), MeiGen-MultiTalk's
        `multitalk.safetensors` and chinese-wav2vec2-base. The repo's scheduler is replaced by MultiTalk's
        flow-matching schedule."""
        from transformers import AutoTokenizer

        from ..audio.encoder import WAV2VEC_DOWNLOAD_HINT
        from .sampling import make_multitalk_scheduler

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
    # Inputs
    # ------------------------------------------------------------------------------------------------------------
    def check_inputs(
        self,
        image,
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
        dialogue=None,
        dialogue_voices=None,
        text_guidance_scale=5.0,
        audio_guidance_scale=4.0,
        output_path=None,
    ):
        if image is None:
            raise ValueError("`image` is required: the reference image of the person(s).")
        if dialogue is not None:
            if audio is not None:
                raise ValueError("Give either `audio` (recordings) or `dialogue` (a script to speak), not both.")
            if not isinstance(dialogue, str):
                raise ValueError(
                    f"`dialogue` must be a string such as '(s1) Hi! (s2) Hello.', got {type(dialogue).__name__}."
                )
            turns = parse_dialogue(dialogue)  # clear errors for empty text, text before the first tag, (s0)
            num_persons = max(len(dialogue_voices or ()), max(turn.speaker for turn in turns) + 1)
            silent = sorted({*range(num_persons)} - {turn.speaker for turn in turns})
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
        else:
            num_persons = len(_audio_entries(audio))
        max_persons = self.transformer.config.class_range // self.transformer.config.class_interval
        if num_persons > max_persons:
            raise ValueError(
                f"{num_persons} audio tracks given; this model tells at most {max_persons} persons apart "
                f"(class_range {self.transformer.config.class_range} / class_interval "
                f"{self.transformer.config.class_interval}). MultiTalk was trained with 1 or 2."
            )
        if audio_type not in ("add", "para"):
            raise ValueError(f"`audio_type` must be 'add' (turns) or 'para' (simultaneous), got {audio_type!r}.")
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
        if bbox is not None and len(bbox) != num_persons:
            raise ValueError(f"{len(bbox)} bounding boxes for {num_persons} persons: give one `bbox` per person.")
        if (height is None) != (width is None):
            raise ValueError("Give both `height` and `width`, or neither (then `resolution` picks the bucket).")
        if height is not None and (height % 16 or width % 16 or height <= 0 or width <= 0):
            raise ValueError(f"`height` and `width` must be positive multiples of 16, got {height}x{width}.")
        if mode not in (None, "auto", "clip", "streaming"):
            raise ValueError(
                f"`mode` must be None/'auto' (the whole audio), 'clip' (one chunk) or 'streaming', got {mode!r}."
            )
        if num_frames < 5 or (num_frames - 1) % 4:
            raise ValueError(f"`num_frames` must be 4n+1 and at least 5 (e.g. 81), got {num_frames}.")
        if mode == "streaming":  # the default mode checks it in plan_video, once it knows the audio's length
            _check_motion_frames(motion_frames, num_frames)
        if max_frames is not None and max_frames < 5:
            raise ValueError(f"`max_frames` must be None (no cap) or at least 5 frames, got {max_frames}.")
        for name, scale in (
            ("text_guidance_scale", text_guidance_scale),
            ("audio_guidance_scale", audio_guidance_scale),
        ):
            if not math.isfinite(scale) or scale < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0 (1 turns that guidance off), got {scale}.")
        if output_path is not None and output_type == "latent":
            raise ValueError("`output_path` writes decoded frames: it cannot be combined with output_type='latent'.")
        if num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be >= 1, got {num_inference_steps}.")
        if output_type not in ("np", "pt", "pil", "latent"):
            raise ValueError(f"`output_type` must be 'np', 'pt', 'pil' or 'latent', got {output_type!r}.")
        if callback_on_step_end_tensor_inputs is not None:
            bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if bad:
                raise ValueError(f"`callback_on_step_end_tensor_inputs` {bad} not in {self._callback_tensor_inputs}.")

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
                f"The image is {src_w}x{src_h} (w x h), smaller than the {width}x{height} target "
                f"({'bucket of ' + str(resolution) if resolution else 'size asked'}). Use a larger image, a smaller "
                "`resolution`/`height`/`width`, or pass `allow_upscale=True` to upscale it as the original does."
            )
        pixels = resize_and_center_crop(pil, height, width)
        return pixels[None, :, None], (src_h, src_w)

    def prepare_audio_inputs(self, audio, audio_type, device, min_frames: int = 0, normalize_loudness: bool = True):
        """Turns the per-person audio entries into wav2vec2 embeddings `[frames, layers, hidden]` (float32) and the
        mixed track. Entries: a path, a `(waveform, sampling_rate)` tuple, a `{"array", "sampling_rate"}` dict, or a
        precomputed embedding tensor `[frames, layers, hidden]` (then no mixed track). Audio shorter than one video
        frame (or covering no more than `min_frames` frames, when given) is refused before the audio encoder runs."""
        entries = _audio_entries(audio)
        if all(e is None for e in entries):
            raise ValueError("Every person's audio is None (silent); give at least one person's speech.")
        if all(_is_embedding(e) for e in entries):
            embeddings = [e.float().to(device) for e in entries]
            _check_audio_length(min(len(e) for e in embeddings), min_frames)
            return embeddings, None
        if any(_is_embedding(e) for e in entries):
            raise ValueError("Give either waveforms/paths for every person or embeddings for every person, not a mix.")
        tracks = []
        for index, entry in enumerate(entries):
            if entry is None:  # a silent person (a listener); filled in below
                tracks.append(None)
                continue
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
                    f"audio of person {index + 1} is silent; give the person's speech (None makes a person a silent listener)."
                )
            tracks.append(track)
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

    def encode_prompt(
        self,
        prompt: str | None,
        negative_prompt: str | None = None,
        do_classifier_free_guidance: bool = True,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int = 512,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        """umT5 states of the prompt (and negative prompt), zero-padded to `max_sequence_length`: `[1, L, dim]`."""
        device = device or self._execution_device
        if prompt_embeds is None:
            prompt_embeds = self._t5_embeds(prompt, max_sequence_length, device, dtype)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt = DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
            negative_prompt_embeds = self._t5_embeds(negative_prompt, max_sequence_length, device, dtype)
        return prompt_embeds, negative_prompt_embeds

    def prepare_prompt_states(
        self, prompt, negative_prompt, text_guidance_scale, prompt_embeds, negative_prompt_embeds,
        max_sequence_length, device, dtype,
    ):  # fmt: skip
        """The umT5 states a call needs, on the device in the DiT's dtype: the negative prompt's only for the
        three-pass guidance (a text scale other than 1)."""
        three_pass = not math.isclose(text_guidance_scale, 1.0)
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, negative_prompt, three_pass, prompt_embeds, negative_prompt_embeds, max_sequence_length, device,
            dtype,
        )  # fmt: skip
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype)
        if three_pass:
            negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype)
        return prompt_embeds, negative_prompt_embeds

    def _t5_embeds(self, text, max_sequence_length, device, dtype):
        inputs = self.tokenizer(
            [_whitespace_clean(text)],
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

    def prepare_condition(self, cond_frames, num_frames, num_motion_frames, device):
        """VAE condition `[1, 4 + 16, T, h, w]` (mask channels, then the latent of the known frames zero-padded to
        `num_frames`) and the latents of the known frames."""
        _, channels, known, height, width = cond_frames.shape
        padded = torch.cat(
            [cond_frames, cond_frames.new_zeros(1, channels, num_frames - known, height, width)], dim=2
        ).to(device=device, dtype=self.vae.dtype)
        with torch.no_grad():
            latent = self.vae.encode(padded).latent_dist.mode()
        mean, std = self._vae_stats(device)
        latent = ((latent.float() - mean) / std).float()
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

    def decode_latents(self, latents):
        mean, std = self._vae_stats(latents.device)
        latents = (latents * std + mean).to(self.vae.dtype)
        with torch.no_grad():
            return self.vae.decode(latents, return_dict=False)[0].float().clamp(-1, 1)

    def prepare_person_masks(self, num_persons, bbox, face_scale, source_size, pixel_size, latent_size):
        """`[persons + 1, h, w]` masks at latent resolution, or None for one person (the model needs none)."""
        if num_persons == 1:
            return None
        src_h, src_w = source_size
        if bbox is not None:
            masks = person_masks_from_bboxes(bbox, src_h, src_w, num_persons=num_persons)
        else:
            masks = default_person_masks(num_persons, src_h, src_w, face_scale=face_scale)
        masks = latent_person_masks(masks, latent_size[0], latent_size[1], pixel_size=pixel_size)
        empty = [i for i in range(num_persons + 1) if masks[i].sum() == 0]
        if empty:
            names = ["background" if i == num_persons else f"person {i + 1}" for i in empty]
            raise ValueError(f"The masks of {names} cover no latent pixel; make the bounding boxes larger.")
        return masks

    @staticmethod
    def plan_video(num_audio_frames, num_frames, motion_frames, max_frames=None, mode=None) -> VideoPlan:
        """What to generate for audio of `num_audio_frames` video frames: the chunk length, the number of chunks and
        the frames kept. `mode` None/"auto" covers the whole audio (one clip when it fits, else streaming); "clip"
        is the reference's single chunk; audio (or a `max_frames` cap) shorter than a chunk gives one chunk of the
        shortest 4n+1 length that covers it. Logs a warning for audio that is not used."""
        limit = num_audio_frames if max_frames is None else min(max_frames, num_audio_frames)
        if max_frames is not None and max_frames < num_audio_frames:
            logger.warning(
                f"max_frames={max_frames} cuts the video at {max_frames / FPS:.2f} s: the last "
                f"{(num_audio_frames - max_frames) / FPS:.2f} s of the {num_audio_frames / FPS:.2f} s audio are not used."
            )
        if mode == "clip" and limit > num_frames:
            logger.warning(
                f"mode='clip' makes one chunk of {num_frames} frames ({num_frames / FPS:.2f} s): the last "
                f"{(limit - num_frames) / FPS:.2f} s of the {limit / FPS:.2f} s audio are dropped; leave the mode "
                "unset (or use 'streaming') for the whole audio."
            )
            return VideoPlan(chunk_frames=num_frames, num_chunks=1, num_frames=num_frames)
        if limit <= num_frames:
            chunk_frames = max(5, 4 * math.ceil((limit - 1) / 4) + 1)
            return VideoPlan(chunk_frames=chunk_frames, num_chunks=1, num_frames=limit)
        _check_motion_frames(motion_frames, num_frames)
        num_chunks, keep = WanMultiTalkPipeline.plan_chunks(
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

    # ------------------------------------------------------------------------------------------------------------
    # Properties used by callbacks
    # ------------------------------------------------------------------------------------------------------------
    @property
    def num_timesteps(self):
        return self._num_timesteps

    @property
    def current_timestep(self):
        return self._current_timestep

    @property
    def interrupt(self):
        return self._interrupt

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
        bbox: Sequence[Sequence[float]] | dict | None = None,
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
        Generates a talking video.

        Args:
            image: the reference image (PIL, array, tensor or path).
            audio: one entry per person: a path (wav/mp3/flac/m4a or a video file), a `(waveform, sampling_rate)`
                tuple, a `{"array", "sampling_rate"}` dict, or precomputed wav2vec2 embeddings
                `[frames at 25 fps, layers, hidden]`. A single entry may be given without a list. `None` makes a
                person silent (a listener; the reference's `"None"` audio): silence as long as the longest speech.
            prompt / negative_prompt: text; the negative prompt defaults to the reference's.
            audio_type: "add" (persons speak in turn: person 1's track, then person 2's) or "para" (simultaneous;
                the shorter track is padded with silence).
            bbox: one box per person, `[top, left, bottom, right]` in source-image pixels (the reference's
                `[x_min, y_min, x_max, y_max]` whose first pair indexes rows). Without boxes: two persons get the
                left/right halves with `face_scale` margins, N persons N vertical strips.
            face_scale: margin of the default person regions.
            resolution: "multitalk-480" or "multitalk-720": the nearest aspect bucket of the reference (resize +
                centre crop). Ignored when `height`/`width` are given (multiples of 16).
            allow_upscale: allow source images smaller than the target size (the reference upsamples silently).
            mode: None or "auto" (the default: the whole audio, as one clip when it fits in `num_frames`, else
                streaming), "clip" (the reference's one chunk of `num_frames`; longer audio is cut, with a warning)
                or "streaming" (chunks overlapping by `motion_frames` until the audio ends). Audio shorter than a
                chunk gives one shorter chunk (the shortest 4n+1 frame count that covers it, at least 5 frames).
            num_frames: frames per chunk, 4n+1 (81).
            motion_frames: frames each streaming chunk is conditioned on (25).
            max_frames: a cap on the video's length in frames (None: no cap; InfiniteTalk's `--max_frame_num`);
                a warning says how much audio it cuts.
            num_inference_steps: steps per chunk (40).
            shift: timestep shift; default 7 at 480P, 11 at 720P.
            text_guidance_scale / audio_guidance_scale: 5 / 4. With a text scale of 1 two passes run per step
                (conditional and silent audio); otherwise three (conditional, negative text, negative text +
                silent audio).
            use_apg / apg_momentum / apg_norm_threshold: adaptive projected guidance.
            color_correction_strength: LAB colour matching of every chunk to the reference image (0 disables).
            generator: a `torch.Generator` on the execution device for reproducible noise (the reference's
                `torch.manual_seed(seed)` on that device draws the same numbers).
            latents: initial noise of the first chunk `[1, 16, T, h, w]`.
            prompt_embeds / negative_prompt_embeds: precomputed umT5 states `[1, L, dim]`.
            max_sequence_length: text length (512).
            output_type: "np", "pt", "pil" or "latent".
            return_dict: return a [`WanMultiTalkPipelineOutput`] instead of a tuple.
            callback_on_step_end: called after every step as `callback(pipe, step, timestep, callback_kwargs)`; may
                return a dict replacing `latents`.
            callback_on_step_end_tensor_inputs: the tensors passed in `callback_kwargs` ("latents", "noise_pred").
            attention_kwargs: passed to the transformer.
            dialogue: instead of `audio`, a script to speak with text-to-speech: `"(s1) Do you know MultiTalk?
                (s2) Yes, I do!"` (`(sN)` starts person N's turn; untagged text is person 1's). Each person gets
                a track that is silent while the others speak, so `audio_type` does not apply.
            dialogue_voices: one voice per person for `dialogue` (Kokoro names such as "af_heart", `.pt` files of a
                Kokoro-82M folder, or espeak-ng voices); None for the engine's defaults.
            tts_engine: None (Kokoro-82M when its weights are found, else espeak-ng, with a warning saying why),
                "kokoro" (never falls back) or "espeak-ng"; see `diffusers_multitalk.audio.tts.resolve_tts_engine`.
            normalize_loudness: bring each person's speech to -23 LUFS before wav2vec2, as the reference does for
                recordings. Speech from `dialogue` is used as synthesised (the reference's TTS mode), whatever this
                says; pass False for TTS tracks of your own.
            output_path: write the video (with the mixed audio) to this mp4 as each chunk is decoded, so memory stays
                flat however long the video is; the output's `frames` is then None and `video_path` names the file.
                The file appears only when complete (a hidden part file until then, removed on any error).

        Examples:
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        self.check_inputs(
            image,
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
        if dialogue is not None:
            audio, audio_type, normalize_loudness = _dialogue_audio(dialogue, dialogue_voices, tts_engine)
        shift = DEFAULT_SHIFT.get(str(resolution), 7.0) if shift is None else shift
        self._interrupt = False
        self._current_timestep = None

        # 1. Image and audio (cheap checks first, then the audio encoder)
        cond_frames, source_size = self.prepare_image(image, resolution, height, width, allow_upscale)
        height, width = cond_frames.shape[-2:]
        color_reference = cond_frames.clone() if color_correction_strength > 0 else None
        num_persons = len(_audio_entries(audio))
        frames, audio_out, video_path = self.generate_chunks(
            cond_frames, source_size, (height, width), num_persons, color_reference,
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
        if not return_dict:
            return (frames, audio_out)
        return WanMultiTalkPipelineOutput(frames=frames, audio=audio_out, video_path=video_path)

    def generate_chunks(
        self, source, source_size, pixel_size, num_persons, color_reference, *, audio, audio_type,
        normalize_loudness, bbox, face_scale, mode, num_frames, motion_frames, max_frames, prompt, negative_prompt,
        prompt_embeds, negative_prompt_embeds, max_sequence_length, num_inference_steps, shift, text_guidance_scale,
        audio_guidance_scale, use_apg, apg_momentum, apg_norm_threshold, color_correction_strength, output_type,
        callback_on_step_end, callback_on_step_end_tensor_inputs, attention_kwargs, generator, latents, output_path,
    ):  # fmt: skip
        """What both pipelines do once their source is prepared (MultiTalk's conditioning frames, InfiniteTalk's
        source video): the person masks, the audio embeddings and the plan, the text states, then the shared chunk
        loop with this pipeline's conditioning. Returns `(frames, audio, video_path)`."""
        device = self._execution_device
        transformer_dtype = self.transformer.dtype
        height, width = pixel_size
        lat_h, lat_w = height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial
        person_masks = self.prepare_person_masks(num_persons, bbox, face_scale, source_size, pixel_size, (lat_h, lat_w))
        if person_masks is not None:
            person_masks = person_masks.to(device)
        embeddings, mixed_audio = self.prepare_audio_inputs(
            audio, audio_type, device, normalize_loudness=normalize_loudness
        )
        num_audio_frames = min(len(e) for e in embeddings)
        plan = self.plan_video(num_audio_frames, num_frames, motion_frames, max_frames, mode)
        prompt_embeds, negative_prompt_embeds = self.prepare_prompt_states(
            prompt, negative_prompt, text_guidance_scale, prompt_embeds, negative_prompt_embeds, max_sequence_length,
            device, transformer_dtype,
        )  # fmt: skip
        settings = ChunkLoopSettings(
            num_inference_steps=num_inference_steps, shift=shift, text_guidance_scale=text_guidance_scale,
            audio_guidance_scale=audio_guidance_scale, use_apg=use_apg, apg_momentum=apg_momentum,
            apg_norm_threshold=apg_norm_threshold, color_correction_strength=color_correction_strength,
            output_type=output_type, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=tuple(callback_on_step_end_tensor_inputs),
            attention_kwargs=attention_kwargs, fps=FPS,
        )  # fmt: skip
        return run_chunk_loop(
            self, source, embeddings, plan, motion_frames, (lat_h, lat_w), prompt_embeds, negative_prompt_embeds,
            person_masks, color_reference, mixed_audio, settings, generator=generator, latents=latents,
            output_path=output_path,
        )  # fmt: skip

    def prepare_chunk_conditioning(
        self, source, chunk_index, audio_start, previous_video, num_frames, motion_frames, device
    ) -> ChunkConditioning:
        """MultiTalk's rule for a chunk: the first is conditioned on the reference image `source`, later ones on the
        last `motion_frames` generated frames (all marked known in the VAE condition; CLIP sees the last of them)."""
        if chunk_index == 0:
            cond_frames, num_motion = source, 1
        else:
            cond_frames, num_motion = previous_video[:, :, -motion_frames:], motion_frames
        image_embeds = self.encode_image(cond_frames, device)
        condition, motion_latents = self.prepare_condition(cond_frames, num_frames, num_motion, device)
        return ChunkConditioning(image_embeds, condition, motion_latents, num_motion)

    def pin_motion_latents(self, latents: torch.Tensor, motion_latents: torch.Tensor) -> torch.Tensor:
        """Called before every forward pass and after every step; MultiTalk leaves its re-noised motion latents be."""
        return latents


def clip_image_processor_class():
    """transformers' CLIP image processor class: without torchvision, transformers 5's PIL one (its plain
    `CLIPImageProcessor` then warns and falls back to it anyway); transformers 4's `CLIPImageProcessor`."""
    import importlib.util

    import transformers

    if importlib.util.find_spec("torchvision") is None and hasattr(transformers, "CLIPImageProcessorPil"):
        return transformers.CLIPImageProcessorPil
    return transformers.CLIPImageProcessor


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


def _dialogue_audio(dialogue, voices, engine) -> tuple[list, str, bool]:
    """A TTS script -> the call's `audio`, `audio_type` and `normalize_loudness`: the script's turns are laid out on
    the tracks already, so they are mixed as they are ("para"), their loudness left as the engine made it."""
    tracks, _ = synthesize_dialogue(dialogue, voices=voices, engine=engine)
    return [(track, TARGET_SAMPLE_RATE) for track in tracks], "para", False


def _audio_entries(audio) -> list:
    if isinstance(audio, (list, tuple)) and not (
        isinstance(audio, tuple) and len(audio) == 2 and isinstance(audio[1], (int, np.integer))
    ):
        return list(audio)
    return [audio]


def _check_motion_frames(motion_frames: int, num_frames: int) -> None:
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
