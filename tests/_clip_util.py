"""Shared helpers of the clip tests (test_fused_clip.py, test_fused_clipper.py, ...).

Every value check compares with ``t.clone().clamp_(lo, hi)`` on the same device (``check``):
every number bit for bit, and NaN where the input was NaN. The compiled kernels also keep each
NaN's bits (they never rewrite a NaN), which is checked for them.
"""

from __future__ import annotations

import pytest
import torch

from wgan_ext.ops import fused_clip_

HAS_CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}
SPECIALS = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-30, -1e-30, 65504.0, 1e20]


def _backends() -> list:
    """(device, backend) pairs: the fallback everywhere, each compiled kernel where it loads."""
    out = [pytest.param("cpu", "torch", id="cpu-torch"), pytest.param("cpu", "cpu", id="cpu-kernel")]
    cuda_marks = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")]
    out.append(pytest.param("cuda", "torch", id="cuda-torch", marks=cuda_marks))
    out.append(pytest.param("cuda", "cuda", id="cuda-kernel", marks=cuda_marks))
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(INT_VIEW[t.element_size()]).cpu()


def assert_bit_equal(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    g, w = bits(got), bits(want)
    if not torch.equal(g, w):
        bad = (g != w).nonzero()[:5].tolist()
        raise AssertionError(
            f"{int((g != w).sum())} elements differ, e.g. at {bad}: "
            f"got {[got[tuple(i)].item() for i in bad]} want {[want[tuple(i)].item() for i in bad]}"
        )


def assert_numbers_equal(got: torch.Tensor, want: torch.Tensor) -> None:
    """NaN exactly where ``want`` has NaN; every other element bit for bit (-0.0 is not 0.0)."""
    nan = want.isnan()
    assert torch.equal(got.isnan().cpu(), nan.cpu()), "NaN positions differ"
    assert_bit_equal(torch.where(nan, torch.zeros_like(got), got), torch.where(nan, torch.zeros_like(want), want))


def check(got: torch.Tensor, before: torch.Tensor, lo: float, hi: float, backend: str) -> None:
    """``got`` is ``before`` clamped as ``clamp_`` clamps it: numbers bit for bit, NaN stays NaN;
    for the compiled kernels also each NaN's bits unchanged."""
    assert_numbers_equal(got, before.clone().clamp_(lo, hi))
    nan = before.isnan()
    if backend in ("cpu", "cuda"):
        assert torch.equal(bits(got)[nan.cpu()], bits(before)[nan.cpu()]), "a kernel rewrote a NaN"


def make_values(n: int, dtype: torch.dtype, device: str, seed: int, scale: float = 0.03) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64) * scale
    if n:
        idx = torch.randint(0, n, (max(1, n // 10),), generator=g)
        x[idx] = torch.tensor(SPECIALS, dtype=torch.float64)[torch.randint(0, len(SPECIALS), idx.shape, generator=g)]
    return x.to(dtype).to(device)


def clip_and_check(tensors: list, c, backend: str) -> None:
    lo, hi = (-c, c) if isinstance(c, float) else c
    before = [t.clone() for t in tensors]
    fused_clip_(tensors, c, backend=backend)
    for g, b in zip(tensors, before):
        check(g, b, lo, hi, backend)
