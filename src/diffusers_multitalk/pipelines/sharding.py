"""Sharded weights over several processes (`--dit_fsdp`, `--t5_fsdp`): PyTorch's FSDP2 (`fully_shard`) on the DiT's
transformer blocks and umT5's encoder blocks.

Each process keeps 1/N of every sharded parameter (dim 0, a DTensor on a 1-D DeviceMesh over all processes); a
block's forward all-gathers its whole weights just before it runs and frees them afterwards
(`reshard_after_forward=True`), so at most one block (plus the root's own parameters: embeddings, heads, norms) is
whole at a time. It composes with context parallelism (`enable_context_parallelism`, `--ulysses_size N` over the same
N processes), applied before or after it: the two act on different things (weights vs. tokens). Inference only; the
gradients' reduce-scatter is never used.

Weights are loaded whole on every process and sharded afterwards, so the peak while loading is the whole model;
the steady state is 1/N of the sharded modules per process.
"""

from __future__ import annotations

import torch


__all__ = ["enable_sharding", "local_parameter_count", "shard_text_encoder", "shard_transformer", "sharding_mesh"]


def sharding_mesh(device: torch.device | str | None = None):
    """A 1-D DeviceMesh over every process of the initialised default process group, on `device`'s type (the
    process's accelerator, or "cpu" for gloo)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "Sharding needs torch.distributed: launch with `torchrun --nproc_per_node N` and call "
            "`torch.distributed.init_process_group()` first (`multitalk generate --ulysses_size N --dit_fsdp` does)."
        )
    device_type = (
        torch.device(device).type if device is not None else ("cuda" if dist.get_backend() == "nccl" else "cpu")
    )
    return init_device_mesh(device_type, (dist.get_world_size(),))


def _module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _shard(root: torch.nn.Module, blocks, mesh) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    if mesh is None:
        mesh = sharding_mesh(_module_device(root))
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(root, mesh=mesh, reshard_after_forward=True)
    return root


def shard_transformer(transformer: torch.nn.Module, mesh=None) -> torch.nn.Module:
    """Shards a `MultiTalkTransformer3DModel` (every model's DiT) in place: each of its `blocks`, then the root (patch
    embedding, condition embedder, audio projection, output head). Returns the same module (its class becomes an
    FSDP subclass of its own)."""
    return _shard(transformer, list(transformer.blocks), mesh)


def shard_text_encoder(text_encoder: torch.nn.Module, mesh=None) -> torch.nn.Module:
    """Shards a umT5 encoder (`UMT5EncoderModel`) in place: each of `encoder.block`, then the root (the tied token
    embedding and the final norm)."""
    return _shard(text_encoder, list(text_encoder.encoder.block), mesh)


def enable_sharding(pipe, dit: bool = True, t5: bool = True, mesh=None) -> None:
    """Shards the pipeline's DiT (`dit`) and umT5 (`t5`) over every process; call it after placing the pipeline on
    its device (each process's GPU) and with the same weights on every process."""
    if dit:
        shard_transformer(pipe.transformer, mesh)
    if t5:
        shard_text_encoder(pipe.text_encoder, mesh)


def local_parameter_count(module: torch.nn.Module) -> int:
    """The parameter elements this process holds: a sharded parameter's local shard, a plain one whole."""
    return sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in module.parameters())
