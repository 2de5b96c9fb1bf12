"""Networks of the WGAN paper and a builder of torchgan's ``Trainer`` network dict with its defaults.

* :class:`MLPCritic` / :class:`MLPGenerator`: the paper's MLPs (3 hidden ReLU layers, no sigmoid
  at the critic's output). They subclass torchgan's ``Discriminator`` / ``Generator`` when torchgan
  is installed (so the Trainer logs images and our losses see ``label_type``), and plain
  ``nn.Module`` with the same attributes otherwise.
* :func:`wgan_network`: the ``models`` dict of ``torchgan.trainer.Trainer`` for torchgan's DCGAN
  models or the MLPs, with RMSprop lr = 5e-5 (paper defaults; batch 64, c = 0.01 and
  n_critic = 5 belong to the DataLoader, the critic loss and the Trainer -- see
  :data:`PAPER_DEFAULTS`), and ``bias=False`` to drop bias terms (as shekkizh's TensorFlow WGAN on CelebA does).
* :func:`remove_bias_`: drop the bias of every Linear / Conv / ConvTranspose layer of a module.

Example:
    >>> import torch
    >>> from torchgan.trainer import Trainer                                  # doctest: +SKIP
    >>> from wgan_ext.losses import WassersteinGeneratorLoss, WassersteinCriticLoss
    >>> network = wgan_network("dcgan", image_size=32, channels=1)            # doctest: +SKIP
    >>> trainer = Trainer(network, [WassersteinGeneratorLoss(), WassersteinCriticLoss(c=0.01)],
    ...                   ncritic=5, device=torch.device("cpu"))              # doctest: +SKIP
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .functional import PAPER_BATCH_SIZE, PAPER_C, PAPER_LR, PAPER_N_CRITIC

__all__ = [
    "PAPER_DEFAULTS",
    "MLPCritic",
    "MLPGenerator",
    "dcgan_critic",
    "dcgan_generator",
    "remove_bias_",
    "wgan_network",
]

PAPER_DEFAULTS: Dict[str, float] = {
    "lr": PAPER_LR,
    "c": PAPER_C,
    "batch_size": PAPER_BATCH_SIZE,
    "n_critic": PAPER_N_CRITIC,
}
"""Algorithm 1's defaults: RMSprop learning rate, clipping bound, batch size m, n_critic."""

try:  # torchgan is optional: the MLPs only need its base classes' attributes.
    from torchgan.models.model import Discriminator as _DiscriminatorBase
    from torchgan.models.model import Generator as _GeneratorBase
except ImportError:

    class _GeneratorBase(nn.Module):  # type: ignore[no-redef]
        """Stand-in for ``torchgan.models.Generator`` (same attributes and ``sampler``)."""

        def __init__(self, encoding_dims: int, label_type: str = "none") -> None:
            super().__init__()
            self.encoding_dims = encoding_dims
            self.label_type = label_type

        def sampler(self, sample_size: int, device: Any) -> list:
            return [torch.randn(sample_size, self.encoding_dims, device=device)]

    class _DiscriminatorBase(nn.Module):  # type: ignore[no-redef]
        """Stand-in for ``torchgan.models.Discriminator`` (same attributes)."""

        def __init__(self, input_dims: int, label_type: str = "none") -> None:
            super().__init__()
            self.input_dims = input_dims
            self.label_type = label_type


Shape = Union[int, Sequence[int]]


def _shape(value: Shape, name: str) -> Tuple[int, ...]:
    dims = (value,) if isinstance(value, numbers.Integral) else tuple(value)
    if not dims or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in dims):
        raise ValueError(f"{name} must be a positive int or a sequence of positive ints, got {value!r}")
    return tuple(int(d) for d in dims)


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _mlp(in_features: int, hidden: int, n_hidden: int, out_features: int, bias: bool,
         batchnorm: bool = False) -> nn.Sequential:
    layers: list = []
    width = in_features
    for _ in range(n_hidden):
        layers.append(nn.Linear(width, hidden, bias=bias))
        layers += [nn.BatchNorm1d(hidden), nn.ReLU()] if batchnorm else [nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, out_features, bias=bias))
    return nn.Sequential(*layers)


class MLPCritic(_DiscriminatorBase):
    r"""The paper's MLP critic: flatten, ``n_hidden`` x (Linear, ReLU), Linear to one output.

    :math:`f(x) \in \mathbb{R}`: no sigmoid (the critic is not a classifier). Output shape ``(N,)``.

    Args:
        in_shape: shape of one sample, e.g. ``(1, 28, 28)`` or ``2``.
        hidden: units per hidden layer (512 in the paper).
        n_hidden: number of hidden ReLU layers (3 in the paper).
        bias: ``False`` drops every bias (as shekkizh's TensorFlow WGAN does).
        label_type: torchgan's label type; only ``"none"`` is supported.
    """

    def __init__(
        self, in_shape: Shape = (1, 28, 28), hidden: int = 512, n_hidden: int = 3, bias: bool = True,
        label_type: str = "none",
    ) -> None:
        shape = _shape(in_shape, "in_shape")
        hidden, n_hidden = _positive(hidden, "hidden"), _positive(n_hidden, "n_hidden")
        if label_type != "none":
            raise ValueError(f"MLPCritic is unconditional: label_type must be 'none', got {label_type!r}")
        super().__init__(math.prod(shape), label_type)
        self.in_shape = shape
        self.model = _mlp(math.prod(shape), hidden, n_hidden, 1, bias)

    def forward(self, x: Tensor, feature_matching: bool = False) -> Tensor:
        """``f(x)`` of shape ``(N,)``; ``feature_matching`` returns the last hidden activations."""
        h = x.reshape(x.shape[0], -1)
        if feature_matching:
            return self.model[:-1](h)
        return self.model(h).view(-1)


class MLPGenerator(_GeneratorBase):
    r"""The paper's MLP generator: ``n_hidden`` x (Linear, ReLU), Linear, reshape to ``out_shape``;
    with ``batchnorm``, ``n_hidden`` x (Linear, BatchNorm1d, ReLU) as in DCGAN's generator.

    Args:
        encoding_dims: dimension of ``z`` (100 in the paper).
        out_shape: shape of one sample, e.g. ``(1, 28, 28)`` or ``2``.
        hidden: units per hidden layer (512 in the paper).
        n_hidden: number of hidden ReLU layers (3 in the paper).
        bias: ``False`` drops every bias (as shekkizh's TensorFlow WGAN does).
        tanh: squash the output to ``(-1, 1)`` (images scaled to [-1, 1]); the paper's code has
            no output nonlinearity.
        batchnorm: batch norm after each hidden Linear (the digits preset: it lifts the classes
            covered from 5-8 to 10 of 10, see ``wgan_ext/train_config.py``).
        label_type: torchgan's label type; only ``"none"`` is supported.
    """

    def __init__(
        self, encoding_dims: int = 100, out_shape: Shape = (1, 28, 28), hidden: int = 512,
        n_hidden: int = 3, bias: bool = True, tanh: bool = False, label_type: str = "none",
        batchnorm: bool = False,
    ) -> None:
        shape = _shape(out_shape, "out_shape")
        encoding_dims = _positive(encoding_dims, "encoding_dims")
        hidden, n_hidden = _positive(hidden, "hidden"), _positive(n_hidden, "n_hidden")
        if label_type != "none":
            raise ValueError(f"MLPGenerator is unconditional: label_type must be 'none', got {label_type!r}")
        super().__init__(encoding_dims, label_type)
        self.out_shape = shape
        self.model = _mlp(encoding_dims, hidden, n_hidden, math.prod(shape), bias, bool(batchnorm))
        self.out = nn.Tanh() if tanh else nn.Identity()

    def forward(self, z: Tensor, feature_matching: bool = False) -> Tensor:
        """``G(z)`` of shape ``(N, *out_shape)``."""
        return self.out(self.model(z.reshape(z.shape[0], -1))).view(z.shape[0], *self.out_shape)


def remove_bias_(module: nn.Module) -> nn.Module:
    """Drop the bias of every ``nn.Linear`` / ``nn.Conv*`` / ``nn.ConvTranspose*`` in ``module``.

    shekkizh's TensorFlow WGAN (CelebA) removes all bias terms of a DCGAN-like WGAN. Batch-norm
    shifts are kept (they are part of the normalisation, and torchgan's DCGAN already omits conv
    biases before batch norm).
    Call it before creating the optimizer. Returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and m.bias is not None:
            m.bias = None
    return module


def dcgan_generator(*, bias: bool = True, **kwargs: Any) -> nn.Module:
    """torchgan's ``DCGANGenerator(**kwargs)``, with every conv bias dropped if ``bias=False``."""
    from torchgan.models import DCGANGenerator as _G

    model = _G(**kwargs)
    return model if bias else remove_bias_(model)


def dcgan_critic(*, bias: bool = True, **kwargs: Any) -> nn.Module:
    """torchgan's ``DCGANDiscriminator`` as a WGAN critic: no output nonlinearity by default.

    torchgan's default last nonlinearity is ``LeakyReLU(0.2)``; a critic's output is an
    unbounded score, so ``last_nonlinearity`` defaults to ``nn.Identity()`` here. ``bias=False``
    drops every conv bias (as shekkizh's TensorFlow WGAN does).
    """
    from torchgan.models import DCGANDiscriminator as _D

    kwargs.setdefault("last_nonlinearity", nn.Identity())
    model = _D(**kwargs)
    return model if bias else remove_bias_(model)


def wgan_network(
    kind: str = "dcgan",
    *,
    image_size: int = 64,
    channels: int = 3,
    encoding_dims: int = 100,
    step_channels: int = 64,
    batchnorm: Optional[bool] = None,
    sample_shape: Optional[Shape] = None,
    hidden: int = 512,
    n_hidden: int = 3,
    generator_hidden: Optional[int] = None,
    tanh: Optional[bool] = None,
    bias: bool = True,
    lr: float = PAPER_LR,
    optimizer: type = torch.optim.RMSprop,
    optimizer_args: Optional[Dict[str, Any]] = None,
) -> Dict[str, Dict[str, Any]]:
    """torchgan ``Trainer`` network dict (``{"generator": ..., "discriminator": ...}``), paper defaults.

    Args:
        kind: ``"dcgan"`` (torchgan's DCGAN models; the critic without output nonlinearity) or
            ``"mlp"`` (:class:`MLPGenerator` / :class:`MLPCritic`).
        image_size: DCGAN image side (a power of 2, >= 16).
        channels: image channels.
        encoding_dims: dimension of ``z``.
        step_channels: DCGAN width multiplier.
        batchnorm: batch norm in both DCGAN networks (default on), or in the MLP generator's
            hidden layers (default off; the MLP critic never has it).
        sample_shape: MLP sample shape; default ``(channels, image_size, image_size)``.
        hidden, n_hidden: MLP width and depth (512, 3 in the paper).
        generator_hidden: the MLP generator's width, when it differs from the critic's ``hidden``.
        tanh: MLP generator output ``tanh`` (default: on for images, i.e. when ``sample_shape``
            is not given; DCGAN always has it).
        bias: ``False`` removes bias terms from both networks (as shekkizh's TensorFlow WGAN does).
        lr: learning rate (paper: 5e-5).
        optimizer: optimizer class (paper: ``torch.optim.RMSprop``).
        optimizer_args: extra optimizer arguments (merged over ``{"lr": lr}``).

    Returns:
        The dict for ``torchgan.trainer.Trainer(models=...)``. Keys ``"generator"`` and
        ``"discriminator"`` (the names torchgan's losses expect), each with ``name``, ``args`` and
        ``optimizer`` (``name``, ``args``).
    """
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    opt = {"name": optimizer, "args": {"lr": float(lr), **(optimizer_args or {})}}
    if kind == "dcgan":
        common = {"step_channels": step_channels, "batchnorm": batchnorm is not False, "bias": bias}
        gen = {"name": dcgan_generator, "args": {"encoding_dims": encoding_dims, "out_size": image_size,
                                                  "out_channels": channels, **common}}
        disc = {"name": dcgan_critic, "args": {"in_size": image_size, "in_channels": channels, **common}}
    elif kind == "mlp":
        shape = _shape(sample_shape if sample_shape is not None else (channels, image_size, image_size), "sample_shape")
        use_tanh = (sample_shape is None) if tanh is None else bool(tanh)
        mlp = {"hidden": hidden, "n_hidden": n_hidden, "bias": bias}
        gen = {"name": MLPGenerator, "args": {"encoding_dims": encoding_dims, "out_shape": shape, "tanh": use_tanh,
                                              "batchnorm": bool(batchnorm), **mlp}}
        if generator_hidden is not None:
            gen["args"]["hidden"] = generator_hidden
        disc = {"name": MLPCritic, "args": {"in_shape": shape, **mlp}}
    else:
        raise ValueError(f"kind must be 'dcgan' or 'mlp', got {kind!r}")
    gen["optimizer"] = {"name": opt["name"], "args": dict(opt["args"])}
    disc["optimizer"] = {"name": opt["name"], "args": dict(opt["args"])}
    return {"generator": gen, "discriminator": disc}
