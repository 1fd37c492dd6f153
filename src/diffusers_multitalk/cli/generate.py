"""`multitalk generate`: an input JSON and flags -> an mp4, through the runtime."""

from __future__ import annotations

import os
from argparse import Namespace
from pathlib import Path

from ..runtime.conversation import resolve_conversation
from ..runtime.distributed import init_distributed, is_main_process, leave_together
from ..runtime.errors import UserError, note
from ..runtime.inputs import prompt_said
from ..runtime.kernels import check_self_attention_kernel
from ..runtime.loading import load_pipeline, resolve_device, resolve_dtype
from ..runtime.options import apply_preset_options, check_generate_args, variant_of_options
from ..runtime.quantization import check_quantization, import_torchao_quietly, resolve_auto_quant, torchao_available
from ..runtime.request import (
    build_generation_kwargs,
    check_writable,
    default_save_file,
    output_path,
    synthesize_tts,
    tiny_size,
)
from ..runtime.spec import FieldProblem, GenerateOptions, RequestError
from ..utils.defaults import random_seed
from .parser import FLAG_OF_ARGUMENT, flag_words


class _RankFailed(Exception):
    """Some rank failed a step that every rank takes; carries the first failing rank's one-line message."""


def _on_every_rank(step, *step_args):
    """Runs `step` on this rank; with several processes they then agree (one all_gather): if any rank raised, every
    rank raises `_RankFailed` with the first failing rank's message, so none waits for a collective the failed one
    never reaches."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return step(*step_args)
    error, result = None, None
    try:
        result = step(*step_args)
    except Exception as err:  # noqa: BLE001 - shared with the other ranks, then raised on every one
        error = err
    messages = [None] * dist.get_world_size()
    if isinstance(error, RequestError):  # every problem, in the command line's words
        line = "; ".join(problem.render(flag_words) for problem in error.problems)
    else:
        line = None if error is None else (str(error).strip().splitlines() or [type(error).__name__])[0]
    if error is not None and not isinstance(error, UserError):
        line = f"{type(error).__name__}: {line}"
    dist.all_gather_object(messages, line)
    failed = [(rank, message) for rank, message in enumerate(messages) if message is not None]
    if failed:
        rank, message = failed[0]
        raise _RankFailed(message if len(failed) == len(messages) else f"rank {rank}: {message}") from error
    return result


def cmd_generate(args: Namespace) -> int:
    options = GenerateOptions.from_fields(args)  # the parsed flags -> the runtime's typed options
    try:
        status = _generate(options)
    except _RankFailed as err:  # every rank stops; the first prints the one message
        leave_together()
        if is_main_process():
            raise UserError(str(err)) from err
        return 1
    leave_together()
    return status


def _read_input(args: GenerateOptions):
    """The input JSON checked (its files exist and decode, no speech is silent, the image is large enough, the boxes
    are inside it) and where the outputs go, before torch is imported: a bad input answers at once. Every process
    reads the same files, so each refuses alike. Returns (input, video path, audio folder)."""
    from ..input_json import load_input_json

    try:  # an InputJSONError lists every problem by its JSON path (cli.main: exit status 2)
        input_data = load_input_json(args.input_json, audio_mode=args.audio_mode)
    except ImportError as err:
        raise UserError(str(err)) from err
    variant = variant_of_options(args, input_data)
    args.task = variant.task  # a cond_video input (or a model's weights flags or sizes) picks that model
    if not variant.dubs_video and input_data.get("cond_image") is None:
        raise UserError(f"the input has no cond_image ({variant.name} needs an image)")
    # Where the video goes is checked before any model loads: a 14B run must not fail at its last write.
    path = output_path(args.save_file or default_save_file(args, input_data["prompt"]))
    check_writable(path, "save_file")
    if path.exists():  # replaced, not refused (the reference overwrites too), and said before anything runs
        note(
            f"{flag_words('save_file')} {path}: exists; the new video replaces it once complete (until then the old "
            "file stays)"
        )
    audio_dir = (
        Path(args.audio_save_dir) / Path(input_data.get("cond_image") or input_data["cond_video"]).stem
        if args.audio_save_dir
        else None
    )
    if audio_dir is not None:
        check_writable(audio_dir / "sum.wav", "audio_save_dir")
    if args.binding_preview:
        if not input_data.get("conversation"):
            why = "draws a conversation's persons: the input has no cond_audio.conversation (one mixed recording)"
            raise RequestError([FieldProblem("binding_preview", why)])
        check_writable(Path(args.binding_preview), "binding_preview")
    if args.live:
        _check_live(args)
    return input_data, path, audio_dir


def _check_live(args: GenerateOptions) -> None:
    """--live DIR: a folder that can be written (its old stream is replaced), one stream per run."""
    live = Path(args.live)
    if live.exists() and not live.is_dir():
        raise RequestError([FieldProblem("live", "is a file; give a folder for the stream", live)])
    if args.scene_seg:
        why = "streams one take: --scene_seg makes one per scene; leave one of them out"
        raise RequestError([FieldProblem("live", why, live)])
    check_writable(live / "live.m3u8", "live")


def _prepare(args: GenerateOptions, input_data: dict):
    """TTS speech, the --tiny size and the call arguments (may differ per rank)."""
    if args.audio_mode == "tts":
        input_data = dict(input_data, cond_audio=synthesize_tts(input_data["tts_audio"]))
    if input_data.get("conversation"):  # one mixed recording: split by speaker, faces found, said and drawn
        main = is_main_process()
        preview = args.binding_preview if main else None
        input_data = resolve_conversation(input_data, preview, say=note if main else lambda line: None)

    if args.tiny and args.height is None and input_data.get("image_size"):
        args.height, args.width = tiny_size(input_data["image_size"], args.size)
        note(f"--tiny: generating at {args.width}x{args.height} (WxH, the bucket / 8); --height/--width override it")
    return input_data, build_generation_kwargs(args, input_data)


def _generate(args: GenerateOptions) -> int:
    apply_preset_options(args)
    check_generate_args(args)  # every flag checked before torch is imported: a bad value answers at once
    # and the input, before torch too; under torchrun after the processes join instead, so that a rank whose files
    # fail stops every rank (one that failed before joining would leave the others waiting for it)
    several = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    if not several:
        input_data, path, audio_dir = _read_input(args)
    if torchao_available():
        import_torchao_quietly()  # before diffusers, peft or transformers import it (they do whenever it is installed)
    device = resolve_device(args.device)
    args.device = str(device)
    dtype = resolve_dtype(args.dtype, device, tiny=args.tiny)
    seed_was_random = args.base_seed < 0
    if seed_was_random:
        args.base_seed = random_seed()
    # The processes join first (the same flags everywhere), so that a rank whose files fail stops all of them.
    init_distributed(args, device)
    if several:
        input_data, path, audio_dir = _on_every_rank(_read_input, args)
    if seed_was_random and is_main_process():
        note(f"--base_seed was negative: using {args.base_seed}")
    _on_every_rank(resolve_auto_quant, args, device)  # --quant auto (--preset fast): fp8 where it runs
    _on_every_rank(check_quantization, args, device)  # FP8 needs a recent GPU: said before TTS or any loading
    _on_every_rank(check_self_attention_kernel, args, device)
    input_data, kwargs = _on_every_rank(_prepare, args, input_data)
    pipe = _on_every_rank(load_pipeline, args, device, dtype)
    # Every process makes the same video; the first one writes it, chunk by chunk as they are decoded.
    if is_main_process():
        kwargs["output_path"] = path
        if args.live:
            kwargs["live_dir"] = Path(args.live)
            note(f"{flag_words('live')}: {Path(args.live) / 'live.m3u8'} grows by a segment per chunk")
    try:
        with prompt_said(kwargs["prompt"]):  # the input's check said a cut prompt already: once is enough
            if args.scene_seg:
                from ..runtime.scenes import generate_by_scene

                output = generate_by_scene(pipe, kwargs, kwargs.pop("output_path", None))
            else:
                output = pipe(**kwargs)
    except (ValueError, FileNotFoundError) as err:
        raise UserError(flag_names(str(err))) from err
    if not is_main_process():
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


def flag_names(message: str) -> str:
    """Names the command line's flags where the pipeline's message names its arguments (`num_frames`, ...)."""
    for argument, flag in FLAG_OF_ARGUMENT.items():
        message = message.replace(f"`{argument}`", flag).replace(f"{argument}=", f"{flag} ")
    return message
