"""`from_pretrained` that also takes the original releases: their folders as downloaded, and their Hub ids.

[`OriginalReleaseLoadingMixin`] goes before `DiffusionPipeline` in a pipeline's bases. Its `from_pretrained` picks one
of four routes from what it is given:

1. a local folder with `model_index.json` (a converted diffusers folder): diffusers' own `from_pretrained`, unchanged;
2. a local folder in an original layout: a `Wan2.1-I2V-14B-480P/` (or 720P) folder, a `MeiGen-MultiTalk/` folder or
   an `InfiniteTalk/` folder, read with the class's `from_original`. The other folders come from keywords
   (`wan_dir=`, `wav2vec_dir=`, `multitalk_dir=` / `infinitetalk_file=`), else from the sibling folders that
   `multitalk download` writes beside it (`Wan2.1-I2V-14B-480P`, `MeiGen-MultiTalk`, `InfiniteTalk`,
   `chinese-wav2vec2-base`);
3. the Hub id of an original release, `MeiGen-AI/MeiGen-MultiTalk` (`WanMultiTalkPipeline`) or `MeiGen-AI/InfiniteTalk`
   (`WanInfiniteTalkPipeline`): the adapter repo, `Wan-AI/Wan2.1-I2V-14B-480P` (or `wan_repo=`) and
   `TencentGameMate/chinese-wav2vec2-base` are fetched into the Hugging Face cache with `snapshot_download`, only the
   files `multitalk download` fetches, then read with `from_original` where they lie (nothing is linked or written
   into the cache's snapshots: `from_original` takes the MultiTalk folder separately);
4. anything else: diffusers' `from_pretrained`; when that finds no `model_index.json`, the error says which other
   routes exist.

Which adapter a class reads is told by its `from_original` signature (`infinitetalk_file` or `multitalk_dir`), so
this module needs no import of the pipelines that use it. See docs/loading.md.
"""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path

from diffusers.utils import logging

from ..loaders.original_folders import (
    DIT_INDEX,
    INFINITETALK_FILE,
    INFINITETALK_REPO,
    INFINITETALK_VARIANTS,
    MULTITALK_ALLOW_PATTERNS,
    MULTITALK_FILE,
    MULTITALK_REPO,
    WAN_ALLOW_PATTERNS,
    WAN_REPO,
    WAV2VEC_ALLOW_PATTERNS,
    WAV2VEC_REPO,
    WAV2VEC_SAFETENSORS_PATTERNS,
    WAV2VEC_SAFETENSORS_REVISION,
    original_folder_kind,
)


logger = logging.get_logger(__name__)

__all__ = ["HUB_RELEASES", "OriginalReleaseLoadingMixin"]

# The Hub ids `from_pretrained` reads as original releases, and the adapter keyword of `from_original` each needs.
HUB_RELEASES = {MULTITALK_REPO: "multitalk_dir", INFINITETALK_REPO: "infinitetalk_file"}
# diffusers' keywords that say where Hub files come from; applied to every repository a release needs (`revision` to
# the adapter's only: the Wan and wav2vec2 revisions are the ones MultiTalk's README names).
_HUB_KWARGS = ("cache_dir", "local_files_only", "revision", "token", "force_download")


def _repo_folder_name(repo_id: str) -> str:
    # `multitalk download` names each folder after its repository.
    return repo_id.split("/")[-1]


def _hub_release(name) -> str | None:
    """The release id `name` spells (Hub ids are case-insensitive), or None."""
    if not isinstance(name, str):
        return None
    return next((repo for repo in HUB_RELEASES if repo.casefold() == name.strip("/").casefold()), None)


def _resolve_dtype(dtype, torch_dtype):
    if torch_dtype is None:
        return dtype
    if dtype is not None:
        raise ValueError("Both `dtype` and `torch_dtype` were passed; pass only `dtype` (`torch_dtype` is deprecated).")
    warnings.warn("`torch_dtype` is deprecated; pass `dtype=` instead.", FutureWarning, stacklevel=4)
    return torch_dtype


def _hub_offline() -> bool:
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE once, when it is imported; a later change of the environment counts too.
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


class _OriginalRequest:
    """The keywords of a `from_pretrained` call, sorted for `from_original`: the folders, the Hub options and the
    keywords `from_original` itself takes (anything else is refused, naming what is accepted)."""

    def __init__(self, cls, kwargs: dict):
        kwargs = dict(kwargs)
        self.cls = cls
        self.params = inspect.signature(cls.from_original).parameters
        self.adapter_kwarg = "infinitetalk_file" if "infinitetalk_file" in self.params else "multitalk_dir"
        self.dtype = _resolve_dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None))
        self.hub = {name: kwargs.pop(name) for name in _HUB_KWARGS if name in kwargs}
        folder_kwargs = ["wan_dir", "wav2vec_dir", self.adapter_kwarg, "wan_repo"]
        folder_kwargs += ["infinitetalk_variant"] if self.infinitetalk else []
        self.folders = {name: kwargs.pop(name) for name in folder_kwargs if name in kwargs}
        self.variant = self.folders.pop("infinitetalk_variant", None) or INFINITETALK_VARIANTS[0]
        if self.variant not in INFINITETALK_VARIANTS:
            raise ValueError(f"infinitetalk_variant must be one of {INFINITETALK_VARIANTS}, not {self.variant!r}.")
        self.wan_repo = self.folders.pop("wan_repo", None) or WAN_REPO
        passed_on = set(self.params) - {"cls", "wan_dir", "wav2vec_dir", self.adapter_kwarg, "torch_dtype", "dtype"}
        unknown = sorted(set(kwargs) - passed_on)
        if unknown:
            accepted = ["dtype", *_HUB_KWARGS, *folder_kwargs]
            raise TypeError(
                f"{cls.__name__}.from_pretrained of an original release takes no {', '.join(unknown)}; it takes "
                f"{', '.join(accepted)} and the keywords of {cls.__name__}.from_original: {', '.join(sorted(passed_on))}."
            )
        self.passed_on = kwargs

    @property
    def infinitetalk(self) -> bool:
        return self.adapter_kwarg == "infinitetalk_file"

    @property
    def needs_adapter(self) -> bool:
        # InfiniteTalk's full or quantised DiT checkpoints hold the adapter already.
        return not (self.passed_on.get("dit_path") or self.passed_on.get("quant_path"))

    def adapter_file(self, folder: Path) -> Path:
        """The InfiniteTalk adapter of the chosen variant inside an `InfiniteTalk/` folder (or its only file)."""
        chosen = folder / self.variant / INFINITETALK_FILE
        return chosen if chosen.is_file() or not (folder / INFINITETALK_FILE).is_file() else folder / INFINITETALK_FILE

    def load(self, wan_dir, adapter, wav2vec_dir):
        kwargs = dict(self.passed_on)
        if self.dtype is not None:
            # diffusers' new name where `from_original` has it, else the name it has.
            kwargs["dtype" if "dtype" in self.params else "torch_dtype"] = self.dtype
        kwargs[self.adapter_kwarg] = adapter
        return self.cls.from_original(wan_dir=wan_dir, wav2vec_dir=wav2vec_dir, **kwargs)


class OriginalReleaseLoadingMixin:
    """`from_pretrained` for converted folders, original-layout folders and the original releases' Hub ids.

    Keywords beyond diffusers' (used only on the original routes):

    * `wan_dir`: the `Wan2.1-I2V-14B-480P/` (or 720P) folder, when the path given is an adapter folder or a Hub id
      (then that folder is used instead of fetching the Wan repo).
    * `wav2vec_dir`: the `chinese-wav2vec2-base/` folder (with a Hub id: used instead of fetching it).
    * `multitalk_dir` (`WanMultiTalkPipeline`): the `MeiGen-MultiTalk/` folder (or its `multitalk.safetensors`); not
      needed for a Wan folder it is linked into, as MultiTalk's README does.
    * `infinitetalk_file` (`WanInfiniteTalkPipeline`): `InfiniteTalk/single/infinitetalk.safetensors`, `multi/...`,
      or the `InfiniteTalk/` folder.
    * `infinitetalk_variant`: `"single"` (default, one person) or `"multi"` (several): which adapter of an
      `InfiniteTalk/` folder or of `MeiGen-AI/InfiniteTalk` is read.
    * `wan_repo`: the Wan repo a Hub id is read with: `Wan-AI/Wan2.1-I2V-14B-480P` (default) or
      `Wan-AI/Wan2.1-I2V-14B-720P`; also the sibling folder's name looked for beside an adapter folder.
    * `dtype` (`torch_dtype` is its deprecated alias) and every other keyword of `from_original` (`lora_path`,
      `quant`, ...) are passed on to it.
    * `cache_dir`, `local_files_only`, `token`, `force_download` apply to every repo fetched for a Hub id, `revision`
      to the adapter repo's; `HF_HUB_OFFLINE=1` reads the cache only, as `local_files_only=True` does.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        path = Path(pretrained_model_name_or_path)
        if isinstance(pretrained_model_name_or_path, os.PathLike) and not path.exists():
            # diffusers would take a Path it cannot find for a Hub id and fail on it as a string method's AttributeError
            raise FileNotFoundError(f"{path} does not exist.")
        if path.is_dir():
            if (path / "model_index.json").is_file():
                return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
            kind = original_folder_kind(path)
            if kind is not None:
                return cls._from_original_folder(path, kind, _OriginalRequest(cls, kwargs))
        else:
            release = _hub_release(pretrained_model_name_or_path)
            if release is not None:
                return cls._from_hub_release(release, _OriginalRequest(cls, kwargs))
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except OSError as err:
            if "model_index.json" not in str(err):
                raise
            raise OSError(
                f"{pretrained_model_name_or_path} is neither a diffusers pipeline (it has no model_index.json) nor a "
                f"folder of an original release (a Wan2.1-I2V, MeiGen-MultiTalk or InfiniteTalk download). Load the "
                f"original folders with {cls.__name__}.from_original(wan_dir, ..., wav2vec_dir=...) or convert them "
                f"once with `multitalk convert`; {cls.__name__}.from_pretrained also reads the original releases' Hub "
                f"ids {' and '.join(HUB_RELEASES)} (see docs/loading.md)."
            ) from err

    # ----------------------------------------------------------------------------------------------------------------
    # route 2: an original-layout folder
    # ----------------------------------------------------------------------------------------------------------------
    @classmethod
    def _from_original_folder(cls, path: Path, kind: str, request: _OriginalRequest):
        expected = "infinitetalk" if request.infinitetalk else "multitalk"
        if kind == "flashtalk":  # its own class reads it (WanFlashTalkPipeline.from_pretrained)
            raise ValueError(
                f"{path} is SoulX-FlashTalk-14B's folder; load it with WanFlashTalkPipeline.from_pretrained."
            )
        if kind not in ("wan", expected):
            raise ValueError(_wrong_class(cls, f"{path} ({kind})", not request.infinitetalk))
        folders = dict(request.folders)
        if kind == "wan":
            if folders.get("wan_dir") is not None:
                raise TypeError(f"{path} is the Wan folder; wan_dir names it a second time.")
            folders["wan_dir"] = path
        else:
            if folders.get(request.adapter_kwarg) is not None:
                raise TypeError(f"{path} is the adapter folder; {request.adapter_kwarg} names one a second time.")
            folders[request.adapter_kwarg] = request.adapter_file(path) if request.infinitetalk else path

        def sibling(keyword: str, repo_id: str):
            # The layout `multitalk download` writes: each repo in a folder of its name, side by side.
            if folders.get(keyword) is None and (path.parent / _repo_folder_name(repo_id)).is_dir():
                folders[keyword] = path.parent / _repo_folder_name(repo_id)
                logger.info(f"{keyword}: {folders[keyword]} (the folder beside {path})")

        sibling("wan_dir", request.wan_repo)
        sibling("wav2vec_dir", WAV2VEC_REPO)
        if request.infinitetalk and request.needs_adapter and folders.get("infinitetalk_file") is None:
            sibling("infinitetalk_file", INFINITETALK_REPO)
            if folders.get("infinitetalk_file") is not None:
                folders["infinitetalk_file"] = request.adapter_file(folders["infinitetalk_file"])
        elif not request.infinitetalk and folders.get("wan_dir") is not None:
            if not (Path(folders["wan_dir"]) / MULTITALK_FILE).exists():  # not linked in as MultiTalk's README does
                sibling("multitalk_dir", MULTITALK_REPO)
        return request.load(folders.get("wan_dir"), folders.get(request.adapter_kwarg), folders.get("wav2vec_dir"))

    # ----------------------------------------------------------------------------------------------------------------
    # route 3: an original release's Hub id
    # ----------------------------------------------------------------------------------------------------------------
    @classmethod
    def _from_hub_release(cls, release: str, request: _OriginalRequest):
        if HUB_RELEASES[release] != request.adapter_kwarg:
            raise ValueError(_wrong_class(cls, release, not request.infinitetalk))
        hub = dict(request.hub)
        revision = hub.pop("revision", None)
        if hub.get("local_files_only") is None:
            hub["local_files_only"] = _hub_offline()
        folders = dict(request.folders)
        fetched = []

        def fetch(repo_id: str, allow_patterns: list[str], revision: str | None) -> Path:
            fetched.append(repo_id)
            return _snapshot(repo_id, allow_patterns, revision, hub)

        if folders.get("wan_dir") is None:
            # Wan's own index too: MultiTalk's is not linked over it here (see the module docstring).
            folders["wan_dir"] = fetch(request.wan_repo, [*WAN_ALLOW_PATTERNS, DIT_INDEX], None)
        if request.infinitetalk:
            if folders.get("infinitetalk_file") is None and request.needs_adapter:
                name = f"{request.variant}/{INFINITETALK_FILE}"
                folders["infinitetalk_file"] = fetch(INFINITETALK_REPO, [name], revision) / name
        elif folders.get("multitalk_dir") is None:
            folders["multitalk_dir"] = fetch(MULTITALK_REPO, list(MULTITALK_ALLOW_PATTERNS), revision)
        if folders.get("wav2vec_dir") is None:
            # One folder for from_original: the pull request that holds model.safetensors carries main's configs too,
            # where `multitalk download` takes the configs from main into the same local folder.
            patterns = [*WAV2VEC_ALLOW_PATTERNS, *WAV2VEC_SAFETENSORS_PATTERNS]
            folders["wav2vec_dir"] = fetch(WAV2VEC_REPO, patterns, WAV2VEC_SAFETENSORS_REVISION)
        try:
            return request.load(folders["wan_dir"], folders.get(request.adapter_kwarg), folders["wav2vec_dir"])
        except FileNotFoundError as err:
            if not fetched:
                raise
            raise FileNotFoundError(
                f"{err}\nThe folders above include snapshots of {', '.join(fetched)} in the Hugging Face cache: to "
                f"complete those, call {cls.__name__}.from_pretrained({release!r}) again with the Hub reachable "
                "(without local_files_only or HF_HUB_OFFLINE) instead of downloading into the cache's folders."
            ) from err


def _wrong_class(cls, what: str, infinitetalk: bool) -> str:
    right = "WanInfiniteTalkPipeline" if infinitetalk else "WanMultiTalkPipeline"
    return f"{cls.__name__} does not read the adapter of {what}; load it with {right}.from_pretrained."


def _snapshot(repo_id: str, allow_patterns: list[str], revision: str | None, hub: dict) -> Path:
    """The cache folder of `repo_id` holding `allow_patterns`, fetched when missing (unless offline)."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = huggingface_hub.snapshot_download(
            repo_id=repo_id, revision=revision, allow_patterns=allow_patterns, **hub
        )
    except LocalEntryNotFoundError as err:
        where = f" in {hub['cache_dir']}" if hub.get("cache_dir") else ""
        at = f" at revision {revision}" if revision else ""
        raise OSError(
            f"{repo_id}{at} is not in the Hugging Face cache{where}, and the Hub is not read "
            f"({'local_files_only=True or HF_HUB_OFFLINE=1' if hub.get('local_files_only') else 'not reachable'}). "
            f"Run once with the Hub reachable to fetch {', '.join(allow_patterns)}, or download the original folders "
            "(`multitalk download`) and pass them to from_pretrained or from_original."
        ) from err
    return Path(folder)
