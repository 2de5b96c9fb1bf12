"""Shared helpers for the torchgan Trainer tests (test_torchgan_trainer.py, test_torchgan_compat.py).

Tiny models and data so that a Trainer run costs milliseconds per batch on 2 CPU cores; every
output folder under ``tmp_path``; the DataLoader draws from its own generator so the global RNG
is consumed only by the losses (as in the hand-written Algorithm 1 loop).
"""

from __future__ import annotations

import copy
from typing import Dict, Iterator, List

import torch
from torch.utils.data import DataLoader

ENC = 3  # noise dimension of the test generators
BATCH = 8


def toy_data(n_batches: int, kind: str = "mlp", seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        return torch.randn(n_batches * BATCH, 2, generator=g) * 0.5 + 1.0
    side = 4 if kind == "image" else 16
    return torch.rand(n_batches * BATCH, 1, side, side, generator=g) * 2 - 1


def loader(data: torch.Tensor) -> DataLoader:
    return DataLoader(data, batch_size=BATCH, shuffle=False, generator=torch.Generator())


def forever(dl: DataLoader) -> Iterator[torch.Tensor]:
    while True:
        for batch in dl:
            yield batch


def network(kind: str = "mlp") -> Dict[str, dict]:
    from wgan_ext.networks import wgan_network

    if kind == "mlp":
        return wgan_network("mlp", sample_shape=(2,), encoding_dims=ENC, hidden=8, n_hidden=3)
    if kind == "image":  # MLPs on 1x4x4 images in [-1, 1] (tanh output)
        return wgan_network("mlp", image_size=4, channels=1, encoding_dims=ENC, hidden=8, n_hidden=3)
    return wgan_network("dcgan", image_size=16, channels=1, encoding_dims=ENC, step_channels=2)


def make_trainer(tmp_path, losses, *, ncritic: int = 5, epochs: int = 1, kind: str = "mlp", seed: int = 0, **kwargs):
    from torchgan.trainer import Trainer

    torch.manual_seed(seed)
    return Trainer(
        network(kind),
        losses,
        device=torch.device("cpu"),
        ncritic=ncritic,
        epochs=epochs,
        sample_size=4,
        checkpoints=str(tmp_path / "ckpt" / "gan"),
        recon=str(tmp_path / "images"),
        log_dir=str(tmp_path / "logs"),
        **kwargs,
    )


def state(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs (max abs diff {(a[key].float() - b[key].float()).abs().max()})"


class StepLog:
    """Records the order of critic ('D') and generator ('G') optimizer steps of a Trainer."""

    def __init__(self, trainer) -> None:
        self.events: List[str] = []
        trainer.optimizer_discriminator.register_step_post_hook(lambda *a: self.events.append("D"))
        trainer.optimizer_generator.register_step_post_hook(lambda *a: self.events.append("G"))

    def critic_runs(self) -> List[int]:
        """Critic steps before each generator step."""
        runs, n = [], 0
        for e in self.events:
            if e == "D":
                n += 1
            else:
                runs.append(n)
                n = 0
        return runs


def snapshot_at_generator_steps(trainer) -> Dict[int, tuple]:
    """{k: (generator state, critic state)} right after the Trainer's k-th generator step."""
    snaps: Dict[int, tuple] = {}

    def hook(*_):
        snaps[len(snaps) + 1] = (state(trainer.generator), state(trainer.discriminator))

    trainer.optimizer_generator.register_step_post_hook(hook)
    return snaps


def copies(trainer):
    return copy.deepcopy(trainer.generator), copy.deepcopy(trainer.discriminator)
