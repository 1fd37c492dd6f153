"""`multitalk generate` for InfiniteTalk: its README's commands map to WanInfiniteTalkPipeline's arguments, a
cond_video input picks InfiniteTalk, and the bundled tiny dub writes an mp4 as long as its new audio."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from diffusers_multitalk import cli, runtime
from diffusers_multitalk.runtime.options import variant_of_options


REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
BASE = ("--ckpt_dir weights/Wan2.1-I2V-14B-480P --wav2vec_dir weights/chinese-wav2vec2-base "
        "--infinitetalk_dir weights/InfiniteTalk/single/infinitetalk.safetensors")  # fmt: skip
VIDEO = {"prompt": "a man talks", "cond_video": "examples/single/ref_video.mp4", "cond_video_is_image": False,
         "cond_audio": {"person1": "examples/single/1.wav"}}  # fmt: skip
IMAGE = {"prompt": "a man talks", "cond_video": "examples/single/ref_image.png", "cond_video_is_image": True,
         "cond_audio": {"person1": "examples/single/1.wav"}}  # fmt: skip

# InfiniteTalk's README commands (generate_infinitetalk.py ... -> multitalk generate ...), what they must change from
# the defaults below, and the flags this build refuses.
README_COMMANDS = [
    ("480P", f"{BASE} --input_json x.json --size infinitetalk-480 --sample_steps 40 --mode streaming --motion_frame 9 "
     "--save_file infinitetalk_res", VIDEO, {}, set()),
    ("720P", f"{BASE} --input_json x.json --size infinitetalk-720 --sample_steps 40 --mode streaming --motion_frame 9 "
     "--save_file infinitetalk_res_720p", VIDEO, {"resolution": "multitalk-720", "shift": 11.0}, set()),
    ("low VRAM", f"{BASE} --input_json x.json --size infinitetalk-480 --sample_steps 40 --num_persistent_param_in_dit 0 "
     "--mode streaming --motion_frame 9 --save_file infinitetalk_res_lowvram", VIDEO, {}, set()),
    ("image to video, motion frame default", f"{BASE} --input_json x.json --size infinitetalk-480 --mode streaming",
     IMAGE, {}, set()),
    ("FusionX LoRA, 8 steps", f"{BASE} --lora_dir weights/Wan2.1_I2V_14B_FusionX_LoRA.safetensors --input_json x.json "
     "--lora_scale 1.0 --size infinitetalk-480 --sample_text_guide_scale 1.0 --sample_audio_guide_scale 2.0 "
     "--sample_steps 8 --mode streaming --motion_frame 9 --sample_shift 2 --save_file infinitetalk_res_lora", VIDEO,
     {"num_inference_steps": 8, "guidance_scale": 1.0, "audio_guidance_scale": 2.0, "shift": 2.0}, set()),
    ("multi-GPU (FSDP)", f"{BASE} --dit_fsdp --t5_fsdp --ulysses_size=8 --input_json x.json --size "
     "infinitetalk-480 --sample_steps 40 --mode streaming --motion_frame 9 --save_file infinitetalk_res_multigpu", VIDEO,
     {}, set()),
]  # fmt: skip

# `resolution` is the size's bucket table (the registry's `Size.buckets`): InfiniteTalk's sizes use MultiTalk's.
DEFAULTS = dict(resolution="multitalk-480", mode="streaming", num_frames=81, motion_frames=9, max_frames=None,
                num_inference_steps=40, shift=7.0, guidance_scale=5.0, audio_guidance_scale=4.0, bbox=None)  # fmt: skip


def parse(flags: str):
    return cli.build_parser().parse_args(["generate", *shlex.split(flags)])


@pytest.mark.parametrize("name, flags, data, changed, refused", README_COMMANDS, ids=[c[0] for c in README_COMMANDS])
def test_infinitetalk_readme_commands_map_to_pipeline_kwargs(name, flags, data, changed, refused):
    import inspect

    from diffusers_multitalk.pipelines.pipeline_wan_infinitetalk import WanInfiniteTalkPipeline

    args = parse(flags)
    assert variant_of_options(args, data).task == "infinitetalk-14B"
    kwargs = runtime.build_generation_kwargs(args, data)
    for key, value in {**DEFAULTS, **changed}.items():
        assert kwargs[key] == value, (name, key)
    if data["cond_video_is_image"]:
        assert kwargs["image"] == data["cond_video"] and "video" not in kwargs
    else:
        assert kwargs["video"] == data["cond_video"] and "image" not in kwargs
    assert set(kwargs) <= set(inspect.signature(WanInfiniteTalkPipeline.__call__).parameters)
    assert {
        p.field for p in runtime.unsupported_flags(args, environ={"WORLD_SIZE": "8" if "ulysses" in flags else "1"})
    } == refused


def test_motion_frame_defaults_follow_the_model():
    assert runtime.build_generation_kwargs(parse("--input_json x.json"), {**VIDEO})["motion_frames"] == 9
    multitalk = {"prompt": "p", "cond_image": "a.png", "cond_audio": {"person1": "a.wav"}}
    assert runtime.build_generation_kwargs(parse("--input_json x.json"), multitalk)["motion_frames"] == 25


def test_infinitetalk_needs_its_weights_before_loading():
    args = parse("--ckpt_dir w --wav2vec_dir a --task infinitetalk-14B --input_json x.json")
    with pytest.raises(runtime.UserError, match="infinitetalk_dir: required"):
        runtime.check_generate_args(args)
    with pytest.raises(runtime.UserError, match="scene_seg"):
        runtime.check_generate_args(parse("--tiny --scene_seg --input_json x.json"))


def test_input_json_takes_cond_video(tmp_path):
    from diffusers_multitalk.input_json import InputJSONError, validate_input

    audio = EXAMPLES / "assets" / "speaker1.wav"
    data = validate_input({"prompt": "p", "cond_video": str(EXAMPLES / "assets" / "source_clip.mp4"),
                           "cond_audio": {"person1": str(audio)}})  # fmt: skip
    assert data["cond_video_is_image"] is False and data["image_size"] == (64, 96)
    (tmp_path / "not_a_video.mp4").write_text("hello")
    with pytest.raises(InputJSONError, match="cond_video.*neither an image nor a video"):
        validate_input(
            {"prompt": "p", "cond_video": str(tmp_path / "not_a_video.mp4"), "cond_audio": {"person1": str(audio)}}
        )
    with pytest.raises(InputJSONError, match="not both"):
        validate_input(
            {"prompt": "p", "cond_video": str(audio), "cond_image": str(audio), "cond_audio": {"person1": str(audio)}}
        )


def test_tiny_dub_is_as_long_as_its_new_audio(tmp_path):
    """The bundled video-to-video example: a 1.92 s source dubbed with 3.24 s of speech (the last frame is held)."""
    save = tmp_path / "dub"
    run = subprocess.run(
        [sys.executable, "-m", "diffusers_multitalk", "generate", "--tiny", "--input_json",
         str(EXAMPLES / "dub_video_tiny.json"), "--save_file", str(save), "--sample_steps", "1"],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    held = [line for line in run.stderr.splitlines() if "last frame is held" in line]
    assert len(held) == 1 and "the dub runs 3.20 s, the video 1.92 s" in held[0], run.stderr[-3000:]  # one line
    from diffusers_multitalk.pipelines.video_io import get_ffmpeg_exe
    from diffusers_multitalk.testing import stream_seconds

    log = subprocess.run([get_ffmpeg_exe(), "-i", str(save) + ".mp4"], capture_output=True, text=True).stderr
    assert "Audio: aac" in log and re.search(r"Video: h264.* 96x64", log)
    seconds = sf.info(EXAMPLES / "assets" / "speaker1.wav").duration
    assert abs(stream_seconds(str(save) + ".mp4", "v") - seconds) <= 0.15
    assert abs(stream_seconds(str(save) + ".mp4", "a") - seconds) <= 0.15


def test_download_plan_fetches_infinitetalk_adapters(tmp_path):
    from diffusers_multitalk.cli import download

    plan = download.download_plan(tmp_path, "infinitetalk-480")  # the size's model comes with its weights
    assert plan[0]["repo_id"] == "Wan-AI/Wan2.1-I2V-14B-480P"  # InfiniteTalk runs on the 480P base at both sizes
    step = next(s for s in plan if s["repo_id"] == "MeiGen-AI/InfiniteTalk")
    assert step["local_dir"] == tmp_path / "InfiniteTalk"
    assert step["allow_patterns"] == ["single/infinitetalk.safetensors", "multi/infinitetalk.safetensors"]
    assert download.download_plan(tmp_path, "infinitetalk-720")[0]["repo_id"] == "Wan-AI/Wan2.1-I2V-14B-480P"
    assert not any(s["repo_id"] == "MeiGen-AI/InfiniteTalk" for s in download.download_plan(tmp_path))
    assert cli.build_parser().parse_args(["download", "--infinitetalk"]).infinitetalk is True
