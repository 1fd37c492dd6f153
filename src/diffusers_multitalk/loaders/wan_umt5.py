"""Wan2.1's umT5-XXL text encoder (``models_t5_umt5-xxl-enc-bf16.pth``) <-> :class:`transformers.UMT5EncoderModel`.

Where the two implementations meet: Wan's FFN gate applies the tanh approximation of GELU. That is ``gelu_new``,
which transformers selects for ``feed_forward_proj="gated-gelu"``. Each layer has its own relative-position bias
(umT5, ``shared_pos=False``) and attention is unscaled. The encoder returns a hidden state for every position, padded
ones too: a padded query still attends to the real tokens, so those rows are finite and non-zero. The reference
pipeline keeps ``out[i, :len_i]`` and zero-pads to ``text_len``. Do that trimming downstream; the padded rows are not
meant to be used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from .original_folders import WAN_T5_CHECKPOINT
from .wan_checkpoint import (
    _cast,
    _empty_weights,
    _invert_rules,
    _layout_error,
    _load_into_empty,
    _load_original_state_dict,
    _rename,
    _require,
    _resolve_checkpoint,
)


__all__ = [
    "convert_umt5_encoder_to_original",
    "convert_wan_t5_state_dict",
    "load_umt5_encoder_from_original",
    "umt5_config_from_wan_state_dict",
]


_T5_WHAT = "Wan's umT5 encoder (models_t5_umt5-xxl-enc-bf16.pth: token_embedding.*, blocks.N.*, norm.*)"

_T5_RULES = [
    (re.compile(r"token_embedding\.weight"), r"shared.weight"),
    (re.compile(r"norm\.weight"), r"encoder.final_layer_norm.weight"),
    (re.compile(r"blocks\.(\d+)\.norm1\.weight"), r"encoder.block.\1.layer.0.layer_norm.weight"),
    (re.compile(r"blocks\.(\d+)\.attn\.([qkvo])\.weight"), r"encoder.block.\1.layer.0.SelfAttention.\2.weight"),
    (
        re.compile(r"blocks\.(\d+)\.pos_embedding\.embedding\.weight"),
        r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    (re.compile(r"blocks\.(\d+)\.norm2\.weight"), r"encoder.block.\1.layer.1.layer_norm.weight"),
    (re.compile(r"blocks\.(\d+)\.ffn\.gate\.0\.weight"), r"encoder.block.\1.layer.1.DenseReluDense.wi_0.weight"),
    (re.compile(r"blocks\.(\d+)\.ffn\.fc1\.weight"), r"encoder.block.\1.layer.1.DenseReluDense.wi_1.weight"),
    (re.compile(r"blocks\.(\d+)\.ffn\.fc2\.weight"), r"encoder.block.\1.layer.1.DenseReluDense.wo.weight"),
]


def umt5_config_from_wan_state_dict(sd: Mapping[str, torch.Tensor]):
    """Infer the :class:`transformers.UMT5Config` of a Wan ``T5Encoder`` state dict from its shapes."""
    from transformers import UMT5Config

    foreign = [k for k in sd if not any(p.fullmatch(k) for p, _ in _T5_RULES)]
    required = [
        "token_embedding.weight",
        "norm.weight",
        "blocks.0.attn.q.weight",
        "blocks.0.ffn.fc1.weight",
        "blocks.0.pos_embedding.embedding.weight",
    ]
    if "pos_embedding.embedding.weight" in sd:
        raise _layout_error(
            _T5_WHAT,
            unexpected=["pos_embedding.embedding.weight"],
            extra="This T5 shares one relative position bias across layers (shared_pos=True); "
            "only the umT5 layout (one bias per layer) is supported.",
        )
    _require(sd, required, _T5_WHAT, foreign)
    if foreign:
        raise _layout_error(_T5_WHAT, unexpected=foreign)

    vocab, d_model = sd["token_embedding.weight"].shape
    num_buckets, num_heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
    inner_dim = sd["blocks.0.attn.q.weight"].shape[0]
    d_ff = sd["blocks.0.ffn.fc1.weight"].shape[0]
    num_layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    if inner_dim % num_heads:
        raise ValueError(f"T5 attention width {inner_dim} is not divisible by the {num_heads} heads of the bias table.")
    return UMT5Config(
        vocab_size=int(vocab),
        d_model=int(d_model),
        d_kv=int(inner_dim // num_heads),
        d_ff=int(d_ff),
        num_layers=int(num_layers),
        num_decoder_layers=int(num_layers),
        num_heads=int(num_heads),
        relative_attention_num_buckets=int(num_buckets),
        relative_attention_max_distance=128,  # Wan's T5RelativeEmbedding max_dist
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",  # -> gelu_new, the tanh approximation Wan uses
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def convert_wan_t5_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Wan ``T5Encoder`` keys to ``UMT5EncoderModel`` keys (consumes ``sd``; no tensor is copied)."""
    out, unmatched = _rename(sd, _T5_RULES)
    if unmatched:
        raise _layout_error(_T5_WHAT, unexpected=unmatched)
    return out


_T5_INVERSE_RULES = _invert_rules(_T5_RULES)


def convert_umt5_encoder_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``UMT5EncoderModel`` keys back to Wan's ``T5Encoder`` keys (the inverse of
    :func:`convert_wan_t5_state_dict`; tensors are not copied, ``sd`` is left as it is).

    ``encoder.embed_tokens.weight`` is the tied copy of ``shared.weight`` and is dropped; ``torch.save`` the result to
    get a ``models_t5_umt5-xxl-enc-bf16.pth``-style file.
    """
    sd = dict(sd)
    embed = sd.pop("encoder.embed_tokens.weight", None)
    shared = sd.get("shared.weight")
    if embed is not None and shared is not None and embed.data_ptr() != shared.data_ptr():
        if embed.shape != shared.shape or not torch.equal(embed, shared):
            raise ValueError(
                "encoder.embed_tokens.weight differs from shared.weight; Wan's T5 has one token embedding."
            )
    out, unmatched = _rename(sd, _T5_INVERSE_RULES)
    if unmatched:
        raise _layout_error("a transformers UMT5EncoderModel state dict", unexpected=unmatched)
    return out


def load_umt5_encoder_from_original(path: str | os.PathLike, torch_dtype: torch.dtype | None = None):
    """Load Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` as a :class:`transformers.UMT5EncoderModel`.

    Args:
        path: the ``.pth`` file, or the Wan2.1 checkpoint folder that holds it.
        torch_dtype: dtype of the returned model; ``None`` keeps the stored dtype (bfloat16 for the release).

    The model is returned in eval mode. ``model(input_ids, attention_mask).last_hidden_state`` equals Wan's
    ``T5Encoder(ids, mask)`` at every position, padded ones included. The pipeline keeps only the first ``len_i``
    rows of each prompt.
    """
    from transformers import UMT5EncoderModel

    file = _resolve_checkpoint(path, WAN_T5_CHECKPOINT, "Wan2.1 umT5 text encoder")
    sd = _load_original_state_dict(file, "Wan2.1 umT5 text encoder")
    config = umt5_config_from_wan_state_dict(sd)
    sd = _cast(convert_wan_t5_state_dict(sd), torch_dtype)
    with _empty_weights():
        model = UMT5EncoderModel(config)
    _load_into_empty(model, sd, _T5_WHAT, tied={"encoder.embed_tokens.weight": "shared.weight"})
    return model.eval()
