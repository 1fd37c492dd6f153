"""`--self_attention_kernel`: the kernel of the DiT's video self-attention, checked before any model loads and set
after loading (`models.fp8.set_self_attention_kernel`).

- not given: the preset's choice with `--preset` ("auto"), diffusers' dispatcher (`--attention_backend`) otherwise;
- "auto": FlashAttention-3's FP8 forward where it runs (a Hopper GPU, an FA3 build with FP8), the dispatcher
  elsewhere; the choice and the reason are printed;
- "dispatcher": diffusers' dispatcher, also under a preset;
- a kernel's name ("flash3_fp8", "sage_triton"): that kernel, or a one-line error naming what is missing.
"""

from __future__ import annotations

from .errors import note
from .spec import FieldProblem, GenerateOptions, RequestError, note_about


SELF_ATTENTION_KERNEL_CHOICES = ("auto", "dispatcher", "flash3_fp8", "sage_triton")
KERNEL_TITLES = {"flash3_fp8": "FlashAttention-3's FP8 forward", "sage_triton": "SageAttention 1 (Triton)"}


def wanted_self_attention_kernel(args: GenerateOptions) -> str | None:
    """The kernel asked for, the preset's filled in: a kernel's name, "auto", or None for the dispatcher."""
    kernel = getattr(args, "self_attention_kernel", None)
    if kernel is None and getattr(args, "preset", None):
        from ..presets import preset_setup

        kernel = preset_setup(args.preset)["self_attention_kernel"]
    if kernel is not None and kernel not in SELF_ATTENTION_KERNEL_CHOICES:
        why = f"expected one of {', '.join(SELF_ATTENTION_KERNEL_CHOICES)}"
        raise RequestError([FieldProblem("self_attention_kernel", why, kernel)])
    return None if kernel == "dispatcher" else kernel


def _refuse(kernel: str, problem: str) -> RequestError:
    why = f"{problem}; or leave {{self_attention_kernel}} out (or give 'dispatcher') for diffusers' attention backend"
    return RequestError([FieldProblem("self_attention_kernel", why, kernel)], usage=False)  # not on this machine


def check_self_attention_kernel(args: GenerateOptions, device) -> None:
    """Refuses a named kernel that cannot run on `device`, before inputs are read or models load ("auto" never
    refuses: it falls back, and says so when the kernel is set)."""
    kernel = wanted_self_attention_kernel(args)
    if kernel in (None, "auto"):
        return
    from ..models.fp8 import self_attention_kernel_problem

    problem = self_attention_kernel_problem(kernel, device)
    if problem is not None:
        raise _refuse(kernel, problem)


def apply_self_attention_kernel(args: GenerateOptions, pipe, device) -> str | None:
    """Sets the asked kernel on every block of the loaded DiT (probed at its head size on `device`, where it will
    run even when offloading keeps it on the CPU now); returns the kernel set, or None for the dispatcher."""
    kernel = wanted_self_attention_kernel(args)
    if kernel is None:
        return None
    from ..models.fp8 import resolve_self_attention_kernel, self_attention_kernel_problem, set_self_attention_kernel

    transformer = pipe.transformer
    if kernel == "auto":
        kernel, why_not = resolve_self_attention_kernel("auto", transformer, device)
        if kernel is None:
            note_about("self_attention_kernel", f"self-attention through diffusers' dispatcher ({why_not})", "auto")
            return None
    else:
        problem = self_attention_kernel_problem(kernel, device, transformer.config.attention_head_dim)
        if problem is not None:
            raise _refuse(kernel, problem)
    set_self_attention_kernel(transformer, kernel)
    note(f"self-attention through {KERNEL_TITLES[kernel]} ({kernel}) in every block")
    return kernel


def self_attention_kernel_statuses(device) -> list[tuple[str, str]]:
    """`[(kernel, "usable" or why not), ...]` on `device`, for `multitalk info`."""
    from ..models.fp8 import self_attention_kernel_problem

    return [
        (kernel, self_attention_kernel_problem(kernel, device) or "usable")
        for kernel in SELF_ATTENTION_KERNEL_CHOICES
        if kernel in KERNEL_TITLES
    ]
