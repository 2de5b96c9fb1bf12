"""The settings of a ``wgan-ext train`` run: :class:`TrainConfig`, its defaults and their checks.

:func:`resolve_config` fills the dataset- and loss-specific defaults and refuses bad values with
a :class:`TrainError` (one line, no file touched). The CLI's help texts read their numbers from
here, so the defaults live in one place.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from . import data as D
from . import functional as WF

__all__ = [
    "TrainConfig", "TrainError", "resolve_config", "LOSSES", "OPTIMIZERS", "SCHEDULES", "LR_DECAYS", "ARCHS",
    "TOY_DEFAULTS", "IMAGE_DEFAULTS", "DIGITS_DEFAULTS", "GP_LR", "ADAM_BETAS", "MLP_THREADS", "MAX_SEED", "usable_cpus",
]

LOSSES = ("clip", "gp", "hinge")
OPTIMIZERS = ("clipped-rmsprop", "rmsprop", "adam")
SCHEDULES = ("constant", "paper")
LR_DECAYS = ("none", "linear")
ARCHS = ("mlp", "dcgan")

# Defaults for the 2-D toys: Algorithm 1 (RMSProp, c = 0.01, n_critic = 5, clip after every critic
# update) with a batch, widths and learning rate chosen so that the default run covers all 8
# gaussians in a few minutes on two CPU cores (issue 19; benchmarks/QUALITY.md). Measured with a
# plain loop of the same algorithm, networks and scores (benchmarks/preset_sweep.py; 2 shared
# cores; modes covered at the end for seeds 0-4 unless stated):
#   the previous default, 3 x 128 MLPs, m = 64, constant lr 1e-4, 10000 iterations: 3-5 modes;
#   m = 64, lr 2e-4 decaying to 0 (cosine), 8000: 8, 6, 7, 8, 4;
#   m = 256, lr 2e-4 decaying linearly to 0, 8000: 8, 8, 8, 7, 8 (the weakest mode often just at
#     the threshold); lr 3e-4 for 6000 or 8000 iterations: 8, 8, 7, 8, 7 / 8, 8, 7, 8, 8;
#   the same with a 3 x 256 generator (critic 3 x 128), lr 2e-4, 8000: every mode held with a
#     wide margin (34 or more of 512 points within 3 std of each, 16 needed; seeds 0, 2, 3, 4),
#     but through wgan-ext train itself (other draws) 8, 8, 8, 7, 7: seed 3 lost a mode in its
#     last 400 iterations, seed 4 was still climbing. With 10000 iterations, through the job:
#     8 on every seed, 23 or more points on each mode -- the default (about 4-5 minutes);
#     Spearman(critic estimate, W1 at the evaluations) 0.75-0.96 (0.88-0.98 at 8000): the longer
#     the run sits at the W1 floor, the more W1's last wobbles decide the ranks; against W1's
#     period means (score_every 100: 80 more exact W1s of 512 points, a few seconds) 0.92-0.99;
#     with lr 3e-4 the run reaches the floor early, and Spearman(critic estimate, W1) drops to
#     0.68-0.89 as both curves flatten into noise (a 3 x 256 critic too: 0.69, and 2x slower).
#   Constant lr leaves the generator chasing the critic's last moves (modes come and go between
#   evaluations); the linear decay (the WGAN-GP code's) lets it settle. 2-D noise (the WGAN-GP toy
#   code's) is kept: 8-D noise covered no mode; a 3 x 512 critic, batch norm in the generator,
#   or a faster generator (lr 3e-4 against the critic's 1e-4) did worse.
TOY_DEFAULTS = {"lr": 2e-4, "lr_decay": "linear", "batch_size": 256, "batchnorm": False, "iterations": 10000,
                "hidden": 128, "generator_hidden": 256, "encoding_dims": 2, "log_every": 500, "score_every": 100}
# Images: the paper's Algorithm 1 as it is (lr 5e-5 constant, m = 64), its MLP width, DCGAN's
# 100-D noise.
IMAGE_DEFAULTS = {"lr": WF.PAPER_LR, "lr_decay": "none", "batch_size": WF.PAPER_BATCH_SIZE, "batchnorm": False,
                  "iterations": 2000, "hidden": 512, "encoding_dims": 100, "log_every": 200, "image_size": 32,
                  "score_every": None}  # None: at the evaluations only (Inception FID is slow)
# scikit-learn's 8x8 digits: 3 x 256 MLPs, tanh output, batch norm in the generator (as DCGAN's
# generator has), constant lr 2e-4, m = 64, 3000 iterations. Measured with preset_sweep.py (seeds 0-4,
# digit FD against floors of 1.2-3.7, classes covered of 10, Spearman(critic estimate, FD)):
#   no batch norm, lr 5e-5 (the previous preset): FD 14-31, 5-8 classes; longer runs drift back up
#     as the pixels saturate; lr 1e-4 with or without decay, or m = 256: no better;
#   batch norm, lr 5e-5: FD 6-14, 7-10 classes, still improving at 3000; 5000 iterations reach all
#     10 but the critic's estimate then stops tracking FD (Spearman -0.07 and 0.43);
#   batch norm, lr 1e-4: FD 3.9-8.0, 9-10 classes, Spearman 0.64-0.97 (the estimate rises for a
#     while as the clipped weights saturate, mid-run);
#   batch norm, lr 2e-4: FD 3.0-5.3, 9-10 classes, Spearman 0.90-0.99 -- the preset; m = 128 was as
#     good on seed 0 and worse on seed 1 (0.58), the paper's 100 critic updates at first worse.
#   Through wgan-ext train, seeds 0-4: Spearman against the FD's period means (score_every 50)
#     0.88-0.99; linear lr decay (seed 0: 0.895, 9 classes), a 3 x 512 generator (0.56-0.99) or
#     a 3 x 512 critic (0.49-0.90, seeds 0-2) did not help.
DIGITS_DEFAULTS = {**IMAGE_DEFAULTS, "lr": 2e-4, "batchnorm": True, "hidden": 256, "iterations": 3000, "log_every": 250,
                   "score_every": 50}
GP_LR = 1e-4  # Gulrajani et al. 2017 (Adam)
ADAM_BETAS = (0.5, 0.9)  # Gulrajani et al. 2017
# Tiny MLP tensors gain nothing from intra-op threads, and on a busy machine the OpenMP
# hand-offs make each op up to 100x slower (measured on 2 shared cores).
MLP_THREADS = 1
MAX_SEED = 2**32 - 1  # numpy's limit; the data streams mix 32-bit seeds


class TrainError(Exception):
    """A problem with the user's input or files, reported as one line (no traceback)."""


@dataclass
class TrainConfig:
    """Everything a run depends on. ``None`` fields get dataset/loss-specific defaults from
    :func:`resolve_config`; the resolved config is saved as ``config.json`` in the run folder."""

    dataset: str = "8gaussians"
    data_dir: Optional[str] = None
    image_size: Optional[int] = None
    channels: int = 3
    loss: str = "clip"
    c: Optional[float] = None
    n_critic: int = WF.PAPER_N_CRITIC
    schedule: str = "constant"
    lr: Optional[float] = None
    lr_decay: Optional[str] = None  # "linear": lr falls to 0 at the last generator iteration
    optimizer: Optional[str] = None
    batch_size: Optional[int] = None
    iterations: Optional[int] = None
    epochs: Optional[float] = None
    log_every: Optional[int] = None
    score_every: Optional[int] = None  # W1 / digit FD also between evaluations: the period's means
    seed: int = 0
    device: str = "cpu"
    out: Optional[str] = None
    arch: Optional[str] = None
    hidden: Optional[int] = None
    generator_hidden: Optional[int] = None  # the MLP generator's width when it differs from the critic's
    n_hidden: int = 3
    batchnorm: Optional[bool] = None  # batch norm in the MLP generator (None for DCGAN: its own)
    encoding_dims: Optional[int] = None
    gp_lambda: float = WF.GP_LAMBDA
    eval_samples: int = 512
    inception_weights: Optional[str] = None  # Inception-v3 weights for FID on mnist/cifar10/folder
    threads: Optional[int] = None
    fsdp: bool = False
    world_size: int = 1  # processes training together (set by wgan_ext.train.run, not chosen)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise TrainError(msg)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_device(name: str) -> None:
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise TrainError(f"unknown device {name!r}: {e}") from None
    if dev.type == "cuda":
        _check(torch.cuda.is_available(), f"device {name!r} requested but CUDA is not available")
        count = torch.cuda.device_count()
        _check(dev.index is None or dev.index < count, f"device {name!r} requested but only {count} CUDA device(s) exist")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        _check(mps is not None and mps.is_available(), f"device {name!r} requested but MPS is not available")
    else:
        _check(dev.type == "cpu", f"device {name!r} cannot train; use cpu, cuda, cuda:N or mps")


def resolve_config(cfg: TrainConfig, source: Optional[D.DataSource] = None) -> TrainConfig:
    """Validate ``cfg`` and fill in the defaults that depend on the dataset and loss.

    ``source`` (the built data source) lets ``epochs`` be converted to generator iterations.
    Raises :class:`TrainError` (one line) for any invalid value. Touches no file.
    """
    c = dataclasses.replace(cfg)
    _check(c.dataset in D.DATASETS, f"unknown dataset {c.dataset!r}; choose one of {', '.join(D.DATASETS)}")
    _check(c.loss in LOSSES, f"unknown loss {c.loss!r}; choose one of {', '.join(LOSSES)}")
    _check(c.schedule in SCHEDULES, f"unknown schedule {c.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    _check(_is_int(c.seed) and 0 <= c.seed <= MAX_SEED, f"seed must be an integer in [0, {MAX_SEED}], got {c.seed}")
    toy = c.dataset in D.TOY_DATASETS
    defaults = TOY_DEFAULTS if toy else DIGITS_DEFAULTS if c.dataset == "digits" else IMAGE_DEFAULTS
    if c.c is not None:
        _check(math.isfinite(c.c) and c.c > 0, f"c must be > 0 (weights are clipped to [-c, c]), got {c.c}")
    if c.loss in ("clip", "hinge") and c.c is None:
        c.c = WF.PAPER_C  # Algorithm 1; labml.ai's hinge WGAN clips the same way
    if c.optimizer is None:
        # WGAN-GP uses Adam; the clipped WGANs RMSProp, with the clip fused into its step.
        c.optimizer = "adam" if c.loss == "gp" else "clipped-rmsprop"
    _check(c.optimizer in OPTIMIZERS, f"unknown optimizer {c.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    _check(c.optimizer != "clipped-rmsprop" or c.c is not None,
           "--optimizer clipped-rmsprop clips the critic's weights: give --c, or use --optimizer rmsprop")
    if c.lr is None:
        c.lr = GP_LR if c.loss == "gp" else defaults["lr"]
    if c.lr_decay is None:
        c.lr_decay = "none" if c.loss == "gp" else defaults["lr_decay"]
    _check(c.lr_decay in LR_DECAYS, f"unknown lr decay {c.lr_decay!r}; choose one of {', '.join(LR_DECAYS)}")
    _check(math.isfinite(c.lr) and c.lr > 0, f"lr must be > 0, got {c.lr}")
    _check(c.n_critic >= 1, f"n_critic must be >= 1, got {c.n_critic}")
    if c.batch_size is None:
        c.batch_size = defaults["batch_size"]
    _check(c.batch_size >= 1, f"batch size must be >= 1, got {c.batch_size}")
    _check(_is_int(c.world_size) and c.world_size >= 1, f"world size must be >= 1, got {c.world_size}")
    _check(c.batch_size % c.world_size == 0,
           f"batch size {c.batch_size} is the global batch m, split evenly over {c.world_size} processes: "
           f"it must be a multiple of {c.world_size}")
    _check(c.n_hidden >= 1, f"n_hidden must be >= 1, got {c.n_hidden}")
    _check(c.eval_samples >= 8, f"eval samples must be >= 8, got {c.eval_samples}")
    _check(c.inception_weights is None or os.path.isfile(c.inception_weights),
           f"inception weights {c.inception_weights!r} is not a file")
    _check(math.isfinite(c.gp_lambda) and c.gp_lambda >= 0, f"gp lambda must be >= 0, got {c.gp_lambda}")
    _check(not (c.fsdp and c.loss == "gp"),
           "--fsdp cannot train --loss gp: the gradient penalty backpropagates twice through the critic, and "
           "FSDP2 frees its gathered weights after the first; leave out --fsdp (DDP)")
    _check(c.channels in (1, 3), f"channels must be 1 or 3, got {c.channels}")
    if c.arch is None:
        c.arch = "mlp" if toy or c.dataset == "digits" else "dcgan"
    _check(c.arch in ARCHS, f"unknown architecture {c.arch!r}; choose one of {', '.join(ARCHS)}")
    if c.arch == "mlp" and c.batchnorm is None:
        c.batchnorm = defaults["batchnorm"]
    _check(c.arch == "mlp" or c.batchnorm is None,
           "--batchnorm / --no-batchnorm choose the MLP generator's; DCGAN's networks have their own batch norm")
    if c.hidden is None:
        c.hidden = defaults["hidden"]
    _check(c.hidden >= 1, f"hidden must be >= 1, got {c.hidden}")
    if c.arch == "mlp" and c.generator_hidden is None:
        c.generator_hidden = defaults.get("generator_hidden") or c.hidden
    _check(c.arch == "mlp" or c.generator_hidden is None,
           "--generator-hidden sets the MLP generator's width; DCGAN's networks have their own")
    _check(c.generator_hidden is None or c.generator_hidden >= 1,
           f"generator hidden must be >= 1, got {c.generator_hidden}")
    if c.encoding_dims is None:
        c.encoding_dims = defaults["encoding_dims"]
    _check(c.encoding_dims >= 1, f"encoding dims must be >= 1, got {c.encoding_dims}")
    if c.epochs is not None:
        _check(math.isfinite(c.epochs) and c.epochs > 0, f"epochs must be a finite number > 0, got {c.epochs}")
    if toy:
        _check(c.arch == "mlp", f"dataset {c.dataset!r} is 2-D points: use --arch mlp")
        _check(c.epochs is None, f"dataset {c.dataset!r} is generated without end: use --iterations, not --epochs")
    if c.arch == "dcgan" and c.dataset != "digits" and c.image_size is None:
        c.image_size = IMAGE_DEFAULTS["image_size"]
    if c.arch == "dcgan":
        size = 8 if c.dataset == "digits" else c.image_size
        _check(size is not None and size >= 16 and (size & (size - 1)) == 0,
               f"--arch dcgan needs an image size that is a power of 2 and >= 16, got {size}")
    if c.log_every is None:
        c.log_every = defaults["log_every"]
    _check(c.log_every >= 1, f"log every must be >= 1, got {c.log_every}")
    if c.score_every is None:
        c.score_every = min(defaults["score_every"] or c.log_every, c.log_every)
    _check(_is_int(c.score_every) and c.score_every >= 1, f"score every must be >= 1, got {c.score_every}")
    cpus = usable_cpus()
    if c.threads is None:
        c.threads = MLP_THREADS if c.arch == "mlp" else min(torch.get_num_threads(), cpus)
    _check(1 <= c.threads <= cpus, f"threads must be between 1 and {cpus} (the CPUs this process may use), got {c.threads}")
    if c.epochs is not None and source is not None:  # epochs win: a resumed config holds both
        per_pass = source.batches_per_pass(c.batch_size) or 1
        c.iterations = max(1, math.ceil(c.epochs * per_pass / c.n_critic))
    if c.iterations is None:
        c.iterations = defaults["iterations"]
    _check(c.iterations >= 1, f"iterations must be >= 1, got {c.iterations}")
    _check_device(c.device)
    return c
