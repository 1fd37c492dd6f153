"""The model-variant registry (`diffusers_multitalk.variants`): every entry resolves, names are unique, the lookups
and their errors, and every front end (CLI, download, convert, serve, web app, HTTP API) takes its choices from it."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from diffusers_multitalk import variants
from diffusers_multitalk.variants import (
    DEFAULT_VARIANT,
    SIZES,
    TASKS,
    VARIANTS,
    WEIGHTS_OPTIONS,
    get_size,
    get_variant,
    pick_variant,
    variant_for_size,
    variant_of_pipeline,
)


def _choices(parser, command: str, flag: str):
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if flag in a.option_strings)


# --------------------------------------------------------------------------------------------------------------------
# the entries
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS, ids=[v.task for v in VARIANTS])
def test_every_entry_resolves(variant, tmp_path):
    from diffusers_multitalk.hooks.teacache import TEACACHE_COEFFICIENTS
    from diffusers_multitalk.loaders.original_folders import original_folder_kind
    from diffusers_multitalk.pipelines import WanAudioPipelineBase
    from diffusers_multitalk.pipelines.image_processing import RESOLUTION_BUCKETS

    cls = variant.pipeline_class
    assert cls.__name__ == variant.pipeline_class_name and issubclass(cls, WanAudioPipelineBase)
    assert variant_of_pipeline(cls) is variant and variant_of_pipeline(cls.__name__) is variant
    assert variant.sizes and variant.motion_frames >= 1 and (variant.motion_frames - 1) % 4 == 0
    assert variant.sample_steps >= 1
    for size in variant.sizes:
        assert size.buckets in RESOLUTION_BUCKETS and size.shift > 0
        assert size.wan_repo.startswith("Wan-AI/Wan2.1-I2V-14B-")
        # the hooks' own table is MultiTalk's DiT fit per bucket table; a size with a table of its own (FlashTalk's)
        # names its coefficients itself
        assert size.teacache_coefficients == TEACACHE_COEFFICIENTS.get(size.buckets, size.teacache_coefficients)
        assert len(size.teacache_coefficients) == 5
    # its weights flags are keywords of its `from_original`, and the runtime's options know them
    import inspect

    from diffusers_multitalk.runtime.options import GENERATE_DEFAULTS

    params = inspect.signature(cls.from_original).parameters
    for option in variant.weights:
        assert option.keyword in params and option.name in GENERATE_DEFAULTS and option.flag == f"--{option.name}"

    if not variant.weights_linked_into_wan:  # the runtime's generic route passes these
        assert {"wav2vec_dir", "dtype", "lora_path", "lora_scale", "quant", "quant_path"} <= set(params)
    # the original-folder check names what is missing, before anything loads
    problems = variant.check_folders(tmp_path / "Wan2.1-I2V-14B-480P", tmp_path / "wav2vec", {})
    assert problems and all(isinstance(p, str) for p in problems)
    assert variant.download.repo_id.endswith("/" + variant.download.folder) and variant.download.allow_patterns
    # a folder as its download writes it is recognised as its kind (from_pretrained's original-folder route)
    folder = tmp_path / variant.download.folder
    for pattern in variant.download.allow_patterns:
        (folder / pattern).parent.mkdir(parents=True, exist_ok=True)
        (folder / pattern).write_bytes(b"")
    assert original_folder_kind(folder) == variant.folder_kind
    assert variant.converter.card.repo == variant.download.repo_id


def test_names_are_unique():
    assert len(set(TASKS)) == len(TASKS) == len(VARIANTS)
    assert len(set(SIZES)) == len(SIZES) == sum(len(v.sizes) for v in VARIANTS)
    assert len({v.pipeline_class_name for v in VARIANTS}) == len(VARIANTS)
    assert len({o.name for o in WEIGHTS_OPTIONS}) == len(WEIGHTS_OPTIONS)
    flags = [v.download.flag for v in VARIANTS if v.download.flag]
    assert len(set(flags)) == len(flags)
    assert DEFAULT_VARIANT in VARIANTS and DEFAULT_VARIANT.download.flag is None  # the default one always comes
    assert [v for v in VARIANTS if v.dubs_video], "the web app and the API need a model that dubs"


def test_the_registry_imports_no_torch():
    code = "import sys, diffusers_multitalk.variants, diffusers_multitalk.cli.parser; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------------------------------
# lookups and their errors
# --------------------------------------------------------------------------------------------------------------------
def test_lookups():
    for variant in VARIANTS:
        assert get_variant(variant.task) is variant
        for size in variant.sizes:
            assert variant_for_size(size.name) is variant and get_size(size.name) is size
            assert variant.size(size.name) is size
    assert get_variant("infinitetalk-14B").motion_frames == 9 and get_variant("multitalk-14B").motion_frames == 25
    assert get_size("infinitetalk-720").shift == 11.0 and get_size("infinitetalk-720").buckets == "multitalk-720"
    # InfiniteTalk's README runs both of its sizes on the 480P base
    assert get_size("infinitetalk-720").wan_repo == "Wan-AI/Wan2.1-I2V-14B-480P"


def test_lookup_errors_list_the_known_names():
    with pytest.raises(ValueError, match="unknown task 'echomimic-14B'; the known tasks are multitalk-14B, "):
        get_variant("echomimic-14B")
    with pytest.raises(ValueError, match="unknown size 'multitalk-1080'") as err:
        variant_for_size("multitalk-1080")
    assert all(size in str(err.value) for size in SIZES)
    with pytest.raises(
        ValueError, match="unknown pipeline 'WanPipeline'; the known pipelines are WanMultiTalkPipeline"
    ):
        variant_of_pipeline("WanPipeline")
    with pytest.raises(ValueError, match="SimpleNamespace is not a pipeline of a known model"):
        variant_of_pipeline(SimpleNamespace())
    with pytest.raises(ValueError, match="MultiTalk has no size 'infinitetalk-480'; its sizes are multitalk-480"):
        get_variant("multitalk-14B").size("infinitetalk-480")


def test_variant_of_a_pipeline_instance():
    from diffusers_multitalk.tiny import make_tiny_pipeline

    for variant in VARIANTS:
        assert variant_of_pipeline(make_tiny_pipeline(0, pipeline_class=variant.pipeline_class)) is variant


def test_pick_variant():
    infinitetalk = get_variant("infinitetalk-14B")
    assert pick_variant() is DEFAULT_VARIANT
    assert pick_variant("multitalk-14B", "multitalk-480") is DEFAULT_VARIANT
    assert pick_variant("infinitetalk-14B") is infinitetalk
    assert pick_variant("multitalk-14B", "infinitetalk-720") is infinitetalk  # a size names its model
    assert pick_variant(weights=("dit_path",)) is infinitetalk  # so do its weights flags
    assert pick_variant(weights=("multitalk_dir",)) is DEFAULT_VARIANT
    assert pick_variant(dubbing=True) is infinitetalk  # a video to dub picks a model that dubs
    assert pick_variant("no-such-task") is DEFAULT_VARIANT  # the checks name it (check_generate_args)


# --------------------------------------------------------------------------------------------------------------------
# the front ends ask the registry
# --------------------------------------------------------------------------------------------------------------------
def test_cli_choices_come_from_the_registry():
    from diffusers_multitalk.cli.parser import SERVE_MODEL_FLAGS, build_parser

    parser = build_parser()
    assert tuple(_choices(parser, "generate", "--task").choices) == TASKS
    assert tuple(_choices(parser, "generate", "--size").choices) == SIZES
    assert tuple(_choices(parser, "download", "--size").choices) == SIZES
    assert _choices(parser, "generate", "--task").default == DEFAULT_VARIANT.task
    for option in WEIGHTS_OPTIONS:
        for command in ("generate", "serve", "convert"):
            assert _choices(parser, command, option.flag) is not None, (command, option.flag)
        assert option.flag in SERVE_MODEL_FLAGS
    for variant in VARIANTS:
        if variant.download.flag:
            args = parser.parse_args(["download", f"--{variant.download.flag}"])
            assert getattr(args, variant.download.flag) is True
        assert f"{variant.name} {variant.motion_frames}" in _choices(parser, "generate", "--motion_frame").help


def test_runtime_defaults_and_checks_come_from_the_registry():
    from diffusers_multitalk import runtime
    from diffusers_multitalk.cli.parser import build_parser

    assert runtime.SIZES == SIZES
    for variant in VARIANTS:
        args = build_parser().parse_args(["generate", "--tiny", "--task", variant.task])
        assert runtime.variant_of_options(args) is variant
        kwargs = runtime.build_generation_kwargs(
            args, {"prompt": "p", "cond_image": "a.png", "cond_audio": {"person1": "a.wav"}}
        )
        assert kwargs["motion_frames"] == variant.motion_frames
        assert kwargs["num_inference_steps"] == variant.sample_steps
        assert kwargs["shift"] == get_size(args.size).shift and kwargs["resolution"] == get_size(args.size).buckets
    both = build_parser().parse_args(["generate", "--tiny", "--multitalk_dir", "m", "--infinitetalk_dir", "i"])
    with pytest.raises(runtime.UserError, match="multitalk_dir: with infinitetalk_dir: give MultiTalk's or "):
        runtime.check_generate_args(both)


def test_download_plan_follows_the_registry(tmp_path):
    from diffusers_multitalk.cli.download import download_plan

    for variant in VARIANTS:
        for size in variant.sizes:
            plan = download_plan(tmp_path, size.name)
            repos = [step["repo_id"] for step in plan]
            assert repos[0] == size.wan_repo
            assert DEFAULT_VARIANT.download.repo_id in repos and variant.download.repo_id in repos
    others = tuple(v for v in VARIANTS if v is not DEFAULT_VARIANT)
    plan = download_plan(tmp_path, DEFAULT_VARIANT.sizes[0].name, variants=others)
    assert {v.download.repo_id for v in others} <= {step["repo_id"] for step in plan}


def test_conversion_asks_the_registry(tmp_path):
    from diffusers_multitalk.conversion import convert_original_to_diffusers, model_card

    with pytest.raises(ValueError, match=r"multitalk_dir \(--multitalk_dir\) and infinitetalk_dir"):
        convert_original_to_diffusers("w", "m", "v", tmp_path / "o", infinitetalk_dir="i")
    with pytest.raises(TypeError, match="Pass infinitetalk_dir or infinitetalk_file, not both"):
        convert_original_to_diffusers("w", None, "v", tmp_path / "o", infinitetalk_dir="i", infinitetalk_file="j")
    with pytest.raises(TypeError, match="Unexpected arguments: \\['unknown_dir'\\]"):
        convert_original_to_diffusers("w", None, "v", tmp_path / "o", unknown_dir="f")
    for variant in VARIANTS:
        report = {
            "pipeline_class": variant.pipeline_class_name,
            "converter": variant.converter.function,
            "created": "today",
            "torch_dtype": "bfloat16",
            "sources": {"wan_repo": "Wan-AI/Wan2.1-I2V-14B-480P", "wan_dir": "w/Wan2.1-I2V-14B-480P"},
            "versions": {},
            "components": {},
        }
        card = model_card(report)
        assert f"# {variant.name} (Wan2.1-I2V-14B-480P) for diffusers" in card
        assert variant.converter.card.repo in card and variant.converter.card.call in card


def test_web_app_and_api_name_the_models_that_dub():
    from diffusers_multitalk.variants import dubbing_requirement

    dubbing = [v for v in VARIANTS if v.dubs_video]
    text = dubbing_requirement()  # in the server's words: its settings' names, no command-line flag
    assert all(v.name in text and v.weights[0].name in text and v.task in text for v in dubbing) and "--" not in text
    flags = dubbing_requirement(lambda name: "--" + name)  # in the command line's
    assert all(v.weights[0].flag in flags for v in dubbing)
    pytest.importorskip("fastapi")
    from diffusers_multitalk.server.generation import NEEDS_DUBBING_MODEL, can_dub

    assert text in NEEDS_DUBBING_MODEL
    from diffusers_multitalk.tiny import make_tiny_pipeline

    for variant in VARIANTS:
        assert can_dub(make_tiny_pipeline(0, pipeline_class=variant.pipeline_class)) is variant.dubs_video
    pytest.importorskip("gradio")
    from diffusers_multitalk import app

    assert all(v.name in app.VIDEO_LABEL for v in dubbing)
    assert not [v for v in VARIANTS if not v.dubs_video and v.name in app.VIDEO_LABEL]


def test_variants_module_is_documented():
    assert variants.__doc__ and "docs/adding_a_model.md" in variants.__doc__


def test_info_lists_every_model(capsys):
    from argparse import Namespace

    from diffusers_multitalk.cli.info import cmd_info

    cmd_info(Namespace(ckpt_dir=None, multitalk_dir=None, wav2vec_dir=None, model=None))
    out = capsys.readouterr().out
    assert "models (--task" in out
    for variant in VARIANTS:
        line = next(line for line in out.splitlines() if line.strip().startswith(variant.task + " "))
        assert variant.name in line and all(size in line for size in variant.size_names)
        assert all(option.flag in line for option in variant.weights)
