"""wgan-ext: weight-clipped WGAN to the letter of the paper, fast.

* :func:`fused_clip_` / :class:`FusedClipper` -- clamp every critic parameter in place in one
  fused kernel per device (CUDA multi-tensor kernel, CPU C++ kernel, PyTorch fallback).
* :class:`ClippedRMSprop` -- RMSprop and that clip in one pass over the critic's memory.
* :mod:`wgan_ext.functional` -- the WGAN losses, gradient penalty and critic schedule as plain
  functions (no torchgan needed).
* torchgan loss plugins (``pip install wgan-ext[torchgan]``): ``WassersteinGeneratorLoss``,
  ``WassersteinCriticLoss`` ... imported on first access, so ``import wgan_ext`` works without
  torchgan.

Every name is imported on first access: ``import wgan_ext`` (and so the start of the
``wgan-ext`` command, whose Ctrl-C handling must be in place before torch loads) takes
milliseconds.
"""

from __future__ import annotations

import importlib

from ._version import __version__

# name -> submodule, imported on first access (torchgan only when a loss class is touched)
_LAZY = {
    "functional": "functional",
    "CriticSchedule": "functional",
    "fused_clip_": "ops",
    "FusedClipper": "ops",
    "ClippedRMSprop": "optim",
    "WassersteinGeneratorLoss": "losses",
    "WassersteinCriticLoss": "losses",
    "WassersteinDiscriminatorLoss": "losses",
    "WassersteinGradientPenalty": "losses",
    "HingeGeneratorLoss": "losses",
    "HingeCriticLoss": "losses",
    "UpdateCounter": "losses",
    "get_loss": "plugins",
    "create_loss": "plugins",
    "available_losses": "plugins",
    "wgan_network": "networks",
    "MLPCritic": "networks",
    "MLPGenerator": "networks",
    "algorithm1": "reference",
}

# No torchgan names here: `from wgan_ext import *` stays torchgan-free.
__all__ = [
    "__version__", "fused_clip_", "FusedClipper", "ClippedRMSprop", "functional", "CriticSchedule",
    "get_loss", "create_loss", "available_losses", "algorithm1",
]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = module if name == _LAZY[name] else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
