"""Process-group setup so one training script runs on a CPU, a GPU, or many GPUs under torchrun.

`torchrun --nproc_per_node N` (or `accelerate launch`, which sets the same variables) exports
RANK / WORLD_SIZE / LOCAL_RANK; without them the job is a single process and nothing here
touches torch.distributed. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from wmpo_core.devices import DeviceError, choose_device


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def _reduce(self, value: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
        if not self.enabled:
            return value
        value = torch.as_tensor(value).detach().clone().to(self.device)
        dist.all_reduce(value, op=op)
        return value

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """All-reduce average over processes (identity when single-process)."""
        return self._reduce(value, dist.ReduceOp.SUM) / self.world_size if self.enabled else value

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return self._reduce(value, dist.ReduceOp.SUM)

    def min(self, value: torch.Tensor) -> torch.Tensor:
        return self._reduce(value, dist.ReduceOp.MIN)

    def replicas_in_sync(self, module: torch.nn.Module) -> bool:
        """True when every process holds bit-identical parameters (a cheap fingerprint comparison)."""
        if not self.enabled:
            return True
        with torch.no_grad():
            fingerprint = (
                torch.stack(
                    [torch.stack([p.double().sum(), p.double().square().sum()]) for p in module.parameters()]
                )
                .flatten()
                .to(self.device)
            )
        gathered = [torch.empty_like(fingerprint) for _ in range(self.world_size)]
        dist.all_gather(gathered, fingerprint)
        return all(torch.equal(gathered[0], g) for g in gathered[1:])


def setup(device: str = "auto") -> Distributed:
    """Initialise the process group when launched by torchrun; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = choose_device(device)  # DeviceError (one line) for a device this machine lacks
    if chosen.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device must be auto, cpu or cuda, got {device!r}")
    if chosen.type == "cuda":  # one process per GPU: torchrun's LOCAL_RANK picks it
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        if local_world > 1:  # processes sharing a CPU must not oversubscribe its cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device)


def teardown(ctx: Distributed) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
