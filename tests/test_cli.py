"""The `multitalk` command: MultiTalk's README commands -> pipeline arguments, refused flags, input-JSON checks,
an end-to-end `generate --tiny`, `download` (mocked Hub), `info` and `convert` forwarding."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import diffusers_multitalk.runtime.loading  # noqa: F401 - runtime.loading in the tests
from diffusers_multitalk import cli, runtime
from diffusers_multitalk.cli import CLIError, download, main
from diffusers_multitalk.input_json import InputJSONError, load_input_json, validate_input
from diffusers_multitalk.runtime import build_generation_kwargs


REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def parse(command: str):
    """A reference command line (after `generate_multitalk.py`) -> our parsed `generate` arguments."""
    return cli.build_parser().parse_args(["generate", *shlex.split(command)])


# Input files shaped like the reference's (our own text; paths as its README uses them, never read here).
SINGLE = {
    "prompt": "A singer performs in a small studio.",
    "cond_image": "examples/single/single1.png",
    "cond_audio": {"person1": "examples/single/1.wav"},
}
TWO_ADD = {
    "prompt": "Two people talk in a car.",
    "cond_image": "examples/multi/1/multi1.png",
    "audio_type": "add",
    "cond_audio": {"person1": "examples/multi/1/1.WAV", "person2": "examples/multi/1/2.WAV"},
    "bbox": {"person1": [160, 120, 1280, 1080], "person2": [160, 1320, 1280, 2280]},
}
TWO_PARA = {
    "prompt": "Two people sing together.",
    "cond_image": "examples/multi/2/multi2.png",
    "audio_type": "para",
    "cond_audio": {"person1": "examples/multi/2/1.wav", "person2": "examples/multi/2/1.wav"},
}
TTS_TRACKS_1 = {"person1": (np.zeros(24000, np.float32), 24000)}
TTS_TRACKS_2 = {"person1": (np.zeros(24000, np.float32), 24000), "person2": (np.zeros(24000, np.float32), 24000)}
TTS_SINGLE = {
    "prompt": "A host speaks.",
    "cond_image": "examples/single/single1.png",
    "cond_audio": TTS_TRACKS_1,
    "tts_audio": {"text": "Hello there.", "human1_voice": "weights/Kokoro-82M/voices/af_heart.pt"},
}
TTS_TWO = {
    "prompt": "Two hosts chat.",
    "cond_image": "examples/multi/1/multi1.png",
    "audio_type": "para",
    "cond_audio": TTS_TRACKS_2,
    "tts_audio": {
        "text": "(s1) Hi. (s2) Hello!",
        "human1_voice": "weights/Kokoro-82M/voices/af_heart.pt",
        "human2_voice": "weights/Kokoro-82M/voices/am_adam.pt",
    },
}

BASE = "--ckpt_dir weights/Wan2.1-I2V-14B-480P --wav2vec_dir 'weights/chinese-wav2vec2-base'"
FUSIONX = "weights/Wan2.1_I2V_14B_FusionX_LoRA.safetensors"
QUANT_LORA = "weights/MeiGen-MultiTalk/quant_models/quant_model_int8_FusionX.safetensors"

# Every generate_multitalk.py command of MultiTalk's README: (name, flags, input, WORLD_SIZE, expected kwargs that
# differ from the defaults, refused flags, LoRAs).
README_COMMANDS = [
    (
        "single, one GPU",
        f"{BASE} --input_json examples/single_example_1.json --sample_steps 40 --mode streaming --use_teacache "
        "--save_file single_long_exp",
        SINGLE,
        1,
        {},
        set(),
        [],
    ),
    (
        "single, low VRAM",
        f"{BASE} --input_json examples/single_example_1.json --sample_steps 40 --mode streaming "
        "--num_persistent_param_in_dit 0 --use_teacache --save_file single_long_lowvram_exp",
        SINGLE,
        1,
        {},
        set(),
        [],
    ),
    (
        "single, 8 GPUs (torchrun)",
        f"{BASE} --dit_fsdp --t5_fsdp --ulysses_size=8 --input_json examples/single_example_1.json --sample_steps 40 "
        "--mode streaming --use_teacache --save_file single_long_multigpu_exp",
        SINGLE,
        8,
        {},
        set(),
        [],
    ),
    (
        "single, TTS",
        f"{BASE} --input_json examples/single_example_tts_1.json --sample_steps 40 --mode streaming "
        "--num_persistent_param_in_dit 0 --use_teacache --save_file single_long_lowvram_tts_exp --audio_mode tts",
        TTS_SINGLE,
        1,
        {"audio_type": "para"},
        set(),
        [],
    ),
    (
        "multi, one GPU",
        f"{BASE} --input_json examples/multitalk_example_2.json --sample_steps 40 --mode streaming --use_teacache "
        "--save_file multi_long_exp",
        TWO_PARA,
        1,
        {"audio_type": "para"},
        set(),
        [],
    ),
    (
        "multi, low VRAM",
        f"{BASE} --input_json examples/multitalk_example_2.json --sample_steps 40 --mode streaming "
        "--num_persistent_param_in_dit 0 --use_teacache --save_file multi_long_lowvram_exp",
        TWO_PARA,
        1,
        {"audio_type": "para"},
        set(),
        [],
    ),
    (
        "multi, 8 GPUs (torchrun)",
        f"{BASE} --dit_fsdp --t5_fsdp --ulysses_size=8 --input_json examples/multitalk_example_2.json --sample_steps 40 "
        "--mode streaming --use_teacache --save_file multi_long_multigpu_exp",
        TWO_PARA,
        8,
        {"audio_type": "para"},
        set(),
        [],
    ),
    (
        "multi, TTS",
        f"{BASE} --input_json examples/multitalk_example_tts_1.json --sample_steps 40 --mode streaming "
        "--num_persistent_param_in_dit 0 --use_teacache --save_file multi_long_lowvram_tts_exp --audio_mode tts",
        TTS_TWO,
        1,
        {"audio_type": "para"},
        set(),
        [],
    ),
    (
        "single, FusionX LoRA",
        f"{BASE} --input_json examples/single_example_1.json --lora_dir {FUSIONX} --lora_scale 1.0 "
        "--sample_text_guide_scale 1.0 --sample_audio_guide_scale 2.0 --sample_steps 8 --mode streaming "
        "--num_persistent_param_in_dit 0 --save_file single_long_lowvram_fusionx_exp --sample_shift 2",
        SINGLE,
        1,
        {"num_inference_steps": 8, "shift": 2.0, "guidance_scale": 1.0, "audio_guidance_scale": 2.0},
        set(),
        [(FUSIONX, 1.0)],
    ),
    (
        "multi, FusionX LoRA",
        f"{BASE} --input_json examples/multitalk_example_2.json --lora_dir {FUSIONX} --lora_scale 1.0 "
        "--sample_text_guide_scale 1.0 --sample_audio_guide_scale 2.0 --sample_steps 8 --mode streaming "
        "--num_persistent_param_in_dit 0 --save_file multi_long_lowvram_fusionx_exp",
        TWO_PARA,
        1,
        {"audio_type": "para", "num_inference_steps": 8, "guidance_scale": 1.0, "audio_guidance_scale": 2.0},
        set(),
        [(FUSIONX, 1.0)],
    ),
    (
        "multi, int8",
        f"{BASE} --input_json examples/multitalk_example_2.json --sample_steps 40 --mode streaming --use_teacache "
        "--quant int8 --quant_dir weights/MeiGen-MultiTalk --num_persistent_param_in_dit 0 "
        "--save_file multi_long_lowvram_exp_quant",
        TWO_PARA,
        1,
        {"audio_type": "para"},
        set(),
        [],
    ),
    (
        "multi, int8 + LoRA",
        f"{BASE} --input_json examples/multitalk_example_1.json --quant int8 --quant_dir weights/MeiGen-MultiTalk "
        f"--lora_dir {QUANT_LORA} --sample_text_guide_scale 1.0 --sample_audio_guide_scale 2.0 --sample_steps 8 "
        "--mode streaming --num_persistent_param_in_dit 0 --save_file multi_long_lowvram_fusionx_exp_quant --sample_shift 2",
        TWO_ADD,
        1,
        {
            "audio_type": "add",
            "num_inference_steps": 8,
            "shift": 2.0,
            "guidance_scale": 1.0,
            "audio_guidance_scale": 2.0,
            "bbox": [[160, 120, 1280, 1080], [160, 1320, 1280, 2280]],
        },
        set(),
        [(QUANT_LORA, 1.2)],
    ),
    # the README's "Usage" list: --size multitalk-720, --mode clip, --use_apg
    (
        "usage: 720P clip with APG",
        f"{BASE} --input_json x.json --size multitalk-720 --mode clip --use_apg",
        SINGLE,
        1,
        {"resolution": "multitalk-720", "shift": 11.0, "mode": "clip", "max_frames": None, "use_apg": True},
        set(),
        [],
    ),
]

DEFAULT_KWARGS = dict(
    resolution="multitalk-480",
    height=None,
    width=None,
    allow_upscale=True,
    mode="streaming",
    num_frames=81,
    motion_frames=25,
    max_frames=None,
    num_inference_steps=40,
    shift=7.0,
    guidance_scale=5.0,
    audio_guidance_scale=4.0,
    use_apg=False,
    apg_momentum=-0.75,
    apg_norm_threshold=55.0,
    color_correction_strength=1.0,
    audio_type="add",
    bbox=None,
)


@pytest.mark.parametrize(
    "name, flags, data, world_size, changed, refused, loras", README_COMMANDS, ids=[c[0] for c in README_COMMANDS]
)
def test_readme_commands_map_to_pipeline_kwargs(name, flags, data, world_size, changed, refused, loras):
    args = parse(flags)
    kwargs = build_generation_kwargs(args, data)
    expected = {**DEFAULT_KWARGS, **changed}
    for key, value in expected.items():
        assert kwargs[key] == value, (name, key)
    persons = sorted(data["cond_audio"], key=lambda k: int(k[6:]))
    assert kwargs["audio"] == [data["cond_audio"][k] for k in persons]
    assert kwargs["image"] == data["cond_image"] and kwargs["prompt"] == data["prompt"]
    assert isinstance(kwargs["generator"], torch.Generator) and kwargs["generator"].initial_seed() == 42
    # every key is a real pipeline argument
    import inspect

    from diffusers_multitalk import WanMultiTalkPipeline

    assert set(kwargs) <= set(inspect.signature(WanMultiTalkPipeline.__call__).parameters)
    assert {p.field for p in runtime.unsupported_flags(args, environ={"WORLD_SIZE": str(world_size)})} == refused
    assert runtime.lora_specs(args) == loras
    if "--save_file" in flags:
        assert args.save_file == flags.split("--save_file ")[1].split()[0]


def test_reference_defaults():
    args = parse("")
    # the size, frames per chunk and guidance are the model's own unless given (the variant registry's)
    assert (args.size, args.frame_num, args.sample_text_guide_scale, args.sample_audio_guide_scale) == (None,) * 4
    flashtalk = runtime.with_model_defaults(parse("--task flashtalk-14B"))
    assert (flashtalk.size, flashtalk.frame_num, flashtalk.sample_text_guide_scale) == ("flashtalk-448", 33, 1.0)
    assert runtime.with_model_defaults(parse("--frame_num 41")).frame_num == 41  # what the user gives stays
    runtime.with_model_defaults(args)
    assert (args.task, args.size, args.frame_num, args.motion_frame, args.mode) == (
        "multitalk-14B",
        "multitalk-480",
        81,
        None,
        None,
    )
    assert (args.sample_steps, args.sample_shift, args.base_seed, args.input_json) == (None, None, 42, "examples.json")
    assert (args.sample_text_guide_scale, args.sample_audio_guide_scale, args.lora_scale) == (5.0, 4.0, [1.2])
    assert (args.offload_model, args.audio_mode, args.audio_save_dir, args.teacache_thresh) == (
        None,
        "localfile",
        None,
        0.2,
    )
    assert (args.apg_momentum, args.apg_norm_threshold, args.color_correction_strength) == (-0.75, 55, 1.0)
    assert (args.ulysses_size, args.ring_size, args.quant, args.quant_dir, args.num_persistent_param_in_dit) == (
        1,
        1,
        None,
        None,
        None,
    )
    kwargs = build_generation_kwargs(args, SINGLE)
    # no mode given: the whole audio (the pipeline picks clip or streaming); no hidden length cap
    assert kwargs["mode"] is None and kwargs["max_frames"] is None and kwargs["shift"] == 7.0
    assert build_generation_kwargs(parse("--max_frame_num 500"), SINGLE)["max_frames"] == 500
    assert build_generation_kwargs(parse("--size multitalk-720"), SINGLE)["shift"] == 11.0
    assert parse("--offload_model False").offload_model is False and parse("--offload_model yes").offload_model is True
    overrides = build_generation_kwargs(
        parse("--height 64 --width 96 --frame_num 5 --motion_frame 1 --base_seed 7"), SINGLE
    )
    assert (overrides["height"], overrides["width"], overrides["num_frames"], overrides["motion_frames"]) == (
        64,
        96,
        5,
        1,
    )
    assert overrides["generator"].initial_seed() == 7
    assert build_generation_kwargs(parse("--base_seed -1"), SINGLE)["generator"].initial_seed() >= 0


def test_default_save_file_and_output_path():
    import datetime

    name = runtime.default_save_file(parse(""), "a b/c", now=datetime.datetime(2025, 1, 2, 3, 4, 5))
    assert name == "multitalk-14B_multitalk-480_1_1_a_b_c_20250102_030405"
    assert runtime.output_path("x/demo") == Path("x/demo.mp4") and runtime.output_path("demo.mp4") == Path("demo.mp4")


@pytest.mark.parametrize(
    "flags, named",
    [
        ("--quant int8 --quant_dir weights/MeiGen-MultiTalk", ["--quant int8"]),
        ("--ulysses_size 2 --ring_size 2 --dit_fsdp --t5_fsdp", ["--ulysses_size 2", "--ring_size 2"]),
        ("--dit_fsdp --t5_fsdp --t5_cpu", ["--dit_fsdp", "--t5_fsdp", "--t5_fsdp: with --t5_cpu"]),
        (
            "--ulysses_size 2 --quant int8 --offload_model True --num_persistent_param_in_dit 0",
            [
                "--quant int8: with --ulysses_size",
                "--offload_model True: with --ulysses_size",
                "--num_persistent_param_in_dit 0: with --ulysses_size",
            ],
        ),
    ],
)
def test_unsupported_flags_fail_clearly(flags, named, capsys):
    # refused before any input or model is looked at (the input file does not even exist)
    status = main(["generate", "--tiny", "--input_json", "missing.json", *shlex.split(flags)])
    err = capsys.readouterr().err
    assert status == 2  # a bad request: argparse's usage status
    assert "cannot honour" in err
    for flag in named:
        assert flag in err


def test_teacache_is_honoured():
    from diffusers_multitalk.hooks.teacache import TEACACHE_HOOK

    args = parse("--tiny --use_teacache --teacache_thresh 0.3 --size multitalk-720")
    assert runtime.unsupported_flags(args, environ={}) == []
    pipe = runtime.load_pipeline(args, torch.device("cpu"), torch.float32)
    head = pipe.transformer.blocks[0]._diffusers_hook.get_hook(TEACACHE_HOOK)
    assert head is not None and head.config.threshold == 0.3 and head.config.resolution == "multitalk-720"
    with pytest.raises(CLIError, match="teacache_thresh 0.0"):
        runtime.check_generate_args(parse("--tiny --use_teacache --teacache_thresh 0"))


def test_invalid_arguments_reported_together(capsys):
    status = main(["generate", "--frame_num", "80", "--height", "64", "--input_json", "x.json"])
    err = capsys.readouterr().err
    assert status == 2  # a bad request: argparse's usage status
    assert "--frame_num 80" in err and "--height: give --width too, or neither" in err and "no model" in err
    assert main(["generate", "--tiny", "--ckpt_dir", "w", "--input_json", "x.json"]) == 2
    assert "not used with --tiny" in capsys.readouterr().err
    assert main(["generate", "--tiny", "--lora_dir", "weights/missing_lora.safetensors", "--input_json", "x.json"]) == 2
    assert "--lora_dir weights/missing_lora.safetensors: does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --tiny and --model exclude each other
        main(["generate", "--tiny", "--model", "x"])


# ----------------------------------------------------------------------------------------------------------------
# Input JSON
# ----------------------------------------------------------------------------------------------------------------
def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_examples_are_valid():
    two = load_input_json(EXAMPLES / "two_person_tiny.json")
    assert list(two["cond_audio"]) == ["person1", "person2"] and two["num_persons"] == 2
    assert all(Path(p).is_file() for p in two["cond_audio"].values()) and Path(two["cond_image"]).is_file()
    assert two["image_size"] == (480, 832) and list(two["bbox"]) == ["person1", "person2"]
    single = load_input_json(EXAMPLES / "single_tiny.json")
    assert single["num_persons"] == 1 and single["bbox"] is None


def test_every_problem_reported_at_once_with_paths(tmp_path):
    (tmp_path / "face.png").write_bytes((EXAMPLES / "assets" / "two_people.png").read_bytes())
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    bad = _write(
        tmp_path / "bad.json",
        {
            "prompt": 123,
            "cond_imgae": "face.png",
            "audio_type": "both",
            "cond_audio": {"person1": "a.wav", "person2": "x.wav"},
            "bbox": {"person1": [1, 2, 3], "person2": [0, 0, 10, "10"]},
        },
    )
    with pytest.raises(InputJSONError) as info:
        load_input_json(bad)
    problems = info.value.problems
    text = "\n".join(problems)
    assert "$.prompt: expected a string, got number 123" in problems
    assert any(p.startswith("$.cond_image: missing: give cond_image (an image) or cond_video") for p in problems)
    assert "$.cond_imgae: unknown key; did you mean 'cond_image'?" in problems
    assert "$.audio_type: expected 'add' or 'para', got 'both'" in problems
    assert "$.cond_audio.person2: 'x.wav' does not exist" in text
    assert "$.bbox.person1: expected 4 numbers" in text and "$.bbox.person2: expected 4 numbers" in text
    assert "$.cond_audio.person1: 'a.wav': cannot be decoded as audio" in text  # 4 bytes, not a sound
    assert len(problems) == 8, text


def test_cli_prints_all_json_problems(tmp_path, capsys):
    bad = _write(tmp_path / "bad.json", {"cond_image": "nope.png", "cond_audio": {"person1": 5}})
    assert main(["generate", "--tiny", "--input_json", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "3 problems" in err
    assert "$.prompt: missing (required)" in err
    assert "$.cond_image: 'nope.png' does not exist" in err
    assert "$.cond_audio.person1: expected a string (a file path), got number 5" in err


def test_json_syntax_and_top_level(tmp_path):
    with pytest.raises(InputJSONError, match=r"\$: not valid JSON \(.* line 1"):
        load_input_json(_write(tmp_path / "broken.json", '{"prompt": '))
    with pytest.raises(InputJSONError, match=r"\$: expected an object"):
        validate_input([1, 2])
    with pytest.raises(InputJSONError, match="does not exist"):
        load_input_json(tmp_path / "absent.json")


def _assets(tmp_path):
    for name in ("two_people.png", "speaker1.wav", "speaker2.wav"):
        (tmp_path / name).write_bytes((EXAMPLES / "assets" / name).read_bytes())


def test_persons_boxes_and_keys(tmp_path):
    _assets(tmp_path)
    data = {
        "prompt": "p",
        "cond_image": "two_people.png",
        "cond_audio": {"person1": "speaker1.wav", "person3": "speaker2.wav", "Person 4": "speaker2.wav"},
        "bbox": {"person1": [0, 0, 481, 100], "person3": [10, 50, 5, 60], "person5": [0, 0, 1, 1]},
    }
    with pytest.raises(InputJSONError) as info:
        validate_input(data, base_dir=tmp_path)
    text = "\n".join(info.value.problems)
    assert "$.cond_audio: person2 is missing" in text
    assert "$.cond_audio[\"Person 4\"]: persons are named person1, person2, ...; did you mean 'person4'?" in text
    assert "$.bbox.person1: [0, 0, 481, 100] is outside the 832x480 (WxH) image" in text
    assert "$.bbox.person3: [10, 50, 5, 60] is empty" in text
    assert "$.bbox.person5: no such person in cond_audio" in text


def test_audio_mode_decides_required_block(tmp_path):
    _assets(tmp_path)
    tts_only = {
        "prompt": "p",
        "cond_image": "two_people.png",
        "cond_audio": {},
        "tts_audio": {
            "text": "(s1) Hi. (s2) Hello. (s3) Bye.",
            "human1_voice": "af_heart",
            "human2_voice": "voices/missing.pt",
            "humn3_voice": "x",
        },
    }
    with pytest.raises(InputJSONError) as info:
        validate_input(tts_only, base_dir=tmp_path, audio_mode="localfile")
    text = "\n".join(info.value.problems)
    assert "$.cond_audio: no audio given" in text and "run with --audio_mode tts" in text
    with pytest.raises(InputJSONError) as info:
        validate_input(tts_only, base_dir=tmp_path, audio_mode="tts")
    text = "\n".join(info.value.problems)
    # no Kokoro-82M folder here: a missing voice file is not an error (espeak-ng speaks instead) ...
    assert "human2_voice" not in text.replace("has no human3_voice", "")
    # ... but inside a Kokoro folder with its weights, it is
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "kokoro-v1_0.pth").write_bytes(b"")
    with pytest.raises(InputJSONError) as info:
        validate_input(tts_only, base_dir=tmp_path, audio_mode="tts")
    text = "\n".join(info.value.problems)
    assert "$.tts_audio.human2_voice: 'voices/missing.pt' does not exist" in text
    assert "$.tts_audio.humn3_voice: unknown key; did you mean 'human3_voice'?" in text
    assert "$.tts_audio.text: turn (s3) has no human3_voice" in text
    ok = validate_input(
        {
            **tts_only,
            "tts_audio": {"text": "(s1) Hi. (s2) Hello.", "human1_voice": "af_heart", "human2_voice": "am_adam"},
        },
        base_dir=tmp_path,
        audio_mode="tts",
    )
    assert ok["num_persons"] == 2 and ok["cond_audio"] == {} and ok["tts_audio"]["human2_voice"] == "am_adam"
    with pytest.raises(InputJSONError, match=r"\$\.tts_audio: missing \(required with --audio_mode tts\)"):
        validate_input(
            {"prompt": "p", "cond_image": "two_people.png", "cond_audio": {"person1": "speaker1.wav"}},
            base_dir=tmp_path,
            audio_mode="tts",
        )
    # "None": the reference's silent person (a listener), but not everyone
    listener = validate_input(
        {"prompt": "p", "cond_image": "two_people.png", "cond_audio": {"person1": "speaker1.wav", "person2": "None"}},
        base_dir=tmp_path,
    )
    assert listener["cond_audio"]["person2"] is None and listener["num_persons"] == 2
    with pytest.raises(InputJSONError, match="every person is 'None'"):
        validate_input(
            {"prompt": "p", "cond_image": "two_people.png", "cond_audio": {"person1": "None", "person2": "None"}},
            base_dir=tmp_path,
        )


def test_relative_paths_json_folder_first_then_cwd(tmp_path, monkeypatch):
    json_dir, cwd = tmp_path / "inputs", tmp_path / "work"
    (json_dir / "assets").mkdir(parents=True)
    (cwd / "assets").mkdir(parents=True)
    image = (EXAMPLES / "assets" / "two_people.png").read_bytes()
    (json_dir / "assets" / "img.png").write_bytes(image)  # next to the JSON
    (cwd / "assets" / "img.png").write_bytes(image)  # and in the working directory: the JSON's folder wins
    (cwd / "assets" / "a.wav").write_bytes((EXAMPLES / "assets" / "speaker1.wav").read_bytes())  # only in the cwd
    path = _write(
        json_dir / "in.json", {"prompt": "p", "cond_image": "assets/img.png", "cond_audio": {"person1": "assets/a.wav"}}
    )
    monkeypatch.chdir(cwd)
    data = load_input_json(path)
    assert data["cond_image"] == str((json_dir / "assets" / "img.png").resolve())
    assert data["cond_audio"]["person1"] == str((cwd / "assets" / "a.wav").resolve())


def test_schema_file_is_valid_json_schema():
    from jsonschema import Draft202012Validator

    from diffusers_multitalk.input_json import load_input_schema

    Draft202012Validator.check_schema(load_input_schema())


# ----------------------------------------------------------------------------------------------------------------
# generate end to end
# ----------------------------------------------------------------------------------------------------------------
def _streams(path: Path) -> str:
    import imageio_ffmpeg

    probe = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    )
    return "\n".join(line for line in probe.stderr.splitlines() if "Stream #" in line)


def test_generate_tiny_two_person_writes_mp4_with_audio(tmp_path, capsys):
    save = tmp_path / "out" / "demo"
    status = main(
        [
            "generate",
            "--tiny",
            "--input_json",
            str(EXAMPLES / "two_person_tiny.json"),
            "--frame_num",
            "5",
            "--mode",
            "clip",
            "--sample_steps",
            "2",
            "--height",
            "64",
            "--width",
            "96",
            "--use_teacache",
            "--save_file",
            str(save),
            "--audio_save_dir",
            str(tmp_path / "audio"),
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    video = Path(str(save) + ".mp4")
    assert out.strip().splitlines()[-1] == str(video)
    assert video.is_file() and video.stat().st_size > 0
    streams = _streams(video)
    assert re.search(r"Video: h264.* 96x64", streams), streams
    assert "Audio: aac" in streams, streams
    assert (tmp_path / "audio" / "two_people" / "sum.wav").is_file()


def test_generate_tiny_tts_example_speaks_with_espeak(tmp_path, capsys):
    """The bundled TTS example names Kokoro voice files that are not here: espeak-ng speaks, and says so."""
    save = tmp_path / "tts"
    status = main(
        [
            "generate",
            "--tiny",
            "--input_json",
            str(EXAMPLES / "two_person_tts_tiny.json"),
            "--audio_mode",
            "tts",
            "--frame_num",
            "5",
            "--mode",
            "clip",
            "--sample_steps",
            "1",
            "--height",
            "64",
            "--width",
            "96",
            "--save_file",
            str(save),
            "--audio_save_dir",
            str(tmp_path / "audio"),
            "--device",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert status == 0
    assert "speech synthesised with espeak-ng" in captured.err + captured.out
    streams = _streams(Path(str(save) + ".mp4"))
    assert "Audio: aac" in streams and re.search(r"Video: h264.* 96x64", streams), streams


def test_load_pipeline_tiny_with_lora_and_t5_cpu(tmp_path):
    from safetensors.torch import save_file

    from diffusers_multitalk.tiny import make_tiny_pipeline

    transformer = make_tiny_pipeline().transformer
    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    g = torch.Generator().manual_seed(0)
    lora = {}
    for i in range(transformer.config.num_layers):
        lora[f"diffusion_model.blocks.{i}.self_attn.q.lora_down.weight"] = torch.randn(2, dim, generator=g)
        lora[f"diffusion_model.blocks.{i}.self_attn.q.lora_up.weight"] = torch.randn(dim, 2, generator=g)
    save_file(lora, tmp_path / "lora.safetensors")
    args = parse(f"--tiny --lora_dir {tmp_path / 'lora.safetensors'} --lora_scale 0.5 --t5_cpu")
    runtime.check_generate_args(args)
    pipe = runtime.load_pipeline(args, torch.device("cpu"), torch.float32)
    assert pipe.get_active_adapters() == ["lora_0"]
    assert pipe.text_encoder.device.type == "cpu"


def test_tts_mode(monkeypatch, tmp_path):
    from diffusers_multitalk.audio import tts as tts_module

    # the TTS result's tracks become the persons' audio, mixed as they are laid out ("para")
    def fake_tts(block, engine=None):
        tracks = [np.ones(800, np.float32), np.zeros(800, np.float32)]
        return tts_module.TTSResult(tracks=tracks, mixed=tracks[0] + tracks[1], engine="fake")

    monkeypatch.setattr(tts_module, "tts_from_json_block", fake_tts)
    tracks = runtime.synthesize_tts({"text": "(s1) hi (s2) yo", "human1_voice": "a", "human2_voice": "b"})
    assert list(tracks) == ["person1", "person2"] and tracks["person1"][1] == 16000
    assert tracks["person1"][0].sum() == 800 and tracks["person2"][0].sum() == 0
    kwargs = build_generation_kwargs(
        parse("--audio_mode tts"), {"prompt": "p", "cond_image": "i.png", "cond_audio": tracks, "audio_type": "add"}
    )
    assert kwargs["audio_type"] == "para" and len(kwargs["audio"]) == 2
    # the reference uses TTS speech as synthesised, recordings loudness-normalised
    assert kwargs["normalize_loudness"] is False
    local = build_generation_kwargs(parse(""), {"prompt": "p", "cond_image": "i.png", "cond_audio": tracks})
    assert local["normalize_loudness"] is True

    # a TTS problem (here: an empty text) is a CLI error that names the field
    monkeypatch.undo()
    with pytest.raises(CLIError, match="tts_audio.text is missing or empty"):
        runtime.synthesize_tts({"text": " ", "human1_voice": "a"})


# ----------------------------------------------------------------------------------------------------------------
# download
# ----------------------------------------------------------------------------------------------------------------
def _connection_errors():
    from huggingface_hub import errors

    client = importlib.import_module(errors.HTTPError.__module__)  # the Hub's HTTP client (httpx)
    return [
        errors.LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub"),
        errors.OfflineModeIsEnabled("Cannot reach the Hub: offline mode is enabled."),
        client.ConnectError("[Errno -2] Name or service not known"),
    ]


@pytest.mark.parametrize("error", _connection_errors(), ids=lambda e: type(e).__name__)
def test_download_offline_fails_clearly(error, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def offline(**kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert main(["download", "--target", str(tmp_path / "weights")]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the Hugging Face Hub to get Wan-AI/Wan2.1-I2V-14B-480P" in err
    assert "run the same command again" in err


SHARDS = [f"diffusion_pytorch_model-{i:05d}-of-00007.safetensors" for i in range(1, 8)]


def _fake_hub(calls):
    """A snapshot_download that records its calls and writes the files the patterns ask for."""

    def snapshot_download(repo_id, revision=None, local_dir=None, allow_patterns=None, **kwargs):
        calls.append(dict(repo_id=repo_id, revision=revision, allow_patterns=list(allow_patterns), **kwargs))
        root = Path(local_dir)
        for pattern in allow_patterns:
            names = SHARDS if pattern.startswith("diffusion_pytorch_model-") else [pattern.replace("*", "spiece.model")]
            if pattern == "voices/*.pt":
                names = ["voices/af_heart.pt"]
            for name in names:
                target = root / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if name.endswith("index.json"):
                    files = SHARDS + (["multitalk.safetensors"] if repo_id.startswith("MeiGen") else [])
                    target.write_text(json.dumps({"weight_map": {f"k{i}": f for i, f in enumerate(files)}}))
                else:
                    target.write_text(repo_id)
        return str(root)

    return snapshot_download


def test_download_fetches_exact_files_and_links(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _fake_hub(calls))
    target = tmp_path / "weights"
    assert main(["download", "--target", str(target)]) == 0
    assert [(c["repo_id"], c["revision"], c["allow_patterns"]) for c in calls] == [
        (
            "Wan-AI/Wan2.1-I2V-14B-480P",
            None,
            [
                "config.json",
                "diffusion_pytorch_model-*-of-*.safetensors",
                "models_t5_umt5-xxl-enc-bf16.pth",
                "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
                "Wan2.1_VAE.pth",
                "google/umt5-xxl/*",
            ],
        ),
        (
            "MeiGen-AI/MeiGen-MultiTalk",
            None,
            ["multitalk.safetensors", "diffusion_pytorch_model.safetensors.index.json"],
        ),
        ("TencentGameMate/chinese-wav2vec2-base", None, ["config.json", "preprocessor_config.json"]),
        ("TencentGameMate/chinese-wav2vec2-base", "refs/pr/1", ["model.safetensors"]),
    ]
    wan, multitalk = target / "Wan2.1-I2V-14B-480P", target / "MeiGen-MultiTalk"
    for name in ("multitalk.safetensors", "diffusion_pytorch_model.safetensors.index.json"):
        assert (wan / name).is_symlink() and (wan / name).resolve() == (multitalk / name).resolve()
    out = capsys.readouterr().out
    assert f"--ckpt_dir {wan}" in out and f"--wav2vec_dir {target / 'chinese-wav2vec2-base'}" in out

    # the result passes `info` and the generate pre-check
    assert runtime.loading._wan_dir_problems(wan, need_linked_multitalk=True) == []
    assert main(["info", "--ckpt_dir", str(wan), "--wav2vec_dir", str(target / "chinese-wav2vec2-base")]) == 0
    assert "MISSING" not in capsys.readouterr().out

    # running it again resumes: the same calls, the links kept
    calls.clear()
    assert main(["download", "--target", str(target)]) == 0
    assert len(calls) == 4 and (wan / "multitalk.safetensors").is_symlink()
    assert "already links" in capsys.readouterr().err


def test_download_renames_wan_index_and_720p_tts_plan(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _fake_hub(calls))
    target = tmp_path / "w"
    wan = target / "Wan2.1-I2V-14B-720P"
    wan.mkdir(parents=True)
    (wan / "diffusion_pytorch_model.safetensors.index.json").write_text("wan's own")
    assert main(["download", "--target", str(target), "--size", "multitalk-720", "--tts", "--copy"]) == 0
    assert calls[0]["repo_id"] == "Wan-AI/Wan2.1-I2V-14B-720P"
    assert calls[-1]["repo_id"] == "hexgrad/Kokoro-82M"
    assert (wan / "diffusion_pytorch_model.safetensors.index.json_old").read_text() == "wan's own"
    index = wan / "diffusion_pytorch_model.safetensors.index.json"
    assert not index.is_symlink() and "multitalk.safetensors" in index.read_text()  # --copy
    no_link = download.download_plan(target, link=False)
    assert "diffusion_pytorch_model.safetensors.index.json" in no_link[0]["allow_patterns"]


# ----------------------------------------------------------------------------------------------------------------
# info and convert
# ----------------------------------------------------------------------------------------------------------------
def test_info_runs(capsys, tmp_path):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for needle in (
        "diffusers-multitalk",
        "torch:",
        "diffusers:",
        "transformers:",
        "device:",
        "attention backends",
        "native",
    ):
        assert needle in out
    assert re.search(r"native\s+usable", out)
    assert re.search(r"TTS \(--audio_mode tts\): kokoro (installed|not installed).*espeak-ng ", out)
    assert "quantisation (--quant int8|fp8): optimum-quanto" in out and "web app (multitalk serve): gradio" in out
    if not torch.cuda.is_available():
        assert re.search(r"flash3_fp8\s+it runs on CUDA GPUs, not cpu", out)
    assert main(["info", "--ckpt_dir", str(tmp_path), "--wav2vec_dir", str(tmp_path), "--model", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "[MISSING] models_t5_umt5-xxl-enc-bf16.pth" in out and "[MISSING] model_index.json" in out


TORCHAO_IMPORT_NOISE = ("Failed to load", "Unable to import `torchao`", "is an Enum subclass")


def test_commands_do_not_print_what_torchao_logs_on_import():
    """Where torchao is installed, importing the pipelines imports it (through diffusers, peft and transformers), and
    its import logs about C extensions this torch build cannot load, older tensor types and pytree deprecations; the
    command line keeps those lines out of its output."""
    pytest.importorskip("torchao")
    control = subprocess.run(
        [sys.executable, "-c", "import diffusers_multitalk.pipelines"], capture_output=True, text=True, timeout=300
    )
    if not any(line in control.stderr for line in TORCHAO_IMPORT_NOISE):
        pytest.skip("torchao imports without a word on this machine")
    run = subprocess.run(
        [sys.executable, "-m", "diffusers_multitalk", "info"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "attention backends" in run.stdout
    assert not [line for line in TORCHAO_IMPORT_NOISE if line in run.stderr + run.stdout], run.stderr


def test_generate_model_unreachable_fails_clearly(monkeypatch, capsys):
    def unreachable(model, torch_dtype=None, cls=None):
        raise OSError(f"Cannot load model {model}: the model is not fully cached locally (...)")

    monkeypatch.setattr(runtime.loading, "load_from_pretrained", unreachable)
    status = main(
        [
            "generate",
            "--model",
            "someone/multitalk-diffusers",
            "--input_json",
            str(EXAMPLES / "single_tiny.json"),
            "--device",
            "cpu",
        ]
    )
    assert status == 1
    assert "--model someone/multitalk-diffusers: Cannot load model" in capsys.readouterr().err
    assert main(["generate", "--model", "./no/such/folder", "--input_json", "x.json"]) == 2
    assert "neither a folder here nor a Hub repo id" in capsys.readouterr().err


def test_generate_refuses_incomplete_ckpt_dir(tmp_path, capsys):
    (tmp_path / "w2v").mkdir()
    status = main(
        [
            "generate",
            "--ckpt_dir",
            str(tmp_path),
            "--wav2vec_dir",
            str(tmp_path / "w2v"),
            "--input_json",
            str(EXAMPLES / "single_tiny.json"),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert status == 1 and "is incomplete" in err and "multitalk.safetensors" in err and "multitalk download" in err


def test_convert_forwards_flags(monkeypatch, capsys, tmp_path):
    received = {}
    fake = types.ModuleType("diffusers_multitalk.conversion")
    fake.convert_original_to_diffusers = lambda **kwargs: received.update(kwargs) or kwargs["output_dir"]
    monkeypatch.setitem(sys.modules, "diffusers_multitalk.conversion", fake)
    status = main(
        [
            "convert",
            "--wan_dir",
            "w",
            "--multitalk_dir",
            "m",
            "--wav2vec_dir",
            "a",
            "--output_dir",
            "o",
            "--dtype",
            "float16",
            "--lora_dir",
            "l.safetensors",
            "--lora_scale",
            "0.5",
            "--force",
            "--push_to_hub",
            "me/multitalk",
        ]
    )
    assert status == 0 and capsys.readouterr().out.strip() == "o"
    assert received == dict(
        wan_dir="w",
        multitalk_dir="m",
        wav2vec_dir="a",
        output_dir="o",
        dtype="float16",
        lora_dir="l.safetensors",
        lora_scale=0.5,
        force=True,
        push_to_hub="me/multitalk",
    )


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "generate" in capsys.readouterr().out


def test_parser_defaults_are_the_runtimes():
    """One home for every option's default: the CLI's parser takes the runtime's, which the app and the API use."""
    args = vars(cli.build_parser().parse_args(["generate"]))
    args.pop("command")
    assert args == runtime.GENERATE_DEFAULTS


def test_cli_and_app_make_the_same_pipeline_arguments(tmp_path, monkeypatch):
    """The same request through `multitalk generate` and through the web app reaches the pipeline with the same
    arguments (both go through the runtime's mapping)."""
    from diffusers_multitalk import app
    from diffusers_multitalk.cli import generate as generate_command

    calls = []

    class Recorder:
        _execution_device = torch.device("cpu")
        transformer = types.SimpleNamespace(disable_teacache=lambda: None, enable_teacache=lambda **kw: None)

        def check_inputs(self, **kwargs):
            pass

        def __call__(self, **kwargs):
            calls.append(kwargs)
            raise ValueError("recorded")  # stop before any work

    monkeypatch.setattr(generate_command, "load_pipeline", lambda *args: Recorder())
    image, audio = EXAMPLES / "assets" / "two_people.png", EXAMPLES / "assets" / "speaker1.wav"
    (tmp_path / "in.json").write_text(json.dumps({"prompt": "a talk", "cond_image": str(image),
                                                  "cond_audio": {"person1": str(audio)}}))  # fmt: skip
    status = main(["generate", "--tiny", "--input_json", str(tmp_path / "in.json"), "--save_file",
                   str(tmp_path / "cli"), "--sample_steps", "3", "--base_seed", "7", "--height", "64", "--width", "96"])  # fmt: skip
    assert status == 1 and len(calls) == 1
    with pytest.raises(Exception, match="recorded"):
        recorder = Recorder()
        app.generate_video(lambda: recorder, str(image), "a talk", audio=[str(audio)], num_inference_steps=3, seed=7,
                           height=64, width=96, output_dir=tmp_path / "app", negative_prompt=None)  # fmt: skip
    assert len(calls) == 2
    from_cli, from_app = calls
    for kwargs in calls:
        assert kwargs.pop("generator").initial_seed() == 7
        kwargs.pop("output_path")
    from_cli["image"], from_app["image"] = (
        str(from_cli["image"]),
        str(getattr(from_app["image"], "filename", from_app["image"])),
    )
    assert {k: v for k, v in from_cli.items() if k not in ("image", "audio")} == {
        k: v for k, v in from_app.items() if k not in ("image", "audio")
    }


def test_preset_fast_fills_the_sampling_flags_left_at_their_defaults():
    from diffusers_multitalk.runtime.options import apply_preset_options

    kwargs = build_generation_kwargs(apply_preset_options(parse("--preset fast")), SINGLE)
    assert (
        kwargs["num_inference_steps"],
        kwargs["guidance_scale"],
        kwargs["audio_guidance_scale"],
        kwargs["shift"],
    ) == (8, 1.0, 2.0, 2.0)
    mine = build_generation_kwargs(
        apply_preset_options(parse("--preset fast --sample_steps 4 --sample_shift 3")), SINGLE
    )
    assert (mine["num_inference_steps"], mine["shift"], mine["guidance_scale"]) == (4, 3.0, 1.0)
    assert build_generation_kwargs(apply_preset_options(parse("")), SINGLE)["num_inference_steps"] == 40
