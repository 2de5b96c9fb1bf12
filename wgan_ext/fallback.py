"""The pure-PyTorch path of ``fused_clip_``: used where no compiled kernel serves a device (or
with ``backend="torch"``), with the checks the op's kernels run in C++ (``csrc/checks.h``).

Results are those of ``t.clamp_(lo, hi)`` on each tensor's device for every number; a NaN stays
NaN (its payload may differ from the kernels', which keep NaN bits: the foreach ops send 16-bit
values through float).
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["check", "clamp_", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(t: torch.Tensor, i: int) -> None:
    where = f"fused_clip_: tensors[{i}]"
    if t.layout != torch.strided:
        raise TypeError(f"{where} has layout {t.layout}; only dense (strided) tensors are supported")
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


def check(tensors: Sequence[torch.Tensor], lo: float, hi: float) -> None:
    """The op's checks of every tensor (local tensors, lazy parameters removed) and of the
    bounds against every dtype; writes nothing."""
    dtypes: dict = {}
    for i, t in enumerate(tensors):
        _check(t, i)
        dtypes.setdefault(t.dtype, i)
    for dtype, i in dtypes.items():
        limit = torch.finfo(dtype).max  # clamp_ raises when a bound overflows the dtype
        if abs(lo) > limit or abs(hi) > limit:
            raise ValueError(f"fused_clip_: bounds lo={lo:g}, hi={hi:g} cannot be converted to "
                             f"{dtype} (tensors[{i}]) without overflow")


def clamp_(tensors: Sequence[torch.Tensor], lo: float, hi: float) -> None:
    """Clamp checked ``tensors`` in place with one foreach call per (device, dtype).

    Writes through ``.data`` aliases (no autograd, so leaf parameters that require grad can be
    written) and then bumps each version counter once, as one ``clamp_`` would; the two foreach
    ops on the tensors themselves would bump it twice. A tensor listed twice is clamped once.
    """
    groups: dict = {}
    unique = tensors if torch.compiler.is_compiling() else list({id(t): t for t in tensors}.values())
    for t in unique:
        if t.numel() > 0:
            groups.setdefault((t.device, t.dtype), []).append(t.data)
    for group in groups.values():
        torch._foreach_clamp_min_(group, lo)
        torch._foreach_clamp_max_(group, hi)
    for t in unique:
        torch.autograd.graph.increment_version(t)
