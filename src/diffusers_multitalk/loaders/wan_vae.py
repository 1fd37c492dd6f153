"""Wan2.1's causal 3D VAE (``Wan2.1_VAE.pth``) <-> :class:`diffusers.AutoencoderKLWan`.

The encoder, middle and head keys go through diffusers' ``convert_wan_vae_to_diffusers``. That function hard-codes
the decoder layout for ``num_res_blocks=2``, so the decoder's up-sampling blocks are renamed here first, for any block
count.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

import torch

from .original_folders import WAN_VAE_CHECKPOINT
from .wan_checkpoint import (
    _cast,
    _empty_weights,
    _layout_error,
    _load_into_empty,
    _load_original_state_dict,
    _require,
    _resolve_checkpoint,
)


__all__ = [
    "convert_vae_to_original",
    "convert_wan_vae_state_dict",
    "load_vae_from_original",
    "vae_config_from_wan_state_dict",
]


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
