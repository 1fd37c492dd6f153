"""How diffusers finds this package's classes in a saved pipeline folder.

diffusers (0.42) resolves the names in a folder's `model_index.json` like this:

* `_class_name` (the pipeline): `DiffusionPipeline.from_pretrained` looks it up as an attribute of the `diffusers`
  module, unless `custom_pipeline=` names a code file (then `trust_remote_code=True` is needed, local folders
  included). `WanMultiTalkPipeline.from_pretrained` uses its own class and never looks.
* a component `[library, class]`: `library` must be one diffusers loads from (diffusers, transformers, ...), a
  module under `diffusers.pipelines`, a module the caller has already imported (diffusers never imports a module
  because a repository names it), or a `<component>/<library>.py` file in the folder (remote code). `save_pretrained`
  records a third-party class under its full module path (`diffusers_multitalk.models.transformer_multitalk`),
  which resolves through `sys.modules` for local folders, but `DiffusionPipeline.download` rejects such an entry for
  Hub repositories before downloading anything.

So `register_with_diffusers()` (run on `import diffusers_multitalk`) adds `diffusers.WanMultiTalkPipeline` and the
module `diffusers.pipelines.diffusers_multitalk` (this package), and converted folders name the transformer
`["diffusers_multitalk", "MultiTalkTransformer3DModel"]` (`make_model_index_portable`). With the package imported,
`DiffusionPipeline.from_pretrained(folder or Hub id)` then resolves everything without remote code. For users without
the package, `write_remote_code` bundles the pipeline's source into the folder: a top-level `pipeline.py` plus
`multitalk_*.py` modules, loaded with `custom_pipeline="pipeline", trust_remote_code=True`.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import types
from pathlib import Path


__all__ = [
    "LIBRARY_NAME",
    "REMOTE_CODE_FILE",
    "register_with_diffusers",
    "portable_model_index",
    "make_model_index_portable",
    "bundled_modules",
    "bundled_requirements",
    "write_remote_code",
]

LIBRARY_NAME = "diffusers_multitalk"
REMOTE_CODE_FILE = "pipeline.py"
BUNDLE_PREFIX = "multitalk_"
# What the remote-code pipeline needs: the pipeline (and, through its imports, the transformer, loaders, audio
# code, hooks) plus the video export helpers users call on its output.
_BUNDLE_ROOTS = ("pipelines.pipeline_wan_multitalk", "models.transformer_multitalk", "pipelines.video_io")
_EXPORTED = (
    "WanMultiTalkPipeline",
    "WanMultiTalkPipelineOutput",
    "MultiTalkTransformer3DModel",
    "export_to_video",
    "export_to_video_with_audio",
)


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


def register_with_diffusers() -> None:
    """Lets diffusers resolve this package's names: `diffusers.WanMultiTalkPipeline` (the `_class_name` of saved
    folders) and `diffusers.pipelines.diffusers_multitalk` (the library of `["diffusers_multitalk",
    "MultiTalkTransformer3DModel"]` entries). Idempotent; called on `import diffusers_multitalk`. Names that diffusers
    itself defines are never replaced."""
    import diffusers
    import diffusers.pipelines

    from .pipelines.pipeline_wan_multitalk import WanMultiTalkPipeline

    _register(diffusers, "WanMultiTalkPipeline", WanMultiTalkPipeline)
    _register(diffusers.pipelines, LIBRARY_NAME, sys.modules[LIBRARY_NAME])


# ----------------------------------------------------------------------------------------------------------------
# model_index.json
# ----------------------------------------------------------------------------------------------------------------
def portable_model_index(index: dict) -> dict:
    """`model_index.json` contents with this package's components named `[LIBRARY_NAME, class]` instead of their
    full module paths, for every class the package exports at its top level."""
    import diffusers_multitalk

    out = dict(index)
    for key, value in index.items():
        if key.startswith("_") or not isinstance(value, (list, tuple)) or len(value) != 2:
            continue
        library, class_name = value
        ours = isinstance(library, str) and library.startswith(LIBRARY_NAME + ".")
        if ours and hasattr(diffusers_multitalk, class_name):
            out[key] = [LIBRARY_NAME, class_name]
    return out


def make_model_index_portable(folder: str | os.PathLike) -> dict:
    """Rewrites `folder/model_index.json` with `portable_model_index`; returns the new contents."""
    path = Path(folder) / "model_index.json"
    with open(path) as f:
        index = json.load(f)
    new = portable_model_index(index)
    if new != index:
        with open(path, "w") as f:
            f.write(json.dumps(new, indent=2, sort_keys=True) + "\n")
    return new


# ----------------------------------------------------------------------------------------------------------------
# remote code
# ----------------------------------------------------------------------------------------------------------------
def _package_dir() -> Path:
    return Path(__file__).resolve().parent


def _module_path(parts: tuple[str, ...]) -> Path:
    base = _package_dir().joinpath(*parts)
    if base.is_dir():
        return base / "__init__.py"
    return base.with_suffix(".py")


def _flat_name(parts: tuple[str, ...]) -> str:
    return BUNDLE_PREFIX + ("_".join(parts) if parts else "package")


def _import_target(parts: tuple[str, ...], node: ast.ImportFrom) -> tuple[str, ...] | None:
    """The package-relative module an import of module `parts` refers to, or None if it is not this package's."""
    if node.level:
        is_package = _module_path(parts).name == "__init__.py"
        package = list(parts if is_package else parts[:-1])
        if node.level - 1 > len(package):
            raise ValueError(f"{'.'.join(parts)}: relative import beyond the package")
        package = package[: len(package) - (node.level - 1)]
        target = tuple(package + (node.module.split(".") if node.module else []))
    elif node.module == LIBRARY_NAME or (node.module or "").startswith(LIBRARY_NAME + "."):
        target = tuple(node.module.split(".")[1:])
    else:
        return None
    if node.module is None or any(_module_path(target + (a.name,)).exists() for a in node.names):
        raise ValueError(
            f"{'.'.join(parts)}: `from {'.' * node.level}{node.module or ''} import "
            f"{', '.join(a.name for a in node.names)}` imports a module; the bundler handles "
            "`from .module import name`."
        )
    return target


def _imports(parts: tuple[str, ...]) -> list[tuple[ast.ImportFrom, tuple[str, ...], bool]]:
    """This package's `from ... import` statements in module `parts`: (node, target module, inside a function)."""
    tree = ast.parse(_module_path(parts).read_text(encoding="utf-8"))
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import) and any(a.name.split(".")[0] == LIBRARY_NAME for a in child.names):
                raise ValueError(
                    f"{'.'.join(parts)}: `import {LIBRARY_NAME}...` cannot be bundled; use `from ... import`."
                )
            if isinstance(child, ast.ImportFrom):
                target = _import_target(parts, child)
                if target is not None:
                    found.append((child, target, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def bundled_modules() -> list[tuple[str, ...]]:
    """The package modules the remote-code pipeline needs (every import, function-level ones too), in a stable
    order."""
    todo = [tuple(name.split(".")) for name in _BUNDLE_ROOTS]
    seen: list[tuple[str, ...]] = []
    while todo:
        parts = todo.pop(0)
        if parts in seen:
            continue
        if not _module_path(parts).exists():
            raise FileNotFoundError(f"{LIBRARY_NAME}.{'.'.join(parts)} has no source file to bundle")
        seen.append(parts)
        todo.extend(target for _, target, _ in _imports(parts) if target not in seen)
    _check_acyclic(seen)
    return sorted(seen)


def _check_acyclic(modules: list[tuple[str, ...]]) -> None:
    """diffusers fetches a Hub repo's remote code by following `from .x import` lines recursively and does not stop
    at files it already has (0.42), so the module-level imports of the bundle must not form a cycle (imports inside
    functions are bundled in a form it does not follow)."""
    graph = {parts: {t for _, t, lazy in _imports(parts) if not lazy} for parts in modules}
    state: dict[tuple[str, ...], int] = {}

    def visit(parts, path):
        if state.get(parts) == 2:
            return
        if state.get(parts) == 1:
            cycle = path[path.index(parts):] + [parts]
            raise ValueError("Module-level import cycle: " + " -> ".join(".".join(p) for p in cycle))
        state[parts] = 1
        for target in sorted(graph.get(parts, ())):
            visit(target, path + [parts])
        state[parts] = 2

    for parts in sorted(graph):
        visit(parts, [])


_PIP_NAMES = {"PIL": "pillow", "imageio_ffmpeg": "imageio-ffmpeg", "yaml": "pyyaml", "cv2": "opencv-python"}


def bundled_requirements() -> list[str]:
    """The third-party distributions the bundled modules import (function-level imports included)."""
    names = set()
    for parts in bundled_modules():
        for node in ast.walk(ast.parse(_module_path(parts).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    names -= set(sys.stdlib_module_names) | {LIBRARY_NAME, "__future__"}
    return sorted(_PIP_NAMES.get(n, n) for n in names)


_FROM_HEAD = re.compile(r"from\s+[\w.]+\s+import")


def _flattened_source(parts: tuple[str, ...]) -> str:
    """The module's source with each import of this package made flat and relative, the form diffusers' remote-code
    loader copies and resolves: module-level ones become `from .multitalk_<module> import ...`; those inside
    functions (often there to break an import cycle) import the module through importlib at call time, which
    diffusers' Hub fetcher does not follow (it would loop on a cycle), since `pipeline.py` names every module
    anyway."""
    lines = _module_path(parts).read_text(encoding="utf-8").splitlines(keepends=True)
    # Bottom-up, so that replacing a multi-line statement does not shift the ones still to do.
    for node, target, lazy in sorted(_imports(parts), key=lambda item: -item[0].lineno):
        first, last = node.lineno - 1, node.end_lineno - 1
        line = lines[first]
        if lazy:
            indent = line[: node.col_offset]
            if line[: node.col_offset].strip() or lines[last][node.end_col_offset :].strip():
                raise ValueError(f"{'.'.join(parts)}:{node.lineno}: cannot rewrite an import sharing its line")
            module = "_bundled_module"
            names = "; ".join(f"{a.asname or a.name} = {module}.{a.name}" for a in node.names)
            lines[first : last + 1] = [
                f'{indent}{module} = __import__("importlib").import_module(".{_flat_name(target)}", __package__); '
                f"{names}\n"
            ]
            continue
        head = _FROM_HEAD.match(line, node.col_offset)
        if head is None:
            raise ValueError(f"{'.'.join(parts)}:{node.lineno}: cannot rewrite {line.strip()!r}")
        lines[first] = line[: head.start()] + f"from .{_flat_name(target)} import" + line[head.end() :]
    return "".join(lines)


_PIPELINE_TEMPLATE = '''"""WanMultiTalkPipeline as remote code, for users who have not installed diffusers-multitalk.

    pipe = DiffusionPipeline.from_pretrained(<this folder or Hub repo>, custom_pipeline="pipeline",
                                             trust_remote_code=True)

Generated by diffusers-multitalk {version}. If the `diffusers_multitalk` package can be imported, its code is used
(as `DiffusionPipeline.from_pretrained` without remote code would); otherwise the copy of it bundled next to this file
(`{prefix}*.py`, diffusers-multitalk {version}, imports flattened for diffusers' loader).
"""

import importlib
import sys

import diffusers.pipelines


try:
    _package = importlib.import_module("{library}")
except ImportError:
    _package = None

if _package is not None:
    WanMultiTalkPipeline = _package.WanMultiTalkPipeline
    MultiTalkTransformer3DModel = _package.MultiTalkTransformer3DModel
else:
    # diffusers copies only the modules a local custom pipeline imports directly, so each one is named here.
{module_imports}
{exports}

    # model_index.json names the transformer ["{library}", "MultiTalkTransformer3DModel"]: diffusers looks
    # that library up under diffusers.pipelines, where the installed package would register itself.
    setattr(diffusers.pipelines, "{library}", sys.modules[__name__])
'''


def write_remote_code(folder: str | os.PathLike) -> list[str]:
    """Writes the remote-code pipeline into `folder`: `pipeline.py` and one flat `multitalk_*.py` per bundled
    package module. Returns the file names written."""
    from . import __version__

    folder = Path(folder)
    modules = bundled_modules()
    written = []
    for parts in modules:
        name = _flat_name(parts) + ".py"
        header = (
            f"# Bundled by diffusers-multitalk {__version__} from {LIBRARY_NAME}/{'/'.join(parts)}"
            f"{'/__init__' if _module_path(parts).name == '__init__.py' else ''}.py; imports of the package are "
            f"flattened to `from .{BUNDLE_PREFIX}<module> import`.\n"
        )
        (folder / name).write_text(header + _flattened_source(parts), encoding="utf-8")
        written.append(name)

    def module_of(symbol: str) -> str:
        for parts in modules:
            if re.search(rf"^(class|def) {symbol}\b", _module_path(parts).read_text(encoding="utf-8"), re.M):
                return _flat_name(parts)
        raise ValueError(f"{symbol} is not defined in a bundled module")

    exported = {symbol: module_of(symbol) for symbol in _EXPORTED}
    module_imports = "\n".join(
        f"    from .{_flat_name(parts)} import __name__ as _{_flat_name(parts)}  # noqa: F401"
        for parts in modules
        if _flat_name(parts) not in exported.values()
    )
    exports = "\n".join(f"    from .{module} import {symbol}  # noqa: F401" for symbol, module in exported.items())
    (folder / REMOTE_CODE_FILE).write_text(
        _PIPELINE_TEMPLATE.format(
            version=__version__,
            prefix=BUNDLE_PREFIX,
            library=LIBRARY_NAME,
            module_imports=module_imports,
            exports=exports,
        ),
        encoding="utf-8",
    )
    return [REMOTE_CODE_FILE, *written]
