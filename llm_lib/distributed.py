"""Training on several processes (chapter 37): the process group, each rank's share of the data.

``torchrun`` starts one process per GPU (or several on a CPU); each joins the
group with ``init_distributed``, reads its own shard of the data through
``distributed_dataloader``, and ``train.train_model`` averages what the ranks
measure. ``weights_digest`` shows that every rank holds the same weights.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import torch

__all__ = [
    "DistributedInfo",
    "init_distributed",
    "destroy_distributed",
    "distributed_dataloader",
    "unwrap_model",
    "weights_digest",
]


def unwrap_model(model):
    """The plain model inside ``DistributedDataParallel`` and ``torch.compile`` wrappers (itself if none)."""
    while True:
        if hasattr(model, "_orig_mod"):      # torch.compile's OptimizedModule
            model = model._orig_mod
        elif _is_ddp(model):
            model = model.module
        else:
            return model


def _is_ddp(model) -> bool:
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(model, DistributedDataParallel)


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mean_over_ranks(values: list[float], device) -> list[float]:
    """Average numbers over all processes of the group (unchanged in a single process)."""
    import torch.distributed as dist

    _, world = _rank_and_world()
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / world).tolist()


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process sits: its rank among ``world_size`` processes, its GPU (``local_rank``) and device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that prints and saves."""
        return self.rank == 0


def init_distributed(backend: str | None = None, device: str | None = None) -> DistributedInfo:
    """Join the process group that ``torchrun`` describes in RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT.

    The backend is ``nccl`` when CUDA is there (one GPU per process, picked by
    LOCAL_RANK) and ``gloo`` on the CPU. Without those variables (a plain
    ``python`` run) nothing is initialised and this is the only process.
    """
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistributedInfo(device=torch.device("cuda" if use_cuda else "cpu"))
    backend = backend or ("nccl" if use_cuda else "gloo")
    if backend == "nccl" and not use_cuda:
        raise ValueError("the nccl backend needs CUDA GPUs; use backend='gloo' on the CPU")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        this_device = torch.device("cuda", local_rank)
    else:
        this_device = torch.device("cpu")
    dist.init_process_group(backend=backend)
    return DistributedInfo(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size(),
                           backend=backend, device=this_device)


def destroy_distributed() -> None:
    """Wait for every rank (a barrier), then leave the process group; does nothing in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def distributed_dataloader(dataset, batch_size: int, shuffle: bool = True, seed: int = 0,
                           drop_last: bool = True, num_replicas: int | None = None,
                           rank: int | None = None):
    """A ``DataLoader`` over this rank's share of ``dataset``: batches ``(batch_size, ...)`` from a DistributedSampler.

    The sampler shuffles all indices with ``seed`` (plus the epoch set by
    ``set_epoch``), the same way on every rank, and rank r keeps every
    ``num_replicas``-th index starting at r. ``num_replicas`` and ``rank`` default
    to the initialised process group (1 and 0 without one).
    """
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    group_rank, group_world = _rank_and_world()
    num_replicas = group_world if num_replicas is None else num_replicas
    rank = group_rank if rank is None else rank
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if drop_last and len(dataset) // num_replicas < batch_size:
        raise ValueError(f"{len(dataset)} examples give each of {num_replicas} ranks only "
                         f"{len(dataset) // num_replicas}, fewer than batch_size={batch_size}; "
                         f"use a smaller batch size or fewer processes")
    sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                 seed=seed, drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last)


def weights_digest(model) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, shapes, bytes): equal digests mean equal weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unwrap_model(model).state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
