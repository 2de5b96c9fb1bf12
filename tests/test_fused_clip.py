"""fused_clip_ against torch's own clamp_, on every backend available here (tests/_clip_util.py:
numbers bit for bit, NaN stays NaN, and the kernels keep NaN bits). CUDA cases run where a GPU is
visible and are skipped (with a reason) elsewhere.
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

from _clip_util import (  # noqa: E402
    DTYPES, HAS_CUDA, _backends, assert_bit_equal, assert_numbers_equal, check, clip_and_check, make_values,
)


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("device,backend", _backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_clamp(device, backend, dtype):
    sizes = [0, 1, 3, 7, 8, 9, 31, 1000, 4097, 70_001]
    clip_and_check([make_values(n, dtype, device, seed=i) for i, n in enumerate(sizes)], 0.01, backend)


@pytest.mark.parametrize("device,backend", _backends())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_every_16_bit_pattern(device, backend, dtype):
    # All 65,536 bit patterns, twice: in one long tensor (vector loops) and as 7-element tensors
    # (scalar tails). Signalling and quiet NaNs, both signs, both zeros, denormals, infinities.
    patterns = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype).to(device)
    assert int(patterns.isnan().sum()) == (2046 if dtype == torch.float16 else 254)
    clip_and_check([patterns.clone(), *patterns.clone().split(7)], (-0.5, 2.0), backend)


@pytest.mark.parametrize("device,backend", _backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bounds", [(0.0, 0.01), (-0.01, -0.0), (0.0, 0.0), (-0.0, 0.0)], ids=str)
def test_bounds_of_signed_zero_keep_the_sign_of_zero_as_clamp_does(device, backend, dtype, bounds):
    # clamp_ compares with < and >: -0.0 against a bound of 0.0 is kept, and +0.0 against -0.0.
    # A kernel that compared with <= would write the bound's zero instead. Long tensors for the
    # vector bodies, odd lengths for the tails.
    zeros = torch.tensor([0.0, -0.0, 1e-3, -1e-3, 0.0, -0.0, 0.5], dtype=torch.float64)
    tensors = [zeros.repeat(n).to(dtype).to(device) for n in (1, 37, 1001)]
    before = [t.clone() for t in tensors]
    fused_clip_(tensors, bounds, backend=backend)
    for g, b in zip(tensors, before):
        assert_bit_equal(g, b.clone().clamp_(*bounds))


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
    if isinstance(bounds, float) and dtype == torch.float16:
        bounds = min(bounds, 65504.0)
    clip_and_check([t], bounds, backend)


@pytest.mark.parametrize("device,backend", _backends())
def test_module_with_mixed_dtypes(device, backend):
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).to(device)
    critic[2].to(torch.bfloat16)
    before = [p.detach().clone() for p in critic.parameters()]
    fused_clip_(critic, 0.05, backend=backend)
    for p, b in zip(critic.parameters(), before):
        check(p.detach(), b, -0.05, 0.05, backend)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")
def test_cpu_and_cuda_two_devices_in_one_call():
    clip_and_check([make_values(1000, torch.float32, "cpu", 1), make_values(1000, torch.float16, "cuda", 2)],
                   0.01, "auto")


def test_tensors_on_two_devices_are_grouped_and_the_op_refuses_a_mixed_list():
    a = make_values(1000, torch.float32, "cpu", 1)
    m = torch.empty(1000, device="meta")  # a second device that exists on every machine
    want = a.clone().clamp_(-0.01, 0.01)
    fused_clip_([a, m], 0.01)
    assert_numbers_equal(a, want)
    before = a.clone()
    with pytest.raises(ValueError, match=r"all tensors must be on one device; tensors\[0\] is on cpu, tensors\[1\] on meta"):
        torch.ops.wgan_ext.fused_clip_([a, m], -0.001, 0.001)
    assert_bit_equal(a, before)


def test_the_op_refuses_a_list_spanning_devices_also_below_autograd():
    # Inference tensors skip the Autograd layer's check: the kernels (and the meta/fake kernel)
    # check for themselves.
    with torch.inference_mode():
        a = make_values(10, torch.float32, "cpu", 1)
        m = torch.empty(10, device="meta")
        before = a.clone()
        for ts in ([a, m], [m, a]):
            with pytest.raises(ValueError, match="all tensors must be on one device"):
                torch.ops.wgan_ext.fused_clip_(ts, -0.001, 0.001)
    assert_bit_equal(a, before)


def test_lo_equal_hi_and_asymmetric_pair():
    clip_and_check([make_values(500, torch.float32, "cpu", 3)], (0.25, 0.25), "cpu")
    clip_and_check([make_values(500, torch.float32, "cpu", 4)], (-0.5, 0.01), "cpu")


def test_accepts_a_single_tensor_and_a_generator():
    t = make_values(100, torch.float32, "cpu", 5)
    want = t.clone().clamp_(-0.01, 0.01)
    fused_clip_(t, 0.01)
    check(t, want, -0.01, 0.01, "torch")
    ts = [make_values(10, torch.float64, "cpu", s) for s in range(3)]
    before = [x.clone() for x in ts]
    fused_clip_((x for x in ts), 0.02)
    for g, b in zip(ts, before):
        check(g, b, -0.02, 0.02, "cpu")


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_overlapping_view_that_clamp_accepts_is_clamped_like_clamp(backend):
    # Rows that overlap in memory (clamp_ writes them, an expanded tensor it refuses).
    base = make_values(12, torch.float32, "cpu", 18) * 100
    want = base.clone()
    want.as_strided((3, 4), (2, 1)).clamp_(-0.01, 0.01)
    fused_clip_([base.as_strided((3, 4), (2, 1))], 0.01, backend=backend)
    assert_numbers_equal(base, want)


def test_many_tensors_of_many_sizes_cpu():
    g = torch.Generator().manual_seed(12)
    sizes = torch.randint(0, 3000, (2000,), generator=g).tolist()
    clip_and_check([make_values(n, torch.float32, "cpu", i) for i, n in enumerate(sizes)], 0.01, "cpu")


def test_adjacent_tensors_are_clamped_as_one_span_and_right():
    # Views laid end to end in one buffer are clamped as one span: out of order, mixed dtypes,
    # gaps and reinterpreted neighbours must still clamp exactly what each view covers.
    buf = make_values(1000, torch.float32, "cpu", 60)
    other = make_values(50, torch.float64, "cpu", 61)
    views = [buf[130:400].view(27, 10), buf[0:100].view(10, 10), buf[100:130], buf[500:600]]
    want = buf.clone()
    want[:400].clamp_(-0.01, 0.01)
    want[500:600].clamp_(-0.01, 0.01)
    before_other = other.clone()
    fused_clip_(views + [other], 0.01, backend="cpu")
    assert_numbers_equal(buf, want)
    check(other, before_other, -0.01, 0.01, "cpu")


# ----------------------------------------------------------------------------- CUDA specifics
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_many_tensors_misaligned_and_odd_sizes(dtype):
    # 6,002 tensors: more than one launch's worth of kernel-argument metadata.
    if not HAS_CUDA:
        pytest.skip("no CUDA device here")
    g = torch.Generator().manual_seed(16)
    sizes = torch.randint(0, 5000, (6000,), generator=g).tolist() + [300_001, 1 << 20]
    ts = []
    for i, n in enumerate(sizes):
        base = make_values(n + 3, dtype, "cuda", i)
        ts.append(base[i % 3: i % 3 + n])  # offsets 0..2 elements: some not 16-byte aligned
    clip_and_check(ts, 0.01, "cuda")


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
    want = x.clone().clamp_(-0.01, 0.01)
    fused_clip_([x], 0.01, backend="cuda")
    assert torch.equal(x.view(torch.int16), want.view(torch.int16))  # CUDA's clamp_ keeps NaN bits
    del want


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")
def test_cuda_adjacent_tensors_merge_into_runs_across_chunks():
    # Tensors adjacent in memory are one run, cut into 128 KB chunks that straddle tensor
    # boundaries; a gap or a misaligned start splits runs.
    for dtype in DTYPES:
        buf = make_values(300_000, dtype, "cuda", 80)
        views = [buf[0:100], buf[100:40_000].view(10, 3_990), buf[40_000:170_001], buf[170_001:170_002],
                 buf[170_003:299_999]]
        want = buf.clone()
        for a, b in ((0, 170_002), (170_003, 299_999)):
            want[a:b].clamp_(-0.01, 0.01)
        torch.ops.wgan_ext.fused_clip_(views, -0.01, 0.01)
        assert_bit_equal(buf, want)


@pytest.mark.cuda
def test_cuda_runs_on_the_current_stream():
    if not HAS_CUDA:
        pytest.skip("no CUDA device here")
    s = torch.cuda.Stream()
    x = make_values(1 << 22, torch.float32, "cuda", 17)
    want = x.clone().clamp_(-0.01, 0.01)
    torch.cuda.synchronize()
    with torch.cuda.stream(s):
        y = x.clone()  # queued on s
        fused_clip_([y], 0.01, backend="cuda")  # must run after the copy, on s
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
    before = w.detach().clone()
    fused_clip_([w], 0.01, backend=backend)
    assert w.requires_grad and w.is_leaf and w.grad_fn is None
    check(w.detach(), before, -0.01, 0.01, backend)
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
    before = emb.weight.detach().clone()
    fused_clip_(model, 0.01, backend=backend)
    assert emb.weight._version == v0 + 1
    # the same tensor listed twice by hand: still one write, one version bump
    fused_clip_([emb.weight, head.weight, emb.weight], 0.01, backend=backend)
    assert emb.weight._version == v0 + 2
    check(emb.weight.detach(), before, -0.01, 0.01, backend)


@pytest.mark.parametrize("device,backend", _backends())
def test_empty_inputs(device, backend):
    fused_clip_(torch.nn.Sequential(), 0.01, backend=backend)  # a module without parameters
    fused_clip_([], 0.01, backend=backend)
    e = torch.empty(0, 3, device=device)
    fused_clip_([e], 0.01, backend=backend)
    assert e.shape == (0, 3)
    clip_and_check([torch.empty(0, device=device), make_values(10, torch.float32, device, 11),
                    torch.empty(5, 0, device=device)], 0.01, backend)


@pytest.mark.parametrize("device,backend", _backends())
def test_uninitialized_lazy_parameters_are_skipped_like_the_loop_skips_them(device, backend):
    critic = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.LazyLinear(2)).to(device)
    with torch.no_grad():
        critic[0].weight.mul_(100)
    before = critic[0].weight.detach().clone()
    fused_clip_(critic, 0.01, backend=backend)  # the loop: nothing to clip in the lazy layer yet
    FusedClipper(critic, 0.01, backend=backend)()
    check(critic[0].weight.detach(), before, -0.01, 0.01, backend)
    critic(torch.randn(5, 3, device=device))  # materializes the lazy layer
    with torch.no_grad():
        critic[2].weight.mul_(100)
    before = critic[2].weight.detach().clone()
    fused_clip_(critic, 0.01, backend=backend)
    check(critic[2].weight.detach(), before, -0.01, 0.01, backend)


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
        (10**400, ValueError, "finite"),  # an int beyond any float: not OverflowError
        ((-(10**400), 0.01), ValueError, "finite"),
        (torch.tensor(True), TypeError, "real number"),  # as True is refused
        (torch.tensor(1j), TypeError, "real number"),
    ],
)
def test_bad_bounds_raise_and_modify_nothing(c, exc, match):
    good, copy = _victims()
    with pytest.raises(exc, match=match):
        fused_clip_([good], c)
    assert_bit_equal(good, copy)


def test_a_one_element_real_tensor_is_a_bound():
    good, copy = _victims()
    fused_clip_([good], torch.tensor(0.01, dtype=torch.float64))
    assert_bit_equal(good, copy.clamp(-0.01, 0.01))


@pytest.mark.parametrize(
    "bad,exc,match",
    [
        (torch.arange(5), TypeError, r"tensors\[1\] has dtype torch.int64"),
        (torch.ones(3, dtype=torch.bool), TypeError, r"tensors\[1\] has dtype torch.bool"),
        (torch.ones(3, dtype=torch.complex64), TypeError, r"tensors\[1\] has dtype torch.complex64"),
        (torch.eye(3).to_sparse(), TypeError, r"tensors\[1\] has layout torch.sparse_coo"),
        ("weight", TypeError, r"tensors\[1\] must be a tensor or parameter, got str"),
        (None, TypeError, r"tensors\[1\] must be a tensor or parameter, got NoneType"),
        (torch.full((4,), 0.5)._neg_view(), TypeError, r"tensors\[1\] is a negative view"),
        (torch.ones(1).expand(5), ValueError, r"tensors\[1\] has elements that share memory"),
        (torch._efficientzerotensor(3), RuntimeError, r"tensors\[1\] is a ZeroTensor"),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "cpu", "torch"])
def test_bad_tensors_raise_and_modify_nothing(bad, exc, match, backend):
    good, copy = _victims()
    with pytest.raises(exc, match=match):
        fused_clip_([good, bad], 0.01, backend=backend)
    assert_bit_equal(good, copy)  # the valid tensor before the bad one is untouched


@pytest.mark.parametrize("backend", ["auto", "cpu", "torch"])
def test_bound_that_overflows_a_later_tensor_raises_before_any_write(backend):
    # clamp_ refuses to convert c = 1e5 to float16; the float32 tensor listed first must not
    # have been clamped when that surfaces.
    good, copy = _victims()
    h = make_values(10, torch.float16, "cpu", 15)
    h_before = h.clone()
    with pytest.raises(RuntimeError, match="overflow"):
        h.clone().clamp_(-1e5, 1e5)
    with pytest.raises(ValueError, match=r"cannot be converted to torch.float16 \(tensors\[1\]\) without overflow"):
        fused_clip_([good, h], 1e5, backend=backend)
    assert_bit_equal(good, copy)
    assert_bit_equal(h, h_before)
    with pytest.raises(ValueError, match=r"torch.float32 \(tensors\[0\]\) without overflow"):
        torch.ops.wgan_ext.fused_clip_([good, h], -1e300, 1e300)  # the op checks for itself
    assert_bit_equal(good, copy)


def test_one_dtype_table_every_unsupported_dtype_raises_in_cpp():
    # The op's own check (C++) names the dtype for every dtype outside the supported four, and
    # accepts exactly those four.
    dtypes = [getattr(torch, n) for n in dir(torch) if isinstance(getattr(torch, n), torch.dtype)]
    for dtype in set(dtypes):
        try:
            t = torch.zeros(3, dtype=dtype)
        except (RuntimeError, TypeError):
            continue  # not constructible on CPU
        if dtype in wgan_ext.ops.SUPPORTED_DTYPES:
            torch.ops.wgan_ext.fused_clip_([t], -1.0, 1.0)
        else:
            with pytest.raises(TypeError, match=rf"tensors\[0\] has dtype {dtype}"):
                torch.ops.wgan_ext.fused_clip_([t], -1.0, 1.0)


def test_bad_critic_and_backend():
    with pytest.raises(TypeError, match="critic must be an nn.Module, a tensor or an iterable"):
        fused_clip_(3.0, 0.01)
    good, copy = _victims()
    with pytest.raises(ValueError, match="backend must be one of"):
        fused_clip_([good], 0.01, backend="triton")
    if _ext.is_loaded("cuda") or _ext.available("cuda"):
        with pytest.raises(ValueError, match=r"backend='cuda' clamps cuda tensors, got tensors on cpu"):
            fused_clip_([good], 0.01, backend="cuda")
    with pytest.raises(ValueError, match=r"backend='cpu' clamps cpu tensors, got tensors on meta"):
        fused_clip_([good, torch.empty(3, device="meta")], 0.01, backend="cpu")
    assert_bit_equal(good, copy)


class _Refusing(torch.Tensor):
    """A tensor subclass whose __torch_dispatch__ raises for every op."""

    @staticmethod
    def __new__(cls, elem):
        return torch.Tensor._make_wrapper_subclass(cls, elem.shape, dtype=elem.dtype, device=elem.device)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"_Refusing does not implement {func}")


def test_a_subclass_that_raises_in_dispatch_leaves_the_plain_tensors_untouched():
    good, copy = _victims()
    with pytest.raises(RuntimeError, match="_Refusing does not implement"):
        fused_clip_([good, _Refusing(torch.zeros(3))], 0.01)
    assert_bit_equal(good, copy)
    assert good._version == 0


def test_plain_tensors_are_not_handed_to_a_subclass_dispatch():
    # Same device, different kinds: the subclass's __torch_dispatch__ must see only itself.
    two_tensor = pytest.importorskip("torch.testing._internal.two_tensor")
    plain = make_values(20, torch.float32, "cpu", 2) * 100
    a, b = make_values(20, torch.float32, "cpu", 3) * 100, make_values(20, torch.float32, "cpu", 4) * 100
    pair = two_tensor.TwoTensor(a.clone(), b.clone())
    before = plain.clone()
    fused_clip_([plain, pair], 0.01)
    check(plain, before, -0.01, 0.01, "cpu")
    assert plain._version == 1  # clamped once, not once more per inner tensor of the pair
    assert_numbers_equal(pair.a, a.clamp(-0.01, 0.01))
    assert_numbers_equal(pair.b, b.clamp(-0.01, 0.01))


def test_bfloat16_denormals_under_flush_denormal_match_clamp():
    # torch.set_flush_denormal(True) makes ATen's bfloat16 clamp_ flush denormals (it computes in
    # float); the kernel's integer compare would not, so such calls take ATen's path.
    patterns = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        for bounds in ((0.0, 1.0), (-1.0, 1.0)):
            t = patterns.clone()
            fused_clip_([t], bounds, backend="cpu")
            assert_numbers_equal(t, patterns.clone().clamp_(*bounds))
    finally:
        torch.set_flush_denormal(False)


def test_inference_tensor_outside_inference_mode_raises_and_modifies_nothing():
    with torch.inference_mode():
        inf_t = make_values(10, torch.float32, "cpu", 14)
    good, copy = _victims()
    before = inf_t.clone()
    for backend in ("cpu", "torch"):
        with pytest.raises(RuntimeError, match="inference tensor"):
            fused_clip_([good, inf_t], 0.01, backend=backend)
        assert_bit_equal(good, copy)
        assert_bit_equal(inf_t, before)
    with torch.inference_mode():  # inside InferenceMode it is allowed, as for clamp_
        fused_clip_([inf_t], 0.01, backend="cpu")
    assert_numbers_equal(inf_t, before.clamp(-0.01, 0.01))


# ----------------------------------------------------------------------------- backends
def test_fallback_warns_once_with_reason_and_matches(monkeypatch):
    monkeypatch.setitem(_ext._status, "cpu", _ext.BackendStatus("cpu", reason="pretend the build failed"))
    monkeypatch.setattr(_ext, "_warned", set())
    ts = [make_values(300, torch.float32, "cpu", s) for s in range(3)]
    before = [t.clone() for t in ts]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fused_clip_(ts, 0.01)
        fused_clip_(ts, 0.01)
    msgs = [str(x.message) for x in w if "compiled CPU kernels" in str(x.message)]
    assert len(msgs) == 1 and "pretend the build failed" in msgs[0]
    for a, b in zip(ts, before):
        check(a, b, -0.01, 0.01, "torch")
    with pytest.raises(RuntimeError, match="pretend the build failed"):
        fused_clip_(ts, 0.01, backend="cpu")


def test_compiled_cpu_kernel_is_loaded_here():
    # CI builds the extension; a silent fallback would make every 'cpu-kernel' test vacuous.
    st = _ext.status("cpu")
    assert st.loaded, st.reason
    assert torch._C._dispatch_has_kernel_for_dispatch_key("wgan_ext::fused_clip_", "CPU")


@pytest.mark.slow  # a fresh process per case
@pytest.mark.parametrize("first", ["status('cuda')", "available('cuda')", "status('cpu')"])
def test_backend_status_in_a_fresh_process(first):
    # A fresh interpreter, so nothing is loaded yet: asking for CUDA first loads "cpu" inside the
    # "cuda" load, under the same lock, which must not wait on itself. The answers must match
    # this process's.
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


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_torch_compile_graph_contains_the_op_or_the_fallback(backend):
    torch._dynamo.reset()
    fused_clip_([torch.zeros(1)], 0.01)
    critic = torch.nn.Linear(3, 2)
    with torch.no_grad():
        critic.weight.mul_(100)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm

    clipper = FusedClipper(critic, 0.01, backend=backend)
    torch.compile(lambda m: fused_clip_(m, 0.01, backend=backend), fullgraph=True, backend=capture)(critic)
    torch.compile(lambda: clipper(), fullgraph=True, backend=capture)()
    assert len(graphs) == 2
    want = "wgan_ext.fused_clip_" if backend == "auto" else "_foreach_clamp_min_"
    assert all(want in g.code for g in graphs)
    assert critic.weight.abs().max().item() <= 0.01


def test_public_names():
    assert wgan_ext.fused_clip_ is fused_clip_
    assert wgan_ext.FusedClipper is FusedClipper
