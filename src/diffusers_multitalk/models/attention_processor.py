"""Attention processors of the MultiTalk transformer.

The self- and text/image cross-attention follow diffusers' ``WanAttnProcessor``; they differ in two places that
MultiTalk needs: the image/text split of the cross-attention context is a config value (diffusers assumes 512 text
tokens, the original checkpoints' configs may say otherwise), and the self-attention can return, for every video
token, how strongly it attends to each person's region of the first latent frame (the input of L-RoPE).
The video self-attention can also run through a kernel outside diffusers' dispatcher (`SELF_ATTENTION_KERNELS`,
chosen per block with `models.fp8.set_self_attention_kernel`), e.g. SageAttention's 8-bit Triton kernel or
FlashAttention-3's FP8 forward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn

from .._diffusers_compat import _get_added_kv_projections, _get_qkv_projections, context_parallel_process_group


def apply_wan_rotary_emb(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Rotates interleaved channel pairs of ``hidden_states`` [B, S, H, D] by Wan's 3-D RoPE tables."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


def apply_rotary_emb_1d(hidden_states: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """1-D RoPE on interleaved channel pairs (the rotation L-RoPE uses), computed in float32.

    Args:
        hidden_states: [B, S, H, D].
        positions: [S] or [B, S] (fractional) positions.
    """
    head_dim = hidden_states.shape[-1]
    inv_freq = 1.0 / (
        base ** (torch.arange(0, head_dim, 2, device=hidden_states.device, dtype=torch.float32) / head_dim)
    )
    angles = positions.to(torch.float32)[..., None] * inv_freq  # [(B,) S, D/2]
    if angles.ndim == 2:
        angles = angles.unsqueeze(0)
    cos = angles.cos().unsqueeze(2)  # [B|1, S, 1, D/2]
    sin = angles.sin().unsqueeze(2)
    x = hidden_states.float()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x2 * cos + x1 * sin
    return out.type_as(hidden_states)


def context_parallel_group(parallel_config):
    """The process group over which diffusers' context parallelism splits the video tokens (None without it).

    diffusers gives rank r of this group the r-th of equal chunks of the sequence (ring x ulysses, flattened)."""
    if parallel_config is None or getattr(parallel_config, "context_parallel_config", None) is None:
        return None
    return context_parallel_process_group(parallel_config.context_parallel_config)


def gather_first_frame(local: torch.Tensor, tokens_per_frame: int, group) -> torch.Tensor:
    """The first latent frame's tokens [B, tokens_per_frame, ...] from sequence shards [B, S_local, ...] (rank r
    holds tokens [r * S_local, (r + 1) * S_local)); the first frame may span several ranks."""
    if group is None:
        return local[:, :tokens_per_frame]
    local_len = local.shape[1]
    take = min(tokens_per_frame, local_len)
    parts = [torch.empty_like(local[:, :take]) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local[:, :take].contiguous(), group=group)
    counts = [max(0, min(take, tokens_per_frame - r * local_len)) for r in range(len(parts))]
    return torch.cat([part[:, :count] for part, count in zip(parts, counts)], dim=1)


@torch.compiler.disable
def sage_triton_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """SageAttention 1 (the `sageattention` 1.x package, Triton): Q and K in int8 with one scale per block of
    tokens (K smoothed by its mean first), P·V in fp16. [B, S, H, D] in and out, no mask. Kept out of torch.compile
    graphs (its Triton launches and the in-place smoothing of K run eagerly). On an H200 it was slower than cuDNN's
    bf16 attention at the 14B shape (docs/performance.md); it stays a per-block choice, not measured on other GPUs."""
    from sageattention import sageattn

    return sageattn(query, key.clone(), value, tensor_layout="NHD", is_causal=False)


FP8_E4M3_MAX = 448.0  # the largest finite float8_e4m3fn
# The head sizes `flash3_fp8` calls FA3 at: the one benchmarks/build_flash_attention_3.sh builds (the Wan DiTs').
FLASH3_FP8_HEAD_DIMS = (128,)


def quantize_per_head_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, S, H, D] -> (float8 e4m3 [B, S, H, D], descale [B, H] float32): one scale per batch entry and head, the
    head's largest magnitude mapped to e4m3's largest value (the layout FlashAttention-3's FP8 forward takes)."""
    descale = (x.abs().amax(dim=(1, 3)).float() / FP8_E4M3_MAX).clamp(min=1e-12)
    scaled = x.float() / descale[:, None, :, None]
    return scaled.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn), descale.contiguous()


def flash3_fp8_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """FlashAttention-3's FP8 forward (Hopper): Q, K and V in e4m3 with one scale per head (`quantize_per_head_fp8`),
    both products on the FP8 tensor cores, the output in bf16. [B, S, H, D] in and out, no mask. K and V are
    smoothed first (their mean over the tokens taken out, as SageAttention does for K), which changes nothing in
    exact arithmetic: q·mean(k) is one constant per query row, which softmax ignores, and each row of P sums to one,
    so mean(v) is added back after. It shrinks what e4m3's 3 mantissa bits must hold when K or V carry a common
    offset. The quantisation is traced by torch.compile (fused into the block's graph); the FA3 call is opaque.
    Needs an FA3 build with FP8 kept (`FA3_FP8=1 bash benchmarks/build_flash_attention_3.sh ...`)."""
    if query.shape[-1] not in FLASH3_FP8_HEAD_DIMS:
        # refused here: FA3 called at a head size its build left out crashes the process (seen on the H200)
        raise ValueError(
            f"flash3_fp8 runs at head size {FLASH3_FP8_HEAD_DIMS} (the Wan DiTs'), not {query.shape[-1]}; "
            "use the dispatcher (self_attention_kernel=None)"
        )
    (q8, q_descale), (k8, k_descale), (v8, v_descale), value_mean = smoothed_fp8_inputs(query, key, value)
    out = _flash3_fp8_forward(q8, k8, v8, q_descale, k_descale, v_descale)
    return (out.float() + value_mean).to(query.dtype)


def smoothed_fp8_inputs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """What `flash3_fp8_attention` hands FA3: K and V less their token means, then Q, K, V through
    `quantize_per_head_fp8`; returns the three `(e4m3, descale)` pairs and V's mean (float32), to add back."""
    key = key - key.float().mean(dim=1, keepdim=True).to(key.dtype)
    value_mean = value.float().mean(dim=1, keepdim=True)
    return (*(quantize_per_head_fp8(t) for t in (query, key, value.float() - value_mean)), value_mean)


@torch.compiler.disable
def _flash3_fp8_forward(q8, k8, v8, q_descale, k_descale, v_descale) -> torch.Tensor:
    from flash_attn_interface import flash_attn_func

    out = flash_attn_func(q8, k8, v8, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale)
    return out[0] if isinstance(out, tuple) else out  # older FA3 builds also return the log-sum-exp


# Kernels for the video self-attention beside diffusers' dispatcher: name -> fn(query, key, value) on [B, S, H, D].
SELF_ATTENTION_KERNELS = {"sage_triton": sage_triton_attention, "flash3_fp8": flash3_fp8_attention}


def person_attention_scores(
    query: torch.Tensor,
    key_first_frame: torch.Tensor,
    token_masks: torch.Tensor,
    backend=None,
) -> torch.Tensor:
    """How much each video token attends to each person's region of the first latent frame.

    For class c with token mask m_c, the score of query token i is mean over heads of
    ``sum_j softmax_j(q_i . k_j / sqrt(d)) * m_c[j] / |m_c|``. That is an attention whose values are the masks, so
    it runs as one fused attention call instead of materialising the [heads, tokens, first-frame tokens] map.

    Args:
        query: post-RoPE queries [B, S, H, D].
        key_first_frame: post-RoPE keys of the first latent frame [B, S0, H, D].
        token_masks: [C, S0] or [B, C, S0] 0/1 masks (persons..., background).
    Returns:
        [B, C, S] scores.
    """
    batch, _, heads, head_dim = query.shape
    if token_masks.ndim == 2:
        token_masks = token_masks.unsqueeze(0).expand(batch, -1, -1)
    num_classes = token_masks.shape[1]
    if num_classes > head_dim:
        raise ValueError(f"At most {head_dim} person masks are supported, got {num_classes}.")
    masks = token_masks.to(query.dtype)
    # Values: the masks as the first C channels of every head, zero elsewhere.
    value = F.pad(masks.transpose(1, 2), (0, head_dim - num_classes))  # [B, S0, D]
    value = value.unsqueeze(2).expand(-1, -1, heads, -1).contiguous()
    out = dispatch_attention_fn(query, key_first_frame, value, backend=backend)  # [B, S, H, D]
    scores = out[..., :num_classes].float().mean(dim=2)  # [B, S, C]
    scores = scores / token_masks.float().sum(dim=-1).unsqueeze(1)
    return scores.transpose(1, 2)


class MultiTalkAttnProcessor:
    """Wan attention with a configurable image-token count and optional person scores.

    Args:
        image_context_length: number of CLIP image tokens at the front of the cross-attention context (257 for
            Wan2.1-I2V's ViT-H/14). Ignored in self-attention.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, image_context_length: int = 257, self_attention_kernel: str | None = None):
        self.image_context_length = image_context_length
        # A name of SELF_ATTENTION_KERNELS for the video self-attention (None: diffusers' dispatcher).
        self.self_attention_kernel = self_attention_kernel

    def __call__(
        self,
        attn: AttentionModuleMixin,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        person_token_masks: torch.Tensor | None = None,
        tokens_per_frame: int | None = None,
    ):
        encoder_hidden_states_img = None
        if attn.add_k_proj is not None:
            encoder_hidden_states_img = encoder_hidden_states[:, : self.image_context_length]
            encoder_hidden_states = encoder_hidden_states[:, self.image_context_length :]

        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        if rotary_emb is not None:
            query = apply_wan_rotary_emb(query, *rotary_emb)
            key = apply_wan_rotary_emb(key, *rotary_emb)

        hidden_states_img = None
        if encoder_hidden_states_img is not None:
            key_img, value_img = _get_added_kv_projections(attn, encoder_hidden_states_img)
            key_img = attn.norm_added_k(key_img).unflatten(2, (attn.heads, -1))
            value_img = value_img.unflatten(2, (attn.heads, -1))
            hidden_states_img = dispatch_attention_fn(
                query, key_img, value_img, backend=self._attention_backend, parallel_config=None
            )
            hidden_states_img = hidden_states_img.flatten(2, 3).type_as(query)

        kernel = getattr(self, "self_attention_kernel", None)
        if kernel is not None and encoder_hidden_states is None and attention_mask is None:
            if self._parallel_config is not None:
                raise ValueError(f"The self-attention kernel {kernel!r} does not support context parallelism.")
            out = SELF_ATTENTION_KERNELS[kernel](query, key, value)
        else:
            out = dispatch_attention_fn(
                query,
                key,
                value,
                attn_mask=attention_mask,
                backend=self._attention_backend,
                parallel_config=(self._parallel_config if encoder_hidden_states is None else None),
            )
        out = out.flatten(2, 3).type_as(query)
        if hidden_states_img is not None:
            out = out + hidden_states_img
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)

        if person_token_masks is None:
            return out
        with torch.no_grad():
            # Under context parallelism this rank holds a slice of the queries; every rank needs the whole first frame.
            key_first_frame = gather_first_frame(key, tokens_per_frame, context_parallel_group(self._parallel_config))
            scores = person_attention_scores(
                query, key_first_frame, person_token_masks, backend=self._attention_backend
            )
        return out, scores


class MultiTalkAudioAttnProcessor:
    """Per-frame audio cross-attention: each latent frame's video tokens attend to that frame's audio tokens,
    optionally with L-RoPE positions on the queries and the audio keys."""

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: MultiTalkAudioAttention,
        hidden_states: torch.Tensor,
        audio_hidden_states: torch.Tensor,
        query_positions: torch.Tensor | None = None,
        key_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, seq_len, dim = hidden_states.shape
        num_frames = audio_hidden_states.shape[1]

        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))  # [B, S, H, D]
        if query_positions is not None:
            query = apply_rotary_emb_1d(query, query_positions)

        # Under context parallelism this rank holds tokens [offset, offset + seq_len) of the whole sequence, which
        # need not start or end on a frame boundary: pad them out to whole frames and use those frames' audio.
        group = context_parallel_group(self._parallel_config)
        lead = trail = 0
        if group is not None:
            total_len = seq_len * dist.get_world_size(group)
            tokens_per_frame = total_len // num_frames
            offset = seq_len * dist.get_rank(group)
            first_frame = offset // tokens_per_frame
            lead = offset - first_frame * tokens_per_frame
            local_frames = -(-(lead + seq_len) // tokens_per_frame)
            trail = local_frames * tokens_per_frame - lead - seq_len
            query = F.pad(query, (0, 0, 0, 0, lead, trail))
            audio_hidden_states = audio_hidden_states[:, first_frame : first_frame + local_frames]
            num_frames = local_frames
        query = query.reshape(batch * num_frames, query.shape[1] // num_frames, attn.heads, -1)

        key, value = attn.to_audio_kv(audio_hidden_states.flatten(0, 1)).chunk(2, dim=-1)
        key = key.unflatten(2, (attn.heads, -1))  # [B*T, N_a, H, D]
        value = value.unflatten(2, (attn.heads, -1))
        if key_positions is not None:
            key = apply_rotary_emb_1d(key, key_positions)

        out = dispatch_attention_fn(query, key, value, backend=self._attention_backend)
        out = out.reshape(batch, -1, dim)[:, lead : lead + seq_len].type_as(hidden_states)
        return attn.to_out(out)


class MultiTalkAudioAttention(nn.Module, AttentionModuleMixin):
    """The audio cross-attention MultiTalk adds to every Wan block (``audio_cross_attn`` in the original
    checkpoints: ``q_linear`` -> ``to_q``, ``kv_linear`` -> ``to_audio_kv``, ``proj`` -> ``to_out``).

    The key/value projection is one fused layer in MeiGen's weights. It is not called ``to_kv``: diffusers reserves
    that name for the layer `fuse_projections` creates and removes, and its tests take a permanent ``to_kv`` for a
    fusion that was never undone. Folders converted before the rename load through
    `MultiTalkTransformer3DModel.from_pretrained`, which renames their ``audio_attn.to_kv`` keys."""

    _default_processor_cls = MultiTalkAudioAttnProcessor
    _available_processors = [MultiTalkAudioAttnProcessor]
    _supports_qkv_fusion = False

    def __init__(self, dim: int, audio_dim: int, heads: int, processor=None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_audio_kv = nn.Linear(audio_dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)
        self.set_processor(processor if processor is not None else MultiTalkAudioAttnProcessor())

    def forward(self, hidden_states, audio_hidden_states, query_positions=None, key_positions=None):
        return self.processor(self, hidden_states, audio_hidden_states, query_positions, key_positions)
