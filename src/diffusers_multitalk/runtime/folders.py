"""What the official weights folders and converted repos hold, file by file, for errors and `multitalk info`."""

from __future__ import annotations

import json
from pathlib import Path

from ..loaders.original_folders import (
    DIT_INDEX as WAN_INDEX,
)
from ..loaders.original_folders import (
    MULTITALK_FILE,
)
from ..loaders.original_folders import (
    WAN_CLIP_CHECKPOINT as WAN_CLIP,
)
from ..loaders.original_folders import (
    WAN_T5_CHECKPOINT as WAN_T5,
)
from ..loaders.original_folders import (
    WAN_UMT5_TOKENIZER_DIR as WAN_TOKENIZER,
)
from ..loaders.original_folders import (
    WAN_VAE_CHECKPOINT as WAN_VAE,
)


def inspect_wan_dir(path: Path, need_linked_multitalk: bool = True) -> list[tuple[str, bool, str]]:
    """``[(what, present, detail), ...]`` for a Wan2.1-I2V-14B folder (with MultiTalk's weights linked in)."""
    path = Path(path)
    rows = []
    for name in ("config.json", WAN_T5, WAN_CLIP, WAN_VAE):
        rows.append((name, (path / name).is_file(), ""))
    tokenizer = path / WAN_TOKENIZER
    rows.append((f"{WAN_TOKENIZER}/ (umT5 tokenizer)", tokenizer.is_dir() and any(tokenizer.iterdir()), ""))
    index = path / WAN_INDEX
    names_multitalk = False
    if index.is_file():
        try:
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError) as err:
            rows.append((WAN_INDEX, False, f"unreadable: {err}"))
            files = []
        shards = [f for f in files if f != MULTITALK_FILE]
        names_multitalk = MULTITALK_FILE in files
        missing = [f for f in shards if not (path / f).is_file()]
        rows.append(
            (
                f"DiT shards named by {WAN_INDEX} ({len(shards)})",
                bool(shards) and not missing,
                f"missing: {', '.join(missing)}" if missing else "",
            )
        )
    else:
        shards = sorted(p.name for p in path.glob("diffusion_pytorch_model*.safetensors")) if path.is_dir() else []
        rows.append((f"DiT shards ({len(shards)} found, no index)", bool(shards), ""))
    if need_linked_multitalk:
        rows.append((f"{MULTITALK_FILE} (MeiGen-MultiTalk's, linked in)", (path / MULTITALK_FILE).is_file(), ""))
        rows.append(
            (
                f"{WAN_INDEX} is MeiGen-MultiTalk's (names {MULTITALK_FILE})",
                names_multitalk,
                "" if names_multitalk else "Wan's own index or none: link MeiGen-MultiTalk's in",
            )
        )
    return rows


def inspect_wav2vec_dir(path: Path) -> list[tuple[str, bool, str]]:
    path = Path(path)
    weights = [n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
    return [
        ("config.json", (path / "config.json").is_file(), ""),
        ("preprocessor_config.json", (path / "preprocessor_config.json").is_file(), ""),
        ("model.safetensors (revision refs/pr/1) or pytorch_model.bin", bool(weights), ", ".join(weights)),
    ]


def inspect_multitalk_dir(path: Path) -> list[tuple[str, bool, str]]:
    path = Path(path)
    return [(MULTITALK_FILE, (path / MULTITALK_FILE).is_file(), ""), (WAN_INDEX, (path / WAN_INDEX).is_file(), "")]


def inspect_model(model: str) -> list[tuple[str, bool, str]]:
    path = Path(model)
    if not path.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "model_index.json")
        except Exception:  # noqa: BLE001 - not a valid repo id, etc.
            cached = None
        if isinstance(cached, str):
            path = Path(cached).parent
        else:
            return [
                ("local folder", False, "not a folder here; from_pretrained would fetch it from the Hub (not checked)")
            ]
    rows = [("model_index.json", (path / "model_index.json").is_file(), "")]
    if rows[0][1]:
        with open(path / "model_index.json") as f:
            index = json.load(f)
        for name, value in index.items():
            if name.startswith("_") or not isinstance(value, list) or value[0] is None:
                continue
            folder = path / name
            rows.append((f"{name}/ ({value[-1]})", folder.is_dir() and any(folder.iterdir()), ""))
    return rows
