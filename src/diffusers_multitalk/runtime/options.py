"""The generation options (MultiTalk's flag names and defaults), shared by every front end, and their checks."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

from ..variants import DEFAULT_VARIANT, TASKS, VARIANTS, WEIGHTS_OPTIONS, Variant, pick_variant
from ..variants import SIZES as SIZES  # the --size choices, re-exported for the front ends
from .errors import UserError
from .quantization import AUTO_QUANT, NO_QUANT
from .spec import GenerateOptions


# Every generation option with its default (runtime/spec.py's GenerateOptions): the CLI's parser takes its defaults
# from here; the app and the HTTP API build their options with `generate_options`, so every front end starts from the
# same values.
GENERATE_DEFAULTS = dataclasses.asdict(GenerateOptions())


# The options a preset's sampling settings fill in, and the values that count as "not given".
_PRESET_OPTIONS = {
    "num_inference_steps": ("sample_steps", None),
    "guidance_scale": ("sample_text_guide_scale", 5.0),
    "audio_guidance_scale": ("sample_audio_guide_scale", 4.0),
    "shift": ("sample_shift", None),
}


def apply_preset_options(options: GenerateOptions) -> GenerateOptions:
    """`--preset NAME`: the preset's sampling settings (presets.py; "fast": 8 steps, text guidance 1, audio guidance
    2, shift 2) in place of the options left at their defaults, and its quantisation ("auto": `--quant auto`, FP8
    where it runs) when neither --quant nor --quant_dir is given; options the user set stay. `--quant none` is no
    quantisation, under a preset too."""
    quant_off = getattr(options, "quant", None) == NO_QUANT
    if quant_off:
        options.quant = None
    if not getattr(options, "preset", None):
        return options
    from ..presets import preset_call_kwargs, preset_setup

    try:
        values = preset_call_kwargs(options.preset)
    except ValueError as err:
        raise UserError(f"--preset {options.preset}: {err}") from err
    for argument, value in values.items():
        name, unset = _PRESET_OPTIONS[argument]
        if getattr(options, name) == unset:
            setattr(options, name, value)
    # not with several GPUs, where quantised weights were not tested (unsupported_flags refuses --quant there)
    if not quant_off and options.quant is None and not options.quant_dir and options.ulysses_size <= 1:
        options.quant = preset_setup(options.preset)["quant"]
    return options


def generate_options(source=None, **overrides) -> GenerateOptions:
    """The generation options: the defaults, updated with those `source` (a mapping or any object with option
    attributes, such as `multitalk serve`'s model options) shares, then with `overrides`. Unknown overrides are
    refused."""
    unknown = sorted(set(overrides) - set(GENERATE_DEFAULTS))
    if unknown:
        raise UserError(f"unknown generation option(s): {', '.join(unknown)}")
    return GenerateOptions.from_fields(source, **overrides)


# The default model's sampling steps (each model's: `Variant.sample_steps` in the variant registry).
DEFAULT_SAMPLE_STEPS = DEFAULT_VARIANT.sample_steps


def variant_of_options(options: GenerateOptions, input_data: dict | None = None) -> Variant:
    """The model the options (and the input) ask for (`variants.pick_variant`): its task, one of its sizes or its
    weights flags, else a cond_video input picks a model that dubs."""
    return pick_variant(
        getattr(options, "task", None),
        getattr(options, "size", None),
        tuple(option.name for option in WEIGHTS_OPTIONS if getattr(options, option.name, None)),
        bool(input_data and input_data.get("cond_video")),
    )


def motion_frames(options: GenerateOptions, input_data: dict | None = None) -> int:
    """`--motion_frame`, or the model's default when unset (`Variant.motion_frames`)."""
    if getattr(options, "motion_frame", None) is not None:
        return int(options.motion_frame)
    return variant_of_options(options, input_data).motion_frames


def unsupported_flags(args: GenerateOptions, environ: dict | None = None) -> list[tuple[str, str]]:
    """The flags of ``args`` this build cannot honour, as ``(flag, why)``; empty when everything is supported."""
    environ = os.environ if environ is None else environ
    refused = []
    if args.quant is not None:
        refused.extend(_quant_refusals(args))
    if args.ring_size > 1:
        refused.append(
            (
                f"--ring_size {args.ring_size}",
                "ring attention needs an attention backend that returns the log-sum-exp; in diffusers 0.42 those are "
                "CUDA-only (_native_cudnn, _native_flash, flash-attn) and none was run here; use --ulysses_size for "
                "several GPUs (docs/multi_gpu.md)",
            )
        )
    for flag in ("--dit_fsdp", "--t5_fsdp"):
        if getattr(args, flag[2:]) and args.ulysses_size == 1:
            refused.append(
                (
                    flag,
                    "shards the weights over the processes of --ulysses_size N (torchrun --nproc_per_node N ... "
                    "--ulysses_size N); with one process there is nothing to shard",
                )
            )
    if args.t5_fsdp and args.t5_cpu:
        refused.append(
            ("--t5_fsdp with --t5_cpu", "umT5 is either sharded over the GPUs or kept whole on the CPU; pick one")
        )
    world_size = int(environ.get("WORLD_SIZE", "1") or 1)
    if args.ulysses_size > 1 and world_size != args.ulysses_size:
        refused.append(
            (
                f"--ulysses_size {args.ulysses_size}",
                f"needs {args.ulysses_size} processes, one per GPU: "
                f"torchrun --nproc_per_node {args.ulysses_size} -m diffusers_multitalk generate ... (WORLD_SIZE is {world_size})",
            )
        )
    elif world_size > 1 and args.ulysses_size == 1:
        refused.append((f"torchrun (WORLD_SIZE={world_size})", f"pass --ulysses_size {world_size} to split the work"))
    if args.ulysses_size > 1 and args.num_persistent_param_in_dit is not None:
        refused.append(
            ("--num_persistent_param_in_dit with --ulysses_size", "block streaming with several GPUs was not tested")
        )
    if args.ulysses_size > 1 and args.quant not in (None, NO_QUANT):
        refused.append(("--quant with --ulysses_size", "quantised weights with several GPUs were not tested"))
    if args.ulysses_size > 1 and args.offload_model:
        refused.append(
            ("--offload_model True with --ulysses_size", "model offloading with several GPUs was not tested")
        )
    return refused


def _quant_refusals(args: GenerateOptions) -> list[tuple[str, str]]:
    """Why ``--quant`` cannot be honoured here (empty when it can)."""
    from ..loaders.quantized import QUANT_CHOICES, QUANT_INSTALL_HINT
    from .quantization import asked_quant_backend, backend_problem, torchao_available

    flag = f"--quant {args.quant}"
    backend = asked_quant_backend(args)
    if args.quant in (AUTO_QUANT, NO_QUANT):  # settled on the device (quantization.resolve_auto_quant)
        return []
    if args.quant not in QUANT_CHOICES:
        return [(flag, f"MultiTalk's quantisations are {' and '.join(QUANT_CHOICES)} (or {AUTO_QUANT}, {NO_QUANT})")]
    problem = backend_problem(args, bool(args.quant_dir or quant_dit_path(args)))
    if problem is not None:
        return [problem]
    # quanto is needed unless torchao may do the work (auto picks torchao for fp8 on an FP8 GPU; see quantization.py)
    may_use_torchao = backend == "torchao" or (backend == "auto" and args.quant == "fp8" and torchao_available())
    if not may_use_torchao and not quanto_available():
        return [(flag, f"optimum-quanto is not installed: {QUANT_INSTALL_HINT}")]
    if (args.tiny or args.model) and (args.quant_dir or quant_dit_path(args)):
        given = f"--quant_dir {args.quant_dir}" if args.quant_dir else f"--lora_dir {args.lora_dir[0]}"
        return [
            (
                f"{flag} {given}",
                "MultiTalk's quantised files are in the original layout and load only with --ckpt_dir; with "
                f"{'--tiny' if args.tiny else '--model'}, give float weights (and LoRAs) to quantise on the fly",
            )
        ]
    return []


def quanto_available() -> bool:
    """Whether optimum-quanto (for --quant) is installed."""
    try:
        return importlib.util.find_spec("optimum.quanto") is not None
    except (ImportError, ValueError):
        return False


def quant_dit_path(args: GenerateOptions) -> str | None:
    """With --quant, the first --lora_dir file when it is a quantised DiT (MultiTalk's
    ``quant_model_int8_FusionX.safetensors``): MultiTalk loads it as the whole DiT, not as a LoRA."""
    if getattr(args, "quant", None) in (None, AUTO_QUANT, NO_QUANT) or not args.lora_dir:
        return None
    from ..loaders.quantized import is_quantized_checkpoint

    return args.lora_dir[0] if is_quantized_checkpoint(args.lora_dir[0]) else None


def check_generate_args(args: GenerateOptions) -> None:
    """Raises UserError listing every unsupported flag, then every invalid value (before anything is loaded)."""
    refused = unsupported_flags(args)
    if refused:
        lines = "\n".join(f"  {flag}: {why}" for flag, why in refused)
        raise UserError(f"this build cannot honour {'these flags' if len(refused) > 1 else 'this flag'}:\n{lines}")
    problems = []
    if args.frame_num < 5 or (args.frame_num - 1) % 4:
        problems.append(f"--frame_num {args.frame_num}: must be 4n+1 and at least 5 (e.g. 81)")
    motion = motion_frames(args)
    if args.mode != "clip" and (motion < 1 or (motion - 1) % 4 or motion >= args.frame_num):
        problems.append(
            f"--motion_frame {motion}: must be 4n+1 and smaller than --frame_num ({args.frame_num})"
            + ("" if args.mode else " when the audio outlasts one chunk; or give --mode clip")
        )
    problems += _variant_problems(args)
    if args.max_frame_num is not None and args.max_frame_num < 5:
        problems.append(f"--max_frame_num {args.max_frame_num}: must be at least 5 frames (0.2 s)")
    for flag in ("sample_text_guide_scale", "sample_audio_guide_scale"):
        if getattr(args, flag) < 0:
            problems.append(f"--{flag} {getattr(args, flag)}: must be 0 or more (1 turns that guidance off)")
    if args.sample_steps is not None and args.sample_steps < 1:
        problems.append(f"--sample_steps {args.sample_steps}: must be at least 1")
    if args.num_persistent_param_in_dit is not None and args.num_persistent_param_in_dit < 0:
        problems.append(
            f"--num_persistent_param_in_dit {args.num_persistent_param_in_dit}: must be 0 or more (0: lowest VRAM)"
        )
    if not 0.0 <= args.color_correction_strength <= 1.0:
        problems.append(f"--color_correction_strength {args.color_correction_strength}: must be in [0, 1]")
    if args.use_teacache and args.teacache_thresh <= 0:
        problems.append(f"--teacache_thresh {args.teacache_thresh}: must be positive (MultiTalk advises 0.2 to 0.5)")
    if (args.height is None) != (args.width is None):
        problems.append("--height/--width: give both or neither")
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and (value <= 0 or value % 16):
            problems.append(f"--{name} {value}: must be a positive multiple of 16")
    if args.lora_dir:
        if len(args.lora_scale) not in (1, len(args.lora_dir)):
            problems.append(
                f"--lora_scale: {len(args.lora_scale)} scales for {len(args.lora_dir)} LoRAs (give one, or one per LoRA)"
            )
        for path in args.lora_dir:
            if not Path(path).exists() and not _looks_like_repo_id(path):
                problems.append(f"--lora_dir {path}: does not exist")
        problems += _quant_lora_problems(args)
    if args.quant_dir and args.quant in (None, NO_QUANT):
        problems.append(f"--quant_dir {args.quant_dir}: only used with --quant int8 (or fp8)")
    # the model source
    if args.model and not Path(args.model).is_dir() and not _looks_like_repo_id(args.model):
        problems.append(f"--model {args.model}: neither a folder here nor a Hub repo id (owner/name)")
    if args.tiny or args.model:
        given = [f"--{n}" for n in ("ckpt_dir", "wav2vec_dir", "multitalk_dir") if getattr(args, n)]
        if given:
            problems.append(
                f"{', '.join(given)}: not used with {'--tiny' if args.tiny else '--model'}; give one model source"
            )
    else:
        if not args.ckpt_dir:
            problems.append(
                "no model: give --ckpt_dir and --wav2vec_dir (the original checkpoints), --model (a diffusers folder) or --tiny"
            )
        elif not args.wav2vec_dir:
            problems.append("--wav2vec_dir: required with --ckpt_dir (the chinese-wav2vec2-base folder)")
        variant = variant_of_options(args)
        # a model whose weights are not linked into the Wan folder needs its own weights flags (or quantised files)
        weights = variant.weights_given(args) or (args.quant and args.quant_dir)
        if args.ckpt_dir and not variant.weights_linked_into_wan and not weights:
            problems.append(
                f"{variant.weights[0].flag}: required for {variant.name} with --ckpt_dir ({variant.weights_hint})"
            )
    if problems:
        raise UserError("invalid arguments:\n" + "\n".join(f"  {p}" for p in problems))


def _variant_problems(args: GenerateOptions) -> list[str]:
    """The model asked for: a known --task, one model's weights flags, --scene_seg only for a model that dubs."""
    problems = []
    if args.task not in TASKS:
        problems.append(f"--task {args.task}: expected one of {', '.join(TASKS)}")
    given = {variant: variant.weights_given(args) for variant in VARIANTS}
    given = {variant: weights for variant, weights in given.items() if weights}
    if len(given) > 1:
        flags = ", ".join(f"--{name}" for weights in given.values() for name in weights)
        names = " or ".join(f"{variant.name}'s" for variant in given)
        problems.append(f"{flags}: give {names} audio weights, not both")
    if args.scene_seg and not variant_of_options(args).dubs_video:
        dubbing = ", ".join(f"{v.name} ({v.weights[0].flag}, a cond_video input)" for v in VARIANTS if v.dubs_video)
        problems.append(f"--scene_seg: splits a cond_video into shots; it is for a model that dubs: {dubbing}")
    return problems


def _quant_lora_problems(args: GenerateOptions) -> list[str]:
    """--lora_dir with (or without) --quant: MultiTalk's quantised FusionX DiT comes through --lora_dir with --quant."""
    from ..loaders.quantized import is_quantized_checkpoint

    quantised = [path for path in args.lora_dir if is_quantized_checkpoint(path)]
    if args.quant in (None, AUTO_QUANT, NO_QUANT):
        return [
            f"--lora_dir {path}: a quantised DiT (MultiTalk's quant_model_*), not a LoRA: add --quant int8 (and --quant_dir)"
            for path in quantised
        ]
    problems = []
    if quantised and quantised[0] != args.lora_dir[0] or len(quantised) > 1:
        problems.append("--lora_dir: with --quant the quantised DiT must be the first and only --lora_dir file")
    elif quantised and len(args.lora_dir) > 1:
        problems.append(
            f"--lora_dir {' '.join(args.lora_dir[1:])}: a LoRA cannot be applied to the quantised DiT "
            f"{args.lora_dir[0]}; MultiTalk ships FusionX already merged into it"
        )
    elif not quantised and args.quant_dir:
        problems.append(
            f"--lora_dir {args.lora_dir[0]}: with --quant and --quant_dir, --lora_dir is MultiTalk's quantised FusionX DiT "
            "(quant_models/quant_model_int8_FusionX.safetensors); a float LoRA cannot be applied to the quantised "
            "files: drop --quant_dir to fuse it into the float DiT and quantise that on the fly"
        )
    return problems


def _looks_like_repo_id(value: str) -> bool:
    """`owner/name` without a weight-file extension (LoRAs may come from the Hub)."""
    parts = value.split("/")
    weight_file = value.lower().endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt"))
    return len(parts) == 2 and all(parts) and not weight_file and not value.startswith((".", "/", "~"))


def lora_specs(args: GenerateOptions) -> list[tuple[str, float]]:
    """``[(lora path, scale), ...]``: one scale for all LoRAs, or one each."""
    if not args.lora_dir:
        return []
    scales = list(args.lora_scale)
    if len(scales) == 1:
        scales = scales * len(args.lora_dir)
    if len(scales) != len(args.lora_dir):
        raise UserError(
            f"--lora_scale: {len(scales)} scales for {len(args.lora_dir)} LoRAs (give one, or one per LoRA)"
        )
    return list(zip(args.lora_dir, (float(s) for s in scales)))
