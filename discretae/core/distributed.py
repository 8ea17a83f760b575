"""Small helpers over ``torch.distributed``: who am I, and collectives that are no-ops alone.

discretae has no cluster code of its own: ``torchrun`` starts the processes and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_from_env` reads them and starts the default process group (nccl for CUDA
devices, gloo for CPUs). Every helper below works unchanged in a single process, where
the collectives do nothing, so the training code has one path.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_dist() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 alone)."""
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    """How many processes train together (1 alone)."""
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """True on the process that writes files and shows progress (rank 0)."""
    return rank() == 0


def env_rank() -> int:
    """The rank torchrun gave this process, read before any process group exists (0 alone)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def env_world_size() -> int:
    """The world size torchrun set (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(device: str = "auto") -> torch.device | None:
    """Start the default process group when torchrun launched more than one process.

    ``device`` is the user's choice (auto, cpu, cuda, cuda:N). Under torchrun, "auto" and
    "cuda" mean this process's GPU ``cuda:LOCAL_RANK`` (backend nccl) when CUDA is
    available, else the CPU (backend gloo). Returns the device this rank trains on, or
    None when there is nothing to start (a single process, or a group that already
    exists: then the caller keeps its own device).
    """
    if env_world_size() <= 1 or not dist.is_available() or dist.is_initialized():
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device in ("auto", "cuda") and torch.cuda.is_available():
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device if device != "auto" else "cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        try:  # device_id (torch >= 2.3) binds the communicator to this GPU, barriers too
            dist.init_process_group("nccl", device_id=dev)
        except TypeError:
            dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return dev


def shutdown() -> None:
    """Destroy the default process group, if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_(*tensors: torch.Tensor) -> None:
    """Sum each tensor over all ranks, in place."""
    if is_dist():
        for t in tensors:
            dist.all_reduce(t)


def broadcast_(*tensors: torch.Tensor, src: int = 0) -> None:
    """Overwrite each tensor with rank ``src``'s copy, in place."""
    if is_dist():
        for t in tensors:
            dist.broadcast(t, src)


class _GlobalSum(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the gradient: every rank's loss
    depends on every rank's input, so each input's gradient is the sum over ranks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(g)
        return g


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over all ranks, differentiable: the gradient of each rank's copy is
    summed back, so a loss built on global batch statistics gets the global gradient."""
    return _GlobalSum.apply(x) if is_dist() else x


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """x: (n_r, ...) on each rank, n_r may differ -> (sum n_r, ...) in rank order, on all.

    Not differentiable. Rows are padded to the largest n_r for the exchange.
    """
    if not is_dist():
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])
