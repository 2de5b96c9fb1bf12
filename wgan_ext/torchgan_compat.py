"""Two narrow fixes that let a stock torchgan 0.1.0 ``Trainer`` run on current torch/torchvision.

torchgan 0.1.0 (its last release) predates two breaking changes:

``ImageVisualize.__call__`` (torchgan.logging.visualize)
    calls ``torchvision.utils.make_grid(..., range=(-1, 1))``; torchvision renamed ``range`` to
    ``value_range`` and later removed it, so the Trainer crashes with a ``TypeError`` at the end of
    its first epoch. The patch is torchgan's own method with ``value_range=(-1, 1)`` instead:
    the same grid, the same file names, the same step counting.

``BaseTrainer.load_model`` (torchgan.trainer.base_trainer)
    torchgan checkpoints pickle the Trainer's loss (and metric) objects. Since torch 2.6,
    ``torch.load`` defaults to ``weights_only=True``, which refuses their classes, and torchgan's
    bare ``except`` turns that into "Model could not be loaded". The patch runs torchgan's own
    ``load_model`` unchanged inside ``torch.serialization.safe_globals(...)`` that allow-lists
    exactly the classes of *this* Trainer's loss and metric objects (plus the small helper
    classes they declare in a ``_checkpoint_globals`` class attribute, e.g.
    :class:`wgan_ext.functional.CriticSchedule`). Everything else keeps torch's weights-only
    protection, and torch's own switches (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for a trusted
    file, ``torch.serialization.add_safe_globals``) still apply.

Nothing else in torchgan is touched. :func:`apply` is idempotent and thread-safe;
:mod:`wgan_ext.losses` calls it when imported, so using our losses is enough. Call it yourself
to get the fixes with torchgan's own losses. The patches are installed only on torchgan 0.1.0
and only where needed (``value_range`` exists / ``safe_globals`` exists); :func:`revert`
restores the originals.

Example:
    >>> from wgan_ext import torchgan_compat
    >>> torchgan_compat.apply()                       # doctest: +SKIP
    ('ImageVisualize.__call__', 'BaseTrainer.load_model')
"""

from __future__ import annotations

import functools
import inspect
import threading
from typing import Any, Callable, Dict, List, Tuple

import torch

__all__ = ["apply", "revert", "applied", "is_patched", "checkpoint_globals", "PATCHES", "SUPPORTED_TORCHGAN"]

SUPPORTED_TORCHGAN = ("v0.1.0", "0.1.0")
PATCHES = ("ImageVisualize.__call__", "BaseTrainer.load_model")
_MARK = "__wgan_ext_compat__"

_lock = threading.Lock()
_originals: Dict[str, Tuple[Any, str, Callable]] = {}  # name -> (owner class, attribute, original)


def _torchgan() -> Any:
    try:
        import torchgan
    except ImportError as e:
        raise ImportError(
            "wgan_ext.torchgan_compat patches torchgan, which is not installed: "
            "pip install 'wgan-ext[torchgan]'"
        ) from e
    return torchgan


def _image_visualize_call(self: Any, trainer: Any, **kwargs: Any) -> None:
    # torchgan 0.1.0's ImageVisualize.__call__ verbatim, except make_grid's `value_range`
    # (called `range` in torchvision < 0.10, and removed since).
    import torchvision
    from torchgan.logging.visualize import ImageVisualize
    from torchgan.models.model import Generator

    pos = 0
    for model in trainer.model_names:
        if isinstance(getattr(trainer, model), Generator):
            generator = getattr(trainer, model)
            with torch.no_grad():
                image = generator(*self.test_noise[pos])
                image = torchvision.utils.make_grid(
                    image, nrow=self.nrow, normalize=True, value_range=(-1, 1)
                )
                super(ImageVisualize, self).__call__(trainer, image, model, **kwargs)
            self.step -= 1
            pos = pos + 1
    self.step += 1 if pos > 0 else 0


def checkpoint_globals(trainer: Any) -> List[type]:
    """The classes a checkpoint written by ``trainer`` legitimately contains besides tensors.

    The classes of its loss objects and metric objects, and whatever those classes list in a
    ``_checkpoint_globals`` attribute (helper objects they keep as state).
    """
    objects: List[Any] = []
    for attr in ("losses", "metrics"):
        group = getattr(trainer, attr, None)
        if isinstance(group, dict):
            objects.extend(group.values())
    seen: List[type] = []
    for obj in objects:
        for cls in (type(obj), *getattr(type(obj), "_checkpoint_globals", ())):
            if isinstance(cls, type) and cls not in seen:
                seen.append(cls)
    return seen


def _wrap_load_model(original: Callable) -> Callable:
    @functools.wraps(original)
    def load_model(self: Any, load_path: str = "", load_items: Any = None) -> Any:
        # torchgan's load_model itself, with this Trainer's own loss/metric classes allowed.
        with torch.serialization.safe_globals(checkpoint_globals(self)):
            return original(self, load_path, load_items)

    return load_model


def _make_grid_has_value_range() -> bool:
    import torchvision

    return "value_range" in inspect.signature(torchvision.utils.make_grid).parameters


def _targets() -> Dict[str, Tuple[Any, str, Callable[[Callable], Callable], bool]]:
    """name -> (owner, attribute, make_replacement(original), needed)."""
    from torchgan.logging.visualize import ImageVisualize
    from torchgan.trainer.base_trainer import BaseTrainer

    return {
        "ImageVisualize.__call__": (
            ImageVisualize, "__call__", lambda original: _image_visualize_call, _make_grid_has_value_range(),
        ),
        "BaseTrainer.load_model": (
            BaseTrainer, "load_model", _wrap_load_model, hasattr(torch.serialization, "safe_globals"),
        ),
    }


def applied() -> Tuple[str, ...]:
    """Names of the patches currently installed (a subset of :data:`PATCHES`)."""
    with _lock:
        return tuple(name for name in PATCHES if name in _originals)


def apply() -> Tuple[str, ...]:
    """Install the fixes (once); return the names of all patches now installed.

    Idempotent: a second call changes nothing and returns the same names. On a torchgan other
    than 0.1.0 nothing is patched and ``()`` is returned (newer releases may fix these bugs
    differently). A patch whose breaking change is absent (e.g. an old torchvision that still
    takes ``range=``) is skipped.

    Raises:
        ImportError: torchgan is not installed.
    """
    torchgan = _torchgan()
    if getattr(torchgan, "__version__", None) not in SUPPORTED_TORCHGAN:
        return applied()
    with _lock:
        for name, (owner, attr, make, needed) in _targets().items():
            if name in _originals or not needed:
                continue
            original = owner.__dict__[attr]
            replacement = make(original)
            setattr(replacement, _MARK, name)
            _originals[name] = (owner, attr, original)
            setattr(owner, attr, replacement)
    return applied()


def revert() -> Tuple[str, ...]:
    """Restore torchgan's original methods; return the names of the patches removed."""
    with _lock:
        removed = []
        for name in PATCHES:
            entry = _originals.pop(name, None)
            if entry is None:
                continue
            owner, attr, original = entry
            setattr(owner, attr, original)
            removed.append(name)
        return tuple(removed)


def is_patched(func: Any) -> bool:
    """True if ``func`` is one of this module's replacements."""
    return hasattr(func, _MARK)
