"""InfiniteTalk's downloads -> diffusers folder (`multitalk convert --infinitetalk_dir ...`, `convert_original_to_diffusers`
with `infinitetalk_dir=` / `dit_path=`) on tiny original layouts, and every route that loads the result:
`WanInfiniteTalkPipeline.from_pretrained` (no remote code) and `DiffusionPipeline.from_pretrained(...,
trust_remote_code=True)` in a process that never imported the package (the reviewed `pipelines/pipeline_wan_infinitetalk.py`)."""

import filecmp
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from diffusers import DiffusionPipeline

from diffusers_multitalk import MultiTalkTransformer3DModel, WanInfiniteTalkPipeline
from diffusers_multitalk.conversion import convert_infinitetalk_to_diffusers, convert_original_to_diffusers
from diffusers_multitalk.loaders.transformer_original import convert_multitalk_transformer_to_original
from diffusers_multitalk.pipelines import model_index
from diffusers_multitalk.testing import tiny_generation_latents as generate
from diffusers_multitalk.testing import write_tiny_infinitetalk_folders
from diffusers_multitalk.tiny import make_tiny_components


ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ("text_encoder", "image_encoder", "transformer", "vae", "audio_encoder")


def assert_same_weights(a, b, names=WEIGHTS):
    for name in names:
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert set(sa) == set(sb), name
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), f"{name}.{key}"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_tiny_infinitetalk_folders(tmp_path_factory.mktemp("downloads"), seed=0)


@pytest.fixture(scope="module")
def adapter_file(folders):
    return folders["infinitetalk_dir"] / "single" / "infinitetalk.safetensors"


@pytest.fixture(scope="module")
def original(folders, adapter_file):
    return WanInfiniteTalkPipeline.from_original(
        folders["wan_dir"], adapter_file, folders["wav2vec_dir"], torch_dtype=torch.float32
    )


@pytest.fixture(scope="module")
def original_latents(original):
    return generate(original)


@pytest.fixture(scope="module")
def converted(folders, adapter_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "InfiniteTalk-tiny-diffusers"
    report = convert_original_to_diffusers(
        folders["wan_dir"],
        wav2vec_dir=folders["wav2vec_dir"],
        infinitetalk_dir=adapter_file,
        output_dir=out,
        torch_dtype=torch.float32,
    )
    return out, report


# --------------------------------------------------------------------------------------------------------------------
# the converted folder
# --------------------------------------------------------------------------------------------------------------------
def test_converted_folder_layout_report_and_verification(converted, original):
    out, report = converted
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_wan_infinitetalk", "WanInfiniteTalkPipeline"]
    assert index["transformer"] == ["transformer_multitalk", "MultiTalkTransformer3DModel"]
    assert report["remote_code_files"] == ["pipeline_wan_infinitetalk.py", "transformer/transformer_multitalk.py"]
    for name in report["remote_code_files"]:
        assert filecmp.cmp(out / name, model_index.REMOTE_CODE_DIR / name, shallow=False), name
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"

    saved = json.loads((out / "conversion_report.json").read_text())
    assert saved["pipeline_class"] == "WanInfiniteTalkPipeline"
    assert saved["converter"] == "convert_infinitetalk_to_diffusers"
    assert saved["sources"]["infinitetalk_file"].endswith("single/infinitetalk.safetensors")
    assert saved["sources"]["dit_path"] is None and "multitalk_dir" not in saved["sources"]
    # the verify step: every component reloaded from the folder equals the original-layout load
    assert saved["verification"]["ok"] and saved["verification"]["max_abs_diff"] == 0.0
    assert set(saved["verification"]["components"]) >= set(WEIGHTS)
    assert "single/infinitetalk.safetensors" in saved["components"]["transformer"]["source"]
    for name in ("transformer", "vae", "image_encoder", "audio_encoder"):
        assert saved["components"][name]["num_tensors"] == len(getattr(original, name).state_dict()), name


def test_model_card_names_infinitetalk_its_sources_and_both_loading_routes(converted):
    text = (converted[0] / "README.md").read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "diffusers" and meta["license"] == "apache-2.0"
    assert meta["base_model"] == ["Wan-AI/Wan2.1-I2V-14B-480P", "MeiGen-AI/InfiniteTalk"]
    assert {"diffusers-multitalk", "WanInfiniteTalkPipeline", "infinitetalk"} <= set(meta["tags"])
    assert "WanMultiTalkPipeline" not in meta["tags"]
    body = text.split("---\n", 2)[2]
    assert body.lstrip().startswith("# InfiniteTalk (Wan2.1-I2V-14B-480P) for diffusers")
    assert 'DiffusionPipeline.from_pretrained("path/to/this/folder", trust_remote_code=True' in body
    assert 'WanInfiniteTalkPipeline.from_pretrained("path/to/this/folder"' in body
    assert "`pipeline_wan_infinitetalk.py`" in body and 'pipe(video="interview.mp4"' in body
    assert "https://huggingface.co/MeiGen-AI/InfiniteTalk" in body and "`single/infinitetalk.safetensors`" in body
    assert "models_t5_umt5-xxl-enc-bf16.pth" in body and "TencentGameMate/chinese-wav2vec2-base" in body
    assert "multitalk.safetensors" not in body and "convert_infinitetalk_to_diffusers" in body


# --------------------------------------------------------------------------------------------------------------------
# loading routes: the same pipeline as from_original
# --------------------------------------------------------------------------------------------------------------------
def test_wan_infinitetalk_pipeline_from_pretrained(converted, original, original_latents):
    pipe = WanInfiniteTalkPipeline.from_pretrained(converted[0])
    assert type(pipe) is WanInfiniteTalkPipeline
    assert_same_weights(pipe, original)
    latents = generate(pipe)
    assert torch.equal(latents, original_latents), (latents - original_latents).abs().max()


def test_diffusion_pipeline_from_pretrained_with_remote_code(converted, original_latents):
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(converted[0])
    pipe = DiffusionPipeline.from_pretrained(converted[0], trust_remote_code=True)
    assert type(pipe) is WanInfiniteTalkPipeline and type(pipe.transformer) is MultiTalkTransformer3DModel
    assert torch.equal(generate(pipe), original_latents)


_FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from diffusers import DiffusionPipeline

    folder = sys.argv[1]
    assert "diffusers_multitalk" not in sys.modules
    result = {"imported_before_loading": "diffusers_multitalk" in sys.modules}
    try:
        DiffusionPipeline.from_pretrained(folder)
    except ValueError as err:
        result["without_trust"] = str(err).splitlines()[-1]
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    result["pipeline"] = f"{type(pipe).__module__}.{type(pipe).__name__}"
    result["transformer"] = f"{type(pipe.transformer).__module__}.{type(pipe.transformer).__name__}"
    t = np.arange(16000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    image = (np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8)
    pipe.set_progress_bar_config(disable=True)
    latents = pipe(
        image=image, audio=[(wave, 16000)], prompt="a person talks", height=64, width=96, num_frames=5,
        num_inference_steps=2, mode="clip", output_type="latent", generator=torch.Generator().manual_seed(0),
    ).frames  # [1, 16, T, h, w], as tiny_generation_latents returns
    torch.save(latents, sys.argv[2])
    result["latents"] = list(latents.shape)
    print(json.dumps(result, indent=1))
    """
)


def test_fresh_process_loads_with_trust_remote_code(converted, original_latents, tmp_path):
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH_PROCESS_SCRIPT)
    run = subprocess.run(
        [sys.executable, str(script), str(converted[0]), str(tmp_path / "latents.pt")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    print(run.stdout)  # pytest -s shows what a user sees
    result = json.loads(run.stdout[run.stdout.index("{") :])
    assert result["imported_before_loading"] is False
    assert "trust_remote_code=True" in result["without_trust"]
    assert result["pipeline"] == "diffusers_multitalk.pipelines.pipeline_wan_infinitetalk.WanInfiniteTalkPipeline"
    assert result["transformer"] == "diffusers_multitalk.models.transformer_multitalk.MultiTalkTransformer3DModel"
    latents = torch.load(tmp_path / "latents.pt", weights_only=True)
    assert torch.equal(latents, original_latents), (latents - original_latents).abs().max()


def test_dit_path_full_checkpoint(folders, tmp_path):
    tiny = make_tiny_components(0)["transformer"]
    path = tmp_path / "infinitetalk_dit.pth"
    torch.save({"state_dict": convert_multitalk_transformer_to_original(tiny.state_dict())}, path)
    wan_dir = tmp_path / "Wan2.1-I2V-14B-480P"  # no DiT shards: the checkpoint holds every DiT weight
    shutil.copytree(folders["wan_dir"], wan_dir, ignore=shutil.ignore_patterns("diffusion_pytorch_model*"))
    out = tmp_path / "out"
    report = convert_infinitetalk_to_diffusers(
        wan_dir, None, folders["wav2vec_dir"], out, torch_dtype="float32", dit_path=path
    )
    assert report["verification"]["ok"] and report["sources"]["dit_path"] == str(path.resolve())
    assert "infinitetalk_dit.pth" in report["components"]["transformer"]["source"]
    assert "`infinitetalk_dit.pth`, a full InfiniteTalk DiT checkpoint" in (out / "README.md").read_text()
    assert_same_weights(WanInfiniteTalkPipeline.from_pretrained(out), _NS(tiny), ["transformer"])


class _NS:
    def __init__(self, transformer):
        self.transformer = transformer


# --------------------------------------------------------------------------------------------------------------------
# errors before anything loads, and the command line
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_loading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the checkpoints were loaded")

    monkeypatch.setattr(WanInfiniteTalkPipeline, "from_original", fail)


def test_missing_files_are_named_before_loading(tmp_path, no_loading):
    folders = write_tiny_infinitetalk_folders(tmp_path / "src", seed=0)
    os.remove(folders["wan_dir"] / "Wan2.1_VAE.pth")
    shutil.rmtree(folders["infinitetalk_dir"] / "multi")
    with pytest.raises(FileNotFoundError) as err:
        convert_original_to_diffusers(
            folders["wan_dir"],
            wav2vec_dir=folders["wav2vec_dir"],
            output_dir=tmp_path / "out",
            infinitetalk_dir=folders["infinitetalk_dir"] / "multi" / "infinitetalk.safetensors",
        )
    message = str(err.value)
    assert message.startswith("Cannot convert:")
    assert "Wan2.1_VAE.pth" in message and "multi/infinitetalk.safetensors is missing" in message
    assert "huggingface-cli download MeiGen-AI/InfiniteTalk --include 'multi/*'" in message
    assert "multitalk.safetensors" not in message  # InfiniteTalk does not need MultiTalk's adapter
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_infinitetalk_to_diffusers(
            folders["wan_dir"], None, folders["wav2vec_dir"], tmp_path / "out", dit_path=tmp_path / "missing.pth"
        )
    assert not (tmp_path / "out").exists()


def test_infinitetalk_and_multitalk_dirs_exclude_each_other(folders, tmp_path, no_loading):
    with pytest.raises(ValueError) as err:
        convert_original_to_diffusers(
            folders["wan_dir"],
            multitalk_dir=tmp_path,
            wav2vec_dir=folders["wav2vec_dir"],
            infinitetalk_dir=folders["infinitetalk_dir"],
            output_dir=tmp_path / "out",
        )
    assert "--multitalk_dir" in str(err.value) and "--infinitetalk_dir" in str(err.value)


def test_cli_forwards_the_infinitetalk_flags(tmp_path):
    from diffusers_multitalk.cli import main

    with mock.patch("diffusers_multitalk.conversion.convert_original_to_diffusers", return_value={"ok": 1}) as convert:
        assert (
            main(
                [
                    "convert",
                    "--wan_dir",
                    "w",
                    "--infinitetalk_dir",
                    "it/single/infinitetalk.safetensors",
                    "--wav2vec_dir",
                    "v",
                    "--output_dir",
                    str(tmp_path / "o"),
                    "--dit_path",
                    "dit.pth",
                ]
            )
            == 0
        )
    kwargs = convert.call_args.kwargs
    assert kwargs["infinitetalk_dir"] == "it/single/infinitetalk.safetensors" and kwargs["dit_path"] == "dit.pth"
    assert kwargs["multitalk_dir"] is None and kwargs["wan_dir"] == "w" and kwargs["wav2vec_dir"] == "v"
    with mock.patch("diffusers_multitalk.conversion.convert_original_to_diffusers", return_value={"ok": 1}) as convert:
        assert (
            main(
                [
                    "convert",
                    "--wan_dir",
                    "w",
                    "--infinitetalk_dir",
                    "InfiniteTalk",
                    "--wav2vec_dir",
                    "v",
                    "--output_dir",
                    str(tmp_path / "o"),
                ]
            )
            == 0
        )
    assert convert.call_args.kwargs["infinitetalk_dir"] == "InfiniteTalk" and "dit_path" not in convert.call_args.kwargs
    # a MultiTalk conversion's call is as before: no InfiniteTalk arguments
    with mock.patch("diffusers_multitalk.conversion.convert_original_to_diffusers", return_value={"ok": 1}) as convert:
        assert (
            main(
                [
                    "convert",
                    "--wan_dir",
                    "w",
                    "--multitalk_dir",
                    "m",
                    "--wav2vec_dir",
                    "v",
                    "--output_dir",
                    str(tmp_path / "o"),
                ]
            )
            == 0
        )
    assert not {"infinitetalk_dir", "dit_path"} & set(convert.call_args.kwargs)


def test_cli_errors_name_both_flags_and_the_missing_files(folders, tmp_path, capsys, no_loading):
    from diffusers_multitalk.cli import main

    base = [
        "convert",
        "--wan_dir",
        str(folders["wan_dir"]),
        "--wav2vec_dir",
        str(folders["wav2vec_dir"]),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    assert main([*base, "--multitalk_dir", str(tmp_path), "--infinitetalk_dir", str(folders["infinitetalk_dir"])]) == 1
    err = capsys.readouterr().err
    assert "--multitalk_dir" in err and "--infinitetalk_dir" in err
    assert (
        main([*base, "--infinitetalk_dir", str(tmp_path / "InfiniteTalk" / "single" / "infinitetalk.safetensors")]) == 1
    )
    assert "single/infinitetalk.safetensors is missing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_multitalk_convert_infinitetalk_command(folders, tmp_path, capsys):
    from diffusers_multitalk.cli import main

    out = tmp_path / "out"
    assert (
        main(
            [
                "convert",
                "--wan_dir",
                str(folders["wan_dir"]),
                "--infinitetalk_dir",
                str(folders["infinitetalk_dir"]),
                "--wav2vec_dir",
                str(folders["wav2vec_dir"]),
                "--output_dir",
                str(out),
                "--dtype",
                "float32",
            ]
        )
        == 0
    )
    report = json.loads((out / "conversion_report.json").read_text())
    # the InfiniteTalk/ folder means its single/ file
    assert report["pipeline_class"] == "WanInfiniteTalkPipeline"
    assert report["sources"]["infinitetalk_file"].endswith("single/infinitetalk.safetensors")
