"""The 2-process gloo tests: spawning them with a deadline, and a collective timeout, so a hung
collective fails the test instead of waiting for gloo's 30-minute default."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

DEADLINE_S = 120
COLLECTIVE_TIMEOUT = timedelta(seconds=DEADLINE_S)  # for init_process_group(timeout=...)

NEEDS_GLOO = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="this torch has no torch.distributed with gloo")


def init_gloo(rank: int, tmp: str, world_size: int) -> None:
    """In a spawned worker: one intra-op thread, then join the gloo group through a file in ``tmp``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'rendezvous')}", rank=rank,
                            world_size=world_size, timeout=COLLECTIVE_TIMEOUT)


def require_fsdp2() -> None:
    """Skip the calling test if this torch has no FSDP2."""
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        pytest.skip("this torch has no FSDP2 (torch.distributed.fsdp.fully_shard)")


def spawn(fn, args: tuple, nprocs: int = 2, deadline_s: float = DEADLINE_S) -> None:
    """``torch.multiprocessing.spawn(fn, args, nprocs)``, killing the workers after ``deadline_s``."""
    ctx = torch.multiprocessing.start_processes(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + deadline_s
    while not ctx.join(timeout=1):  # raises if a worker failed
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {nprocs} workers did not finish within {deadline_s} s")
