"""Load the Wan2.1 text encoder, CLIP image encoder and VAE straight from the official checkpoint folder.

The official ``Wan2.1-I2V-14B-480P/`` folder (which MultiTalk builds on) stores three of its components as plain
PyTorch state dicts in Wan's own module layout:

* ``models_t5_umt5-xxl-enc-bf16.pth``: the umT5-XXL encoder. It becomes a :class:`transformers.UMT5EncoderModel`.
* ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``: an XLM-RoBERTa CLIP. Only the ViT-H/14 vision tower
  (``visual.*``) is used. It becomes a :class:`transformers.CLIPVisionModel`.
* ``Wan2.1_VAE.pth``: the causal 3D VAE. It becomes a :class:`diffusers.AutoencoderKLWan`.

Each loader reads the ``.pth`` file memory-mapped, works out the model config from the tensor shapes, renames the
keys in memory and builds the model on the meta device. The loaded tensors are then assigned to it, so the weights
are never held twice (the real T5 file is 11 GB).

The renames also run the other way (``convert_umt5_encoder_to_original``, ``convert_clip_vision_to_original``,
``convert_vae_to_original``): transformers / diffusers state dicts back to Wan's key names, as
``diffusers_multitalk.testing`` needs to write checkpoints in the original layout.

Where the two implementations meet:

* T5: Wan's FFN gate applies the tanh approximation of GELU. That is ``gelu_new``, which transformers selects for
  ``feed_forward_proj="gated-gelu"``. Each layer has its own relative-position bias (umT5, ``shared_pos=False``) and
  attention is unscaled. The encoder returns a hidden state for every position, padded ones too: a padded query still
  attends to the real tokens, so those rows are finite and non-zero. The reference pipeline keeps
  ``out[i, :len_i]`` and zero-pads to ``text_len``. Do that trimming downstream; the padded rows are not meant to be
  used.
* CLIP: the tower uses exact (erf) GELU, a class token, a pre-norm (``pre_layrnorm``) and a bias-free patch
  embedding. The DiT receives the output of every transformer block but the last, with no post-norm: the
  ``hidden_states[-2]`` of a transformers ``CLIPVisionModel`` (see :func:`clip_image_features`). The attention head
  count does not show in any tensor shape. It comes from a table of known tower widths (1280 -> 16 heads for ViT-H),
  or you pass it.
* VAE: the encoder, middle and head keys go through ``diffusers``' ``convert_wan_vae_to_diffusers``. That function
  hard-codes the decoder layout for ``num_res_blocks=2``, so the decoder's up-sampling blocks are renamed here first,
  for any block count.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from ..hooks.offload import input_device
from .original_folders import (
    WAN_CLIP_CHECKPOINT,
    WAN_CLIP_TOKENIZER_DIR,
    WAN_T5_CHECKPOINT,
    WAN_UMT5_TOKENIZER_DIR,
    WAN_VAE_CHECKPOINT,
)

__all__ = [
    "WAN_T5_CHECKPOINT",
    "WAN_CLIP_CHECKPOINT",
    "WAN_VAE_CHECKPOINT",
    "WAN_UMT5_TOKENIZER_DIR",
    "WAN_CLIP_TOKENIZER_DIR",
    "CLIP_IMAGE_MEAN",
    "CLIP_IMAGE_STD",
    "load_umt5_encoder_from_original",
    "convert_umt5_encoder_to_original",
    "load_clip_vision_from_original",
    "convert_clip_vision_to_original",
    "clip_image_features",
    "preprocess_clip_frames",
    "load_vae_from_original",
    "convert_vae_to_original",
    "load_tokenizer",
    "load_umt5_tokenizer",
    "load_clip_tokenizer",
]

# File and folder names inside the official Wan2.1 checkpoint folder.

_WAN_REPO_ID = "Wan-AI/Wan2.1-I2V-14B-480P"
_DOWNLOAD_HINT = f"huggingface-cli download {_WAN_REPO_ID} --local-dir <dir>"

# Normalisation that Wan applies to the CLIP input (the OpenAI CLIP statistics).
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

# The head count of a ViT cannot be read off its weights; these are the usual open_clip towers by width, plus the
# 32-wide toy tower of `diffusers_multitalk.tiny` (TINY_IMAGE_DIM, 2 heads), so that tiny folders written in Wan's
# layout (`diffusers_multitalk.testing`) load through `WanMultiTalkPipeline.from_original` like the real ones. No
# real CLIP is that narrow.
_KNOWN_VIT_HEADS = {32: 2, 768: 12, 1024: 16, 1280: 16, 1664: 16}

_MAX_LISTED_KEYS = 8


# --------------------------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------------------------


def _resolve_checkpoint(path: str | os.PathLike, default_name: str, what: str) -> Path:
    """Accept the checkpoint file itself or the Wan2.1 folder that contains it."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / default_name
    if not p.is_file():
        raise FileNotFoundError(
            f"{what} checkpoint not found: '{p}'. It is the file '{default_name}' of the official Wan2.1 release; "
            f"download the folder with `{_DOWNLOAD_HINT}` and pass '<dir>/{default_name}' (or '<dir>')."
        )
    return p


def _load_original_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        # Files written by the legacy (non-zip) serializer cannot be memory-mapped.
        if "mmap" not in str(err):
            raise
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(
            f"'{path}' is not a {what} checkpoint: expected a flat state dict of tensors, got {type(sd).__name__}."
        )
    return dict(sd)


def _fmt_keys(keys: Iterable[str]) -> str:
    keys = list(keys)  # kept in checkpoint / model order, which reads best
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED_KEYS])
    if len(keys) > _MAX_LISTED_KEYS:
        shown += f", ... ({len(keys) - _MAX_LISTED_KEYS} more)"
    return f"[{shown}]"


def _layout_error(
    what: str, missing: Iterable[str] = (), unexpected: Iterable[str] = (), extra: str = ""
) -> ValueError:
    missing, unexpected = list(missing), list(unexpected)
    parts = [f"The state dict does not have the layout of {what}."]
    if missing:
        parts.append(f"Missing keys ({len(missing)}): {_fmt_keys(missing)}.")
    if unexpected:
        parts.append(f"Unexpected keys ({len(unexpected)}): {_fmt_keys(unexpected)}.")
    if extra:
        parts.append(extra)
    parts.append("Check that the right file was passed to the right loader.")
    return ValueError(" ".join(parts))


def _require(sd: Mapping[str, torch.Tensor], required: Iterable[str], what: str, foreign: Iterable[str]) -> None:
    missing = [k for k in required if k not in sd]
    if missing:
        raise _layout_error(what, missing=missing, unexpected=foreign)


def _load_into_empty(
    model: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, tied: Mapping[str, str] | None = None
):
    """Strictly assign ``sd`` to a model built on the meta device; tensors are adopted, not copied.

    ``tied`` maps a parameter that shares its tensor with another one (target -> source); it must not be in ``sd``.
    """
    tied = tied or {}
    expected = {k: v for k, v in model.state_dict().items() if k not in tied}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise _layout_error(what, missing=missing, unexpected=unexpected)
    wrong = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(sd[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ValueError(f"Shape mismatch while loading {what}: " + "; ".join(wrong[:_MAX_LISTED_KEYS]))
    model.load_state_dict(sd, strict=False, assign=True)
    for target, source in tied.items():
        src_mod, _, src_name = source.rpartition(".")
        dst_mod, _, dst_name = target.rpartition(".")
        setattr(model.get_submodule(dst_mod), dst_name, getattr(model.get_submodule(src_mod), src_name))
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left and not all(t.is_meta for t in sd.values()):
        raise RuntimeError(f"{what}: tensors left uninitialised after loading: {_fmt_keys(left)}")
    return model


def _cast(sd: dict[str, torch.Tensor], torch_dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Cast in place (entry by entry, so the memory-mapped original of each tensor can be released)."""
    if torch_dtype is None:
        return sd
    for k in list(sd):
        if sd[k].is_floating_point() and sd[k].dtype != torch_dtype:
            sd[k] = sd[k].to(torch_dtype)
    return sd


def _empty_weights():
    from accelerate import init_empty_weights

    # Parameters on meta, buffers (e.g. CLIP's position_ids) real.
    return init_empty_weights(include_buffers=False)


def _rename(sd: dict[str, torch.Tensor], rules: list[tuple[re.Pattern, str]]) -> tuple[dict, list[str]]:
    out, unmatched = {}, []
    for key in list(sd):
        for pattern, repl in rules:
            m = pattern.fullmatch(key)
            if m:
                out[m.expand(repl)] = sd.pop(key)
                break
        else:
            unmatched.append(key)
    return out, unmatched


_RULE_GROUP = re.compile(r"\((?!\?)([^()]*)\)")


def _invert_rules(rules: list[tuple[re.Pattern, str]]) -> list[tuple[re.Pattern, str]]:
    r"""The inverse of a table of ``(fullmatch pattern, replacement)`` renames.

    The patterns may only hold escaped literals and un-nested groups, each used once by the replacement (as ``\1``),
    as the tables in this module do: ``blocks\.(\d+)\.norm1\.weight`` -> ``encoder.block.\1.layer.0.layer_norm.weight``
    becomes ``encoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight`` -> ``blocks.\1.norm1.weight``.
    """
    inverse = []
    for pattern, repl in rules:
        pieces = _RULE_GROUP.split(pattern.pattern)  # literal, group, literal, group, ..., literal
        literals, groups = pieces[0::2], pieces[1::2]
        repl_pieces = re.split(r"\\(\d)", repl)  # text, group number, text, ...
        order = [int(n) for n in repl_pieces[1::2]]
        if sorted(order) != list(range(1, len(groups) + 1)):
            raise ValueError(f"Rename rule {pattern.pattern!r} -> {repl!r} cannot be inverted.")
        new_pattern = "".join(
            re.escape(piece) if i % 2 == 0 else f"({groups[int(piece) - 1]})" for i, piece in enumerate(repl_pieces)
        )
        new_repl = ""
        for i, literal in enumerate(literals):
            new_repl += re.sub(r"\\(.)", r"\1", literal)
            if i < len(groups):
                new_repl += f"\\{order.index(i + 1) + 1}"
        inverse.append((re.compile(new_pattern), new_repl))
    return inverse


def _strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}


# --------------------------------------------------------------------------------------------------------------------
# umT5 text encoder
# --------------------------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------------------------
# CLIP vision tower
# --------------------------------------------------------------------------------------------------------------------

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


def clip_vision_config_from_wan_state_dict(
    sd: Mapping[str, torch.Tensor], num_attention_heads: int | None = None
):
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


def preprocess_clip_frames(frames: torch.Tensor, layout: str | None = None, image_size: int = 224) -> torch.Tensor:
    """Turn video frames in [-1, 1] into CLIP pixel values, the way Wan prepares its CLIP input.

    Each frame is resized to ``image_size`` x ``image_size`` (bicubic, ``align_corners=False``, no antialiasing and
    no clamping), mapped to [0, 1] and normalised with :data:`CLIP_IMAGE_MEAN` / :data:`CLIP_IMAGE_STD`.

    Args:
        frames: ``[C, T, H, W]`` (one video: every frame becomes one image), ``[B, C, T, H, W]`` (a batch of
            videos, images ordered video by video) or ``[B, C, H, W]`` (images). MultiTalk passes the last
            condition frame, ``cond_image[:, :, -1:]``.
        layout: ``"CTHW"``, ``"BCTHW"`` or ``"BCHW"``. Leave it ``None`` to detect the layout from the rank and
            which axis holds the 3 colour channels. A 4-D tensor whose first two axes are both 3 is ambiguous and
            needs it.
        image_size: side of the square CLIP input (224 for Wan's ViT-H/14).

    Returns:
        ``[N, 3, image_size, image_size]`` in the dtype of ``frames`` (floating point).
    """
    if not frames.is_floating_point():
        raise TypeError(f"frames must be a floating point tensor in [-1, 1], got {frames.dtype}.")
    if layout is None:
        if frames.ndim == 5:
            layout = "BCTHW"
        elif frames.ndim == 4:
            c_first, c_second = frames.shape[0] == 3, frames.shape[1] == 3
            if c_first and c_second:
                raise ValueError(
                    f"Ambiguous frames of shape {tuple(frames.shape)}: pass layout='CTHW' or layout='BCHW'."
                )
            if not (c_first or c_second):
                raise ValueError(f"frames of shape {tuple(frames.shape)} have no axis of 3 colour channels.")
            layout = "CTHW" if c_first else "BCHW"
        else:
            raise ValueError(f"frames must be 4-D or 5-D, got shape {tuple(frames.shape)}.")
    layout = layout.upper()
    expected_ndim = {"CTHW": 4, "BCHW": 4, "BCTHW": 5}
    if layout not in expected_ndim:
        raise ValueError(f"layout must be one of {sorted(expected_ndim)}, got {layout!r}.")
    if frames.ndim != expected_ndim[layout]:
        raise ValueError(f"layout {layout!r} needs a {expected_ndim[layout]}-D tensor, got {tuple(frames.shape)}.")
    if layout == "CTHW":
        images = frames.transpose(0, 1)
    elif layout == "BCTHW":
        images = frames.transpose(1, 2).flatten(0, 1)
    else:
        images = frames
    if images.shape[1] != 3:
        raise ValueError(f"expected 3 colour channels, got {images.shape[1]} (shape {tuple(frames.shape)}).")

    images = F.interpolate(images, size=(image_size, image_size), mode="bicubic", align_corners=False)
    images = images * 0.5 + 0.5
    mean = torch.tensor(CLIP_IMAGE_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_IMAGE_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def clip_image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The CLIP features Wan feeds the DiT: the output of all blocks but the last, without the post-norm.

    In transformers terms this is ``model(pixel_values, output_hidden_states=True).hidden_states[-2]``
    (``hidden_states[0]`` is the embedding after ``pre_layrnorm``, ``hidden_states[i]`` the output of block ``i``).
    Returns ``[B, 1 + num_patches, hidden_size]`` (``[B, 257, 1280]`` for Wan).
    """
    pixel_values = pixel_values.to(device=input_device(model), dtype=next(model.parameters()).dtype)
    out = model(pixel_values=pixel_values, output_hidden_states=True)
    return out.hidden_states[-2]


# --------------------------------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------------------------------

_VAE_WHAT = "Wan2.1's VAE (Wan2.1_VAE.pth: encoder.*, decoder.*, conv1.*, conv2.*)"

_RESNET_SUFFIXES = {
    "residual.0.gamma": "norm1.gamma",
    "residual.2.weight": "conv1.weight",
    "residual.2.bias": "conv1.bias",
    "residual.3.gamma": "norm2.gamma",
    "residual.6.weight": "conv2.weight",
    "residual.6.bias": "conv2.bias",
    "shortcut.weight": "conv_shortcut.weight",
    "shortcut.bias": "conv_shortcut.bias",
}


def _sequential_kinds(sd: Mapping[str, torch.Tensor], prefix: str) -> list[tuple[int, str]]:
    """Kinds ('res', 'resample' or 'attn') of the entries of a Wan ``nn.Sequential`` such as ``encoder.downsamples``."""
    indices = sorted({int(k[len(prefix) :].split(".")[0]) for k in sd if k.startswith(prefix)})
    kinds = []
    for i in indices:
        p = f"{prefix}{i}."
        if p + "residual.0.gamma" in sd:
            kinds.append((i, "res"))
        elif p + "resample.1.weight" in sd:
            kinds.append((i, "resample"))
        elif p + "to_qkv.weight" in sd:
            kinds.append((i, "attn"))
        else:
            raise _layout_error(_VAE_WHAT, unexpected=[k for k in sd if k.startswith(p)])
    if [i for i, _ in kinds] != list(range(len(kinds))):
        raise _layout_error(_VAE_WHAT, extra=f"'{prefix}*' entries are not numbered 0..N-1: {indices}.")
    return kinds


def _stages(kinds: list[tuple[int, str]], what: str) -> list[tuple[list[int], int | None]]:
    """Split a flat block list into stages of residual blocks, each closed by an optional resample entry."""
    stages, current = [], []
    for i, kind in kinds:
        if kind == "attn":
            raise ValueError(
                f"{what}: attention blocks inside the up/down-sampling path (attn_scales) are not supported."
            )
        if kind == "res":
            current.append(i)
        else:
            stages.append((current, i))
            current = []
    stages.append((current, None))
    return stages


def vae_config_from_wan_state_dict(sd: Mapping[str, torch.Tensor]) -> dict:
    """Infer the ``AutoencoderKLWan`` config (without latents statistics) of a Wan ``WanVAE_`` state dict."""
    required = [
        "encoder.conv1.weight",
        "encoder.head.2.weight",
        "conv1.weight",
        "conv2.weight",
        "decoder.conv1.weight",
        "decoder.head.2.weight",
        "encoder.downsamples.0.residual.2.weight",
        "decoder.upsamples.0.residual.2.weight",
    ]
    foreign = [k for k in sd if not re.match(r"(encoder|decoder)\.|conv[12]\.", k)]
    _require(sd, required, _VAE_WHAT, foreign)
    if foreign:
        raise _layout_error(_VAE_WHAT, unexpected=foreign)

    base_dim = int(sd["encoder.conv1.weight"].shape[0])
    z_dim = int(sd["conv2.weight"].shape[0])
    stages = _stages(_sequential_kinds(sd, "encoder.downsamples."), _VAE_WHAT)
    num_res_blocks = len(stages[0][0])
    if num_res_blocks == 0 or any(len(res) != num_res_blocks for res, _ in stages):
        raise _layout_error(_VAE_WHAT, extra=f"Uneven encoder stages: {[len(r) for r, _ in stages]} residual blocks.")
    dims = [int(sd[f"encoder.downsamples.{res[-1]}.residual.2.weight"].shape[0]) for res, _ in stages]
    if any(d % base_dim for d in dims):
        raise _layout_error(_VAE_WHAT, extra=f"Stage widths {dims} are not multiples of the base width {base_dim}.")
    dim_mult = [d // base_dim for d in dims]
    temperal_downsample = [f"encoder.downsamples.{r}.time_conv.weight" in sd for _, r in stages[:-1]]
    decoder_out = int(sd["decoder.head.2.weight"].shape[1])
    config = dict(
        base_dim=base_dim,
        z_dim=z_dim,
        dim_mult=dim_mult,
        num_res_blocks=num_res_blocks,
        attn_scales=[],
        temperal_downsample=temperal_downsample,
        dropout=0.0,
        in_channels=int(sd["encoder.conv1.weight"].shape[1]),
        out_channels=int(sd["decoder.head.2.weight"].shape[0]),
    )
    if decoder_out != base_dim * dim_mult[0]:
        if decoder_out % dim_mult[0]:
            raise _layout_error(_VAE_WHAT, extra=f"Decoder output width {decoder_out} does not fit dim_mult.")
        config["decoder_base_dim"] = decoder_out // dim_mult[0]
    return config


def convert_wan_vae_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Wan ``WanVAE_`` keys to ``AutoencoderKLWan`` keys (consumes ``sd``; no tensor is copied).

    The decoder's ``upsamples.N`` entries are renamed here for any ``num_res_blocks``. Everything else goes through
    diffusers' ``convert_wan_vae_to_diffusers``, which hard-codes the decoder of the released model
    (``num_res_blocks=2``). A key that is already in diffusers form passes through it unchanged.
    """
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    up = "decoder.upsamples."
    renamed = {}
    for stage, (res, resample) in enumerate(_stages(_sequential_kinds(sd, up), _VAE_WHAT)):
        targets = {i: (f"decoder.up_blocks.{stage}.resnets.{j}.", True) for j, i in enumerate(res)}
        if resample is not None:
            targets[resample] = (f"decoder.up_blocks.{stage}.upsamplers.0.", False)
        for i, (target, is_resnet) in targets.items():
            src = f"{up}{i}."
            for key in [k for k in sd if k.startswith(src)]:
                suffix = key[len(src) :]
                if is_resnet:
                    if suffix not in _RESNET_SUFFIXES:
                        raise _layout_error(_VAE_WHAT, unexpected=[key])
                    suffix = _RESNET_SUFFIXES[suffix]
                renamed[target + suffix] = sd.pop(key)
    sd.update(renamed)
    out = convert_wan_vae_to_diffusers(sd)
    sd.clear()
    return out


_RESNET_SUFFIXES_INVERSE = {v: k for k, v in _RESNET_SUFFIXES.items()}
# diffusers prefix -> Wan prefix, for the keys outside the numbered encoder / decoder stages.
_VAE_PREFIXES_INVERSE = {
    "quant_conv.": "conv1.",
    "post_quant_conv.": "conv2.",
    "encoder.conv_in.": "encoder.conv1.",
    "decoder.conv_in.": "decoder.conv1.",
    "encoder.norm_out.": "encoder.head.0.",
    "encoder.conv_out.": "encoder.head.2.",
    "decoder.norm_out.": "decoder.head.0.",
    "decoder.conv_out.": "decoder.head.2.",
    "encoder.mid_block.attentions.0.": "encoder.middle.1.",
    "decoder.mid_block.attentions.0.": "decoder.middle.1.",
}
_VAE_MID_RESNET = re.compile(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)")
_VAE_DOWN = re.compile(r"encoder\.down_blocks\.(\d+)\.(.+)")
_VAE_UP = re.compile(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.+)")


def convert_vae_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``AutoencoderKLWan`` state dict back to Wan's ``WanVAE_`` keys (the inverse of
    :func:`convert_wan_vae_state_dict`, for any ``num_res_blocks``; tensors are not copied, ``sd`` is left as it is).

    The decoder's ``up_blocks.S.resnets.J`` / ``up_blocks.S.upsamplers.0`` become the flat ``decoder.upsamples.N``
    list, stage by stage: the stage's residual blocks, then its resample entry.
    """
    what = "a diffusers AutoencoderKLWan state dict"
    up_entries: dict[int, dict[str, int]] = {}  # stage -> {"resnets": count, "upsampler": 0/1}
    for key in sd:
        m = _VAE_UP.fullmatch(key)
        if m:
            stage = up_entries.setdefault(int(m.group(1)), {"resnets": 0, "upsampler": 0})
            if m.group(3) is not None:
                stage["resnets"] = max(stage["resnets"], int(m.group(3)) + 1)
            else:
                stage["upsampler"] = 1
    if sorted(up_entries) != list(range(len(up_entries))):
        raise _layout_error(what, extra=f"decoder.up_blocks are not numbered 0..N-1: {sorted(up_entries)}.")
    first_index, index = {}, 0
    for stage in sorted(up_entries):
        first_index[stage] = index
        index += up_entries[stage]["resnets"] + up_entries[stage]["upsampler"]

    def resnet_suffix(suffix: str, key: str) -> str:
        if suffix not in _RESNET_SUFFIXES_INVERSE:
            raise _layout_error(what, unexpected=[key])
        return _RESNET_SUFFIXES_INVERSE[suffix]

    out, unmatched = {}, []
    for key, value in sd.items():
        new = None
        for prefix, original in _VAE_PREFIXES_INVERSE.items():
            if key.startswith(prefix):
                new = original + key[len(prefix) :]
                break
        if new is None and (m := _VAE_MID_RESNET.fullmatch(key)):
            new = f"{m.group(1)}.middle.{2 * int(m.group(2))}.{resnet_suffix(m.group(3), key)}"
        if new is None and (m := _VAE_DOWN.fullmatch(key)):
            suffix = m.group(2)
            new = f"encoder.downsamples.{m.group(1)}.{_RESNET_SUFFIXES_INVERSE.get(suffix, suffix)}"
        if new is None and (m := _VAE_UP.fullmatch(key)):
            stage, suffix = int(m.group(1)), m.group(4)
            if m.group(3) is not None:
                new = f"decoder.upsamples.{first_index[stage] + int(m.group(3))}.{resnet_suffix(suffix, key)}"
            else:
                new = f"decoder.upsamples.{first_index[stage] + up_entries[stage]['resnets']}.{suffix}"
        if new is None:
            unmatched.append(key)
        else:
            out[new] = value
    if unmatched:
        raise _layout_error(what, unexpected=unmatched)
    return out


def load_vae_from_original(
    path: str | os.PathLike,
    torch_dtype: torch.dtype | None = None,
    latents_mean: Iterable[float] | None = None,
    latents_std: Iterable[float] | None = None,
):
    """Load Wan's ``Wan2.1_VAE.pth`` as a :class:`diffusers.AutoencoderKLWan`.

    Args:
        path: the ``.pth`` file, or the Wan2.1 checkpoint folder holding it.
        torch_dtype: dtype of the returned model; ``None`` keeps the stored dtype.
        latents_mean, latents_std: per-channel latent statistics stored in the config. They default to the Wan2.1
            values (diffusers' ``AutoencoderKLWan`` defaults), which apply to ``z_dim=16`` only.

    Wan's ``WanVAE.encode`` equals ``(vae.encode(x).latent_dist.mean - mean) / std`` and ``WanVAE.decode(z)`` equals
    ``vae.decode(z * std + mean).sample`` (clamped to [-1, 1]), with ``mean`` / ``std`` taken from ``vae.config``.
    """
    from diffusers import AutoencoderKLWan

    file = _resolve_checkpoint(path, WAN_VAE_CHECKPOINT, "Wan2.1 VAE")
    sd = _load_original_state_dict(file, "Wan2.1 VAE")
    config = vae_config_from_wan_state_dict(sd)
    z_dim = config["z_dim"]
    if (latents_mean is None) != (latents_std is None):
        raise ValueError("Pass both latents_mean and latents_std, or neither.")
    if latents_mean is None:
        if z_dim != 16:
            raise ValueError(
                f"This VAE has z_dim={z_dim}; the built-in Wan2.1 latent statistics are for z_dim=16. "
                "Pass latents_mean= and latents_std=."
            )
    else:
        latents_mean = [float(v) for v in (latents_mean.tolist() if torch.is_tensor(latents_mean) else latents_mean)]
        latents_std = [float(v) for v in (latents_std.tolist() if torch.is_tensor(latents_std) else latents_std)]
        if len(latents_mean) != z_dim or len(latents_std) != z_dim:
            raise ValueError(
                f"latents_mean / latents_std need {z_dim} values, got {len(latents_mean)} / {len(latents_std)}."
            )
        config.update(latents_mean=latents_mean, latents_std=latents_std)
    sd = _cast(convert_wan_vae_state_dict(sd), torch_dtype)
    with _empty_weights():
        model = AutoencoderKLWan(**config)
    _load_into_empty(model, sd, _VAE_WHAT)
    return model.eval()


# --------------------------------------------------------------------------------------------------------------------
# tokenizers
# --------------------------------------------------------------------------------------------------------------------

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "sentencepiece.bpe.model")


def load_tokenizer(path: str | os.PathLike, **kwargs):
    """``AutoTokenizer.from_pretrained`` on a local folder, with a clear error if it is missing or empty."""
    from transformers import AutoTokenizer

    folder = Path(path).expanduser()
    if not folder.is_dir() or not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"Tokenizer folder not found or empty: '{folder}' (looked for one of {list(_TOKENIZER_FILES)}). "
            f"The Wan2.1 release ships its tokenizers in '<dir>/{WAN_UMT5_TOKENIZER_DIR}' and "
            f"'<dir>/{WAN_CLIP_TOKENIZER_DIR}'; download it with `{_DOWNLOAD_HINT}`."
        )
    kwargs.setdefault("local_files_only", True)
    return AutoTokenizer.from_pretrained(str(folder), **kwargs)


def _tokenizer_folder(folder: str | os.PathLike, subdir: str) -> Path:
    p = Path(folder).expanduser()
    return p / subdir if (p / subdir).is_dir() else p


def load_umt5_tokenizer(folder: str | os.PathLike, **kwargs):
    """The umT5 tokenizer: ``folder`` is ``<dir>/google/umt5-xxl`` or the Wan2.1 folder ``<dir>`` itself."""
    return load_tokenizer(_tokenizer_folder(folder, WAN_UMT5_TOKENIZER_DIR), **kwargs)


def load_clip_tokenizer(folder: str | os.PathLike, **kwargs):
    """The XLM-RoBERTa tokenizer of Wan's CLIP: ``<dir>/xlm-roberta-large`` or the Wan2.1 folder (unused by I2V)."""
    return load_tokenizer(_tokenizer_folder(folder, WAN_CLIP_TOKENIZER_DIR), **kwargs)
