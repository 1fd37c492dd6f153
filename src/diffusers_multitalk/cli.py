"""The ``multitalk`` command.

    multitalk generate --tiny --input_json examples/two_person_tiny.json --save_file outputs/demo
    multitalk generate --ckpt_dir weights/Wan2.1-I2V-14B-480P --wav2vec_dir weights/chinese-wav2vec2-base \\
        --input_json my_input.json --sample_steps 40 --mode streaming --save_file talk
    multitalk download --target weights
    multitalk info --ckpt_dir weights/Wan2.1-I2V-14B-480P --wav2vec_dir weights/chinese-wav2vec2-base
    multitalk convert --wan_dir ... --multitalk_dir ... --wav2vec_dir ... --output_dir ...
    multitalk serve --tiny                       # the web app (Gradio); takes generate's model flags
    torchrun --nproc_per_node 2 -m diffusers_multitalk generate ... --ulysses_size 2   # one video on 2 GPUs

``generate`` takes MultiTalk's ``generate_multitalk.py`` flags with the same names and defaults, and its input
JSON files. The flag -> pipeline-argument mapping lives in one pure function, :func:`build_generation_kwargs`.
Flags this build cannot honour (FSDP, ring attention, --quant values other than int8/fp8) stop the command with
an error naming them, before anything is loaded. ``--ulysses_size N`` under torchrun splits the DiT's video tokens
over N processes (pipelines/context_parallel.py, docs/multi_gpu.md). ``--num_persistent_param_in_dit N`` (the
reference's VRAM manager) is diffusers' group offloading here (pipelines/low_vram.py, docs/low_vram.md). ``--quant int8
--quant_dir <MeiGen-MultiTalk>`` loads MultiTalk's optimum-quanto files (loaders/quantized.py).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import random
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from .loaders.original_folders import (
    DIT_INDEX,
    MULTITALK_FILE,
    MULTITALK_REPO,
    WAN_CLIP_CHECKPOINT,
    WAN_REPO,
    WAN_REPO_720,
    WAN_T5_CHECKPOINT,
    WAN_UMT5_TOKENIZER_DIR,
    WAN_VAE_CHECKPOINT,
    WAV2VEC_REPO,
)


__all__ = [
    "CLIError",
    "build_generation_kwargs",
    "build_parser",
    "download_plan",
    "load_from_pretrained",
    "load_pipeline",
    "main",
    "unsupported_flags",
]

PROG = "multitalk"

# The reference's defaults that depend on other flags.
DEFAULT_SAMPLE_STEPS = 40
DEFAULT_SHIFT = {"multitalk-480": 7.0, "multitalk-720": 11.0}
SIZES = ("multitalk-480", "multitalk-720")

# Files of the checkpoints as the reference's README downloads them.
WAN_REPOS = {"multitalk-480": WAN_REPO, "multitalk-720": WAN_REPO_720}
WAN_INDEX = DIT_INDEX
WAN_T5 = WAN_T5_CHECKPOINT
WAN_CLIP = WAN_CLIP_CHECKPOINT
WAN_VAE = WAN_VAE_CHECKPOINT
WAN_TOKENIZER = WAN_UMT5_TOKENIZER_DIR
WAN_ALLOW_PATTERNS = [
    "config.json",
    "diffusion_pytorch_model-*-of-*.safetensors",
    WAN_T5,
    WAN_CLIP,
    WAN_VAE,
    f"{WAN_TOKENIZER}/*",
]
MULTITALK_ALLOW_PATTERNS = [MULTITALK_FILE, WAN_INDEX]
WAV2VEC_ALLOW_PATTERNS = ["config.json", "preprocessor_config.json"]
WAV2VEC_SAFETENSORS_REVISION = "refs/pr/1"  # model.safetensors lives in that pull request, as MultiTalk's README says
WAV2VEC_SAFETENSORS_PATTERNS = ["model.safetensors"]
KOKORO_REPO = "hexgrad/Kokoro-82M"
KOKORO_ALLOW_PATTERNS = ["config.json", "kokoro-v1_0.pth", "voices/*.pt"]


class CLIError(Exception):
    """A user-facing error: printed as ``multitalk <command>: error: ...``, exit status 1."""


class Terminated(BaseException):
    """SIGTERM, raised where the process is so that `finally` blocks and writers clean up."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def str2bool(value: str) -> bool:
    """The reference's boolean flags: yes/true/t/y/1 and no/false/f/n/0."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, yes/no, 1/0), got {value!r}")


# ================================================================================================================
# Parser
# ================================================================================================================
def _add_generate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="generate a talking video from an input JSON (MultiTalk's flags)",
        description=(
            "Generate a talking video. The flags are those of MultiTalk's generate_multitalk.py, with its names and "
            "defaults; the model comes from --ckpt_dir/--wav2vec_dir (the original checkpoints, MultiTalk's weights "
            "linked into ckpt_dir as its README says, or --multitalk_dir), --model (a converted diffusers folder or "
            "Hub id) or --tiny (a tiny random model, no downloads)."
        ),
    )
    g = p.add_argument_group("MultiTalk's flags")
    g.add_argument("--task", default="multitalk-14B", choices=["multitalk-14B"], help="the task (only multitalk-14B)")
    g.add_argument("--size", default="multitalk-480", choices=SIZES, help="resolution bucket table; the video follows the image's aspect ratio")
    g.add_argument("--frame_num", type=int, default=81, help="frames per clip, 4n+1 (81)")
    g.add_argument("--ckpt_dir", default=None, help="the Wan2.1-I2V-14B folder, with MultiTalk's weights linked in")
    g.add_argument("--quant_dir", default=None, help="the MeiGen-MultiTalk folder whose quant_models/ --quant reads")
    g.add_argument("--wav2vec_dir", default=None, help="the chinese-wav2vec2-base folder")
    g.add_argument("--lora_dir", nargs="+", default=None, help="LoRA files (Wan's original naming works)")
    g.add_argument("--lora_scale", type=float, nargs="+", default=[1.2], help="one scale per LoRA, or one for all (1.2)")
    g.add_argument(
        "--offload_model", type=str2bool, default=None,
        help="offload models to the CPU between uses (enable_model_cpu_offload); default: on with a GPU, as the reference on one GPU",
    )
    g.add_argument(
        "--ulysses_size", type=int, default=1,
        help="GPUs sharing one video (context parallelism, Ulysses); launch with torchrun --nproc_per_node N",
    )
    g.add_argument("--ring_size", type=int, default=1, help="ring attention parallelism (only 1 is supported)")
    g.add_argument("--t5_fsdp", action="store_true", help="FSDP for umT5 (not supported)")
    g.add_argument("--t5_cpu", action="store_true", help="keep the umT5 text encoder on the CPU")
    g.add_argument("--dit_fsdp", action="store_true", help="FSDP for the DiT (not supported)")
    g.add_argument("--save_file", default=None, help="output name; '.mp4' is appended (default: task_size_..._prompt_time)")
    g.add_argument(
        "--audio_save_dir", default=None,
        help="also save the mixed (and TTS) audio as wav files under DIR/<image name>/ (as the reference does); "
        "default: no audio side files",
    )
    g.add_argument("--base_seed", type=int, default=42, help="seed; negative picks a random one")
    g.add_argument("--input_json", default="examples.json", help="the input file: prompt, cond_image, cond_audio, ...")
    g.add_argument("--motion_frame", type=int, default=25, help="frames each streaming chunk continues from, 4n+1 (25)")
    g.add_argument(
        "--mode", default=None, choices=["clip", "streaming"],
        help="default: the whole audio (one clip when it fits in --frame_num frames, else streaming); clip: one chunk "
        "of --frame_num frames, longer audio cut (with a warning); streaming: chunks until the audio ends",
    )
    g.add_argument(
        "--max_frame_num", type=int, default=None,
        help="cap the video at N frames (25 fps; InfiniteTalk's flag); default: as long as the audio",
    )
    g.add_argument("--sample_steps", type=int, default=None, help=f"sampling steps ({DEFAULT_SAMPLE_STEPS})")
    g.add_argument("--sample_shift", type=float, default=None, help="timestep shift (7 at 480P, 11 at 720P)")
    g.add_argument("--sample_text_guide_scale", type=float, default=5.0, help="text guidance (5; 1 with distillation LoRAs)")
    g.add_argument("--sample_audio_guide_scale", type=float, default=4.0, help="audio guidance (4; 2 with distillation LoRAs)")
    g.add_argument(
        "--num_persistent_param_in_dit", type=int, default=None,
        help="low VRAM: keep the DiT blocks that fit in N parameters on the GPU, stream the others from the CPU "
        "block by block (0: lowest VRAM); the other models are offloaded too unless --offload_model False",
    )
    g.add_argument("--audio_mode", default="localfile", choices=["localfile", "tts"], help="audio from files or from TTS (tts_audio)")
    g.add_argument("--use_teacache", action="store_true", help="TeaCache: skip the DiT on steps whose timestep changed little")
    g.add_argument("--teacache_thresh", type=float, default=0.2, help="TeaCache threshold, 0.2 to 0.5 (only with --use_teacache)")
    g.add_argument("--use_apg", action="store_true", help="adaptive projected guidance")
    g.add_argument("--apg_momentum", type=float, default=-0.75, help="APG momentum (-0.75)")
    g.add_argument("--apg_norm_threshold", type=float, default=55, help="APG norm threshold (55)")
    g.add_argument("--color_correction_strength", type=float, default=1.0, help="colour matching to the image, 0..1 (1)")
    g.add_argument(
        "--quant", default=None,
        help="int8 or fp8 (optimum-quanto): MultiTalk's quantised DiT and umT5 from --quant_dir; with --lora_dir, its "
        "first file is the quantised FusionX DiT, as in MultiTalk; without --quant_dir the float weights are quantised on the fly",
    )

    o = p.add_argument_group("diffusers-multitalk's flags")
    source = o.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, help="a converted diffusers folder or Hub repo id (from_pretrained)")
    source.add_argument("--tiny", action="store_true", help="a tiny random model built locally: no downloads, noise-like video")
    o.add_argument("--multitalk_dir", default=None, help="the MeiGen-MultiTalk folder, when not linked into --ckpt_dir")
    o.add_argument("--device", default=None, help="cuda, cuda:1, cpu, ... (default: cuda if available)")
    o.add_argument(
        "--dtype", default="auto", choices=["auto", "bfloat16", "bf16", "float16", "fp16", "float32", "fp32"],
        help="dtype of the DiT and encoders (auto: bfloat16 on a GPU, float32 on the CPU and for --tiny)",
    )
    o.add_argument("--height", type=int, default=None, help="output height (multiple of 16) instead of the bucket's")
    o.add_argument("--width", type=int, default=None, help="output width (multiple of 16) instead of the bucket's")
    o.add_argument("--attention_backend", default=None, help="a diffusers attention backend for the DiT (see `multitalk info`)")
    p.set_defaults(func=cmd_generate)
    return p


def _add_download_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "download",
        help="download Wan2.1-I2V-14B, MeiGen-MultiTalk and chinese-wav2vec2-base from the Hugging Face Hub",
        description=(
            "Download the checkpoints MultiTalk needs (only the files it uses; re-running resumes) into --target, "
            "and link MultiTalk's weights and index into the Wan folder as MultiTalk's README does."
        ),
    )
    p.add_argument("--target", default="weights", help="folder to download into (weights)")
    p.add_argument("--size", default="multitalk-480", choices=SIZES, help="multitalk-480: Wan2.1-I2V-14B-480P; multitalk-720: -720P")
    p.add_argument("--no_link", action="store_true", help="do not link MultiTalk's files into the Wan folder (keeps Wan's own index)")
    p.add_argument("--copy", action="store_true", help="copy MultiTalk's files into the Wan folder instead of symlinking")
    p.add_argument("--tts", action="store_true", help="also download Kokoro-82M for --audio_mode tts")
    p.add_argument("--max_workers", type=int, default=8, help="parallel downloads per repository (8)")
    p.set_defaults(func=cmd_download)
    return p


def _add_info_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info",
        help="versions, device, attention backends, and which weights a folder holds",
        description="Print versions, the device, diffusers' attention backends, and the files found in the given folders.",
    )
    p.add_argument("--ckpt_dir", default=None, help="a Wan2.1-I2V-14B folder to check")
    p.add_argument("--wav2vec_dir", default=None, help="a chinese-wav2vec2-base folder to check")
    p.add_argument("--multitalk_dir", default=None, help="a MeiGen-MultiTalk folder to check")
    p.add_argument("--model", default=None, help="a converted diffusers folder (or Hub id) to check")
    p.set_defaults(func=cmd_info)
    return p


def _add_convert_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert",
        help="convert the original checkpoints into one diffusers folder",
        description="Convert Wan2.1-I2V-14B + MeiGen-MultiTalk + chinese-wav2vec2-base into a diffusers folder (from_pretrained).",
    )
    p.add_argument("--wan_dir", required=True, help="the Wan2.1-I2V-14B folder")
    p.add_argument("--multitalk_dir", default=None, help="the MeiGen-MultiTalk folder (not needed if linked into --wan_dir)")
    p.add_argument("--wav2vec_dir", required=True, help="the chinese-wav2vec2-base folder")
    p.add_argument("--output_dir", required=True, help="where to write the diffusers folder")
    p.add_argument("--dtype", default="bfloat16", help="dtype of the saved DiT and encoders (bfloat16)")
    p.add_argument("--lora_dir", default=None, help="a LoRA to fuse into the DiT")
    p.add_argument("--lora_scale", type=float, default=1.0, help="its scale (1.0)")
    p.add_argument("--force", action="store_true", help="overwrite --output_dir")
    p.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="also upload to this Hub repo")
    p.set_defaults(func=cmd_convert)
    return p


# `serve` loads the model as `generate` does: these flags are generate's own argparse actions, shared, so their
# names, defaults and help cannot drift apart.
SERVE_MODEL_FLAGS = (
    "--ckpt_dir", "--wav2vec_dir", "--multitalk_dir", "--model", "--tiny", "--lora_dir", "--lora_scale", "--quant",
    "--quant_dir", "--offload_model", "--num_persistent_param_in_dit", "--t5_cpu", "--device", "--dtype",
    "--attention_backend", "--use_teacache", "--teacache_thresh",
)


def _add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="a web app (Gradio) to make talking videos in the browser",
        description=(
            "Serve the MultiTalk web app: a reference image, speech for 1 to 4 persons (recordings or a TTS script) "
            "and a prompt give an mp4. The model comes from the same flags as for generate (--tiny, --model or "
            "--ckpt_dir/--wav2vec_dir, ...) and is loaded before the server starts. Needs gradio: "
            'pip install "diffusers-multitalk[app]".'
        ),
    )
    generate = _add_generate_parser(argparse.ArgumentParser(prog=PROG).add_subparsers())
    exclusive = {action for group in generate._mutually_exclusive_groups for action in group._group_actions}
    model = p.add_argument_group("model (the flags of generate)")
    source = model.add_mutually_exclusive_group()  # --model / --tiny, as in generate
    for action in generate._actions:
        if set(action.option_strings) & set(SERVE_MODEL_FLAGS):
            (source if action in exclusive else model)._add_action(action)
    s = p.add_argument_group("server")
    s.add_argument("--host", default=None, help="address to listen on (gradio's default, 127.0.0.1; 0.0.0.0 for every interface)")
    s.add_argument("--port", type=int, default=None, help="port (gradio's default: 7860, or the next free one)")
    s.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    s.add_argument("--output_dir", default="outputs/app", help="where the videos are written (outputs/app)")
    p.set_defaults(func=cmd_serve)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="MultiTalk (audio-driven multi-person talking video) with diffusers.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="{generate,download,info,convert,serve}")
    _add_generate_parser(subparsers)
    _add_download_parser(subparsers)
    _add_info_parser(subparsers)
    _add_convert_parser(subparsers)
    _add_serve_parser(subparsers)
    return parser


# ================================================================================================================
# generate: flags -> pipeline arguments
# ================================================================================================================
def unsupported_flags(args: argparse.Namespace, environ: dict | None = None) -> list[tuple[str, str]]:
    """The flags of ``args`` this build cannot honour, as ``(flag, why)``; empty when everything is supported."""
    environ = os.environ if environ is None else environ
    refused = []
    if args.quant is not None:
        refused.extend(_quant_refusals(args))
    if args.ring_size > 1:
        refused.append((f"--ring_size {args.ring_size}", "ring attention was not tested; use --ulysses_size for several GPUs"))
    if args.t5_fsdp:
        refused.append(("--t5_fsdp", "FSDP is not implemented; leave it out (--t5_cpu keeps umT5 off the GPU)"))
    if args.dit_fsdp:
        refused.append(
            ("--dit_fsdp", "FSDP is not implemented; leave it out: with --ulysses_size every GPU holds the whole DiT "
             "(38 GB in bf16) and does 1/N of its work")
        )
    world_size = int(environ.get("WORLD_SIZE", "1") or 1)
    if args.ulysses_size > 1 and world_size != args.ulysses_size:
        refused.append(
            (f"--ulysses_size {args.ulysses_size}", f"needs {args.ulysses_size} processes, one per GPU: "
             f"torchrun --nproc_per_node {args.ulysses_size} -m diffusers_multitalk generate ... (WORLD_SIZE is {world_size})")
        )
    elif world_size > 1 and args.ulysses_size == 1:
        refused.append((f"torchrun (WORLD_SIZE={world_size})", f"pass --ulysses_size {world_size} to split the work"))
    if args.ulysses_size > 1 and args.num_persistent_param_in_dit is not None:
        refused.append(("--num_persistent_param_in_dit with --ulysses_size", "block streaming with several GPUs was not tested"))
    if args.ulysses_size > 1 and args.quant is not None:
        refused.append(("--quant with --ulysses_size", "quantised weights with several GPUs were not tested"))
    if args.ulysses_size > 1 and args.offload_model:
        refused.append(("--offload_model True with --ulysses_size", "model offloading with several GPUs was not tested"))
    return refused


def _quant_refusals(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Why ``--quant`` cannot be honoured here (empty when it can)."""
    from .loaders.quantized import QUANT_CHOICES, QUANT_INSTALL_HINT

    flag = f"--quant {args.quant}"
    if args.quant not in QUANT_CHOICES:
        return [(flag, f"MultiTalk's quantisations are {' and '.join(QUANT_CHOICES)}")]
    if not quanto_available():
        return [(flag, f"optimum-quanto is not installed: {QUANT_INSTALL_HINT}")]
    if (args.tiny or args.model) and (args.quant_dir or quant_dit_path(args)):
        given = f"--quant_dir {args.quant_dir}" if args.quant_dir else f"--lora_dir {args.lora_dir[0]}"
        return [(
            f"{flag} {given}",
            "MultiTalk's quantised files are in the original layout and load only with --ckpt_dir; with "
            f"{'--tiny' if args.tiny else '--model'}, give float weights (and LoRAs) to quantise on the fly",
        )]
    return []


def quanto_available() -> bool:
    """Whether optimum-quanto (for --quant) is installed."""
    try:
        return importlib.util.find_spec("optimum.quanto") is not None
    except (ImportError, ValueError):
        return False


def quant_dit_path(args: argparse.Namespace) -> str | None:
    """With --quant, the first --lora_dir file when it is a quantised DiT (MultiTalk's
    ``quant_model_int8_FusionX.safetensors``): MultiTalk loads it as the whole DiT, not as a LoRA."""
    if not getattr(args, "quant", None) or not args.lora_dir:
        return None
    from .loaders.quantized import is_quantized_checkpoint

    return args.lora_dir[0] if is_quantized_checkpoint(args.lora_dir[0]) else None


def check_generate_args(args: argparse.Namespace) -> None:
    """Raises CLIError listing every unsupported flag, then every invalid value (before anything is loaded)."""
    refused = unsupported_flags(args)
    if refused:
        lines = "\n".join(f"  {flag}: {why}" for flag, why in refused)
        raise CLIError(f"this build cannot honour {'these flags' if len(refused) > 1 else 'this flag'}:\n{lines}")
    problems = []
    if args.frame_num < 5 or (args.frame_num - 1) % 4:
        problems.append(f"--frame_num {args.frame_num}: must be 4n+1 and at least 5 (e.g. 81)")
    if args.mode != "clip" and (
        args.motion_frame < 1 or (args.motion_frame - 1) % 4 or args.motion_frame >= args.frame_num
    ):
        problems.append(f"--motion_frame {args.motion_frame}: must be 4n+1 and smaller than --frame_num ({args.frame_num})")
    if args.max_frame_num is not None and args.max_frame_num < 5:
        problems.append(f"--max_frame_num {args.max_frame_num}: must be at least 5 frames (0.2 s)")
    for flag in ("sample_text_guide_scale", "sample_audio_guide_scale"):
        if getattr(args, flag) < 0:
            problems.append(f"--{flag} {getattr(args, flag)}: must be 0 or more (1 turns that guidance off)")
    if args.sample_steps is not None and args.sample_steps < 1:
        problems.append(f"--sample_steps {args.sample_steps}: must be at least 1")
    if args.num_persistent_param_in_dit is not None and args.num_persistent_param_in_dit < 0:
        problems.append(f"--num_persistent_param_in_dit {args.num_persistent_param_in_dit}: must be 0 or more (0: lowest VRAM)")
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
            problems.append(f"--lora_scale: {len(args.lora_scale)} scales for {len(args.lora_dir)} LoRAs (give one, or one per LoRA)")
        for path in args.lora_dir:
            if not Path(path).exists() and not _looks_like_repo_id(path):
                problems.append(f"--lora_dir {path}: does not exist")
        problems += _quant_lora_problems(args)
    if args.quant_dir and args.quant is None:
        problems.append(f"--quant_dir {args.quant_dir}: only used with --quant int8 (or fp8)")
    # the model source
    if args.model and not Path(args.model).is_dir() and not _looks_like_repo_id(args.model):
        problems.append(f"--model {args.model}: neither a folder here nor a Hub repo id (owner/name)")
    if args.tiny or args.model:
        given = [f"--{n}" for n in ("ckpt_dir", "wav2vec_dir", "multitalk_dir") if getattr(args, n)]
        if given:
            problems.append(f"{', '.join(given)}: not used with {'--tiny' if args.tiny else '--model'}; give one model source")
    else:
        if not args.ckpt_dir:
            problems.append("no model: give --ckpt_dir and --wav2vec_dir (the original checkpoints), --model (a diffusers folder) or --tiny")
        elif not args.wav2vec_dir:
            problems.append("--wav2vec_dir: required with --ckpt_dir (the chinese-wav2vec2-base folder)")
    if problems:
        raise CLIError("invalid arguments:\n" + "\n".join(f"  {p}" for p in problems))


def _quant_lora_problems(args: argparse.Namespace) -> list[str]:
    """--lora_dir with (or without) --quant: MultiTalk's quantised FusionX DiT comes through --lora_dir with --quant."""
    from .loaders.quantized import is_quantized_checkpoint

    quantised = [path for path in args.lora_dir if is_quantized_checkpoint(path)]
    if args.quant is None:
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


def lora_specs(args: argparse.Namespace) -> list[tuple[str, float]]:
    """``[(lora path, scale), ...]``: one scale for all LoRAs, or one each."""
    if not args.lora_dir:
        return []
    scales = list(args.lora_scale)
    if len(scales) == 1:
        scales = scales * len(args.lora_dir)
    if len(scales) != len(args.lora_dir):
        raise CLIError(f"--lora_scale: {len(scales)} scales for {len(args.lora_dir)} LoRAs (give one, or one per LoRA)")
    return list(zip(args.lora_dir, (float(s) for s in scales)))


def _person_order(block: dict) -> list[str]:
    keys = [k for k in block if str(k).startswith("person") and str(k)[6:].isdigit()]
    return sorted(keys, key=lambda k: int(str(k)[6:]))


def build_generation_kwargs(args: argparse.Namespace, input_data: dict) -> dict:
    """Maps the ``generate`` flags and the input JSON to ``WanMultiTalkPipeline.__call__`` arguments.

    A pure function of its inputs (no model, no file access); ``input_data`` is the input JSON (paths as they are
    given, or as :func:`~diffusers_multitalk.input_json.load_input_json` resolved them; ``cond_audio`` values may
    also be ``(waveform, sampling_rate)`` tuples, e.g. from TTS). A negative ``--base_seed`` draws a random seed,
    as the reference does.
    """
    import torch

    if args.size not in DEFAULT_SHIFT:
        raise CLIError(f"--size {args.size}: expected one of {', '.join(SIZES)}")
    audio_block = input_data.get("cond_audio") or {}
    persons = _person_order(audio_block)
    if not persons:
        raise CLIError("the input has no audio: cond_audio needs person1 (and person2, ...), or use --audio_mode tts")
    bbox_block = input_data.get("bbox") or None
    bbox = [list(bbox_block[k]) for k in persons] if bbox_block else None
    seed = args.base_seed if args.base_seed >= 0 else random.randint(0, 99_999_999)
    device = getattr(args, "device", None) or "cpu"
    # TTS tracks are already laid out in time (each person silent while the other speaks): mix them as they are.
    audio_type = "para" if args.audio_mode == "tts" else input_data.get("audio_type") or "add"
    return dict(
        image=input_data["cond_image"],
        audio=[audio_block[k] for k in persons],
        prompt=input_data["prompt"],
        audio_type=audio_type,
        # the reference loudness-normalises recordings but drives the video with TTS speech as synthesised
        normalize_loudness=args.audio_mode != "tts",
        bbox=bbox,
        resolution=args.size,
        height=getattr(args, "height", None),
        width=getattr(args, "width", None),
        allow_upscale=True,  # the reference upsamples images smaller than the bucket
        mode=args.mode,
        num_frames=args.frame_num,
        motion_frames=args.motion_frame,
        max_frames=args.max_frame_num,
        num_inference_steps=args.sample_steps if args.sample_steps is not None else DEFAULT_SAMPLE_STEPS,
        shift=float(args.sample_shift) if args.sample_shift is not None else DEFAULT_SHIFT[args.size],
        text_guidance_scale=float(args.sample_text_guide_scale),
        audio_guidance_scale=float(args.sample_audio_guide_scale),
        use_apg=bool(args.use_apg),
        apg_momentum=float(args.apg_momentum),
        apg_norm_threshold=float(args.apg_norm_threshold),
        color_correction_strength=float(args.color_correction_strength),
        generator=torch.Generator(device=device).manual_seed(seed),
    )


def default_save_file(args: argparse.Namespace, prompt: str, now: datetime.datetime | None = None) -> str:
    """The reference's default output name: ``{task}_{size}_{ulysses}_{ring}_{prompt[:50]}_{YYYYmmdd_HHMMSS}``."""
    now = now or datetime.datetime.now()
    words = prompt.replace(" ", "_").replace("/", "_")[:50]
    return f"{args.task}_{args.size}_{args.ulysses_size}_{args.ring_size}_{words}_{now.strftime('%Y%m%d_%H%M%S')}"


def output_path(save_file: str) -> Path:
    """``save_file`` + ``.mp4`` (not doubled when it already ends so)."""
    return Path(save_file if save_file.lower().endswith(".mp4") else save_file + ".mp4")


def tiny_size(image_size: tuple[int, int], size: str) -> tuple[int, int]:
    """For --tiny without --height/--width: the image's bucket divided by 8, rounded to multiples of 16."""
    from .pipelines.multitalk_utils import closest_bucket, resolution_buckets

    bucket_h, bucket_w = closest_bucket(image_size[0], image_size[1], resolution_buckets(size))
    return tuple(max(16, int(v / 8 / 16 + 0.5) * 16) for v in (bucket_h, bucket_w))


# ================================================================================================================
# generate: loading
# ================================================================================================================
_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16", "float32": "float32", "fp32": "float32"}


def resolve_device(name: str | None):
    import torch

    if name is None:
        if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CLIError(f"--device {name}: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    return device


def resolve_dtype(name: str, device, tiny: bool = False):
    import torch

    if name == "auto":
        return torch.float32 if tiny or device.type == "cpu" else torch.bfloat16
    return getattr(torch, _DTYPES[name])


def load_from_pretrained(model: str, torch_dtype=None):
    """A converted diffusers folder or Hub repo id -> the pipeline."""
    from .pipelines.pipeline_wan_multitalk import WanMultiTalkPipeline

    return WanMultiTalkPipeline.from_pretrained(model, torch_dtype=torch_dtype)


def _wan_dir_problems(ckpt_dir: Path, need_linked_multitalk: bool) -> list[str]:
    return [f"{label}: {detail}" if detail else label for label, ok, detail in inspect_wan_dir(ckpt_dir, need_linked_multitalk) if not ok]


def load_pipeline(args: argparse.Namespace, device, dtype):
    """The pipeline from --tiny, --model or --ckpt_dir/--wav2vec_dir, with LoRAs, quantisation, attention backend
    and placement."""
    quant_dit = quant_dit_path(args)
    quant_files = bool(args.quant and (args.quant_dir or quant_dit))
    if args.tiny:
        from .tiny import make_tiny_pipeline

        pipe = make_tiny_pipeline()
        if args.dtype != "auto":
            pipe.to(dtype=dtype)
    elif args.model:
        try:
            pipe = load_from_pretrained(args.model, torch_dtype=dtype)
        except Exception as err:  # noqa: BLE001 - the Hub's connection/access errors get a clear message
            if isinstance(err, OSError) and not _is_hub_connection_error(err):
                # diffusers wraps the Hub's error: "Cannot load model ...: the model is not fully cached locally ..."
                raise CLIError(f"--model {args.model}: {str(err).splitlines()[0]}") from err
            clear = _hub_error(err, args.model)
            if clear is None:
                raise
            raise clear from err
    else:
        from .pipelines.pipeline_wan_multitalk import WanMultiTalkPipeline

        ckpt_dir = Path(args.ckpt_dir)
        if not ckpt_dir.is_dir():
            raise CLIError(f"--ckpt_dir {ckpt_dir}: no such folder (`{PROG} download --target weights` fetches it)")
        if quant_files:
            from .loaders.quantized import quant_folder_problems

            # The quantised DiT holds every weight: no shards or multitalk.safetensors needed, its files are.
            problems = quant_folder_problems(
                _wan_dir_problems(ckpt_dir, need_linked_multitalk=False), ckpt_dir, args.quant, args.quant_dir, quant_dit
            )
        else:
            problems = _wan_dir_problems(ckpt_dir, need_linked_multitalk=args.multitalk_dir is None)
        if problems:
            lines = "\n".join(f"  {p}" for p in problems)
            raise CLIError(
                f"--ckpt_dir {ckpt_dir} is incomplete:\n{lines}\n"
                f"`{PROG} download --target <folder>` fetches and links everything; or link MeiGen-MultiTalk's "
                f"{MULTITALK_FILE} and {WAN_INDEX} into it as MultiTalk's README does, or pass --multitalk_dir."
            )
        wav2vec_problems = [f"{label}: {detail}" if detail else label for label, ok, detail in inspect_wav2vec_dir(Path(args.wav2vec_dir)) if not ok]
        if wav2vec_problems:
            raise CLIError(f"--wav2vec_dir {args.wav2vec_dir} is incomplete:\n" + "\n".join(f"  {p}" for p in wav2vec_problems))
        quant_kwargs = {}
        if quant_files:
            quant_kwargs = dict(quant=args.quant, quant_dir=args.quant_dir, quant_dit_path=quant_dit)
            _note(f"--quant {args.quant}: the quantised DiT {quant_dit or 'from ' + str(args.quant_dir)}")
        pipe = WanMultiTalkPipeline.from_original(
            ckpt_dir, args.multitalk_dir, args.wav2vec_dir, torch_dtype=dtype, **quant_kwargs
        )

    specs = [] if quant_dit else lora_specs(args)
    if specs:
        names = []
        for index, (path, _) in enumerate(specs):
            name = f"lora_{index}"
            pipe.load_lora_weights(path, adapter_name=name)
            names.append(name)
        pipe.set_adapters(names, [scale for _, scale in specs])
    if args.quant and not quant_files:
        from .loaders.quantized import quantize_pipeline

        _note(f"--quant {args.quant} without --quant_dir: quantising the DiT{' (LoRAs fused first)' if specs else ''} and umT5 on the fly")
        quantize_pipeline(pipe, args.quant)

    if args.use_teacache:
        pipe.transformer.enable_teacache(threshold=args.teacache_thresh, resolution=args.size)

    if args.attention_backend:
        try:
            pipe.transformer.set_attention_backend(args.attention_backend)
        except (ValueError, RuntimeError) as err:
            raise CLIError(f"--attention_backend {args.attention_backend}: {err}") from err

    offload = args.offload_model
    if offload is None:
        offload = device.type == "cuda" and args.ulysses_size == 1  # as the reference: offload on one GPU only
    low_vram = args.num_persistent_param_in_dit
    if low_vram is not None and device.type == "cpu":
        _note("--num_persistent_param_in_dit has no effect on the CPU (everything already lives there)")
        low_vram = None
    if offload and device.type == "cpu":
        _note("--offload_model True has no effect on the CPU (everything already lives there)")
        offload = False
    if low_vram is not None:
        # The DiT blocks that fit in N parameters stay on the GPU, the others stream in block by block (diffusers'
        # group offloading). --offload_model (on by default) group-offloads umT5, CLIP, the VAE and wav2vec2 as well,
        # False keeps them on the GPU; --t5_cpu keeps umT5 on the CPU. See docs/low_vram.md.
        from .pipelines.low_vram import enable_low_vram

        plan = enable_low_vram(pipe, device, low_vram, offload_components=offload, text_encoder_on_cpu=args.t5_cpu)
        _note(plan.summary())
    elif offload:
        if args.t5_cpu:
            # keep umT5 out of the offload chain, on the CPU; the pipeline feeds it on its own device
            pipe.model_cpu_offload_seq = "->".join(m for m in pipe.model_cpu_offload_seq.split("->") if m != "text_encoder")
            pipe._exclude_from_cpu_offload = [*pipe._exclude_from_cpu_offload, "text_encoder"]
        pipe.enable_model_cpu_offload(device=device)
        if args.t5_cpu:
            pipe.text_encoder.to("cpu")
    else:
        pipe.to(device)
        if args.t5_cpu:
            pipe.text_encoder.to("cpu")
    if args.ulysses_size > 1:
        from .pipelines.context_parallel import enable_context_parallelism

        enable_context_parallelism(pipe, ulysses_degree=args.ulysses_size)
        if not _is_main_process():
            pipe.set_progress_bar_config(disable=True)
    return pipe


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _init_distributed(args: argparse.Namespace, device) -> None:
    """torchrun's processes for --ulysses_size: one process group, the same seed everywhere."""
    import torch
    import torch.distributed as dist

    if args.ulysses_size == 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    seed = torch.tensor([args.base_seed], dtype=torch.int64, device=device if device.type == "cuda" else "cpu")
    dist.broadcast(seed, src=0)  # a random seed (--base_seed -1) drawn on rank 0
    args.base_seed = int(seed.item())


def _shutdown_distributed() -> None:
    """Ends the process group `_init_distributed` started (torch is only imported if a command already did)."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_initialized():
        distributed.destroy_process_group()


# ================================================================================================================
# generate: TTS
# ================================================================================================================
def synthesize_tts(tts_block: dict) -> dict:
    """``tts_audio`` -> ``{"person1": (waveform, sampling_rate), ...}`` through :func:`audio.tts.tts_from_json_block`."""
    from .audio.tts import TTSEngineUnavailableError, tts_from_json_block

    try:
        result = tts_from_json_block(tts_block)
    except (TTSEngineUnavailableError, ValueError, FileNotFoundError) as err:
        raise CLIError(f"--audio_mode tts: {err}") from err
    engine = getattr(result, "engine", None)
    if engine:
        _note(f"--audio_mode tts: speech synthesised with {engine}")
    return _tts_tracks(result)


def _tts_tracks(result) -> dict:
    """A :class:`TTSResult` -> ``{"person1": (waveform, rate), ...}``, the shape ``cond_audio`` entries take."""
    import numpy as np

    if not result.tracks:
        raise CLIError("--audio_mode tts: the TTS returned no audio")
    return {
        f"person{index + 1}": (np.asarray(track, dtype=np.float32), int(result.sampling_rate))
        for index, track in enumerate(result.tracks)
    }


# ================================================================================================================
# generate: command
# ================================================================================================================
def cmd_generate(args: argparse.Namespace) -> int:
    from .input_json import InputJSONError, load_input_json

    check_generate_args(args)
    try:
        input_data = load_input_json(args.input_json, audio_mode=args.audio_mode)
    except (InputJSONError, ImportError) as err:
        raise CLIError(str(err)) from err
    # Where the video goes is checked before any model loads: a 14B run must not fail at its last write.
    path = output_path(args.save_file or default_save_file(args, input_data["prompt"]))
    check_writable(path, "--save_file")
    audio_dir = Path(args.audio_save_dir) / Path(input_data["cond_image"]).stem if args.audio_save_dir else None
    if audio_dir is not None:
        check_writable(audio_dir / "sum.wav", "--audio_save_dir")
    device = resolve_device(args.device)
    args.device = str(device)
    dtype = resolve_dtype(args.dtype, device, tiny=args.tiny)
    seed_was_random = args.base_seed < 0
    if seed_was_random:
        args.base_seed = random.randint(0, 99_999_999)
    _init_distributed(args, device)
    if seed_was_random and _is_main_process():
        _note(f"--base_seed was negative: using {args.base_seed}")

    if args.audio_mode == "tts":
        input_data = dict(input_data, cond_audio=synthesize_tts(input_data["tts_audio"]))

    if args.tiny and args.height is None and input_data.get("image_size"):
        args.height, args.width = tiny_size(input_data["image_size"], args.size)
        _note(f"--tiny: generating at {args.height}x{args.width} (the bucket / 8); --height/--width override it")

    kwargs = build_generation_kwargs(args, input_data)
    pipe = load_pipeline(args, device, dtype)
    # Every process makes the same video; the first one writes it, chunk by chunk as they are decoded.
    if _is_main_process():
        kwargs["output_path"] = path
    try:
        output = pipe(**kwargs)
    except (ValueError, FileNotFoundError) as err:
        raise CLIError(flag_names(str(err))) from err
    if not _is_main_process():
        return 0

    if audio_dir is not None:
        import soundfile as sf

        audio_dir.mkdir(parents=True, exist_ok=True)
        if output.audio is not None:
            sf.write(audio_dir / "sum.wav", output.audio, output.sample_rate)
        if args.audio_mode == "tts":
            for key, (wave, rate) in input_data["cond_audio"].items():
                sf.write(audio_dir / f"{key}.wav", wave, rate)
    print(path)
    return 0


# The pipeline's argument names -> the flags that set them, for errors raised past the CLI's own checks.
_FLAG_OF_ARGUMENT = {
    "num_frames": "--frame_num",
    "motion_frames": "--motion_frame",
    "max_frames": "--max_frame_num",
    "num_inference_steps": "--sample_steps",
    "shift": "--sample_shift",
    "text_guidance_scale": "--sample_text_guide_scale",
    "audio_guidance_scale": "--sample_audio_guide_scale",
    "color_correction_strength": "--color_correction_strength",
    "height": "--height",
    "width": "--width",
    "resolution": "--size",
    "mode": "--mode",
}


def flag_names(message: str) -> str:
    """Names the command line's flags where the pipeline's message names its arguments (`num_frames`, ...)."""
    for argument, flag in _FLAG_OF_ARGUMENT.items():
        message = message.replace(f"`{argument}`", flag).replace(f"{argument}=", f"{flag} ")
    return message


def check_writable(path: Path, flag: str) -> None:
    """Fails at once, naming the flag, if `path` could not be created (read-only folder, a parent that is a file)."""
    path = Path(path)
    if path.is_dir():
        raise CLIError(f"{flag} {path}: is a folder; give a file name")
    parent = path.parent.absolute()
    ancestor = next(folder for folder in [parent, *parent.parents] if folder.exists())
    if not ancestor.is_dir():
        raise CLIError(f"{flag} {path}: {ancestor} is a file, not a folder")
    try:  # a real probe: permission bits say nothing for root, read-only mounts or /proc
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        raise CLIError(f"{flag} {path}: cannot write in {ancestor} ({err.strerror or err})") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise CLIError(f"{flag} {path}: exists and is not writable")


# ================================================================================================================
# download
# ================================================================================================================
def download_plan(target: str | os.PathLike, size: str = "multitalk-480", link: bool = True, tts: bool = False) -> list[dict]:
    """The snapshot_download calls ``download`` makes: ``[{repo_id, local_dir, allow_patterns, revision}, ...]``.

    When MultiTalk's index is linked into the Wan folder (the default), Wan's own index is not fetched: MultiTalk's
    replaces it (the README renames Wan's away), and re-running the download must not overwrite the link.
    """
    target = Path(target)
    wan_repo = WAN_REPOS[size]
    wan_patterns = list(WAN_ALLOW_PATTERNS) + ([] if link else [WAN_INDEX])
    plan = [
        dict(repo_id=wan_repo, local_dir=target / wan_repo.split("/")[1], allow_patterns=wan_patterns, revision=None),
        dict(repo_id=MULTITALK_REPO, local_dir=target / "MeiGen-MultiTalk", allow_patterns=list(MULTITALK_ALLOW_PATTERNS), revision=None),
        dict(repo_id=WAV2VEC_REPO, local_dir=target / "chinese-wav2vec2-base", allow_patterns=list(WAV2VEC_ALLOW_PATTERNS), revision=None),
        dict(
            repo_id=WAV2VEC_REPO, local_dir=target / "chinese-wav2vec2-base",
            allow_patterns=list(WAV2VEC_SAFETENSORS_PATTERNS), revision=WAV2VEC_SAFETENSORS_REVISION,
        ),
    ]
    if tts:
        plan.append(dict(repo_id=KOKORO_REPO, local_dir=target / "Kokoro-82M", allow_patterns=list(KOKORO_ALLOW_PATTERNS), revision=None))
    return plan


def _hub_error(err: Exception, repo_id: str) -> CLIError | None:
    """A clear CLIError for the Hub's connection and access errors, else None."""
    from huggingface_hub import errors as hub_errors

    offline = (
        getattr(hub_errors, "LocalEntryNotFoundError", ()),
        getattr(hub_errors, "OfflineModeIsEnabled", ()),
        ConnectionError,
        TimeoutError,
    )
    access = tuple(
        getattr(hub_errors, name)
        for name in ("GatedRepoError", "RepositoryNotFoundError", "RevisionNotFoundError")
        if hasattr(hub_errors, name)
    )
    http = getattr(hub_errors, "HTTPError", None)  # the HTTP client's base error (connection failures included)
    try:
        import requests

        offline += (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    except ImportError:  # pragma: no cover
        pass
    if access and isinstance(err, access):
        return CLIError(f"cannot download {repo_id}: {type(err).__name__}: {str(err).splitlines()[0]}")
    hub_http = getattr(hub_errors, "HfHubHTTPError", None)
    if hub_http is not None and isinstance(err, hub_http):
        return CLIError(f"the Hub refused {repo_id}: {str(err).splitlines()[0]}")
    if isinstance(err, offline) or (http is not None and isinstance(err, http)):
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return CLIError(
            f"cannot reach the Hugging Face Hub to get {repo_id} ({type(err).__name__}: {first}).\n"
            "  Check the network (and HF_ENDPOINT / HF_HUB_OFFLINE=1), then run the same command again: finished "
            "files are kept and the rest resumes."
        )
    return None


def _is_hub_connection_error(err: Exception) -> bool:
    from huggingface_hub import errors as hub_errors

    kinds = tuple(getattr(hub_errors, n) for n in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") if hasattr(hub_errors, n))
    return isinstance(err, kinds)


def _link(src: Path, dst: Path, copy: bool) -> str:
    """Links (or copies) ``src`` to ``dst``; returns what was done."""
    if dst.is_symlink() and dst.resolve() == src.resolve():
        return f"{dst} already links to {src}"
    if dst.is_symlink() or dst.exists():
        if dst.name == WAN_INDEX:
            old = dst.with_name(WAN_INDEX + "_old")
            if old.exists() or old.is_symlink():
                dst.unlink()
            else:
                dst.rename(old)  # as MultiTalk's README: keep Wan's index as ..._old
        elif dst.is_symlink():
            dst.unlink()
        else:
            return f"{dst} already present (left as is)"
    if not copy:
        try:
            dst.symlink_to(src.resolve())
            return f"linked {dst} -> {src.resolve()}"
        except OSError:
            pass  # e.g. no symlink privilege: copy
    shutil.copy2(src, dst)
    return f"copied {src} -> {dst}"


def link_multitalk_into_wan(wan_dir: Path, multitalk_dir: Path, copy: bool = False) -> list[str]:
    """MultiTalk README's step 2: its index and multitalk.safetensors into the Wan folder (Wan's index kept as _old)."""
    done = []
    for name in (WAN_INDEX, MULTITALK_FILE):
        src = multitalk_dir / name
        if not src.exists():
            raise CLIError(f"{src} is missing; the MeiGen-MultiTalk download is incomplete (run the command again)")
        done.append(_link(src, wan_dir / name, copy))
    return done


def cmd_download(args: argparse.Namespace) -> int:
    import huggingface_hub

    link = not args.no_link
    plan = download_plan(args.target, args.size, link=link, tts=args.tts)
    for step in plan:
        revision = f" (revision {step['revision']})" if step["revision"] else ""
        _note(f"downloading {step['repo_id']}{revision}: {', '.join(step['allow_patterns'])} -> {step['local_dir']}")
        step["local_dir"].mkdir(parents=True, exist_ok=True)
        try:
            huggingface_hub.snapshot_download(
                repo_id=step["repo_id"],
                revision=step["revision"],
                local_dir=step["local_dir"],
                allow_patterns=step["allow_patterns"],
                max_workers=args.max_workers,
            )
        except Exception as err:  # noqa: BLE001 - turned into a clear message when it is the Hub's
            clear = _hub_error(err, step["repo_id"])
            if clear is None:
                raise
            raise clear from err

    wan_dir, multitalk_dir, wav2vec_dir = plan[0]["local_dir"], plan[1]["local_dir"], plan[2]["local_dir"]
    if link:
        for line in link_multitalk_into_wan(wan_dir, multitalk_dir, copy=args.copy):
            _note(line)
    problems = [f"{wan_dir}: {label}" + (f" ({detail})" if detail else "") for label, ok, detail in inspect_wan_dir(wan_dir, link) if not ok]
    problems += [f"{wav2vec_dir}: {label}" + (f" ({detail})" if detail else "") for label, ok, detail in inspect_wav2vec_dir(wav2vec_dir) if not ok]
    if problems:
        raise CLIError("the download finished but files are missing:\n" + "\n".join(f"  {p}" for p in problems))
    extra = "" if link else f" --multitalk_dir {multitalk_dir}"
    print(f"{PROG} generate --ckpt_dir {wan_dir} --wav2vec_dir {wav2vec_dir}{extra} --input_json <your input>.json")
    return 0


# ================================================================================================================
# info
# ================================================================================================================
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
        rows.append((f"DiT shards named by {WAN_INDEX} ({len(shards)})", bool(shards) and not missing, f"missing: {', '.join(missing)}" if missing else ""))
    else:
        shards = sorted(p.name for p in path.glob("diffusion_pytorch_model*.safetensors")) if path.is_dir() else []
        rows.append((f"DiT shards ({len(shards)} found, no index)", bool(shards), ""))
    if need_linked_multitalk:
        rows.append((f"{MULTITALK_FILE} (MeiGen-MultiTalk's, linked in)", (path / MULTITALK_FILE).is_file(), ""))
        rows.append((
            f"{WAN_INDEX} is MeiGen-MultiTalk's (names {MULTITALK_FILE})", names_multitalk,
            "" if names_multitalk else "Wan's own index or none: link MeiGen-MultiTalk's in",
        ))
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
            return [("local folder", False, "not a folder here; from_pretrained would fetch it from the Hub (not checked)")]
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


def attention_backends(cuda: bool) -> list[tuple[str, str]]:
    """``[(backend, status), ...]`` for every attention backend diffusers knows."""
    try:
        from diffusers.models import attention_dispatch as dispatch
    except ImportError as err:  # pragma: no cover
        return [("?", f"diffusers' attention dispatcher is unavailable: {err}")]
    rows = []
    constraints = getattr(dispatch._AttentionBackendRegistry, "_constraints", {})
    cuda_only_native = {"_native_cudnn", "_native_flash", "_native_efficient"}
    for backend in dispatch.AttentionBackendName:
        try:
            dispatch._check_attention_backend_requirements(backend)
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


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from . import __version__

    out = []
    out.append(f"diffusers-multitalk {__version__}")
    for dist in ("torch", "diffusers", "transformers", "huggingface_hub", "accelerate", "jsonschema", "imageio-ffmpeg"):
        out.append(f"  {dist}: {_version(dist)}")
    cuda = torch.cuda.is_available()
    if cuda:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            out.append(f"device: cuda:{i} {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}")
    else:
        out.append(f"device: CPU ({os.cpu_count()} cores; no CUDA in this torch build or no GPU)")
    try:
        from .pipelines.video_io import get_ffmpeg_exe

        out.append(f"ffmpeg: {get_ffmpeg_exe()}")
    except Exception as err:  # noqa: BLE001
        out.append(f"ffmpeg: not found ({err})")
    from .audio.tts import find_kokoro_dir

    kokoro_dir = find_kokoro_dir()
    out.append(
        "TTS (--audio_mode tts): kokoro "
        + ("installed" if _version("kokoro") != "not installed" else "not installed (pip install 'diffusers-multitalk[tts]')")
        + f", Kokoro-82M weights {'at ' + str(kokoro_dir) if kokoro_dir else 'not found'}"
        + f", espeak-ng {shutil.which('espeak-ng') or 'not found (apt install espeak-ng)'}"
    )
    out.append(
        "quantisation (--quant int8|fp8): optimum-quanto "
        + ("installed" if _version("optimum-quanto") != "not installed" else "not installed (pip install 'diffusers-multitalk[quant]')")
    )
    out.append(
        "web app (multitalk serve): gradio "
        + ("installed" if _version("gradio") != "not installed" else "not installed (pip install 'diffusers-multitalk[app]')")
    )
    out.append("attention backends (diffusers):")
    for name, status in attention_backends(cuda):
        out.append(f"  {name:32s} {status}")

    incomplete = False
    checks = []
    if args.ckpt_dir:
        checks.append((f"--ckpt_dir {args.ckpt_dir}", inspect_wan_dir(Path(args.ckpt_dir), need_linked_multitalk=args.multitalk_dir is None)))
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


# ================================================================================================================
# convert
# ================================================================================================================
def cmd_convert(args: argparse.Namespace) -> int:
    from .loaders.convert import convert_original_to_diffusers

    result = convert_original_to_diffusers(
        wan_dir=args.wan_dir,
        multitalk_dir=args.multitalk_dir,
        wav2vec_dir=args.wav2vec_dir,
        output_dir=args.output_dir,
        dtype=args.dtype,
        lora_dir=args.lora_dir,
        lora_scale=args.lora_scale,
        force=args.force,
        push_to_hub=args.push_to_hub,
    )
    print(result if result is not None else args.output_dir)
    return 0


# ================================================================================================================
# serve
# ================================================================================================================
def cmd_serve(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None:
        raise CLIError('the web app needs gradio: pip install "diffusers-multitalk[app]"')
    if args.port is not None and not 0 <= args.port <= 65535:
        raise CLIError(f"--port {args.port}: must be in 0..65535")
    from . import app  # imported here: gradio is an optional dependency

    app.launch(args)  # blocks until the server stops
    return 0


# ================================================================================================================
# entry point
# ================================================================================================================
def main(argv: Sequence[str] | None = None) -> int:
    """The ``multitalk`` console script; returns the exit status (argparse exits with 2 on bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    # SIGTERM unwinds like Ctrl-C, so the writers' cleanup runs and no part file stays behind.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{PROG} {args.command}: terminated", file=sys.stderr)
        return 143
    except Exception as err:  # noqa: BLE001 - one line, not a traceback; MULTITALK_TRACEBACK=1 shows it
        if os.environ.get("MULTITALK_TRACEBACK"):
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"{PROG} {args.command}: error: {type(err).__name__}: {first} (MULTITALK_TRACEBACK=1 shows where)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        _shutdown_distributed()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
