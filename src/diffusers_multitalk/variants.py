"""The model-variant registry: one typed entry per model this package runs (MultiTalk, InfiniteTalk, SoulX-FlashTalk),
and the lookups.

Everything that differs between the models is an entry's field: its task and pipeline class, its sizes (shift,
bucket table, Wan base, TeaCache coefficients), its motion-frame and step defaults, whether it dubs video, the flags
naming its own weights, the check of its original folders, its download and its converter. The front ends (the CLI's
choices, the web app, the HTTP API), the runtime (defaults, checks, loading), `multitalk download` and
`multitalk convert` ask this registry instead of naming a model; docs/adding_a_model.md walks through adding one.

    from diffusers_multitalk.variants import get_size, get_variant, variant_for_size, variant_of_pipeline

    get_variant("infinitetalk-14B").motion_frames      # 9
    variant_for_size("multitalk-720").task              # "multitalk-14B"
    get_size("infinitetalk-720").shift                   # 11.0

Layering: above the pipelines (an entry names its pipeline class and its loaders), below conversion, the runtime and
the front ends, which read it; the models and hooks never import it (the callers pass them what they need, such as a
size's TeaCache coefficients). Importing it imports no torch: pipeline classes and loaders are imported when first
asked for, so that the CLI builds its parser (the --task and --size choices) in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .loaders.flashtalk import FLASHTALK_ALLOW_PATTERNS, FLASHTALK_REPO
from .loaders.original_folders import (
    INFINITETALK_ALLOW_PATTERNS,
    INFINITETALK_REPO,
    MULTITALK_ALLOW_PATTERNS,
    MULTITALK_FILE,
    MULTITALK_REPO,
    WAN_REPO,
    WAN_REPO_720,
)
from .utils.defaults import TEACACHE_COEFFICIENTS_480, TEACACHE_COEFFICIENTS_720


__all__ = [
    "DEFAULT_VARIANT",
    "SIZES",
    "TASKS",
    "VARIANTS",
    "WEIGHTS_OPTIONS",
    "ConversionSources",
    "Converter",
    "Download",
    "ModelCard",
    "Size",
    "Variant",
    "WeightsOption",
    "describe_variants",
    "dubbing_requirement",
    "get_size",
    "get_variant",
    "pick_variant",
    "variant_for_size",
    "variant_of_pipeline",
]


# --------------------------------------------------------------------------------------------------------------------
# the fields of an entry
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Size:
    """One `--size` of a model: its default timestep shift, the aspect-ratio bucket table it picks the output size
    from (a key of `pipelines.image_processing.RESOLUTION_BUCKETS`), the Wan2.1-I2V base `multitalk download`
    fetches for it, and the TeaCache polynomial (highest power first) fitted for its resolution."""

    name: str
    shift: float
    buckets: str
    wan_repo: str
    teacache_coefficients: tuple[float, ...]


@dataclass(frozen=True)
class WeightsOption:
    """A flag naming a model's own weights (`generate`, `serve` and `convert` take it): `name` is the flag without
    its dashes (and the option's field), `keyword` the pipeline's `from_original` keyword it becomes."""

    name: str
    keyword: str
    help: str
    convert_help: str

    @property
    def flag(self) -> str:
        return f"--{self.name}"


@dataclass(frozen=True)
class Download:
    """What `multitalk download` fetches for a model besides the Wan base and wav2vec2: `repo_id` with only
    `allow_patterns`, into `<target>/<repo name>`. `flag` (`multitalk download --<flag>`) asks for it next to
    another model's size; None: fetched by every download (the default model's, linked into the Wan folder).
    `generate_flags` are the weights flags `multitalk generate` then takes (`{folder}`: where it went)."""

    repo_id: str
    allow_patterns: tuple[str, ...]
    flag: str | None = None
    help: str = ""
    generate_flags: str = ""

    @property
    def folder(self) -> str:
        return self.repo_id.split("/")[-1]


@dataclass(frozen=True)
class ModelCard:
    """What a converted folder's model card says of the model (conversion.model_card)."""

    repo: str
    tags: tuple[str, ...]
    intro: str
    call: str
    video: str
    adapter: str


@dataclass(frozen=True)
class ConversionSources:
    """What a conversion read, for its report and card: `report` (the report's `sources` entries), `names` (filled
    into the component texts: `{multitalk}`, `{infinitetalk}`, ...) and `texts` (component -> where it came from,
    over conversion.py's shared ones)."""

    report: dict[str, Any]
    names: dict[str, Any]
    texts: dict[str, str]


@dataclass(frozen=True)
class Converter:
    """`multitalk convert` for a model: the name the report gives its converter, its model card, what it read
    (`sources(wan_dir, weights)`) and the card's line on its own weights (`adapter_line(report sources)`)."""

    function: str
    card: ModelCard
    sources: Callable[[Path, Mapping[str, Any]], ConversionSources] = field(repr=False, compare=False)
    adapter_line: Callable[[Mapping[str, Any]], str] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Variant:
    """One model. `weights_linked_into_wan`: its weights lie in the Wan folder (MultiTalk's README links them in);
    the runtime then reads `--ckpt_dir` with `--quant_dir`'s `quant_models/` and the FusionX DiT. Otherwise its own
    weights flags name them, and `pipeline_class.from_original(wan_dir, wav2vec_dir=, dtype=, lora_path=,
    lora_scale=, quant=, quant_path=, <weights keywords>)` loads them. `check_folders(wan_dir, wav2vec_dir, weights,
    quant, quant_path)` names every missing file (and the command that downloads it) before anything loads."""

    name: str
    task: str
    summary: str
    pipeline_class_name: str
    sizes: tuple[Size, ...]
    motion_frames: int
    sample_steps: int
    dubs_video: bool
    weights: tuple[WeightsOption, ...]
    weights_hint: str
    weights_linked_into_wan: bool
    folder_kind: str
    download: Download
    converter: Converter
    load_pipeline_class: Callable[[], type] = field(repr=False, compare=False)
    check_folders: Callable[..., list[str]] = field(repr=False, compare=False)
    # The model's own generation defaults where they differ from MultiTalk's (the pipeline's `__call__` defaults):
    # frames per chunk and the two guidance scales (1 and 1: no classifier-free guidance, one pass per step).
    frame_num: int = 81
    guidance_scale: float = 5.0
    audio_guidance_scale: float = 4.0

    @property
    def pipeline_class(self) -> type:
        """The pipeline class (imported on first use: it brings torch and diffusers)."""
        return self.load_pipeline_class()

    @property
    def size_names(self) -> tuple[str, ...]:
        return tuple(size.name for size in self.sizes)

    def size(self, name: str) -> Size:
        for size in self.sizes:
            if size.name == name:
                return size
        raise ValueError(f"{self.name} has no size {name!r}; its sizes are {', '.join(self.size_names)}")

    def weights_given(self, options: Any) -> dict[str, Any]:
        """`{option name: value}` of this model's weights flags set on `options` (any object with the fields)."""
        return {o.name: getattr(options, o.name) for o in self.weights if getattr(options, o.name, None)}

    def from_original_kwargs(self, weights: Mapping[str, Any]) -> dict[str, Any]:
        """The weights given by option name -> the pipeline's `from_original` keywords."""
        return {o.keyword: weights[o.name] for o in self.weights if weights.get(o.name) is not None}


# --------------------------------------------------------------------------------------------------------------------
# MultiTalk
# --------------------------------------------------------------------------------------------------------------------
def _multitalk_pipeline() -> type:
    from .pipelines.pipeline_wan_multitalk import WanMultiTalkPipeline

    return WanMultiTalkPipeline


def _multitalk_folders(wan_dir, wav2vec_dir, weights: Mapping[str, Any], quant=None, quant_path=None) -> list[str]:
    from .loaders.original_folders import check_original_folders

    return check_original_folders(wan_dir, weights.get("multitalk_dir"), wav2vec_dir)


def _multitalk_sources(wan_dir: Path, weights: Mapping[str, Any]) -> ConversionSources:
    folder = weights.get("multitalk_dir")
    return ConversionSources(
        report={"multitalk_dir": str(Path(folder).resolve()) if folder is not None else None},
        names={"multitalk": Path(folder).name if folder is not None else Path(wan_dir).name},
        texts={
            "transformer": "{wan}/diffusion_pytorch_model-*.safetensors (Wan2.1-I2V DiT) + "
            "{multitalk}/multitalk.safetensors (audio adapter), keys renamed to diffusers' Wan names",
            "scheduler": "MultiTalk's flow-matching schedule (FlowMatchEulerDiscreteScheduler, shift applied per call)",
        },
    )


MULTITALK = Variant(
    name="MultiTalk",
    task="multitalk-14B",
    summary="animates a reference image",
    pipeline_class_name="WanMultiTalkPipeline",
    sizes=(
        Size("multitalk-480", 7.0, "multitalk-480", WAN_REPO, TEACACHE_COEFFICIENTS_480),
        Size("multitalk-720", 11.0, "multitalk-720", WAN_REPO_720, TEACACHE_COEFFICIENTS_720),
    ),
    motion_frames=25,
    sample_steps=40,
    dubs_video=False,
    weights=(
        WeightsOption(
            "multitalk_dir",
            "multitalk_dir",
            help="the MeiGen-MultiTalk folder, when not linked into --ckpt_dir",
            convert_help="the MeiGen-MultiTalk folder (not needed if linked into --wan_dir)",
        ),
    ),
    weights_hint=f"the MeiGen-MultiTalk folder, or its {MULTITALK_FILE} linked into --ckpt_dir",
    weights_linked_into_wan=True,
    folder_kind="multitalk",
    download=Download(MULTITALK_REPO, tuple(MULTITALK_ALLOW_PATTERNS)),
    converter=Converter(
        function="convert_original_to_diffusers",
        card=ModelCard(
            repo=MULTITALK_REPO,
            tags=("multitalk",),
            intro="""[MultiTalk](https://github.com/MeiGen-AI/MultiTalk) ("Let Them Talk": audio-driven multi-person
conversational video, built on Wan2.1-I2V-14B) converted to the diffusers format, for the `WanMultiTalkPipeline` of
diffusers-multitalk.""",
            call='out = pipe(image="podcast.png", audio=["host.wav", "guest.wav"], '
            'prompt="Two people talk in a studio.")',
            video="podcast.mp4",
            adapter="`multitalk.safetensors`, the audio adapter (audio_proj, per-block audio cross-attention and "
            "norms)",
        ),
        sources=_multitalk_sources,
        adapter_line=lambda sources: MULTITALK.converter.card.adapter,  # one file, always the same
    ),
    load_pipeline_class=_multitalk_pipeline,
    check_folders=_multitalk_folders,
)


# --------------------------------------------------------------------------------------------------------------------
# InfiniteTalk
# --------------------------------------------------------------------------------------------------------------------
def _infinitetalk_pipeline() -> type:
    from .pipelines.pipeline_wan_infinitetalk import WanInfiniteTalkPipeline

    return WanInfiniteTalkPipeline


def _infinitetalk_folders(wan_dir, wav2vec_dir, weights: Mapping[str, Any], quant=None, quant_path=None) -> list[str]:
    from .loaders.infinitetalk import infinitetalk_problems

    adapter, dit_path = weights.get("infinitetalk_dir"), weights.get("dit_path")
    return infinitetalk_problems(wan_dir, adapter, wav2vec_dir, dit_path, quant, quant_path)


def _infinitetalk_sources(wan_dir: Path, weights: Mapping[str, Any]) -> ConversionSources:
    from .loaders.infinitetalk import resolve_infinitetalk_file

    dit_path = weights.get("dit_path")
    # a full checkpoint holds every DiT weight (as in from_original): an adapter file given beside it is not read
    adapter = weights.get("infinitetalk_dir") if dit_path is None else None
    file = resolve_infinitetalk_file(adapter) if adapter is not None else None
    texts = {
        "transformer": "{wan}/diffusion_pytorch_model-*.safetensors (Wan2.1-I2V DiT) + {infinitetalk} (InfiniteTalk's "
        "audio adapter, over the Wan shards), keys renamed to diffusers' Wan names",
        "scheduler": "InfiniteTalk's flow-matching schedule (MultiTalk's: FlowMatchEulerDiscreteScheduler, shift "
        "applied per call)",
    }
    if dit_path is not None:
        texts["transformer"] = (
            "{dit} (a full InfiniteTalk DiT checkpoint, its state_dict) with {wan}/config.json, keys renamed to "
            "diffusers' Wan names"
        )
    return ConversionSources(
        report={
            "infinitetalk_file": str(file.resolve()) if file is not None else None,
            "dit_path": str(Path(dit_path).resolve()) if dit_path is not None else None,
        },
        names={
            "infinitetalk": f"{file.parent.name}/{file.name}" if file is not None else None,
            "dit": Path(dit_path).name if dit_path is not None else None,
        },
        texts=texts,
    )


def _infinitetalk_adapter_line(sources: Mapping[str, Any]) -> str:
    if sources.get("dit_path"):
        return f"`{Path(sources['dit_path']).name}`, a full InfiniteTalk DiT checkpoint (`--dit_path`)"
    if sources.get("infinitetalk_file"):
        file = Path(sources["infinitetalk_file"])
        return f"`{file.parent.name}/{file.name}`, {INFINITETALK.converter.card.adapter}"
    return INFINITETALK.converter.card.adapter


INFINITETALK = Variant(
    name="InfiniteTalk",
    task="infinitetalk-14B",
    summary="dubs a video, or animates an image",
    pipeline_class_name="WanInfiniteTalkPipeline",
    # InfiniteTalk's sizes use MultiTalk's bucket tables, shifts and TeaCache fits (the same DiT), and its README
    # runs both on the 480P base.
    sizes=(
        Size("infinitetalk-480", 7.0, "multitalk-480", WAN_REPO, TEACACHE_COEFFICIENTS_480),
        Size("infinitetalk-720", 11.0, "multitalk-720", WAN_REPO, TEACACHE_COEFFICIENTS_720),
    ),
    motion_frames=9,
    sample_steps=40,
    dubs_video=True,
    weights=(
        WeightsOption(
            "infinitetalk_dir",
            "infinitetalk_file",
            help="InfiniteTalk's adapter file: InfiniteTalk/single/infinitetalk.safetensors (one person) or "
            "multi/infinitetalk.safetensors (several); with --ckpt_dir the Wan2.1-I2V-14B folder",
            convert_help="convert InfiniteTalk: InfiniteTalk/single/infinitetalk.safetensors (one person) or "
            "multi/... (several); not with --multitalk_dir",
        ),
        WeightsOption(
            "dit_path",
            "dit_path",
            help="a full InfiniteTalk DiT checkpoint (torch.save with state_dict)",
            convert_help="convert InfiniteTalk from a full DiT checkpoint (instead of the Wan shards + "
            "--infinitetalk_dir)",
        ),
    ),
    weights_hint="InfiniteTalk/single/infinitetalk.safetensors, or multi/ for several persons; or --dit_path, or "
    "--quant with --quant_dir",
    weights_linked_into_wan=False,
    folder_kind="infinitetalk",
    download=Download(
        INFINITETALK_REPO,
        tuple(INFINITETALK_ALLOW_PATTERNS),
        flag="infinitetalk",
        help="also download InfiniteTalk's adapters (MeiGen-AI/InfiniteTalk single/ and multi/) for dubbing",
        generate_flags="--infinitetalk_dir {folder}/single/infinitetalk.safetensors --input_json <your cond_video "
        "input>.json",
    ),
    converter=Converter(
        function="convert_infinitetalk_to_diffusers",
        card=ModelCard(
            repo=INFINITETALK_REPO,
            tags=("infinitetalk", "video-to-video", "dubbing"),
            intro="""[InfiniteTalk](https://github.com/MeiGen-AI/InfiniteTalk) (audio-driven video dubbing and
image-to-video of unlimited length, MultiTalk's successor on Wan2.1-I2V-14B) converted to the diffusers format, for
the `WanInfiniteTalkPipeline` of diffusers-multitalk: it dubs a video (lips, head and body follow the new speech) or
animates a photo for as long as the audio lasts.""",
            call='out = pipe(video="interview.mp4", audio="new_voice.wav", prompt="A man talks to the camera.")',
            video="dubbed.mp4",
            adapter="the audio adapter and DiT weights InfiniteTalk trains",
        ),
        sources=_infinitetalk_sources,
        adapter_line=_infinitetalk_adapter_line,
    ),
    load_pipeline_class=_infinitetalk_pipeline,
    check_folders=_infinitetalk_folders,
)


# --------------------------------------------------------------------------------------------------------------------
# SoulX-FlashTalk
# --------------------------------------------------------------------------------------------------------------------
def _flashtalk_pipeline() -> type:
    from .pipelines.pipeline_wan_flashtalk import WanFlashTalkPipeline

    return WanFlashTalkPipeline


def _flashtalk_folders(wan_dir, wav2vec_dir, weights: Mapping[str, Any], quant=None, quant_path=None) -> list[str]:
    from .loaders.flashtalk import flashtalk_problems

    flashtalk_dir = weights.get("flashtalk_dir")
    problems = flashtalk_problems(flashtalk_dir or wan_dir, wav2vec_dir, wan_dir=wan_dir if flashtalk_dir else None)
    if quant_path is not None:
        problems.append(f"SoulX-FlashTalk ships no quantised DiT ({quant_path}): --quant quantises it on the fly.")
    return problems


def _flashtalk_sources(wan_dir: Path, weights: Mapping[str, Any]) -> ConversionSources:
    folder = Path(weights.get("flashtalk_dir") or wan_dir)
    return ConversionSources(
        report={"flashtalk_dir": str(folder.resolve())},
        names={"flashtalk": folder.name},
        texts={
            "transformer": "{flashtalk}/diffusion_pytorch_model-*.safetensors (SoulX-FlashTalk's merged DiT: Wan2.1-I2V "
            "base + audio adapter), keys renamed to diffusers' Wan names",
            "scheduler": "SoulX-FlashTalk's sampler: FlowMatchEulerDiscreteScheduler(stochastic_sampling=True, "
            "shift=5), its fixed timesteps loaded per chunk",
        },
    )


FLASHTALK = Variant(
    name="SoulX-FlashTalk",
    task="flashtalk-14B",
    summary="animates an image in real time (4 steps, no guidance)",
    pipeline_class_name="WanFlashTalkPipeline",
    # One size, the reference's 768 x 448 (infer_params.yaml), shift 5. No TeaCache fit exists for this DiT at 4
    # steps; the 480P fit is listed for the hooks' table (TeaCache is of little use at 4 steps).
    sizes=(Size("flashtalk-448", 5.0, "flashtalk-448", WAN_REPO, TEACACHE_COEFFICIENTS_480),),
    motion_frames=5,
    sample_steps=4,
    dubs_video=False,
    weights=(
        WeightsOption(
            "flashtalk_dir",
            "flashtalk_dir",
            help="the SoulX-FlashTalk-14B folder (its merged DiT; its T5, CLIP and VAE too, so --ckpt_dir may name it)",
            convert_help="convert SoulX-FlashTalk: the SoulX-FlashTalk-14B folder",
        ),
    ),
    weights_hint="the SoulX-FlashTalk-14B folder (--flashtalk_dir; --ckpt_dir may name the same folder)",
    weights_linked_into_wan=False,
    folder_kind="flashtalk",
    download=Download(
        FLASHTALK_REPO,
        tuple(FLASHTALK_ALLOW_PATTERNS),
        flag="flashtalk",
        help="also download SoulX-FlashTalk-14B (Soul-AILab), the real-time model (4 steps, no guidance)",
        generate_flags="--task flashtalk-14B --size flashtalk-448 --ckpt_dir {folder} --flashtalk_dir {folder}",
    ),
    converter=Converter(
        function="convert_original_to_diffusers",
        card=ModelCard(
            repo=FLASHTALK_REPO,
            tags=("flashtalk", "real-time"),
            intro="""[SoulX-FlashTalk](https://github.com/Soul-AILab/SoulX-FlashTalk) (real-time audio-driven avatars:
InfiniteTalk's DiT on Wan2.1-I2V-14B distilled to 4 steps without classifier-free guidance) converted to the diffusers
format, for the `WanFlashTalkPipeline` of diffusers-multitalk.""",
            call='out = pipe(image="man.png", audio="speech.wav", output_path="talk.mp4")',
            video="talk.mp4",
            adapter="the merged DiT (Wan2.1-I2V base and audio adapter, distilled)",
        ),
        sources=_flashtalk_sources,
        adapter_line=lambda sources: FLASHTALK.converter.card.adapter,
    ),
    load_pipeline_class=_flashtalk_pipeline,
    check_folders=_flashtalk_folders,
    frame_num=33,
    guidance_scale=1.0,
    audio_guidance_scale=1.0,
)


# --------------------------------------------------------------------------------------------------------------------
# the registry and its lookups
# --------------------------------------------------------------------------------------------------------------------
VARIANTS: tuple[Variant, ...] = (MULTITALK, INFINITETALK, FLASHTALK)
# What an option left unset means (the reference's --task default).
DEFAULT_VARIANT = MULTITALK

TASKS: tuple[str, ...] = tuple(variant.task for variant in VARIANTS)
SIZES: tuple[str, ...] = tuple(size.name for variant in VARIANTS for size in variant.sizes)
# Every flag naming a model's own weights, in registry order.
WEIGHTS_OPTIONS: tuple[WeightsOption, ...] = tuple(option for variant in VARIANTS for option in variant.weights)

_BY_TASK = {variant.task: variant for variant in VARIANTS}
_BY_SIZE = {size.name: variant for variant in VARIANTS for size in variant.sizes}
_BY_PIPELINE = {variant.pipeline_class_name: variant for variant in VARIANTS}


def get_variant(task: str) -> Variant:
    """The entry of `task` (`--task`: "multitalk-14B", "infinitetalk-14B", "flashtalk-14B")."""
    if task not in _BY_TASK:
        raise ValueError(f"unknown task {task!r}; the known tasks are {', '.join(TASKS)}")
    return _BY_TASK[task]


def variant_for_size(size: str) -> Variant:
    """The entry whose sizes include `size` (`--size`: "multitalk-480", "infinitetalk-720", ...)."""
    if size not in _BY_SIZE:
        raise ValueError(f"unknown size {size!r}; the known sizes are {', '.join(SIZES)}")
    return _BY_SIZE[size]


def get_size(size: str) -> Size:
    """The `Size` named `size` (its shift, bucket table, Wan base and TeaCache coefficients)."""
    return variant_for_size(size).size(size)


def variant_of_pipeline(pipeline) -> Variant:
    """The entry of a pipeline: an instance, a class (subclasses count) or a class name."""
    if isinstance(pipeline, str):
        if pipeline not in _BY_PIPELINE:
            raise ValueError(f"unknown pipeline {pipeline!r}; the known pipelines are {', '.join(_BY_PIPELINE)}")
        return _BY_PIPELINE[pipeline]
    cls = pipeline if isinstance(pipeline, type) else type(pipeline)
    for variant in VARIANTS:
        if issubclass(cls, variant.pipeline_class):
            return variant
    raise ValueError(
        f"{cls.__name__} is not a pipeline of a known model; the known pipelines are {', '.join(_BY_PIPELINE)}"
    )


def pick_variant(
    task: str | None = None, size: str | None = None, weights: tuple[str, ...] = (), dubbing: bool = False
) -> Variant:
    """The model a request asks for. A model other than the default one is picked by its task, one of its sizes or
    one of its weights flags (`weights`: the names of the flags given); then a video to dub (`dubbing`) picks the
    first model that dubs; else `task`'s model (an unknown task gives the default one: the checks name it)."""
    for variant in VARIANTS:
        if variant is DEFAULT_VARIANT:
            continue
        if task == variant.task or size in variant.size_names or any(o.name in weights for o in variant.weights):
            return variant
    asked = _BY_TASK.get(task, DEFAULT_VARIANT)
    if dubbing and not asked.dubs_video:
        return next(variant for variant in VARIANTS if variant.dubs_video)
    return asked


def dubbing_requirement(words=None) -> str:
    """What a request to dub needs when the loaded model cannot: for the front ends' errors. `words(name)` says a
    model option in the front end's words (the command line: its flag); by default its name (the server's settings,
    as the HTTP API and the web app say them)."""
    words = words or (lambda name: name)
    dubbing = [variant for variant in VARIANTS if variant.dubs_video]
    names = " or ".join(variant.name for variant in dubbing)
    starts = "; or ".join(f"{words(variant.weights[0].name)} ({variant.name}'s weights)" for variant in dubbing)
    tiny = " or ".join(f"{words('tiny')} with {words('task')} {variant.task}" for variant in dubbing)
    return f"dubbing needs {names}: a server started with {starts}, or {tiny}"


def describe_variants() -> list[str]:
    """One line per model (`multitalk info`): its task, name, what it does, sizes, steps and weights flags."""
    lines = []
    for variant in VARIANTS:
        flags = ", ".join(option.flag for option in variant.weights) or "in --ckpt_dir"
        lines.append(
            f"{variant.task:18s} {variant.name}: {variant.summary}; --size {' / '.join(variant.size_names)}; "
            f"{variant.sample_steps} steps; weights {flags}"
        )
    return lines
