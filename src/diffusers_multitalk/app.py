"""The MultiTalk web app: a Gradio front end for [`WanMultiTalkPipeline`] (``multitalk serve``).

    multitalk serve --tiny                      # the embedded tiny model: no downloads, noise-like video
    multitalk serve --ckpt_dir weights/Wan2.1-I2V-14B-480P --wav2vec_dir weights/chinese-wav2vec2-base

One reference image, speech for 1 to 4 persons (recordings, or a ``(s1) ... (s2) ...`` script spoken by TTS) and a
prompt give an mp4 with the mixed speech. The model is loaded by the CLI's own machinery
(:func:`~diffusers_multitalk.runtime.check_generate_args`, :func:`~diffusers_multitalk.runtime.load_pipeline`) and the
settings reach the pipeline through the CLI's flag -> argument mapping
(:func:`~diffusers_multitalk.runtime.build_generation_kwargs`), so the app and ``multitalk generate`` behave alike.

Everything the UI does goes through :func:`generate_video`, which can be called directly (no browser):

```py
>>> from diffusers_multitalk import make_tiny_pipeline
>>> from diffusers_multitalk.app import generate_video

>>> result = generate_video(
...     make_tiny_pipeline(), "examples/assets/two_people.png", "Two friends chat.",
...     audio=["examples/assets/speaker1.wav", "examples/assets/speaker2.wav"],
...     num_frames=5, num_inference_steps=2, height=64, width=112, output_dir="outputs/app",
... )
>>> result.video, result.status
```
"""

from __future__ import annotations

import datetime
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from . import runtime
from ._diffusers_compat import execution_device
from .pipelines.pipeline_wan_multitalk import DEFAULT_NEGATIVE_PROMPT
from .runtime.live import follow_live
from .utils.defaults import random_seed
from .variants import VARIANTS, dubbing_requirement, get_size


try:
    import gradio as gr
except ImportError as err:  # pragma: no cover - exercised only without gradio
    raise ImportError(f'The MultiTalk web app needs gradio: pip install "diffusers-multitalk[app]" ({err})') from err


__all__ = ["GenerationResult", "build_app", "generate_video", "launch", "pipeline_loader"]

MAX_PERSONS = 4
DEFAULT_PERSONS = 2
FPS = 25
# Kokoro-82M voice names (espeak-ng maps them to a voice of the same language and gender when Kokoro is absent).
DEFAULT_VOICES = ("af_heart", "am_adam", "af_bella", "am_michael")
TTS_ENGINES = ("auto", "kokoro", "espeak-ng")
SPEECH_FILES = "Audio files"
SPEECH_TTS = "TTS script"
SPEECH_CONVERSATION = "One recording (conversation)"
DEFAULT_OUTPUT_DIR = Path("outputs") / "app"

# Field labels: the UI shows them, and error messages name the field with them.
IMAGE_LABEL = "Reference image"
VIDEO_LABEL = f"Video to dub ({' or '.join(v.name for v in VARIANTS if v.dubs_video)})"
PROMPT_LABEL = "Prompt"
TTS_TEXT_LABEL = "TTS script"
PERSONS_LABEL = "Persons"
CONVERSATION_LABEL = "Conversation recording"
BINDING_LABEL = "Binding: the person of speaker 1, 2, ..."


# The settings' labels, by the runtime's field names (runtime/spec.py): the form shows them, and a problem the
# runtime's checks find names the field with them.
FIELD_LABELS = {
    "cond_image": IMAGE_LABEL,
    "cond_video": VIDEO_LABEL,
    "prompt": PROMPT_LABEL,
    "tts_audio.text": TTS_TEXT_LABEL,
    "cond_audio.conversation": CONVERSATION_LABEL,
    "audio_type": "Recordings play",
    "size": "Resolution",
    "mode": "Mode",
    "frame_num": "Frames per chunk (4n+1)",
    "max_frame_num": "Max frames (0: as long as the speech)",
    "sample_steps": "Sampling steps",
    "base_seed": "Seed (-1: random)",
    "sample_shift": "Shift",
    "sample_text_guide_scale": "Text guidance",
    "sample_audio_guide_scale": "Audio guidance",
    "use_teacache": "TeaCache",
    "teacache_thresh": "TeaCache threshold",
    "use_apg": "APG",
    "color_correction_strength": "Colour correction",
    "motion_frame": "Motion frames (streaming)",
    "height": "Height",
    "width": "Width",
}
# How a person who only listens is made: not in this app, where every person speaks.
LISTENER = 'a person who only listens is an input JSON\'s "None" entry (multitalk generate); here every person speaks'


def label_words(field: str) -> str:
    """A request field as the form says it: its label (`Person 2 speech` for `cond_audio.person2`)."""
    found = re.fullmatch(r"(cond_audio|bbox)\.person([1-9][0-9]*)", field)
    if found:
        return (audio_label if found.group(1) == "cond_audio" else bbox_label)(int(found.group(2)))
    return FIELD_LABELS.get(field, field)


def _refuse(problems) -> gr.Error:
    """The runtime's problems as one `gr.Error`, each naming its field by the form's label."""
    return gr.Error(runtime.RequestError(problems).render(label_words, given="{name} = {value}"))


def audio_label(person: int) -> str:
    return f"Person {person} speech"


def voice_label(person: int) -> str:
    return f"Person {person} voice"


def bbox_label(person: int) -> str:
    return f"Person {person} box"


@dataclass
class GenerationResult:
    """What :func:`generate_video` returns.

    Args:
        video: path of the written mp4 (H.264 with the mixed speech as AAC).
        status: one line for the UI saying what ran (speech source and TTS engine, frames, size, steps, seed, time).
        seed: the seed used (drawn at random when a negative one was asked for).
        num_frames: frames in the video.
        tts_engine: the TTS engine that spoke the script ("kokoro" or "espeak-ng"), None for recordings.
    """

    video: str
    status: str
    seed: int
    num_frames: int
    tts_engine: str | None = None


# ================================================================================================================
# Model loading
# ================================================================================================================
def pipeline_loader(source) -> Callable[[], Any]:
    """A function returning the pipeline, loading it on its first call only (the runtime's `PipelineHolder`).

    Args:
        source: a [`WanMultiTalkPipeline`], a function returning one (e.g. `make_tiny_pipeline`), or ``serve``'s /
            ``generate``'s parsed model options (`--tiny`, `--model` or `--ckpt_dir`/`--wav2vec_dir`, with
            `--lora_dir`, `--device`, `--dtype`, `--offload_model`, ...), checked at once.
    """
    return runtime.PipelineHolder(source)


# ================================================================================================================
# Generation
# ================================================================================================================
def _is_empty(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _parse_bboxes(bboxes: Sequence | None, num_persons: int, image_size: tuple[int, int]) -> list[list[float]] | None:
    """Per-person boxes from the UI ("top, left, bottom, right" text or 4 numbers) -> the pipeline's `bbox`, checked
    inside the image (`image_size`: (height, width)) by the runtime's one check."""
    entries = list(bboxes or [])[:num_persons]
    entries += [None] * (num_persons - len(entries))
    given = [not _is_empty(entry) for entry in entries]
    if not any(given):
        return None
    boxes = {}
    for person, entry in enumerate(entries, start=1):
        label = bbox_label(person)
        if _is_empty(entry):
            raise gr.Error(f"{label}: empty, while other persons have a box; give a box for every person or none.")
        values = entry.replace(",", " ").split() if isinstance(entry, str) else list(entry)
        try:
            box = [float(v) for v in values]
        except (TypeError, ValueError):
            raise gr.Error(
                f"{label}: {entry!r} is not four numbers 'top, left, bottom, right' (image pixels)."
            ) from None
        if len(box) != 4:
            raise gr.Error(f"{label}: expected four numbers 'top, left, bottom, right' (image pixels), got {len(box)}.")
        boxes[f"person{person}"] = box
    problems = runtime.box_problems(boxes, (image_size[1], image_size[0]))
    if problems:
        raise _refuse(problems)
    return list(boxes.values())


def _conversation(conversation, binding: str | None, source, num_persons: int, bbox):
    """One mixed recording -> (tracks, boxes, the `Conversation`): checked first (it decodes and is heard), then
    diarized into `num_persons` speakers bound to the persons (default: the first voice heard drives the leftmost
    face; `binding` "2, 1" swaps), whose faces are found on `source` unless `bbox` places them."""
    from .pipelines.conversation import prepare_conversation

    if _is_empty(conversation):
        raise gr.Error(f"{CONVERSATION_LABEL}: missing; upload the recording of everyone speaking.")
    problems = runtime.speech_problems({"conversation": conversation}, LISTENER)
    if problems:
        raise _refuse(problems)
    order = None
    if not _is_empty(binding):
        try:
            order = [int(v) for v in str(binding).replace(",", " ").split()]
        except ValueError:
            order = []
        if sorted(order) != list(range(1, num_persons + 1)):
            example = ", ".join(str(n) for n in range(num_persons, 0, -1))
            raise gr.Error(
                f"{BINDING_LABEL}: {binding!r}; give each of the {num_persons} speakers a different person 1.."
                f"{num_persons}, e.g. '{example}'."
            )
    talk = prepare_conversation(conversation, source, num_persons, order, boxes=bbox)
    boxes = [list(box) for box in talk.boxes.boxes] if talk.num_persons > 1 else None
    return [(track, talk.sample_rate) for track in talk.tracks], boxes, talk


def preview_binding(image, video, conversation, binding, num_persons):
    """The web app's binding preview: the picture with each person's box labelled with its speaker, and the lines
    saying who speaks when and which voice drives which face (before Generate, no model needed)."""
    image, video, _ = _checked_source(image, video)
    talk = _conversation(conversation, binding, image if video is None else video, int(num_persons), None)[2]
    return talk.preview(), "\n".join(talk.lines())


def _check_script(text: str | None, num_persons: int) -> None:
    """The TTS script's problems, named before any speech is synthesised."""
    from .audio.tts import parse_dialogue

    if _is_empty(text):
        raise gr.Error(f"{TTS_TEXT_LABEL}: empty; write the dialogue, e.g. '(s1) Hello! (s2) Hi, how are you?'.")
    try:
        turns = parse_dialogue(text)
    except (TypeError, ValueError) as err:
        raise gr.Error(f"{TTS_TEXT_LABEL}: {err}") from err
    speakers = {turn.speaker for turn in turns}
    unknown = sorted(s for s in speakers if s >= num_persons)
    if unknown:
        tags = ", ".join(f"(s{s + 1})" for s in unknown)
        needed = max(unknown) + 1
        hint = (
            f"set {PERSONS_LABEL} to {needed}"
            if needed <= MAX_PERSONS
            else f"this app takes at most {MAX_PERSONS} speakers, (s1) to (s{MAX_PERSONS})"
        )
        verb = "speaks" if len(unknown) == 1 else "speak"
        raise gr.Error(f"{TTS_TEXT_LABEL}: {tags} {verb}, but {PERSONS_LABEL} is {num_persons}; {hint}.")
    mute = [p + 1 for p in range(num_persons) if p not in speakers]
    if mute:
        raise gr.Error(
            f"{TTS_TEXT_LABEL}: person {', '.join(map(str, mute))} ha{'s' if len(mute) == 1 else 've'} no turn; every "
            f"person needs speech: add '(s{mute[0]}) ...' or lower {PERSONS_LABEL}."
        )


def _synthesize(text: str, voices: Sequence[str], engine: str | None):
    """Speaks the script with one voice per person (the runtime's TTS): ``({"person1": (waveform, rate), ...},
    TTSResult)``."""
    block = {"text": text, **{f"human{i}_voice": voice for i, voice in enumerate(voices, start=1)}}
    try:
        return runtime.speak(block, engine=engine)
    except runtime.UserError as err:
        raise gr.Error(f"{TTS_TEXT_LABEL}: {err}") from err


def _configure_teacache(pipe, enabled: bool, threshold: float, resolution: str) -> None:
    transformer = pipe.transformer  # the threshold was checked with the settings (runtime.settings_problems)
    transformer.disable_teacache()  # a no-op when it is off; it may be on from the previous request
    if enabled:
        # the size's fitted coefficients, from the variant registry (the transformer knows no model)
        size = get_size(resolution)
        transformer.enable_teacache(
            threshold=float(threshold), resolution=size.buckets, coefficients=size.teacache_coefficients
        )


def _video_size(video) -> tuple[int, int]:
    """(height, width) of a video to dub, from ffmpeg's header; a `gr.Error` naming the field if it is no video."""
    from .input_json import probe_visual

    size, is_image, why = probe_visual(Path(video))
    if size is None or is_image:
        raise gr.Error(f"{VIDEO_LABEL}: cannot be read as a video ({why or 'it is an image'}).")
    return size


def _video_shape(path: Path, fallback: tuple[int, int, int]) -> tuple[int, int, int]:
    """(frames, height, width) of the written mp4, read back with ffmpeg."""
    import re
    import subprocess

    from .pipelines.video_io import get_ffmpeg_exe

    log = subprocess.run(
        [get_ffmpeg_exe(), "-hide_banner", "-i", str(path), "-map", "0:v:0", "-f", "null", "-"],
        capture_output=True,
        text=True,
    ).stderr
    size = re.search(r"Video: .*?, (\d+)x(\d+)", log)
    frames = re.findall(r"frame=\s*(\d+)", log)
    if not size or not frames:
        return fallback
    return int(frames[-1]), int(size.group(2)), int(size.group(1))


def _video_path(output_dir: Path, seed: int) -> Path:
    """A fresh name in ``output_dir``; the pipeline streams the video there (a hidden part file until complete)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S_%f")
    return output_dir / f"multitalk_{stamp}_seed{seed}.mp4"


def _checked_source(image, video):
    """The reference image (loaded, at least `MIN_IMAGE_SIDE` a side) or the video to dub, and its (height, width)."""
    from .pipelines.image_processing import load_image_any

    if _is_empty(video):
        video = None
    if image is None and video is None:
        raise gr.Error(f"{IMAGE_LABEL}: missing; upload the picture of the person(s), or a {VIDEO_LABEL}.")
    if image is not None and video is not None:
        raise gr.Error(f"{VIDEO_LABEL}: give a video to dub or a {IMAGE_LABEL}, not both.")
    if video is not None:
        return None, video, _video_size(video)
    if isinstance(image, (str, os.PathLike)):  # a folder, or a file that does not decode: said by the runtime
        problems, _ = runtime.image_problems(image)
        if problems:
            raise _refuse(problems)
    try:
        image = load_image_any(image)
    except (OSError, ValueError, TypeError) as err:
        raise gr.Error(f"{IMAGE_LABEL}: cannot be read ({err}).") from err
    problems, _ = runtime.image_problems(image)  # too small
    if problems:
        raise _refuse(problems)
    return image, None, (image.height, image.width)


def _checked_speech(audio, tts_text, tts_voices, num_persons):
    """(persons, recordings or None, voices or None): one recording per person, each decoding and not silent, or a
    TTS script with a turn for every person."""
    use_tts = tts_text is not None
    if use_tts and audio:
        raise gr.Error(f"Speech: give recordings or a {TTS_TEXT_LABEL}, not both.")
    if num_persons is None:
        num_persons = len(tts_voices or [None]) if use_tts else len(audio or [])
    num_persons = int(num_persons)
    if not 1 <= num_persons <= MAX_PERSONS:
        raise gr.Error(f"{PERSONS_LABEL}: {num_persons}; this app takes 1 to {MAX_PERSONS} persons.")
    if use_tts:
        voices = list(tts_voices or [])[:num_persons]
        voices += [None] * (num_persons - len(voices))
        voices = [DEFAULT_VOICES[i] if _is_empty(v) else str(v).strip() for i, v in enumerate(voices)]
        _check_script(tts_text, num_persons)
        return num_persons, None, voices
    audio = list(audio or [])
    if len(audio) > num_persons:
        raise gr.Error(
            f"{PERSONS_LABEL}: {len(audio)} recordings for {num_persons} persons; raise {PERSONS_LABEL} or remove one."
        )
    audio += [None] * (num_persons - len(audio))
    for person, entry in enumerate(audio, start=1):
        if entry is None or (isinstance(entry, str) and not entry.strip()):
            raise gr.Error(
                f"{audio_label(person)}: no audio; upload person {person}'s speech"
                + (f", or lower {PERSONS_LABEL} to {person - 1}." if person > 1 else ".")
            )
    problems = runtime.speech_problems({f"person{i}": e for i, e in enumerate(audio, start=1)}, LISTENER)
    if problems:
        raise _refuse(problems)
    return num_persons, audio, None


def generate_video(
    pipe,
    image,
    prompt: str,
    *,
    video: str | None = None,
    audio: Sequence | None = None,
    tts_text: str | None = None,
    tts_voices: Sequence[str | None] | None = None,
    tts_engine: str | None = None,
    conversation: str | None = None,
    binding: str | None = None,
    num_persons: int | None = None,
    audio_type: str = "add",
    negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
    resolution: str = "multitalk-480",
    mode: str | None = "auto",
    num_frames: int = 81,
    motion_frames: int = 25,
    max_frames: int | None = None,
    num_inference_steps: int = runtime.DEFAULT_SAMPLE_STEPS,
    shift: float | None = None,
    text_guidance_scale: float = 5.0,
    audio_guidance_scale: float = 4.0,
    seed: int = 42,
    use_teacache: bool = False,
    teacache_threshold: float = 0.2,
    use_apg: bool = False,
    color_correction_strength: float = 1.0,
    bboxes: Sequence | None = None,
    height: int | None = None,
    width: int | None = None,
    tiny: bool = False,
    output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR,
    progress: Callable | None = None,
    live_dir: str | os.PathLike | None = None,
) -> GenerationResult:
    r"""
    Generates one talking video and writes it, with the mixed speech, to ``output_dir``. Bad input raises
    `gr.Error` naming the field, before the model loads or speech is synthesised where it can be told.

    Args:
        pipe: a [`WanMultiTalkPipeline`], or a function returning it (see :func:`pipeline_loader`).
        image: the reference image (path or PIL image); None when `video` is given.
        video: a video to dub (any file ffmpeg decodes): needs a pipeline that dubs (`variants.Variant.dubs_video`:
            `multitalk serve` with that model's weights flag, or `--tiny --task` its task); its lips, face and body follow the new
            speech, the new audio replaces its own.
        prompt: what the video shows.
        audio: one recording per person (paths, or `(waveform, sampling_rate)` tuples); a None entry is a person
            without speech (an error).
        tts_text: instead of `audio`, a script `"(s1) Hi! (s2) Hello."` spoken by TTS, one voice per person.
        tts_voices: the persons' voices (Kokoro names such as "af_heart", `.pt` files, or espeak-ng voices; empty
            entries take a default); their number is the number of persons.
        tts_engine: "auto" / None (Kokoro-82M when its weights are here, else espeak-ng), "kokoro" or "espeak-ng".
        conversation: instead of `audio`, one recording of all the persons (a podcast, an interview), split into
            `num_persons` speakers; the first voice heard drives the leftmost face found on the image, unless
            `binding` ("2, 1": speaker 1 drives person 2) or `bboxes` say otherwise.
        num_persons: how many persons speak (default: the number of `audio` entries or voices).
        audio_type: "add" (recordings in turns) or "para" (at the same time); a TTS script is always laid out in
            turns already.
        negative_prompt, resolution, mode, num_frames, motion_frames, max_frames, num_inference_steps, shift,
        text_guidance_scale, audio_guidance_scale, use_apg, color_correction_strength:
            as in [`WanMultiTalkPipeline.__call__`] (`shift` None: the resolution's default; `max_frames` only
            counts in streaming mode).
        seed: the noise seed; negative draws one at random (reported in the result).
        use_teacache / teacache_threshold: TeaCache for this request.
        bboxes: per person, an optional box "top, left, bottom, right" in image pixels (all or none).
        height / width: output size (multiples of 16) instead of the resolution's bucket; None or 0 for the bucket.
        tiny: the pipeline is the tiny random model: without `height`/`width`, generate at the bucket / 8, as
            `multitalk generate --tiny` does.
        output_dir: where the mp4 goes.
        live_dir: also stream the chunks to an HLS stream there as they are decoded (see `runtime.live`).
        progress: a `gr.Progress` (or any `progress(fraction, desc=...)` callable) for the stages.

    Returns:
        a :class:`GenerationResult`.
    """
    import torch
    from diffusers import DiffusionPipeline

    from .audio.processing import TARGET_SAMPLE_RATE

    started = time.perf_counter()
    report = progress if progress is not None else (lambda *args, **kwargs: None)

    # 1. Cheap checks of every field (the runtime's, named by the form's labels), before the model loads or any speech
    # is synthesised
    image, video, source_size = _checked_source(image, video)
    if _is_empty(prompt):
        raise gr.Error(f"{PROMPT_LABEL}: empty; describe the scene, e.g. 'Two friends chat in a studio.'.")
    use_tts = tts_text is not None
    if conversation is not None:  # one mixed recording: split by speaker, the faces found, before the model loads
        if audio or use_tts:
            raise gr.Error(f"Speech: give a {CONVERSATION_LABEL}, recordings or a {TTS_TEXT_LABEL}, one of them.")
        num_persons = int(num_persons or 2)
        bbox = _parse_bboxes(bboxes, num_persons, source_size)
        audio, bbox, talk = _conversation(conversation, binding, image if video is None else video, num_persons, bbox)
        num_persons, voices, audio_type = len(audio), None, "para"
        for line in talk.lines():
            gr.Info(line)
    else:
        num_persons, audio, voices = _checked_speech(audio, tts_text, tts_voices, num_persons)
        bbox = _parse_bboxes(bboxes, num_persons, source_size)
    seed = int(seed)
    if seed < 0:
        seed = random_seed()
    mode = None if mode in (None, "", "auto") else mode
    max_frames = int(max_frames) if max_frames else None  # 0 or empty: no cap
    args = runtime.generate_options(
        size=resolution,
        mode=mode,
        frame_num=int(num_frames),
        motion_frame=int(motion_frames),
        max_frame_num=max_frames,
        sample_steps=int(num_inference_steps),
        sample_shift=None if shift in (None, "") else float(shift),
        sample_text_guide_scale=float(text_guidance_scale),
        sample_audio_guide_scale=float(audio_guidance_scale),
        use_teacache=bool(use_teacache),
        teacache_thresh=float(teacache_threshold),
        use_apg=bool(use_apg),
        color_correction_strength=float(color_correction_strength),
        base_seed=seed,
        audio_mode="tts" if use_tts else "localfile",
        height=int(height) if height else None,  # 0 or empty: the bucket's
        width=int(width) if width else None,
    )
    problems = runtime.settings_problems(args)  # the one check of the settings, as the command line's and the API's
    if problems:
        raise _refuse(problems)
    if args.height is None and tiny:
        args.height, args.width = runtime.tiny_size(source_size, resolution)
    warning = runtime.prompt_problem(prompt)
    if warning is not None:
        gr.Warning(warning.render(label_words))

    # 2. The model, and the pipeline's own checks (the number of persons, boxes, the script) before any heavy work
    report(0.0, desc="Loading the model")
    pipe = pipe if isinstance(pipe, DiffusionPipeline) else pipe()
    if video is not None and not hasattr(pipe, "prepare_source_frame"):
        raise gr.Error(f"{VIDEO_LABEL}: {dubbing_requirement()}.")
    try:
        pipe.check_inputs(
            audio=audio,
            prompt=prompt,
            negative_prompt=negative_prompt,
            prompt_embeds=None,
            negative_prompt_embeds=None,
            audio_type=audio_type,
            bbox=bbox,
            height=args.height,
            width=args.width,
            mode=mode,
            num_frames=args.frame_num,
            motion_frames=args.motion_frame,
            max_frames=max_frames,
            num_inference_steps=args.sample_steps,
            output_type="np",
            callback_on_step_end_tensor_inputs=None,
            dialogue=tts_text if use_tts else None,
            dialogue_voices=voices if use_tts else None,
        )
    except ValueError as err:
        raise gr.Error(str(err)) from err
    _configure_teacache(pipe, bool(use_teacache), float(teacache_threshold), resolution)

    # 3. Speech
    tts_result = None
    if use_tts:
        report(0.0, desc="Speaking the script")
        cond_audio, tts_result = _synthesize(tts_text, voices, tts_engine)
    else:
        cond_audio = {f"person{i}": entry for i, entry in enumerate(audio, start=1)}

    # 4. The video: the same flag -> argument mapping as `multitalk generate`
    args.device = str(execution_device(pipe))
    visual = {"cond_image": image} if video is None else {"cond_video": str(video), "cond_video_is_image": False}
    input_data = {"prompt": prompt, "negative_prompt": negative_prompt, **visual, "cond_audio": cond_audio,
                  "audio_type": audio_type}  # fmt: skip
    if bbox is not None:
        input_data["bbox"] = {f"person{i}": box for i, box in enumerate(bbox, start=1)}
    kwargs = runtime.build_generation_kwargs(args, input_data)
    path = _video_path(Path(output_dir), seed)
    kwargs.update(max_frames=max_frames, output_path=path)
    if live_dir is not None:  # as the command line passes it: only when asked for
        kwargs["live_dir"] = live_dir
    report(0.0, desc="Generating")
    try:
        output = pipe(**kwargs)
    except (ValueError, FileNotFoundError) as err:
        raise gr.Error(str(err)) from err
    except torch.cuda.OutOfMemoryError as err:
        raise gr.Error(
            f"Out of memory ({str(err).splitlines()[0]}); try fewer frames, multitalk-480, or a server that offloads "
            "its models (offload_model)."
        ) from err

    # 5. The mp4
    report(1.0, desc="Done")
    frame_count = int(round(len(output.audio) / output.sample_rate * output.fps)) if output.audio is not None else 0
    frame_h, frame_w = kwargs.get("height") or 0, kwargs.get("width") or 0
    frame_count, frame_h, frame_w = _video_shape(path, (frame_count, frame_h, frame_w))
    if tts_result is not None:
        speech = (
            f"TTS with {tts_result.engine} ({', '.join(v or '?' for v in tts_result.voices)}), "
            f"{len(tts_result.mixed) / TARGET_SAMPLE_RATE:.2f} s of speech"
        )
    else:
        speech = f"{num_persons} recording{'s' if num_persons > 1 else ''} ({kwargs['audio_type']})"
    steps = kwargs["num_inference_steps"]
    status = (
        f"{frame_count} frames ({frame_count / output.fps:.2f} s at {output.fps} fps), {frame_w}x{frame_h}, "
        f"{mode or 'auto'} mode, {steps} step{'s' if steps != 1 else ''}, shift {kwargs['shift']:g}, seed {seed}; "
        f"speech: {speech}; "
        f"TeaCache {'on (' + format(float(teacache_threshold), 'g') + ')' if use_teacache else 'off'}, "
        f"APG {'on' if use_apg else 'off'}; {time.perf_counter() - started:.1f} s. Saved {path}"
    )
    return GenerationResult(
        video=str(path),
        status=status,
        seed=seed,
        num_frames=frame_count,
        tts_engine=tts_result.engine if tts_result is not None else None,
    )


# ================================================================================================================
# The UI
# ================================================================================================================
def _bundled_example() -> list | None:
    """The repository's two-person example (image, prompt, persons, speech, boxes), when it is here."""
    assets = Path(__file__).resolve().parents[2] / "examples" / "assets"
    files = [assets / name for name in ("two_people.png", "speaker1.wav", "speaker2.wav")]
    if not all(f.is_file() for f in files):
        return None
    prompt = "Two cartoon friends sit side by side in a bright studio and chat."
    return [str(files[0]), prompt, 2, str(files[1]), str(files[2]), "add", "30, 40, 470, 392", "30, 440, 470, 792"]


# The layout fits a 1280x800 window: the inputs on the left; Generate, the result and the settings on the right,
# so that the button and the video are in view without scrolling (tests/test_browser.py measures it).
RESULT_VIDEO_ID = "result-video"
IMAGE_HEIGHT = 240
RESULT_HEIGHT = 360


def _can_dub(pipe) -> bool:
    """Whether the pipeline dubs videos: a dubbing model's has `prepare_source_frame` (what `generate_video` asks; a
    duck-typed check, since the server hands the app its pipeline wrapped)."""
    return hasattr(pipe, "prepare_source_frame")


def _header(title: str, tiny: bool, dubs: bool | None) -> str:
    """The page's heading; once the model is known (`dubs` not None), a line saying what it does."""
    text = (
        f"# {title}\nAudio-driven talking video for one to {MAX_PERSONS} persons "
        "([MultiTalk](https://github.com/MeiGen-AI/MultiTalk) with diffusers)."
    )
    if tiny:
        text += " **Tiny random model**: the picture is noise-like, the wiring is real."
    if dubs is not None:
        models = "; ".join(f"**{v.name}**: {v.summary}" for v in VARIANTS if v.dubs_video == dubs)
        text += f" Model: {models}."
    return text


def _input_fields(fields: dict[str, Any], dubs: bool | None):
    """The inputs (image or video to dub, prompt, speech per person) into `fields`; returns what the speech and
    persons controls show or hide: (person groups, audio inputs, voice inputs, the TTS group)."""
    with gr.Row():
        fields["image"] = gr.Image(label=IMAGE_LABEL, type="filepath", height=IMAGE_HEIGHT)
        # Only a model that dubs shows the video upload; while that is unknown (a loader not yet called) the page's
        # load event decides, so that building the app loads no model.
        fields["video"] = gr.Video(label=VIDEO_LABEL, sources=["upload"], height=IMAGE_HEIGHT, visible=bool(dubs))
    fields["prompt"] = gr.Textbox(label=PROMPT_LABEL, lines=2, placeholder="Two people talk in a studio.")
    with gr.Row():
        fields["speech"] = gr.Radio([SPEECH_FILES, SPEECH_TTS, SPEECH_CONVERSATION], value=SPEECH_FILES, label="Speech")
        fields["num_persons"] = gr.Slider(1, MAX_PERSONS, value=DEFAULT_PERSONS, step=1, label=PERSONS_LABEL)
    fields["audio_type"] = gr.Radio(
        ["add", "para"],
        value="add",
        label=FIELD_LABELS["audio_type"],
        info="add: one after the other (turns); para: at the same time",
    )
    with gr.Group(visible=False) as tts_group:
        fields["tts_text"] = gr.Textbox(
            label=TTS_TEXT_LABEL,
            lines=3,
            placeholder="(s1) Do you know MultiTalk? (s2) Yes, it makes people talk!",
            info="(s1) starts person 1's turn, (s2) person 2's, ...",
        )
        fields["tts_engine"] = gr.Dropdown(
            list(TTS_ENGINES),
            value="auto",
            label="TTS engine",
            info="auto: Kokoro-82M when its weights are here, else espeak-ng",
        )
    with gr.Group(visible=False) as conversation_group:
        fields["conversation"] = gr.Audio(label=CONVERSATION_LABEL, type="filepath")
        with gr.Row():
            fields["binding"] = gr.Textbox(label=BINDING_LABEL, placeholder="optional, e.g. 2, 1", scale=3)
            preview_button = gr.Button("Preview binding", scale=1)
        preview_image = gr.Image(label="Who drives which face", interactive=False, height=IMAGE_HEIGHT)
        preview_text = gr.Textbox(label="Speakers", interactive=False, lines=3)
    preview = (preview_button, preview_image, preview_text, conversation_group)
    person_groups, audio_inputs, voice_inputs = [], [], []
    for person in range(1, MAX_PERSONS + 1):
        with gr.Group(visible=person <= DEFAULT_PERSONS) as group:
            fields[f"audio_{person}"] = gr.Audio(label=audio_label(person), type="filepath")
            fields[f"voice_{person}"] = gr.Textbox(
                label=voice_label(person),
                value=DEFAULT_VOICES[person - 1],
                visible=False,
                info="a Kokoro voice (af_heart, am_adam, ...) or an espeak-ng voice (en-us+f3)",
            )
            fields[f"bbox_{person}"] = gr.Textbox(
                label=bbox_label(person),
                placeholder="optional: top, left, bottom, right (image pixels)",
            )
        person_groups.append(group)
        audio_inputs.append(fields[f"audio_{person}"])
        voice_inputs.append(fields[f"voice_{person}"])
    return person_groups, audio_inputs, voice_inputs, tts_group, preview


def _generation_settings(fields: dict[str, Any]) -> None:
    """The settings most runs touch (size, mode, length, steps, seed), open under the result."""
    with gr.Accordion("Generation", open=True):
        with gr.Row():
            fields["resolution"] = gr.Radio(list(runtime.SIZES), value="multitalk-480", label=FIELD_LABELS["size"])
            fields["mode"] = gr.Radio(
                ["auto", "clip", "streaming"],
                value="auto",
                label=FIELD_LABELS["mode"],
                info="auto: the whole speech; clip: one chunk; streaming: chunks until the speech ends",
            )
        with gr.Row():
            fields["num_frames"] = gr.Slider(5, 201, value=81, step=4, label=FIELD_LABELS["frame_num"])
            fields["max_frames"] = gr.Number(
                value=0,
                precision=0,
                minimum=0,
                label=FIELD_LABELS["max_frame_num"],
            )
        with gr.Row():
            fields["num_inference_steps"] = gr.Slider(
                1, 100, value=runtime.DEFAULT_SAMPLE_STEPS, step=1, label=FIELD_LABELS["sample_steps"]
            )
            fields["seed"] = gr.Number(value=42, precision=0, label=FIELD_LABELS["base_seed"])


def _advanced_settings(fields: dict[str, Any], tiny: bool, use_teacache: bool, teacache_threshold: float) -> None:
    """The rest of MultiTalk's settings, collapsed: their defaults suit most runs."""
    with gr.Accordion("Advanced", open=False):
        fields["negative_prompt"] = gr.Textbox(label="Negative prompt", value=DEFAULT_NEGATIVE_PROMPT, lines=3)
        with gr.Row():
            fields["shift"] = gr.Number(value=get_size(runtime.SIZES[0]).shift, label=FIELD_LABELS["sample_shift"])
            fields["text_guidance_scale"] = gr.Slider(
                1, 15, value=5.0, step=0.5, label=FIELD_LABELS["sample_text_guide_scale"]
            )
            fields["audio_guidance_scale"] = gr.Slider(
                1, 15, value=4.0, step=0.5, label=FIELD_LABELS["sample_audio_guide_scale"]
            )
        with gr.Row():
            fields["use_teacache"] = gr.Checkbox(value=use_teacache, label="TeaCache")
            fields["teacache_threshold"] = gr.Slider(
                0.05, 1.0, value=teacache_threshold, step=0.05, label=FIELD_LABELS["teacache_thresh"]
            )
            fields["use_apg"] = gr.Checkbox(value=False, label="APG")
        with gr.Row():
            fields["color_correction_strength"] = gr.Slider(
                0.0, 1.0, value=1.0, step=0.05, label=FIELD_LABELS["color_correction_strength"]
            )
            fields["motion_frames"] = gr.Slider(1, 97, value=25, step=4, label=FIELD_LABELS["motion_frame"])
        with gr.Row():
            size_hint = "0: the bucket / 8 (tiny model)" if tiny else "0: the resolution's bucket"
            fields["height"] = gr.Number(value=0, precision=0, label=FIELD_LABELS["height"], info=size_hint)
            fields["width"] = gr.Number(value=0, precision=0, label=FIELD_LABELS["width"], info=size_hint)


def _bundled_examples(fields: dict[str, Any]) -> None:
    example = _bundled_example()
    if example is not None:
        names = ("image", "prompt", "num_persons", "audio_1", "audio_2", "audio_type", "bbox_1", "bbox_2")
        gr.Examples([example], inputs=[fields[name] for name in names])


def build_app(
    source,
    *,
    output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR,
    tiny: bool | None = None,
    use_teacache: bool = False,
    teacache_threshold: float = 0.2,
    title: str = "MultiTalk",
) -> gr.Blocks:
    """
    Builds the Gradio app (not launched).

    Args:
        source: what :func:`pipeline_loader` takes: a pipeline, a function returning one, or ``serve``'s arguments.
            The pipeline is loaded on the first request (a page opening, which asks whether the model dubs videos,
            or a generation), unless it is loaded already (see :func:`launch`).
        output_dir: where the videos go.
        tiny: whether the model is the tiny random one (then the video is the bucket / 8 unless a size is given);
            default: `source.tiny` for arguments, else False.
        use_teacache / teacache_threshold: the TeaCache settings the form starts with.
        title: the page title.

    Returns:
        the `gr.Blocks`; its `generate_fn` is the form's handler (`{component: value}` -> `(video path, status)`),
        to drive the form without a browser; `generate_live_fn`, the Generate button's, yields each chunk's preview
        (`(mp4, status)`) as it is decoded, then the same answer.
    """
    if tiny is None:
        tiny = bool(getattr(source, "tiny", False)) if isinstance(source, runtime.GenerateOptions) else False
    if isinstance(source, runtime.GenerateOptions):
        use_teacache = use_teacache or bool(getattr(source, "use_teacache", False))
        teacache_threshold = getattr(source, "teacache_thresh", teacache_threshold)
    get_pipeline = pipeline_loader(source)
    fields: dict[str, Any] = {}  # name -> component: the handler receives {component: value}
    from diffusers import DiffusionPipeline

    # A given pipeline tells at once whether it dubs; a loader or flags are asked when a page opens.
    dubs = _can_dub(source) if isinstance(source, DiffusionPipeline) else None

    with gr.Blocks(title=title) as demo:
        header = gr.Markdown(_header(title, tiny, dubs))
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                person_groups, audio_inputs, voice_inputs, tts_group, preview = _input_fields(fields, dubs)
            with gr.Column(scale=1):
                run = gr.Button("Generate", variant="primary", size="lg")
                video = gr.Video(
                    label="Video", height=RESULT_HEIGHT, elem_id=RESULT_VIDEO_ID, interactive=False, autoplay=True
                )  # each chunk as it is decoded, then the whole video
                status = gr.Textbox(label="Status", interactive=False, lines=3)
                _generation_settings(fields)
                _advanced_settings(fields, tiny, use_teacache, teacache_threshold)
        _bundled_examples(fields)

        def show_persons(count):
            return [gr.update(visible=i < int(count)) for i in range(MAX_PERSONS)]

        def show_speech(kind):
            tts, mixed = kind == SPEECH_TTS, kind == SPEECH_CONVERSATION
            return (
                [gr.update(visible=tts), gr.update(visible=mixed)]
                + [gr.update(visible=not tts and not mixed) for _ in audio_inputs]
                + [gr.update(visible=tts) for _ in voice_inputs]
                + [gr.update(visible=not tts and not mixed)]
            )

        def default_shift(resolution):
            return get_size(resolution).shift

        fields["num_persons"].change(show_persons, fields["num_persons"], person_groups)
        fields["speech"].change(
            show_speech,
            fields["speech"],
            [tts_group, preview[3], *audio_inputs, *voice_inputs, fields["audio_type"]],
        )
        preview_inputs = [fields[name] for name in ("image", "video", "conversation", "binding", "num_persons")]
        preview[0].click(preview_binding, inputs=preview_inputs, outputs=list(preview[1:3]))
        fields["resolution"].change(default_shift, fields["resolution"], fields["shift"])

        def show_model():
            can_dub = _can_dub(get_pipeline())
            return gr.update(visible=can_dub), _header(title, tiny, can_dub)

        if dubs is None:  # unqueued: a page opening must not wait behind a running generation
            demo.load(show_model, None, [fields["video"], header], queue=False)

        names = {component: name for name, component in fields.items()}

        def on_generate(values, progress=gr.Progress(track_tqdm=True), *, live_dir=None):
            form = {names[component]: value for component, value in values.items() if component in names}
            count = int(form["num_persons"])
            tts, mixed = form["speech"] == SPEECH_TTS, form["speech"] == SPEECH_CONVERSATION
            result = generate_video(
                get_pipeline,
                form["image"],
                form["prompt"],
                video=form.get("video"),
                audio=None if tts or mixed else [form[f"audio_{i}"] for i in range(1, count + 1)],
                conversation=form["conversation"] if mixed else None,
                binding=form["binding"] if mixed else None,
                tts_text=(form["tts_text"] or "") if tts else None,
                tts_voices=[form[f"voice_{i}"] for i in range(1, count + 1)] if tts else None,
                tts_engine=form["tts_engine"],
                num_persons=count,
                audio_type=form["audio_type"],
                negative_prompt=form["negative_prompt"],
                resolution=form["resolution"],
                mode=form["mode"],
                num_frames=form["num_frames"],
                motion_frames=form["motion_frames"],
                max_frames=form["max_frames"],
                num_inference_steps=form["num_inference_steps"],
                shift=form["shift"],
                text_guidance_scale=form["text_guidance_scale"],
                audio_guidance_scale=form["audio_guidance_scale"],
                seed=form["seed"] if form["seed"] is not None else 42,
                use_teacache=form["use_teacache"],
                teacache_threshold=form["teacache_threshold"],
                use_apg=form["use_apg"],
                color_correction_strength=form["color_correction_strength"],
                bboxes=[form[f"bbox_{i}"] for i in range(1, count + 1)],
                height=form["height"],
                width=form["width"],
                tiny=tiny,
                output_dir=output_dir,
                progress=progress,
                live_dir=live_dir,
            )
            return result.video, result.status

        def on_generate_live(values, progress=gr.Progress(track_tqdm=True)):
            """The Generate button: each chunk plays as it is decoded (the live stream's newest segment), then the
            whole video (runtime.live says why not Gradio's HLS player)."""
            live = Path(output_dir) / "live" / f"{time.time_ns():x}"
            for kind, value in follow_live(lambda: on_generate(values, progress, live_dir=live), live):
                if kind == "chunk":
                    yield str(value[0]), f"Generating: chunk {value[1]} is ready and playing; the whole video follows."
                else:
                    yield value

        # A set of inputs hands the handler one {component: value} dict, read by name above.
        run.click(on_generate_live, inputs=set(fields.values()), outputs=[video, status], api_name="generate")
    demo.generate_fn = on_generate  # the handler, for callers (and tests) without a browser
    demo.generate_live_fn = on_generate_live  # the button's: yields each chunk's preview, then on_generate's answer
    return demo


def launch(args: runtime.ServeOptions, **launch_kwargs):
    """``multitalk serve``: checks the model flags, loads the model (so a broken folder fails now, not at the first
    click), builds the app and serves it on ``args.host``:``args.port`` (``args.share``: a public gradio.live link)."""
    output_dir = Path(getattr(args, "output_dir", None) or DEFAULT_OUTPUT_DIR)
    get_pipeline = pipeline_loader(args)
    runtime.note("loading the model" + (" (the tiny random one)" if getattr(args, "tiny", False) else ""))
    get_pipeline()
    demo = build_app(
        get_pipeline,
        output_dir=output_dir,
        tiny=bool(getattr(args, "tiny", False)),
        use_teacache=bool(getattr(args, "use_teacache", False)),
        teacache_threshold=getattr(args, "teacache_thresh", 0.2),
    )
    demo.queue(default_concurrency_limit=1)  # one pipeline, one generation at a time
    return demo.launch(
        server_name=getattr(args, "host", None),
        server_port=getattr(args, "port", None),
        share=bool(getattr(args, "share", False)),
        allowed_paths=[str(output_dir.resolve())],
        show_error=True,
        **launch_kwargs,
    )
