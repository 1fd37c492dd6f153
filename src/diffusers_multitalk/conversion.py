"""The official download folders of a model (MultiTalk's, or another entry's of the variant registry) -> one diffusers
pipeline folder (`from_pretrained`, Hub-ready).

    from diffusers_multitalk.conversion import convert_original_to_diffusers

    report = convert_original_to_diffusers(
        "weights/Wan2.1-I2V-14B-480P", "weights/MeiGen-MultiTalk", "weights/chinese-wav2vec2-base",
        "weights/MultiTalk-480P-diffusers", dtype=torch.bfloat16,
    )
    # InfiniteTalk: its adapter file (single/ or multi/) on the Wan folder, or a full DiT checkpoint (dit_path=)
    report = convert_original_to_diffusers(
        "weights/Wan2.1-I2V-14B-480P", wav2vec_dir="weights/chinese-wav2vec2-base",
        infinitetalk_dir="weights/InfiniteTalk/single/infinitetalk.safetensors",
        output_dir="weights/InfiniteTalk-480P-diffusers", dtype=torch.bfloat16,
    )

The result is the model's pipeline's `save_pretrained` output (`model_index.json`, one folder per component,
safetensors shards with their index) plus a model card (`README.md`), a conversion report (`conversion_report.json`)
and the reviewed remote-code files of the repository's top-level `pipelines/` folder (installed with the package as
`diffusers_multitalk/remote_code/`), so that
`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads it in a process that never imported the
package. See `diffusers_multitalk.pipelines.model_index` for how each loading route resolves the classes.

This module sits above the pipelines (it builds, saves and reloads a pipeline) and the variant registry (what differs
between models: their folders' check, weights keywords, model card and report sources), beside the runtime: the
loaders below it only read the original checkpoints.

Nothing is written until everything has been checked; the folder is built next to `output_dir` under a temporary
name, verified by reloading every component and comparing its parameters, and only then renamed into place.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import uuid
from collections import Counter
from pathlib import Path

import torch

from .loaders.original_folders import (
    WAN_REPO,
    WAN_REPO_720,
    WAV2VEC_REPO,
    check_original_folders,
)
from .variants import DEFAULT_VARIANT, VARIANTS, WEIGHTS_OPTIONS, Variant, get_variant, variant_of_pipeline


__all__ = [
    "CONVERSION_REPORT",
    "check_original_folders",
    "convert_infinitetalk_to_diffusers",
    "convert_original_to_diffusers",
    "model_card",
    "verify_saved_pipeline",
]

CONVERSION_REPORT = "conversion_report.json"

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}
# What each component is made of, for the model card and the report: the parts every model shares (each model's
# transformer and scheduler texts are its registry entry's, `Converter.sources`).
_SOURCES = {
    "text_encoder": "{wan}/models_t5_umt5-xxl-enc-bf16.pth (Wan's umT5-XXL encoder) -> transformers UMT5EncoderModel",
    "image_encoder": "{wan}/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth, vision tower (visual.*) only -> "
    "transformers CLIPVisionModel",
    "vae": "{wan}/Wan2.1_VAE.pth -> diffusers AutoencoderKLWan",
    "tokenizer": "{wan}/google/umt5-xxl",
    "audio_encoder": "{wav2vec} (transformers Wav2Vec2Model)",
    "audio_feature_extractor": "{wav2vec} (Wav2Vec2FeatureExtractor)",
}


def _dtype(value) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and value.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[value.lower().removeprefix("torch.")]
    raise ValueError(f"Unknown dtype {value!r}; use one of {sorted(set(_DTYPES))} or a torch.dtype.")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------------------------
def _check_output(output_dir: Path, force: bool, sources: list[Path]) -> None:
    resolved = output_dir.resolve()
    for source in sources:
        source = source.resolve()
        if resolved == source or resolved in source.parents or source in resolved.parents:
            raise ValueError(f"output_dir {output_dir} overlaps the source {source}; choose another folder.")
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"output_dir {output_dir} exists and is not a folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not force:
        raise FileExistsError(
            f"output_dir {output_dir} exists and is not empty; pass force=True (--force) to replace it."
        )


# ----------------------------------------------------------------------------------------------------------------
# report, model card, verification
# ----------------------------------------------------------------------------------------------------------------
def _component_stats(folder: Path, index: dict) -> dict:
    from safetensors import safe_open

    stats = {}
    for name, entry in sorted(index.items()):
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        sub = folder / name
        files = sorted(p for p in sub.rglob("*") if p.is_file())
        info = {
            "library": entry[0],
            "class": entry[1],
            "files": [str(p.relative_to(sub)) for p in files],
            "bytes": sum(p.stat().st_size for p in files),
        }
        weights = [p for p in files if p.suffix == ".safetensors"]
        if weights:
            num_tensors, num_parameters, dtypes = 0, 0, {}
            for file in weights:
                with safe_open(str(file), framework="pt") as f:
                    for key in f.keys():
                        tensor = f.get_slice(key)
                        shape = tensor.get_shape()
                        count = 1
                        for d in shape:
                            count *= d
                        num_tensors += 1
                        num_parameters += count
                        dtype = str(tensor.get_dtype())
                        dtypes[dtype] = dtypes.get(dtype, 0) + 1
            info.update(num_tensors=num_tensors, num_parameters=num_parameters, tensor_dtypes=dtypes)
        stats[name] = info
    return stats


def _load_component(folder: Path, name: str, library: str, class_name: str, dtype: torch.dtype | None):
    import importlib

    from diffusers import ModelMixin

    from .pipelines.model_index import LIBRARY_NAME

    module = importlib.import_module(LIBRARY_NAME if library.split(".")[0] == LIBRARY_NAME else library)
    cls = getattr(module, class_name)
    if issubclass(cls, ModelMixin):
        return cls.from_pretrained(folder / name, dtype=dtype)
    import transformers
    from packaging import version

    key = "dtype" if version.parse(transformers.__version__) >= version.parse("4.56") else "torch_dtype"
    return cls.from_pretrained(folder / name, **{key: dtype})


def verify_saved_pipeline(folder, pipe) -> dict:
    """Reloads every weight component of the saved `folder` (one at a time, with the class its model_index entry
    names) and compares each parameter and buffer with `pipe`'s, exactly. Raises `ValueError` on any difference;
    returns per-component counts and the largest absolute difference (0.0)."""
    from .pipelines.model_index import package_model_index

    folder = Path(folder)
    with open(folder / "model_index.json") as f:
        index = package_model_index(json.load(f))
    results = {}
    for name, entry in sorted(index.items()):
        module = getattr(pipe, name, None)
        if name.startswith("_") or not isinstance(module, torch.nn.Module):
            continue
        expected = module.state_dict()
        # Reload in the dtype most of its tensors have (modules kept in float32 stay so either way).
        counts = Counter(t.dtype for t in expected.values() if t.is_floating_point())
        dtype = counts.most_common(1)[0][0] if counts else None
        reloaded = _load_component(folder, name, entry[0], entry[1], dtype).state_dict()
        problems, max_diff, dtype_changes = [], 0.0, 0
        if set(reloaded) != set(expected):
            problems.append(f"keys differ: {sorted(set(reloaded) ^ set(expected))[:8]}")
        for key in sorted(set(reloaded) & set(expected)):
            a, b = reloaded[key], expected[key]
            if a.shape != b.shape:
                problems.append(f"{key}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
                continue
            if a.dtype != b.dtype:
                # e.g. transformers keeps T5's `wo` in float32: a lossless upcast, compared in float32.
                dtype_changes += 1
                a, b = a.float(), b.float()
            if not torch.equal(a, b):
                diff = (a.double() - b.double()).abs().max().item() if a.is_floating_point() else float("inf")
                max_diff = max(max_diff, diff)
                problems.append(f"{key}: max |diff| {diff:.3g}")
        del reloaded
        if problems:
            raise ValueError(f"Verification of {folder / name} failed: " + "; ".join(problems[:8]))
        results[name] = {"num_tensors": len(expected), "max_abs_diff": max_diff, "dtype_changes": dtype_changes}
    return {"ok": True, "components": results, "max_abs_diff": max(r["max_abs_diff"] for r in results.values())}


def model_card(report: dict, repo_id: str | None = None) -> str:
    """The `README.md` of a converted folder: YAML front matter (library, pipeline tag, base models, license, tags),
    usage for both loading routes and what was converted from what."""
    from huggingface_hub import ModelCardData

    pipeline = report.get("pipeline_class", DEFAULT_VARIANT.pipeline_class_name)
    variant = variant_of_pipeline(pipeline)
    card = dict(dataclasses.asdict(variant.converter.card), name=variant.name)
    data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="image-to-video",
        license="apache-2.0",
        base_model=[report["sources"]["wan_repo"], card["repo"]],
        tags=[
            "diffusers",
            "diffusers-multitalk",
            pipeline,
            *card["tags"],
            "wan",
            "audio-driven",
            "talking-head",
            "image-to-video",
        ],
    )
    where = repo_id or "path/to/this/folder"
    dtype = report["torch_dtype"]
    dtypes = f'dtypes = {{"default": torch.{dtype}, "vae": torch.float32, "audio_encoder": torch.float32}}'
    rows = "\n".join(
        f"| `{name}` | `{c['library']}.{c['class']}` | {c.get('num_tensors', '-')} | "
        f"{', '.join(sorted(c.get('tensor_dtypes', {}))) or '-'} | {c['bytes'] / 2**20:,.1f} MiB | {c['source']} |"
        for name, c in report["components"].items()
    )
    lora = report["sources"].get("lora_path")
    lora_text = (
        f"\nA LoRA was fused into the transformer before saving: `{Path(lora).name}` at scale "
        f"{report['sources']['lora_scale']}.\n"
        if lora
        else ""
    )
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    remote_files = ", ".join(f"`{name}`" for name in report.get("remote_code_files") or [])
    without_package = (
        f"""Without importing the package: `model_index.json` names the remote-code files of this repository
({remote_files}), which only import the installed diffusers-multitalk, so `trust_remote_code=True` runs those few
lines:

```py
import torch
from diffusers import DiffusionPipeline

{dtypes}
pipe = DiffusionPipeline.from_pretrained("{where}", trust_remote_code=True, dtype=dtypes).to("cuda")
```

"""
        if remote_files
        else "This folder ships no remote code: import diffusers-multitalk to load it.\n\n"
    )
    adapter = _card_adapter_line(report, variant)
    body = f"""
# {card["name"]} ({Path(report["sources"]["wan_dir"]).name}) for diffusers

{card["intro"]} The transformer and the text and image encoders are stored in {dtype}, the VAE and wav2vec2 in
float32 (as {card["name"]} runs them); the `dtype` mapping below keeps it so (without one, diffusers would load the
transformer in float32).

## Usage

diffusers-multitalk is not on PyPI yet: install it from its source checkout.

```bash
pip install -e /path/to/diffusers-multitalk   # the folder of a clone of the repository
```

{without_package}With the package imported, no remote code runs:

```py
import torch
from diffusers_multitalk import {pipeline}, export_to_video_with_audio

{dtypes}
pipe = {pipeline}.from_pretrained("{where}", dtype=dtypes).to("cuda")
{card["call"]}
export_to_video_with_audio(out.frames[0], out.audio, "{card["video"]}", fps=25)
```

## Conversion

Converted with diffusers-multitalk's `{report.get("converter", "convert_original_to_diffusers")}` on {report["created"]} ({versions}) from:

- [{report["sources"]["wan_repo"]}](https://huggingface.co/{report["sources"]["wan_repo"]}) (Apache-2.0): the DiT,
  umT5 text encoder, CLIP image encoder, VAE and tokenizer;
- {adapter};
- [{WAV2VEC_REPO}](https://huggingface.co/{WAV2VEC_REPO}) (see its model card for its license): the speech encoder.
{lora_text}
| component | class | tensors | dtypes | size | converted from |
|---|---|---|---|---|---|
{rows}

Every component was reloaded after saving and compared with the converted weights: identical
(largest difference {report["verification"]["max_abs_diff"] if report.get("verification") else "not checked"}).
`{CONVERSION_REPORT}` holds the details.
"""
    return f"---\n{data.to_yaml()}\n---\n{body}"


def _card_adapter_line(report: dict, variant: Variant) -> str:
    """The model card's bullet for the model's own weights (its entry's `Converter.adapter_line`)."""
    repo = variant.converter.card.repo
    return f"[{repo}](https://huggingface.co/{repo}) (Apache-2.0): {variant.converter.adapter_line(report['sources'])}"


# ----------------------------------------------------------------------------------------------------------------
# conversion
# ----------------------------------------------------------------------------------------------------------------
def _versions() -> dict:
    import diffusers
    import transformers

    from . import __version__

    return {
        "diffusers_multitalk": __version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__.split("+")[0],
    }


def _fuse_lora(pipe, lora_path: Path, lora_scale: float) -> None:
    adapter = "converted_lora"
    if lora_path.is_file():
        pipe.load_lora_weights(str(lora_path.parent), weight_name=lora_path.name, adapter_name=adapter)
    else:
        pipe.load_lora_weights(str(lora_path), adapter_name=adapter)
    pipe.fuse_lora(components=["transformer"], lora_scale=lora_scale, adapter_names=[adapter])
    pipe.unload_lora_weights()


def convert_original_to_diffusers(
    wan_dir,
    multitalk_dir=None,
    wav2vec_dir=None,
    output_dir=None,
    torch_dtype: torch.dtype | str = torch.bfloat16,
    lora_path=None,
    lora_scale: float = 1.0,
    force: bool = False,
    push_to_hub: str | None = None,
    max_shard_size: int | str = "5GB",
    verify: bool = True,
    remote_code: bool = True,
    private: bool | None = None,
    token: str | None = None,
    **weights,
) -> dict:
    """Converts the official folders into one diffusers pipeline folder; returns the conversion report.

    Args:
        wan_dir / multitalk_dir / wav2vec_dir: `Wan2.1-I2V-14B-480P/` (or 720P), `MeiGen-MultiTalk/` (not needed if
            linked into `wan_dir` as MultiTalk's README does) and `chinese-wav2vec2-base/`.
        output_dir: the folder to write. An existing non-empty folder is replaced only with `force=True`.
        torch_dtype: dtype of the transformer, text and image encoders ("bfloat16", "float16", "float32" or a
            torch.dtype); the VAE and wav2vec2 stay float32.
        lora_path / lora_scale: a LoRA (file or folder, e.g. a step-distillation LoRA in Wan's naming) fused into the
            transformer before saving.
        push_to_hub: a Hub repo id to upload the result to (`HfApi.create_repo` + `upload_folder`), with `private`
            and `token`.
        max_shard_size: largest safetensors shard.
        verify: reload every component from the written folder and compare its parameters (one component at a time:
            peak memory is the pipeline plus its largest component).
        remote_code: also ship the reviewed remote-code files (the top-level `pipelines/`) and name
            them in the model index (see `diffusers_multitalk.pipelines.model_index`).
        weights: another model's weights, by its flag names or its `from_original` keywords (the variant registry's
            `Variant.weights`): converts that model instead, e.g. `infinitetalk_dir=` (InfiniteTalk's `single/` or
            `multi/infinitetalk.safetensors`, or the `InfiniteTalk/` folder, meaning `single/`; also
            `infinitetalk_file=`) or `dit_path=` (a full DiT checkpoint); not with `multitalk_dir`. Also `dtype=` and
            `lora_dir=` (the `multitalk convert` flag names) for `torch_dtype` / `lora_path`.

    The report (also saved as `conversion_report.json`) lists, per component, its class, source, tensor count,
    parameter count, dtypes, files and bytes, plus the verification result and, after a push, the repo URL.
    """
    for alias, name in (("dtype", "torch_dtype"), ("lora_dir", "lora_path")):
        value = weights.pop(alias, None)
        if value is None:
            continue
        if name == "torch_dtype":
            torch_dtype = value
        elif lora_path is not None:
            raise TypeError("Pass lora_path or lora_dir, not both.")
        else:
            lora_path = value
    variant, given = _asked_model(multitalk_dir, weights)
    return _convert(
        variant,
        wan_dir,
        given,
        wav2vec_dir,
        output_dir=output_dir,
        torch_dtype=torch_dtype,
        lora_path=lora_path,
        lora_scale=lora_scale,
        force=force,
        push_to_hub=push_to_hub,
        max_shard_size=max_shard_size,
        verify=verify,
        remote_code=remote_code,
        private=private,
        token=token,
    )


def _asked_model(multitalk_dir, weights: dict) -> tuple[Variant, dict]:
    """The model whose weights `convert_original_to_diffusers` was given (the default one when none) and those
    weights by flag name; refuses unknown keywords and two models' weights."""
    given = {}
    for option in WEIGHTS_OPTIONS:
        values = {key: weights.pop(key) for key in {option.name, option.keyword} if key in weights}
        values = {key: value for key, value in values.items() if value is not None}
        if len(values) > 1:
            raise TypeError(f"Pass {option.name} or {option.keyword}, not both.")
        if values:
            given[option.name] = next(iter(values.values()))
    if multitalk_dir is not None:
        given["multitalk_dir"] = multitalk_dir
    if weights:
        raise TypeError(f"Unexpected arguments: {sorted(weights)}")
    asked = [variant for variant in VARIANTS if any(o.name in given for o in variant.weights)]
    if len(asked) > 1:
        named = " and ".join(f"{o.name} ({o.flag})" for o in WEIGHTS_OPTIONS if o.name in given)
        ways = ", ".join(f"{_flags(v)} to convert {v.name}" for v in asked)
        raise ValueError(f"{named} exclude each other: pass {ways}.")
    return (asked[0] if asked else DEFAULT_VARIANT), given


def _flags(variant: Variant) -> str:
    first, *others = (option.flag for option in variant.weights)
    return f"{first} (or {', '.join(others)})" if others else first


def convert_infinitetalk_to_diffusers(
    wan_dir,
    infinitetalk_file=None,
    wav2vec_dir=None,
    output_dir=None,
    torch_dtype: torch.dtype | str = torch.bfloat16,
    dit_path=None,
    **kwargs,
) -> dict:
    """InfiniteTalk's downloads -> one diffusers `WanInfiniteTalkPipeline` folder; returns the conversion report:
    `convert_original_to_diffusers` for the registry's InfiniteTalk entry (its other keywords are taken too).

    `infinitetalk_file` is MeiGen-AI/InfiniteTalk's `single/infinitetalk.safetensors` (one person) or
    `multi/infinitetalk.safetensors` (several), or the `InfiniteTalk/` folder (then `single/`), loaded over `wan_dir`'s
    DiT shards; or `dit_path` is a full DiT checkpoint (the reference's `--dit_path`) used instead of both. Every
    missing file is named before anything loads.
    """
    variant = get_variant("infinitetalk-14B")
    weights = {"infinitetalk_dir": infinitetalk_file, "dit_path": dit_path}
    weights = {name: value for name, value in weights.items() if value is not None}
    return _convert(variant, wan_dir, weights, wav2vec_dir, output_dir=output_dir, torch_dtype=torch_dtype, **kwargs)


def _convert(
    variant: Variant,
    wan_dir,
    weights: dict,
    wav2vec_dir,
    *,
    output_dir,
    torch_dtype,
    lora_path=None,
    lora_scale: float = 1.0,
    force: bool = False,
    push_to_hub: str | None = None,
    max_shard_size: int | str = "5GB",
    verify: bool = True,
    remote_code: bool = True,
    private: bool | None = None,
    token: str | None = None,
) -> dict:
    """One model's conversion: checks the output folder and every source file (the entry's `check_folders`)
    before anything loads, builds the pipeline with `from_original` and writes it (`_write_converted`)."""
    if output_dir is None:
        raise TypeError("output_dir is required.")
    torch_dtype = _dtype(torch_dtype)
    output_dir = Path(output_dir).expanduser()
    wan_dir = Path(wan_dir).expanduser()
    sources = [p for p in (wan_dir, *weights.values(), wav2vec_dir, lora_path) if p is not None]
    _check_output(output_dir, force, [Path(p).expanduser() for p in sources])
    _raise_problems(variant.check_folders(wan_dir, wav2vec_dir, weights), lora_path)

    pipe = variant.pipeline_class.from_original(
        wan_dir, wav2vec_dir=wav2vec_dir, dtype=torch_dtype, **variant.from_original_kwargs(weights)
    )
    described = variant.converter.sources(wan_dir, weights)
    names = {"wan": wan_dir.name, **described.names, "wav2vec": Path(wav2vec_dir).name}
    return _write_converted(
        pipe,
        variant,
        wan_dir,
        wav2vec_dir,
        described.report,
        {**_SOURCES, **described.texts},
        names,
        output_dir=output_dir,
        torch_dtype=torch_dtype,
        lora_path=lora_path,
        lora_scale=lora_scale,
        push_to_hub=push_to_hub,
        max_shard_size=max_shard_size,
        verify=verify,
        remote_code=remote_code,
        private=private,
        token=token,
    )


def _raise_problems(problems: list[str], lora_path) -> None:
    problems = list(problems)
    if lora_path is not None and not Path(lora_path).exists():
        problems.append(f"The LoRA {lora_path} does not exist.")
    if problems:
        raise FileNotFoundError("Cannot convert:\n- " + "\n- ".join(problems))


def _write_converted(
    pipe,
    variant: Variant,
    wan_dir: Path,
    wav2vec_dir,
    model_sources: dict,
    source_texts: dict,
    names: dict,
    *,
    output_dir: Path,
    torch_dtype: torch.dtype,
    lora_path,
    lora_scale: float,
    push_to_hub,
    max_shard_size,
    verify: bool,
    remote_code: bool,
    private,
    token,
) -> dict:
    """Fuses the LoRA, writes the pipeline under a temporary name beside `output_dir`, reports, verifies, writes the
    model card, renames it into place and pushes it: the part every model's conversion shares."""
    from .pipelines.model_index import package_model_index

    if lora_path is not None:
        _fuse_lora(pipe, Path(lora_path), lora_scale)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    partial = output_dir.parent / f".{output_dir.name}.partial-{tag}"
    try:
        pipe.save_pretrained(partial, safe_serialization=True, max_shard_size=max_shard_size, remote_code=remote_code)
        with open(partial / "model_index.json") as f:
            index = package_model_index(json.load(f))
        remote_files = sorted(str(p.relative_to(partial)) for p in partial.rglob("*.py")) if remote_code else []
        components = _component_stats(partial, index)
        for name, info in components.items():
            info["source"] = source_texts.get(name, "").format(**names)
        report = {
            "format": "diffusers-multitalk conversion report",
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "pipeline_class": type(pipe).__name__,
            "converter": variant.converter.function,
            "torch_dtype": _dtype_name(torch_dtype),
            "sources": {
                "wan_dir": str(wan_dir.resolve()),
                "wan_repo": WAN_REPO_720 if "720" in wan_dir.name else WAN_REPO,
                **model_sources,
                "wav2vec_dir": str(Path(wav2vec_dir).resolve()),
                "lora_path": str(Path(lora_path).resolve()) if lora_path is not None else None,
                "lora_scale": lora_scale if lora_path is not None else None,
            },
            "versions": _versions(),
            "max_shard_size": max_shard_size,
            "components": components,
            "num_tensors": sum(c.get("num_tensors", 0) for c in components.values()),
            "total_bytes": sum(c["bytes"] for c in components.values()),
            "remote_code_files": remote_files,
            "verification": verify_saved_pipeline(partial, pipe) if verify else None,
        }
        with open(partial / CONVERSION_REPORT, "w") as f:
            json.dump(report, f, indent=2)
        (partial / "README.md").write_text(model_card(report, push_to_hub), encoding="utf-8")
        _move_into_place(partial, output_dir, tag)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    report["output_dir"] = str(output_dir)

    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        url = api.create_repo(push_to_hub, private=private, exist_ok=True, repo_type="model")
        repo_id = url.repo_id if isinstance(getattr(url, "repo_id", None), str) else push_to_hub
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(output_dir),
            repo_type="model",
            commit_message=f"{variant.name} for diffusers ({report['torch_dtype']}), converted by diffusers-multitalk",
        )
        report["hub"] = {"repo_id": repo_id, "url": str(url), "commit": str(getattr(commit, "commit_url", commit))}
    return report


def _move_into_place(partial: Path, output_dir: Path, tag: str) -> None:
    """Renames the finished folder to `output_dir`; an existing one (force) is moved aside first and deleted only
    once the new one is in place."""
    if not output_dir.exists():
        os.replace(partial, output_dir)
        return
    old = output_dir.parent / f".{output_dir.name}.replaced-{tag}"
    os.replace(output_dir, old)
    try:
        os.replace(partial, output_dir)
    except BaseException:
        os.replace(old, output_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
