"""Data-parallel EP training over processes with torch.distributed.

Launched by ``torchrun --nproc_per_node=N -m epsim.train ...`` (environment variables
``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``...). Every rank holds the same conductances,
solves the free and nudged phases of its shard of each global batch, and the per-sample
gradient sums are all-reduced, so every rank applies the identical update that one
process would compute for the whole batch. gloo on CPU, NCCL when CUDA is used.
"""
from __future__ import annotations

import os

import numpy as np


class DataParallel:
    """Rank bookkeeping and all-reduce of numpy arrays (a no-op in a single process)."""

    def __init__(self, backend: str | None = None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self._dist = None
        self._owned = False
        if self.world > 1:
            import torch
            import torch.distributed as dist

            self._owned = not dist.is_initialized()
            if self._owned:
                dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
            self._dist = dist

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self._dist is not None

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This rank's share of a global batch's indices, arrays or tensors (strided along the
        first axis, so shards differ by at most one)."""
        return indices[self.rank::self.world]

    def sum(self, arrays: list) -> list:
        """Element-wise sum over ranks of a list of float arrays (returns new arrays)."""
        if not self.active:
            return [np.array(a, dtype=np.float64) for a in arrays]
        import torch

        flat = torch.from_numpy(np.concatenate([np.ravel(a).astype(np.float64) for a in arrays]))
        self._dist.all_reduce(flat, op=self._dist.ReduceOp.SUM)
        out, pos = [], 0
        for a in arrays:
            n = np.size(a)
            out.append(flat[pos:pos + n].numpy().reshape(np.shape(a)))
            pos += n
        return out

    def mean(self, arrays: list, n_local: int) -> tuple:
        """``(means, n_total)``: ``arrays`` are this rank's means over its ``n_local``
        samples; the means over every rank's samples (over ``n_total`` of them) are returned.
        In one process: ``arrays`` and ``n_local`` unchanged."""
        if not self.active:
            return list(arrays), int(n_local)
        summed = self.sum([np.asarray(a) * n_local for a in arrays] + [n_local])
        n_total = int(summed[-1])
        return [a / max(n_total, 1) for a in summed[:-1]], n_total

    def max(self, value: float) -> float:
        if not self.active:
            return float(value)
        import torch

        t = torch.tensor([float(value)], dtype=torch.float64)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MAX)
        return float(t.item())

    def barrier(self):
        if self.active:
            self._dist.barrier()

    def close(self):
        """Leave the process group; destroy it if this object created it."""
        if self.active and self._owned:
            self._dist.destroy_process_group()
        self._dist = None
