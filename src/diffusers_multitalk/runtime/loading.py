"""A model spec (official folders, a converted repo, the tiny model, with its options) -> a loaded pipeline."""

from __future__ import annotations

import os
from pathlib import Path

from ..loaders.original_folders import DIT_INDEX as WAN_INDEX
from ..loaders.original_folders import MULTITALK_FILE
from ..variants import get_size
from .distributed import is_main_process
from .errors import PROG, UserError, note
from .folders import inspect_wan_dir, inspect_wav2vec_dir
from .hub import hub_error, is_hub_connection_error
from .kernels import apply_self_attention_kernel
from .options import lora_specs, quant_dit_path, variant_of_options, with_model_defaults
from .quantization import choose_quant_backend, quantize_on_the_fly, resolve_auto_quant
from .spec import FieldProblem, GenerateOptions, RequestError, note_about


_DTYPES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "float32": "float32",
    "fp32": "float32",
}


def resolve_device(name: str | None):
    import torch

    if name is None:
        if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise RequestError([FieldProblem("device", str(err), name)]) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        why = f"CUDA is not available here (torch {torch.__version__}); use {{device}} cpu"
        raise RequestError([FieldProblem("device", why, name)], usage=False)
    return device


def resolve_dtype(name: str, device, tiny: bool = False):
    import torch

    if name == "auto":
        return torch.float32 if tiny or device.type == "cpu" else torch.bfloat16
    return getattr(torch, _DTYPES[name])


def pipeline_class(args: GenerateOptions):
    """The pipeline class of the model the options ask for (its task, weights or sizes: the variant registry)."""
    return variant_of_options(args).pipeline_class


def load_from_pretrained(model: str, torch_dtype=None, cls=None):
    """A converted diffusers folder or Hub repo id -> the pipeline."""
    if cls is None:
        from ..pipelines.pipeline_wan_multitalk import WanMultiTalkPipeline as cls
    return cls.from_pretrained(model, torch_dtype=torch_dtype)


def _load_own_weights(variant, args: GenerateOptions, dtype, quant: str | None):
    """A model whose weights are not linked into the Wan folder: the Wan folder (--ckpt_dir) and its own weights
    flags (`Variant.weights`; or --quant_dir, its quantised files), checked by the registry's `check_folders`;
    `quant`: what `from_original` quantises with optimum-quanto (None when torchao quantises afterwards)."""
    weights = variant.weights_given(args)
    quant_path = args.quant_dir if quant else None
    problems = variant.check_folders(args.ckpt_dir, args.wav2vec_dir, weights, quant, quant_path)
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise UserError(f"the {variant.name} weights are incomplete:\n{lines}")
    specs = lora_specs(args)
    if len(specs) > 1:
        raise RequestError([FieldProblem("lora_dir", f"{variant.name} takes one LoRA here (fuse the others first)")])
    return variant.pipeline_class.from_original(
        args.ckpt_dir,
        wav2vec_dir=args.wav2vec_dir,
        dtype=dtype,
        lora_path=specs[0][0] if specs else None,
        lora_scale=specs[0][1] if specs else 1.0,
        quant=quant,
        quant_path=quant_path,
        **variant.from_original_kwargs(weights),
    )


def _wan_dir_problems(ckpt_dir: Path, need_linked_multitalk: bool) -> list[str]:
    return [
        f"{label}: {detail}" if detail else label
        for label, ok, detail in inspect_wan_dir(ckpt_dir, need_linked_multitalk)
        if not ok
    ]


def load_pipeline(args: GenerateOptions, device, dtype):
    """The pipeline from --tiny, --model or --ckpt_dir/--wav2vec_dir, with LoRAs, quantisation, attention backend
    and placement."""
    resolve_auto_quant(args, device)  # `--quant auto` / `none` (the command line has settled them already)
    with_model_defaults(args)
    variant = variant_of_options(args)
    # MultiTalk's quantised FusionX DiT comes through --lora_dir: only where the weights are linked into the Wan folder
    own_weights = not variant.weights_linked_into_wan
    quant_dit = None if own_weights else quant_dit_path(args)
    quant_files = bool(args.quant and (args.quant_dir or quant_dit))
    # which library quantises (checked here, before any model loads: FP8 products need a recent GPU)
    quant_backend = choose_quant_backend(args, device, quant_files)
    if args.tiny:
        from ..tiny import make_tiny_pipeline

        pipe = make_tiny_pipeline(0, pipeline_class=pipeline_class(args))
        if args.dtype != "auto":
            pipe.to(dtype=dtype)
    elif args.model:
        try:
            pipe = load_from_pretrained(args.model, torch_dtype=dtype, cls=pipeline_class(args))
        except Exception as err:  # noqa: BLE001 - the Hub's connection/access errors get a clear message
            if isinstance(err, OSError) and not is_hub_connection_error(err):
                # diffusers wraps the Hub's error: "Cannot load model ...: the model is not fully cached locally ..."
                why = str(err).splitlines()[0]
                raise RequestError([FieldProblem("model", why, args.model)], usage=False) from err
            clear = hub_error(err, args.model)
            if clear is None:
                raise
            raise clear from err
    elif own_weights:
        quanto = args.quant if quant_backend == "quanto" else None
        pipe = _load_own_weights(variant, args, dtype, quanto)
        quant_files = bool(quanto)  # LoRA and quanto's quantisation are applied by from_original
    else:
        from ..pipelines.pipeline_wan_multitalk import WanMultiTalkPipeline

        ckpt_dir = Path(args.ckpt_dir)
        if not ckpt_dir.is_dir():
            why = f"no such folder (`{PROG} download --target weights` fetches it)"
            raise RequestError([FieldProblem("ckpt_dir", why, ckpt_dir)], usage=False)
        if quant_files:
            from ..loaders.quantized import quant_folder_problems

            # The quantised DiT holds every weight: no shards or multitalk.safetensors needed, its files are.
            problems = quant_folder_problems(
                _wan_dir_problems(ckpt_dir, need_linked_multitalk=False),
                ckpt_dir,
                args.quant,
                args.quant_dir,
                quant_dit,
            )
        else:
            problems = _wan_dir_problems(ckpt_dir, need_linked_multitalk=args.multitalk_dir is None)
        if problems:
            lines = "\n".join(f"  {p}" for p in problems)
            why = (
                f"is incomplete:\n{lines}\n`{PROG} download --target <folder>` fetches and links everything; or link "
                f"MeiGen-MultiTalk's {MULTITALK_FILE} and {WAN_INDEX} into it as MultiTalk's README does, or give "
                "{multitalk_dir}."
            )
            raise RequestError([FieldProblem("ckpt_dir", why, ckpt_dir)], usage=False)
        wav2vec_problems = [
            f"{label}: {detail}" if detail else label
            for label, ok, detail in inspect_wav2vec_dir(Path(args.wav2vec_dir))
            if not ok
        ]
        if wav2vec_problems:
            why = "is incomplete:\n" + "\n".join(f"  {p}" for p in wav2vec_problems)
            raise RequestError([FieldProblem("wav2vec_dir", why, args.wav2vec_dir)], usage=False)
        quant_kwargs = {}
        if quant_files:
            quant_kwargs = dict(quant=args.quant, quant_dir=args.quant_dir, quant_dit_path=quant_dit)
            note_about("quant", f"the quantised DiT {quant_dit or 'from ' + str(args.quant_dir)}", args.quant)
        pipe = WanMultiTalkPipeline.from_original(
            ckpt_dir, args.multitalk_dir, args.wav2vec_dir, torch_dtype=dtype, **quant_kwargs
        )

    specs = [] if quant_dit or (own_weights and not (args.tiny or args.model)) else lora_specs(args)
    if specs:
        names = []
        for index, (path, _) in enumerate(specs):
            name = f"lora_{index}"
            pipe.load_lora_weights(path, adapter_name=name)
            names.append(name)
        pipe.set_adapters(names, [scale for _, scale in specs])
    if args.quant and not quant_files:
        quantize_on_the_fly(pipe, args.quant, quant_backend, fused_loras=bool(specs))

    if args.use_teacache:
        # the size's fitted coefficients, from the variant registry (the transformer knows no model)
        size = get_size(args.size)
        pipe.transformer.enable_teacache(
            threshold=args.teacache_thresh, resolution=size.buckets, coefficients=size.teacache_coefficients
        )

    if args.attention_backend:
        try:
            pipe.transformer.set_attention_backend(args.attention_backend)
        except (ValueError, RuntimeError) as err:
            raise RequestError([FieldProblem("attention_backend", str(err), args.attention_backend)]) from err

    offload = args.offload_model
    if offload is None:
        offload = device.type == "cuda" and args.ulysses_size == 1  # as the reference: offload on one GPU only
    low_vram = args.num_persistent_param_in_dit
    if low_vram is not None and device.type == "cpu":
        note_about("num_persistent_param_in_dit", "has no effect on the CPU (everything already lives there)")
        low_vram = None
    if offload and device.type == "cpu":
        note_about("offload_model", "has no effect on the CPU (everything already lives there)", True)
        offload = False
    if low_vram is not None:
        # The DiT blocks that fit in N parameters stay on the GPU, the others stream in block by block (diffusers'
        # group offloading). --offload_model (on by default) group-offloads umT5, CLIP, the VAE and wav2vec2 as well,
        # False keeps them on the GPU; --t5_cpu keeps umT5 on the CPU. See docs/low_vram.md.
        from ..pipelines.low_vram import enable_low_vram

        plan = enable_low_vram(pipe, device, low_vram, offload_components=offload, text_encoder_on_cpu=args.t5_cpu)
        note(plan.summary())
    elif offload:
        if args.t5_cpu:
            # keep umT5 out of the offload chain, on the CPU; the pipeline feeds it on its own device
            pipe.model_cpu_offload_seq = "->".join(
                m for m in pipe.model_cpu_offload_seq.split("->") if m != "text_encoder"
            )
            from .._diffusers_compat import exclude_from_cpu_offload

            exclude_from_cpu_offload(pipe, "text_encoder")
        pipe.enable_model_cpu_offload(device=device)
        if args.t5_cpu:
            pipe.text_encoder.to("cpu")
    else:
        pipe.to(device)
        if args.t5_cpu:
            pipe.text_encoder.to("cpu")
    apply_self_attention_kernel(args, pipe, device)  # before compilation, which traces the kernel in
    if getattr(args, "preset", None):
        # the preset's execution set-up (presets.py: the VAE's dtype, compilation on CUDA), after placement; its
        # self-attention kernel is --self_attention_kernel's default, set above
        from ..presets import apply_setup, preset_setup

        # and its quantisation is --quant's (`--quant auto`, done at loading)
        setup = dict(preset_setup(args.preset), self_attention_kernel=None, quant=None)
        if device.type == "cuda":
            chosen = apply_setup(pipe, **setup)
            compiled = "compiled" if setup["compile"] else "eager"
            tuned = " with torchao's Inductor tuning (minutes of compilation)" if chosen["tuned"] else ""
            note_about("preset", f"VAE in {setup['vae_dtype']}, DiT {compiled}{tuned}", args.preset)
        else:
            why = "its sampling settings only (the bf16 VAE and compilation are for GPUs)"
            note_about("preset", why, args.preset)
    if args.ulysses_size > 1:
        from ..pipelines.context_parallel import enable_context_parallelism

        enable_context_parallelism(pipe, ulysses_degree=args.ulysses_size)
        if not is_main_process():
            pipe.set_progress_bar_config(disable=True)
    if args.dit_fsdp or args.t5_fsdp:
        # FSDP2 over the same processes, after placement (each process's shards go to its device) and after the
        # context parallelism hooks (either order works: weights vs. tokens); docs/multi_gpu.md
        from ..pipelines.sharding import enable_sharding

        enable_sharding(pipe, dit=args.dit_fsdp, t5=args.t5_fsdp)
    return pipe


def load_from_options(options: GenerateOptions):
    """The pipeline for the model options (`--tiny`, `--model` or `--ckpt_dir`/`--wav2vec_dir`, with `--device`,
    `--dtype` and the rest), on the device they name."""
    device = resolve_device(options.device)
    options.device = str(device)
    return load_pipeline(options, device, resolve_dtype(options.dtype, device, tiny=options.tiny))


class PipelineHolder:
    """One pipeline per process, loaded on first use: the front ends share it across requests.

    Args:
        source: a pipeline, a function returning one (e.g. `make_tiny_pipeline`), or model options (checked at
            once, so bad flags fail before anything loads; TeaCache is left to each request).
    """

    def __init__(self, source):
        import threading

        from diffusers import DiffusionPipeline

        from .options import check_generate_args, generate_options

        if isinstance(source, DiffusionPipeline):
            self._load = lambda: source
        elif isinstance(source, GenerateOptions):
            options = generate_options(source)
            check_generate_args(options)
            options.use_teacache = False
            self._load = lambda: load_from_options(options)
        elif callable(source):
            self._load = source
        else:
            raise TypeError(
                f"expected a pipeline, a function returning one, or model options; got {type(source).__name__}"
            )
        self._lock = threading.Lock()
        self._pipeline = None

    @property
    def loaded(self) -> bool:
        return self._pipeline is not None

    def __call__(self):
        with self._lock:  # two first requests must not load the model twice
            if self._pipeline is None:
                self._pipeline = self._load()
        return self._pipeline
