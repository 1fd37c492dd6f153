"""Several GPUs for one video: diffusers' context parallelism on the MultiTalk transformer.

Every process runs the whole pipeline (encoders, sampler, VAE: identical work, identical results); inside the
transformer each process holds 1/N of the video tokens, the self-attention exchanges them with Ulysses all-to-alls
(diffusers' `enable_parallelism`), and the output projection gathers them back. MultiTalk's own parts are split
too: each rank's audio cross-attention uses the audio of the frames its tokens belong to, and the person map
(L-RoPE) gathers the first latent frame's keys and normalises the scores over all ranks. Launch one process per GPU
with `torchrun --nproc_per_node N` (the `multitalk generate --ulysses_size N` command does the rest).
"""

from __future__ import annotations

import contextlib

import torch


__all__ = ["enable_context_parallelism"]


@contextlib.contextmanager
def _one_device_per_cpu_process():
    """diffusers places rank r on accelerator `r % torch.accelerator.device_count()`, which is 0 without one; CPU
    processes (gloo) each use "the" CPU."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    device_count = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = device_count


def enable_context_parallelism(pipe_or_transformer, ulysses_degree: int, ring_degree: int = 1) -> None:
    """Splits the transformer's video tokens over the processes of the initialised default process group.

    Args:
        pipe_or_transformer: a `WanMultiTalkPipeline` or its `MultiTalkTransformer3DModel`.
        ulysses_degree: processes that exchange attention heads (Ulysses); `ulysses_degree * ring_degree` must be
            the world size, and the attention heads (40 for the 14B model) divisible by `ulysses_degree`.
        ring_degree: processes that pass key/value blocks around a ring (needs an attention backend that returns
            the log-sum-exp, e.g. `_native_cudnn` or `_native_flash`; PyTorch's default "native" SDPA does not).

    The number of video tokens (latent frames x latent height/2 x latent width/2) must be divisible by the world size.
    """
    from diffusers import ContextParallelConfig

    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        raise RuntimeError(
            "Context parallelism needs torch.distributed: launch with `torchrun --nproc_per_node N` and call "
            "`torch.distributed.init_process_group()` first (`multitalk generate --ulysses_size N` does)."
        )
    world_size = torch.distributed.get_world_size()
    if ulysses_degree * ring_degree != world_size:
        raise ValueError(
            f"ulysses_degree x ring_degree = {ulysses_degree} x {ring_degree} must equal the number of processes "
            f"({world_size})."
        )
    transformer = getattr(pipe_or_transformer, "transformer", pipe_or_transformer)
    heads = transformer.config.num_attention_heads
    if heads % ulysses_degree:
        raise ValueError(f"ulysses_degree {ulysses_degree} must divide the transformer's {heads} attention heads.")
    config = ContextParallelConfig(ulysses_degree=ulysses_degree, ring_degree=ring_degree)
    with _one_device_per_cpu_process():
        transformer.enable_parallelism(config=config)
