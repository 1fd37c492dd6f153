"""torchrun's processes for context parallelism: one process group, one seed, one writer."""

from __future__ import annotations

import sys

from .spec import GenerateOptions


def is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def init_distributed(args: GenerateOptions, device) -> None:
    """torchrun's processes for --ulysses_size: one process group, the same seed everywhere."""
    import torch
    import torch.distributed as dist

    if args.ulysses_size == 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    seed = torch.tensor([args.base_seed], dtype=torch.int64, device=device if device.type == "cuda" else "cpu")
    dist.broadcast(seed, src=0)  # a random seed (--base_seed -1) drawn on rank 0
    args.base_seed = int(seed.item())


def leave_together() -> None:
    """Waits at a barrier for every rank, where all of them are known to be alive and done (a run that finished, or
    one that every rank agreed to stop): a rank that closed its connections while another still read the last
    collective's data could reset them under it, and gloo aborts that reader (SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown_distributed() -> None:
    """Ends the process group `init_distributed` started (torch is only imported if a command already did)."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_initialized():
        distributed.destroy_process_group()
