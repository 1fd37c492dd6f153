"""InfiniteTalk's weights as users download them (MeiGen-AI/InfiniteTalk on the Wan2.1-I2V-14B folder): the adapter
files, full `--dit_path` checkpoints and the quantised `quant_models/` files, with checks that name every missing file
and the command that downloads it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.utils import logging


logger = logging.get_logger(__name__)

__all__ = [
    "INFINITETALK_REPO",
    "infinitetalk_problems",
    "infinitetalk_quant_files",
    "load_infinitetalk_components",
    "load_infinitetalk_transformer",
    "save_quantized_infinitetalk_transformer",
    "resolve_infinitetalk_file",
    "resolve_infinitetalk_quant_file",
    "wan_dit_shards",
]

INFINITETALK_REPO = "MeiGen-AI/InfiniteTalk"
INFINITETALK_FILE = "infinitetalk.safetensors"
SINGLE_FILE = f"single/{INFINITETALK_FILE}"  # one person
MULTI_FILE = f"multi/{INFINITETALK_FILE}"  # several persons
QUANT_MODELS_DIR = "quant_models"


def _download_hint(target, include: str | None = None) -> str:
    include = f" --include '{include}'" if include else ""
    return f"`huggingface-cli download {INFINITETALK_REPO}{include} --local-dir {target}`"


def infinitetalk_quant_files(quant: str) -> tuple[str, str]:
    """The quantised DiT of `quant_models/` and its map (the reference reads the map from the file's name with
    `safetensors` replaced by `json`)."""
    stem = f"infinitetalk_single_{quant}"
    return f"{stem}.safetensors", f"{stem}.json"


def resolve_infinitetalk_file(path) -> Path:
    """The adapter file: `path` itself, or for the `InfiniteTalk/` folder its `single/infinitetalk.safetensors` (or an
    `infinitetalk.safetensors` directly inside the folder given); a path that does not exist and has no file suffix
    is taken as that folder. Not checked for existence."""
    path = Path(path)
    if path.is_dir() or (not path.exists() and not path.suffix):
        for candidate in (path / SINGLE_FILE, path / INFINITETALK_FILE):
            if candidate.is_file():
                return candidate
        return path / SINGLE_FILE
    return path


def resolve_infinitetalk_quant_file(quant: str, quant_path) -> tuple[Path, Path]:
    """`(checkpoint, map)` of the quantised DiT: `quant_path` is the file (the reference's `--quant_dir`), or the
    `InfiniteTalk/` or `quant_models/` folder holding `infinitetalk_single_<quant>.safetensors`."""
    path = Path(quant_path)
    name, map_name = infinitetalk_quant_files(quant)
    if path.is_dir():
        path = (
            path / name if (path / name).exists() or path.name == QUANT_MODELS_DIR else path / QUANT_MODELS_DIR / name
        )
    map_path = path.with_suffix(".json")
    return path, map_path


def wan_dit_shards(wan_dir) -> list[Path]:
    """Wan2.1-I2V's own DiT shards (`diffusion_pytorch_model-0000N-of-0000M.safetensors`), whatever index is linked in
    (MultiTalk's index names its `multitalk.safetensors` too, which InfiniteTalk does not load)."""
    return sorted(Path(wan_dir).glob("diffusion_pytorch_model*.safetensors"))


def _is_multitalk_problem(problem: str) -> bool:
    from .original_folders import MULTITALK_FILE

    return MULTITALK_FILE in problem or "MultiTalk audio weights" in problem


def infinitetalk_problems(
    wan_dir, infinitetalk_file=None, wav2vec_dir=None, dit_path=None, quant: str | None = None, quant_path=None
) -> list[str]:
    """Every problem with the folders and files `WanInfiniteTalkPipeline.from_original` reads, each naming the missing
    file and the command that downloads it; empty when loading can start. Reads only file names (and Wan's index)."""
    from .original_folders import check_original_folders
    from .quantized import _is_dit_problem

    problems = [p for p in check_original_folders(wan_dir, None, wav2vec_dir) if not _is_multitalk_problem(p)]
    target = "weights/InfiniteTalk"
    if dit_path is not None or quant_path is not None:
        problems = [p for p in problems if not _is_dit_problem(p)]  # those hold every DiT weight
    if quant_path is not None:
        checkpoint, map_path = resolve_infinitetalk_quant_file(quant, quant_path)
        name = infinitetalk_quant_files(quant)[0]
        for path in (checkpoint, map_path):
            if not path.is_file():
                problems.append(
                    f"{path} is missing (--quant {quant}). Download it with "
                    f"{_download_hint(target, f'{QUANT_MODELS_DIR}/{Path(name).stem}*')}."
                )
    elif dit_path is not None:
        if not Path(dit_path).is_file():
            problems.append(
                f"The DiT checkpoint {dit_path} (dit_path / --dit_path) does not exist: it is a full `torch.save` "
                "checkpoint holding a `state_dict`."
            )
    elif infinitetalk_file is None:
        problems.append(
            "The InfiniteTalk weights are not given: pass infinitetalk_file (--infinitetalk_dir), e.g. "
            f"weights/InfiniteTalk/{SINGLE_FILE} (one person) or weights/InfiniteTalk/{MULTI_FILE} (several). "
            f"Download them with {_download_hint(target)}."
        )
    else:
        file = resolve_infinitetalk_file(infinitetalk_file)
        if not file.is_file():
            root = file.parent.parent if file.parent.name in ("single", "multi") else file.parent
            include = f"{file.parent.name}/*" if file.parent.name in ("single", "multi") else None
            problems.append(f"{file} is missing. Download it with {_download_hint(root, include)}.")
    return problems


def _wan_config(wan_dir) -> dict:
    config_file = Path(wan_dir) / "config.json"
    with open(config_file) as f:
        return json.load(f)


def _load_checkpoint_state_dict(dit_path) -> dict[str, torch.Tensor]:
    """The `state_dict` of a full DiT checkpoint saved with `torch.save` (memory-mapped where the format allows)."""
    try:
        checkpoint = torch.load(dit_path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
        checkpoint = torch.load(dit_path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        return checkpoint["state_dict"]
    if isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint  # a bare state dict
    keys = list(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise ValueError(
        f"{dit_path} is not a DiT checkpoint: the reference's --dit_path files hold {{'state_dict': {{...}}}}; got {keys}."
    )


def load_infinitetalk_transformer(wan_dir, infinitetalk_file=None, dit_path=None, torch_dtype=None, model_cls=None):
    """InfiniteTalk's DiT as a `MultiTalkTransformer3DModel` (same architecture and key names).

    With `infinitetalk_file`: Wan2.1-I2V's shards in `wan_dir`, then the adapter file over them (a key in both is
    taken from the adapter file, as the reference's merged state dict does), loaded strictly. With `dit_path`: the
    `state_dict` of that full checkpoint, with `wan_dir`'s `config.json`.
    """
    from .transformer_original import (
        _load_shards,
        _load_tensors,
        _tensor_shapes,
        multitalk_config_from_original,
        original_to_diffusers_key,
    )

    if model_cls is None:
        from ..models.transformer_multitalk import MultiTalkTransformer3DModel as model_cls

    problems = infinitetalk_problems(wan_dir, infinitetalk_file, None, dit_path)
    problems = [p for p in problems if "wav2vec2" not in p]
    if problems:
        raise FileNotFoundError("\n".join(problems))
    original_config = _wan_config(wan_dir)
    if dit_path is not None:
        state_dict = _load_checkpoint_state_dict(dit_path)
        shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
        _require_audio_weights(shapes, str(dit_path))
        config = multitalk_config_from_original(original_config, shapes)
        # copies (`clone`): the checkpoint is memory-mapped, and the model must own its weights
        entries = ((key, lambda tensor=tensor: tensor.clone()) for key, tensor in state_dict.items())
        return _load_tensors(
            model_cls, config, entries, original_to_diffusers_key, torch_dtype, "cpu", str(dit_path),
            label="an InfiniteTalk transformer",
        )  # fmt: skip
    files = [*wan_dit_shards(wan_dir), resolve_infinitetalk_file(infinitetalk_file)]
    adapter_shapes = _tensor_shapes(files[-1:])
    _require_audio_weights(adapter_shapes, str(files[-1]))
    config = multitalk_config_from_original(original_config, _tensor_shapes(files))
    return _load_shards(model_cls, config, files, original_to_diffusers_key, torch_dtype, "cpu", str(files[-1]))


def _require_audio_weights(shapes, source: str) -> None:
    if not any(k.startswith("audio_proj.") or ".audio_cross_attn." in k for k in shapes):
        raise ValueError(
            f"{source} holds no audio weights (audio_proj.*, blocks.N.audio_cross_attn.*): it is not InfiniteTalk's "
            f"{INFINITETALK_FILE} (or a full InfiniteTalk DiT). Download them with "
            f"{_download_hint('weights/InfiniteTalk')}."
        )


def load_infinitetalk_components(
    wan_dir,
    infinitetalk_file=None,
    wav2vec_dir=None,
    torch_dtype=None,
    dit_path=None,
    quant: str | None = None,
    quant_path=None,
    lora_path=None,
) -> tuple[dict, bool]:
    """The components InfiniteTalk's files decide, `transformer` and `text_encoder` (the others are the Wan folder's,
    `wan_original.load_wan_original_components`), and whether the pipeline still has to be quantised on the fly
    (`quant` without `quant_path`). Every missing file, the Wan folder's and wav2vec2's included, is named before
    anything loads."""
    from .wan_umt5 import load_umt5_encoder_from_original

    if quant is not None:
        from .quantized import validate_quant

        validate_quant(quant)
        if quant_path is not None and (lora_path is not None or dit_path is not None):
            raise ValueError(
                "InfiniteTalk's quantised DiT file holds every DiT weight: it cannot take a LoRA or a dit_path. Drop "
                "quant_path to quantise the float weights on the fly (after fusing the LoRA)."
            )
    elif quant_path is not None:
        raise ValueError("quant_path (--quant_dir) needs quant='int8' or 'fp8' (--quant).")
    problems = infinitetalk_problems(wan_dir, infinitetalk_file, wav2vec_dir, dit_path, quant, quant_path)
    if problems:
        raise FileNotFoundError("\n".join(problems))
    wan_dir = Path(wan_dir)
    if quant_path is not None:
        transformer, text_encoder = _load_quantized(wan_dir, quant, quant_path, torch_dtype)
    else:
        transformer = load_infinitetalk_transformer(wan_dir, infinitetalk_file, dit_path, torch_dtype=torch_dtype)
        text_encoder = load_umt5_encoder_from_original(wan_dir, torch_dtype=torch_dtype)
    return dict(transformer=transformer, text_encoder=text_encoder), quant is not None and quant_path is None


def _load_quantized(wan_dir: Path, quant: str, quant_path, torch_dtype):
    """The quantised DiT and, when `t5_<quant>.safetensors` and its map lie beside it (where the reference reads
    them), the quantised umT5; else Wan's float umT5, with a warning."""
    from .quantized import load_quantized_multitalk_transformer, load_quantized_umt5_encoder, t5_quant_files
    from .wan_umt5 import load_umt5_encoder_from_original

    checkpoint, map_path = resolve_infinitetalk_quant_file(quant, quant_path)
    transformer = load_quantized_multitalk_transformer(
        checkpoint, wan_dir, map_path=map_path, quant=quant, torch_dtype=torch_dtype
    )
    t5, t5_map = (checkpoint.parent / name for name in t5_quant_files(quant))
    if t5.is_file() and t5_map.is_file():
        text_encoder = load_quantized_umt5_encoder(t5, t5_map, quant=quant, torch_dtype=torch_dtype)
    else:
        logger.warning(
            f"{t5} not found beside {checkpoint.name}: the umT5 text encoder is loaded in float from {wan_dir}."
        )
        text_encoder = load_umt5_encoder_from_original(wan_dir, torch_dtype=torch_dtype)
    return transformer, text_encoder


def save_quantized_infinitetalk_transformer(model: torch.nn.Module, folder, quant: str = "int8") -> tuple[Path, Path]:
    """Writes a quantised (frozen) transformer as InfiniteTalk's files: `<folder>/quant_models/
    infinitetalk_single_<quant>.safetensors` and its map `infinitetalk_single_<quant>.json`, in the original key
    layout. Returns (checkpoint, map) paths."""
    from .quantized import save_quantized_multitalk_transformer

    name, map_name = infinitetalk_quant_files(quant)
    checkpoint, written_map = save_quantized_multitalk_transformer(model, folder, quant, name=Path(name).stem)
    map_path = checkpoint.parent / map_name
    written_map.replace(map_path)
    return checkpoint, map_path
