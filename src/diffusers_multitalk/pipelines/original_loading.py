"""What the pipelines' `from_original` do once their DiT and umT5 are loaded: the other official components, the
model's own scheduler, then an optional LoRA and quantisation on the fly (after the LoRA, which
`quantize_pipeline` fuses first: a quantised layer takes no adapter)."""

from __future__ import annotations

import torch


def assemble_original_pipeline(
    cls,
    wan_dir,
    wav2vec_dir,
    transformer,
    text_encoder,
    torch_dtype: torch.dtype | None = None,
    lora_path=None,
    lora_scale: float = 1.0,
    adapter_name: str = "lora",
    quantize: str | None = None,
):
    """`cls(...)` from the loaded DiT and umT5, the folders' other components and the class's own sampler
    (`cls.default_scheduler()`); `quantize` ("int8"/"fp8") runs optimum-quanto on the float weights after the
    LoRA."""
    from ..loaders.wan_original import load_wan_original_components

    pipe = cls(
        transformer=transformer,
        text_encoder=text_encoder,
        scheduler=cls.default_scheduler(),
        **load_wan_original_components(wan_dir, wav2vec_dir, torch_dtype=torch_dtype),
    )
    if lora_path is not None:
        pipe.load_lora_weights(lora_path, adapter_name=adapter_name)
        pipe.set_adapters([adapter_name], [lora_scale])
    if quantize is not None:
        from ..loaders.quantized import quantize_pipeline

        quantize_pipeline(pipe, quantize)
    return pipe
