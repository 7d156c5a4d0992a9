"""Data-parallel training across the processes that `accelerate launch` (or `torchrun`) starts.

Every process holds the whole model and reads the same length-grouped batches (they are drawn
from the seed); each computes the loss of its share of a batch's examples, the gradients of the
trainable weights are summed across the processes before the optimizer step, and every process
then takes the same step. N processes thus train exactly the run one process would (the same
batches, the same divisor of the summed loss, the same clipping), about N times faster.

Why not DDP's wrapper: the objectives call the model's decoder and run the LM head only at label
positions, which bypasses `DistributedDataParallel.forward`, where DDP hooks its gradient sync; one
flat all-reduce after the micro-batches is the same sum with one call per step. Why no sharding
(FSDP, DeepSpeed ZeRO-3): every run this service trains fits one device (adapters over a frozen
base, full fine-tuning only up to `max_full_parameters`), so replicating the model costs nothing
that sharding would save, and the adapter's optimizer state is small.

Only the first process (rank 0) writes checkpoints, the adapter and the job's report; the others
wait at a barrier so no process reads a checkpoint before it is complete.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Replay answers and distillation are made by rank 0 while the others wait: allow them time.
BARRIER_TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, indices: Sequence[int]) -> list[int]:
        """This process's examples of a batch (every size-th, from its rank)."""
        return list(indices[self.rank::self.size])

    def sum_totals(self, totals: Mapping[str, float], tokens: int) -> tuple[dict[str, float], int]:
        """Summed loss parts and token counts of every process's share (same keys everywhere)."""
        if not self.distributed:
            return dict(totals), tokens
        names = sorted(totals)
        values = torch.tensor([*(float(totals[name]) for name in names), float(tokens)], dtype=torch.float64)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return dict(zip(names, values[:-1].tolist(), strict=True)), int(values[-1].item())

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace each trainable weight's gradient by the sum over the processes, in one call."""
        if not self.distributed:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).to(torch.float32) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for param, grad in zip(params, grads, strict=True):
            count = grad.numel()
            param.grad = flat[offset:offset + count].view_as(grad).to(grad.dtype)
            offset += count

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on one (a cancel seen by one stops all together)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (filling a cache on the shared disk), then the others do."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def join_world(environ: Mapping[str, str] | None = None) -> World:
    """The world the launcher set up through the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT); one process when there is none. Joins the process group."""
    environ = os.environ if environ is None else environ
    world = World(rank=int(environ.get("RANK", "0")), size=int(environ.get("WORLD_SIZE", "1")),
                  local_rank=int(environ.get("LOCAL_RANK", "0")))
    if world.distributed and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo", rank=world.rank, world_size=world.size,
                                timeout=BARRIER_TIMEOUT)
    return world


def leave_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
