"""The runtime under every front end (the `multitalk` command, the web app, the HTTP API): model options -> one
loaded pipeline per process, a request -> validated pipeline arguments, outputs written atomically."""

from .errors import PROG, Terminated, UserError, note, raise_terminated
from .inputs import box_problems, image_problems, prompt_problem, prompt_said, speech_problems
from .loading import PipelineHolder, load_from_options, load_pipeline, resolve_device, resolve_dtype
from .options import (
    DEFAULT_SAMPLE_STEPS,
    GENERATE_DEFAULTS,
    SIZES,
    check_generate_args,
    generate_options,
    lora_specs,
    settings_problems,
    unsupported_flags,
    variant_of_options,
    with_model_defaults,
)
from .request import (
    build_generation_kwargs,
    check_writable,
    default_save_file,
    output_path,
    speak,
    synthesize_tts,
    tiny_size,
    tts_tracks,
)
from .spec import FieldProblem, GenerateOptions, RequestError, ServeOptions


__all__ = [
    "DEFAULT_SAMPLE_STEPS", "GENERATE_DEFAULTS", "PROG", "SIZES", "FieldProblem", "GenerateOptions",
    "PipelineHolder", "RequestError", "ServeOptions", "Terminated", "UserError", "box_problems",
    "build_generation_kwargs", "check_generate_args", "check_writable", "default_save_file", "generate_options",
    "image_problems", "load_from_options", "load_pipeline", "lora_specs", "note", "output_path", "prompt_problem", "prompt_said",
    "raise_terminated", "resolve_device", "resolve_dtype", "settings_problems", "speak", "speech_problems",
    "synthesize_tts", "tiny_size", "tts_tracks", "unsupported_flags", "variant_of_options",
    "with_model_defaults",
]  # fmt: skip
