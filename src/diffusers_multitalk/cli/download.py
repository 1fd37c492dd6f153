"""`multitalk download`: the official checkpoints from the Hub, linked as MultiTalk's README does."""

from __future__ import annotations

import os
import shutil
from argparse import Namespace
from pathlib import Path

from ..loaders.original_folders import (
    DIT_INDEX,
    MULTITALK_FILE,
    WAN_ALLOW_PATTERNS,
    WAN_CLIP_CHECKPOINT,
    WAN_T5_CHECKPOINT,
    WAN_UMT5_TOKENIZER_DIR,
    WAN_VAE_CHECKPOINT,
    WAV2VEC_ALLOW_PATTERNS,
    WAV2VEC_REPO,
    WAV2VEC_SAFETENSORS_PATTERNS,
    WAV2VEC_SAFETENSORS_REVISION,
)
from ..runtime.errors import PROG, UserError, note
from ..runtime.folders import inspect_wan_dir, inspect_wav2vec_dir
from ..runtime.hub import hub_error
from ..variants import DEFAULT_VARIANT, VARIANTS, Variant, get_size, variant_for_size


WAN_INDEX = DIT_INDEX


WAN_T5 = WAN_T5_CHECKPOINT


WAN_CLIP = WAN_CLIP_CHECKPOINT


WAN_VAE = WAN_VAE_CHECKPOINT


WAN_TOKENIZER = WAN_UMT5_TOKENIZER_DIR


KOKORO_REPO = "hexgrad/Kokoro-82M"


KOKORO_ALLOW_PATTERNS = ["config.json", "kokoro-v1_0.pth", "voices/*.pt"]


def _variant_step(target: Path, variant: Variant) -> dict:
    download = variant.download
    return dict(
        repo_id=download.repo_id,
        local_dir=target / download.folder,
        allow_patterns=list(download.allow_patterns),
        revision=None,
    )


def download_plan(
    target: str | os.PathLike,
    size: str = DEFAULT_VARIANT.sizes[0].name,
    link: bool = True,
    tts: bool = False,
    variants: tuple[Variant, ...] = (),
) -> list[dict]:
    """The snapshot_download calls ``download`` makes: ``[{repo_id, local_dir, allow_patterns, revision}, ...]``:
    the size's Wan base, MultiTalk's weights (the default model's, linked into it), wav2vec2, then the weights of the
    size's model and of `variants` (their `Variant.download`), then Kokoro with `tts`.

    When MultiTalk's index is linked into the Wan folder (the default), Wan's own index is not fetched: MultiTalk's
    replaces it (the README renames Wan's away), and re-running the download must not overwrite the link.
    """
    target = Path(target)
    wan_repo = get_size(size).wan_repo
    wan_patterns = list(WAN_ALLOW_PATTERNS) + ([] if link else [WAN_INDEX])
    plan = [
        dict(repo_id=wan_repo, local_dir=target / wan_repo.split("/")[1], allow_patterns=wan_patterns, revision=None),
        _variant_step(target, DEFAULT_VARIANT),
        dict(
            repo_id=WAV2VEC_REPO,
            local_dir=target / "chinese-wav2vec2-base",
            allow_patterns=list(WAV2VEC_ALLOW_PATTERNS),
            revision=None,
        ),
        dict(
            repo_id=WAV2VEC_REPO,
            local_dir=target / "chinese-wav2vec2-base",
            allow_patterns=list(WAV2VEC_SAFETENSORS_PATTERNS),
            revision=WAV2VEC_SAFETENSORS_REVISION,
        ),
    ]
    plan += [_variant_step(target, variant) for variant in _other_variants(size, variants)]
    if tts:
        plan.append(
            dict(
                repo_id=KOKORO_REPO,
                local_dir=target / "Kokoro-82M",
                allow_patterns=list(KOKORO_ALLOW_PATTERNS),
                revision=None,
            )
        )
    return plan


def _other_variants(size: str, variants: tuple[Variant, ...]) -> list[Variant]:
    """The models besides the default one whose weights come too: the size's, and those asked for, in registry
    order."""
    asked = {variant_for_size(size), *variants}
    return [variant for variant in VARIANTS if variant in asked and variant is not DEFAULT_VARIANT]


def _link(src: Path, dst: Path, copy: bool) -> str:
    """Links (or copies) ``src`` to ``dst``; returns what was done."""
    if dst.is_symlink() and dst.resolve() == src.resolve():
        return f"{dst} already links to {src}"
    if dst.is_symlink() or dst.exists():
        if dst.name == WAN_INDEX:
            old = dst.with_name(WAN_INDEX + "_old")
            if old.exists() or old.is_symlink():
                dst.unlink()
            else:
                dst.rename(old)  # as MultiTalk's README: keep Wan's index as ..._old
        elif dst.is_symlink():
            dst.unlink()
        else:
            return f"{dst} already present (left as is)"
    if not copy:
        try:
            dst.symlink_to(src.resolve())
            return f"linked {dst} -> {src.resolve()}"
        except OSError:
            pass  # e.g. no symlink privilege: copy
    shutil.copy2(src, dst)
    return f"copied {src} -> {dst}"


def link_multitalk_into_wan(wan_dir: Path, multitalk_dir: Path, copy: bool = False) -> list[str]:
    """MultiTalk README's step 2: its index and multitalk.safetensors into the Wan folder (Wan's index kept as _old)."""
    done = []
    for name in (WAN_INDEX, MULTITALK_FILE):
        src = multitalk_dir / name
        if not src.exists():
            raise UserError(f"{src} is missing; the MeiGen-MultiTalk download is incomplete (run the command again)")
        done.append(_link(src, wan_dir / name, copy))
    return done


def cmd_download(args: Namespace) -> int:
    import huggingface_hub

    link = not args.no_link
    asked = tuple(v for v in VARIANTS if v.download.flag is not None and getattr(args, v.download.flag, False))
    plan = download_plan(args.target, args.size, link=link, tts=args.tts, variants=asked)
    for step in plan:
        revision = f" (revision {step['revision']})" if step["revision"] else ""
        note(f"downloading {step['repo_id']}{revision}: {', '.join(step['allow_patterns'])} -> {step['local_dir']}")
        step["local_dir"].mkdir(parents=True, exist_ok=True)
        try:
            huggingface_hub.snapshot_download(
                repo_id=step["repo_id"],
                revision=step["revision"],
                local_dir=step["local_dir"],
                allow_patterns=step["allow_patterns"],
                max_workers=args.max_workers,
            )
        except Exception as err:  # noqa: BLE001 - turned into a clear message when it is the Hub's
            clear = hub_error(err, step["repo_id"])
            if clear is None:
                raise
            raise clear from err

    wan_dir, multitalk_dir, wav2vec_dir = plan[0]["local_dir"], plan[1]["local_dir"], plan[2]["local_dir"]
    if link:
        for line in link_multitalk_into_wan(wan_dir, multitalk_dir, copy=args.copy):
            note(line)
    problems = [
        f"{wan_dir}: {label}" + (f" ({detail})" if detail else "")
        for label, ok, detail in inspect_wan_dir(wan_dir, link)
        if not ok
    ]
    problems += [
        f"{wav2vec_dir}: {label}" + (f" ({detail})" if detail else "")
        for label, ok, detail in inspect_wav2vec_dir(wav2vec_dir)
        if not ok
    ]
    if problems:
        raise UserError("the download finished but files are missing:\n" + "\n".join(f"  {p}" for p in problems))
    extra = "" if link else f" --multitalk_dir {multitalk_dir}"
    print(f"{PROG} generate --ckpt_dir {wan_dir} --wav2vec_dir {wav2vec_dir}{extra} --input_json <your input>.json")
    for variant in _other_variants(args.size, asked):  # each other model: its weights flags
        flags = variant.download.generate_flags.format(folder=Path(args.target) / variant.download.folder)
        print(f"{PROG} generate --ckpt_dir {wan_dir} --wav2vec_dir {wav2vec_dir} {flags}")
    return 0
