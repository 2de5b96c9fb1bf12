"""What a ``wgan-ext train`` run can hold, checked before anything is written.

Numbers that parse can still break a run much later: ``--lr 1e39`` does not fit the float32 the
networks and kernels compute in, and ``--hidden 100000000`` asks for more memory than any
machine has. :func:`check_numbers` checks the float settings against float32's range;
:func:`check_memory` estimates the memory the run needs (the networks measured on the ``meta``
device, where nothing is allocated) and compares it with what this machine has available.
Both raise :class:`~wgan_ext.train_config.TrainError` (one line naming the flags, exit 2).
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from . import data as D
from .train_config import TrainConfig, TrainError

__all__ = ["check_numbers", "check_memory", "estimate_memory", "available_memory", "FLOAT32_MAX"]

FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4e38: the networks, optimizers and kernels are float32


def check_numbers(cfg: TrainConfig) -> None:
    """``c``, ``lr`` and ``gp_lambda`` are float32 numbers > 0 (``c`` and ``lr`` must not round to 0)."""
    for flag, v in (("--c", cfg.c), ("--lr", cfg.lr), ("--gp-lambda", cfg.gp_lambda)):
        if v is None or v == 0 and flag == "--gp-lambda":
            continue
        if abs(v) > FLOAT32_MAX:
            raise TrainError(f"{flag} {v:g} does not fit float32 (at most {FLOAT32_MAX:.4g}), "
                             "in which the networks and the optimizer compute")
        if np.float32(v) == 0:
            raise TrainError(f"{flag} {v:g} rounds to 0 in float32, in which the networks and the optimizer compute")


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def _measure(cfg: TrainConfig, source: D.DataSource) -> Tuple[int, int, int, int]:
    """(generator parameters, critic parameters, generator activations per sample, critic
    activations per sample), from the networks built on the ``meta`` device."""
    from .train_setup import build_network

    network = build_network(cfg, source)
    counts = []
    with torch.device("meta"):
        models = [network[k]["name"](**network[k]["args"]).eval() for k in ("generator", "discriminator")]
        for model in models:
            total = [0]

            def count(module: torch.nn.Module, inputs: object, output: object) -> None:
                if isinstance(output, torch.Tensor) and not list(module.children()):
                    total[0] += output.numel()

            hooks = [m.register_forward_hook(count) for m in model.modules()]
            x = (torch.empty(2, cfg.encoding_dims) if model is models[0] else torch.empty(2, *source.shape))
            with torch.no_grad():
                model(x)
            for h in hooks:
                h.remove()
            counts.append((sum(p.numel() for p in model.parameters()), total[0] // 2))
    return counts[0][0], counts[1][0], counts[0][1], counts[1][1]


def estimate_memory(cfg: TrainConfig, source: D.DataSource) -> Dict[str, Tuple[int, str]]:
    """Bytes one process of the run needs, by part: ``{"networks": (bytes, flags), "batch": ...,
    "evaluation": ...}`` (``flags``: the settings that part grows with, as the user gives them).

    A sane upper estimate, not a measurement: float32 weights, gradients and optimizer state
    (RMSprop 1 tensor per weight, Adam 2); activations of one training batch kept for backward
    (the critic sees real and fake samples, WGAN-GP a third batch and a second backward); and the
    evaluation: ``--eval-samples`` samples and noise, and the float64 ``n x n`` cost matrix of the
    exact W1 assignment."""
    p_g, p_c, a_g, a_c = _measure(cfg, source)
    states = 2 if cfg.optimizer == "adam" else 1
    nets = 4 * (p_g + p_c) * (2 + states) * (2 if cfg.world_size > 1 else 1)  # DDP keeps gradient buckets
    m = cfg.batch_size // cfg.world_size
    critic_passes = 3 if cfg.loss == "gp" else 2
    batch = 4 * m * (a_g + critic_passes * a_c) * 2 * (2 if cfg.loss == "gp" else 1)
    sample = int(np.prod(source.shape))
    n = cfg.eval_samples
    evaluation = 4 * n * (cfg.encoding_dims + 3 * sample) + 4 * min(n, 1024) * a_g + 8 * n * n
    net_flags = f"--hidden {cfg.hidden}, --encoding-dims {cfg.encoding_dims}"
    if cfg.generator_hidden not in (None, cfg.hidden):
        net_flags = f"--hidden {cfg.hidden}, --generator-hidden {cfg.generator_hidden}, --encoding-dims {cfg.encoding_dims}"
    if cfg.arch == "dcgan":
        net_flags = f"--image-size {source.shape[-1]}, --encoding-dims {cfg.encoding_dims}"
    return {
        "networks": (nets, net_flags),
        "batch": (batch, f"--batch-size {cfg.batch_size}, " + net_flags),
        "evaluation": (evaluation, f"--eval-samples {cfg.eval_samples}, --encoding-dims {cfg.encoding_dims}"),
    }


def available_memory(device: str) -> Optional[int]:
    """Bytes free for a run on ``device``: the GPU's free memory for CUDA, else the host's
    available memory (``MemAvailable``, within a cgroup's limit); ``None`` where unknown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except Exception:  # no context can be made: the device check reports it
            return None
    if dev.type != "cpu":
        return None
    found: List[int] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            return None
    return min(found)


def check_memory(cfg: TrainConfig, source: D.DataSource, processes: int = 1) -> None:
    """Refuse a run whose estimated memory (:func:`estimate_memory`, times the ``processes`` that
    share this machine's memory) exceeds what is available, naming the part and its flags."""
    try:
        parts = estimate_memory(cfg, source)
    except (RuntimeError, ValueError, TypeError, OverflowError, MemoryError) as e:  # too large to even describe
        raise TrainError(f"networks of --hidden {cfg.hidden}, --encoding-dims {cfg.encoding_dims} cannot be "
                         f"built ({str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__}); "
                         "choose smaller values") from None
    free = available_memory(cfg.device)
    if free is None:
        return
    host_shares = processes if torch.device(cfg.device).type == "cpu" else 1
    need = sum(b for b, _ in parts.values()) * host_shares
    if need <= free:
        return
    part, (size, flags) = max(parts.items(), key=lambda kv: kv[1][0])
    where = "this GPU has" if torch.device(cfg.device).type == "cuda" else "this machine has"
    raise TrainError(f"the run needs about {_gib(need)} of memory, {_gib(size * host_shares)} of it for the {part} "
                     f"({flags}), but {where} {_gib(free)} available: choose smaller values")
