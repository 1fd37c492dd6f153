"""SoulX-FlashTalk-14B's folder as users download it (Soul-AILab/SoulX-FlashTalk-14B): one merged DiT (Wan2.1-I2V's
base and InfiniteTalk's audio adapter in the same shards, with an index and a `config.json` holding the adapter's
fields, bfloat16), which the reference loads with `WanModel.from_pretrained`, and Wan's umT5, CLIP and VAE files
beside it; the check that names every missing file (with the command that downloads it) and the load of the DiT.

Torch is imported inside the loading functions: the variant registry imports this module's constants."""

from __future__ import annotations

import json
from pathlib import Path


__all__ = [
    "FLASHTALK_ALLOW_PATTERNS",
    "FLASHTALK_REPO",
    "flashtalk_problems",
    "is_flashtalk_folder",
    "load_flashtalk_components",
    "load_flashtalk_transformer",
]

FLASHTALK_REPO = "Soul-AILab/SoulX-FlashTalk-14B"  # the reference README's `huggingface-cli download` id
_INDEX = "diffusion_pytorch_model.safetensors.index.json"
_T5, _CLIP, _VAE = (
    "models_t5_umt5-xxl-enc-bf16.pth",
    "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
    "Wan2.1_VAE.pth",
)
_UMT5_TOKENIZER = "google/umt5-xxl"
# What the reference reads from its --ckpt_dir (flash_talk_pipeline.py and the multitalk_14B config): the DiT through
# `WanModel.from_pretrained`, Wan's T5/CLIP/VAE checkpoints and the umT5 tokenizer (the CLIP tokenizer,
# xlm-roberta-large/, serves its text tower, which no pipeline runs).
FLASHTALK_ALLOW_PATTERNS = [
    "config.json",
    _INDEX,
    "diffusion_pytorch_model-*-of-*.safetensors",
    _T5,
    _CLIP,
    _VAE,
    f"{_UMT5_TOKENIZER}/*",
]


def _hint(folder, name: str | None = None) -> str:
    what = f" {name}" if name else ""
    return f"`huggingface-cli download {FLASHTALK_REPO}{what} --local-dir {folder}`"


def _index_shards(folder: Path) -> list[str] | None:
    try:
        with open(folder / _INDEX) as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_flashtalk_folder(path) -> bool:
    """Whether `path` is SoulX-FlashTalk-14B's download: its `config.json` has the audio adapter's fields, or its
    index maps audio keys into its own shards (a Wan2.1-I2V folder has neither; MultiTalk's linked index maps them to
    `multitalk.safetensors`); for a folder whose files cannot be read yet, its name (as `huggingface-cli` names it)."""
    path = Path(path)
    try:
        with open(path / "config.json") as f:
            config = json.load(f)
        if isinstance(config, dict) and ("audio_window" in config or "context_tokens" in config):
            return True
    except (OSError, ValueError):
        pass
    try:
        with open(path / _INDEX) as f:
            weight_map = json.load(f)["weight_map"]
        return any(k.startswith("audio_proj.") and v != "multitalk.safetensors" for k, v in weight_map.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "flashtalk" in path.name.lower()


def flashtalk_problems(flashtalk_dir, wav2vec_dir=None, wan_dir=None) -> list[str]:
    """Every problem with the folders `WanFlashTalkPipeline.from_original` reads, each naming the missing file and
    the command that downloads it; empty when loading can start. `wan_dir` (optional) supplies the umT5, CLIP and VAE
    files instead of the FlashTalk folder (a Wan2.1-I2V-14B folder holds the same files). Reads only file names and
    the DiT index."""
    from .original_folders import wav2vec_problems

    folder = Path(flashtalk_dir)
    problems = []
    if not folder.is_dir():
        problems.append(f"The SoulX-FlashTalk-14B folder {folder} does not exist. Download it with {_hint(folder)}.")
    else:
        for name in ("config.json", _INDEX):
            if not (folder / name).is_file():
                problems.append(f"{folder / name} is missing. Download it with {_hint(folder, name)}.")
        for shard in _index_shards(folder) or []:
            if not (folder / shard).is_file():
                problems.append(f"{folder / shard} (named by {_INDEX}) is missing. Download it with {_hint(folder)}.")
        encoders = Path(wan_dir) if wan_dir is not None else folder
        for name in (_T5, _CLIP, _VAE):
            if not (encoders / name).is_file():
                problems.append(f"{encoders / name} is missing. Download it with {_hint(encoders, name)}.")
        tokenizer = encoders / _UMT5_TOKENIZER
        if not (tokenizer / "tokenizer.json").is_file() and not (tokenizer / "spiece.model").is_file():
            include = f"--include '{_UMT5_TOKENIZER}/*'"
            problems.append(
                f"The umT5 tokenizer {tokenizer}/ is missing or empty. Download it with {_hint(encoders, include)}."
            )
    return problems + wav2vec_problems(wav2vec_dir)


def load_flashtalk_transformer(flashtalk_dir, torch_dtype=None, model_cls=None):
    """The merged DiT as a `MultiTalkTransformer3DModel` (InfiniteTalk's architecture and key names): every shard the
    index names, with the folder's `config.json` (the adapter's sizes read from it or the weights), loaded
    strictly."""
    from .transformer_original import (
        _load_shards,
        _tensor_shapes,
        multitalk_config_from_original,
        original_to_diffusers_key,
    )

    if model_cls is None:
        from ..models.transformer_multitalk import MultiTalkTransformer3DModel as model_cls

    folder = Path(flashtalk_dir)
    problems = [p for p in flashtalk_problems(folder) if "wav2vec2" not in p]
    if problems:
        raise FileNotFoundError("\n".join(problems))
    with open(folder / "config.json") as f:
        original_config = json.load(f)
    files = [folder / shard for shard in _index_shards(folder)]
    shapes = _tensor_shapes(files)
    if not any(k.startswith("audio_proj.") for k in shapes):
        raise ValueError(
            f"{folder}'s shards hold no audio weights (audio_proj.*): it is not SoulX-FlashTalk-14B's merged DiT. "
            f"Download it with {_hint(folder)}."
        )
    config = multitalk_config_from_original(original_config, shapes)
    return _load_shards(model_cls, config, files, original_to_diffusers_key, torch_dtype, "cpu", str(folder))


def load_flashtalk_components(flashtalk_dir, wav2vec_dir=None, torch_dtype=None, wan_dir=None) -> dict:
    """`transformer` (the merged DiT) and `text_encoder` (Wan's umT5, from `wan_dir` or the FlashTalk folder); every
    missing file is named before anything loads."""
    from .wan_umt5 import load_umt5_encoder_from_original

    problems = flashtalk_problems(flashtalk_dir, wav2vec_dir, wan_dir)
    if problems:
        raise FileNotFoundError("\n".join(problems))
    encoders = Path(wan_dir) if wan_dir is not None else Path(flashtalk_dir)
    return dict(
        transformer=load_flashtalk_transformer(flashtalk_dir, torch_dtype=torch_dtype),
        text_encoder=load_umt5_encoder_from_original(encoders, torch_dtype=torch_dtype),
    )
