"""`from_pretrained` of the original releases (pipelines/release_loading.py), offline: the tiny pipeline written in
the original folder layouts (`diffusers_multitalk.testing`) and as a Hugging Face cache holding the Hub repos, then
loaded by each route and compared with `from_original` on the same folders."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from diffusers_multitalk import WanInfiniteTalkPipeline, WanMultiTalkPipeline
from diffusers_multitalk.loaders.original_folders import (
    INFINITETALK_REPO,
    MULTITALK_ALLOW_PATTERNS,
    MULTITALK_REPO,
    WAN_ALLOW_PATTERNS,
    WAN_REPO,
    WAV2VEC_REPO,
    WAV2VEC_SAFETENSORS_REVISION,
    original_folder_kind,
)
from diffusers_multitalk.pipelines.release_loading import OriginalReleaseLoadingMixin
from diffusers_multitalk.testing import write_tiny_infinitetalk_folders


# Until the pipelines list the mixin in their bases, the tests put it in front themselves.
if issubclass(WanMultiTalkPipeline, OriginalReleaseLoadingMixin):
    MultiTalk, InfiniteTalk = WanMultiTalkPipeline, WanInfiniteTalkPipeline
else:

    class MultiTalk(OriginalReleaseLoadingMixin, WanMultiTalkPipeline):
        pass

    class InfiniteTalk(OriginalReleaseLoadingMixin, WanInfiniteTalkPipeline):
        pass


MODULES = ("text_encoder", "image_encoder", "transformer", "vae", "audio_encoder")


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    # Nothing here may reach the Hub: an attempt fails at once instead of waiting on the network.
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    """The folders `multitalk download --infinitetalk` writes, side by side (MultiTalk not linked into Wan's)."""
    root = tmp_path_factory.mktemp("weights")
    folders = write_tiny_infinitetalk_folders(root, seed=0)
    return dict(folders, multitalk_dir=root / "MeiGen-MultiTalk", root=root)


def _commit(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()  # 40 hex digits, as a commit hash


def _cache_repo(cache: Path, repo_id: str, files: dict[str, Path], revision: str = "main") -> Path:
    """Writes `files` (repo path -> source) as huggingface_hub caches a snapshot: blobs named by their hash, the
    snapshot's files linking to them, and `refs/<revision>` holding the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = _commit(f"{repo_id}@{revision}")
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, target.parent), target)
    ref = repo / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    return snapshot


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def hub_cache(downloads, tmp_path_factory):
    """A Hugging Face cache holding the four repos the releases need, as snapshot_download leaves it."""
    cache = tmp_path_factory.mktemp("hub")
    _cache_repo(cache, WAN_REPO, _files(downloads["wan_dir"]))
    _cache_repo(cache, MULTITALK_REPO, _files(downloads["multitalk_dir"]))
    _cache_repo(cache, INFINITETALK_REPO, _files(downloads["infinitetalk_dir"]))
    wav2vec = _files(downloads["wav2vec_dir"])
    # main has no model.safetensors: the weights come from the pull request, as MultiTalk's README fetches them
    _cache_repo(cache, WAV2VEC_REPO, {k: v for k, v in wav2vec.items() if k != "model.safetensors"})
    _cache_repo(cache, WAV2VEC_REPO, wav2vec, revision=WAV2VEC_SAFETENSORS_REVISION)
    return cache


@pytest.fixture(scope="module")
def reference(downloads):
    d = downloads
    return MultiTalk.from_original(d["wan_dir"], d["multitalk_dir"], d["wav2vec_dir"], dtype=torch.float32)


@pytest.fixture(scope="module")
def infinitetalk_references(downloads):
    d = downloads
    return {
        variant: InfiniteTalk.from_original(
            d["wan_dir"], d["infinitetalk_dir"] / variant / "infinitetalk.safetensors", d["wav2vec_dir"]
        )
        for variant in ("single", "multi")
    }


def assert_same_pipeline(pipe, reference):
    assert type(pipe) is type(reference)
    for name in MODULES:
        got, expected = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert got.keys() == expected.keys(), name
        for key in expected:
            assert torch.equal(got[key], expected[key]), f"{name}.{key}"
    assert pipe.tokenizer("a person talks").input_ids == reference.tokenizer("a person talks").input_ids


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------------------------------------------------
# route 3: the releases' Hub ids, from the cache
# --------------------------------------------------------------------------------------------------------------------
def test_multitalk_hub_id_from_the_cache(hub_cache, reference):
    before = _listing(hub_cache)
    pipe = MultiTalk.from_pretrained(MULTITALK_REPO, cache_dir=hub_cache, local_files_only=True, dtype=torch.float32)
    assert_same_pipeline(pipe, reference)
    assert pipe.transformer.dtype == torch.float32
    assert _listing(hub_cache) == before  # nothing linked or written into the cache


@pytest.mark.parametrize("variant", ["single", "multi"])
def test_infinitetalk_hub_id_with_hf_hub_offline(hub_cache, infinitetalk_references, variant, monkeypatch):
    # HF_HUB_OFFLINE set after huggingface_hub was imported, and no local_files_only: the cache is read all the same
    import huggingface_hub

    calls = []
    snapshot_download = huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: calls.append(kw) or snapshot_download(**kw))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kwargs = {} if variant == "single" else {"infinitetalk_variant": variant}
    pipe = InfiniteTalk.from_pretrained(INFINITETALK_REPO, cache_dir=hub_cache, **kwargs)
    assert_same_pipeline(pipe, infinitetalk_references[variant])
    fetched = {call["repo_id"]: call for call in calls}
    assert sorted(fetched) == sorted([WAN_REPO, INFINITETALK_REPO, WAV2VEC_REPO])
    assert all(call["local_files_only"] for call in calls)
    assert fetched[INFINITETALK_REPO]["allow_patterns"] == [f"{variant}/infinitetalk.safetensors"]
    assert fetched[WAV2VEC_REPO]["revision"] == WAV2VEC_SAFETENSORS_REVISION


def test_hub_id_uses_folders_given_instead_of_fetching(hub_cache, downloads, reference, tmp_path):
    # Only MeiGen-MultiTalk is in this cache: the Wan and wav2vec2 folders come from the keywords
    cache = tmp_path / "hub"
    shutil.copytree(hub_cache / f"models--{MULTITALK_REPO.replace('/', '--')}", cache / "models--x", symlinks=True)
    (cache / "models--x").rename(cache / f"models--{MULTITALK_REPO.replace('/', '--')}")
    pipe = MultiTalk.from_pretrained(
        MULTITALK_REPO, cache_dir=cache, local_files_only=True, wan_dir=downloads["wan_dir"],
        wav2vec_dir=downloads["wav2vec_dir"], dtype=torch.float32,
    )  # fmt: skip
    assert_same_pipeline(pipe, reference)


def test_hub_id_missing_from_the_cache_is_named(tmp_path):
    with pytest.raises(OSError, match=f"{WAN_REPO} is not in the Hugging Face cache") as info:
        MultiTalk.from_pretrained(MULTITALK_REPO, cache_dir=tmp_path, local_files_only=True)
    assert "multitalk download" in str(info.value)


def test_incomplete_snapshot_says_to_fetch_again_not_to_write_into_the_cache(hub_cache, tmp_path):
    cache = tmp_path / "hub"
    shutil.copytree(hub_cache, cache, symlinks=True)
    snapshot = next((cache / f"models--{MULTITALK_REPO.replace('/', '--')}" / "snapshots").iterdir())
    (snapshot / "multitalk.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="multitalk.safetensors is missing") as info:
        MultiTalk.from_pretrained(MULTITALK_REPO, cache_dir=cache, local_files_only=True)
    assert "with the Hub reachable" in str(info.value)


def test_a_release_id_for_the_other_pipeline_is_refused(hub_cache):
    with pytest.raises(ValueError, match="WanInfiniteTalkPipeline.from_pretrained"):
        MultiTalk.from_pretrained(INFINITETALK_REPO, cache_dir=hub_cache, local_files_only=True)
    with pytest.raises(ValueError, match="WanMultiTalkPipeline.from_pretrained"):
        InfiniteTalk.from_pretrained(MULTITALK_REPO, cache_dir=hub_cache, local_files_only=True)


# --------------------------------------------------------------------------------------------------------------------
# route 2: original-layout folders
# --------------------------------------------------------------------------------------------------------------------
def test_wan_folder_finds_the_downloaded_folders_beside_it(downloads, reference):
    with pytest.warns(FutureWarning, match="torch_dtype"):
        pipe = MultiTalk.from_pretrained(downloads["wan_dir"], torch_dtype=torch.float32)
    assert_same_pipeline(pipe, reference)


def test_multitalk_folder_with_keywords(downloads, reference, tmp_path):
    alone = tmp_path / "MeiGen-MultiTalk"  # no sibling folders here: the keywords name them
    shutil.copytree(downloads["multitalk_dir"], alone)
    pipe = MultiTalk.from_pretrained(alone, wan_dir=downloads["wan_dir"], wav2vec_dir=downloads["wav2vec_dir"])
    assert_same_pipeline(pipe, reference)


def test_infinitetalk_folder_and_variant(downloads, infinitetalk_references):
    pipe = InfiniteTalk.from_pretrained(
        downloads["infinitetalk_dir"], infinitetalk_variant="multi", wav2vec_dir=downloads["wav2vec_dir"]
    )
    assert_same_pipeline(pipe, infinitetalk_references["multi"])


def test_wan_folder_without_its_other_folders_names_them(downloads, tmp_path):
    alone = tmp_path / "Wan2.1-I2V-14B-480P"
    shutil.copytree(downloads["wan_dir"], alone)
    with pytest.raises(FileNotFoundError) as info:
        MultiTalk.from_pretrained(alone)
    assert "multitalk_dir" in str(info.value) and "wav2vec2" in str(info.value)


def test_keywords_checked_before_loading(downloads):
    with pytest.raises(TypeError, match="infinitetalk_file"):
        MultiTalk.from_pretrained(downloads["wan_dir"], infinitetalk_file=downloads["infinitetalk_dir"])
    with pytest.raises(TypeError, match="device_map"):
        MultiTalk.from_pretrained(downloads["wan_dir"], device_map="cuda")
    with pytest.raises(ValueError, match="only `dtype`"):
        MultiTalk.from_pretrained(downloads["wan_dir"], dtype=torch.float32, torch_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="infinitetalk_variant"):
        InfiniteTalk.from_pretrained(downloads["infinitetalk_dir"], infinitetalk_variant="double")
    with pytest.raises(ValueError, match="WanInfiniteTalkPipeline"):
        MultiTalk.from_pretrained(downloads["infinitetalk_dir"])


def test_folder_kinds(downloads, tmp_path):
    assert original_folder_kind(downloads["wan_dir"]) == "wan"
    assert original_folder_kind(downloads["multitalk_dir"]) == "multitalk"
    assert original_folder_kind(downloads["infinitetalk_dir"]) == "infinitetalk"
    assert original_folder_kind(downloads["wav2vec_dir"]) is None
    transformer = tmp_path / "transformer"  # a converted pipeline's component folder is no Wan folder
    transformer.mkdir()
    (transformer / "config.json").write_text(json.dumps({"_class_name": "MultiTalkTransformer3DModel"}))
    assert original_folder_kind(transformer) is None


# --------------------------------------------------------------------------------------------------------------------
# routes 1 and 4: converted folders, and the error for anything else
# --------------------------------------------------------------------------------------------------------------------
def test_converted_folder_loads_as_before(reference, tmp_path):
    reference.save_pretrained(tmp_path / "converted")
    assert_same_pipeline(MultiTalk.from_pretrained(tmp_path / "converted"), reference)


def test_a_folder_that_is_neither_names_the_other_routes(tmp_path):
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(OSError) as info:
        MultiTalk.from_pretrained(tmp_path)
    message = str(info.value)
    assert "from_original" in message and "multitalk convert" in message
    assert MULTITALK_REPO in message and INFINITETALK_REPO in message
    assert "model_index.json" in str(info.value.__cause__)


def test_download_plan_fetches_the_shared_patterns(tmp_path):
    from diffusers_multitalk.cli.download import download_plan

    plan = download_plan(tmp_path, link=False)
    assert plan[0]["allow_patterns"][: len(WAN_ALLOW_PATTERNS)] == WAN_ALLOW_PATTERNS
    assert plan[1]["repo_id"] == MULTITALK_REPO and plan[1]["allow_patterns"] == MULTITALK_ALLOW_PATTERNS


def test_dtype_is_passed_by_the_name_from_original_takes(downloads):
    seen = []

    class NewSignature(MultiTalk):
        @classmethod
        def from_original(cls, wan_dir, multitalk_dir=None, wav2vec_dir=None, dtype=None, torch_dtype=None):
            seen.append((dtype, torch_dtype, Path(multitalk_dir).name, Path(wav2vec_dir).name))

    NewSignature.from_pretrained(downloads["wan_dir"], dtype=torch.bfloat16)
    assert seen == [(torch.bfloat16, None, "MeiGen-MultiTalk", "chinese-wav2vec2-base")]
