"""Loss plugins by name (entry points), and ``import wgan_ext`` without torchgan."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wgan_ext import plugins

EXPECTED = {
    "wasserstein_generator": "WassersteinGeneratorLoss",
    "wasserstein_critic": "WassersteinCriticLoss",
    "wasserstein_gradient_penalty": "WassersteinGradientPenalty",
    "hinge_generator": "HingeGeneratorLoss",
    "hinge_critic": "HingeCriticLoss",
}
ROOT = Path(__file__).resolve().parents[1]


def _installed() -> bool:
    try:
        metadata.distribution("wgan-ext")
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed(), reason="distribution 'wgan-ext' is not installed (pip install -e .)")
def test_entry_points_resolve_to_the_torchgan_classes():
    pytest.importorskip("torchgan", reason="the torchgan extra is not installed")
    from torchgan.losses import DiscriminatorLoss, GeneratorLoss

    import wgan_ext.losses as losses

    eps = {ep.name: ep for ep in metadata.entry_points(group=plugins.ENTRY_POINT_GROUP)}
    assert EXPECTED.keys() <= eps.keys()
    for name, cls_name in EXPECTED.items():
        assert eps[name].value == f"wgan_ext.losses:{cls_name}"
        cls = eps[name].load()
        assert cls is getattr(losses, cls_name)
        assert issubclass(cls, GeneratorLoss if name.endswith("generator") else DiscriminatorLoss)
    # our fallback table says the same as the installed metadata
    assert {name: eps[name].value for name in EXPECTED} == plugins.BUILTIN_LOSSES


def test_lookup_by_name():
    pytest.importorskip("torchgan", reason="the torchgan extra is not installed")
    import wgan_ext.losses as losses

    assert set(EXPECTED) <= set(plugins.available_losses())
    for name, cls_name in EXPECTED.items():
        assert plugins.get_loss(name) is getattr(losses, cls_name)
    critic = plugins.create_loss("wasserstein_critic", c=0.02)
    assert isinstance(critic, losses.WassersteinCriticLoss) and critic.clip == (-0.02, 0.02)
    gp = plugins.create_loss("wasserstein_gradient_penalty", lambd=5.0)
    assert gp.lambd == 5.0 and gp.clip is None


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(KeyError, match="no loss named 'wgan' in entry-point group 'wgan_ext.losses'.*hinge_critic"):
        plugins.get_loss("wgan")
    with pytest.raises(TypeError, match="name must be a str"):
        plugins.get_loss(3)


BLOCK_TORCHGAN = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockTorchgan(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torchgan" or name.startswith("torchgan."):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, BlockTorchgan())
    """
)

WITHOUT_TORCHGAN = BLOCK_TORCHGAN + textwrap.dedent(
    """
    import torch
    import wgan_ext
    import wgan_ext.functional as F
    from wgan_ext import plugins
    from wgan_ext.networks import MLPCritic, MLPGenerator, wgan_network
    from wgan_ext.reference import algorithm1

    # the math works
    loss = F.wasserstein_critic_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == -2.0, loss
    # the networks fall back to plain modules with torchgan's attributes
    gen, critic = MLPGenerator(3, out_shape=2, hidden=4), MLPCritic(2, hidden=4)
    assert type(gen).__mro__[1].__module__ == "wgan_ext.networks" and gen.label_type == "none"
    assert gen.sampler(2, "cpu")[0].shape == (2, 3)
    # the reference loop and the clip run
    result = algorithm1(gen, critic, lambda: torch.randn(4, 2), lambda m: torch.randn(m, 3), n_gen_iters=1, n_critic=2)
    assert result.critic_updates == 2 and all(p.abs().max() <= 0.01 for p in critic.parameters())
    # names are listed without torchgan; resolving one says what to install
    assert "wasserstein_critic" in plugins.available_losses()
    for action in (lambda: plugins.get_loss("wasserstein_critic"), lambda: __import__("wgan_ext.losses")):
        try:
            action()
        except ImportError as e:
            assert "wgan-ext[torchgan]" in str(e), e
        else:
            raise AssertionError("expected ImportError")
    # the Trainer dict is built without torchgan (torchgan builds the DCGAN models later)
    assert set(wgan_network("dcgan")) == {"generator", "discriminator"}
    try:
        from wgan_ext import torchgan_compat
        torchgan_compat.apply()
    except ImportError as e:
        assert "wgan-ext[torchgan]" in str(e), e
    else:
        raise AssertionError("expected ImportError")
    assert not any(m == "torchgan" or m.startswith("torchgan.") for m in sys.modules)
    print("OK")
    """
)


@pytest.mark.slow
def test_import_works_without_torchgan():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCHGAN], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")


def test_the_blocker_blocks():
    # Guard for the test above: with the finder installed, torchgan really cannot be imported.
    pytest.importorskip("torchgan", reason="the torchgan extra is not installed")
    code = BLOCK_TORCHGAN + "\ntry:\n    import torchgan\nexcept ImportError:\n    print('blocked')\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "blocked", proc.stderr
