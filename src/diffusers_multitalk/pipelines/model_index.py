"""The model index (`model_index.json`) of a saved MultiTalk pipeline: the one place it is written and read, and how
diffusers finds this package's classes from it.

diffusers (0.42) resolves the names in a folder's `model_index.json` like this:

* `_class_name`: a name is looked up as an attribute of the `diffusers` module; a pair `["<file>", "<Class>"]` whose
  `<file>.py` sits at the top of the folder (or Hub repo) is loaded from that file as remote code
  (`trust_remote_code=True`), without the caller importing anything.
* a component `[library, class]`: `library` must be one diffusers loads from (diffusers, transformers, ...), a
  module under `diffusers.pipelines`, a module the caller has already imported, or `<component>/<library>.py` in the
  folder (remote code again).

So a folder saved with `save_pretrained(..., remote_code=True)` (what `convert_original_to_diffusers` writes) names
the reviewed remote-code files of the repository's top-level `pipelines/` folder, which it ships:
`_class_name: ["pipeline_wan_multitalk", "WanMultiTalkPipeline"]` with `pipeline_wan_multitalk.py`, and
`transformer: ["transformer_multitalk", "MultiTalkTransformer3DModel"]` with `transformer/transformer_multitalk.py`
(another model's folder names its pipeline's file likewise, the module that defines it, with the same transformer).
Those files only import the installed package, so `DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)`
works in a process that never imported it. This package's pipeline classes read such an index back as their own
names (`_dict_from_json_file` below), so `WanMultiTalkPipeline.from_pretrained(repo)` runs no remote code.

A folder saved without remote code names `_class_name: "WanMultiTalkPipeline"` and the transformer
`["diffusers_multitalk", "MultiTalkTransformer3DModel"]`; `register_with_diffusers` (run when the pipelines package is
imported) adds `diffusers.WanMultiTalkPipeline` and `diffusers.pipelines.diffusers_multitalk` so that
`DiffusionPipeline.from_pretrained` resolves both.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path


__all__ = [
    "LIBRARY_NAME",
    "REMOTE_CODE_DIR",
    "MultiTalkModelIndexMixin",
    "package_model_index",
    "register_with_diffusers",
    "remote_code_files",
    "saved_model_index",
]

LIBRARY_NAME = "diffusers_multitalk"
# The reviewed remote-code files: the repository's top-level `pipelines/`, which the package's `remote_code` link
# points to, so that every wheel installs them as package data (not a subpackage: nothing in the package imports
# them).
REMOTE_CODE_DIR = Path(__file__).resolve().parents[1] / "remote_code"
# class -> the file stem that defines it in REMOTE_CODE_DIR (pipelines at its top, components in their folder). A
# pipeline's file is named after the module that defines it; `register_with_diffusers` adds each pipeline class (the
# pipelines package registers every model's when it is imported), so that a new model needs no entry here.
REMOTE_PIPELINES: dict[str, str] = {}
REMOTE_COMPONENTS = {"MultiTalkTransformer3DModel": "transformer_multitalk"}


def _is_entry(key: str, value) -> bool:
    return not key.startswith("_") and isinstance(value, (list, tuple)) and len(value) == 2


def remote_code_files(index: dict) -> dict[str, Path]:
    """The remote-code files a folder with this (package-named) index ships: relative path -> source file. Raises if
    a class of this package has no reviewed remote code."""
    files = {}
    pipeline = index["_class_name"]
    if pipeline not in REMOTE_PIPELINES:
        raise ValueError(f"{pipeline} has no reviewed remote code; add {REMOTE_CODE_DIR}/<file>.py for it.")
    files[f"{REMOTE_PIPELINES[pipeline]}.py"] = REMOTE_CODE_DIR / f"{REMOTE_PIPELINES[pipeline]}.py"
    for key, value in index.items():
        if _is_entry(key, value) and value[0] == LIBRARY_NAME:
            if value[1] not in REMOTE_COMPONENTS:
                raise ValueError(f"{value[1]} has no reviewed remote code; add {REMOTE_CODE_DIR}/{key}/<file>.py.")
            stem = REMOTE_COMPONENTS[value[1]]
            files[f"{key}/{stem}.py"] = REMOTE_CODE_DIR / key / f"{stem}.py"
    missing = [str(source) for source in files.values() if not source.is_file()]
    if missing:
        raise FileNotFoundError(
            f"The remote-code files {missing} are missing from the installed package (its remote_code/ folder); "
            "reinstall diffusers-multitalk, or save with remote_code=False."
        )
    return files


def saved_model_index(index: dict, remote_code: bool = False) -> dict:
    """`model_index.json` contents as they are saved, from diffusers' own (`DiffusionPipeline.to_json_string`).

    This package's components get the library `diffusers_multitalk` instead of their module path, which Hub downloads
    reject; with `remote_code`, the pipeline and those components name the remote-code files instead."""
    out = dict(index)
    for key, value in index.items():
        if _is_entry(key, value) and str(value[0]).startswith(LIBRARY_NAME + "."):
            out[key] = [LIBRARY_NAME, value[1]]
    if remote_code:
        remote_code_files(out)  # every class has its file
        out["_class_name"] = [REMOTE_PIPELINES[out["_class_name"]], out["_class_name"]]
        for key, value in out.items():
            if _is_entry(key, value) and value[0] == LIBRARY_NAME:
                out[key] = [REMOTE_COMPONENTS[value[1]], value[1]]
    return out


def package_model_index(index: dict) -> dict:
    """The inverse of `saved_model_index(..., remote_code=True)`: the remote-code names read as this package's."""
    out = dict(index)
    name = index.get("_class_name")
    if isinstance(name, (list, tuple)) and len(name) == 2 and REMOTE_PIPELINES.get(name[1]) == name[0]:
        out["_class_name"] = name[1]
    for key, value in index.items():
        if _is_entry(key, value) and value[1] in REMOTE_COMPONENTS and REMOTE_COMPONENTS[value[1]] == value[0]:
            out[key] = [LIBRARY_NAME, value[1]]
    return out


class MultiTalkModelIndexMixin:
    """Writes and reads this package's pipelines' `model_index.json` (see the module docstring)."""

    _save_remote_code = False

    def to_json_string(self) -> str:
        """`model_index.json` as `save_pretrained` and `push_to_hub` write it: `saved_model_index` of diffusers' own."""
        index = saved_model_index(json.loads(super().to_json_string()), remote_code=self._save_remote_code)
        return json.dumps(index, indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike, *args, remote_code: bool = False, **kwargs):
        """diffusers' `save_pretrained`; `remote_code=True` also ships the reviewed remote-code files and names them in
        the model index, so that `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads it in a
        process that has not imported diffusers-multitalk (it must be installed)."""
        if remote_code:
            index = saved_model_index(json.loads(super().to_json_string()))
            for relative, source in remote_code_files(index).items():
                target = Path(save_directory) / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
        self._save_remote_code = remote_code
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            del self._save_remote_code

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike):
        # Read by `load_config` and `DiffusionPipeline.download`: this class is the code the remote files name.
        return package_model_index(super()._dict_from_json_file(json_file))


def _origin(obj) -> str:
    return obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None) or ""


def _register(owner: types.ModuleType, name: str, value) -> bool:
    """Sets `owner.name = value` unless diffusers itself defines that name (then it warns and leaves it)."""
    try:
        # `diffusers` and `diffusers.pipelines` are lazy modules: their own names resolve through __getattr__.
        current = owner.__dict__[name] if name in owner.__dict__ else getattr(owner, name)
    except (AttributeError, ImportError, RuntimeError):
        current = None
    if current is not None and current is not value and _origin(current).split(".")[0] == "diffusers":
        from diffusers.utils import logging

        logging.get_logger(__name__).warning(
            f"{owner.__name__}.{name} is diffusers' own ({current!r}); diffusers-multitalk does not replace it."
        )
        return False
    setattr(owner, name, value)
    return True


def register_with_diffusers(pipeline_classes=()) -> None:
    """Lets diffusers resolve this package's names in indexes saved without remote code: `diffusers.<Pipeline>` (the
    `_class_name`) and `diffusers.pipelines.diffusers_multitalk` (the library of `["diffusers_multitalk",
    "MultiTalkTransformer3DModel"]` entries); and records each pipeline's remote-code file (`REMOTE_PIPELINES`).
    Idempotent; names that diffusers itself defines are never replaced."""
    import diffusers
    import diffusers.pipelines

    for cls in pipeline_classes:
        _register(diffusers, cls.__name__, cls)
        REMOTE_PIPELINES[cls.__name__] = cls.__module__.rpartition(".")[2]
    _register(diffusers.pipelines, LIBRARY_NAME, sys.modules[LIBRARY_NAME])
