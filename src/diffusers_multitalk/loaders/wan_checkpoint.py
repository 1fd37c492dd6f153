"""Reading Wan2.1's own ``.pth`` checkpoints: the helpers its per-component converters share.

Each converter (``wan_umt5``, ``wan_clip``, ``wan_vae``) reads its ``.pth`` file memory-mapped, works out the model
config from the tensor shapes, renames the keys in memory (with fullmatch rename tables that :func:`_invert_rules`
also runs backwards) and builds the model on the meta device. The loaded tensors are then assigned to it, so the
weights are never held twice (the real T5 file is 11 GB).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch


_WAN_REPO_ID = "Wan-AI/Wan2.1-I2V-14B-480P"
_DOWNLOAD_HINT = f"huggingface-cli download {_WAN_REPO_ID} --local-dir <dir>"

_MAX_LISTED_KEYS = 8


def _resolve_checkpoint(path: str | os.PathLike, default_name: str, what: str) -> Path:
    """Accept the checkpoint file itself or the Wan2.1 folder that contains it."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / default_name
    if not p.is_file():
        raise FileNotFoundError(
            f"{what} checkpoint not found: '{p}'. It is the file '{default_name}' of the official Wan2.1 release; "
            f"download the folder with `{_DOWNLOAD_HINT}` and pass '<dir>/{default_name}' (or '<dir>')."
        )
    return p


def _load_original_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        # Files written by the legacy (non-zip) serializer cannot be memory-mapped.
        if "mmap" not in str(err):
            raise
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(
            f"'{path}' is not a {what} checkpoint: expected a flat state dict of tensors, got {type(sd).__name__}."
        )
    return dict(sd)


def _fmt_keys(keys: Iterable[str]) -> str:
    keys = list(keys)  # kept in checkpoint / model order, which reads best
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED_KEYS])
    if len(keys) > _MAX_LISTED_KEYS:
        shown += f", ... ({len(keys) - _MAX_LISTED_KEYS} more)"
    return f"[{shown}]"


def _layout_error(
    what: str, missing: Iterable[str] = (), unexpected: Iterable[str] = (), extra: str = ""
) -> ValueError:
    missing, unexpected = list(missing), list(unexpected)
    parts = [f"The state dict does not have the layout of {what}."]
    if missing:
        parts.append(f"Missing keys ({len(missing)}): {_fmt_keys(missing)}.")
    if unexpected:
        parts.append(f"Unexpected keys ({len(unexpected)}): {_fmt_keys(unexpected)}.")
    if extra:
        parts.append(extra)
    parts.append("Check that the right file was passed to the right loader.")
    return ValueError(" ".join(parts))


def _require(sd: Mapping[str, torch.Tensor], required: Iterable[str], what: str, foreign: Iterable[str]) -> None:
    missing = [k for k in required if k not in sd]
    if missing:
        raise _layout_error(what, missing=missing, unexpected=foreign)


def _load_into_empty(
    model: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, tied: Mapping[str, str] | None = None
):
    """Strictly assign ``sd`` to a model built on the meta device; tensors are adopted, not copied.

    ``tied`` maps a parameter that shares its tensor with another one (target -> source); it must not be in ``sd``.
    """
    tied = tied or {}
    expected = {k: v for k, v in model.state_dict().items() if k not in tied}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise _layout_error(what, missing=missing, unexpected=unexpected)
    wrong = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(sd[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ValueError(f"Shape mismatch while loading {what}: " + "; ".join(wrong[:_MAX_LISTED_KEYS]))
    model.load_state_dict(sd, strict=False, assign=True)
    for target, source in tied.items():
        src_mod, _, src_name = source.rpartition(".")
        dst_mod, _, dst_name = target.rpartition(".")
        setattr(model.get_submodule(dst_mod), dst_name, getattr(model.get_submodule(src_mod), src_name))
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left and not all(t.is_meta for t in sd.values()):
        raise RuntimeError(f"{what}: tensors left uninitialised after loading: {_fmt_keys(left)}")
    return model


def _cast(sd: dict[str, torch.Tensor], torch_dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Cast in place (entry by entry, so the memory-mapped original of each tensor can be released)."""
    if torch_dtype is None:
        return sd
    for k in list(sd):
        if sd[k].is_floating_point() and sd[k].dtype != torch_dtype:
            sd[k] = sd[k].to(torch_dtype)
    return sd


def _empty_weights():
    from accelerate import init_empty_weights

    # Parameters on meta, buffers (e.g. CLIP's position_ids) real.
    return init_empty_weights(include_buffers=False)


def _rename(sd: dict[str, torch.Tensor], rules: list[tuple[re.Pattern, str]]) -> tuple[dict, list[str]]:
    out, unmatched = {}, []
    for key in list(sd):
        for pattern, repl in rules:
            m = pattern.fullmatch(key)
            if m:
                out[m.expand(repl)] = sd.pop(key)
                break
        else:
            unmatched.append(key)
    return out, unmatched


_RULE_GROUP = re.compile(r"\((?!\?)([^()]*)\)")


def _invert_rules(rules: list[tuple[re.Pattern, str]]) -> list[tuple[re.Pattern, str]]:
    r"""The inverse of a table of ``(fullmatch pattern, replacement)`` renames.

    The patterns may only hold escaped literals and un-nested groups, each used once by the replacement (as ``\1``),
    as the tables in this module do: ``blocks\.(\d+)\.norm1\.weight`` -> ``encoder.block.\1.layer.0.layer_norm.weight``
    becomes ``encoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight`` -> ``blocks.\1.norm1.weight``.
    """
    inverse = []
    for pattern, repl in rules:
        pieces = _RULE_GROUP.split(pattern.pattern)  # literal, group, literal, group, ..., literal
        literals, groups = pieces[0::2], pieces[1::2]
        repl_pieces = re.split(r"\\(\d)", repl)  # text, group number, text, ...
        order = [int(n) for n in repl_pieces[1::2]]
        if sorted(order) != list(range(1, len(groups) + 1)):
            raise ValueError(f"Rename rule {pattern.pattern!r} -> {repl!r} cannot be inverted.")
        new_pattern = "".join(
            re.escape(piece) if i % 2 == 0 else f"({groups[int(piece) - 1]})" for i, piece in enumerate(repl_pieces)
        )
        new_repl = ""
        for i, literal in enumerate(literals):
            new_repl += re.sub(r"\\(.)", r"\1", literal)
            if i < len(groups):
                new_repl += f"\\{order.index(i + 1) + 1}"
        inverse.append((re.compile(new_pattern), new_repl))
    return inverse


def _strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}
