"""The pure-PyTorch path of ``fused_clip_``: used when no compiled kernel loads (or with
``backend="torch"``), with the checks the compiled path runs in C++ (``csrc/fused_clip.h``).

Results are those of ``t.clamp_(lo, hi)`` on each tensor's device for every number; a NaN stays
NaN (its payload may differ from the kernels', which keep NaN bits: the foreach ops send 16-bit
values through float).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .distributed import local_tensor

__all__ = ["clip_", "clamp_", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(t: object, i: int) -> None:
    """The checks of csrc/fused_clip.h (check_tensor), with the same messages."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fused_clip_: critic[{i}] must be a tensor or parameter, got {type(t).__name__}")
    where = f"fused_clip_: critic[{i}]"
    if t.layout != torch.strided:
        raise TypeError(f"{where} has layout {t.layout}; only dense (strided) tensors can be clipped")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{where} has dtype {t.dtype}; supported: "
                        f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}")
    if t.is_neg():
        raise TypeError(f"{where} is a negative view (torch._neg_view); its memory holds the "
                        "negated values: pass t.resolve_neg()")
    if t._is_zerotensor():
        raise RuntimeError(f"{where} is a ZeroTensor, which is immutable")
    if t.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(f"{where} is an inference tensor; in-place updates to it are only "
                           "allowed in InferenceMode")
    if torch._debug_has_internal_overlap(t) == 1:
        raise ValueError(f"{where} has elements that share memory (an expanded or overlapping "
                         "view); clamp_ refuses to write it too")


def clip_(tensors: Sequence[object], lo: float, hi: float, dry_run: bool = False) -> None:
    """Check every tensor, then clamp them all (``dry_run``: only check). Nothing is written if
    anything raises. Each tensor's version counter is bumped once, as by one ``clamp_``."""
    wrappers, items, seen = [], [], set()
    for i, t in enumerate(tensors):
        if isinstance(t, torch.Tensor):
            if id(t) in seen or torch.nn.parameter.is_lazy(t):  # lazy: nothing to clip yet
                continue
            seen.add(id(t))
            local = local_tensor(t)
            if local is not t:
                wrappers.append(t)
            t = local
        _check(t, i)
        items.append((i, t))
    for dtype in {t.dtype for _, t in items}:
        limit = torch.finfo(dtype).max  # clamp_ raises when a bound overflows the dtype
        if abs(lo) > limit or abs(hi) > limit:
            i = next(i for i, t in items if t.dtype == dtype)
            raise ValueError(f"fused_clip_: bounds lo={lo:g}, hi={hi:g} cannot be converted to "
                             f"{dtype} (critic[{i}]) without overflow")
    if dry_run:
        return
    clamp_([t for _, t in items], lo, hi)
    for t in wrappers:
        torch.autograd.graph.increment_version(t)


def clamp_(tensors: Sequence[torch.Tensor], lo: float, hi: float) -> None:
    """Clamp checked ``tensors`` in place with one foreach call per (device, dtype).

    Writes through ``.data`` aliases (no autograd, so leaf parameters that require grad can be
    written) and then bumps each version counter once, as one ``clamp_`` would; the two foreach
    ops on the tensors themselves would bump it twice.
    """
    groups: dict = {}
    for t in tensors:
        if t.numel() > 0:
            groups.setdefault((t.device, t.dtype), []).append(t.data)
    for group in groups.values():
        torch._foreach_clamp_min_(group, lo)
        torch._foreach_clamp_max_(group, hi)
    for t in tensors:
        torch.autograd.graph.increment_version(t)
