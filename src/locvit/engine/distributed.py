"""torchrun / DDP glue: one process per device, gloo on CPU and nccl on GPU; rank 0 writes and prints.

One node or many: ``torchrun --nnodes N --nproc-per-node G --rdzv-backend c10d --rdzv-endpoint HOST:PORT
--rdzv-id RUN -m locvit train ...`` on every node. torchrun's agents meet at the endpoint first (bounded by
``--rdzv-conf join_timeout=SECONDS``, 600 by default); the processes then start their process group, which waits for
its peers at most ``dist_timeout`` seconds (also the limit of every collective) and fails with one message naming the
address it could not reach.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None, timeout: float | None = None) -> DistInfo:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and start the process group when there is more
    than one process; pick the device (``cuda:LOCAL_RANK`` when CUDA is available, unless ``device`` says).

    ``timeout``: seconds to wait for the other processes (and for any collective) before giving up (torch's default,
    30 minutes, when None). Raises ``ConnectionError`` naming MASTER_ADDR:MASTER_PORT when they do not come."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        kw = dict(timeout=datetime.timedelta(seconds=timeout)) if timeout else {}
        try:
            with _quiet_native_stderr():
                dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", **kw)
        except (RuntimeError, TimeoutError) as e:  # torch's DistStoreError / DistNetworkError are RuntimeErrors
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            waited = f"within {timeout:g} s" if timeout else "in time"
            raise ConnectionError(
                f"process {rank} of {world} could not meet the others at {where} {waited} "
                f"({str(e).splitlines()[0][:160]}): start every node with the same --rdzv-endpoint (or MASTER_ADDR/"
                "MASTER_PORT), --nnodes and --rdzv-id, check that the address is reachable from each node, or "
                "raise --dist-timeout") from None
    return DistInfo(rank, world, local_rank, dev)


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Hold back what C++ code writes to stderr (c10d logs every failed connection attempt with a native stack
    trace) while the process group starts: replayed when it starts, dropped when it fails (the error says why)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            raise
        else:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
        finally:
            os.close(saved)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def every_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """``flag`` when every rank's is true (one all-reduce under a process group; ``flag`` itself without one).

    The training loops step only when every rank has a batch to learn from: a rank that skips a step (its batch held
    no readable image) while the others step would leave them waiting in DDP's gradient all-reduce for good."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    return all_reduce_sum(torch.tensor([float(not flag)], device=device)).item() == 0


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj`` (a one-item list without a process group)."""
    if dist.is_available() and dist.is_initialized():
        out: list[object] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
