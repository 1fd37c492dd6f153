"""The vision tower of Wan2.1's XLM-RoBERTa CLIP (``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``) <->
:class:`transformers.CLIPVisionModel`.

Where the two implementations meet: the tower uses exact (erf) GELU, a class token, a pre-norm (``pre_layrnorm``) and
a bias-free patch embedding. The DiT receives the output of every transformer block but the last, with no post-norm
(see :func:`diffusers_multitalk.pipelines.clip_features.clip_image_features`). The attention head count does not show
in any tensor shape. It comes from a table of known tower widths (1280 -> 16 heads for ViT-H), or you pass it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from .original_folders import WAN_CLIP_CHECKPOINT
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
    _strip_prefix,
)


__all__ = [
    "clip_vision_config_from_wan_state_dict",
    "convert_clip_vision_to_original",
    "convert_wan_clip_visual_state_dict",
    "load_clip_vision_from_original",
]

# The head count of a ViT cannot be read off its weights; these are the usual open_clip towers by width, plus the
# 32-wide toy tower of `diffusers_multitalk.tiny` (TINY_IMAGE_DIM, 2 heads), so that tiny folders written in Wan's
# layout (`diffusers_multitalk.testing`) load through `WanMultiTalkPipeline.from_original` like the real ones. No
# real CLIP is that narrow.
_KNOWN_VIT_HEADS = {32: 2, 768: 12, 1024: 16, 1280: 16, 1664: 16}


_CLIP_WHAT = (
    "Wan's XLM-RoBERTa CLIP (models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth: visual.*, textual.*, log_scale)"
)

# Keys of the original file that the vision model does not use: the text tower, the logit scale and the
# image projection head (the DiT consumes patch-level features, not the pooled embedding).
_CLIP_IGNORED = re.compile(r"textual\..*|log_scale|visual\.head")

_CLIP_RULES = [
    (re.compile(r"visual\.cls_embedding"), r"embeddings.class_embedding"),
    (re.compile(r"visual\.pos_embedding"), r"embeddings.position_embedding.weight"),
    (re.compile(r"visual\.patch_embedding\.weight"), r"embeddings.patch_embedding.weight"),
    (re.compile(r"visual\.pre_norm\.(weight|bias)"), r"pre_layrnorm.\1"),
    (re.compile(r"visual\.post_norm\.(weight|bias)"), r"post_layernorm.\1"),
    (re.compile(r"visual\.transformer\.(\d+)\.norm1\.(weight|bias)"), r"encoder.layers.\1.layer_norm1.\2"),
    (re.compile(r"visual\.transformer\.(\d+)\.norm2\.(weight|bias)"), r"encoder.layers.\1.layer_norm2.\2"),
    (re.compile(r"visual\.transformer\.(\d+)\.attn\.to_qkv\.(weight|bias)"), r"encoder.layers.\1.self_attn.qkv.\2"),
    (re.compile(r"visual\.transformer\.(\d+)\.attn\.proj\.(weight|bias)"), r"encoder.layers.\1.self_attn.out_proj.\2"),
    (re.compile(r"visual\.transformer\.(\d+)\.mlp\.0\.(weight|bias)"), r"encoder.layers.\1.mlp.fc1.\2"),
    (re.compile(r"visual\.transformer\.(\d+)\.mlp\.2\.(weight|bias)"), r"encoder.layers.\1.mlp.fc2.\2"),
]


def clip_vision_config_from_wan_state_dict(sd: Mapping[str, torch.Tensor], num_attention_heads: int | None = None):
    """Infer the :class:`transformers.CLIPVisionConfig` of the ``visual.*`` part of a Wan CLIP state dict."""
    from transformers import CLIPVisionConfig

    foreign = [k for k in sd if not _CLIP_IGNORED.fullmatch(k) and not any(p.fullmatch(k) for p, _ in _CLIP_RULES)]
    required = [
        "visual.patch_embedding.weight",
        "visual.cls_embedding",
        "visual.pos_embedding",
        "visual.pre_norm.weight",
        "visual.post_norm.weight",
        "visual.transformer.0.attn.to_qkv.weight",
        "visual.transformer.0.mlp.0.weight",
    ]
    if "visual.patch_embedding.bias" in sd:
        raise _layout_error(
            _CLIP_WHAT,
            unexpected=["visual.patch_embedding.bias"],
            extra="Only the pre-norm vision tower (bias-free patch embedding, as in Wan) is supported.",
        )
    _require(sd, required, _CLIP_WHAT, foreign)
    if foreign:
        raise _layout_error(_CLIP_WHAT, unexpected=foreign)

    hidden, channels, patch, patch_w = sd["visual.patch_embedding.weight"].shape
    if patch != patch_w:
        raise ValueError(f"Non-square CLIP patches ({patch}x{patch_w}) are not supported.")
    num_positions = sd["visual.pos_embedding"].shape[-2]
    grid = round((num_positions - 1) ** 0.5)
    if grid * grid != num_positions - 1:
        raise ValueError(f"CLIP position table of {num_positions} rows is not a class token plus a square grid.")
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("visual.transformer."))
    intermediate = sd["visual.transformer.0.mlp.0.weight"].shape[0]
    if num_attention_heads is None:
        num_attention_heads = _KNOWN_VIT_HEADS.get(int(hidden))
        if num_attention_heads is None:
            raise ValueError(
                f"The number of attention heads of a {hidden}-wide vision tower cannot be read from its weights; "
                f"pass num_attention_heads= (known widths: {_KNOWN_VIT_HEADS})."
            )
    if hidden % num_attention_heads:
        raise ValueError(f"CLIP width {hidden} is not divisible by num_attention_heads={num_attention_heads}.")
    return CLIPVisionConfig(
        hidden_size=int(hidden),
        intermediate_size=int(intermediate),
        num_hidden_layers=int(layers),
        num_attention_heads=int(num_attention_heads),
        num_channels=int(channels),
        image_size=int(grid * patch),
        patch_size=int(patch),
        hidden_act="gelu",  # Wan's vision tower: activation='gelu' (exact), not quick_gelu
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
    )


def convert_wan_clip_visual_state_dict(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Rename Wan ``visual.*`` keys to ``CLIPVisionModel`` keys (consumes ``sd``).

    The text tower, ``log_scale`` and ``visual.head`` are dropped. The fused ``to_qkv`` projection becomes three
    views (q, k, v in that order, as Wan splits its output). The class and position embeddings lose their leading
    singleton axes. ``prefix`` is ``"vision_model."`` for transformers < 5.
    """
    for k in [k for k in sd if _CLIP_IGNORED.fullmatch(k)]:
        del sd[k]
    renamed, unmatched = _rename(sd, _CLIP_RULES)
    if unmatched:
        raise _layout_error(_CLIP_WHAT, unexpected=unmatched)
    out = {}
    for key, value in renamed.items():
        if key.endswith(".self_attn.qkv.weight") or key.endswith(".self_attn.qkv.bias"):
            base, kind = key.rsplit(".qkv.", 1)
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{prefix}{base}.{name}.{kind}"] = part
        elif key == "embeddings.class_embedding":
            out[prefix + key] = value.reshape(value.shape[-1])
        elif key == "embeddings.position_embedding.weight":
            out[prefix + key] = value.reshape(value.shape[-2], value.shape[-1])
        else:
            out[prefix + key] = value
    return out


_CLIP_INVERSE_RULES = _invert_rules(_CLIP_RULES)
_CLIP_QKV = re.compile(r"(encoder\.layers\.\d+\.self_attn)\.(q|k|v)_proj\.(weight|bias)")


def convert_clip_vision_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a ``CLIPVisionModel`` state dict back to the ``visual.*`` keys of Wan's CLIP checkpoint (the inverse of
    :func:`convert_wan_clip_visual_state_dict`; ``sd`` is left as it is).

    q, k and v are concatenated into ``to_qkv`` (new tensors); the class and position embeddings get back their
    leading singleton axes (views). The text tower, ``log_scale`` and ``visual.head`` are not part of a vision model:
    the result holds only the ``visual.*`` keys the loader reads.
    """
    sd = _strip_prefix(dict(sd), "vision_model.")
    sd.pop("embeddings.position_ids", None)
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key in list(sd):
        m = _CLIP_QKV.fullmatch(key)
        if m:
            parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = sd.pop(key)
    for (base, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            missing = [f"{base}.{n}_proj.{kind}" for n in "qkv" if n not in qkv]
            raise _layout_error("a transformers CLIPVisionModel state dict", missing=missing)
        sd[f"{base}.qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    out, unmatched = _rename(sd, _CLIP_INVERSE_RULES)
    if unmatched:
        raise _layout_error("a transformers CLIPVisionModel state dict", unexpected=unmatched)
    out["visual.cls_embedding"] = out["visual.cls_embedding"].reshape(1, 1, -1)
    pos = out["visual.pos_embedding"]
    out["visual.pos_embedding"] = pos.reshape(1, *pos.shape)
    return out


def load_clip_vision_from_original(
    path: str | os.PathLike, torch_dtype: torch.dtype | None = None, num_attention_heads: int | None = None
):
    """Load the vision tower of Wan's CLIP checkpoint as a :class:`transformers.CLIPVisionModel`.

    Args:
        path: ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``, or the Wan2.1 folder holding it.
        torch_dtype: dtype of the returned model; ``None`` keeps the stored dtype.
        num_attention_heads: heads per layer. Shapes do not tell it, so the default comes from the width
            (1280 -> 16 for Wan's ViT-H/14). It is required for other widths.

    Use :func:`preprocess_clip_frames` and :func:`clip_image_features` to get the tensor that Wan feeds the DiT.
    """
    from transformers import CLIPVisionModel

    file = _resolve_checkpoint(path, WAN_CLIP_CHECKPOINT, "Wan2.1 CLIP image encoder")
    sd = _load_original_state_dict(file, "Wan2.1 CLIP image encoder")
    config = clip_vision_config_from_wan_state_dict(sd, num_attention_heads)
    with _empty_weights():
        model = CLIPVisionModel(config)
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in model.state_dict()) else ""
    sd = _cast(convert_wan_clip_visual_state_dict(sd, prefix=prefix), torch_dtype)
    _load_into_empty(model, sd, _CLIP_WHAT)
    return model.eval()
