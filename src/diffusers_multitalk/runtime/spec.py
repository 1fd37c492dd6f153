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

from ..variants import DEFAULT_VARIANT
from .errors import UserError


__all__ = [
    "FieldProblem",
    "GenerateOptions",
    "GenerationSettings",
    "ModelSpec",
    "OutputOptions",
    "RequestError",
    "ServeOptions",
    "option_fields",
]


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


class RequestError(UserError):
    """Problems with a request, each naming its field; `render(words)` says them in a front end's words (a flag, a
    JSON field, a label): `words(field)` gives the name to show. One problem is one line; several are listed under
    `title` ("invalid values" by default; "this build cannot honour" for refusals, which also heads a single one)."""

    def __init__(self, problems: list[FieldProblem], title: str | None = None):
        self.problems = list(problems)
        self.title = title
        super().__init__(self.render())

    def render(self, words=None, given: str = "{name} {value}") -> str:
        lines = [problem.render(words, given) for problem in self.problems]
        if len(lines) == 1:  # one line
            return lines[0] if self.title is None else f"{self.title}: {lines[0]}"
        return f"{self.title or 'invalid values'}:\n" + "\n".join(f"  {line}" for line in lines)


@dataclass
class ModelSpec:
    """Which model runs, and how: weights, quantisation, offloading, kernels and parallelism. A model's own weights
    fields (`multitalk_dir`, `infinitetalk_dir`, `dit_path`) are the registry's `WEIGHTS_OPTIONS` (variants.py)."""

    task: str = DEFAULT_VARIANT.task
    ckpt_dir: str | None = None
    wav2vec_dir: str | None = None
    multitalk_dir: str | None = None
    infinitetalk_dir: str | None = None
    dit_path: str | None = None
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


@dataclass
class GenerationSettings:
    """How one video is made: size, length, sampling, guidance, seed (MultiTalk's flag names and defaults)."""

    size: str = DEFAULT_VARIANT.sizes[0].name
    mode: str | None = None
    frame_num: int = 81
    motion_frame: int | None = None
    max_frame_num: int | None = None
    sample_steps: int | None = None
    sample_shift: float | None = None
    sample_text_guide_scale: float = 5.0
    sample_audio_guide_scale: float = 4.0
    use_teacache: bool = False
    teacache_thresh: float = 0.2
    use_apg: bool = False
    apg_momentum: float = -0.75
    apg_norm_threshold: float = 55.0
    color_correction_strength: float = 1.0
    base_seed: int = 42
    height: int | None = None
    width: int | None = None
    audio_mode: str = "localfile"
    scene_seg: bool = False


@dataclass
class OutputOptions:
    """Where `multitalk generate` reads its input and writes its outputs."""

    input_json: str = "examples.json"
    save_file: str | None = None
    audio_save_dir: str | None = None


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
