"""An API job's settings -> checked generation options, and one job (an image to animate or a video to dub) run
through the pipeline with progress and cancellation (the same flag -> argument mapping as `multitalk generate`)."""

from __future__ import annotations

import json
import logging
import re
import types
import typing
from copy import copy
from pathlib import Path
from typing import Callable

from .. import runtime
from .._diffusers_compat import execution_device
from ..runtime.conversation import resolve_conversation
from ..runtime.spec import GenerateOptions
from ..variants import dubbing_requirement, get_size, variant_of_pipeline
from .live import live_dir
from .schemas import JobSettings


logger = logging.getLogger(__name__)

# The settings a job may carry (schemas.JobSettings, built from the runtime's GenerationSettings): the generation
# settings (not the model's, fixed when the server starts) and the input JSON's fields besides the prompt, image and
# audio (which are the form's); each with the JSON types it takes and whether it may be null.
_JSON_TYPES = {int: (int,), float: (int, float), bool: (bool,), str: (str,), list: (list, dict), dict: (list, dict)}


def _json_types(annotation) -> tuple[tuple, bool]:
    """(the JSON types a field takes, whether it may be null) from its annotation."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = typing.get_args(annotation) if union else (annotation,)
    first = next(a for a in members if a is not type(None))
    base = typing.get_origin(first) or first
    if base is typing.Literal:
        base = type(typing.get_args(first)[0])
    return _JSON_TYPES[base], type(None) in members


_FIELDS = {name: _json_types(info.annotation) for name, info in JobSettings.model_fields.items()}
GENERATION_FIELDS = {name: types for name, (types, _) in _FIELDS.items() if name in runtime.GENERATE_DEFAULTS}
INPUT_FIELDS = {name: types for name, (types, _) in _FIELDS.items() if name not in GENERATION_FIELDS}
SETTINGS_FIELDS = {**GENERATION_FIELDS, **INPUT_FIELDS}
_NULLABLE = {name for name, (_, nullable) in _FIELDS.items() if nullable}


NEEDS_DUBBING_MODEL = f"video: {dubbing_requirement()}, or send a reference picture as 'image'"


def can_dub(pipe) -> bool:
    """Whether the pipeline dubs videos: its model's entry in the variant registry says so."""
    return variant_of_pipeline(pipe).dubs_video


class JobCancelled(Exception):
    """Raised from the step callback when a running job is cancelled: the pipeline stops at that step and its
    writer removes the part file."""


def api_words(field: str) -> str:
    """A request field as the HTTP API says it: a setting as `settings.<name>`, a person's speech as the `audio` upload
    it came in (`audio[1] (person2)`), a box as `settings.bbox (person2)`, the reference as `image` or `video`."""
    found = re.fullmatch(r"(cond_audio|bbox)\.person([1-9][0-9]*)", field)
    if found and found.group(1) == "cond_audio":
        return f"audio[{int(found.group(2)) - 1}] (person{found.group(2)})"
    if found:
        return f"settings.bbox (person{found.group(2)})"
    named = {"cond_image": "image", "cond_video": "video", "prompt": "prompt", "tts_audio.text": "tts",
             "cond_audio": "audio", "cond_audio.conversation": "conversation"}  # fmt: skip
    return named.get(field, f"settings.{field}")


def refusal(err: runtime.RequestError) -> str:
    """A RequestError's problems as the API's error body says them (JSON field names, never a command-line flag)."""
    return err.render(api_words)


def parse_settings(text: str | None, server_options: GenerateOptions) -> tuple[GenerateOptions, dict]:
    """The `settings` form field (a JSON object) -> (generation options, input fields). Raises UserError naming
    the field: unknown keys, model options, wrong types, and (a RequestError) whatever the runtime's one check of the
    generation settings (`runtime.settings_problems`) refuses."""
    if text is None or not text.strip():
        settings = {}
    else:
        try:
            settings = json.loads(text)
        except ValueError as err:
            raise runtime.UserError(f'settings: not JSON ({err}); send an object such as {{"mode": "clip"}}') from None
    if not isinstance(settings, dict):
        raise runtime.UserError(f"settings: expected a JSON object of generation fields, got {type(settings).__name__}")
    model_fields = sorted(k for k in settings if k not in SETTINGS_FIELDS and k in runtime.GENERATE_DEFAULTS)
    if model_fields:
        raise runtime.UserError(
            f"settings: {', '.join(model_fields)}: fixed when the server starts (the model it serves), not per job"
        )
    unknown = sorted(k for k in settings if k not in SETTINGS_FIELDS)
    if unknown:
        raise runtime.UserError(
            f"settings: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(SETTINGS_FIELDS))}"
        )
    for name, value in settings.items():
        types = SETTINGS_FIELDS[name]
        nullable = name in _NULLABLE
        wrong = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if wrong and not (value is None and nullable):
            expected = "/".join("number" if t is float else t.__name__ for t in types)
            raise runtime.UserError(f"settings.{name}: expected {expected}, got {json.dumps(value)}")
    generation = {k: v for k, v in settings.items() if k in GENERATION_FIELDS}
    options = runtime.generate_options(server_options, **generation)
    problems = runtime.settings_problems(options)  # the same check as the command line's and the web app's
    extras = {k: v for k, v in settings.items() if k in INPUT_FIELDS}
    if extras.get("audio_type", "add") not in ("add", "para"):
        why = "expected add (turns) or para (together)"
        problems.append(runtime.FieldProblem("audio_type", why, extras["audio_type"]))
    if problems:
        raise runtime.RequestError(problems)
    return options, extras


def bbox_block(bbox, num_persons: int) -> dict | None:
    """settings.bbox (a list of [top, left, bottom, right] per person, or {"person1": [...], ...}) -> the input
    JSON's block."""
    if bbox is None:
        return None
    boxes = list(bbox.values()) if isinstance(bbox, dict) else list(bbox)
    if len(boxes) != num_persons:
        raise runtime.RequestError(
            [runtime.FieldProblem("bbox", f"{len(boxes)} boxes for {num_persons} persons: give one per person")]
        )
    return {f"person{i}": box for i, box in enumerate(boxes, start=1)}


def run_job(pipe, job, on_progress: Callable[[dict], None], should_stop: Callable[[], bool]) -> Path:
    """Runs one job (an image or a video to dub, speech, prompt, options) to `job.folder / "video.mp4"`; the
    pipeline writes it atomically. `on_progress` gets {step, steps, chunk, chunks}; `should_stop()` True cancels at
    the next step."""
    options = copy(job.options)
    options.device = str(execution_device(pipe))
    if job.video_path is not None:
        if not can_dub(pipe):  # submit_job could not tell before the model was loaded (a lazy loader)
            raise runtime.UserError(NEEDS_DUBBING_MODEL)
        source_size = job.source_size  # from ffmpeg's header when the upload was checked
        visual = {"cond_video": str(job.video_path), "cond_video_is_image": False}
    else:
        from PIL import Image

        with Image.open(job.image_path) as opened:
            image = opened.convert("RGB")
        source_size = (image.height, image.width)
        visual = {"cond_image": image}
    if options.height is None and options.tiny:
        options.height, options.width = runtime.tiny_size(source_size, options.size)
    if job.tts is not None:
        voices = {k: v for k, v in job.extras.items() if k.endswith("_voice")}
        cond_audio = runtime.synthesize_tts({"text": job.tts, **voices})
        options.audio_mode = "tts"
        seconds = [len(wave) / rate for wave, rate in cond_audio.values()]
    else:
        cond_audio = {f"person{i}": str(path) for i, path in enumerate(job.audio_paths, start=1)}
        seconds = job.audio_seconds
    if should_stop():
        raise JobCancelled()
    input_data = {"prompt": job.prompt, **visual, "cond_audio": cond_audio,
                  "audio_type": job.extras.get("audio_type", "add")}  # fmt: skip
    if job.extras.get("negative_prompt") is not None:
        input_data["negative_prompt"] = job.extras["negative_prompt"]
    conversation = job.extras.get("conversation")
    persons = conversation["num_persons"] if conversation else len(cond_audio)
    boxes = bbox_block(job.extras.get("bbox"), persons or len(job.extras.get("bbox") or ()))
    if boxes:
        input_data["bbox"] = boxes
    if conversation is not None:  # one mixed recording: split by speaker; the binding goes into the job's warnings
        input_data = dict(input_data, cond_audio={}, conversation=dict(conversation, recording=str(job.audio_paths[0])))
        input_data = resolve_conversation(input_data, say=logger.warning)
    kwargs = runtime.build_generation_kwargs(options, input_data)

    steps = kwargs["num_inference_steps"]
    chunks = _estimate_chunks(pipe, seconds, input_data["audio_type"], kwargs)
    on_progress(dict(step=0, steps=steps * chunks if chunks else None, chunk=0, chunks=chunks))

    def step_end(pipeline, index, timestep, callback_kwargs):
        chunk = index // steps + 1
        total = max(chunks or 0, chunk)
        on_progress(dict(step=index + 1, steps=steps * total, chunk=chunk, chunks=total))
        if should_stop():
            pipeline._interrupt = True
            raise JobCancelled()  # stops here: the writer aborts, no part file is left
        return callback_kwargs

    transformer = pipe.transformer
    transformer.disable_teacache()  # per job, as the web app does
    if options.use_teacache:
        size = get_size(options.size)  # the size's fitted coefficients, from the variant registry
        transformer.enable_teacache(
            threshold=float(options.teacache_thresh), resolution=size.buckets, coefficients=size.teacache_coefficients
        )
    path = Path(job.folder) / "video.mp4"
    with runtime.prompt_said(job.prompt):  # the job's warnings have it from the submission
        pipe(**kwargs, output_path=path, live_dir=live_dir(job.folder), callback_on_step_end=step_end,
             callback_on_step_end_tensor_inputs=["latents"])  # fmt: skip
    return path


def _estimate_chunks(pipe, seconds: list[float], audio_type: str, kwargs: dict) -> int | None:
    """The chunks the pipeline will make, from the speech's length (the step callback corrects it if off). Both
    pipelines follow the audio, a dub too; the pipeline's own arguments carry the model's default motion frames."""
    try:
        total = sum(seconds) if audio_type == "add" else max(seconds)
        plan = pipe.plan_video(int(round(total * 25)), kwargs["num_frames"], kwargs["motion_frames"],
                               kwargs["max_frames"], kwargs["mode"], warn=False)  # fmt: skip
        return int(plan.num_chunks)
    except Exception:  # noqa: BLE001 - an estimate only
        return None
