"""Building a ``wgan-ext train`` run: networks, optimizers, losses and the torchgan Trainer.

Every process of a run builds the same objects from the same :class:`TrainConfig` (and seed);
nothing here writes a file or prints.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from . import data as D
from .train_config import ADAM_BETAS, TrainConfig

__all__ = ["optimizer_specs", "lr_factor", "build_network", "build_losses", "build_trainer", "TrainerHooks"]


def lr_factor(decay: str, done: int, iterations: int) -> float:
    """The fraction of ``--lr`` for generator iteration ``done + 1`` (and the critic updates
    before it) of a run of ``iterations``: 1 for ``"none"``; ``1 - done / iterations`` for
    ``"linear"`` (the WGAN-GP code's decay, so the generator settles instead of chasing the
    critic's last moves). A function of the counts alone, so a resumed run continues exactly."""
    if decay == "none":
        return 1.0
    return max(0.0, 1.0 - done / iterations)


def optimizer_specs(cfg: TrainConfig) -> Dict[str, Dict[str, Any]]:
    """torchgan optimizer specs (``{"name": class, "args": {...}}``) of the generator and critic.

    ``clipped-rmsprop``: the critic's RMSProp step clips every critic weight to [-c, c] in the
    same pass (:class:`wgan_ext.ClippedRMSprop`; the critic loss then clips nothing itself);
    the generator's is plain RMSProp."""
    if cfg.optimizer == "adam":
        spec = {"name": torch.optim.Adam, "args": {"lr": cfg.lr, "betas": ADAM_BETAS}}  # WGAN-GP's Adam
        return {name: {"name": spec["name"], "args": dict(spec["args"])} for name in ("generator", "discriminator")}
    specs = {name: {"name": torch.optim.RMSprop, "args": {"lr": cfg.lr}} for name in ("generator", "discriminator")}
    if cfg.optimizer == "clipped-rmsprop":
        from .optim import ClippedRMSprop

        specs["discriminator"] = {"name": ClippedRMSprop, "args": {"lr": cfg.lr, "clip": cfg.c}}
    return specs


def build_network(cfg: TrainConfig, source: D.DataSource) -> Dict[str, Dict[str, Any]]:
    """The torchgan network dict: models from ``cfg`` and the data's shape, optimizers from
    :func:`optimizer_specs`."""
    from .networks import wgan_network

    if cfg.arch == "mlp":
        network = wgan_network(
            "mlp", sample_shape=source.shape, encoding_dims=cfg.encoding_dims, hidden=cfg.hidden,
            n_hidden=cfg.n_hidden, generator_hidden=cfg.generator_hidden, tanh=source.kind == "images",
            batchnorm=cfg.batchnorm,
        )
    else:
        network = wgan_network(
            "dcgan", image_size=source.shape[-1], channels=source.shape[0], encoding_dims=cfg.encoding_dims,
            step_channels=32,
            # Batch norm makes f(x) depend on the rest of the batch, which a WGAN-GP critic must not.
            batchnorm=cfg.loss != "gp",
        )
    for name, spec in optimizer_specs(cfg).items():
        network[name]["optimizer"] = spec
    return network


def build_losses(cfg: TrainConfig) -> Tuple[Any, Any]:
    """(critic loss, generator loss). They pair through the critic loss's ``UpdateCounter``."""
    from . import losses as L

    schedule = "paper" if cfg.schedule == "paper" else None
    common = {"n_critic": cfg.n_critic, "schedule": schedule}
    if cfg.loss == "clip":
        return L.WassersteinCriticLoss(c=cfg.c, **common), L.WassersteinGeneratorLoss()
    if cfg.loss == "gp":
        return L.WassersteinGradientPenalty(lambd=cfg.gp_lambda, c=cfg.c, **common), L.WassersteinGeneratorLoss()
    return L.HingeCriticLoss(c=cfg.c, **common), L.HingeGeneratorLoss()


class TrainerHooks:
    """Stands in for torchgan's ``Logger``: torchgan's Trainer calls ``run_mid_epoch`` after every
    batch and ``run_end_epoch`` at the end of every epoch (one logging period of the run); they
    call ``after_batch()`` and ``end_period(epoch)``. Its per-step gradient sums (a sync per
    parameter) and loss lists are not kept."""

    def __init__(self, loss_names: List[str], after_batch: Callable[[], None],
                 end_period: Callable[[int], None]) -> None:
        self._loss_logs = _LossLogs(loss_names)
        self._after_batch = after_batch
        self._end_period = end_period

    def get_loss_viz(self) -> "_LossLogs":
        return self._loss_logs

    def get_grad_viz(self) -> "_NullGrads":
        return _NullGrads()

    def get_metric_viz(self) -> None:
        return None

    def close(self) -> None:
        pass

    def run_mid_epoch(self, trainer: Any, *args: Any) -> None:
        self._after_batch()

    def run_end_epoch(self, trainer: Any, epoch: int, time_duration: float, *args: Any) -> None:
        self._end_period(epoch)


class _NullGrads:
    def update_grads(self, name: str, model: torch.nn.Module, eps: float = 1e-5) -> None:
        pass


class _LossLogs:
    """``train_iter`` appends each loss value to ``logs[name]``; only the last is kept."""

    def __init__(self, names: List[str]) -> None:
        self.logs: Dict[str, Any] = {n: _Last() for n in names}


class _Last(list):
    def append(self, v: Any) -> None:  # keep memory flat over long runs
        if self:
            self[0] = v
        else:
            super().append(v)


def build_trainer(cfg: TrainConfig, network: Dict[str, Dict[str, Any]], losses: List[Any], out: Optional[str],
                  epochs: int, device: Optional[torch.device] = None) -> Any:
    """A stock torchgan ``Trainer`` (checkpoints left to the run) for ``losses`` listed critic
    first, with ``ncritic=1``: the losses keep the schedule, so the batch of the critic update
    that completes ``n(g)`` also brings generator update ``g``, and a run of ``k`` generator
    iterations ends after exactly Algorithm 1's critic updates (see :mod:`wgan_ext.losses`).

    torchgan creates its image and checkpoint folders (unused here) under ``out``; with
    ``out=None`` (a process that writes nothing) they are the current folder, which exists.
    ``device`` defaults to ``cfg.device``."""
    from torchgan.trainer import Trainer

    class WGANTrainer(Trainer):
        """torchgan's ``Trainer``; the run writes one atomic checkpoint per period *after*
        evaluating it (torchgan's own ``save_model`` runs before its evaluation)."""

        def save_model(self, epoch: int, save_items: Any = None) -> None:
            pass

        def load_model(self, load_path: str = "", load_items: Any = None) -> None:
            raise NotImplementedError("runs of wgan-ext train resume with --resume (wgan_ext.train.run)")

    if out is None:  # torchgan's makedirs then only meet the current folder
        checkpoints, recon = "./torchgan", "."
    else:
        checkpoints, recon = os.path.join(out, "samples", "torchgan"), os.path.join(out, "samples")
    with contextlib.redirect_stdout(io.StringIO()):  # torchgan prints its set-up
        return WGANTrainer(
            network, losses, device=device or torch.device(cfg.device), ncritic=1, epochs=epochs, sample_size=64,
            checkpoints=checkpoints, recon=recon, nrow=8,
        )
