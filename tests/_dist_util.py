"""Spawning the 2-process gloo tests with a deadline: a hung collective fails the test instead of
waiting for gloo's 30-minute default."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import torch

DEADLINE_S = 120
COLLECTIVE_TIMEOUT = timedelta(seconds=DEADLINE_S)  # for init_process_group(timeout=...)


def spawn(fn, args: tuple, nprocs: int = 2, deadline_s: float = DEADLINE_S) -> None:
    """``torch.multiprocessing.spawn(fn, args, nprocs)``, killing the workers after ``deadline_s``."""
    ctx = torch.multiprocessing.start_processes(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + deadline_s
    while not ctx.join(timeout=1):  # raises if a worker failed
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {nprocs} workers did not finish within {deadline_s} s")
