"""MultiTalk's diffusion transformer: Wan2.1-I2V plus an audio adapter and L-RoPE person binding."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import (
    WanRotaryPosEmbed,
    WanTimeTextImageEmbedding,
    WanTransformerBlock,
)
from diffusers.utils import apply_lora_scale, logging
from diffusers.utils.torch_utils import maybe_allow_in_graph

from .._diffusers_compat import (
    ContextParallelInput,
    ContextParallelOutput,
    TransformerBlockMetadata,
    TransformerBlockRegistry,
)
from .attention_processor import MultiTalkAttnProcessor, MultiTalkAudioAttention, context_parallel_group


logger = logging.get_logger(__name__)


class MultiTalkAudioProjection(nn.Module):
    """Turns windows of stacked wav2vec2 layers into ``context_tokens`` audio tokens per latent frame.

    Latent frame 0 sees a ``window``-frame window around video frame 0; each later latent frame covers
    ``vae_scale`` video frames and sees ``window + vae_scale - 1`` entries: the left half of its first frame's window,
    the centre of its middle frames and the right half of its last frame's window.
    """

    def __init__(
        self,
        window: int = 5,
        vae_scale: int = 4,
        num_layers: int = 12,
        channels: int = 768,
        intermediate_dim: int = 512,
        output_dim: int = 768,
        context_tokens: int = 32,
        norm_output: bool = True,
    ):
        super().__init__()
        self.window = window
        self.vae_scale = vae_scale
        self.context_tokens = context_tokens
        self.output_dim = output_dim
        self.proj1 = nn.Linear(window * num_layers * channels, intermediate_dim)
        self.proj1_vf = nn.Linear((window + vae_scale - 1) * num_layers * channels, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim) if norm_output else nn.Identity()

    def split_windows(self, audio_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, frames, window, layers, channels] -> first latent frame [N, 1, window, ...] and later latent frames
        [N, T-1, window + vae_scale - 1, ...]."""
        middle = self.window // 2
        first = audio_embeds[:, :1]
        later = audio_embeds[:, 1:].unflatten(1, (-1, self.vae_scale))  # [N, T-1, vae_scale, window, L, C]
        later = torch.cat(
            [
                later[:, :, 0, : middle + 1],
                later[:, :, 1:-1, middle],
                later[:, :, -1, middle:],
            ],
            dim=2,
        )
        return first, later

    def forward(self, audio_embeds: torch.Tensor) -> torch.Tensor:
        """[N, frames, window, layers, channels] with frames = vae_scale * (T - 1) + 1 -> [N, T, tokens, dim]."""
        if (audio_embeds.shape[1] - 1) % self.vae_scale:
            raise ValueError(
                f"audio_embeds has {audio_embeds.shape[1]} frames; expected {self.vae_scale}*(latent frames - 1) + 1."
            )
        first, later = self.split_windows(audio_embeds)
        first = F.relu(self.proj1(first.flatten(2)))
        later = F.relu(self.proj1_vf(later.flatten(2)))
        tokens = F.relu(self.proj2(torch.cat([first, later], dim=1)))
        tokens = self.proj3(tokens).unflatten(-1, (self.context_tokens, self.output_dim))
        return self.norm(tokens)


@maybe_allow_in_graph
class MultiTalkTransformerBlock(WanTransformerBlock):
    """A Wan block with MultiTalk's audio cross-attention between the text/image cross-attention and the FFN."""

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        qk_norm: str = "rms_norm_across_heads",
        cross_attn_norm: bool = False,
        eps: float = 1e-6,
        added_kv_proj_dim: int | None = None,
        audio_dim: int = 768,
        norm_input_visual: bool = True,
        image_context_length: int = 257,
    ):
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps, added_kv_proj_dim)
        self.attn1.set_processor(MultiTalkAttnProcessor(image_context_length))
        self.attn2.set_processor(MultiTalkAttnProcessor(image_context_length))
        self.audio_norm = FP32LayerNorm(dim, eps, elementwise_affine=True) if norm_input_visual else nn.Identity()
        self.audio_attn = MultiTalkAudioAttention(dim, audio_dim, num_heads)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        audio_hidden_states: torch.Tensor | None = None,
        lrope: LRoPE | None = None,
    ) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            self.scale_shift_table + temb.float()
        ).chunk(6, dim=1)

        # 1. Self-attention (also yields the person scores when several persons speak)
        norm_hidden_states = (self.norm1(hidden_states.float()) * (1 + scale_msa) + shift_msa).type_as(hidden_states)
        if lrope is None:
            attn_output = self.attn1(norm_hidden_states, None, None, rotary_emb)
        else:
            attn_output, person_scores = self.attn1(
                norm_hidden_states,
                None,
                None,
                rotary_emb,
                person_token_masks=lrope.token_masks,
                tokens_per_frame=lrope.tokens_per_frame,
            )
        hidden_states = (hidden_states.float() + attn_output * gate_msa).type_as(hidden_states)

        # 2. Text/image cross-attention
        norm_hidden_states = self.norm2(hidden_states.float()).type_as(hidden_states)
        hidden_states = hidden_states + self.attn2(norm_hidden_states, encoder_hidden_states, None, None)

        # 3. Audio cross-attention
        if audio_hidden_states is not None:
            query_positions = key_positions = None
            if lrope is not None:
                query_positions = lrope.query_positions(person_scores)
                key_positions = lrope.key_positions
            hidden_states = hidden_states + self.audio_attn(
                self.audio_norm(hidden_states.float()).type_as(hidden_states),
                audio_hidden_states,
                query_positions,
                key_positions,
            )

        # 4. Feed-forward
        norm_hidden_states = (self.norm3(hidden_states.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(
            hidden_states
        )
        ff_output = self.ffn(norm_hidden_states)
        hidden_states = (hidden_states.float() + ff_output.float() * c_gate_msa).type_as(hidden_states)
        return hidden_states


def _register_block_for_cache_hooks():
    TransformerBlockRegistry.register(
        model_class=MultiTalkTransformerBlock,
        metadata=TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None),
    )


_register_block_for_cache_hooks()


class LRoPE:
    """Label rotary position embedding for several persons (MultiTalk's L-RoPE).

    Person p of P owns the label range [lo_p, lo_p + class_interval] with lo_p spread evenly over
    [0, class_range - class_interval] (two persons: [0, 4] and [20, 24], the trained layout); the background
    sits at class_range // 2. A video token takes the label of the class it attends to most, placed inside that
    person's range by min-max normalising the person's scores over all tokens; each person's audio tokens sit at
    the middle of its range.
    """

    def __init__(
        self,
        token_masks: torch.Tensor,
        num_persons: int,
        audio_tokens_per_person: int,
        tokens_per_frame: int,
        class_range: int,
        class_interval: int,
        group=None,
    ):
        self.token_masks = token_masks
        self.group = group  # context parallelism: the scores of this rank's tokens only
        self.tokens_per_frame = tokens_per_frame
        step = (class_range - class_interval) / (num_persons - 1)
        self.ranges = [(p * step, p * step + class_interval) for p in range(num_persons)]
        self.background = float(class_range // 2)
        centres = torch.tensor([(lo + hi) / 2 for lo, hi in self.ranges], device=token_masks.device)
        self.key_positions = centres.repeat_interleave(audio_tokens_per_person)

    def query_positions(self, scores: torch.Tensor) -> torch.Tensor:
        """[B, persons + 1, S] scores -> [B, S] positions."""
        person_scores = scores[:, :-1]
        low = person_scores.amin(dim=-1, keepdim=True)
        high = person_scores.amax(dim=-1, keepdim=True)
        if self.group is not None:  # the min-max normalisation runs over the whole sequence
            torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN, group=self.group)
            torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX, group=self.group)
        starts = torch.tensor([lo for lo, _ in self.ranges], device=scores.device, dtype=scores.dtype)[:, None]
        widths = torch.tensor([hi - lo for lo, hi in self.ranges], device=scores.device, dtype=scores.dtype)[:, None]
        positions = (person_scores - low) / (high - low + 1e-8) * widths + starts
        background = torch.full_like(scores[:, :1], self.background)
        positions = torch.cat([positions, background], dim=1)
        return positions.gather(1, scores.argmax(dim=1, keepdim=True)).squeeze(1)


class MultiTalkTransformer3DModel(ModelMixin, ConfigMixin, PeftAdapterMixin, CacheMixin, AttentionMixin):
    r"""
    The MultiTalk transformer: Wan2.1-I2V-14B's DiT with an audio adapter.

    Base parameters keep the names of diffusers' [`WanTransformer3DModel`] (so Wan LoRAs and converters apply
    unchanged); MultiTalk adds `audio_proj` (the audio projection) and, per block, `audio_norm` and `audio_attn`.

    Args:
        patch_size, num_attention_heads, attention_head_dim, in_channels, out_channels, text_dim, freq_dim, ffn_dim,
        num_layers, cross_attn_norm, qk_norm, eps, image_dim, added_kv_proj_dim, rope_max_seq_len:
            as in [`WanTransformer3DModel`] (defaults: the 14B I2V model; `in_channels` 36 = 16 noise + 4 mask + 16
            condition latent channels).
        image_context_length (`int`, defaults to 257): CLIP tokens at the front of the cross-attention context.
        audio_window (`int`, defaults to 5): video frames in the audio window around each frame.
        audio_layers (`int`, defaults to 12) / audio_channels (`int`, defaults to 768): wav2vec2 layers stacked per
            frame and their width.
        intermediate_dim (`int`, defaults to 512): hidden width of the audio projection.
        output_dim (`int`, defaults to 768): width of the audio tokens.
        context_tokens (`int`, defaults to 32): audio tokens per person and latent frame.
        vae_scale (`int`, defaults to 4): video frames per latent frame (after the first).
        norm_input_visual (`bool`, defaults to True): LayerNorm the video tokens before the audio attention.
        norm_output_audio (`bool`, defaults to True): LayerNorm the audio tokens.
        class_range (`int`, defaults to 24) / class_interval (`int`, defaults to 4): L-RoPE label layout.
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["patch_embedding", "condition_embedder", "norm"]
    _no_split_modules = ["MultiTalkTransformerBlock"]
    _keep_in_fp32_modules = ["time_embedder", "scale_shift_table", "norm1", "norm2", "norm3", "audio_norm"]
    _keys_to_ignore_on_load_unexpected = ["norm_added_q"]
    _repeated_blocks = ["MultiTalkTransformerBlock"]
    # Context parallelism (`enable_parallelism`): the video tokens and their rotary tables are split along the
    # sequence before the first block and gathered after the output projection, as in diffusers' Wan. The text,
    # image and audio contexts stay whole on every rank; the audio attention and the person map (L-RoPE) handle
    # their rank's slice themselves (see MultiTalkAudioAttnProcessor, gather_first_frame, LRoPE.query_positions).
    _cp_plan = {
        "rope": {
            0: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
            1: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
        },
        "blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 36,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = 1280,
        added_kv_proj_dim: int | None = 5120,
        rope_max_seq_len: int = 1024,
        image_context_length: int = 257,
        audio_window: int = 5,
        audio_layers: int = 12,
        audio_channels: int = 768,
        intermediate_dim: int = 512,
        output_dim: int = 768,
        context_tokens: int = 32,
        vae_scale: int = 4,
        norm_input_visual: bool = True,
        norm_output_audio: bool = True,
        class_range: int = 24,
        class_interval: int = 4,
    ) -> None:
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim

        self.rope = WanRotaryPosEmbed(attention_head_dim, patch_size, rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(in_channels, inner_dim, kernel_size=patch_size, stride=patch_size)
        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=inner_dim,
            time_freq_dim=freq_dim,
            time_proj_dim=inner_dim * 6,
            text_embed_dim=text_dim,
            image_embed_dim=image_dim,
        )
        self.audio_proj = MultiTalkAudioProjection(
            window=audio_window,
            vae_scale=vae_scale,
            num_layers=audio_layers,
            channels=audio_channels,
            intermediate_dim=intermediate_dim,
            output_dim=output_dim,
            context_tokens=context_tokens,
            norm_output=norm_output_audio,
        )
        self.blocks = nn.ModuleList(
            [
                MultiTalkTransformerBlock(
                    inner_dim,
                    ffn_dim,
                    num_attention_heads,
                    qk_norm,
                    cross_attn_norm,
                    eps,
                    added_kv_proj_dim,
                    audio_dim=output_dim,
                    norm_input_visual=norm_input_visual,
                    image_context_length=image_context_length,
                )
                for _ in range(num_layers)
            ]
        )
        self.norm_out = FP32LayerNorm(inner_dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(inner_dim, out_channels * math.prod(patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, inner_dim) / inner_dim**0.5)
        self.gradient_checkpointing = False

    def _person_rope(self, ref_target_masks, num_persons, post_patch_height, post_patch_width, device, cp_group):
        if ref_target_masks is None:
            raise ValueError(
                f"`ref_target_masks` is required for {num_persons} persons: [persons + 1, H, W] masks at latent "
                "resolution (each person's region, then the background)."
            )
        masks = ref_target_masks if ref_target_masks.ndim == 4 else ref_target_masks.unsqueeze(0)
        if masks.shape[1] != num_persons + 1:
            raise ValueError(
                f"`ref_target_masks` has {masks.shape[1]} masks for {num_persons} persons; expected persons + 1 "
                "(one per person, then the background)."
            )
        token_masks = F.interpolate(masks.float(), size=(post_patch_height, post_patch_width), mode="nearest") > 0
        token_masks = token_masks.flatten(2).to(device)
        if ref_target_masks.ndim == 3:
            token_masks = token_masks[0]
        if not bool((token_masks.sum(-1) > 0).all()):
            raise ValueError("Every person mask (and the background) must cover at least one latent token.")
        return LRoPE(
            token_masks,
            num_persons,
            self.config.context_tokens,
            post_patch_height * post_patch_width,
            self.config.class_range,
            self.config.class_interval,
            group=cp_group,
        )

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor,
        audio_embeds: torch.Tensor,
        ref_target_masks: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor | Transformer2DModelOutput:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(batch, 36, T, H, W)`):
                Noisy latents (16 channels) concatenated with the condition (4 mask + 16 latent channels).
            timestep (`torch.Tensor` of shape `(batch,)`): Diffusion time in [0, 1000].
            encoder_hidden_states (`torch.Tensor` of shape `(batch, text_len, text_dim)`):
                Text encoder states, zero-padded to the text length.
            encoder_hidden_states_image (`torch.Tensor` of shape `(batch, 257, image_dim)`): CLIP image tokens.
            audio_embeds (`torch.Tensor` of shape `(batch, persons, frames, window, layers, channels)`):
                Windowed wav2vec2 features with frames = 4 * (T - 1) + 1.
            ref_target_masks (`torch.Tensor` of shape `(persons + 1, H, W)` or `(batch, persons + 1, H, W)`):
                Person masks at latent resolution (persons..., background); required for more than one person.
            return_dict (`bool`): Return a [`Transformer2DModelOutput`] instead of a tuple.
            attention_kwargs (`dict`, *optional*): as diffusers' Wan transformer takes it: `{"scale": s}` scales
                the LoRA layers for this call (diffusers' `apply_lora_scale`).
        """
        batch_size, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        post_patch_num_frames, post_patch_height, post_patch_width = num_frames // p_t, height // p_h, width // p_w

        if audio_embeds.ndim != 6 or audio_embeds.shape[0] != batch_size:
            raise ValueError(
                "`audio_embeds` must be [batch, persons, frames, window, layers, channels]; got "
                f"{tuple(audio_embeds.shape)} for batch {batch_size}."
            )
        expected_frames = self.config.vae_scale * (num_frames - 1) + 1
        if audio_embeds.shape[2] != expected_frames:
            raise ValueError(
                f"`audio_embeds` has {audio_embeds.shape[2]} frames; {num_frames} latent frames need {expected_frames}."
            )
        num_persons = audio_embeds.shape[1]
        cp_group = context_parallel_group(self._parallel_config)
        if cp_group is not None:
            num_tokens, world_size = post_patch_num_frames * post_patch_height * post_patch_width, cp_group.size()
            if num_tokens % world_size:
                raise ValueError(
                    f"Context parallelism over {world_size} processes needs a token count divisible by {world_size}; "
                    f"{post_patch_num_frames} latent frames x {post_patch_height} x {post_patch_width} = {num_tokens} "
                    "is not. Change the frame count or the size (480P/720P buckets divide by 2, 4 and 8)."
                )

        rotary_emb = self.rope(hidden_states)
        hidden_states = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()

        temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = self.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image
        )
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        encoder_hidden_states = torch.cat([encoder_hidden_states_image, encoder_hidden_states], dim=1)

        # Audio tokens: [B, T, persons * context_tokens, dim], persons side by side per frame.
        audio_tokens = self.audio_proj(audio_embeds.flatten(0, 1).to(hidden_states.dtype))
        audio_tokens = audio_tokens.unflatten(0, (batch_size, num_persons)).permute(0, 2, 1, 3, 4).flatten(2, 3)

        # The person map is only needed to tell several persons apart.
        lrope = None
        if num_persons > 1:
            lrope = self._person_rope(
                ref_target_masks, num_persons, post_patch_height, post_patch_width, hidden_states.device, cp_group
            )

        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, timestep_proj, rotary_emb, audio_tokens, lrope
                )
            else:
                hidden_states = block(
                    hidden_states, encoder_hidden_states, timestep_proj, rotary_emb, audio_tokens, lrope
                )

        shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        shift = shift.to(hidden_states.device)
        scale = scale.to(hidden_states.device)
        hidden_states = (self.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)

        hidden_states = hidden_states.reshape(
            batch_size, post_patch_num_frames, post_patch_height, post_patch_width, p_t, p_h, p_w, -1
        )
        output = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)

        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)

    def enable_teacache(self, threshold: float = 0.2, resolution: str = "multitalk-480", **kwargs) -> None:
        """Skips the blocks on steps whose timestep modulation barely changed (MultiTalk's TeaCache, per guidance
        branch). See [`~diffusers_multitalk.hooks.TeaCacheConfig`]; `disable_teacache()` removes it."""
        from ..hooks.teacache import TeaCacheConfig, apply_teacache

        self._teacache_state = apply_teacache(
            self, TeaCacheConfig(threshold=threshold, resolution=resolution, **kwargs)
        )

    def disable_teacache(self) -> None:
        from ..hooks.teacache import remove_teacache

        remove_teacache(self)
        self._teacache_state = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """diffusers' `ModelMixin.from_pretrained`; a local folder converted before the audio attention's key/value
        layer became `to_audio_kv` (it was `to_kv`) loads with its keys renamed."""
        from ..loaders.transformer_original import legacy_diffusers_files, load_legacy_diffusers_folder

        folder = Path(str(pretrained_model_name_or_path))
        if kwargs.get("subfolder"):
            folder = folder / kwargs["subfolder"]
        files = legacy_diffusers_files(folder) if folder.is_dir() else None
        if files is None:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        logger.info(f"{folder} names the audio key/value layer `to_kv` (written before 0.1); renaming on load.")
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        return load_legacy_diffusers_folder(cls, folder, files, torch_dtype=dtype)

    @classmethod
    def from_original(cls, path, torch_dtype: torch.dtype | None = None, multitalk_path=None, device="cpu"):
        """Loads the official checkpoint layout (Wan2.1-I2V-14B folder with MeiGen-MultiTalk's index and
        `multitalk.safetensors`), converting keys shard by shard. See
        [`~diffusers_multitalk.loaders.load_multitalk_transformer_from_original`]."""
        from ..loaders.transformer_original import load_multitalk_transformer_from_original

        return load_multitalk_transformer_from_original(
            path, torch_dtype=torch_dtype, multitalk_path=multitalk_path, device=device, model_cls=cls
        )

    @classmethod
    def from_wan_diffusers(
        cls,
        transformer_dir,
        multitalk_path,
        torch_dtype: torch.dtype | None = None,
        device="cpu",
        audio_layers: int = 12,
        audio_channels: int = 768,
    ):
        """Loads diffusers' Wan2.1-I2V transformer folder (e.g. `Wan2.1-I2V-14B-480P-Diffusers/transformer`) plus
        MeiGen-MultiTalk's `multitalk.safetensors`. See
        [`~diffusers_multitalk.loaders.load_multitalk_transformer_from_wan_diffusers`]."""
        from ..loaders.transformer_original import load_multitalk_transformer_from_wan_diffusers

        return load_multitalk_transformer_from_wan_diffusers(
            transformer_dir,
            multitalk_path,
            torch_dtype=torch_dtype,
            device=device,
            model_cls=cls,
            audio_layers=audio_layers,
            audio_channels=audio_channels,
        )
