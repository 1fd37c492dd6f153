"""`multitalk convert`: the official folders (MultiTalk's, or another model's with its weights flags: the variant
registry) -> a diffusers repo with a model card."""

from __future__ import annotations

from argparse import Namespace

from ..runtime.errors import UserError
from ..variants import DEFAULT_VARIANT, WEIGHTS_OPTIONS


def cmd_convert(args: Namespace) -> int:
    from ..conversion import convert_original_to_diffusers

    # The other models' weights flags are forwarded only when given (a MultiTalk conversion's call is unchanged).
    others = [option for option in WEIGHTS_OPTIONS if option not in DEFAULT_VARIANT.weights]
    weights = {o.name: getattr(args, o.name) for o in others if getattr(args, o.name, None) is not None}
    try:
        result = convert_original_to_diffusers(
            wan_dir=args.wan_dir,
            multitalk_dir=args.multitalk_dir,
            wav2vec_dir=args.wav2vec_dir,
            output_dir=args.output_dir,
            dtype=args.dtype,
            lora_dir=args.lora_dir,
            lora_scale=args.lora_scale,
            force=args.force,
            push_to_hub=args.push_to_hub,
            **weights,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        raise UserError(str(err)) from err
    print(result if result is not None else args.output_dir)
    return 0
