"""Loss plugins by name: the ``wgan_ext.losses`` entry-point group.

wgan-ext declares its torchgan losses as package entry points in the group
:data:`ENTRY_POINT_GROUP` (``"wgan_ext.losses"``)::

    wasserstein_generator        = wgan_ext.losses:WassersteinGeneratorLoss
    wasserstein_critic           = wgan_ext.losses:WassersteinCriticLoss
    wasserstein_gradient_penalty = wgan_ext.losses:WassersteinGradientPenalty
    hinge_generator              = wgan_ext.losses:HingeGeneratorLoss
    hinge_critic                 = wgan_ext.losses:HingeCriticLoss

Other distributions can add losses to the same group (``[project.entry-points."wgan_ext.losses"]``
in their ``pyproject.toml``); :func:`get_loss` finds them too. Resolving a name imports
:mod:`wgan_ext.losses` and therefore needs torchgan; listing names does not.

Example:
    >>> from wgan_ext.plugins import get_loss, create_loss, available_losses
    >>> sorted(available_losses())[:2]
    ['hinge_critic', 'hinge_generator']
    >>> critic_loss = create_loss("wasserstein_critic", c=0.01)      # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any, Dict

__all__ = ["ENTRY_POINT_GROUP", "BUILTIN_LOSSES", "available_losses", "get_loss", "create_loss"]

ENTRY_POINT_GROUP = "wgan_ext.losses"

BUILTIN_LOSSES: Dict[str, str] = {
    "wasserstein_generator": "wgan_ext.losses:WassersteinGeneratorLoss",
    "wasserstein_critic": "wgan_ext.losses:WassersteinCriticLoss",
    "wasserstein_gradient_penalty": "wgan_ext.losses:WassersteinGradientPenalty",
    "hinge_generator": "wgan_ext.losses:HingeGeneratorLoss",
    "hinge_critic": "wgan_ext.losses:HingeCriticLoss",
}
"""Our own entry points, as declared in pyproject.toml; used when wgan-ext is not installed
(e.g. run from a source checkout with ``PYTHONPATH``)."""


def _entry_points() -> Dict[str, metadata.EntryPoint]:
    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except TypeError:  # Python 3.9: entry_points() takes no arguments and returns a dict
        eps = metadata.entry_points().get(ENTRY_POINT_GROUP, ())
    return {ep.name: ep for ep in eps}


def available_losses() -> Dict[str, str]:
    """``name -> "module:attribute"`` for every registered loss (installed entry points first,
    then our built-in table for names no installed distribution declares)."""
    found = {name: ep.value for name, ep in _entry_points().items()}
    for name, target in BUILTIN_LOSSES.items():
        found.setdefault(name, target)
    return dict(sorted(found.items()))


def _load_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def get_loss(name: str) -> type:
    """The loss class registered under ``name`` (e.g. ``"wasserstein_critic"``).

    Raises:
        KeyError: no loss of that name; the message lists the available names.
        ImportError: the loss needs torchgan, which is not installed.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__} {name!r}")
    eps = _entry_points()
    if name in eps:
        return eps[name].load()
    if name in BUILTIN_LOSSES:
        return _load_target(BUILTIN_LOSSES[name])
    raise KeyError(
        f"no loss named {name!r} in entry-point group {ENTRY_POINT_GROUP!r}; "
        f"available: {', '.join(available_losses())}"
    )


def create_loss(name: str, /, *args: Any, **kwargs: Any) -> Any:
    """``get_loss(name)(*args, **kwargs)``: an instance ready for ``losses_list``."""
    return get_loss(name)(*args, **kwargs)
