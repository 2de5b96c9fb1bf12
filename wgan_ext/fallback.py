"""The pure-PyTorch reference for ``fused_clip_``.

Used when no compiled kernel can load, and as the yardstick the kernels are tested against.
It must give bit-for-bit what ``t.clamp_(lo, hi)`` gives on the tensor's own device: the result
of a clamp is always one of ``t``, ``lo`` or ``hi`` rounded to ``t``'s dtype (NaN stays NaN).
``torch._foreach_clamp_min_`` then ``_foreach_clamp_max_`` pick the same one, except that on CUDA
the foreach kernels pass 16-bit values through float, which turns a NaN's payload into the
canonical NaN (0x7fff) where ``clamp_`` keeps the original bits: so 16-bit tensors off the CPU
take ``clamp_`` itself, one per tensor.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["clamp_tensors_"]


def clamp_tensors_(tensors: Sequence[torch.Tensor], lo: float, hi: float) -> None:
    """Clamp ``tensors`` in place to ``[lo, hi]`` with one foreach launch per (device, dtype).

    No argument checking: ``wgan_ext.fused_clip_`` validates before it calls this.
    Writes through ``.data`` aliases (no autograd, no version bump: leaf parameters that require
    grad can be written) and then bumps each tensor's version counter once, as one ``clamp_``
    would; the two foreach ops on the tensors themselves would bump it twice.
    """
    if not tensors:
        return
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t.data)
    for (device, dtype), group in groups.items():
        if dtype.itemsize == 2 and device.type != "cpu":
            for t in group:
                t.clamp_(lo, hi)
        else:
            torch._foreach_clamp_min_(group, lo)
            torch._foreach_clamp_max_(group, hi)
    for t in tensors:
        torch.autograd.graph.increment_version(t)
