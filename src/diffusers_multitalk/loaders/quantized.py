"""MultiTalk's quantised checkpoints (optimum-quanto), loaded into the diffusers-layout models.

MeiGen-AI/MeiGen-MultiTalk ships, in its `quant_models/` folder, models that optimum-quanto quantised and serialised
in the original (Wan) layout, each as a safetensors state dict plus a JSON quantization map:

* `dit_model_int8.safetensors` + `dit_model_map_int8.json`: the whole MultiTalk DiT (Wan2.1-I2V-14B with the audio
  adapter merged), int8 weights;
* `quant_model_int8_FusionX.safetensors` + `quantization_map_int8_FusionX.json`: the same DiT with the FusionX
  step-distillation LoRA merged in before quantisation (MultiTalk passes it as `--lora_dir`; the `fp8` variants follow
  the same naming);
* `t5_int8.safetensors` + `t5_map_int8.json`: the umT5-XXL text encoder.

A quantised linear layer `M` is stored as `M.weight._data` (int8 / float8 values), `M.weight._scale` (one scale per
output row), `M.bias`, `M.input_scale` and `M.output_scale`; everything else keeps its float key. The map is
`{module name: {"weights": "qint8", "activations": "none"}}`. Here the module path of every key and map entry is
renamed to the diffusers layout (the suffixes are kept), the model is built with empty weights and
`optimum.quanto.requantize` fills it. The DiT's config comes from Wan's `config.json`, as in the reference.

Without the quantised files, a float model can be quantised on the fly (`quantize(model, weights=qint8)` then
`freeze`): see :func:`quantize_model` and :func:`quantize_pipeline`.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Callable, Mapping

import torch


logger = logging.getLogger(__name__)

__all__ = [
    "QUANT_CHOICES",
    "QUANT_INSTALL_HINT",
    "QUANT_MODELS_DIR",
    "QuantizedCheckpointError",
    "dit_quant_files",
    "fusionx_quant_files",
    "t5_quant_files",
    "require_optimum_quanto",
    "validate_quant",
    "is_quantized_checkpoint",
    "find_quantization_map",
    "convert_quantized_state_dict",
    "convert_quantization_map",
    "load_quantized_multitalk_transformer",
    "load_quantized_umt5_encoder",
    "quantize_model",
    "quantize_pipeline",
    "save_quantized_multitalk_transformer",
    "resolve_quant_files",
    "quant_folder_problems",
    "load_quantized_components",
    "parameter_bytes",
]

# MultiTalk's --quant values -> optimum-quanto weight qtypes (qfloat8 is quanto's alias of qfloat8_e4m3fn).
QUANT_CHOICES = ("int8", "fp8")
_QUANTO_WEIGHTS = {"int8": "qint8", "fp8": "qfloat8"}
_MAP_WEIGHTS = {"int8": ("qint8",), "fp8": ("qfloat8", "qfloat8_e4m3fn", "qfloat8_e4m3fnuz", "qfloat8_e5m2")}
QUANT_MODELS_DIR = "quant_models"
QUANT_INSTALL_HINT = 'pip install "diffusers-multitalk[quant]"  (or: pip install optimum-quanto)'
_MULTITALK_REPO = "MeiGen-AI/MeiGen-MultiTalk"

# Serialised parts of a quantised weight, and the per-module scales quanto keeps beside it.
_WEIGHT_PARTS = ("._data", "._scale", "._shift")
_MODULE_SCALES = ("input_scale", "output_scale")


def dit_quant_files(quant: str) -> tuple[str, str]:
    """The reference's quantised DiT and its map, in `<MeiGen-MultiTalk>/quant_models/`."""
    return f"dit_model_{quant}.safetensors", f"dit_model_map_{quant}.json"


def fusionx_quant_files(quant: str) -> tuple[str, str]:
    """The quantised DiT with FusionX merged (the reference's `--quant ... --lora_dir <this file>`) and its map."""
    return f"quant_model_{quant}_FusionX.safetensors", f"quantization_map_{quant}_FusionX.json"


def t5_quant_files(quant: str) -> tuple[str, str]:
    """The quantised umT5 encoder and its map, in `<MeiGen-MultiTalk>/quant_models/`."""
    return f"t5_{quant}.safetensors", f"t5_map_{quant}.json"


class QuantizedCheckpointError(ValueError):
    """A quantised checkpoint or map that does not fit the model (or each other)."""


def require_optimum_quanto():
    """`optimum.quanto`, or an ImportError that says how to install it."""
    try:
        import optimum.quanto as quanto
    except ImportError as err:
        raise ImportError(
            f"Quantised MultiTalk models need optimum-quanto, which is not installed: {QUANT_INSTALL_HINT}"
        ) from err
    return quanto


def _check_quant(quant: str | None) -> None:
    if quant is not None and quant not in QUANT_CHOICES:
        raise ValueError(f"quant must be one of {QUANT_CHOICES} (MultiTalk's --quant values), got {quant!r}.")


def validate_quant(quant: str | None) -> None:
    """Raises for a `quant` value other than None/"int8"/"fp8", or when optimum-quanto is missing for one."""
    _check_quant(quant)
    if quant is not None:
        require_optimum_quanto()


# --------------------------------------------------------------------------------------------------------------------
# Key and map renaming
# --------------------------------------------------------------------------------------------------------------------
def _convert_module_name(name: str, key_fn: Callable[[str], str | None]) -> str | None:
    """A module path through a parameter-key map: `name.weight` is renamed and `.weight` dropped again."""
    new = key_fn(name + ".weight")
    if new is None or not new.endswith(".weight"):
        return None
    return new[: -len(".weight")]


def _convert_key(key: str, key_fn: Callable[[str], str | None]) -> str | None:
    for part in _WEIGHT_PARTS:
        if key.endswith(part):
            base = key_fn(key[: -len(part)])
            return None if base is None else base + part
    module, _, leaf = key.rpartition(".")
    if leaf in _MODULE_SCALES and module:
        new_module = _convert_module_name(module, key_fn)
        return None if new_module is None else f"{new_module}.{leaf}"
    return key_fn(key)


def _preview(items, limit: int = 10) -> str:
    items = sorted(items)
    shown = ", ".join(items[:limit])
    return shown + (f" ... ({len(items)} in all)" if len(items) > limit else "")


def convert_quantized_state_dict(
    state_dict: Mapping[str, torch.Tensor], key_fn: Callable[[str], str | None], what: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Renames a quanto-serialised state dict with a parameter-key map (`key_fn`: name -> new name or None),
    keeping the `._data` / `._scale` / `input_scale` / `output_scale` parts. Raises on keys `key_fn` does not know."""
    out, unknown = {}, []
    for key, value in state_dict.items():
        new = _convert_key(key, key_fn)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise QuantizedCheckpointError(f"{what}: keys that are not part of the model: {_preview(unknown)}")
    return out


def convert_quantization_map(
    quantization_map: Mapping[str, dict], key_fn: Callable[[str], str | None], what: str = "quantization map"
) -> dict[str, dict]:
    """Renames the module names of a quanto quantization map with a parameter-key map. Raises on unknown names."""
    out, unknown = {}, []
    for name, config in quantization_map.items():
        new = _convert_module_name(name, key_fn)
        if new is None:
            unknown.append(name)
        else:
            out[new] = dict(config)
    if unknown:
        raise QuantizedCheckpointError(
            f"{what}: module names that are not linear layers of the model: {_preview(unknown)}"
        )
    return out


def _dit_to_diffusers(key: str) -> str | None:
    from .transformer_original import original_to_diffusers_key

    return original_to_diffusers_key(key)


def _dit_to_original(key: str) -> str | None:
    from .transformer_original import diffusers_to_original_key

    return diffusers_to_original_key(key)


def _rule_key_fn(rules) -> Callable[[str], str | None]:
    def key_fn(key: str) -> str | None:
        for pattern, repl in rules:
            match = pattern.fullmatch(key)
            if match:
                return match.expand(repl)
        return None

    return key_fn


def _t5_to_transformers(key: str) -> str | None:
    from .wan_umt5 import _T5_RULES

    return _rule_key_fn(_T5_RULES)(key)


def _t5_to_original(key: str) -> str | None:
    from .wan_umt5 import _T5_INVERSE_RULES

    return _rule_key_fn(_T5_INVERSE_RULES)(key)


# --------------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------------
def _load_json(path: Path, what: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise QuantizedCheckpointError(f"{path} is not valid JSON ({err}); download the {what} again.") from err
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "weights" in v for v in data.values()):
        raise QuantizedCheckpointError(
            f"{path} is not an optimum-quanto quantization map ({{module: {{'weights': ..., 'activations': ...}}}})."
        )
    return data


def is_quantized_checkpoint(path) -> bool:
    """Whether a `.safetensors` file holds quanto-quantised weights (`*.weight._data` keys). Reads key names only."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file() or path.suffix != ".safetensors":
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return any(key.endswith(".weight._data") for key in f.keys())
    except Exception:  # noqa: BLE001 - not a readable safetensors file: not a quantised checkpoint
        return False


def find_quantization_map(checkpoint, quant: str | None = None) -> Path:
    """The map that belongs to a quantised `.safetensors` file, by the reference's names: `dit_model_<q>` ->
    `dit_model_map_<q>.json`, `t5_<q>` -> `t5_map_<q>.json`, `quant_model_<x>` -> `quantization_map_<x>.json`, then
    (what MultiTalk does for any `--lora_dir` file) `quantization_map_<quant>_FusionX.json` beside it."""
    checkpoint = Path(checkpoint)
    stem, folder = checkpoint.stem, checkpoint.parent
    candidates = []
    for pattern, replacement in (
        (r"dit_model_(.+)", r"dit_model_map_\1"),
        (r"t5_(.+)", r"t5_map_\1"),
        (r"quant_model_(.+)", r"quantization_map_\1"),
    ):
        match = re.fullmatch(pattern, stem)
        if match:
            candidates.append(folder / (match.expand(replacement) + ".json"))
    if quant is not None:
        candidates.append(folder / fusionx_quant_files(quant)[1])
    candidates += [folder / f"{stem}_map.json", folder / f"{stem}.json"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    names = ", ".join(dict.fromkeys(str(c.name) for c in candidates))
    raise FileNotFoundError(
        f"No quantization map for {checkpoint} in {folder} (looked for: {names}). Download it with "
        f"`huggingface-cli download {_MULTITALK_REPO} --include '{QUANT_MODELS_DIR}/*' --local-dir <MeiGen-MultiTalk>`, "
        "or pass the map's path."
    )


def _load_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the {what}. Download it with `huggingface-cli download {_MULTITALK_REPO} "
            f"{QUANT_MODELS_DIR}/{path.name} --local-dir <MeiGen-MultiTalk>`."
        )
    state_dict = load_file(str(path))
    # safetensors hands out tensors at the file's offsets; torch's CPU int8 kernel (`_weight_int8pack_mm`, which
    # quanto uses for bfloat16) crashes on unaligned data, so unaligned tensors get their own (aligned) copy.
    for key, tensor in state_dict.items():
        if tensor.data_ptr() % 64:
            state_dict[key] = tensor.clone()
    return state_dict


# --------------------------------------------------------------------------------------------------------------------
# Loading into a model built with empty weights
# --------------------------------------------------------------------------------------------------------------------
def _quantizable_types() -> tuple[type, ...]:
    """The module types optimum-quanto has quantised counterparts for."""
    from optimum.quanto.nn.qmodule import _QMODULE_TABLE

    return tuple(_QMODULE_TABLE)


def _check_map_quant(qmap: Mapping[str, dict], quant: str | None, source: str) -> None:
    from optimum.quanto.tensor import qtypes

    weights = {str(cfg.get("weights")) for cfg in qmap.values()}
    unknown = sorted(w for w in weights if w != "none" and w not in qtypes)
    if unknown:
        raise QuantizedCheckpointError(
            f"{source}: unknown weight qtypes {unknown} (optimum-quanto knows {sorted(qtypes)})."
        )
    odd = sorted(w for w in weights if w not in ("none",) + _MAP_WEIGHTS["int8"] + _MAP_WEIGHTS["fp8"])
    if odd:
        raise QuantizedCheckpointError(
            f"{source}: weight qtypes {odd} are not supported here (only int8 and float8, as MultiTalk ships)."
        )
    if quant is not None:
        other = sorted(w for w in weights if w != "none" and w not in _MAP_WEIGHTS[quant])
        if other:
            raise QuantizedCheckpointError(
                f"{source} holds {', '.join(other)} weights, not {quant}: pass the matching --quant value or the "
                f"{quant} files ({dit_quant_files(quant)[0]})."
            )
    if not any(w != "none" for w in weights):
        raise QuantizedCheckpointError(f"{source} quantises no module.")


def _target_dtype(key: str, stored: torch.dtype, torch_dtype: torch.dtype | None, keep_fp32: tuple[str, ...]):
    if torch_dtype is None:
        return stored
    if torch_dtype in (torch.float16, torch.bfloat16) and any(part in keep_fp32 for part in key.split(".")):
        return torch.float32
    return torch_dtype


def _requantize_into(
    model: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    qmap: dict[str, dict],
    *,
    source: str,
    map_source: str,
    name_back: Callable[[str], str],
    torch_dtype: torch.dtype | None,
    keep_fp32: tuple[str, ...] = (),
    tied: Mapping[str, str] | None = None,
) -> torch.nn.Module:
    """Checks `state_dict` and `qmap` (both in the model's names) against `model` (built with empty weights), casts,
    and runs `optimum.quanto.requantize`. Problems name keys in the file's own layout (`name_back`)."""
    from optimum.quanto import requantize

    tied = dict(tied or {})
    modules = dict(model.named_modules())
    quantizable = _quantizable_types()
    bad_modules = []
    for name, cfg in qmap.items():
        module = modules.get(name)
        # quanto quantises the weights of linear and conv2d layers; other registered types only their activations
        fits = module is not None and isinstance(
            module, (torch.nn.Linear, torch.nn.Conv2d) if cfg.get("weights", "none") != "none" else quantizable
        )
        if not fits:
            kind = "missing" if module is None else type(module).__name__
            bad_modules.append(f"{name_back(name)} ({kind})")
    if bad_modules:
        raise QuantizedCheckpointError(
            f"The quantization map {map_source} does not match the model: it names modules that are not "
            f"quantisable layers of it: {_preview(bad_modules)}. Use the map that came with {source}."
        )

    quantized = {name for name, cfg in qmap.items() if cfg.get("weights", "none") != "none"}
    expected: dict[str, tuple[int, ...] | None] = {}
    for key, tensor in model.state_dict().items():
        if key in tied:
            continue
        module, _, leaf = key.rpartition(".")
        if leaf == "weight" and module in quantized:
            expected[key + "._data"] = tuple(tensor.shape)
            expected[key + "._scale"] = None  # one per output row; quanto checks the shape
        else:
            expected[key] = tuple(tensor.shape)
    optional = {f"{name}.{leaf}" for name in qmap for leaf in _MODULE_SCALES}

    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected and k not in optional]
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing: {_preview(name_back(k) for k in missing)}")
        if unexpected:
            detail.append(f"unexpected: {_preview(name_back(k) for k in unexpected)}")
        hint = ""
        if any(k.endswith((".weight", "._data", "._scale")) for k in [*missing, *unexpected]):
            hint = (
                " The map and the weights disagree on which layers are quantised: use the map that came with the file."
            )
        raise QuantizedCheckpointError(
            f"{source} with the map {map_source} does not match the model ({'; '.join(detail)}).{hint}"
        )
    wrong = [
        f"{name_back(k)}: file {tuple(state_dict[k].shape)} vs model {shape}"
        for k, shape in expected.items()
        if shape is not None and tuple(state_dict[k].shape) != shape
    ]
    if wrong:
        raise QuantizedCheckpointError(f"{source} does not fit the model config (mis-shaped: {_preview(wrong)}).")

    # Dtypes: each float tensor as stored, or `torch_dtype` (float32 for the modules kept in float32). A quantised
    # weight's dtype is that of its scale. The empty model gets the same dtypes, so loading does not convert.
    for key in list(state_dict):
        tensor = state_dict[key]
        if key.endswith("._data") or not tensor.is_floating_point():
            continue
        dtype = _target_dtype(key, tensor.dtype, torch_dtype, keep_fp32)
        if tensor.dtype != dtype:
            state_dict[key] = tensor.to(dtype)
    for module_name, module in modules.items():
        for leaf, param in list(module._parameters.items()):
            if param is None:
                continue
            key = f"{module_name}.{leaf}" if module_name else leaf
            stored = state_dict.get(key, state_dict.get(key + "._scale"))
            if stored is not None and param.is_meta and param.dtype != stored.dtype:
                module._parameters[leaf] = torch.nn.Parameter(
                    torch.empty(param.shape, dtype=stored.dtype, device="meta"), requires_grad=False
                )

    # Scales of modules without activation quantisation are unused; a file without them still loads.
    for name in qmap:
        for leaf in _MODULE_SCALES:
            key = f"{name}.{leaf}"
            if key not in state_dict:
                scale = state_dict.get(f"{name}.weight._scale")
                state_dict[key] = torch.ones((), dtype=scale.dtype if scale is not None else torch.float32)

    requantize(model, state_dict, qmap, device=torch.device("cpu"))
    for target, source_name in tied.items():
        src_module, _, src_leaf = source_name.rpartition(".")
        dst_module, _, dst_leaf = target.rpartition(".")
        setattr(model.get_submodule(dst_module), dst_leaf, getattr(model.get_submodule(src_module), src_leaf))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise QuantizedCheckpointError(f"{source}: tensors left empty after loading: {_preview(left)}")
    model.eval().requires_grad_(False)
    _warn_cpu_bfloat16_int8(model)
    return model


def _warn_cpu_bfloat16_int8(model: torch.nn.Module) -> None:
    """optimum-quanto runs bfloat16 x int8 layers on the CPU through `torch._weight_int8pack_mm`, which returns wrong
    values (or crashes) when the input width is not a multiple of 16. MultiTalk's and umT5's layers all are; tiny test
    models may not be."""
    from optimum.quanto import QTensor
    from optimum.quanto.nn import QModuleMixin

    odd = [
        name
        for name, m in model.named_modules()
        if isinstance(m, QModuleMixin)
        and isinstance(m.weight, QTensor)
        and m.weight.dtype == torch.bfloat16
        and m.weight.qtype.name == "qint8"
        and m.weight.shape[-1] % 16
    ]
    if odd:
        logger.warning(
            "int8 layers with bfloat16 weights and an input width not divisible by 16 (%s) give wrong results on the "
            "CPU (torch._weight_int8pack_mm); run them in float32 on the CPU, or on a GPU.",
            _preview(odd, 4),
        )


def _wan_config(config) -> dict:
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the quantised DiT takes its config from Wan's config.json, in the "
            "Wan2.1-I2V-14B-480P folder. Download it with "
            f"`huggingface-cli download Wan-AI/Wan2.1-I2V-14B-480P config.json --local-dir <wan_dir>`."
        )
    with open(path) as f:
        return json.load(f)


def _original_shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Float-key shapes of a quantised state dict (`X.weight._data` -> `X.weight`), for config inference."""
    shapes = {}
    for key, tensor in state_dict.items():
        if key.endswith("._data"):
            shapes[key[: -len("._data")]] = tuple(tensor.shape)
        elif not key.endswith(("._scale", "._shift", ".input_scale", ".output_scale")):
            shapes[key] = tuple(tensor.shape)
    return shapes


def load_quantized_multitalk_transformer(
    checkpoint,
    config,
    map_path=None,
    quant: str | None = None,
    torch_dtype: torch.dtype | None = None,
    device="cpu",
    model_cls=None,
):
    """Loads MultiTalk's quantised DiT (`quant_models/dit_model_int8.safetensors`, or the FusionX one) into
    `MultiTalkTransformer3DModel` with quantised linear layers.

    Args:
        checkpoint: the quantised `.safetensors` file (original Wan/MultiTalk key names).
        config: Wan's `config.json` (the file, the Wan2.1-I2V-14B folder that holds it, or the dict).
        map_path: its quantization map (default: found beside it by the reference's names,
            see :func:`find_quantization_map`).
        quant: "int8" or "fp8" to check the map against; None accepts either.
        torch_dtype: dtype of the float parts and of the dequantised weights (scales); None keeps the file's. The
            modules the model keeps in float32 stay float32 when a half dtype is asked for.
        device: where the model is placed.
    """
    require_optimum_quanto()
    _check_quant(quant)
    from accelerate import init_empty_weights

    from .transformer_original import multitalk_config_from_original

    if model_cls is None:
        from ..models.transformer_multitalk import MultiTalkTransformer3DModel as model_cls

    checkpoint = Path(checkpoint)
    map_path = Path(map_path) if map_path is not None else find_quantization_map(checkpoint, quant)
    original_config = _wan_config(config)
    raw = _load_safetensors(checkpoint, "quantised MultiTalk DiT")
    if not any(k.endswith("._data") for k in raw):
        raise QuantizedCheckpointError(
            f"{checkpoint} holds no quantised weights (no *.weight._data keys): it is not an optimum-quanto checkpoint. "
            "Float checkpoints load without --quant."
        )
    qmap_original = _load_json(map_path, "quantization map")
    _check_map_quant(qmap_original, quant, str(map_path))
    shapes = _original_shapes(raw)
    if not any(k.startswith("audio_proj.") for k in shapes):
        raise QuantizedCheckpointError(
            f"{checkpoint} holds no MultiTalk audio weights (audio_proj.*): not a MultiTalk DiT."
        )
    model_config = multitalk_config_from_original(original_config, shapes)
    state_dict = convert_quantized_state_dict(raw, _dit_to_diffusers, str(checkpoint))
    del raw
    qmap = convert_quantization_map(qmap_original, _dit_to_diffusers, str(map_path))
    with init_empty_weights():
        model = model_cls(**model_config)

    def name_back(key: str) -> str:  # a key or a module name, in the file's layout
        return _convert_key(key, _dit_to_original) or _convert_module_name(key, _dit_to_original) or key

    model = _requantize_into(
        model,
        state_dict,
        qmap,
        source=str(checkpoint),
        map_source=str(map_path),
        name_back=name_back,
        torch_dtype=torch_dtype,
        keep_fp32=tuple(model._keep_in_fp32_modules or ()),
    )
    return model.to(device)


def load_quantized_umt5_encoder(checkpoint, map_path=None, quant: str | None = None, torch_dtype=None, device="cpu"):
    """Loads MultiTalk's quantised umT5 (`quant_models/t5_int8.safetensors`, Wan's T5 names) into
    `transformers.UMT5EncoderModel` with quantised linear layers (the token embedding stays float)."""
    require_optimum_quanto()
    _check_quant(quant)
    from accelerate import init_empty_weights
    from transformers import UMT5EncoderModel

    from .wan_umt5 import umt5_config_from_wan_state_dict

    checkpoint = Path(checkpoint)
    map_path = Path(map_path) if map_path is not None else find_quantization_map(checkpoint, quant)
    raw = _load_safetensors(checkpoint, "quantised umT5 text encoder")
    qmap_original = _load_json(map_path, "quantization map")
    _check_map_quant(qmap_original, quant, str(map_path))
    shapes = {k: torch.empty(s, device="meta") for k, s in _original_shapes(raw).items()}
    config = umt5_config_from_wan_state_dict(shapes)
    state_dict = convert_quantized_state_dict(raw, _t5_to_transformers, str(checkpoint))
    del raw
    qmap = convert_quantization_map(qmap_original, _t5_to_transformers, str(map_path))
    with init_empty_weights(include_buffers=False):
        model = UMT5EncoderModel(config)

    def name_back(key: str) -> str:  # a key or a module name, in the file's layout
        return _convert_key(key, _t5_to_original) or _convert_module_name(key, _t5_to_original) or key

    model = _requantize_into(
        model,
        state_dict,
        qmap,
        source=str(checkpoint),
        map_source=str(map_path),
        name_back=name_back,
        torch_dtype=torch_dtype,
        tied={"encoder.embed_tokens.weight": "shared.weight"},
    )
    return model.to(device)


# --------------------------------------------------------------------------------------------------------------------
# Quantising on the fly, and writing the reference's files
# --------------------------------------------------------------------------------------------------------------------
def quantize_model(model: torch.nn.Module, quant: str = "int8", exclude=None) -> torch.nn.Module:
    """Quantises every linear layer's weights in place (`optimum.quanto.quantize(model, weights=...)` + `freeze`),
    as MultiTalk's quantised files were made; activations stay float. `exclude`: quanto's fnmatch patterns of module
    names to keep float. Returns `model`."""
    _check_quant(quant)
    quanto = require_optimum_quanto()
    quanto.quantize(model, weights=_QUANTO_WEIGHTS[quant], exclude=exclude)
    quanto.freeze(model)
    _warn_cpu_bfloat16_int8(model)
    return model.eval().requires_grad_(False)


def quantize_pipeline(pipe, quant: str = "int8", text_encoder: bool = True):
    """Quantises a loaded `WanMultiTalkPipeline` on the fly: the DiT (after fusing any loaded LoRA into its float
    weights, which a quantised layer cannot take afterwards) and, as MultiTalk does with --quant, the umT5 encoder."""
    transformer = pipe.transformer
    if getattr(transformer, "peft_config", None):
        pipe.fuse_lora(components=["transformer"])
        pipe.unload_lora_weights()
    quantize_model(pipe.transformer, quant)
    if text_encoder and getattr(pipe, "text_encoder", None) is not None:
        quantize_model(pipe.text_encoder, quant)
    return pipe


def _is_quantized(model: torch.nn.Module) -> bool:
    from optimum.quanto.nn import QModuleMixin

    return any(isinstance(m, QModuleMixin) and m.frozen for m in model.modules())


def save_quantized_multitalk_transformer(
    model: torch.nn.Module, quant_dir, quant: str = "int8", name: str | None = None
):
    """Writes a quantised (frozen) `MultiTalkTransformer3DModel` as the reference's files, in the original key layout:
    `<quant_dir>/quant_models/dit_model_<quant>.safetensors` and `dit_model_map_<quant>.json` (or `<name>.safetensors`
    with the map name the loader finds for it). Returns (checkpoint, map) paths."""
    from optimum.quanto import quantization_map
    from safetensors.torch import save_file

    _check_quant(quant)
    if not _is_quantized(model):
        raise ValueError("The model is not quantised: run quantize_model(model, quant) first.")
    folder = Path(quant_dir) / QUANT_MODELS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if name is None:
        file_name, map_name = dit_quant_files(quant)
    else:
        file_name = f"{name}.safetensors"
        # Names find_quantization_map pairs: quant_model_<x> -> quantization_map_<x>, anything else -> <name>_map.
        if name.startswith("quant_model_"):
            map_name = f"quantization_map_{name[len('quant_model_') :]}.json"
        else:
            map_name = f"{name}_map.json"
    state_dict = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    original = convert_quantized_state_dict(state_dict, _dit_to_original, "model")
    qmap = convert_quantization_map(quantization_map(model), _dit_to_original, "model")
    save_file(original, str(folder / file_name), metadata={"format": "pt"})
    with open(folder / map_name, "w") as f:
        json.dump(qmap, f, indent=2)
    return folder / file_name, folder / map_name


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes held by a model's parameters and buffers; a quantised weight counts its int8/float8 data and scales."""

    def size(tensor) -> int:
        # quanto's tensors (and their packed parts, e.g. Marlin's) are wrapper subclasses: count what they hold
        if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
            inner, _ = tensor.__tensor_flatten__()
            return sum(size(getattr(tensor, name)) for name in inner)
        return tensor.numel() * tensor.element_size()

    return sum(size(t) for t in [*model.parameters(), *model.buffers()])


# --------------------------------------------------------------------------------------------------------------------
# The pipeline's folders
# --------------------------------------------------------------------------------------------------------------------
def resolve_quant_files(quant: str, quant_dir=None, dit_path=None) -> dict[str, Path | None]:
    """The files `--quant <quant> --quant_dir <quant_dir>` reads, as MultiTalk names them: `dit`/`dit_map` (the
    FusionX file when `dit_path` is given, as MultiTalk's `--lora_dir`) and `t5`/`t5_map` (None when `quant_dir` is
    None). Nothing is checked here."""
    _check_quant(quant)
    folder = Path(quant_dir) / QUANT_MODELS_DIR if quant_dir is not None else None
    if dit_path is not None:
        dit = Path(dit_path)
        try:
            dit_map = find_quantization_map(dit, quant)
        except FileNotFoundError:
            dit_map = dit.parent / fusionx_quant_files(quant)[1]
    else:
        if folder is None:
            raise ValueError("Give quant_dir (the MeiGen-MultiTalk folder) or the quantised DiT file.")
        dit, dit_map = (folder / n for n in dit_quant_files(quant))
    t5 = t5_map = None
    if folder is not None:
        t5, t5_map = (folder / n for n in t5_quant_files(quant))
    return dict(dit=dit, dit_map=dit_map, t5=t5, t5_map=t5_map)


def _is_dit_problem(problem: str) -> bool:
    from .original_folders import DIT_INDEX, MULTITALK_FILE

    markers = ("diffusion_pytorch_model", DIT_INDEX, MULTITALK_FILE, "MultiTalk audio weights", "DiT shards")
    return any(marker in problem for marker in markers)


def quant_folder_problems(problems: list[str], wan_dir, quant: str, quant_dir=None, dit_path=None) -> list[str]:
    """`check_original_folders`' problems adjusted for --quant with files: the DiT shards and `multitalk.safetensors`
    are not needed (the quantised DiT holds every weight; Wan's config.json is still read), nor Wan's umT5 `.pth`
    when the quantised umT5 is there; the quantised files are required."""
    from .original_folders import WAN_T5_CHECKPOINT

    files = resolve_quant_files(quant, quant_dir, dit_path)
    kept = [p for p in problems if not _is_dit_problem(p)]
    have_t5 = files["t5"] is not None and files["t5"].is_file() and files["t5_map"].is_file()
    if have_t5:
        kept = [p for p in kept if WAN_T5_CHECKPOINT not in p]
    hint = f"`huggingface-cli download {_MULTITALK_REPO} --include '{QUANT_MODELS_DIR}/*' --local-dir {quant_dir or '<MeiGen-MultiTalk>'}`"
    if quant_dir is not None and not Path(quant_dir).is_dir():
        kept.append(
            f"--quant_dir {quant_dir} does not exist: it is the MeiGen-MultiTalk folder. Download it with {hint}."
        )
    else:
        for key in ("dit", "dit_map"):
            if not files[key].is_file():
                kept.append(f"{files[key]} is missing (--quant {quant}). Download it with {hint}.")
    return kept


def load_quantized_components(
    wan_dir, quant: str, quant_dir=None, dit_path=None, torch_dtype=None, multitalk_path=None
):
    """(transformer, text_encoder) for `--quant`: from MultiTalk's quantised files when `quant_dir` or `dit_path` is
    given (the umT5 from `t5_<quant>.safetensors` when present, else Wan's float `.pth`, with a warning), else the
    float weights of `wan_dir` quantised on the fly."""
    _check_quant(quant)
    require_optimum_quanto()
    from .transformer_original import load_multitalk_transformer_from_original
    from .wan_umt5 import load_umt5_encoder_from_original

    wan_dir = Path(wan_dir)
    if quant_dir is None and dit_path is None:
        logger.warning("--quant %s without quantised files: quantising the float DiT and umT5 on the fly.", quant)
        transformer = load_multitalk_transformer_from_original(
            wan_dir, torch_dtype=torch_dtype, multitalk_path=multitalk_path
        )
        text_encoder = load_umt5_encoder_from_original(wan_dir, torch_dtype=torch_dtype)
        return quantize_model(transformer, quant), quantize_model(text_encoder, quant)
    files = resolve_quant_files(quant, quant_dir, dit_path)
    transformer = load_quantized_multitalk_transformer(
        files["dit"], wan_dir, map_path=files["dit_map"], quant=quant, torch_dtype=torch_dtype
    )
    if files["t5"] is not None and files["t5"].is_file():
        text_encoder = load_quantized_umt5_encoder(files["t5"], files["t5_map"], quant=quant, torch_dtype=torch_dtype)
    else:
        where = files["t5"] or f"<quant_dir>/{QUANT_MODELS_DIR}/{t5_quant_files(quant)[0]}"
        logger.warning("%s not found: the umT5 text encoder is loaded in float from %s.", where, wan_dir)
        text_encoder = load_umt5_encoder_from_original(wan_dir, torch_dtype=torch_dtype)
    return transformer, text_encoder
