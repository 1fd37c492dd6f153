"""The typed options of a generation, the one request every front end fills: the model spec (weights, quantisation,
offload, kernels, parallelism) and the generation settings (size, mode, frames, sampling, guidance, seed, ...).

Field names are the JSON field names of the HTTP API's `settings` and of MultiTalk's flags without their dashes
(`frame_num`, `sample_steps`, ...). Front ends speak of them in their own words when an error names one: the command
line as a flag (`cli/parser.py` holds the map), the web app as its label. The defaults are MultiTalk's
(`generate_multitalk.py`), except that an unset `mode` covers the whole audio.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..variants import DEFAULT_VARIANT, SIZES
from .errors import UserError, note, note_words


__all__ = [
    "FieldProblem",
    "GenerateOptions",
    "GenerationSettings",
    "ModelSpec",
    "OutputOptions",
    "RequestError",
    "ServeOptions",
    "note_about",
    "option_fields",
    "setting_limits",
]


SIZE_NAMES = tuple(SIZES)
MODES = ("clip", "streaming")
AUDIO_MODES = ("localfile", "tts")
_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*)\}")
_NO_VALUE = object()


@dataclass(frozen=True)
class FieldProblem:
    """One problem with one field of a request. `field` is the field's name (`frame_num`, `cond_audio.person2`); a
    front end says it in its words. `message` may name other fields as `{name}` placeholders, said in the same words
    (`"must be 4n+1 and smaller than {frame_num}"`). `value`, when given, is the value that was refused; `warning`
    marks a problem that does not stop the request (it is said, and the run goes on)."""

    field: str
    message: str
    value: Any = _NO_VALUE
    warning: bool = False

    def render(self, words=None, given: str = "{name} {value}") -> str:
        """`"<name> <value>: <message>"` with the names in `words(field)` (the field's own name by default);
        `given` lays out a field and its value (the command line: `--frame_num 80`)."""
        words = words or (lambda name: name)
        name = words(self.field)
        head = name if self.value is _NO_VALUE else given.format(name=name, value=_shown(self.value))
        return f"{head}: {_PLACEHOLDER.sub(lambda m: words(m.group(1)), self.message)}"


def _shown(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def note_about(field: str, message: str, value: Any = _NO_VALUE) -> None:
    """A note on stderr about one field, named in the words of the front end that prints it (`errors.speak_with`)."""
    note(FieldProblem(field, message, value).render(note_words()))


class RequestError(UserError):
    """Problems with a request, each naming its field; `render(words)` says them in a front end's words (a flag, a
    JSON field, a label): `words(field)` gives the name to show. One problem is one line; several are listed under
    `title` ("invalid values" by default; "this build cannot honour" for refusals, which also heads a single one)."""

    def __init__(self, problems: list[FieldProblem], title: str | None = None, usage: bool = True):
        self.problems = list(problems)
        self.title = title
        self.usage = usage  # a bad value (the command line's exit status 2); False: it cannot run here (1)
        super().__init__(self.render())

    def render(self, words=None, given: str = "{name} {value}") -> str:
        lines = [problem.render(words, given) for problem in self.problems]
        if len(lines) == 1:  # one line
            return lines[0] if self.title is None else f"{self.title}: {lines[0]}"
        return f"{self.title or 'invalid values'}:\n" + "\n".join(f"  {line}" for line in lines)


@dataclass
class ModelSpec:
    """Which model runs, and how: weights, quantisation, offloading, kernels and parallelism. A model's own weights
    fields (`multitalk_dir`, `infinitetalk_dir`, `dit_path`, `flashtalk_dir`) are the registry's `WEIGHTS_OPTIONS`
    (variants.py)."""

    task: str = DEFAULT_VARIANT.task
    ckpt_dir: str | None = None
    wav2vec_dir: str | None = None
    multitalk_dir: str | None = None
    infinitetalk_dir: str | None = None
    dit_path: str | None = None
    flashtalk_dir: str | None = None
    model: str | None = None
    tiny: bool = False
    quant: str | None = None
    quant_dir: str | None = None
    quant_backend: str = "auto"
    lora_dir: list[str] | None = None
    lora_scale: list[float] = field(default_factory=lambda: [1.2])
    offload_model: bool | None = None
    num_persistent_param_in_dit: int | None = None
    t5_cpu: bool = False
    t5_fsdp: bool = False
    dit_fsdp: bool = False
    ulysses_size: int = 1
    ring_size: int = 1
    device: str | None = None
    dtype: str = "auto"
    attention_backend: str | None = None
    self_attention_kernel: str | None = None
    preset: str | None = None


def _setting(default, description: str, **limits):
    """A generation setting's default, what it does, and its limits, read by the runtime's checks
    (`options.settings_problems`) and by the HTTP API's schema (server/schemas.py): `choices`, `ge`, `gt`, `le`,
    `multiple_of`, `hint` (said after a refusal)."""
    return field(default=default, metadata={"description": description, **limits})


@dataclass
class GenerationSettings:
    """How one video is made: size, length, sampling, guidance, seed (MultiTalk's flag names and defaults). Each
    field's metadata holds what it does and its limits (`setting_limits`)."""

    size: str | None = _setting(
        None, "the resolution bucket table (each model's own; none: the model's first)", choices=SIZE_NAMES
    )
    mode: str | None = _setting(
        None, "clip: one chunk; streaming: chunks until the audio ends; none: the whole audio", choices=MODES
    )
    frame_num: int | None = _setting(None, "frames per chunk, 4n+1 (none: the model's)", ge=5)
    motion_frame: int | None = _setting(None, "frames each chunk continues from, 4n+1 (none: the model's)", ge=1)
    max_frame_num: int | None = _setting(None, "cap the video at N frames (25 fps)", ge=5, hint="0.2 s")
    sample_steps: int | None = _setting(None, "sampling steps (none: the model's)", ge=1)
    sample_shift: float | None = _setting(None, "timestep shift (none: the size's)")
    sample_text_guide_scale: float | None = _setting(
        None, "text guidance (none: the model's)", ge=0, hint="1 turns that guidance off"
    )
    sample_audio_guide_scale: float | None = _setting(
        None, "audio guidance (none: the model's)", ge=0, hint="1 turns that guidance off"
    )
    use_teacache: bool = _setting(False, "TeaCache: skip the DiT on steps whose timestep changed little")
    teacache_thresh: float = _setting(0.2, "TeaCache threshold", gt=0, hint="MultiTalk advises 0.2 to 0.5")
    use_apg: bool = _setting(False, "adaptive projected guidance")
    apg_momentum: float = _setting(-0.75, "APG momentum")
    apg_norm_threshold: float = _setting(55.0, "APG norm threshold")
    color_correction_strength: float = _setting(1.0, "colour matching to the reference", ge=0, le=1)
    base_seed: int = _setting(42, "seed; negative picks a random one")
    height: int | None = _setting(None, "output height instead of the bucket's", gt=0, multiple_of=16)
    width: int | None = _setting(None, "output width instead of the bucket's", gt=0, multiple_of=16)
    audio_mode: str = _setting("localfile", "speech from files or from a TTS script", choices=AUDIO_MODES)
    scene_seg: bool = _setting(False, "dub each shot of the source video from its own frames")


def setting_limits(name: str) -> dict:
    """A generation setting's limits and description (its dataclass metadata)."""
    found = {f.name: f for f in dataclasses.fields(GenerationSettings)}[name]
    return dict(found.metadata)


@dataclass
class OutputOptions:
    """Where `multitalk generate` reads its input and writes its outputs."""

    input_json: str = "examples.json"
    save_file: str | None = None
    audio_save_dir: str | None = None
    binding_preview: str | None = None  # a PNG of a conversation's persons labelled with their speakers
    live: str | None = None  # a folder for the live HLS stream (live.m3u8 + one segment per chunk) as chunks decode


@dataclass
class GenerateOptions(OutputOptions, GenerationSettings, ModelSpec):
    """Every option of a generation: the model spec, the generation settings and the outputs, as one object (the
    runtime reads `options.<field>`). Build it with `from_fields`; unknown fields are refused."""

    @classmethod
    def from_fields(cls, source: Any = None, **overrides) -> GenerateOptions:
        """The defaults, updated with the fields `source` shares (a mapping, or any object with option attributes,
        such as another options object), then with `overrides`. Unknown overrides are refused."""
        names = option_fields(cls)
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise RequestError([FieldProblem(name, "not a generation option") for name in unknown])
        values = {}
        if source is not None:
            items = source.items() if isinstance(source, Mapping) else vars(source).items()
            values.update({name: value for name, value in items if name in names})
        values.update(overrides)
        return cls(**values)

    def updated(self, **changes) -> GenerateOptions:
        """A copy with `changes` (fields only)."""
        return dataclasses.replace(self, **changes)

    def model_spec(self) -> ModelSpec:
        return ModelSpec(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelSpec)})

    def settings(self) -> GenerationSettings:
        return GenerationSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(GenerationSettings)})


def option_fields(cls=GenerateOptions) -> set[str]:
    """The field names of an options class."""
    return {f.name for f in dataclasses.fields(cls)}


@dataclass
class ServeOptions(GenerateOptions):
    """`multitalk serve`: the model options of a generation, plus where the server listens, where jobs go and its
    limits."""

    host: str = "127.0.0.1"
    port: int = 7860
    output_dir: str = "outputs/app"
    max_queue: int = 8
    max_upload_mb: float = 50
    max_audio_seconds: float = 600
    max_pixels: int = 4096 * 4096
    api_key: str | None = None
    keep_jobs: float = 3600
    share: bool = False
