"""Reading and comparing the checkpoints of ``wgan-ext train`` runs (one process or several)."""

from __future__ import annotations

import math
import os

import torch

from wgan_ext import train as T


def read_checkpoint(run_dir):
    return torch.load(os.path.join(run_dir, T.CHECKPOINT_NAME), weights_only=True)


def same(a, b, path=""):
    """Tensors equal bit for bit, everything else equal (NaN = NaN), recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), path


def assert_continued_exactly(full, resumed, *, ranks: bool = False) -> None:
    """The resumed run's checkpoint equals the uninterrupted one's (wall times aside); with
    ``ranks``, each process's own state too (runs on several processes)."""
    for key in ("models", "optimizers", "losses", "loss_information", "rng") + (("ranks",) if ranks else ()):
        same(full[key], resumed[key], key)
    for key in ("stream_position", "next_period", "period_stats"):
        same(full["loop"][key], resumed["loop"][key], key)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    same(strip(full["loop"]["history"]), strip(resumed["loop"]["history"]), "history")
