"""`multitalk info`: versions, devices, attention backends, optional features and what the weights folders hold."""

from __future__ import annotations

import os
import shutil
from argparse import Namespace
from pathlib import Path

from ..runtime.folders import inspect_model, inspect_multitalk_dir, inspect_wan_dir, inspect_wav2vec_dir
from ..runtime.kernels import self_attention_kernel_statuses


def attention_backends(cuda: bool) -> list[tuple[str, str]]:
    """``[(backend, status), ...]`` for every attention backend diffusers knows."""
    try:
        from diffusers.models import attention_dispatch as dispatch
    except ImportError as err:  # pragma: no cover
        return [("?", f"diffusers' attention dispatcher is unavailable: {err}")]
    from .._diffusers_compat import attention_backend_constraints, check_attention_backend_requirements

    rows = []
    constraints = attention_backend_constraints()
    cuda_only_native = {"_native_cudnn", "_native_flash", "_native_efficient"}
    for backend in dispatch.AttentionBackendName:
        try:
            check_attention_backend_requirements(backend)
        except Exception as err:  # noqa: BLE001 - diffusers says what is missing
            rows.append((backend.value, "not usable: " + str(err).split(". ")[0]))
            continue
        names = [getattr(c, "__name__", "") for c in constraints.get(backend, [])]
        needs_cuda = backend.value in cuda_only_native or any("cuda" in n for n in names)
        if needs_cuda and not cuda:
            rows.append((backend.value, "installed, needs a CUDA device"))
        elif "hub" in backend.value:
            rows.append((backend.value, "usable (kernel fetched from the Hub on first use)"))
        else:
            rows.append((backend.value, "usable"))
    return rows


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args: Namespace) -> int:
    import torch

    from .. import __version__

    out = []
    out.append(f"diffusers-multitalk {__version__}")
    for dist in ("torch", "diffusers", "transformers", "huggingface_hub", "accelerate", "jsonschema", "imageio-ffmpeg"):
        out.append(f"  {dist}: {_version(dist)}")
    cuda = torch.cuda.is_available()
    if cuda:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            out.append(
                f"device: cuda:{i} {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
            )
    else:
        out.append(f"device: CPU ({os.cpu_count()} cores; no CUDA in this torch build or no GPU)")
    try:
        from ..pipelines.video_io import get_ffmpeg_exe

        out.append(f"ffmpeg: {get_ffmpeg_exe()}")
    except Exception as err:  # noqa: BLE001
        out.append(f"ffmpeg: not found ({err})")
    from ..audio.tts import find_kokoro_dir

    kokoro_dir = find_kokoro_dir()
    out.append(
        "TTS (--audio_mode tts): kokoro "
        + (
            "installed"
            if _version("kokoro") != "not installed"
            else "not installed (pip install 'diffusers-multitalk[tts]')"
        )
        + f", Kokoro-82M weights {'at ' + str(kokoro_dir) if kokoro_dir else 'not found'}"
        + f", espeak-ng {shutil.which('espeak-ng') or 'not found (apt install espeak-ng)'}"
    )
    out.append(
        "quantisation (--quant int8|fp8): optimum-quanto "
        + (
            "installed"
            if _version("optimum-quanto") != "not installed"
            else "not installed (pip install 'diffusers-multitalk[quant]')"
        )
        + ", torchao (--quant_backend torchao: FP8/int8 execution) "
        + (
            "installed"
            if _version("torchao") != "not installed"
            else "not installed (pip install 'diffusers-multitalk[fp8]')"
        )
    )
    out.append(
        "web app (multitalk serve): gradio "
        + (
            "installed"
            if _version("gradio") != "not installed"
            else "not installed (pip install 'diffusers-multitalk[app]')"
        )
    )
    from ..variants import describe_variants

    out.append("models (--task; the variant registry):")
    out.extend(f"  {line}" for line in describe_variants())
    out.append("attention backends (diffusers):")
    for name, status in attention_backends(cuda):
        out.append(f"  {name:32s} {status}")
    out.append("video self-attention kernels (--self_attention_kernel; auto = flash3_fp8 where usable):")
    for name, status in self_attention_kernel_statuses("cuda" if cuda else "cpu"):
        out.append(f"  {name:32s} {status}")

    incomplete = False
    checks = []
    if args.ckpt_dir:
        checks.append(
            (
                f"--ckpt_dir {args.ckpt_dir}",
                inspect_wan_dir(Path(args.ckpt_dir), need_linked_multitalk=args.multitalk_dir is None),
            )
        )
    if args.multitalk_dir:
        checks.append((f"--multitalk_dir {args.multitalk_dir}", inspect_multitalk_dir(Path(args.multitalk_dir))))
    if args.wav2vec_dir:
        checks.append((f"--wav2vec_dir {args.wav2vec_dir}", inspect_wav2vec_dir(Path(args.wav2vec_dir))))
    if args.model:
        checks.append((f"--model {args.model}", inspect_model(args.model)))
    for title, rows in checks:
        out.append(f"{title}:")
        for label, ok, detail in rows:
            out.append(f"  [{'ok' if ok else 'MISSING'}] {label}" + (f" ({detail})" if detail else ""))
            incomplete |= not ok
    print("\n".join(out))
    return 1 if incomplete else 0
