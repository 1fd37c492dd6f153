"""LoRA loading for MultiTalk: `MultiTalkLoraLoaderMixin` reads Wan LoRAs in every published key layout, the audio
adapter's layers included, into the peft names that `load_lora_weights` loads.

Layouts (all may target the base Wan layers and MultiTalk's audio adapter alike):

- Wan's / MultiTalk's own names: `diffusion_model.blocks.N.self_attn.q.lora_down.weight`, `...lora_up.weight`,
  `....alpha`, also with `lora_A` / `lora_B`, e.g. `diffusion_model.blocks.N.audio_cross_attn.kv_linear...`,
  `diffusion_model.audio_proj.proj1...`.
- lightx2v's step-distill and FusionX LoRAs: the names above plus `diff` (a whole weight's delta), `diff_b` (a bias
  delta) and `diff_m` (the delta of a block's or the head's `modulation`).
- kohya / musubi-tuner: Wan's names with underscores for dots, e.g. `lora_unet_blocks_0_cross_attn_k.lora_down.weight`,
  `lora_unet_blocks_0_audio_cross_attn_q_linear.alpha`.
- diffusers / peft: `transformer.blocks.0.attn1.to_q.lora_A.weight`, `transformer.blocks.0.audio_attn.to_audio_kv...`.

The base Wan layers go through diffusers' own converter; the layers MultiTalk adds are renamed here, by the key map
of `transformer_original`. Deltas that no peft LoRA layer can hold (norm weights, the modulation tables, the patch
embedding's convolution, a bias delta without a weight change) are left out with a warning; keys that name no layer
of the model raise a ValueError that names them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch
from diffusers.loaders import WanLoraLoaderMixin
from diffusers.utils import logging
from huggingface_hub.utils import validate_hf_hub_args

from .._diffusers_compat import convert_original_wan_lora, fetch_lora_state_dict
from ..models.transformer_multitalk import MultiTalkTransformer3DModel
from .transformer_original import diffusers_to_original_key


logger = logging.get_logger(__name__)

# Key ending -> the part of a layer's LoRA it holds. `diff_b` (lightx2v's bias delta) is what peft calls lora_B's bias.
_SUFFIXES = {
    ".lora_down.weight": "down",
    ".lora_A.weight": "down",
    ".lora_up.weight": "up",
    ".lora_B.weight": "up",
    ".lora_B.bias": "bias",
    ".diff_b": "bias",
    ".diff": "diff",
    ".alpha": "alpha",
    ".dora_scale": "dora_scale",
}
# lightx2v names a block's (or the head's) `modulation` delta `blocks.N.diff_m` (`head.diff_m`): no layer name.
_MODULATION_KEY = re.compile(r"^(?:blocks[._]\d+|head)\.diff_m$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_KOHYA_BLOCK = re.compile(r"^blocks_(\d+)_(.+)$")
# Prefix -> naming: Wan's own (original), kohya's (original names with dots as underscores) or diffusers'.
_PREFIXES = (
    ("transformer.", "diffusers"),
    ("model.diffusion_model.", "original"),
    ("diffusion_model.", "original"),
    ("lora_unet_", "kohya"),
    ("base_model.model.", None),
    ("", None),
)


@dataclass(frozen=True)
class _Layer:
    """A weighted layer of the transformer under both names (block layers relative to their block)."""

    diffusers: str
    original: str
    in_block: bool
    linear: bool
    added: bool  # one of MultiTalk's audio-adapter layers, which diffusers' Wan transformer (and converter) lacks

    def name(self, naming: str, block: int | None) -> str:
        name = self.diffusers if naming == "diffusers" else self.original
        return f"blocks.{block}.{name}" if self.in_block else name


@functools.cache
def _layers() -> dict[tuple[str, bool, str], _Layer]:
    """(naming, in a block, name) -> layer, for every weighted layer of a MultiTalk transformer, read off a one-block
    model on the meta device (the default config has every optional layer), so names follow the model's own."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = MultiTalkTransformer3DModel(num_layers=1)
        wan = WanTransformer3DModel(num_layers=1, image_dim=1280, added_kv_proj_dim=5120, cross_attn_norm=True)
    wan_names = {name for name, _ in wan.named_modules()}
    table = {}
    for name, module in model.named_modules():
        original = diffusers_to_original_key(f"{name}.weight")
        if not isinstance(module._parameters.get("weight"), torch.Tensor) or original is None:
            continue
        in_block = name.startswith("blocks.0.")
        layer = _Layer(
            diffusers=name.removeprefix("blocks.0."),
            original=original.removeprefix("blocks.0.").removesuffix(".weight"),
            in_block=in_block,
            linear=isinstance(module, torch.nn.Linear),
            added=name not in wan_names,
        )
        for naming, key in (
            ("diffusers", layer.diffusers),
            ("original", layer.original),
            ("kohya", layer.original.replace(".", "_")),
        ):
            if table.setdefault((naming, in_block, key), layer) is not layer:
                raise RuntimeError(f"Two layers share the {naming} LoRA name {key!r}")
    return table


def _resolve(module: str, naming: str) -> tuple[_Layer, int | None] | None:
    """The layer (and block index) a LoRA key's module part names in `naming`, or None."""
    if naming == "kohya":
        # Some kohya files keep dots after the block index (`lora_unet_blocks_22.self_attn.k`): compare flattened.
        module = module.replace(".", "_")
    match = (_KOHYA_BLOCK if naming == "kohya" else _BLOCK).match(module)
    key = (naming, True, match[2]) if match else (naming, False, module)
    layer = _layers().get(key)
    return (layer, int(match[1]) if match else None) if layer else None


def _parse(key: str) -> tuple[_Layer, int | None, str] | None:
    """(layer, block index, part) for one LoRA key, or None if it names no layer's LoRA part."""
    suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
    if suffix is None:
        return None
    module = key[: -len(suffix)]
    for prefix, naming in _PREFIXES:
        if not module.startswith(prefix):
            continue
        rest = module[len(prefix) :]
        # Unprefixed keys (peft's own saves, musubi's) may be in either naming; Wan's is tried first.
        for candidate in (naming,) if naming else ("original", "diffusers"):
            found = _resolve(rest, candidate)
            if found:
                return (*found, _SUFFIXES[suffix])
        return None
    return None


def _preview(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else f" ({len(keys)})")


@dataclass
class _Parts:
    """What a LoRA file holds for one layer: part -> (key, tensor)."""

    layer: _Layer
    block: int | None
    parts: dict

    def keys(self) -> list[str]:
        return [key for key, _ in self.parts.values()]


def _group(state_dict: dict) -> tuple[list[_Parts], list[str]]:
    """The LoRA's keys grouped by layer, and the keys left out with a warning (modulation deltas, DoRA scales).
    Raises on keys that name no layer, and on a part given twice (two namings of one layer)."""
    groups, unknown, dropped, twice = {}, [], [], []
    for key, tensor in state_dict.items():
        if _MODULATION_KEY.match(
            key.removeprefix("model.").removeprefix("diffusion_model.").removeprefix("lora_unet_")
        ):
            dropped.append(key)
            continue
        parsed = _parse(key)
        if parsed is None:
            unknown.append(key)
            continue
        layer, block, part = parsed
        group = groups.setdefault((layer, block), _Parts(layer, block, {}))
        if part in group.parts:
            twice.append(f"{group.parts[part][0]} / {key}")
        group.parts[part] = (key, tensor)
    if unknown:
        raise ValueError(
            f"This LoRA has keys that name no layer of the MultiTalk transformer in any known layout (Wan's "
            f"`diffusion_model.` names, lightx2v's diff/diff_b/diff_m, kohya's `lora_unet_`, diffusers' "
            f"`transformer.`): {_preview(unknown)}"
        )
    if twice:
        raise ValueError(f"This LoRA gives these layers' weights twice: {_preview(twice)}")
    for group in groups.values():
        if "dora_scale" in group.parts:
            # As diffusers does: DoRA's magnitudes are dropped and the rest loads as a plain LoRA.
            dropped.append(group.parts.pop("dora_scale")[0])
    return list(groups.values()), dropped


def _as_lora(group: _Parts) -> dict | None:
    """{"down", "up"[, "bias"]} for one layer with alpha folded in (scale alpha / rank, so the loaded adapter's own
    scale is 1), a whole-weight `diff` as an exact pair; None when no peft LoRA layer can hold the deltas."""
    parts = {part: tensor for part, (_, tensor) in group.parts.items()}
    if not group.layer.linear or set(parts) <= {"bias", "alpha"}:
        # Norms, the patch embedding's convolution and the modulation have no LoRA layer; a bias-only delta would
        # need lora_A's width, which only the model knows.
        return None
    if "diff" in parts:
        if "down" in parts or "up" in parts:
            raise ValueError(f"This LoRA gives both a weight delta and a low-rank pair for: {_preview(group.keys())}")
        diff = parts.pop("diff")
        # A whole-weight delta is applied as it stands (as lightx2v and MultiTalk's own loader do): no alpha / rank.
        parts.pop("alpha", None)
        if diff.ndim != 2:
            raise ValueError(f"This LoRA's weight delta for a linear layer is not a matrix: {_preview(group.keys())}")
        out_features, in_features = diff.shape
        # diff = up @ down with the identity on the smaller side: exact, of rank min(out, in).
        if out_features <= in_features:
            parts["down"], parts["up"] = diff, torch.eye(out_features, dtype=diff.dtype)
        else:
            parts["down"], parts["up"] = torch.eye(in_features, dtype=diff.dtype), diff
    if "down" not in parts or "up" not in parts:
        raise ValueError(
            f"This LoRA has a lora_down/lora_A without its lora_up/lora_B or back: {_preview(group.keys())}"
        )
    if "alpha" in parts:
        down = parts["down"]
        parts["down"] = (down.float() * (float(parts.pop("alpha")) / down.shape[0])).to(down.dtype)
    return parts


def _peft_keys(group: _Parts, lora: dict) -> dict:
    name = f"transformer.{group.layer.name('diffusers', group.block)}"
    out = {f"{name}.lora_A.weight": lora["down"], f"{name}.lora_B.weight": lora["up"]}
    if "bias" in lora:
        out[f"{name}.lora_B.bias"] = lora["bias"]
    return out


def _wan_keys(group: _Parts, lora: dict) -> dict:
    name = f"diffusion_model.{group.layer.name('original', group.block)}"
    out = {f"{name}.lora_down.weight": lora["down"], f"{name}.lora_up.weight": lora["up"]}
    if "bias" in lora:
        out[f"{name}.diff_b"] = lora["bias"]
    return out


def _convert_base(loras: list[tuple[_Parts, dict]]) -> dict:
    """The base Wan layers through diffusers' converter, its output checked against the names the model's key map
    gives (a diffusers release that converts differently fails here, not later as missing adapters)."""
    expected = {}
    for group, lora in loras:
        expected.update(_peft_keys(group, lora))
    if not any(group.layer.in_block for group, _ in loras):
        # diffusers' converter reads the block range off the keys and fails without any: rename these few here.
        return expected
    wan_named = {}
    for group, lora in loras:
        wan_named.update(_wan_keys(group, lora))
    converted = convert_original_wan_lora(wan_named)
    if set(converted) != set(expected):
        raise ValueError(
            "diffusers' Wan LoRA converter renamed these keys otherwise than the model's key map: missing "
            f"{_preview(set(expected) - set(converted))}; unexpected {_preview(set(converted) - set(expected))}"
        )
    return converted


def _is_peft_layout(state_dict: dict) -> bool:
    return bool(state_dict) and all(
        key.endswith((".lora_A.weight", ".lora_B.weight", ".lora_B.bias"))
        and _resolve(key.removeprefix("transformer.").rsplit(".lora_", 1)[0], "diffusers")
        for key in state_dict
    )


def convert_multitalk_lora_to_diffusers(state_dict: dict) -> dict:
    """A LoRA state dict in any supported layout -> diffusers' peft names (`transformer.blocks.0.attn1.to_q.lora_A.
    weight`, `transformer.blocks.0.audio_attn.to_audio_kv.lora_B.weight`, ...). The input is not modified."""
    if _is_peft_layout(state_dict):
        # Already diffusers' names: as saved, only the `transformer.` prefix added where peft left it off.
        return {k if k.startswith("transformer.") else f"transformer.{k}": v for k, v in state_dict.items()}
    groups, dropped = _group(state_dict)
    base, added = [], {}
    for group in groups:
        lora = _as_lora(group)
        if lora is None:
            dropped.extend(group.keys())
        elif group.layer.added:
            added.update(_peft_keys(group, lora))
        else:
            base.append((group, lora))
    if dropped:
        logger.warning(
            "These LoRA keys hold deltas that no LoRA layer can carry (norm weights, modulation tables, the patch "
            "embedding's convolution, bias deltas without a weight change, DoRA magnitudes) and are left out: "
            f"{_preview(dropped)}"
        )
    converted = {**(_convert_base(base) if base else {}), **added}
    if not converted:
        # diffusers would fail on an empty adapter with an IndexError; say what happened instead.
        raise ValueError(f"Nothing in this LoRA ({len(state_dict)} keys) can be loaded as LoRA layers.")
    return converted


class MultiTalkLoraLoaderMixin(WanLoraLoaderMixin):
    """diffusers' Wan LoRA loader for MultiTalk pipelines: `load_lora_weights`, `set_adapters`, `fuse_lora`, ... as
    in diffusers, with `lora_state_dict` reading every published Wan layout and the audio adapter's layers (see
    the module docstring)."""

    @classmethod
    @validate_hf_hub_args
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict, **kwargs):
        """The LoRA at `pretrained_model_name_or_path_or_dict` (a state dict, a file, a folder or a Hub repo, with
        `weight_name`, `subfolder`, ... as diffusers takes them) in diffusers' peft names. With
        `return_lora_metadata=True`, also diffusers' adapter metadata, kept only for a file already in those names
        (converted weights carry their alpha themselves)."""
        return_lora_metadata = kwargs.pop("return_lora_metadata", False)
        state_dict, metadata = fetch_lora_state_dict(pretrained_model_name_or_path_or_dict, **kwargs)
        if not _is_peft_layout(state_dict):
            metadata = None
        state_dict = convert_multitalk_lora_to_diffusers(state_dict)
        return (state_dict, metadata) if return_lora_metadata else state_dict
