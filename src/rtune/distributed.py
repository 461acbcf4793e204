"""Which process this is under ``accelerate launch`` / torchrun, and a barrier across them."""

from __future__ import annotations

import os


def process() -> tuple[int, int]:
    """(rank, world size) under ``accelerate launch`` / torchrun, else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1
    return int(os.environ.get("RANK", "0") or 0), world


def is_main_process() -> bool:
    """Whether this process reports and writes the outputs (rank 0, or the only one)."""
    return process()[0] == 0


def wait_for_everyone() -> None:
    """A barrier across the processes of ``accelerate launch`` / torchrun (none alone)."""
    if process()[1] <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState()  # sets up the process group (NCCL on GPUs, gloo on CPU)
    # torch's barrier: accelerate's wait_for_everyone is a no-op for CPU processes
    if dist.is_initialized():
        dist.barrier()
