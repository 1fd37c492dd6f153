"""Loading MultiTalk's DiT from the official checkpoint layout, and the key maps both ways.

Users hold `Wan2.1-I2V-14B-480P/` (Wan's config.json and DiT shards) with MeiGen-MultiTalk's
`multitalk.safetensors` and `diffusion_pytorch_model.safetensors.index.json` copied or linked in (MultiTalk's README
step), so the index names every key's shard. Keys are converted shard by shard into a model built on the meta
device: the 14B checkpoint is never held twice.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open


# Original (Wan / MultiTalk) name fragment -> diffusers name fragment.
_TOP_LEVEL_RENAMES = {
    "patch_embedding.": "patch_embedding.",
    "text_embedding.0.": "condition_embedder.text_embedder.linear_1.",
    "text_embedding.2.": "condition_embedder.text_embedder.linear_2.",
    "time_embedding.0.": "condition_embedder.time_embedder.linear_1.",
    "time_embedding.2.": "condition_embedder.time_embedder.linear_2.",
    "time_projection.1.": "condition_embedder.time_proj.",
    "img_emb.proj.0.": "condition_embedder.image_embedder.norm1.",
    "img_emb.proj.1.": "condition_embedder.image_embedder.ff.net.0.proj.",
    "img_emb.proj.3.": "condition_embedder.image_embedder.ff.net.2.",
    "img_emb.proj.4.": "condition_embedder.image_embedder.norm2.",
    "head.head.": "proj_out.",
    "head.modulation": "scale_shift_table",
    "audio_proj.": "audio_proj.",
}
_BLOCK_RENAMES = {
    "modulation": "scale_shift_table",
    "self_attn.q.": "attn1.to_q.",
    "self_attn.k.": "attn1.to_k.",
    "self_attn.v.": "attn1.to_v.",
    "self_attn.o.": "attn1.to_out.0.",
    "self_attn.norm_q.": "attn1.norm_q.",
    "self_attn.norm_k.": "attn1.norm_k.",
    "cross_attn.q.": "attn2.to_q.",
    "cross_attn.k.": "attn2.to_k.",
    "cross_attn.v.": "attn2.to_v.",
    "cross_attn.o.": "attn2.to_out.0.",
    "cross_attn.norm_q.": "attn2.norm_q.",
    "cross_attn.norm_k.": "attn2.norm_k.",
    "cross_attn.k_img.": "attn2.add_k_proj.",
    "cross_attn.v_img.": "attn2.add_v_proj.",
    "cross_attn.norm_k_img.": "attn2.norm_added_k.",
    # The original `norm3` is the cross-attention norm (affine); diffusers calls it `norm2`.
    "norm3.": "norm2.",
    "ffn.0.": "ffn.net.0.proj.",
    "ffn.2.": "ffn.net.2.",
    "norm_x.": "audio_norm.",
    "audio_cross_attn.q_linear.": "audio_attn.to_q.",
    "audio_cross_attn.kv_linear.": "audio_attn.to_audio_kv.",
    "audio_cross_attn.proj.": "audio_attn.to_out.",
}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_PREFIXES_TO_STRIP = ("model.diffusion_model.", "diffusion_model.", "module.")


def _rename(key: str, top_level: dict, block: dict) -> str | None:
    match = _BLOCK_KEY.match(key)
    if match:
        index, rest = match.groups()
        for old, new in block.items():
            if rest.startswith(old):
                return f"blocks.{index}.{new}{rest[len(old) :]}"
        return None
    for old, new in top_level.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def original_to_diffusers_key(key: str) -> str | None:
    """The diffusers name of an original MultiTalk/Wan DiT key, or None if it is not one."""
    for prefix in _PREFIXES_TO_STRIP:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return _rename(key, _TOP_LEVEL_RENAMES, _BLOCK_RENAMES)


def diffusers_to_original_key(key: str) -> str | None:
    """The original MultiTalk/Wan name of a diffusers key (the inverse of `original_to_diffusers_key`)."""
    inverse_top = {v: k for k, v in _TOP_LEVEL_RENAMES.items()}
    inverse_block = {v: k for k, v in _BLOCK_RENAMES.items()}
    # Longest fragments first so "attn1.to_out.0." wins over shorter overlaps.
    inverse_block = dict(sorted(inverse_block.items(), key=lambda kv: -len(kv[0])))
    return _rename(key, inverse_top, inverse_block)


def _rename_state_dict(state_dict: dict, key_fn, problem: str) -> dict:
    converted, unknown = {}, []
    for key in list(state_dict):
        new_key = key_fn(key)
        if new_key is None:
            unknown.append(key)
            continue
        converted[new_key] = state_dict.pop(key)
    if unknown:
        raise ValueError(f"{problem}: {_preview(unknown)}")
    return converted


def convert_multitalk_transformer_to_diffusers(state_dict: dict) -> dict:
    """Renames an original-layout state dict (or one shard of it) to diffusers names. Raises on unknown keys."""
    return _rename_state_dict(
        state_dict, original_to_diffusers_key, "Keys that are not part of a MultiTalk/Wan2.1 DiT checkpoint"
    )


def convert_multitalk_transformer_to_original(state_dict: dict) -> dict:
    """Renames a diffusers-layout state dict back to the original MultiTalk/Wan names."""
    return _rename_state_dict(state_dict, diffusers_to_original_key, "Keys with no original MultiTalk name")


def _preview(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


_DOWNLOAD_HINT = (
    "Download the weights with `huggingface-cli download Wan-AI/Wan2.1-I2V-14B-480P --local-dir <wan_dir>` and "
    "`huggingface-cli download MeiGen-AI/MeiGen-MultiTalk --local-dir <multitalk_dir>`, then copy or link "
    "`multitalk.safetensors` and `diffusion_pytorch_model.safetensors.index.json` from <multitalk_dir> into <wan_dir> "
    "(or pass `multitalk_path=<multitalk_dir>`)."
)


def _find_shards(path: Path, multitalk_path: Path | None) -> list[Path]:
    """The safetensors files that hold the checkpoint: those the index names, else the shards in the folder."""
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint folder {path} does not exist. {_DOWNLOAD_HINT}")
    if path.is_file():
        files = [path]
    else:
        index_file = path / "diffusion_pytorch_model.safetensors.index.json"
        if index_file.exists():
            with open(index_file) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted({path / name for name in weight_map.values()})
            missing = [str(p) for p in files if not p.exists()]
            if missing:
                raise FileNotFoundError(
                    f"The index {index_file} names shards that are missing: {missing}. {_DOWNLOAD_HINT}"
                )
        else:
            files = sorted(path.glob("diffusion_pytorch_model*.safetensors"))
            if not files:
                raise FileNotFoundError(f"No `diffusion_pytorch_model*.safetensors` shards in {path}. {_DOWNLOAD_HINT}")
    if multitalk_path is not None:
        multitalk_path = Path(multitalk_path)
        audio_file = multitalk_path / "multitalk.safetensors" if multitalk_path.is_dir() else multitalk_path
        if not audio_file.exists():
            raise FileNotFoundError(f"{audio_file} does not exist. {_DOWNLOAD_HINT}")
        if audio_file not in files:
            files.append(audio_file)
    return files


def _tensor_shapes(files) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def multitalk_config_from_original(original_config: dict, shapes: dict[str, tuple[int, ...]]) -> dict:
    """Builds the diffusers config from Wan's config.json. Audio-adapter fields come from the config when present
    (the fixtures carry them), else from the weight shapes, else MultiTalk's defaults."""
    oc = dict(original_config)
    if oc.get("model_type", "i2v") != "i2v":
        raise ValueError(
            f"MultiTalk needs the Wan2.1 image-to-video model; config.json says model_type={oc['model_type']!r}."
        )
    dim, heads = oc.get("dim", 5120), oc.get("num_heads", 40)
    if dim % heads:
        raise ValueError(f"config.json: dim {dim} is not divisible by num_heads {heads}.")
    config = {
        "patch_size": tuple(oc.get("patch_size", (1, 2, 2))),
        "num_attention_heads": heads,
        "attention_head_dim": dim // heads,
        "in_channels": oc.get("in_dim", 36),
        "out_channels": oc.get("out_dim", 16),
        "text_dim": oc.get("text_dim", 4096),
        "freq_dim": oc.get("freq_dim", 256),
        "ffn_dim": oc.get("ffn_dim", 13824),
        "num_layers": oc.get("num_layers", 40),
        "cross_attn_norm": oc.get("cross_attn_norm", True),
        "eps": oc.get("eps", 1e-6),
        # The CLIP feature width: the config, else the image projection's input norm, else Wan's ViT-H (1280).
        "image_dim": oc.get("image_dim", shapes.get("img_emb.proj.0.weight", (1280,))[0]),
        "added_kv_proj_dim": dim,
    }
    audio_layers, audio_channels = oc.get("audio_layers", 12), oc.get("audio_channels", 768)
    per_frame = audio_layers * audio_channels
    inferred = {}
    if "audio_proj.proj1.weight" in shapes:
        intermediate, first_in = shapes["audio_proj.proj1.weight"]
        if first_in % per_frame or first_in < per_frame:
            raise ValueError(
                f"audio_proj.proj1 takes {first_in} inputs, not a multiple of the audio encoder's {audio_layers} "
                f"layers x {audio_channels} channels; pass the wav2vec2 that belongs to these weights."
            )
        inferred["intermediate_dim"] = intermediate
        inferred["audio_window"] = first_in // per_frame
        if "audio_proj.proj1_vf.weight" in shapes:
            inferred["vae_scale"] = shapes["audio_proj.proj1_vf.weight"][1] // per_frame - inferred["audio_window"] + 1
    if "blocks.0.audio_cross_attn.kv_linear.weight" in shapes:
        inferred["output_dim"] = shapes["blocks.0.audio_cross_attn.kv_linear.weight"][1]
        if "audio_proj.proj3.weight" in shapes:
            inferred["context_tokens"] = shapes["audio_proj.proj3.weight"][0] // inferred["output_dim"]
    if shapes:
        inferred["norm_input_visual"] = "blocks.0.norm_x.weight" in shapes
        inferred["norm_output_audio"] = "audio_proj.norm.weight" in shapes
    defaults = {
        "audio_window": 5,
        "intermediate_dim": 512,
        "output_dim": 768,
        "context_tokens": 32,
        "vae_scale": 4,
        "norm_input_visual": True,
        "norm_output_audio": True,
    }
    for name, default in defaults.items():
        config[name] = oc.get(name, inferred.get(name, default))
    config["audio_layers"], config["audio_channels"] = audio_layers, audio_channels
    config["class_range"] = oc.get("class_range", 24)
    config["class_interval"] = oc.get("class_interval", 4)
    return config


def load_multitalk_transformer_from_original(
    path,
    torch_dtype: torch.dtype | None = None,
    multitalk_path=None,
    device="cpu",
    model_cls=None,
):
    """Loads `MultiTalkTransformer3DModel` from the official layout.

    Args:
        path: the Wan2.1-I2V-14B folder (config.json + DiT shards, with MultiTalk's index and
            `multitalk.safetensors` linked in), or a single merged `.safetensors` file next to a config.json.
        torch_dtype: dtype of the loaded weights (default: as stored). The modules diffusers keeps in float32
            (`_keep_in_fp32_modules`) stay float32 when a half dtype is asked for.
        multitalk_path: MeiGen-MultiTalk folder or its `multitalk.safetensors`, when not linked into `path`.
        device: where the weights are placed.
    """
    if model_cls is None:
        from ..models.transformer_multitalk import MultiTalkTransformer3DModel as model_cls

    path = Path(path)
    config_dir = path if path.is_dir() else path.parent
    config_file = config_dir / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file} is missing: `path` must be the Wan2.1-I2V-14B folder. {_DOWNLOAD_HINT}")
    with open(config_file) as f:
        original_config = json.load(f)

    files = _find_shards(path, multitalk_path)
    shapes = _tensor_shapes(files)
    if not any(k.startswith("audio_proj.") or ".audio_cross_attn." in k for k in shapes):
        raise ValueError(
            f"{path} holds no MultiTalk audio weights (audio_proj.*, blocks.N.audio_cross_attn.*): it looks like plain "
            f"Wan2.1. {_DOWNLOAD_HINT}"
        )
    config = multitalk_config_from_original(original_config, shapes)
    return _load_shards(model_cls, config, files, original_to_diffusers_key, torch_dtype, device, str(path))


def _load_shards(model_cls, config, files, key_fn, torch_dtype, device, source: str):
    """`_load_tensors` from safetensors `files`, read lazily: a key the model does not have is never loaded."""

    def entries():
        for file in files:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for key in f.keys():
                    yield key, lambda f=f, key=key: f.get_tensor(key)

    return _load_tensors(model_cls, config, entries(), key_fn, torch_dtype, device, source)


def _load_tensors(
    model_cls, config, entries, key_fn, torch_dtype, device, source: str, label: str = "a MultiTalk transformer"
):
    """Builds `model_cls(**config)` on the meta device and fills it tensor by tensor from `entries` (`(key, load)`
    pairs, `load()` giving the tensor), renaming each key with `key_fn` (None = not a key of this model); a key that
    comes again replaces the earlier tensor. Missing, unexpected and mis-shaped keys are all reported."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = model_cls(**config)
    expected = model.state_dict()
    keep_fp32 = tuple(model._keep_in_fp32_modules or ())
    half = torch_dtype in (torch.float16, torch.bfloat16)

    loaded, unexpected, mismatched = set(), [], []
    for key, load in entries:
        new_key = key_fn(key)
        if new_key is None or new_key not in expected:
            unexpected.append(key)
            continue
        tensor = load()
        if tuple(tensor.shape) != tuple(expected[new_key].shape):
            mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(expected[new_key].shape)}")
            continue
        dtype = torch_dtype or tensor.dtype
        if half and any(part in new_key.split(".") for part in keep_fp32):
            dtype = torch.float32
        # Assign one tensor at a time: peak memory is the model plus a single tensor.
        _set_tensor(model, new_key, tensor.to(device=device, dtype=dtype))
        loaded.add(new_key)
    missing = sorted(set(expected) - loaded)
    problems = []
    if missing:
        problems.append(f"missing keys: {_preview(diffusers_to_original_key(k) or k for k in missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    if mismatched:
        problems.append(f"mis-shaped keys: {_preview(mismatched)}")
    if problems:
        raise ValueError(f"Cannot load {source} as {label} with config {config}: " + "; ".join(problems))

    # Non-persistent buffers (RoPE tables) were built on the CPU; follow the weights.
    model.to(device)
    model.eval()
    return model


_WAN_DIFFUSERS_CONFIG_KEYS = (
    "patch_size",
    "num_attention_heads",
    "attention_head_dim",
    "in_channels",
    "out_channels",
    "text_dim",
    "freq_dim",
    "ffn_dim",
    "num_layers",
    "cross_attn_norm",
    "qk_norm",
    "eps",
    "image_dim",
    "added_kv_proj_dim",
    "rope_max_seq_len",
)


def load_multitalk_transformer_from_wan_diffusers(
    transformer_dir,
    multitalk_path,
    torch_dtype: torch.dtype | None = None,
    device="cpu",
    model_cls=None,
    audio_layers: int = 12,
    audio_channels: int = 768,
):
    """Loads `MultiTalkTransformer3DModel` from diffusers' Wan I2V transformer folder (e.g. the `transformer/` of
    Wan-AI/Wan2.1-I2V-14B-480P-Diffusers) plus MeiGen-MultiTalk's `multitalk.safetensors` (original audio names).

    Base keys already carry diffusers' names; only the audio keys are renamed. `audio_layers` / `audio_channels`
    are the wav2vec2's hidden layers and width (12 x 768 for chinese-wav2vec2-base).
    """
    if model_cls is None:
        from ..models.transformer_multitalk import MultiTalkTransformer3DModel as model_cls

    transformer_dir = Path(transformer_dir)
    config_file = transformer_dir / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(
            f"{config_file} is missing: pass the `transformer` folder of a diffusers Wan2.1-I2V repo, e.g. from "
            "`huggingface-cli download Wan-AI/Wan2.1-I2V-14B-480P-Diffusers --local-dir <dir>`."
        )
    with open(config_file) as f:
        wan_config = json.load(f)
    if wan_config.get("image_dim") is None:
        raise ValueError(f"{config_file} is not an image-to-video Wan transformer (no image_dim); MultiTalk needs I2V.")
    index_file = transformer_dir / "diffusion_pytorch_model.safetensors.index.json"
    if index_file.exists():
        with open(index_file) as f:
            files = sorted({transformer_dir / name for name in json.load(f)["weight_map"].values()})
    else:
        files = sorted(transformer_dir.glob("diffusion_pytorch_model*.safetensors"))
    if not files or not all(p.exists() for p in files):
        raise FileNotFoundError(
            f"No complete set of `diffusion_pytorch_model*.safetensors` shards in {transformer_dir}."
        )
    multitalk_path = Path(multitalk_path)
    audio_file = multitalk_path / "multitalk.safetensors" if multitalk_path.is_dir() else multitalk_path
    if not audio_file.exists():
        raise FileNotFoundError(f"{audio_file} does not exist. {_DOWNLOAD_HINT}")

    audio_shapes = _tensor_shapes([audio_file])
    config = multitalk_config_from_original(
        {"model_type": "i2v", "audio_layers": audio_layers, "audio_channels": audio_channels}, audio_shapes
    )
    for key in _WAN_DIFFUSERS_CONFIG_KEYS:
        if key in wan_config:
            config[key] = tuple(wan_config[key]) if key == "patch_size" else wan_config[key]
    for key in ("attention_head_dim", "num_attention_heads"):
        config.setdefault(key, wan_config.get(key))

    def key_fn(key):
        if key in audio_shapes:
            return original_to_diffusers_key(key)
        return key

    return _load_shards(
        model_cls, config, [*files, audio_file], key_fn, torch_dtype, device, f"{transformer_dir} + {audio_file}"
    )


def _set_tensor(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    old = getattr(module, attr)
    if isinstance(old, torch.nn.Parameter):
        setattr(module, attr, torch.nn.Parameter(tensor, requires_grad=old.requires_grad))
    else:
        module._buffers[attr] = tensor


# Folders converted before the audio attention's key/value layer was renamed (`to_kv` is the name diffusers gives the
# layers its `fuse_projections` creates, so a permanent one confused its tools) carry the old name.
_LEGACY_DIFFUSERS_RENAMES = {".audio_attn.to_kv.": ".audio_attn.to_audio_kv."}


def _diffusers_weight_files(folder: Path) -> list[Path]:
    index_file = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index_file.exists():
        with open(index_file) as f:
            return sorted({folder / name for name in json.load(f)["weight_map"].values()})
    return sorted(folder.glob("diffusion_pytorch_model*.safetensors"))


def legacy_diffusers_files(folder) -> list[Path] | None:
    """The weight files of a local diffusers transformer folder written before the `to_audio_kv` rename, or None when
    the folder is current (or not a local safetensors folder: diffusers' own loader handles those)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return None
    files = _diffusers_weight_files(folder)
    if not files or not all(file.is_file() for file in files):
        return None
    with safe_open(str(files[0]), framework="pt") as f:
        first_keys = list(f.keys())
    index_file = folder / "diffusion_pytorch_model.safetensors.index.json"
    keys = json.loads(index_file.read_text())["weight_map"] if index_file.exists() else first_keys
    return files if any(old in key for key in keys for old in _LEGACY_DIFFUSERS_RENAMES) else None


def load_legacy_diffusers_folder(model_cls, folder, files, torch_dtype=None, device="cpu"):
    """Loads a transformer folder written before the `to_audio_kv` rename, renaming its keys shard by shard."""
    folder = Path(folder)
    config = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if not k.startswith("_")}
    if "patch_size" in config:
        config["patch_size"] = tuple(config["patch_size"])

    def key_fn(key):
        for old, new in _LEGACY_DIFFUSERS_RENAMES.items():
            key = key.replace(old, new)
        return key

    return _load_shards(model_cls, config, files, key_fn, torch_dtype, device, str(folder))
