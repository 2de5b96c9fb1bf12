"""The pure-PyTorch reference for ``fused_clip_``.

Used when no compiled kernel can load, and as the yardstick the kernels are tested against.
It gives, bit for bit, what the kernels give: what ``t.clamp_(lo, hi)`` gives on the tensor's
own device for every number (always one of ``t``, ``lo`` or ``hi`` rounded to ``t``'s dtype),
and a NaN left exactly as it was, payload and sign included.

That NaN rule is what ``clamp_`` does on CUDA and in the scalar part of its CPU loop, but not in
the vectorised part of its CPU loop for float16/bfloat16: there a NaN goes through float and
comes back quieted or as 0xFFFF, depending on where it falls in the tensor. A result that
depends on the position of an element is no contract, so every path here keeps NaN bits:

* CUDA: ``torch._foreach_clamp_min_/max_`` pass 16-bit values through float and canonicalise a
  NaN (0x7fff), while ``clamp_`` keeps it, so 16-bit tensors take ``clamp_``, one per tensor.
* CPU, 16-bit: the NaNs (rare) are saved before the foreach ops and written back after.
* Under torch.compile, 16-bit: the bits are restored with a select over every element.
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
        if dtype.itemsize == 2 and torch.compiler.is_compiling():
            # No data-dependent branch can be traced (and generated code may clamp NaNs its own
            # way): keep the NaN bits with a select over every element.
            for t in group:
                before = t.view(torch.int16).clone()
                nan = t.isnan()
                t.clamp_(lo, hi)
                t.view(torch.int16).copy_(torch.where(nan, before, t.view(torch.int16)))
            continue
        if dtype.itemsize == 2 and device.type != "cpu":
            for t in group:
                t.clamp_(lo, hi)
            continue
        nans = _save_nans(group) if dtype.itemsize == 2 else []
        torch._foreach_clamp_min_(group, lo)
        torch._foreach_clamp_max_(group, hi)
        for t, mask, values in nans:
            t.view(torch.int16)[mask] = values
    for t in tensors:
        torch.autograd.graph.increment_version(t)


def _save_nans(group: Sequence[torch.Tensor]) -> list:
    """(tensor, NaN mask, NaN bit patterns as int16) for each 16-bit tensor of ``group`` that
    has a NaN. As integers, because a lone NaN written back as a float value goes through a
    Scalar and comes back canonical."""
    # A norm is NaN exactly when its tensor holds a NaN (squares are never negative, so an
    # overflow gives inf, not NaN): one foreach call finds the few tensors to look into, ~3x
    # cheaper than isnan().any() per tensor.
    has_nan = torch.stack(torch._foreach_norm(list(group))).isnan().tolist()
    out = []
    for t, bad in zip(group, has_nan):
        if bad:
            mask = t.isnan()
            out.append((t, mask, t.view(torch.int16)[mask]))
    return out
