"""Official folders -> diffusers folder (`convert_original_to_diffusers`, scripts/convert_weights.py) and every route
that loads the result: `WanMultiTalkPipeline.from_pretrained` (no remote code), `DiffusionPipeline.from_pretrained` with
`trust_remote_code=True` in a process that never imported the package (the reviewed files of the top-level
`pipelines/`, installed with the package), and plain `save_pretrained` folders through the names registered with diffusers."""

import filecmp
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import diffusers
import pytest
import torch
import yaml
from diffusers import DiffusionPipeline
from safetensors.torch import save_file

import diffusers_multitalk
from diffusers_multitalk import MultiTalkTransformer3DModel, WanMultiTalkPipeline, make_tiny_pipeline
from diffusers_multitalk import conversion as convert_module
from diffusers_multitalk.conversion import convert_original_to_diffusers
from diffusers_multitalk.pipelines import model_index
from diffusers_multitalk.testing import tiny_generation_latents as generate
from diffusers_multitalk.testing import write_tiny_original_folders


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "convert_weights.py"
WEIGHTS = ("text_encoder", "image_encoder", "transformer", "vae", "audio_encoder")
REPO = "me/multitalk-tiny"


def assert_same_weights(a, b, names=WEIGHTS):
    for name in names:
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert set(sa) == set(sb), name
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), f"{name}.{key}"


def wan_style_lora(transformer, rank=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    lora = {}
    for i in range(transformer.config.num_layers):
        for name in (f"blocks.{i}.self_attn.q", f"blocks.{i}.cross_attn.k"):
            lora[f"diffusion_model.{name}.lora_down.weight"] = torch.randn(rank, dim, generator=g) * 0.5
            lora[f"diffusion_model.{name}.lora_up.weight"] = torch.randn(dim, rank, generator=g) * 0.5
    return lora


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_tiny_original_folders(tmp_path_factory.mktemp("original"), seed=0)


@pytest.fixture(scope="module")
def original(folders):
    return WanMultiTalkPipeline.from_original(**folders)


@pytest.fixture(scope="module")
def original_latents(original):
    return generate(original)


@pytest.fixture(scope="module")
def converted(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "MultiTalk-tiny-diffusers"
    report = convert_original_to_diffusers(**folders, output_dir=out, torch_dtype=torch.float32)
    return out, report


# --------------------------------------------------------------------------------------------------------------------
# the converted folder
# --------------------------------------------------------------------------------------------------------------------
def test_converted_folder_layout_and_report(converted, original):
    out, report = converted
    index = json.loads((out / "model_index.json").read_text())
    # the index names the shipped remote-code files (see pipelines/model_index.py)
    assert index["_class_name"] == ["pipeline_wan_multitalk", "WanMultiTalkPipeline"]
    assert index["transformer"] == ["transformer_multitalk", "MultiTalkTransformer3DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"] and index["text_encoder"] == [
        "transformers",
        "UMT5EncoderModel",
    ]
    for name in ("transformer", "vae", "text_encoder", "image_encoder", "audio_encoder"):
        assert (out / name / "config.json").is_file()
    assert (out / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"

    saved = json.loads((out / "conversion_report.json").read_text())
    assert saved["torch_dtype"] == report["torch_dtype"] == "float32"
    assert saved["verification"]["ok"] and saved["verification"]["max_abs_diff"] == 0.0
    for name in ("transformer", "vae", "image_encoder", "audio_encoder"):
        assert saved["components"][name]["num_tensors"] == len(getattr(original, name).state_dict()), name
        assert saved["components"][name]["tensor_dtypes"] == {"F32": saved["components"][name]["num_tensors"]}
    # The tied token embedding is stored once.
    assert saved["components"]["text_encoder"]["num_tensors"] == len(original.text_encoder.state_dict()) - 1
    assert saved["components"]["transformer"]["num_parameters"] == sum(
        p.numel() for p in original.transformer.parameters()
    )
    assert saved["total_bytes"] == sum(c["bytes"] for c in saved["components"].values()) > 0
    assert "multitalk.safetensors" in saved["components"]["transformer"]["source"]
    assert saved["sources"]["wan_repo"] == "Wan-AI/Wan2.1-I2V-14B-480P"


def test_diffusion_pipeline_from_pretrained_gives_the_same_pipeline(converted, original, original_latents):
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(converted[0])
    # the remote code only imports the package, so with it imported the classes are the package's own
    pipe = DiffusionPipeline.from_pretrained(converted[0], trust_remote_code=True)
    assert type(pipe) is WanMultiTalkPipeline
    assert type(pipe.transformer) is MultiTalkTransformer3DModel
    assert_same_weights(pipe, original)
    latents = generate(pipe)
    assert torch.equal(latents, original_latents), (latents - original_latents).abs().max()


def test_wan_multitalk_pipeline_from_pretrained(converted, original_latents):
    pipe = WanMultiTalkPipeline.from_pretrained(converted[0])
    assert torch.equal(generate(pipe), original_latents)


def test_model_card(converted):
    text = (converted[0] / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "image-to-video"
    assert meta["license"] == "apache-2.0"
    assert meta["base_model"] == ["Wan-AI/Wan2.1-I2V-14B-480P", "MeiGen-AI/MeiGen-MultiTalk"]
    assert {"diffusers-multitalk", "WanMultiTalkPipeline"} <= set(meta["tags"])
    body = text.split("---\n", 2)[2]
    assert 'DiffusionPipeline.from_pretrained("path/to/this/folder", trust_remote_code=True' in body
    assert 'WanMultiTalkPipeline.from_pretrained("path/to/this/folder"' in body
    assert "`pipeline_wan_multitalk.py`" in body and "`transformer/transformer_multitalk.py`" in body
    assert "models_t5_umt5-xxl-enc-bf16.pth" in body and "multitalk.safetensors" in body
    assert "TencentGameMate/chinese-wav2vec2-base" in body


# --------------------------------------------------------------------------------------------------------------------
# loading routes
# --------------------------------------------------------------------------------------------------------------------
def test_import_registers_the_names_with_diffusers():
    assert diffusers.WanMultiTalkPipeline is WanMultiTalkPipeline
    assert diffusers.pipelines.diffusers_multitalk is diffusers_multitalk
    model_index.register_with_diffusers([WanMultiTalkPipeline])  # idempotent
    assert diffusers.WanMultiTalkPipeline is WanMultiTalkPipeline
    # diffusers' own names are never replaced.
    assert not model_index._register(diffusers, "WanPipeline", WanMultiTalkPipeline)
    assert diffusers.WanPipeline is not WanMultiTalkPipeline


def test_save_pretrained_round_trips(tmp_path):
    pipe = make_tiny_pipeline(seed=3)
    pipe.save_pretrained(tmp_path / "plain")
    index = json.loads((tmp_path / "plain" / "model_index.json").read_text())
    # without remote code the pipeline names its transformer by the package (diffusers would record the module
    # path, which Hub downloads reject) and ships no code
    assert index["transformer"] == ["diffusers_multitalk", "MultiTalkTransformer3DModel"]
    assert index["_class_name"] == "WanMultiTalkPipeline" and index["vae"] == ["diffusers", "AutoencoderKLWan"]
    assert not list((tmp_path / "plain").rglob("*.py"))
    assert model_index.saved_model_index(index) == index == model_index.package_model_index(index)
    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "plain")
    assert type(reloaded) is WanMultiTalkPipeline
    assert_same_weights(reloaded, pipe)
    assert torch.equal(generate(reloaded), generate(pipe))

    # a folder written by plain diffusers (module path) still loads locally, through sys.modules
    index["transformer"] = ["diffusers_multitalk.models.transformer_multitalk", "MultiTalkTransformer3DModel"]
    (tmp_path / "plain" / "model_index.json").write_text(json.dumps(index))
    assert_same_weights(DiffusionPipeline.from_pretrained(tmp_path / "plain"), pipe)
    reloaded.save_pretrained(tmp_path / "again")
    assert_same_weights(WanMultiTalkPipeline.from_pretrained(tmp_path / "again"), pipe)


def test_hub_download_finds_every_class(converted, tmp_path):
    """`DiffusionPipeline.download` rejects a component library it cannot see before it downloads anything: the
    converted index names the shipped `transformer/transformer_multitalk.py`; a plain one names the package, which
    passes because `diffusers.pipelines.diffusers_multitalk` is registered; a module path does not pass."""
    from diffusers.pipelines.pipeline_loading_utils import _get_custom_components_and_folders

    index = json.loads((converted[0] / "model_index.json").read_text())
    filenames = [str(p.relative_to(converted[0])) for p in converted[0].rglob("*") if p.is_file()]
    custom, folders = _get_custom_components_and_folders(REPO, index, filenames)
    assert custom == {"transformer": "transformer_multitalk"} and "transformer" in folders
    plain = model_index.package_model_index(index)
    assert plain["_class_name"] == "WanMultiTalkPipeline"
    assert plain["transformer"] == ["diffusers_multitalk", "MultiTalkTransformer3DModel"]
    assert _get_custom_components_and_folders(REPO, plain, filenames)[0] == {}
    plain["transformer"] = ["diffusers_multitalk.models.transformer_multitalk", "MultiTalkTransformer3DModel"]
    with pytest.raises(ValueError, match="does not exist"):
        _get_custom_components_and_folders(REPO, plain, filenames)


def test_remote_code_files_are_the_reviewed_ones(converted):
    out, report = converted
    assert report["remote_code_files"] == ["pipeline_wan_multitalk.py", "transformer/transformer_multitalk.py"]
    for name in report["remote_code_files"]:
        assert filecmp.cmp(out / name, model_index.REMOTE_CODE_DIR / name, shallow=False), name
        assert len((out / name).read_text().splitlines()) < 30, "remote code is small and readable"


_FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, torch
    from diffusers import DiffusionPipeline
    import diffusers.utils.dynamic_modules_utils as dmu

    folder = sys.argv[1]
    assert "diffusers_multitalk" not in sys.modules
    result = {}
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
    kwargs = dict(image=image, audio=[(wave, 16000)], prompt="a person talks", height=64, width=96, num_frames=5,
                  num_inference_steps=2, mode="clip")
    latents = pipe(**kwargs, output_type="latent", generator=torch.Generator().manual_seed(0)).frames
    torch.save(latents, sys.argv[2])
    frames = pipe(**kwargs, output_type="np", generator=torch.Generator().manual_seed(0)).frames
    result["frames"] = [list(frames.shape), str(frames.dtype)]

    # The Hub route: diffusers fetches the pipeline file from the repo (Hub calls faked by the folder).
    def hf_hub_download(repo_id, filename, subfolder=None, **kwargs):
        path = os.path.join(folder, subfolder or "", filename)
        if not os.path.isfile(path):
            raise OSError(f"{filename} is not in {repo_id}")
        return path
    class Info:
        sha = "0123abcd"
    dmu.hf_hub_download = hf_hub_download
    dmu.model_info = lambda *args, **kwargs: Info()
    cls = dmu.get_class_from_dynamic_module("me/multitalk-tiny", "pipeline_wan_multitalk.py", trust_remote_code=True)
    result["hub_pipeline"] = f"{cls.__module__}.{cls.__name__}"
    print(json.dumps(result, indent=1))
    """
)


def test_fresh_process_loads_with_trust_remote_code(converted, original_latents, tmp_path):
    """`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` in a process that never imported
    diffusers_multitalk: the remote file imports the installed package, which then generates."""
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
    result = json.loads(run.stdout[run.stdout.index("{") :])
    print(run.stdout)  # pytest -s shows what a user sees
    assert "trust_remote_code=True" in result["without_trust"]
    assert result["pipeline"] == "diffusers_multitalk.pipelines.pipeline_wan_multitalk.WanMultiTalkPipeline"
    assert result["transformer"] == "diffusers_multitalk.models.transformer_multitalk.MultiTalkTransformer3DModel"
    assert result["hub_pipeline"] == result["pipeline"]
    assert result["frames"] == [[1, 5, 64, 96, 3], "float32"]
    latents = torch.load(tmp_path / "latents.pt", weights_only=True)
    assert torch.equal(latents, original_latents), (latents - original_latents).abs().max()


def test_save_pretrained_with_remote_code(tmp_path):
    pipe = make_tiny_pipeline(seed=3)
    pipe.save_pretrained(tmp_path / "remote", remote_code=True)
    index = json.loads((tmp_path / "remote" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_wan_multitalk", "WanMultiTalkPipeline"]
    assert (tmp_path / "remote" / "transformer" / "transformer_multitalk.py").is_file()
    assert_same_weights(WanMultiTalkPipeline.from_pretrained(tmp_path / "remote"), pipe)


# --------------------------------------------------------------------------------------------------------------------
# safety: refusal, cleanup, checks
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_loading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the checkpoints were loaded")

    monkeypatch.setattr(WanMultiTalkPipeline, "from_original", fail)


def test_refuses_to_overwrite_without_force(folders, tmp_path, no_loading):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="force=True"):
        convert_original_to_diffusers(**folders, output_dir=out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="overlaps"):
        convert_original_to_diffusers(**folders, output_dir=folders["wan_dir"], force=True)


def test_force_replaces_and_an_empty_folder_is_fine(folders, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    convert_original_to_diffusers(**folders, output_dir=out, torch_dtype="float32", remote_code=False, verify=False)
    (out / "stale.txt").write_text("old")
    report = convert_original_to_diffusers(**folders, output_dir=out, torch_dtype="float32", force=True, verify=False)
    assert not (out / "stale.txt").exists() and (out / "model_index.json").is_file()
    assert report["verification"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_nothing_half_written_on_error(folders, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(convert_module, "verify_saved_pipeline", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_original_to_diffusers(**folders, output_dir=tmp_path / "new", torch_dtype="float32")
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="disk full"):
        convert_original_to_diffusers(**folders, output_dir=old, torch_dtype="float32", force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"] and (old / "keep.txt").read_text() == "mine"


def test_missing_sources_are_reported_before_loading(tmp_path, no_loading):
    folders = write_tiny_original_folders(tmp_path / "src", seed=0)
    os.remove(folders["wan_dir"] / "Wan2.1_VAE.pth")
    os.remove(folders["multitalk_dir"] / "multitalk.safetensors")
    with pytest.raises(FileNotFoundError) as err:
        convert_original_to_diffusers(**folders, output_dir=tmp_path / "out")
    assert "Wan2.1_VAE.pth" in str(err.value) and "multitalk.safetensors" in str(err.value)
    assert "huggingface-cli download Wan-AI/Wan2.1-I2V-14B-480P" in str(err.value)
    assert "huggingface-cli download MeiGen-AI/MeiGen-MultiTalk" in str(err.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="Unknown dtype"):
        convert_original_to_diffusers(**folders, output_dir=tmp_path / "out", torch_dtype="float8")


@pytest.mark.filterwarnings("ignore:`torch_dtype` is deprecated:FutureWarning")
def test_bfloat16_and_shards(folders, tmp_path):
    out = tmp_path / "bf16"
    report = convert_original_to_diffusers(**folders, output_dir=out, dtype="bf16", max_shard_size="200KB")
    transformer = report["components"]["transformer"]
    assert "diffusion_pytorch_model.safetensors.index.json" in transformer["files"]
    assert len([f for f in transformer["files"] if f.endswith(".safetensors")]) >= 2
    # diffusers keeps its float32 modules (norms, modulation tables) in float32.
    assert transformer["tensor_dtypes"].keys() == {"BF16", "F32"}
    assert report["components"]["vae"]["tensor_dtypes"].keys() == {"F32"}
    assert report["components"]["text_encoder"]["tensor_dtypes"].keys() == {"BF16"}
    assert report["verification"]["ok"]
    dtypes = {"default": torch.bfloat16, "vae": torch.float32, "audio_encoder": torch.float32}
    pipe = WanMultiTalkPipeline.from_pretrained(out, torch_dtype=dtypes)
    assert (pipe.transformer.dtype, pipe.vae.dtype, pipe.audio_encoder.dtype) == (
        torch.bfloat16,
        torch.float32,
        torch.float32,
    )


def test_lora_is_fused_before_saving(folders, tmp_path):
    base = WanMultiTalkPipeline.from_original(**folders)
    lora_file = tmp_path / "speed_lora.safetensors"
    save_file(wan_style_lora(base.transformer), lora_file)
    report = convert_original_to_diffusers(
        **folders, output_dir=tmp_path / "out", torch_dtype="float32", lora_path=lora_file, lora_scale=0.5
    )
    assert report["sources"]["lora_scale"] == 0.5
    assert "speed_lora.safetensors" in (tmp_path / "out" / "README.md").read_text()

    expected = WanMultiTalkPipeline.from_original(**folders)
    expected.load_lora_weights(str(tmp_path), weight_name=lora_file.name, adapter_name="x")
    expected.fuse_lora(components=["transformer"], lora_scale=0.5, adapter_names=["x"])
    expected.unload_lora_weights()
    converted = MultiTalkTransformer3DModel.from_pretrained(tmp_path / "out" / "transformer")
    assert_same_weights(SimpleNamespaceOf(transformer=converted), expected, names=["transformer"])
    assert not torch.equal(converted.blocks[0].attn1.to_q.weight, base.transformer.blocks[0].attn1.to_q.weight)
    assert torch.equal(converted.blocks[0].attn1.to_k.weight, base.transformer.blocks[0].attn1.to_k.weight)


class SimpleNamespaceOf:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


# --------------------------------------------------------------------------------------------------------------------
# hub upload (mocked) and the command lines
# --------------------------------------------------------------------------------------------------------------------
def _fake_hub(monkeypatch):
    from huggingface_hub import RepoUrl

    api_class = mock.MagicMock(name="HfApi")
    api_class.return_value.create_repo.return_value = RepoUrl(f"https://huggingface.co/{REPO}")
    api_class.return_value.upload_folder.return_value = mock.Mock(commit_url=f"https://huggingface.co/{REPO}/commit/1")
    monkeypatch.setattr("huggingface_hub.HfApi", api_class)
    return api_class


def test_push_to_hub_calls_the_hub_api(folders, tmp_path, monkeypatch):
    api_class = _fake_hub(monkeypatch)
    out = tmp_path / "out"
    report = convert_original_to_diffusers(
        **folders, output_dir=out, torch_dtype="float32", push_to_hub=REPO, private=True, token="hf_x", verify=False
    )
    api_class.assert_called_once_with(token="hf_x")
    api = api_class.return_value
    api.create_repo.assert_called_once_with(REPO, private=True, exist_ok=True, repo_type="model")
    api.upload_folder.assert_called_once()
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == REPO and kwargs["folder_path"] == str(out) and kwargs["repo_type"] == "model"
    assert report["hub"]["repo_id"] == REPO
    assert f'"{REPO}"' in (out / "README.md").read_text()  # the usage snippet names the repo


def _script_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_weights", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_script_push_to_hub_flag(folders, tmp_path, monkeypatch, capsys):
    api_class = _fake_hub(monkeypatch)
    out = tmp_path / "out"
    status = _script_main()(
        [
            "--wan_dir",
            str(folders["wan_dir"]),
            "--multitalk_dir",
            str(folders["multitalk_dir"]),
            "--wav2vec-dir",
            str(folders["wav2vec_dir"]),
            "--output-dir",
            str(out),
            "--dtype",
            "float32",
            "--push-to-hub",
            REPO,
            "--private",
            "--no_verify",
        ]
    )
    assert status == 0
    api_class.return_value.create_repo.assert_called_once_with(REPO, private=True, exist_ok=True, repo_type="model")
    assert api_class.return_value.upload_folder.call_args.kwargs["folder_path"] == str(out)
    summary = json.loads(capsys.readouterr().out)
    assert summary["output_dir"] == str(out) and summary["hub"]["repo_id"] == REPO
    # A second run refuses to overwrite.
    assert (
        _script_main()(
            [
                "--wan_dir",
                str(folders["wan_dir"]),
                "--wav2vec_dir",
                str(folders["wav2vec_dir"]),
                "--output_dir",
                str(out),
            ]
        )
        == 1
    )
    assert "force" in capsys.readouterr().err


def test_script_help():
    run = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    for flag in (
        "--wan_dir",
        "--multitalk_dir",
        "--wav2vec_dir",
        "--output_dir",
        "--dtype",
        "--lora_dir",
        "--lora_scale",
        "--force",
        "--push_to_hub",
    ):
        assert flag in run.stdout


def test_multitalk_convert_command(folders, tmp_path, capsys):
    from diffusers_multitalk.cli import main

    out = tmp_path / "out"
    assert (
        main(
            [
                "convert",
                "--wan_dir",
                str(folders["wan_dir"]),
                "--multitalk_dir",
                str(folders["multitalk_dir"]),
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
    assert (out / "model_index.json").is_file()
    assert json.loads((out / "conversion_report.json").read_text())["torch_dtype"] == "float32"


def test_the_wheel_ships_the_remote_code_files(tmp_path):
    """`multitalk convert` copies model_index.REMOTE_CODE_DIR into every converted repo: an installed wheel (not only
    a source checkout) must hold those files, byte for byte."""
    import zipfile

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(ROOT),
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("diffusers_multitalk-*.whl")
    source = model_index.REMOTE_CODE_DIR
    expected = sorted(
        str(p.relative_to(source)) for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    assert {"pipeline_wan_multitalk.py", "pipeline_wan_infinitetalk.py", "transformer/transformer_multitalk.py"} <= set(
        expected
    )
    with zipfile.ZipFile(wheel) as archive:
        for name in expected:
            assert archive.read(f"diffusers_multitalk/remote_code/{name}") == (source / name).read_bytes(), name
