"""The processes of one job: torchrun's ranks (torch.distributed; gloo on CPU, NCCL on GPU), or one process alone.

Every long pass splits its pending chunks over the ranks (``Ranks.share``), each rank writes the chunks it computed
(store.chunked: one file per chunk), and rank 0 alone writes what the job shares (manifest, consolidated arrays, scores,
reports) between barriers. Noise keyed by (seed, timestep, flip, row) makes each chunk's numbers the same whichever rank
computes it, so every artefact has the same bits for any world size. Ranks agree through collectives, never through
files: rank 0's view of what is pending is broadcast, so no rank acts on a file another rank is still writing.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# How long a rank waits at a barrier (rank 0 may wait for another command's lock on the work directory first).
TIMEOUT_ENV = "UNLEARN_FAST_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 6 * 3600


@dataclass(frozen=True)
class Ranks:
    """rank and world_size of this process; world_size 1 makes every collective a no-op."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, obj):
        """rank 0's `obj` on every rank (any picklable object)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def share(self, items: list) -> list:
        """This rank's part of `items`: every world_size-th from its rank (round robin, so ranks finish together)."""
        return list(items)[self.rank::self.world_size]


SINGLE = Ranks()


def ranks_from_environment() -> Ranks:
    """The ranks torchrun (or accelerate launch, or a slurm script calling torchrun) set up in the environment:
    WORLD_SIZE > 1 joins the process group (NCCL when this process sees a GPU, else gloo), once per process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    if not dist.is_initialized():
        on_gpu = torch.cuda.is_available()
        if on_gpu:  # one rank per GPU
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        dist.init_process_group("nccl" if on_gpu else "gloo", timeout=timeout)
        atexit.register(_leave_process_group)
    return Ranks(dist.get_rank(), dist.get_world_size())


def _leave_process_group() -> None:
    """Destroy the process group while the interpreter is still whole: left to interpreter shutdown, gloo's worker
    threads may release tensors after Python is gone and abort the process (SIGABRT) after a job that succeeded."""
    if dist.is_initialized():
        dist.destroy_process_group()
