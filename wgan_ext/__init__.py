"""wgan-ext: weight-clipped WGAN to the letter of the paper, fast.

* :func:`fused_clip_` -- clamp every critic parameter in place in one fused kernel per device.
* torchgan loss plugins (need ``pip install wgan-ext[torchgan]``), imported lazily so that
  ``import wgan_ext`` works without torchgan.
"""

from __future__ import annotations

from ._version import __version__
from .ops import FusedClipper, fused_clip_

__all__ = ["__version__", "fused_clip_", "FusedClipper"]
