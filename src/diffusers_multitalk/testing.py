"""Test helpers: the tiny random pipeline written out as the official download folders, in their original layouts.

`write_tiny_original_folders(root)` gives the three folders a user downloads (`Wan2.1-I2V-14B-480P/`,
`MeiGen-MultiTalk/`, `chinese-wav2vec2-base/`) with the file names, key names and formats of the real releases, but
holding the weights of `make_tiny_components(seed)`. `WanMultiTalkPipeline.from_original` on them rebuilds exactly
those components, so the whole original-checkpoint path (loaders, converter, `multitalk convert`) can be tested on a
CPU in seconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .loaders.original_folders import (
    DIT_INDEX,
    MULTITALK_FILE,
    WAN_CLIP_CHECKPOINT,
    WAN_T5_CHECKPOINT,
    WAN_UMT5_TOKENIZER_DIR,
    WAN_VAE_CHECKPOINT,
)
from .loaders.transformer_original import convert_multitalk_transformer_to_original
from .loaders.wan_clip import convert_clip_vision_to_original
from .loaders.wan_umt5 import convert_umt5_encoder_to_original
from .loaders.wan_vae import convert_vae_to_original


__all__ = [
    "column_person_masks",
    "tiny_generation_latents",
    "WAN_DIR_NAME",
    "MULTITALK_DIR_NAME",
    "WAV2VEC_DIR_NAME",
    "write_tiny_original_folders",
    "write_tiny_infinitetalk_folders",
    "write_tiny_flashtalk_folders",
    "wan_original_config",
]

WAN_DIR_NAME = "Wan2.1-I2V-14B-480P"
MULTITALK_DIR_NAME = "MeiGen-MultiTalk"
WAV2VEC_DIR_NAME = "chinese-wav2vec2-base"
NUM_DIT_SHARDS = 2


def _is_audio_key(original_key: str) -> bool:
    """Keys that MeiGen-MultiTalk's `multitalk.safetensors` holds (the rest are Wan2.1-I2V's)."""
    return original_key.startswith("audio_proj.") or ".audio_cross_attn." in original_key or ".norm_x." in original_key


def wan_original_config(transformer_config) -> dict:
    """Wan's `config.json` for a `MultiTalkTransformer3DModel` config, as the Wan2.1 release writes it, plus the
    audio-adapter fields that differ from MultiTalk's defaults (the real release needs none: its wav2vec2 is
    12 x 768 and the adapter sizes are read off the weights)."""
    c = dict(transformer_config)
    dim = c["num_attention_heads"] * c["attention_head_dim"]
    config = {
        "_class_name": "WanModel",
        "_diffusers_version": "0.30.0",
        "model_type": "i2v",
        "patch_size": list(c["patch_size"]),
        "text_len": 512,
        "in_dim": c["in_channels"],
        "dim": dim,
        "ffn_dim": c["ffn_dim"],
        "freq_dim": c["freq_dim"],
        "text_dim": c["text_dim"],
        "out_dim": c["out_channels"],
        "num_heads": c["num_attention_heads"],
        "num_layers": c["num_layers"],
        "window_size": [-1, -1],
        "qk_norm": True,
        "cross_attn_norm": c["cross_attn_norm"],
        "eps": c["eps"],
    }
    defaults = {"audio_layers": 12, "audio_channels": 768, "class_range": 24, "class_interval": 4}
    for name, default in defaults.items():
        if c[name] != default:
            config[name] = c[name]
    return config


def _clip_extras(hidden: int, seed: int) -> dict[str, torch.Tensor]:
    """What the real CLIP file holds beside the vision tower: a (toy) XLM-RoBERTa text tower, `log_scale` and the
    visual projection head. The loader ignores them; they are here so the file looks like the real one."""
    g = torch.Generator().manual_seed(seed + 1)
    text_dim, embed_dim, vocab, length, ffn = 32, 32, 64, 16, 128

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    extras = {
        "log_scale": torch.tensor(4.6052),
        "visual.head": rand(hidden, embed_dim),
        "textual.token_embedding.weight": rand(vocab, text_dim),
        "textual.type_embedding.weight": rand(1, text_dim),
        "textual.pos_embedding.weight": rand(length, text_dim),
        "textual.norm.weight": torch.ones(text_dim),
        "textual.norm.bias": torch.zeros(text_dim),
        "textual.head.0.weight": rand(text_dim, text_dim),
        "textual.head.2.weight": rand(embed_dim, text_dim),
    }
    block = "textual.blocks.0."
    for name in ("q", "k", "v", "o"):
        extras[f"{block}attn.{name}.weight"] = rand(text_dim, text_dim)
        extras[f"{block}attn.{name}.bias"] = torch.zeros(text_dim)
    for name in ("norm1", "norm2"):
        extras[f"{block}{name}.weight"] = torch.ones(text_dim)
        extras[f"{block}{name}.bias"] = torch.zeros(text_dim)
    extras[f"{block}ffn.0.weight"] = rand(ffn, text_dim)
    extras[f"{block}ffn.0.bias"] = torch.zeros(ffn)
    extras[f"{block}ffn.2.weight"] = rand(text_dim, ffn)
    extras[f"{block}ffn.2.bias"] = torch.zeros(text_dim)
    return extras


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Fresh, contiguous tensors: torch.save would otherwise store whole shared storages (e.g. CLIP's q/k/v views).
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def _write_index(path: Path, weight_map: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(path, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)


def write_tiny_original_folders(
    root: str | os.PathLike, seed: int = 0, reference_widths: bool = False
) -> dict[str, Path]:
    """Writes `make_tiny_components(seed)` as the three official folders, in their original layouts.

    * `Wan2.1-I2V-14B-480P/`: Wan's `config.json`, the DiT's base weights in Wan's names split over
      `diffusion_pytorch_model-0000N-of-00002.safetensors` with Wan's own index, `models_t5_umt5-xxl-enc-bf16.pth`,
      `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` (`visual.*` plus a toy `textual.*`, `log_scale`),
      `Wan2.1_VAE.pth` and the tokenizer in `google/umt5-xxl/`.
    * `MeiGen-MultiTalk/`: `multitalk.safetensors` (audio_proj.*, blocks.N.audio_cross_attn.*, blocks.N.norm_x.*) and
      its `diffusion_pytorch_model.safetensors.index.json` naming every key (base keys -> the Wan shards, audio keys ->
      multitalk.safetensors), which MultiTalk's README links into the Wan folder.
    * `chinese-wav2vec2-base/`: `save_pretrained` of the wav2vec2 model and its feature extractor.

    Everything is stored in float32 (the real T5 is bfloat16), so the reloaded components equal the tiny ones bit for
    bit. `reference_widths`: `make_tiny_components(seed, reference_widths=True)`. Returns `dict(wan_dir=...,
    multitalk_dir=..., wav2vec_dir=...)`.
    """
    from .tiny import make_tiny_components

    root = Path(root)
    components = make_tiny_components(seed, reference_widths=reference_widths)
    wan_dir, multitalk_dir, wav2vec_dir = root / WAN_DIR_NAME, root / MULTITALK_DIR_NAME, root / WAV2VEC_DIR_NAME
    for folder in (wan_dir, multitalk_dir, wav2vec_dir):
        folder.mkdir(parents=True, exist_ok=True)

    # DiT: Wan's base keys in shards, the audio adapter in multitalk.safetensors.
    transformer = components["transformer"]
    dit = _contiguous(convert_multitalk_transformer_to_original(transformer.state_dict()))
    base = {k: v for k, v in dit.items() if not _is_audio_key(k)}
    audio = {k: v for k, v in dit.items() if _is_audio_key(k)}
    with open(wan_dir / "config.json", "w") as f:
        json.dump(wan_original_config(transformer.config), f, indent=2)
    base_map = _write_shards(wan_dir, base)
    _write_index(wan_dir / DIT_INDEX, base_map, base)
    save_file(audio, str(multitalk_dir / MULTITALK_FILE), metadata={"format": "pt"})
    _write_index(multitalk_dir / DIT_INDEX, {**base_map, **dict.fromkeys(audio, MULTITALK_FILE)}, dit)

    _write_wan_encoders(wan_dir, components, seed)
    _write_wav2vec(wav2vec_dir, components)
    return dict(wan_dir=wan_dir, multitalk_dir=multitalk_dir, wav2vec_dir=wav2vec_dir)


def _write_wan_encoders(folder: Path, components: dict, seed: int) -> None:
    """umT5, CLIP, VAE and the umT5 tokenizer in Wan's own module layouts, as plain torch.save state dicts."""
    t5 = convert_umt5_encoder_to_original(components["text_encoder"].state_dict())
    torch.save(_contiguous(t5), folder / WAN_T5_CHECKPOINT)
    clip = convert_clip_vision_to_original(components["image_encoder"].state_dict())
    clip.update(_clip_extras(components["image_encoder"].config.hidden_size, seed))
    torch.save(_contiguous(clip), folder / WAN_CLIP_CHECKPOINT)
    torch.save(_contiguous(convert_vae_to_original(components["vae"].state_dict())), folder / WAN_VAE_CHECKPOINT)
    components["tokenizer"].save_pretrained(folder / WAN_UMT5_TOKENIZER_DIR)


def _write_wav2vec(folder: Path, components: dict) -> None:
    components["audio_encoder"].save_pretrained(folder, safe_serialization=True)
    components["audio_feature_extractor"].save_pretrained(folder)


def _write_shards(folder: Path, tensors: dict[str, torch.Tensor], num_shards: int = NUM_DIT_SHARDS) -> dict[str, str]:
    """`tensors` split in key order over `diffusion_pytorch_model-0000N-of-0000M.safetensors`; returns the weight
    map (key -> shard)."""
    names = sorted(tensors)
    shard_names = [f"diffusion_pytorch_model-{i + 1:05d}-of-{num_shards:05d}.safetensors" for i in range(num_shards)]
    per_shard = -(-len(names) // num_shards)
    weight_map = {}
    for i, shard in enumerate(shard_names):
        keys = names[i * per_shard : (i + 1) * per_shard]
        save_file({k: tensors[k] for k in keys}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, shard))
    return weight_map


FLASHTALK_DIR_NAME = "SoulX-FlashTalk-14B"
_WAN_IGNORED_FOR_CONFIG = {
    "patch_size": [1, 2, 2], "cross_attn_norm": True, "qk_norm": True, "text_dim": 4096, "window_size": [-1, -1],
}  # fmt: skip


def flashtalk_original_config(transformer_config) -> dict:
    """The `config.json` of SoulX-FlashTalk-14B's merged DiT for a `MultiTalkTransformer3DModel` config: Wan's fields
    plus the audio adapter's, as the reference's `WanModel` (a diffusers `ModelMixin`) saves them."""
    c = dict(transformer_config)
    config = wan_original_config(c)
    # `WanModel.save_pretrained` leaves out its `ignore_for_config` fields (the reference's from_pretrained ignores
    # them too): the real file has none of them; a tiny model keeps those that differ from the 14B model's.
    for name, default in _WAN_IGNORED_FOR_CONFIG.items():
        if config.get(name) == default:
            del config[name]
    # (`audio_layers` / `audio_channels` appear only for a wav2vec2 other than 12 x 768, which the reference cannot
    # run: its audio projection is fixed; the loader reads them.)
    config.update(
        audio_window=c["audio_window"],
        intermediate_dim=c["intermediate_dim"],
        output_dim=c["output_dim"],
        context_tokens=c["context_tokens"],
        vae_scale=c["vae_scale"],
        norm_input_visual=c["norm_input_visual"],
        norm_output_audio=c["norm_output_audio"],
        weight_init=True,
    )
    return config


def write_tiny_flashtalk_folders(
    root: str | os.PathLike, seed: int = 0, reference_widths: bool = True, dtype: torch.dtype = torch.float32
) -> dict[str, Path]:
    """`make_tiny_components(seed, reference_widths)` as the two folders SoulX-FlashTalk's README downloads:

    * `SoulX-FlashTalk-14B/`: the merged DiT (Wan's base keys and the audio adapter's together) split over
      `diffusion_pytorch_model-0000N-of-00002.safetensors` with its index and a `config.json` holding the adapter's
      fields (what `WanModel.from_pretrained` reads), in `dtype` (the real one is bfloat16); Wan's
      `models_t5_umt5-xxl-enc-bf16.pth`, CLIP and `Wan2.1_VAE.pth` beside it, with the tokenizers in
      `google/umt5-xxl/` and `xlm-roberta-large/` (the reference's CLIP wrapper loads one; a tiny stand-in here).
    * `chinese-wav2vec2-base/`.

    Returns `dict(flashtalk_dir=..., wav2vec_dir=...)`."""
    from .loaders.original_folders import WAN_CLIP_TOKENIZER_DIR
    from .tiny import make_tiny_components

    root = Path(root)
    components = make_tiny_components(seed, reference_widths=reference_widths)
    flashtalk_dir, wav2vec_dir = root / FLASHTALK_DIR_NAME, root / WAV2VEC_DIR_NAME
    for folder in (flashtalk_dir, wav2vec_dir):
        folder.mkdir(parents=True, exist_ok=True)
    transformer = components["transformer"]
    dit = _contiguous(convert_multitalk_transformer_to_original(transformer.state_dict()))
    dit = {k: v.to(dtype) for k, v in dit.items()}
    _write_index(flashtalk_dir / DIT_INDEX, _write_shards(flashtalk_dir, dit), dit)
    with open(flashtalk_dir / "config.json", "w") as f:
        json.dump(flashtalk_original_config(transformer.config), f, indent=2)
    _write_wan_encoders(flashtalk_dir, components, seed)
    components["tokenizer"].save_pretrained(flashtalk_dir / WAN_CLIP_TOKENIZER_DIR)
    _write_wav2vec(wav2vec_dir, components)
    return dict(flashtalk_dir=flashtalk_dir, wav2vec_dir=wav2vec_dir)


def tiny_generation_latents(pipe) -> torch.Tensor:
    """The latents of a short, fixed clip-mode generation (64x96, 5 frames, 2 steps, 1 s of a 220 Hz sine at
    16 kHz, seed 0): what tests compare to show that two ways of loading give the same pipeline."""
    import numpy as np

    sampling_rate = 16000
    t = np.arange(sampling_rate) / sampling_rate
    wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    image = (np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        image=image,
        audio=[(wave, sampling_rate)],
        prompt="a person talks",
        height=64,
        width=96,
        num_frames=5,
        num_inference_steps=2,
        mode="clip",
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).frames  # [1, 16, T, h, w]


def column_person_masks(persons: int, height: int, width: int, device=None) -> torch.Tensor:
    """`ref_target_masks` [persons + 1, height, width] for tests and benchmarks: person p owns the p-th vertical
    strip, the background the rest plus the top two rows (so classes overlap, as real face masks and backgrounds do)."""
    masks = torch.zeros(persons + 1, height, width, device=device)
    for p in range(persons):
        masks[p, :, p * width // persons : (p + 1) * width // persons] = 1
    masks[-1] = 1 - masks[:-1].amax(0)
    masks[-1, :2] = 1
    return masks


INFINITETALK_DIR_NAME = "InfiniteTalk"


def write_tiny_infinitetalk_folders(root: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """`write_tiny_original_folders(root, seed)` plus MeiGen-AI/InfiniteTalk's layout: `InfiniteTalk/single/` and
    `InfiniteTalk/multi/infinitetalk.safetensors` holding the tiny DiT's audio modules in the original key names (the
    real files' role: the adapter over Wan2.1-I2V's shards). Returns `dict(wan_dir=..., infinitetalk_dir=...,
    wav2vec_dir=...)`; `WanInfiniteTalkPipeline.from_original` on them rebuilds `make_tiny_components(seed)`."""
    import shutil

    folders = write_tiny_original_folders(root, seed)
    infinitetalk_dir = Path(root) / INFINITETALK_DIR_NAME
    for variant in ("single", "multi"):
        (infinitetalk_dir / variant).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(
            folders["multitalk_dir"] / MULTITALK_FILE, infinitetalk_dir / variant / "infinitetalk.safetensors"
        )
    return dict(wan_dir=folders["wan_dir"], infinitetalk_dir=infinitetalk_dir, wav2vec_dir=folders["wav2vec_dir"])


def stream_seconds(path: str | os.PathLike, stream: str = "v") -> float:
    """Seconds of a media file's video ("v") or audio ("a") stream, as ffmpeg decodes it (for tests and benchmarks
    that check a video's length)."""
    import re
    import subprocess

    from .pipelines.video_io import get_ffmpeg_exe

    log = subprocess.run(
        [get_ffmpeg_exe(), "-hide_banner", "-i", str(path), "-map", f"0:{stream}:0", "-f", "null", "-"],
        capture_output=True, text=True,
    ).stderr  # fmt: skip
    times = re.findall(r"time=(\d+):(\d+):([\d.]+)", log)
    if not times:
        raise ValueError(f"ffmpeg decoded no {stream!r} stream in {path}:\n{log[-1000:]}")
    h, m, s = times[-1]
    return int(h) * 3600 + int(m) * 60 + float(s)
