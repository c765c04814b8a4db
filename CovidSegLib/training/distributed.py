"""One training process, alone or one of many under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m CovidSegLib.training CONFIG`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
each process then takes one GPU (NCCL) or, on CPUs, a share of the cores (gloo). Without those variables this
is a plain single process and nothing distributed is touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Distributed:
    rank: int
    world: int
    device: "torch.device"  # noqa: F821
    backend: str | None

    @classmethod
    def start(cls, device: "torch.device") -> "Distributed":  # noqa: F821
        import torch
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls(0, 1, device, None)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
        return cls(dist.get_rank(), world, device, backend)

    def describe(self) -> str:
        if self.world == 1:
            return f"1 process on {self.device}"
        return f"{self.world} processes ({self.backend}), this one on {self.device}"

    def wrap(self, network: "torch.nn.Module") -> "torch.nn.Module":  # noqa: F821
        """The module to train: DistributedDataParallel when there are several processes (synchronised batch
        norm on GPUs, where per-GPU batches are small)."""
        if self.world == 1:
            return network
        from torch import nn

        if self.device.type == "cuda":
            network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(network, device_ids=device_ids)

    def share(self, value):
        """Process 0's ``value`` on every process (the training state after validation)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def stop(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
