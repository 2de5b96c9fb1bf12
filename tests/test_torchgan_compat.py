"""wgan_ext.torchgan_compat: a stock torchgan 0.1.0 Trainer writes images and resumes checkpoints.

Each fix is shown to be needed (the stock code fails with it reverted) and to change nothing
else (the image equals torchvision's grid computed here; a resumed run equals an uninterrupted
one; foreign classes in a checkpoint are still refused).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

torchgan = pytest.importorskip("torchgan", reason="the torchgan extra is not installed")

import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from torchgan.logging.visualize import ImageVisualize  # noqa: E402
from torchgan.losses import WassersteinDiscriminatorLoss as TorchganCriticLoss  # noqa: E402
from torchgan.losses import WassersteinGeneratorLoss as TorchganGeneratorLoss  # noqa: E402
from torchgan.trainer.base_trainer import BaseTrainer  # noqa: E402

from _wgan_trainer_util import assert_same_state, loader, make_trainer, state, toy_data  # noqa: E402
from wgan_ext import torchgan_compat as compat  # noqa: E402
from wgan_ext.functional import CriticSchedule  # noqa: E402
from wgan_ext.losses import UpdateCounter, WassersteinCriticLoss, WassersteinGeneratorLoss  # noqa: E402


@pytest.fixture
def reapply():
    """Tests that revert the patches leave them applied for everyone else."""
    yield
    compat.apply()


def test_apply_is_idempotent_and_reversible(reapply):
    assert compat.apply() == compat.PATCHES  # already applied by importing wgan_ext.losses
    call, load = ImageVisualize.__dict__["__call__"], BaseTrainer.__dict__["load_model"]
    assert compat.is_patched(call) and compat.is_patched(load)
    assert compat.apply() == compat.PATCHES
    assert ImageVisualize.__dict__["__call__"] is call and BaseTrainer.__dict__["load_model"] is load

    assert compat.revert() == compat.PATCHES
    assert not compat.is_patched(ImageVisualize.__dict__["__call__"])
    assert not compat.is_patched(BaseTrainer.__dict__["load_model"])
    assert BaseTrainer.load_model.__module__ == "torchgan.trainer.base_trainer"
    assert compat.revert() == () and compat.applied() == ()
    assert compat.apply() == compat.PATCHES


def test_other_torchgan_versions_are_not_patched(reapply):
    compat.revert()
    real_version = torchgan.__version__
    torchgan.__version__ = "v0.2.0"
    try:
        assert compat.apply() == ()
        assert not compat.is_patched(ImageVisualize.__dict__["__call__"])
    finally:
        torchgan.__version__ = real_version


def _losses():
    return [WassersteinGeneratorLoss(), WassersteinCriticLoss(c=0.01)]


def test_stock_trainer_crashes_at_epoch_end_without_the_fix(tmp_path, reapply):
    compat.revert()
    trainer = make_trainer(tmp_path, _losses(), kind="image")
    with pytest.raises(TypeError, match="range"):
        trainer(loader(toy_data(6, kind="image")))


def test_trainer_writes_the_same_images_torchvision_would(tmp_path):
    trainer = make_trainer(tmp_path, _losses(), kind="image", epochs=3)
    trainer(loader(toy_data(6, kind="image")))
    images = tmp_path / "images"
    assert sorted(p.name for p in images.iterdir()) == [f"epoch{i}_generator.png" for i in (1, 2, 3)]

    noise = trainer.logger.logger_end_epoch[0].test_noise[0]
    with torch.no_grad():
        grid = torchvision.utils.make_grid(trainer.generator(*noise), nrow=8, normalize=True, value_range=(-1, 1))
    torchvision.utils.save_image(grid, tmp_path / "expected.png")
    got = np.asarray(Image.open(images / "epoch3_generator.png"))
    expected = np.asarray(Image.open(tmp_path / "expected.png"))
    assert got.shape == expected.shape and (got == expected).all()


def _schedule_losses():
    return [WassersteinGeneratorLoss(), WassersteinCriticLoss(schedule=CriticSchedule(3, boost=6, warmup=1))]


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path):
    dl = loader(toy_data(7))
    a = make_trainer(tmp_path / "a", _schedule_losses(), ncritic=1, epochs=2)
    a(dl)
    checkpoint = tmp_path / "a" / "ckpt" / "gan1.model"
    assert checkpoint.is_file() and (tmp_path / "a" / "ckpt" / "gan0.model").is_file()
    a.epochs, a.start_epoch = 3, 2  # continue the same objects in memory
    torch.manual_seed(99)
    a(dl)

    b = make_trainer(tmp_path / "b", _losses(), ncritic=1, epochs=3, seed=5)  # different initial weights
    b.load_model(str(checkpoint))
    assert b.start_epoch == 2
    critic_b = b.losses["WassersteinCriticLoss"]
    assert critic_b.critic_updates == 14 and critic_b.generator_updates == 3  # 6 + 3 + 3 (+2 pending)
    assert critic_b.schedule == CriticSchedule(3, boost=6, warmup=1)
    torch.manual_seed(99)
    b(dl)

    assert_same_state(state(b.generator), state(a.generator))
    assert_same_state(state(b.discriminator), state(a.discriminator))
    critic_a = a.losses["WassersteinCriticLoss"]
    assert (critic_b.critic_updates, critic_b.generator_updates) == (critic_a.critic_updates, critic_a.generator_updates) == (21, 5)
    assert b.loss_information == a.loss_information


def test_checkpoint_loading_fails_without_the_fix(tmp_path, reapply):
    a = make_trainer(tmp_path / "a", _losses())
    a(loader(toy_data(2)))
    compat.revert()
    b = make_trainer(tmp_path / "b", _losses())
    with pytest.raises(Exception, match="Model could not be loaded"):
        b.load_model(str(tmp_path / "a" / "ckpt" / "gan0.model"))


def test_checkpoint_with_foreign_classes_is_still_refused(tmp_path):
    # Only this Trainer's own loss/metric classes are allow-listed: a checkpoint holding other
    # classes keeps torch's weights-only protection.
    a = make_trainer(tmp_path / "a", _losses())
    a(loader(toy_data(2)))
    b = make_trainer(tmp_path / "b", [TorchganGeneratorLoss(), TorchganCriticLoss(clip=(-0.01, 0.01))])
    with pytest.raises(Exception, match="Model could not be loaded") as info:
        b.load_model(str(tmp_path / "a" / "ckpt" / "gan0.model"))
    assert "WeightsUnpickler error" in str(info.value.__context__)
    assert b.start_epoch == 0


def test_checkpoint_globals_lists_loss_classes_and_helpers(tmp_path):
    trainer = make_trainer(tmp_path, _losses())
    assert compat.checkpoint_globals(trainer) == [WassersteinGeneratorLoss, UpdateCounter, CriticSchedule, WassersteinCriticLoss]
