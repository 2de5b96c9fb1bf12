"""fused_clip_ against torch's own clamp_, on every backend available here.

Every value check compares bit patterns with ``clamp_ref(t, lo, hi)`` on the same device:
``t.clone().clamp_(lo, hi)`` with each NaN kept bit for bit, the definition the kernels and
the fallback promise to reproduce. CUDA cases run where a GPU is visible and are
skipped (with a reason) elsewhere.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wgan_ext
from wgan_ext import _ext
from wgan_ext.ops import FusedClipper, fused_clip_

HAS_CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}
SPECIALS = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-30, -1e-30, 65504.0, 1e20]


def _backends() -> list:
    """(device, backend) pairs: the pure-PyTorch fallback everywhere, each compiled kernel where it loads."""
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
            f"got {got.flatten()[:0]}{[got[tuple(i)].item() for i in bad]} "
            f"want {[want[tuple(i)].item() for i in bad]}"
        )


def clamp_ref(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``t.clamp(lo, hi)`` with every NaN left bit for bit as it was: the contract of fused_clip_.

    That is what ``clamp_`` gives on CUDA and in the scalar part of its CPU loop; the vectorised
    part of the CPU loop sends float16/bfloat16 NaNs through float and back (quieted, or
    0xFFFF), depending on where they fall (wgan_ext/fallback.py). The NaNs are copied back as
    integers: a lone NaN written back as a float goes through a Scalar and comes back canonical.
    """
    out = t.clone().clamp_(lo, hi)
    nan = t.isnan()
    as_int = INT_VIEW[t.element_size()]
    out.view(as_int)[nan] = t.view(as_int)[nan]
    return out


def make_values(n: int, dtype: torch.dtype, device: str, seed: int, scale: float = 0.03) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64) * scale
    if n:
        idx = torch.randint(0, n, (max(1, n // 10),), generator=g)
        x[idx] = torch.tensor(SPECIALS, dtype=torch.float64)[torch.randint(0, len(SPECIALS), idx.shape, generator=g)]
    return x.to(dtype).to(device)


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("device,backend", _backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_clamp_bit_for_bit(device, backend, dtype):
    sizes = [0, 1, 3, 7, 8, 9, 31, 1000, 4097, 70_001]
    tensors = [make_values(n, dtype, device, seed=i) for i, n in enumerate(sizes)]
    want = [clamp_ref(t, -0.01, 0.01) for t in tensors]
    fused_clip_(tensors, 0.01, backend=backend)
    for g, w in zip(tensors, want):
        assert_bit_equal(g, w)


@pytest.mark.parametrize("device,backend", _backends())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_every_16_bit_pattern_including_each_nan(device, backend, dtype):
    # All 65,536 bit patterns, twice: in one long tensor (clamp_'s CPU vector loop) and as
    # 7-element tensors (its scalar tail). Numbers must match clamp_; every NaN keeps its bits,
    # signalling NaNs included, which clamp_'s CPU vector loop does not do for 16-bit dtypes.
    patterns = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype).to(device)
    tensors = [patterns.clone(), *patterns.clone().split(7)]
    want = [clamp_ref(t, -0.5, 2.0) for t in tensors]
    nan = patterns.isnan()
    assert int(nan.sum()) == (2046 if dtype == torch.float16 else 254)
    fused_clip_(tensors, (-0.5, 2.0), backend=backend)
    for g, w in zip(tensors, want):
        assert_bit_equal(g, w)
    assert torch.equal(bits(tensors[0])[nan.cpu()], bits(patterns)[nan.cpu()])


LAYOUTS = ["contiguous", "transposed", "channels_last", "step_slice", "offset_by_one", "expanded_row"]


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A view of fresh storage with the requested memory layout (x: 4-D, at least 2x3x4x5)."""
    if layout == "contiguous":
        return x.clone()
    if layout == "transposed":
        return x.clone().transpose(1, 3)
    if layout == "channels_last":
        return x.clone().contiguous(memory_format=torch.channels_last)
    if layout == "step_slice":
        return x.clone()[:, ::2, 1:, ::3]
    if layout == "offset_by_one":  # misaligned for 16-byte vector loads
        flat = torch.cat([x.new_zeros(1), x.flatten()])
        return flat[1:].view_as(x)
    if layout == "expanded_row":  # a slice with a gap between rows
        return x.clone()[:, :, :, :-1]
    raise AssertionError(layout)


# Inputs shared by the CPU and CUDA property tests (hypothesis draws each case).
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CASE = dict(
    dtype=st.sampled_from(DTYPES),
    shape=st.tuples(*[st.integers(2, 6)] * 2, *[st.integers(3, 9)] * 2),
    layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**31 - 1),
)
C_OR_SYMMETRIC_PAIR = [st.floats(1e-6, 1e4), st.tuples(st.floats(-10, -1e-3), st.floats(1e-3, 10))]


@PROPERTY_SETTINGS
@given(
    **CASE,
    bounds=st.one_of(
        *C_OR_SYMMETRIC_PAIR,
        st.tuples(st.floats(0.5, 2.0), st.floats(2.0, 3.0)),  # both bounds positive
    ),
    backend=st.sampled_from(["cpu", "torch"]),
)
def test_property_matches_clamp_cpu(dtype, shape, layout, seed, bounds, backend):
    check_property(dtype, shape, layout, seed, bounds, backend, "cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")
@PROPERTY_SETTINGS
@given(**CASE, bounds=st.one_of(*C_OR_SYMMETRIC_PAIR))
def test_property_matches_clamp_cuda(dtype, shape, layout, seed, bounds):
    check_property(dtype, shape, layout, seed, bounds, "cuda", "cuda")


def check_property(dtype, shape, layout, seed, bounds, backend, device):
    x = make_values(math.prod(shape), dtype, device, seed, scale=4.0).view(shape)
    t = _layout(x, layout)
    lo, hi = (-bounds, bounds) if isinstance(bounds, float) else bounds
    want = clamp_ref(t, lo, hi)
    fused_clip_([t], bounds, backend=backend)
    assert_bit_equal(t, want)


@pytest.mark.parametrize("device,backend", _backends())
def test_module_with_mixed_dtypes(device, backend):
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).to(device)
    critic[2].to(torch.bfloat16)
    before = [p.detach().clone() for p in critic.parameters()]
    fused_clip_(critic, 0.05, backend=backend)
    for p, b in zip(critic.parameters(), before):
        assert_bit_equal(p.detach(), b.clamp(-0.05, 0.05))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")
def test_cpu_and_cuda_two_devices_in_one_call():
    a = make_values(1000, torch.float32, "cpu", 1)
    b = make_values(1000, torch.float16, "cuda", 2)
    want = [clamp_ref(a, -0.01, 0.01), clamp_ref(b, -0.01, 0.01)]
    fused_clip_([a, b], 0.01)
    assert_bit_equal(a, want[0])
    assert_bit_equal(b, want[1])


def test_tensors_on_two_devices_are_grouped_and_the_op_refuses_a_mixed_list():
    a = make_values(1000, torch.float32, "cpu", 1)
    m = torch.empty(1000, device="meta")  # a second device that exists on every machine
    want = clamp_ref(a, -0.01, 0.01)
    fused_clip_([a, m], 0.01)
    assert_bit_equal(a, want)
    before = a.clone()
    with pytest.raises(ValueError, match=r"all tensors must be on one device; tensors\[0\] is on cpu, tensors\[1\] on meta"):
        torch.ops.wgan_ext.fused_clip_([a, m], -0.001, 0.001)
    assert_bit_equal(a, before)


def test_lo_equal_hi_and_asymmetric_pair():
    t = make_values(500, torch.float32, "cpu", 3)
    want = clamp_ref(t, 0.25, 0.25)
    fused_clip_([t], (0.25, 0.25))
    assert_bit_equal(t, want)
    t = make_values(500, torch.float32, "cpu", 4)
    want = clamp_ref(t, -0.5, 0.01)
    fused_clip_([t], (-0.5, 0.01))
    assert_bit_equal(t, want)


def test_accepts_a_single_tensor_and_a_generator():
    t = make_values(100, torch.float32, "cpu", 5)
    want = clamp_ref(t, -0.01, 0.01)
    fused_clip_(t, 0.01)
    assert_bit_equal(t, want)
    ts = [make_values(10, torch.float64, "cpu", s) for s in range(3)]
    wants = [clamp_ref(x, -0.02, 0.02) for x in ts]
    fused_clip_((x for x in ts), 0.02)
    for g, w in zip(ts, wants):
        assert_bit_equal(g, w)


# ----------------------------------------------------------------------------- CUDA specifics
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_many_tensors_misaligned_and_odd_sizes(dtype):
    if not HAS_CUDA:
        pytest.skip("no CUDA device here")
    g = torch.Generator().manual_seed(16)
    sizes = torch.randint(0, 5000, (6000,), generator=g).tolist() + [300_001, 1 << 20]
    ts = []
    for i, n in enumerate(sizes):
        base = make_values(n + 3, dtype, "cuda", i)
        ts.append(base[i % 3: i % 3 + n])  # offsets 0..2 elements: some not 16-byte aligned
    want = [clamp_ref(t, -0.01, 0.01) for t in ts]
    fused_clip_(ts, 0.01, backend="cuda")
    torch.cuda.synchronize()
    for a, b in zip(ts, want):
        assert_bit_equal(a, b)


@pytest.mark.cuda
@pytest.mark.slow
def test_cuda_tensor_over_2_to_the_31_elements():
    if not HAS_CUDA:
        pytest.skip("no CUDA device here")
    n = (1 << 31) + 4099
    free, _ = torch.cuda.mem_get_info()
    if free < 3 * n * 2 + (1 << 30):
        pytest.skip(f"needs {3 * n * 2 / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} free")
    x = torch.empty(n, dtype=torch.float16, device="cuda")
    x.uniform_(-0.05, 0.05)
    x[-5:] = torch.tensor([1.0, -1.0, float("nan"), 0.005, -0.02], dtype=torch.float16)
    want = clamp_ref(x, -0.01, 0.01)
    fused_clip_([x], 0.01, backend="cuda")
    assert torch.equal(x.view(torch.int16), want.view(torch.int16))
    tail = x[-5:].float().cpu()
    assert tail[0].item() == pytest.approx(0.01, abs=1e-5) and math.isnan(tail[2].item())
    del want


@pytest.mark.cuda
def test_cuda_runs_on_the_current_stream():
    if not HAS_CUDA:
        pytest.skip("no CUDA device here")
    s = torch.cuda.Stream()
    x = make_values(1 << 22, torch.float32, "cuda", 17)
    want = clamp_ref(x, -0.01, 0.01)
    torch.cuda.synchronize()
    with torch.cuda.stream(s):
        y = x.clone()  # queued on s (a copy keeps NaN payloads; arithmetic would not)
        fused_clip_([y], 0.01, backend="cuda")  # must run after the multiply, on s
        z = y.clone()
    s.synchronize()
    assert_bit_equal(z, want)


# ----------------------------------------------------------------------------- autograd
@pytest.mark.parametrize("device,backend", _backends())
def test_bumps_version_once_like_clamp(device, backend):
    p = torch.nn.Parameter(make_values(64, torch.float32, device, 6))
    q = torch.nn.Parameter(make_values(64, torch.float32, device, 7))
    with torch.no_grad():
        q.clamp_(-0.01, 0.01)
    fused_clip_([p], 0.01, backend=backend)
    assert p._version == q._version == 1


@pytest.mark.parametrize("device,backend", _backends())
def test_backward_through_a_clipped_weight_raises_like_clamp(device, backend):
    def run(clip):
        w = torch.nn.Parameter(make_values(9, torch.float32, device, 8).view(3, 3))
        y = (w * w).sum()  # saves w for backward
        clip(w)
        with pytest.raises(RuntimeError) as info:
            y.backward()
        return str(info.value)

    def torch_clip(w):
        with torch.no_grad():
            w.clamp_(-0.01, 0.01)

    ours = run(lambda w: fused_clip_([w], 0.01, backend=backend))
    theirs = run(torch_clip)
    assert "modified by an inplace operation" in ours
    assert ours == theirs


@pytest.mark.parametrize("device,backend", _backends())
def test_leaf_that_requires_grad_needs_no_no_grad(device, backend):
    w = torch.nn.Parameter(make_values(50, torch.float32, device, 9))
    want = clamp_ref(w.detach(), -0.01, 0.01)
    fused_clip_([w], 0.01, backend=backend)
    assert w.requires_grad and w.is_leaf and w.grad_fn is None
    assert_bit_equal(w.detach(), want)
    # the clipped weight still trains: a later graph sees the new values
    (w * 2).sum().backward()
    assert torch.equal(w.grad, torch.full_like(w, 2.0))


# ----------------------------------------------------------------------------- structure
@pytest.mark.parametrize("device,backend", _backends())
def test_tied_parameters_clamped_once(device, backend):
    emb = torch.nn.Linear(4, 4, bias=False).to(device)
    head = torch.nn.Linear(4, 4, bias=False).to(device)
    head.weight = emb.weight  # tied
    model = torch.nn.ModuleList([emb, head])
    with torch.no_grad():
        emb.weight.copy_(make_values(16, torch.float32, device, 10).view(4, 4))
    v0 = emb.weight._version
    want = clamp_ref(emb.weight.detach(), -0.01, 0.01)
    fused_clip_(model, 0.01, backend=backend)
    assert emb.weight._version == v0 + 1
    # the same tensor listed twice by hand: still one write, one version bump
    fused_clip_([emb.weight, head.weight, emb.weight], 0.01, backend=backend)
    assert emb.weight._version == v0 + 2
    assert_bit_equal(emb.weight.detach(), want)


@pytest.mark.parametrize("device,backend", _backends())
def test_empty_inputs(device, backend):
    fused_clip_(torch.nn.Sequential(), 0.01, backend=backend)  # a module without parameters
    fused_clip_([], 0.01, backend=backend)
    e = torch.empty(0, 3, device=device)
    fused_clip_([e], 0.01, backend=backend)
    assert e.shape == (0, 3)
    t = make_values(10, torch.float32, device, 11)
    want = clamp_ref(t, -0.01, 0.01)
    fused_clip_([torch.empty(0, device=device), t, torch.empty(5, 0, device=device)], 0.01, backend=backend)
    assert_bit_equal(t, want)


def test_many_tensors_of_many_sizes_cpu():
    g = torch.Generator().manual_seed(12)
    sizes = torch.randint(0, 3000, (2000,), generator=g).tolist()
    ts = [make_values(n, torch.float32, "cpu", i) for i, n in enumerate(sizes)]
    want = [clamp_ref(t, -0.01, 0.01) for t in ts]
    fused_clip_(ts, 0.01, backend="cpu")
    for a, b in zip(ts, want):
        assert_bit_equal(a, b)


# ----------------------------------------------------------------------------- bad input
def _victims():
    good = make_values(100, torch.float32, "cpu", 13)
    return good, good.clone()


@pytest.mark.parametrize(
    "c,exc,match",
    [
        (0.0, ValueError, "c must be > 0"),
        (-0.01, ValueError, "c must be > 0"),
        (float("nan"), ValueError, "finite"),
        (float("inf"), ValueError, "finite"),
        ((0.1, -0.1), ValueError, "lo <= hi"),
        ((0.0, float("inf")), ValueError, "finite"),
        ((0.1,), ValueError, "pair"),
        (True, TypeError, "real number"),
        ("0.01", TypeError, "real number"),
        (1j, TypeError, "real number"),
    ],
)
def test_bad_bounds_raise_and_modify_nothing(c, exc, match):
    good, copy = _victims()
    with pytest.raises(exc, match=match):
        fused_clip_([good], c)
    assert_bit_equal(good, copy)


@pytest.mark.parametrize(
    "bad,exc,match",
    [
        (torch.arange(5), TypeError, r"critic\[1\] has dtype torch.int64"),
        (torch.ones(3, dtype=torch.bool), TypeError, r"critic\[1\] has dtype torch.bool"),
        (torch.ones(3, dtype=torch.complex64), TypeError, r"critic\[1\] has dtype torch.complex64"),
        (torch.eye(3).to_sparse(), TypeError, r"critic\[1\] has layout torch.sparse_coo"),
        ("weight", TypeError, r"critic\[1\] must be a tensor or parameter, got str"),
        (None, TypeError, r"critic\[1\] must be a tensor or parameter, got NoneType"),
        (torch.full((4,), 0.5)._neg_view(), TypeError, r"critic\[1\] is a negative view"),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "cpu", "torch"])
def test_bad_tensors_raise_and_modify_nothing(bad, exc, match, backend):
    good, copy = _victims()
    with pytest.raises(exc, match=match):
        fused_clip_([good, bad], 0.01, backend=backend)
    assert_bit_equal(good, copy)  # the valid tensor before the bad one is untouched


def test_bad_critic_and_backend():
    with pytest.raises(TypeError, match="critic must be an nn.Module, a tensor or an iterable"):
        fused_clip_(3.0, 0.01)
    good, copy = _victims()
    with pytest.raises(ValueError, match="backend must be one of"):
        fused_clip_([good], 0.01, backend="triton")
    with pytest.raises(ValueError, match="backend='cuda' cannot clip tensors on device cpu"):
        fused_clip_([good], 0.01, backend="cuda")
    assert_bit_equal(good, copy)


def test_inference_tensor_outside_inference_mode_raises_and_modifies_nothing():
    with torch.inference_mode():
        inf_t = make_values(10, torch.float32, "cpu", 14)
    good, copy = _victims()
    before = inf_t.clone()
    with pytest.raises(RuntimeError, match="inference tensor"):
        fused_clip_([good, inf_t], 0.01, backend="cpu")
    assert_bit_equal(good, copy)
    assert_bit_equal(inf_t, before)
    with torch.inference_mode():  # inside InferenceMode it is allowed, as for clamp_
        fused_clip_([inf_t], 0.01, backend="cpu")
    assert_bit_equal(inf_t, before.clamp(-0.01, 0.01))


def test_bound_out_of_dtype_range_raises_like_clamp():
    h = make_values(10, torch.float16, "cpu", 15)
    h_before = h.clone()
    with pytest.raises(RuntimeError) as theirs:
        h.clone().clamp_(-1e5, 1e5)
    with pytest.raises(RuntimeError) as ours:
        torch.ops.wgan_ext.fused_clip_([h], -1e5, 1e5)
    assert str(ours.value).split("\n")[0] == str(theirs.value).split("\n")[0]
    assert_bit_equal(h, h_before)
    good, copy = _victims()  # float32 first: its bound conversion fails before any write
    with pytest.raises(RuntimeError, match="without overflow"):
        torch.ops.wgan_ext.fused_clip_([good, h], -1e300, 1e300)
    assert_bit_equal(good, copy)
    assert_bit_equal(h, h_before)


# ----------------------------------------------------------------------------- backends
def test_fallback_warns_once_with_reason_and_matches(monkeypatch):
    monkeypatch.setitem(_ext._status, "cpu", _ext.BackendStatus("cpu", reason="pretend the build failed"))
    monkeypatch.setattr(_ext, "_warned", set())
    ts = [make_values(300, torch.float32, "cpu", s) for s in range(3)]
    want = [clamp_ref(t, -0.01, 0.01) for t in ts]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fused_clip_(ts, 0.01)
        fused_clip_(ts, 0.01)
    msgs = [str(x.message) for x in w if "fused_clip_" in str(x.message)]
    assert len(msgs) == 1 and "pretend the build failed" in msgs[0]
    for a, b in zip(ts, want):
        assert_bit_equal(a, b)
    with pytest.raises(RuntimeError, match="pretend the build failed"):
        fused_clip_(ts, 0.01, backend="cpu")


def test_compiled_cpu_kernel_is_loaded_here():
    # CI builds the extension; a silent fallback would make every 'cpu-kernel' test vacuous.
    st = _ext.status("cpu")
    assert st.loaded, st.reason
    assert torch._C._dispatch_has_kernel_for_dispatch_key("wgan_ext::fused_clip_", "CPU")


@pytest.mark.parametrize("first", ["status('cuda')", "available('cuda')", "status('cpu')"])
def test_backend_status_in_a_fresh_process(first):
    # A fresh interpreter, so nothing is loaded yet: asking for CUDA first used to deadlock
    # (loading "cuda" loads "cpu" under the same non-reentrant lock) -- on a GPU machine, the
    # very first fused_clip_ call on CUDA tensors hung. The answers must match this process's.
    import subprocess
    import sys

    code = (
        "from wgan_ext import _ext\n"
        f"_ext.{first}\n"
        "print(_ext.status('cpu').how, _ext.status('cuda').how)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(_ext.status("cpu").how), str(_ext.status("cuda").how)]


def test_opcheck_cpu():
    ts = [make_values(n, dt, "cpu", n) for n, dt in [(10, torch.float32), (7, torch.float64), (33, torch.bfloat16)]]
    torch.library.opcheck(torch.ops.wgan_ext.fused_clip_.default, (ts, -0.01, 0.01))
    ps = [torch.nn.Parameter(make_values(12, torch.float32, "cpu", 1))]
    torch.library.opcheck(torch.ops.wgan_ext.fused_clip_.default, (ps, -0.5, 0.5))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")
def test_opcheck_cuda():
    ts = [make_values(n, dt, "cuda", n) for n, dt in [(10, torch.float32), (7, torch.float16), (33, torch.bfloat16)]]
    torch.library.opcheck(torch.ops.wgan_ext.fused_clip_.default, (ts, -0.01, 0.01))


# ----------------------------------------------------------------------------- FusedClipper
@pytest.mark.parametrize("device,backend", _backends())
def test_fused_clipper_matches_and_refreshes(device, backend):
    critic = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 1)).to(device)
    clip = FusedClipper(critic, (-0.02, 0.03), backend=backend)
    assert len(clip.tensors) == 4
    with torch.no_grad():
        for i, p in enumerate(critic.parameters()):
            p.copy_(make_values(p.numel(), torch.float32, device, i).view_as(p))
    want = [clamp_ref(p.detach(), -0.02, 0.03) for p in critic.parameters()]
    clip()
    for p, w in zip(critic.parameters(), want):
        assert_bit_equal(p.detach(), w)
    critic.append(torch.nn.Linear(1, 3).to(device))
    with torch.no_grad():
        critic[2].weight.fill_(5.0)
    clip()
    assert critic[2].weight.max().item() == 5.0  # not collected yet
    clip.refresh()
    clip()
    assert critic[2].weight.max().item() == pytest.approx(0.03)


def test_fused_clipper_follows_data_swaps():
    # ClipPlan validates its CPU list once and re-checks only device/dtype per call: a
    # `p.data = ...` that changes the dtype must still be clipped right (through the op).
    critic = torch.nn.Linear(6, 3)
    clip = FusedClipper(critic, 0.01, backend="cpu")
    critic.weight.data = make_values(18, torch.float64, "cpu", 21).view(3, 6)
    critic.bias.data = make_values(3, torch.float32, "cpu", 22) * 100
    want_w = clamp_ref(critic.weight.detach(), -0.01, 0.01)
    want_b = clamp_ref(critic.bias.detach(), -0.01, 0.01)
    clip()
    assert_bit_equal(critic.weight.detach(), want_w)
    assert_bit_equal(critic.bias.detach(), want_b)


def _swap_new_storage(p):
    p.data = make_values(p.numel(), p.dtype, "cpu", 31).view_as(p) * 10


def _swap_strided(p):
    p.data = make_values(2 * p.numel(), p.dtype, "cpu", 32)[::2].view(p.shape) * 10


def _swap_transposed(p):
    p.data = (make_values(p.numel(), p.dtype, "cpu", 33) * 10).view(p.shape[::-1]).t()


def _swap_bigger(p):
    p.data = make_values(3 * p.numel(), p.dtype, "cpu", 34) * 10


def _resize_storage(p):
    # The storage reallocates in place: same StorageImpl, new data pointer (the old one is freed)
    p.data.untyped_storage().resize_(2 * p.untyped_storage().nbytes())
    with torch.no_grad():
        p.copy_(make_values(p.numel(), p.dtype, "cpu", 35).view_as(p) * 10)


def _set_(p):
    with torch.no_grad():
        p.set_(make_values(p.numel(), p.dtype, "cpu", 36).view_as(p) * 10)


@pytest.mark.parametrize("change", [_swap_new_storage, _swap_strided, _swap_transposed, _swap_bigger,
                                    _resize_storage, _set_])
def test_fused_clipper_follows_storage_changes(change):
    # A CPU ClipPlan caches the data pointers it writes through; every call must notice what
    # moved them, or it would clamp freed or foreign memory and leave the weight unclipped.
    critic = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 2))
    clip = FusedClipper(critic, 0.01, backend="cpu")
    clip()
    target = critic[0].weight
    change(target)
    with torch.no_grad():
        for i, p in enumerate(critic.parameters()):
            if p is not target:
                p.copy_(make_values(p.numel(), p.dtype, "cpu", 40 + i).view_as(p) * 10)
    want = [clamp_ref(p.detach(), -0.01, 0.01) for p in critic.parameters()]
    versions = [p._version for p in critic.parameters()]
    clip()
    for p, w, v in zip(critic.parameters(), want, versions):
        assert_bit_equal(p.detach(), w)
        assert p._version == v + 1
    clip()  # and again, from the rebuilt table
    for p, w in zip(critic.parameters(), want):
        assert_bit_equal(p.detach(), w)


def test_fused_clipper_refuses_a_swapped_in_negative_view_and_modifies_nothing():
    # A negative view's memory holds -values: clamping that memory directly would be wrong, so
    # the cached plan must send it to the op, whose dispatcher refuses it.
    critic = torch.nn.Linear(3, 2)
    clip = FusedClipper(critic, 0.01, backend="cpu")
    with torch.no_grad():
        critic.weight.mul_(100)
    critic.bias.data = torch.full((2,), 0.5)._neg_view()
    weight, bias = critic.weight.detach().clone(), critic.bias.detach().clone()
    with pytest.raises(RuntimeError, match="negation"):
        clip()
    assert_bit_equal(critic.weight.detach(), weight)
    assert_bit_equal(critic.bias.detach().resolve_neg(), bias.resolve_neg())
    # built on one directly, a plan never takes the direct path either
    assert torch.classes.wgan_ext.ClipPlan([torch.ones(2)._neg_view()]).spans() == -1
    assert torch.classes.wgan_ext.ClipPlan([torch.ones(2)]).spans() == 1


def test_fused_clipper_leaves_a_copy_on_write_clone_alone():
    # torch._lazy_clone shares the parameter's memory until one side writes: a cached pointer
    # written through directly would clamp the clone too.
    critic = torch.nn.Linear(8, 8)
    clip = FusedClipper(critic, 0.01, backend="cpu")
    clip()
    with torch.no_grad():
        critic.weight.copy_(make_values(64, torch.float32, "cpu", 50).view(8, 8) * 10)
    clone = torch._lazy_clone(critic.weight.detach())
    before = critic.weight.detach().clone()
    clip()
    assert_bit_equal(clone, before)
    assert_bit_equal(critic.weight.detach(), before.clamp(-0.01, 0.01))


def test_adjacent_tensors_are_one_span_and_clip_right():
    # Views laid end to end in one buffer are clamped as one span; order, dtype changes, gaps
    # and non-adjacent neighbours must still split them, and the values must match clamp_.
    _ext.require("cpu")
    buf = make_values(1000, torch.float32, "cpu", 60)
    other = make_values(50, torch.float64, "cpu", 61)
    views = [buf[0:100].view(10, 10), buf[100:130], buf[130:400].view(27, 10), buf[500:600]]
    ts = views + [other]
    want_buf = buf.clone()
    want_buf[:400].clamp_(-0.01, 0.01)
    want_buf[500:600].clamp_(-0.01, 0.01)
    want_other = clamp_ref(other, -0.01, 0.01)
    plan = torch.classes.wgan_ext.ClipPlan(ts)
    assert plan.spans() == 3  # [0, 400), [500, 600), the float64 tensor
    plan.clip_(-0.01, 0.01)
    assert_bit_equal(buf, want_buf)
    assert_bit_equal(other, want_other)
    assert torch.classes.wgan_ext.ClipPlan([views[1], views[0]]).spans() == 2  # out of order
    assert torch.classes.wgan_ext.ClipPlan([buf[:10], buf[10:20].view(torch.int32).view(torch.float32)]).spans() == 1


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_adjacent_tensors_merge_into_runs_across_chunks(dtype):
    # The CUDA launcher merges tensors adjacent in memory into one run and cuts runs into
    # 128 KB chunks, so chunks straddle tensor boundaries; a gap or a misaligned start splits.
    _ext.require("cuda")
    buf = make_values(300_000, dtype, "cuda", 80)
    views = [buf[0:100], buf[100:40_000].view(10, 3_990), buf[40_000:170_001], buf[170_001:170_002],
             buf[170_003:299_999]]
    want = buf.clone()
    for a, b in ((0, 170_002), (170_003, 299_999)):
        want[a:b].clamp_(-0.01, 0.01)
    torch.ops.wgan_ext.fused_clip_(views, -0.01, 0.01)
    assert_bit_equal(buf, want)


@pytest.mark.parametrize("device,backend", _backends())
def test_flatten_keeps_training_identical_and_clips_one_block(device, backend):
    # flatten=True moves every parameter into one buffer: values, shapes, requires_grad,
    # grads and optimizer state stay, and RMSprop + clip then runs bit for bit as without it.
    def make():
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.LayerNorm(16), torch.nn.ReLU(),
                                   torch.nn.Linear(16, 1)).to(device)

    plain, flat = make(), make()
    opts = [torch.optim.RMSprop(m.parameters(), lr=5e-2) for m in (plain, flat)]
    x = torch.randn(32, 5, device=device)
    for m, o in zip((plain, flat), opts):  # optimizer state exists before flattening
        (-m(x).mean()).backward()
        o.step()
    before = [(p.detach().clone(), p.grad.clone(), p.requires_grad) for p in flat.parameters()]
    clips = [FusedClipper(plain, 0.05, backend=backend), FusedClipper(flat, 0.05, backend=backend, flatten=True)]
    for p, (v, g, rg) in zip(flat.parameters(), before):
        assert_bit_equal(p.detach(), v)
        assert_bit_equal(p.grad, g)
        assert p.requires_grad == rg
    ptrs = [(p.data_ptr(), p.numel() * p.element_size()) for p in flat.parameters()]
    assert all(a + n == b for (a, n), (b, _) in zip(ptrs, ptrs[1:]))  # one block, in order
    if backend == "cpu":
        assert clips[1].spans() == [1]
    for _ in range(4):
        for m, o, clip in zip((plain, flat), opts, clips):
            o.zero_grad()
            (-m(x).mean()).backward()
            o.step()
            clip()
    for a, b in zip(plain.parameters(), flat.parameters()):
        assert_bit_equal(b.detach(), a.detach())
        assert b.abs().max() <= torch.tensor(0.05)
    restored = make()
    restored.load_state_dict(flat.state_dict())
    for a, b in zip(restored.parameters(), flat.parameters()):
        assert_bit_equal(a.detach(), b.detach())


def test_flatten_moves_only_whole_contiguous_owners():
    base = torch.zeros(40)
    sliced = torch.nn.Parameter(base[10:20])  # a view of a bigger storage
    transposed = torch.nn.Parameter(torch.zeros(4, 6).t())
    shared_a = torch.zeros(8)
    shared_b = shared_a.view(2, 4)  # another tensor on the same storage
    own = [torch.nn.Parameter(torch.full((3,), 0.5)), torch.nn.Parameter(torch.full((2, 2), -0.5))]
    ts = [sliced, own[0], transposed, shared_a, own[1], shared_b]
    storages = [t.untyped_storage().data_ptr() for t in ts]
    clip = FusedClipper(ts, 0.25, backend="cpu", flatten=True)
    for i in (0, 2, 3, 5):
        assert ts[i].untyped_storage().data_ptr() == storages[i]  # stayed
    assert own[0].data_ptr() + 3 * 4 == own[1].data_ptr()  # moved, adjacent
    assert own[0].untyped_storage().data_ptr() != storages[1]
    sliced.data.fill_(1.0)
    clip()
    assert torch.equal(base[10:20], torch.full((10,), 0.25))
    assert torch.equal(own[0].detach(), torch.full((3,), 0.25))
    assert torch.equal(own[1].detach(), torch.full((2, 2), -0.25))
    with pytest.raises(TypeError, match="flatten must be a bool"):
        FusedClipper(ts, 0.25, flatten="yes")


def test_flatten_then_moved_parameter_is_still_clipped():
    critic = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    clip = FusedClipper(critic, 0.01, backend="cpu", flatten=True)
    critic[1].weight.data = make_values(16, torch.float32, "cpu", 70).view(4, 4) * 10
    with torch.no_grad():
        for p in critic.parameters():
            p.mul_(100)
    want = [clamp_ref(p.detach(), -0.01, 0.01) for p in critic.parameters()]
    clip()
    for p, w in zip(critic.parameters(), want):
        assert_bit_equal(p.detach(), w)


# ----------------------------------------------------------------------------- torch.compile
def _rmsprop_and_clip(critic, square_avg, lr, c, alpha=0.99, eps=1e-8):
    # torch.optim.RMSprop's default update written with foreach ops: torch.optim's own step()
    # graph-breaks on purpose (torch/optim/optimizer.py, pytorch#104053), so a fullgraph
    # critic update spells the rule out.
    params = [p for p in critic.parameters()]
    grads = [p.grad for p in params]
    with torch.no_grad():
        torch._foreach_mul_(square_avg, alpha)
        torch._foreach_addcmul_(square_avg, grads, grads, value=1 - alpha)
        denom = torch._foreach_add(torch._foreach_sqrt(square_avg), eps)
        torch._foreach_addcdiv_(params, grads, denom, value=-lr)
    fused_clip_(critic, c)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_fullgraph_critic_update(backend):
    torch._dynamo.reset()

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    x = torch.randn(32, 4)
    eager, compiled = make(), make()
    opt = torch.optim.RMSprop(eager.parameters(), lr=5e-3)
    square_avg = [torch.zeros_like(p) for p in compiled.parameters()]
    fused_clip_([torch.zeros(1)], 0.01)  # load the kernel outside the trace
    update = torch.compile(_rmsprop_and_clip, fullgraph=True, backend=backend)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        (-eager(x).mean()).backward()
        opt.step()
        for p in eager.parameters():  # the reference: torch's optimizer, then a clamp loop
            p.data.clamp_(-0.01, 0.01)
        compiled.zero_grad(set_to_none=True)
        (-compiled(x).mean()).backward()
        update(compiled, square_avg, 5e-3, 0.01)
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert b.abs().max().item() <= 0.01
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_torch_compile_graph_contains_the_op():
    torch._dynamo.reset()
    fused_clip_([torch.zeros(1)], 0.01)
    critic = torch.nn.Linear(3, 2)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm

    torch.compile(lambda m: fused_clip_(m, 0.01), fullgraph=True, backend=capture)(critic)
    assert len(graphs) == 1
    assert "wgan_ext.fused_clip_" in graphs[0].code
    assert critic.weight.abs().max().item() <= 0.01


def test_public_names():
    assert wgan_ext.fused_clip_ is fused_clip_
    assert wgan_ext.FusedClipper is FusedClipper


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_torch_compile_fallback_keeps_16_bit_nan_bits(dtype):
    # The fallback's NaN bookkeeping must trace without a graph break (no data-dependent
    # branch under dynamo) and still keep every NaN's bits.
    torch._dynamo.reset()
    patterns = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    tensors = [patterns.clone(), patterns[:7].clone()]
    want = [clamp_ref(t, -0.5, 0.5) for t in tensors]

    def clip(ts):
        fused_clip_(ts, 0.5, backend="torch")

    torch.compile(clip, fullgraph=True, backend="aot_eager")(tensors)
    for g, w in zip(tensors, want):
        assert_bit_equal(g, w)
