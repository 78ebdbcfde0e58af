"""The data-parallel world: one trainer process per GPU, started by `accelerate launch` (torchrun underneath).

Each process reads its place from what the launcher sets (RANK, WORLD_SIZE,
LOCAL_RANK), joins the process group (NCCL on `cuda:LOCAL_RANK`, gloo on the
CPU), trains its share of each step's micro-batches and sums the adapter
gradients with the others before the optimizer step, so that every replica
takes the same step. Rank 0 alone writes the run folder; its stop decision is
broadcast, so all processes end at the same step.

With one process (no launcher) every collective here is a no-op and `start`
is `pick_device`: training is exactly what it is without this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

from blk.errors import UserError

# Tests only: several trainer processes on the CPU (gloo), on a machine without GPUs ("1" in the environment of
# the app and the trainers).
CPU_PROCESSES = "BLK_DATA_PARALLEL_ON_CPU"

# Rank 0 samples, validates and saves checkpoints while the others wait in the next collective:
# the group's timeout must outlast the longest of those, not a step.
TIMEOUT = timedelta(hours=1)


def launched() -> bool:
    """True inside a process started by `accelerate launch` / torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0, or the only process; readable before the process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = field(default="cpu", init=False)  # where collectives run (set by `start`)

    @classmethod
    def from_env(cls) -> World:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        rank = int(os.environ["RANK"])
        return cls(rank, size, int(os.environ.get("LOCAL_RANK", rank)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def micro_batches(self, accumulation: int) -> range:
        """This process's global micro-batch indices within a step: of the step's size × accumulation
        micro-batches (0 … size·A − 1), rank r trains r·A … r·A + A − 1."""
        return range(self.rank * accumulation, (self.rank + 1) * accumulation)

    def start(self, preference: str = "auto") -> str:
        """Join the process group; return the device this process trains on."""
        from blk.models.device import pick_device

        if self.size == 1:
            self.device = pick_device(preference)
            return self.device
        import torch
        import torch.distributed as dist

        if preference != "cpu" and os.environ.get(CPU_PROCESSES) != "1" and torch.cuda.is_available():
            count = torch.cuda.device_count()
            if self.local_rank >= count:
                raise UserError(f"Training process {self.rank + 1} of {self.size} needs GPU {self.local_rank}, "
                                f"but this machine shows {count}; choose at most {count} GPUs.")
            self.device, backend = f"cuda:{self.local_rank}", "nccl"
            torch.cuda.set_device(self.device)
        else:
            self.device, backend = "cpu", "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=TIMEOUT)
        return self.device

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the processes (float64)."""
        if self.size == 1:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def sum_gradients(self, params) -> None:
        """Replace each parameter's gradient by its sum over the processes (one flat all-reduce per dtype)."""
        if self.size == 1:
            return
        import torch
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_dtype: dict = {}
        for p in params:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def broadcast_parameters(self, params) -> None:
        """Rank 0's values everywhere (replicas start identical, whatever each process initialised)."""
        if self.size == 1:
            return
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision (e.g. to stop now), the same in every process."""
        if self.size == 1:
            return flag
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([1 if flag else 0], device=self.device)
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def gather(self, values: list) -> list:
        """Every process's list, concatenated in rank order (= global micro-batch order)."""
        if self.size == 1:
            return list(values)
        import torch.distributed as dist

        parts: list = [None] * self.size
        dist.all_gather_object(parts, list(values))
        return [value for part in parts for value in part]

    def barrier(self) -> None:
        if self.size == 1:
            return
        import torch.distributed as dist

        if self.device.startswith("cuda"):
            dist.barrier(device_ids=[int(self.device.split(":")[1])])
        else:
            dist.barrier()

    def close(self) -> None:
        if self.size == 1:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
