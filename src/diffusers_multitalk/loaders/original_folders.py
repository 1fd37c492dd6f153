"""The official folders as users download them: their repositories, the files fetched from each (shared by
`multitalk download` and `from_pretrained` of a Hub id), file names, how a folder is recognised, and the check that
names every missing file (with the command that downloads it) before anything heavy loads."""

from __future__ import annotations

import json
from pathlib import Path


__all__ = ["check_original_folders", "original_folder_kind", "wav2vec_problems"]

WAN_REPO = "Wan-AI/Wan2.1-I2V-14B-480P"
WAN_REPO_720 = "Wan-AI/Wan2.1-I2V-14B-720P"
MULTITALK_REPO = "MeiGen-AI/MeiGen-MultiTalk"
WAV2VEC_REPO = "TencentGameMate/chinese-wav2vec2-base"
DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
MULTITALK_FILE = "multitalk.safetensors"
WAN_T5_CHECKPOINT = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_CLIP_CHECKPOINT = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
WAN_VAE_CHECKPOINT = "Wan2.1_VAE.pth"
WAN_UMT5_TOKENIZER_DIR = "google/umt5-xxl"
WAN_CLIP_TOKENIZER_DIR = "xlm-roberta-large"
INFINITETALK_REPO = "MeiGen-AI/InfiniteTalk"
INFINITETALK_FILE = "infinitetalk.safetensors"
INFINITETALK_VARIANTS = ("single", "multi")  # its subfolders: the adapter for one person, for several

# What is fetched from each repository (huggingface_hub allow_patterns): only the files the loaders read.
WAN_ALLOW_PATTERNS = [
    "config.json",
    "diffusion_pytorch_model-*-of-*.safetensors",
    WAN_T5_CHECKPOINT,
    WAN_CLIP_CHECKPOINT,
    WAN_VAE_CHECKPOINT,
    f"{WAN_UMT5_TOKENIZER_DIR}/*",
]
MULTITALK_ALLOW_PATTERNS = [MULTITALK_FILE, DIT_INDEX]
WAV2VEC_ALLOW_PATTERNS = ["config.json", "preprocessor_config.json"]
WAV2VEC_SAFETENSORS_REVISION = "refs/pr/1"  # model.safetensors lives in that pull request, as MultiTalk's README says
WAV2VEC_SAFETENSORS_PATTERNS = ["model.safetensors"]
INFINITETALK_ALLOW_PATTERNS = [f"{variant}/{INFINITETALK_FILE}" for variant in INFINITETALK_VARIANTS]


def check_original_folders(wan_dir, multitalk_dir=None, wav2vec_dir=None) -> list[str]:
    """Every problem with the three official folders, each naming the missing file and the command that downloads
    it; empty when a conversion (or `WanMultiTalkPipeline.from_original`) can start. Reads only file names and the
    DiT index."""
    wan_dir = Path(wan_dir)
    wan_repo = WAN_REPO_720 if "720" in wan_dir.name else WAN_REPO
    wan_hint = f"`huggingface-cli download {wan_repo} --local-dir {wan_dir}`"
    multitalk_hint = f"`huggingface-cli download {MULTITALK_REPO} --local-dir {multitalk_dir or '<multitalk_dir>'}`"
    problems = []
    if not wan_dir.is_dir():
        problems.append(f"The Wan folder {wan_dir} does not exist. Download it with {wan_hint}.")
    else:
        for name in ("config.json", WAN_T5_CHECKPOINT, WAN_CLIP_CHECKPOINT, WAN_VAE_CHECKPOINT):
            if not (wan_dir / name).is_file():
                problems.append(
                    f"{wan_dir / name} is missing. Download it with "
                    f"`huggingface-cli download {wan_repo} {name} --local-dir {wan_dir}`."
                )
        tokenizer = wan_dir / WAN_UMT5_TOKENIZER_DIR
        if not (tokenizer / "tokenizer.json").is_file() and not (tokenizer / "spiece.model").is_file():
            problems.append(
                f"The umT5 tokenizer {tokenizer}/ is missing or empty. Download it with "
                f"`huggingface-cli download {wan_repo} --include '{WAN_UMT5_TOKENIZER_DIR}/*' --local-dir {wan_dir}`."
            )
        index = wan_dir / DIT_INDEX
        linked = (wan_dir / MULTITALK_FILE).exists()
        shards = []
        if index.is_file():
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            for name in shards:
                if not (wan_dir / name).exists():
                    hint = multitalk_hint if name == MULTITALK_FILE else wan_hint
                    problems.append(f"{wan_dir / name} (named by {index.name}) is missing. Download it with {hint}.")
        elif not list(wan_dir.glob("diffusion_pytorch_model*.safetensors")):
            problems.append(
                f"{wan_dir} holds no DiT shards (diffusion_pytorch_model-*.safetensors). Download them with {wan_hint}."
            )
        if not linked and MULTITALK_FILE not in shards:
            if multitalk_dir is None:
                problems.append(
                    f"The MultiTalk audio weights are neither linked into {wan_dir} nor given: pass the "
                    f"MeiGen-MultiTalk folder (multitalk_dir / --multitalk_dir). Download it with {multitalk_hint}."
                )
            elif not (Path(multitalk_dir) / MULTITALK_FILE).is_file():
                missing = Path(multitalk_dir) / MULTITALK_FILE
                problems.append(f"{missing} is missing. Download it with {multitalk_hint}.")
    return problems + wav2vec_problems(wav2vec_dir)


def wav2vec_problems(wav2vec_dir) -> list[str]:
    """Every problem with the chinese-wav2vec2-base folder, each with the command that downloads it."""
    from ..audio.encoder import WAV2VEC_DOWNLOAD_HINT

    problems = []
    wav2vec_hint = WAV2VEC_DOWNLOAD_HINT.replace("{dir}", str(wav2vec_dir or "<wav2vec_dir>"))
    if wav2vec_dir is None or not Path(wav2vec_dir).is_dir():
        problems.append(f"The wav2vec2 folder {wav2vec_dir!r} does not exist. {wav2vec_hint}")
    else:
        wav2vec_dir = Path(wav2vec_dir)
        for name in ("config.json", "preprocessor_config.json"):
            if not (wav2vec_dir / name).is_file():
                problems.append(f"{wav2vec_dir / name} is missing. {wav2vec_hint}")
        if not any((wav2vec_dir / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
            problems.append(f"{wav2vec_dir} has no weights (model.safetensors). {wav2vec_hint}")
    return problems


def _is_wan_config(config) -> bool:
    # Wan's own config.json names `WanModel`; a diffusers transformer folder's names its diffusers class.
    try:
        with open(config) as f:
            return json.load(f).get("_class_name") == "WanModel"
    except (OSError, ValueError, AttributeError):
        return False


def original_folder_kind(path) -> str | None:
    """Which official download `path` is, from file names only: `"wan"` (Wan2.1-I2V: its T5, CLIP or VAE checkpoint,
    or a `WanModel` config.json), `"flashtalk"` (SoulX-FlashTalk-14B: a Wan-layout folder with the merged DiT, `loaders.flashtalk.is_flashtalk_folder`),
    `"multitalk"` (MeiGen-MultiTalk: `multitalk.safetensors`), `"infinitetalk"`
    (InfiniteTalk: `single/` or `multi/infinitetalk.safetensors`), or None (a converted diffusers folder, anything
    else). An incomplete Wan folder is still recognised, so that loading names its missing files."""
    path = Path(path)
    if not path.is_dir() or (path / "model_index.json").is_file():
        return None
    from .flashtalk import is_flashtalk_folder

    wan_files = (WAN_T5_CHECKPOINT, WAN_CLIP_CHECKPOINT, WAN_VAE_CHECKPOINT)
    if is_flashtalk_folder(path):  # a Wan-layout folder too: its merged DiT tells it apart
        return "flashtalk"
    if any((path / name).is_file() for name in wan_files) or _is_wan_config(path / "config.json"):
        return "wan"
    if (path / MULTITALK_FILE).is_file():
        return "multitalk"
    adapters = [path / variant / INFINITETALK_FILE for variant in INFINITETALK_VARIANTS] + [path / INFINITETALK_FILE]
    if any(adapter.is_file() for adapter in adapters):
        return "infinitetalk"
    return None
