#!/usr/bin/env python
"""Convert the official MultiTalk downloads into one diffusers pipeline folder (and optionally upload it).

    python scripts/convert_weights.py --wan_dir weights/Wan2.1-I2V-14B-480P \
        --multitalk_dir weights/MeiGen-MultiTalk --wav2vec_dir weights/chinese-wav2vec2-base \
        --output_dir weights/MultiTalk-480P-diffusers --dtype bfloat16 [--push_to_hub me/MultiTalk-480P-diffusers]

A thin wrapper of `diffusers_multitalk.conversion.convert_original_to_diffusers` (which `multitalk convert`
also calls); flags may be spelt with `_` or `-`.
"""

from __future__ import annotations

import argparse
import json
import sys


DTYPES = ("bfloat16", "float16", "float32", "bf16", "fp16", "fp32")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert_weights.py",
        description="Convert Wan2.1-I2V-14B + MeiGen-MultiTalk + chinese-wav2vec2-base (the official folders) into "
        "a diffusers folder for WanMultiTalkPipeline / DiffusionPipeline.from_pretrained.",
    )

    def flag(name, **kwargs):
        p.add_argument(f"--{name}", f"--{name.replace('_', '-')}", dest=name, **kwargs)

    flag("wan_dir", required=True, help="the Wan2.1-I2V-14B-480P (or 720P) folder")
    flag("multitalk_dir", default=None, help="the MeiGen-MultiTalk folder (not needed if linked into --wan_dir)")
    flag("wav2vec_dir", required=True, help="the chinese-wav2vec2-base folder")
    flag("output_dir", required=True, help="the diffusers folder to write (must be empty or absent, see --force)")
    flag("dtype", default="bfloat16", choices=DTYPES, help="dtype of the DiT, text and image encoders (bfloat16)")
    flag("lora_dir", default=None, help="a LoRA file (or folder) to fuse into the DiT before saving")
    flag("lora_scale", type=float, default=1.0, help="scale of the fused LoRA (1.0)")
    flag("force", action="store_true", help="replace a non-empty --output_dir")
    flag("max_shard_size", default="5GB", help="largest safetensors shard (5GB)")
    flag("no_verify", action="store_true", help="skip reloading the result and comparing every parameter")
    flag("no_remote_code", action="store_true", help="do not bundle pipeline.py (the trust_remote_code route)")
    flag("push_to_hub", default=None, metavar="REPO_ID", help="upload the result to this Hub repo")
    flag("private", action="store_true", help="create the Hub repo as private")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from diffusers_multitalk.conversion import convert_original_to_diffusers

    try:
        report = convert_original_to_diffusers(
            wan_dir=args.wan_dir,
            multitalk_dir=args.multitalk_dir,
            wav2vec_dir=args.wav2vec_dir,
            output_dir=args.output_dir,
            torch_dtype=args.dtype,
            lora_path=args.lora_dir,
            lora_scale=args.lora_scale,
            force=args.force,
            push_to_hub=args.push_to_hub,
            private=args.private or None,
            max_shard_size=args.max_shard_size,
            verify=not args.no_verify,
            remote_code=not args.no_remote_code,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = {
        "output_dir": report["output_dir"],
        "torch_dtype": report["torch_dtype"],
        "num_tensors": report["num_tensors"],
        "total_bytes": report["total_bytes"],
        "verified": bool(report["verification"]),
        **({"hub": report["hub"]} if "hub" in report else {}),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
