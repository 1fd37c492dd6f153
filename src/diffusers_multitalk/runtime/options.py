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
from .spec import FieldProblem, GenerateOptions, GenerationSettings, RequestError


# Every generation option with its default (runtime/spec.py's GenerateOptions): the CLI's parser takes its defaults
# from here; the app and the HTTP API build their options with `generate_options`, so every front end starts from the
# same values.
GENERATE_DEFAULTS = dataclasses.asdict(GenerateOptions())


# The options a preset's sampling settings fill in, and the values that count as "not given".
_PRESET_OPTIONS = {
    "num_inference_steps": ("sample_steps", None),
    "guidance_scale": ("sample_text_guide_scale", None),
    "audio_guidance_scale": ("sample_audio_guide_scale", None),
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
        raise RequestError([FieldProblem("preset", str(err), options.preset)]) from err
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


def with_model_defaults(options: GenerateOptions, input_data: dict | None = None) -> GenerateOptions:
    """Fills the settings left unset (None) with the model's own (the variant registry): its first size, frames per
    chunk and guidance scales (MultiTalk and InfiniteTalk: 81 frames, text 5, audio 4; SoulX-FlashTalk: 33 frames,
    no guidance, flashtalk-448), so that each model runs with its reference's defaults unless told otherwise. Returns
    `options`, changed in place. Every front end calls it once its options (and preset) are settled."""
    variant = variant_of_options(options, input_data)
    defaults = {
        "size": variant.sizes[0].name,
        "frame_num": variant.frame_num,
        "sample_text_guide_scale": variant.guidance_scale,
        "sample_audio_guide_scale": variant.audio_guidance_scale,
    }
    for name, value in defaults.items():
        if getattr(options, name, None) is None:
            setattr(options, name, value)
    return options


def motion_frames(options: GenerateOptions, input_data: dict | None = None) -> int:
    """`--motion_frame`, or the model's default when unset (`Variant.motion_frames`)."""
    if getattr(options, "motion_frame", None) is not None:
        return int(options.motion_frame)
    return variant_of_options(options, input_data).motion_frames


def unsupported_flags(args: GenerateOptions, environ: dict | None = None) -> list[FieldProblem]:
    """The options of ``args`` this build cannot honour, one `FieldProblem` each (the field, the value given, why);
    empty when everything is supported. Front ends say the fields in their words (`RequestError.render`)."""
    environ = os.environ if environ is None else environ
    refused = []
    if args.quant is not None:
        refused.extend(_quant_refusals(args))
    if args.ring_size > 1:
        refused.append(
            FieldProblem(
                "ring_size",
                "ring attention needs an attention backend that returns the log-sum-exp; in diffusers 0.42 those are "
                "CUDA-only (_native_cudnn, _native_flash, flash-attn) and none was run here; use {ulysses_size} for "
                "several GPUs (docs/multi_gpu.md)",
                args.ring_size,
            )
        )
    for name in ("dit_fsdp", "t5_fsdp"):
        if getattr(args, name) and args.ulysses_size == 1:
            refused.append(
                FieldProblem(
                    name,
                    "shards the weights over the processes of {ulysses_size} N (torchrun --nproc_per_node N ... "
                    "{ulysses_size} N); with one process there is nothing to shard",
                )
            )
    if args.t5_fsdp and args.t5_cpu:
        refused.append(
            FieldProblem(
                "t5_fsdp", "with {t5_cpu}: umT5 is either sharded over the GPUs or kept whole on the CPU; pick one"
            )
        )
    world_size = int(environ.get("WORLD_SIZE", "1") or 1)
    if args.ulysses_size > 1 and world_size != args.ulysses_size:
        refused.append(
            FieldProblem(
                "ulysses_size",
                f"needs {args.ulysses_size} processes, one per GPU: torchrun --nproc_per_node {args.ulysses_size} -m "
                f"diffusers_multitalk generate ... (WORLD_SIZE is {world_size})",
                args.ulysses_size,
            )
        )
    elif world_size > 1 and args.ulysses_size == 1:
        refused.append(
            FieldProblem(
                "ulysses_size",
                f"torchrun started {world_size} processes (WORLD_SIZE); give {{ulysses_size}} {world_size} to split "
                "the work",
                1,
            )
        )
    several = "with {ulysses_size}: "
    if args.ulysses_size > 1 and args.num_persistent_param_in_dit is not None:
        why = several + "block streaming with several GPUs was not tested"
        refused.append(FieldProblem("num_persistent_param_in_dit", why, args.num_persistent_param_in_dit))
    if args.ulysses_size > 1 and args.quant not in (None, NO_QUANT):
        why = several + "quantised weights with several GPUs were not tested"
        refused.append(FieldProblem("quant", why, args.quant))
    if args.ulysses_size > 1 and args.offload_model:
        why = several + "model offloading with several GPUs was not tested"
        refused.append(FieldProblem("offload_model", why, True))
    return refused


def _quant_refusals(args: GenerateOptions) -> list[FieldProblem]:
    """Why ``quant`` cannot be honoured here (empty when it can)."""
    from ..loaders.quantized import QUANT_CHOICES, QUANT_INSTALL_HINT
    from .quantization import asked_quant_backend, backend_problem, torchao_available

    backend = asked_quant_backend(args)
    if args.quant in (AUTO_QUANT, NO_QUANT):  # settled on the device (quantization.resolve_auto_quant)
        return []
    if args.quant not in QUANT_CHOICES:
        why = f"MultiTalk's quantisations are {' and '.join(QUANT_CHOICES)} (or {AUTO_QUANT}, {NO_QUANT})"
        return [FieldProblem("quant", why, args.quant)]
    problem = backend_problem(args, bool(args.quant_dir or quant_dit_path(args)))
    if problem is not None:
        return [problem]
    # quanto is needed unless torchao may do the work (auto picks torchao for fp8 on an FP8 GPU; see quantization.py)
    may_use_torchao = backend == "torchao" or (backend == "auto" and args.quant == "fp8" and torchao_available())
    if not may_use_torchao and not quanto_available():
        return [FieldProblem("quant", f"optimum-quanto is not installed: {QUANT_INSTALL_HINT}", args.quant)]
    if (args.tiny or args.model) and (args.quant_dir or quant_dit_path(args)):
        given = "{quant_dir} " + args.quant_dir if args.quant_dir else "{lora_dir} " + args.lora_dir[0]
        source = "{tiny}" if args.tiny else "{model}"
        return [
            FieldProblem(
                "quant",
                f"with {given}: MultiTalk's quantised files are in the original layout and load only with "
                f"{{ckpt_dir}}; with {source}, give float weights (and LoRAs) to quantise on the fly",
                args.quant,
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
    """Raises a `RequestError` listing every option this build cannot honour, else every invalid value (before
    anything is loaded); each problem names its field, which a front end says in its words."""
    refused = unsupported_flags(args)
    if refused:
        raise RequestError(refused, title="this build cannot honour")
    problems = settings_problems(args) + _variant_problems(args) + model_problems(args)
    if problems:
        raise RequestError(problems)


def settings_problems(args) -> list[FieldProblem]:
    """The generation settings' problems (size, mode, frames, sampling, guidance, output size): the one check every
    front end runs on a request before any model, whatever model serves it. The limits are the settings' own
    (runtime/spec.py's `GenerationSettings` metadata, which the HTTP API's schema states too)."""
    with_model_defaults(args)
    problems = []
    for setting in dataclasses.fields(GenerationSettings):
        name, value = setting.name, getattr(args, setting.name)
        if name == "teacache_thresh" and not args.use_teacache:
            continue  # only read with TeaCache on
        why = limit_problem(value, setting.metadata)
        if why is not None:
            problems.append(FieldProblem(name, why, value))
    if args.frame_num < 5 or (args.frame_num - 1) % 4:  # frames come in 4n+1 (the VAE's 4x time compression)
        problems = [p for p in problems if p.field != "frame_num"]
        problems.append(FieldProblem("frame_num", "must be 4n+1 and at least 5 (e.g. 81)", args.frame_num))
    motion = motion_frames(args)
    if args.mode != "clip" and (motion < 1 or (motion - 1) % 4 or motion >= args.frame_num):
        problems = [p for p in problems if p.field != "motion_frame"]
        problems.append(
            FieldProblem(
                "motion_frame",
                f"must be 4n+1 and smaller than {{frame_num}} ({args.frame_num})"
                + ("" if args.mode else " when the audio outlasts one chunk; or set {mode} to clip"),
                motion,
            )
        )
    if (args.height is None) != (args.width is None):
        given, missing = ("height", "width") if args.width is None else ("width", "height")
        problems.append(FieldProblem(given, f"give {{{missing}}} too, or neither (the size's bucket)"))
    return problems


def limit_problem(value, limits) -> str | None:
    """Why `value` breaks a setting's `limits` (`choices`, `ge`, `gt`, `le`, `multiple_of`, said with `hint`);
    None when it keeps them or is unset."""
    if value is None:
        return None
    choices = limits.get("choices")
    if choices is not None:
        return None if value in choices else f"expected one of {', '.join(choices)}"
    ge, gt, le, multiple = (limits.get(k) for k in ("ge", "gt", "le", "multiple_of"))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    broken = (
        (ge is not None and value < ge)
        or (gt is not None and value <= gt)
        or (le is not None and value > le)
        or (multiple is not None and value % multiple)
    )
    if not broken:
        return None
    if multiple is not None:
        why = f"must be a positive multiple of {multiple}"
    elif ge is not None and le is not None:
        why = f"must be in [{ge:g}, {le:g}]"
    elif gt is not None:
        why = "must be positive" if gt == 0 else f"must be more than {gt:g}"
    else:
        why = "must be 0 or more" if ge == 0 else f"must be at least {ge:g}"
    return why + (f" ({limits['hint']})" if limits.get("hint") else "")


def model_problems(args: GenerateOptions) -> list[FieldProblem]:
    """The model spec's problems: LoRAs, quantised files, the model source and its weights."""
    problems = []
    if args.num_persistent_param_in_dit is not None and args.num_persistent_param_in_dit < 0:
        why = "must be 0 or more (0: lowest VRAM)"
        problems.append(FieldProblem("num_persistent_param_in_dit", why, args.num_persistent_param_in_dit))
    if args.lora_dir:
        if len(args.lora_scale) not in (1, len(args.lora_dir)):
            why = f"{len(args.lora_scale)} scales for {len(args.lora_dir)} LoRAs (give one, or one per LoRA)"
            problems.append(FieldProblem("lora_scale", why))
        for path in args.lora_dir:
            if not Path(path).exists() and not _looks_like_repo_id(path):
                problems.append(FieldProblem("lora_dir", "does not exist", path))
        problems += _quant_lora_problems(args)
    if args.quant_dir and args.quant in (None, NO_QUANT):
        problems.append(FieldProblem("quant_dir", "only used with {quant} int8 (or fp8)", args.quant_dir))
    if args.model and not Path(args.model).is_dir() and not _looks_like_repo_id(args.model):
        problems.append(FieldProblem("model", "neither a folder here nor a Hub repo id (owner/name)", args.model))
    if args.tiny or args.model:
        source = "{tiny}" if args.tiny else "{model}"
        for name in ("ckpt_dir", "wav2vec_dir", "multitalk_dir"):
            if getattr(args, name):
                problems.append(FieldProblem(name, f"not used with {source}; give one model source"))
        return problems
    if not args.ckpt_dir:
        why = (
            "no model: give {ckpt_dir} and {wav2vec_dir} (the original checkpoints), {model} (a diffusers folder) "
            "or {tiny}"
        )
        problems.append(FieldProblem("ckpt_dir", why))
    elif not args.wav2vec_dir:
        problems.append(FieldProblem("wav2vec_dir", "required with {ckpt_dir} (the chinese-wav2vec2-base folder)"))
    variant = variant_of_options(args)
    # a model whose weights are not linked into the Wan folder needs its own weights flags (or quantised files)
    weights = variant.weights_given(args) or (args.quant and args.quant_dir)
    if args.ckpt_dir and not variant.weights_linked_into_wan and not weights:
        why = f"required for {variant.name} with {{ckpt_dir}} ({variant.weights_hint})"
        problems.append(FieldProblem(variant.weights[0].name, why))
    return problems


def _variant_problems(args: GenerateOptions) -> list[FieldProblem]:
    """The model asked for: a known task, one model's weights, scene_seg only for a model that dubs."""
    problems = []
    if args.task not in TASKS:
        problems.append(FieldProblem("task", f"expected one of {', '.join(TASKS)}", args.task))
    given = {variant: variant.weights_given(args) for variant in VARIANTS}
    given = {variant: weights for variant, weights in given.items() if weights}
    if len(given) > 1:
        names = [name for weights in given.values() for name in weights]
        others = ", ".join(f"{{{name}}}" for name in names[1:])
        owners = " or ".join(f"{variant.name}'s" for variant in given)
        problems.append(FieldProblem(names[0], f"with {others}: give {owners} audio weights, not both"))
    if args.scene_seg and not variant_of_options(args).dubs_video:
        dubbing = ", ".join(f"{v.name} ({{{v.weights[0].name}}}, a cond_video input)" for v in VARIANTS if v.dubs_video)
        problems.append(
            FieldProblem("scene_seg", f"splits a cond_video into shots; it is for a model that dubs: {dubbing}")
        )
    return problems


def _quant_lora_problems(args: GenerateOptions) -> list[FieldProblem]:
    """lora_dir with (or without) quant: MultiTalk's quantised FusionX DiT comes through lora_dir with quant."""
    from ..loaders.quantized import is_quantized_checkpoint

    quantised = [path for path in args.lora_dir if is_quantized_checkpoint(path)]
    if args.quant in (None, AUTO_QUANT, NO_QUANT):
        why = "a quantised DiT (MultiTalk's quant_model_*), not a LoRA: add {quant} int8 (and {quant_dir})"
        return [FieldProblem("lora_dir", why, path) for path in quantised]
    problems = []
    if quantised and quantised[0] != args.lora_dir[0] or len(quantised) > 1:
        problems.append(FieldProblem("lora_dir", "with {quant} the quantised DiT must be the first and only file"))
    elif quantised and len(args.lora_dir) > 1:
        why = (
            f"a LoRA cannot be applied to the quantised DiT {args.lora_dir[0]}; MultiTalk ships FusionX already "
            "merged into it"
        )
        problems.append(FieldProblem("lora_dir", why, args.lora_dir[1:]))
    elif not quantised and args.quant_dir:
        why = (
            "with {quant} and {quant_dir}, {lora_dir} is MultiTalk's quantised FusionX DiT "
            "(quant_models/quant_model_int8_FusionX.safetensors); a float LoRA cannot be applied to the quantised "
            "files: drop {quant_dir} to fuse it into the float DiT and quantise that on the fly"
        )
        problems.append(FieldProblem("lora_dir", why, args.lora_dir[0]))
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
        why = f"{len(scales)} scales for {len(args.lora_dir)} LoRAs (give one, or one per LoRA)"
        raise RequestError([FieldProblem("lora_scale", why)])
    return list(zip(args.lora_dir, (float(s) for s in scales)))
