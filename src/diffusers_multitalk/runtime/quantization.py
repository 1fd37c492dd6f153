"""`--quant` on the fly: which library quantises the loaded DiT (`--quant_backend`), checked before any model loads.

- optimum-quanto ("quanto"): MultiTalk's own scheme, weights stored in int8/FP8 and the products run in the
  compute dtype; the DiT and umT5. The only backend for the original releases' quantised files (`--quant_dir`).
- torchao ("torchao"): the DiT's block linears executed in 8 bits (`models/fp8.py`): FP8 e4m3 with row-wise scales
  through `torch._scaled_mm` (a CUDA GPU of compute capability >= 8.9), or int8 weights and activations
  (W8A8, also on the CPU). The audio adapter, norms, modulation, embedders and head stay as they are; so does umT5.
- "auto" (the default): torchao for `--quant fp8` on a GPU that runs FP8 products, when torchao is installed;
  quanto otherwise. The choice is printed.
"""

from __future__ import annotations

import importlib.util
import logging

from .spec import FieldProblem, GenerateOptions, RequestError, note_about


QUANT_BACKENDS = ("auto", "quanto", "torchao")
# `--quant auto` (what `--preset fast` gives when --quant is left out): fp8 through torchao where it runs, none elsewhere;
# `--quant none`: no quantisation (under a preset too). Both are settled on the device by `resolve_auto_quant`.
AUTO_QUANT = "auto"
NO_QUANT = "none"
# `--quant` -> the torchao mode of `models.fp8.enable_fp8`
TORCHAO_MODES = {"fp8": "fp8", "int8": "int8_dynamic"}
TORCHAO_INSTALL_HINT = 'pip install "diffusers-multitalk[fp8]"'
FILES_ARE_QUANTO = (
    "the quantised files ({quant_dir} / the FusionX DiT) are optimum-quanto checkpoints; drop them to quantise the "
    "float weights with torchao, or drop {quant_backend}"
)


# What importing torchao (and diffusers' torchao quantizer) logs about optional parts this build of torch cannot use:
# C extensions built for another CUDA, tensor types of older torchao releases, pytree deprecations. Nothing in it is
# for a command-line user to act on, and the quantisation runs without those parts.
TORCHAO_IMPORT_LOGGERS = ("torchao", "torch.utils._pytree", "diffusers.quantizers")


def import_torchao_quietly() -> None:
    """Imports torchao's quantisation API and diffusers' torchao quantizer with `TORCHAO_IMPORT_LOGGERS` at ERROR
    level for the import only (a later import is a no-op, so their messages do not come back)."""
    loggers = [logging.getLogger(name) for name in TORCHAO_IMPORT_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        import torchao.quantization  # noqa: F401
        from diffusers import TorchAoConfig  # noqa: F401 - imports diffusers' torchao quantizer
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def torchao_available() -> bool:
    try:
        return importlib.util.find_spec("torchao") is not None
    except (ImportError, ValueError):
        return False


def runs_fp8_products(device) -> bool:
    """`models.fp8.runs_fp8_products`, imported when asked (the models package loads diffusers)."""
    from ..models.fp8 import runs_fp8_products as runs

    return runs(device)


def asked_quant_backend(args: GenerateOptions) -> str:
    """`--quant_backend` as given ("auto" when the options leave it out)."""
    return getattr(args, "quant_backend", "auto") or "auto"


def backend_problem(args: GenerateOptions, quant_files: bool) -> FieldProblem | None:
    """The `quant_backend` problem when `--quant_backend` cannot be honoured on any device (an unknown name, torchao with quanto's
    files, torchao not installed); None otherwise. `check_generate_args` reports it before anything runs."""
    backend = asked_quant_backend(args)
    if backend not in QUANT_BACKENDS:
        return FieldProblem("quant_backend", f"expected one of {', '.join(QUANT_BACKENDS)}", backend)
    if backend == "torchao" and quant_files:
        return FieldProblem("quant_backend", FILES_ARE_QUANTO, backend)
    if backend == "torchao" and not torchao_available():
        return FieldProblem("quant_backend", f"torchao is not installed: {TORCHAO_INSTALL_HINT}", backend)
    return None


def choose_quant_backend(args: GenerateOptions, device, quant_files: bool) -> str | None:
    """The backend `--quant` runs with on `device` ("quanto" or "torchao"; None without `--quant`), or a UserError
    naming the flags when the asked one cannot run here. `quant_files`: an original release's quantised files
    are loaded (`--quant_dir`, the quantised FusionX DiT), which are optimum-quanto checkpoints."""
    if not args.quant:
        return None
    problem = backend_problem(args, quant_files)
    if problem is not None:
        raise RequestError([problem])
    backend = asked_quant_backend(args)
    if quant_files:
        return "quanto"
    if backend == "auto":
        fp8_here = args.quant == "fp8" and torchao_available() and runs_fp8_products(device)
        backend = "torchao" if fp8_here else "quanto"
    if backend == "torchao" and args.quant == "fp8" and not runs_fp8_products(device):
        why = (
            f"with {{quant}} fp8: FP8 products need a CUDA GPU of compute capability 8.9 or more (Ada, Hopper), not "
            f"{device}; use {{quant}} int8 {{quant_backend}} torchao (int8 products, also on the CPU) or "
            "{quant_backend} quanto (FP8 weights, products in the compute dtype)"
        )
        raise RequestError([FieldProblem("quant_backend", why, "torchao")], usage=False)
    if backend == "quanto":
        from ..loaders.quantized import QUANT_INSTALL_HINT
        from .options import quanto_available

        if not quanto_available():
            why = f"on {device} runs with optimum-quanto, which is not installed: {QUANT_INSTALL_HINT}"
            raise RequestError([FieldProblem("quant", why, args.quant)], usage=False)
    return backend


def resolve_auto_quant(args: GenerateOptions, device) -> None:
    """`--quant auto` on `device`: `--quant fp8` (torchao) where FP8 products run with torchao installed and
    --quant_backend is auto or torchao; no quantisation elsewhere. Says which in one line. `--quant none` becomes no
    quantisation; other values stay."""
    if args.quant == NO_QUANT:
        args.quant = None
    if args.quant != AUTO_QUANT:
        return
    backend = asked_quant_backend(args)
    if backend not in ("auto", "torchao"):
        why_not = f"{{quant_backend}} {backend}"
    elif not runs_fp8_products(device):
        why_not = f"{device} has no FP8 products (a CUDA GPU of compute capability 8.9+ has)"
    elif not torchao_available():
        why_not = f"torchao is not installed ({TORCHAO_INSTALL_HINT})"
    else:
        why_not = None
    preset = f" (the default of {{preset}} {args.preset})" if getattr(args, "preset", None) else ""
    if why_not is None:
        args.quant, args.quant_backend = "fp8", "torchao"
        note_about("quant", f"fp8 (torchao) on {device}{preset}; {{quant}} none keeps the DiT in float", AUTO_QUANT)
    else:
        args.quant = None
        note_about("quant", f"no quantisation{preset}: {why_not}", AUTO_QUANT)


def check_quantization(args: GenerateOptions, device) -> str | None:
    """`choose_quant_backend` for the options as given (the quantised files found from `--quant_dir` and
    `--lora_dir`): what a front end calls before reading inputs or loading anything."""
    from .options import quant_dit_path, variant_of_options

    # MultiTalk's quantised FusionX DiT (--lora_dir) is read only where the weights are linked into the Wan folder
    quant_dit = quant_dit_path(args) if variant_of_options(args).weights_linked_into_wan else None
    return choose_quant_backend(args, device, bool(args.quant and (args.quant_dir or quant_dit)))


def quantize_on_the_fly(pipe, quant: str, backend: str, fused_loras: bool) -> None:
    """Quantises the loaded pipeline's float weights with `backend` (any LoRA is fused into them first)."""
    if backend == "torchao":
        from ..models.fp8 import DEFAULT_FLOAT_PARTS, enable_fp8

        dtype = str(pipe.transformer.dtype).removeprefix("torch.")
        if getattr(pipe.transformer, "peft_config", None):  # a quantised linear takes no adapter afterwards
            pipe.fuse_lora(components=["transformer"])
            pipe.unload_lora_weights()
        names = enable_fp8(pipe.transformer, TORCHAO_MODES[quant])
        kind = "FP8 (e4m3, row-wise scales)" if quant == "fp8" else "int8 (weights and activations)"
        float_parts = (
            ", the cross-attention's context k/v and its output projection's token mean"
            if DEFAULT_FLOAT_PARTS[TORCHAO_MODES[quant]]["float_token_mean"]
            else ""
        )
        fused = " (LoRAs fused first)" if fused_loras else ""
        why = (
            f"torchao: {len(names)} DiT block linears{fused} run in {kind}; the audio adapter, norms, "
            f"head{float_parts} and umT5 stay in {dtype}"
        )
        note_about("quant", why, quant)
        return
    from ..loaders.quantized import quantize_pipeline

    fused = " (LoRAs fused first)" if fused_loras else ""
    note_about("quant", f"optimum-quanto (no {{quant_dir}}): quantising the DiT{fused} and umT5 on the fly", quant)
    quantize_pipeline(pipe, quant)
