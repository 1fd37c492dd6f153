"""A request (input JSON, form fields, an API body) -> the pipeline's arguments; TTS speech; where outputs go."""

from __future__ import annotations

import datetime
import os
import tempfile
from pathlib import Path

from ..utils.defaults import random_seed
from ..variants import get_size
from .errors import UserError, note
from .options import SIZES, motion_frames, variant_of_options, with_model_defaults
from .spec import FieldProblem, GenerateOptions, RequestError


def _person_order(block: dict) -> list[str]:
    keys = [k for k in block if str(k).startswith("person") and str(k)[6:].isdigit()]
    return sorted(keys, key=lambda k: int(str(k)[6:]))


def build_generation_kwargs(args: GenerateOptions, input_data: dict) -> dict:
    """Maps the ``generate`` flags and the input JSON to ``WanMultiTalkPipeline.__call__`` arguments.

    A pure function of its inputs (no model, no file access); ``input_data`` is the input JSON (paths as they are
    given, or as :func:`~diffusers_multitalk.input_json.load_input_json` resolved them; ``cond_audio`` values may
    also be ``(waveform, sampling_rate)`` tuples, e.g. from TTS). A negative ``--base_seed`` draws a random seed,
    as the reference does.
    """
    import torch

    with_model_defaults(args, input_data)
    if args.size not in SIZES:
        raise RequestError([FieldProblem("size", f"expected one of {', '.join(SIZES)}", args.size)])
    audio_block = input_data.get("cond_audio") or {}
    persons = _person_order(audio_block)
    if not persons:
        why = "the input has no audio: give person1 (and person2, ...), or set {audio_mode} to tts"
        raise RequestError([FieldProblem("cond_audio", why)])
    bbox_block = input_data.get("bbox") or None
    bbox = [list(bbox_block[k]) for k in persons] if bbox_block else None
    seed = args.base_seed if args.base_seed >= 0 else random_seed()
    device = getattr(args, "device", None) or "cpu"
    # TTS tracks are already laid out in time (each person silent while the other speaks): mix them as they are.
    audio_type = "para" if args.audio_mode == "tts" else input_data.get("audio_type") or "add"
    if input_data.get("cond_video") and not input_data.get("cond_video_is_image"):
        visual = dict(video=input_data["cond_video"])  # the video to dub (a model that dubs: the registry)
    else:
        visual = dict(image=input_data.get("cond_image") or input_data.get("cond_video"))
    return dict(
        **visual,
        audio=[audio_block[k] for k in persons],
        prompt=input_data["prompt"],
        negative_prompt=input_data.get("negative_prompt"),  # None: the reference's default
        audio_type=audio_type,
        # the reference loudness-normalises recordings but drives the video with TTS speech as synthesised
        normalize_loudness=args.audio_mode != "tts",
        bbox=bbox,
        # the size's bucket table (the registry's `Size.buckets`), which every pipeline takes whatever model it runs
        resolution=get_size(args.size).buckets,
        height=getattr(args, "height", None),
        width=getattr(args, "width", None),
        allow_upscale=True,  # the reference upsamples images smaller than the bucket
        mode=args.mode,
        num_frames=args.frame_num,
        motion_frames=motion_frames(args, input_data),
        max_frames=args.max_frame_num,
        # unset: the model's defaults (the variant registry: its steps, the size's shift)
        num_inference_steps=args.sample_steps
        if args.sample_steps is not None
        else variant_of_options(args, input_data).sample_steps,
        shift=float(args.sample_shift) if args.sample_shift is not None else get_size(args.size).shift,
        guidance_scale=float(args.sample_text_guide_scale),
        audio_guidance_scale=float(args.sample_audio_guide_scale),
        use_apg=bool(args.use_apg),
        apg_momentum=float(args.apg_momentum),
        apg_norm_threshold=float(args.apg_norm_threshold),
        color_correction_strength=float(args.color_correction_strength),
        generator=torch.Generator(device=device).manual_seed(seed),
    )


def default_save_file(args: GenerateOptions, prompt: str, now: datetime.datetime | None = None) -> str:
    """The reference's default output name: ``{task}_{size}_{ulysses}_{ring}_{prompt[:50]}_{YYYYmmdd_HHMMSS}``."""
    now = now or datetime.datetime.now()
    with_model_defaults(args)  # the size named is the one the model runs at
    words = prompt.replace(" ", "_").replace("/", "_")[:50]
    return f"{args.task}_{args.size}_{args.ulysses_size}_{args.ring_size}_{words}_{now.strftime('%Y%m%d_%H%M%S')}"


def output_path(save_file: str) -> Path:
    """``save_file`` + ``.mp4`` (not doubled when it already ends so)."""
    return Path(save_file if save_file.lower().endswith(".mp4") else save_file + ".mp4")


def tiny_size(image_size: tuple[int, int], size: str) -> tuple[int, int]:
    """For --tiny without --height/--width: the image's bucket divided by 8, rounded to multiples of 16."""
    from ..pipelines.image_processing import closest_bucket, resolution_buckets

    bucket_h, bucket_w = closest_bucket(image_size[0], image_size[1], resolution_buckets(get_size(size).buckets))
    return tuple(max(16, int(v / 8 / 16 + 0.5) * 16) for v in (bucket_h, bucket_w))


def speak(tts_block: dict, engine: str | None = None):
    """The one TTS entry of the front ends: an input JSON's ``tts_audio`` block (``text`` with ``(sN)`` turns,
    ``humanN_voice``) -> ``({"person1": (waveform, sampling_rate), ...}, TTSResult)``, through
    :func:`audio.tts.tts_from_json_block`; any problem is a `UserError`."""
    from ..audio.tts import TTSEngineUnavailableError, tts_from_json_block

    try:
        result = tts_from_json_block(tts_block, engine=None if engine in (None, "auto") else engine)
    except (TTSEngineUnavailableError, ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        raise UserError(str(err)) from err
    return tts_tracks(result), result


def synthesize_tts(tts_block: dict) -> dict:
    """Speech from a TTS script (`audio_mode` tts): :func:`speak`, naming the script in errors and the engine on
    stderr."""
    try:
        tracks, result = speak(tts_block)
    except UserError as err:
        raise RequestError([FieldProblem("tts_audio.text", str(err))]) from err
    engine = getattr(result, "engine", None)
    if engine:
        note(f"TTS: speech synthesised with {engine}")
    return tracks


def tts_tracks(result) -> dict:
    """A :class:`TTSResult` -> ``{"person1": (waveform, rate), ...}``, the shape ``cond_audio`` entries take."""
    import numpy as np

    if not result.tracks:
        raise UserError("TTS: the engine returned no audio")
    return {
        f"person{index + 1}": (np.asarray(track, dtype=np.float32), int(result.sampling_rate))
        for index, track in enumerate(result.tracks)
    }


def check_writable(path: Path, field: str) -> None:
    """Fails at once, naming the field, if `path` could not be created (read-only folder, a parent that is a file)."""
    path = Path(path)

    def refuse(why: str):
        return RequestError([FieldProblem(field, why, path)])

    if path.is_dir():
        raise refuse("is a folder; give a file name")
    parent = path.parent.absolute()
    ancestor = next(folder for folder in [parent, *parent.parents] if folder.exists())
    if not ancestor.is_dir():
        raise refuse(f"{ancestor} is a file, not a folder")
    try:  # a real probe: permission bits say nothing for root, read-only mounts or /proc
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        raise refuse(f"cannot write in {ancestor} ({err.strerror or err})") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise refuse("exists and is not writable")
