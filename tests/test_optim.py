"""ClippedRMSprop and wgan_ext::rmsprop_clip_ against torch.optim.RMSprop followed by clamp_.

The reference is always an independent run: ``torch.optim.RMSprop(foreach=False)`` (its
single-tensor path), then ``p.clamp_(lo, hi)`` for every parameter, on copies of the same
parameters and gradients. On the CPU every value is compared bit for bit (NaN positions must
agree; NaN payloads are not compared): parameters and every state tensor, after every step.
On CUDA the comparison is within the documented ulp bound (see ``CUDA_ULPS``), plus exact
self-consistency (a captured graph replayed == eager steps).
"""

from __future__ import annotations

import copy
import itertools
import os
import subprocess
import sys
import threading
import warnings

import pytest
import torch
from _clip_util import HAS_CUDA, INT_VIEW

import wgan_ext
from wgan_ext import ClippedRMSprop, optim as wopt

STATE_KEYS = ("square_avg", "momentum_buffer", "grad_avg")
C = 0.05


def kernel_here(device: str = "cpu") -> bool:
    return wopt.kernel_available(device)


def assert_same(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    """Bit-identical, except that two NaNs are equal whatever their payloads."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    g, w = got.detach().cpu(), want.detach().cpu()
    nan_g, nan_w = g.isnan(), w.isnan()
    assert torch.equal(nan_g, nan_w), f"{what}: NaN positions differ"
    iv = INT_VIEW[g.element_size()]
    gb, wb = g.contiguous().view(iv)[~nan_g], w.contiguous().view(iv)[~nan_w]
    if not torch.equal(gb, wb):
        diff = (gb != wb).nonzero()[:5].flatten().tolist()
        raise AssertionError(f"{what}: {int((gb != wb).sum())} of {gb.numel()} values differ, "
                             f"e.g. {[g[~nan_g][i].item() for i in diff]} vs "
                             f"{[w[~nan_w][i].item() for i in diff]}")


# ------------------------------------------------------------------ the reference harness
def make_params(dtype: torch.dtype, device: str, seed: int = 0) -> list:
    """Parameters covering the kernel's paths: sizes around vector widths and ATen's 32768
    grain (a tensor split between threads), a channels_last tensor (dense, not contiguous),
    a strided slice (not dense: the kernels hand it to ATen's ops), and an empty one."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in (1, 31, 33, 1000, 40_001):
        out.append(torch.randn(n, generator=g, dtype=torch.float64) * 0.03)
    out.append(torch.randn(13, 17, generator=g, dtype=torch.float64) * 0.03)
    out.append(torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64).mul(0.03)
               .contiguous(memory_format=torch.channels_last))
    out.append((torch.randn(12, 20, generator=g, dtype=torch.float64) * 0.03)[:, ::2])
    out.append(torch.empty(0, dtype=torch.float64))
    return [torch.nn.Parameter(t.to(dtype=dtype, device=device)) for t in out]


NO_GRAD, SOMETIMES = 3, 4  # indices: never a gradient (only clipped); a gradient on even steps
POISON = 1                 # gets NaN and inf gradient elements on some steps


def make_grads(params: list, step: int, gen: torch.Generator) -> list:
    """Gradients of step ``step``: magnitudes from 1e-4 to 10, a step of exact zeros, NaN and
    inf entries in one tensor, None for the gradient-free parameters."""
    scale = 10.0 ** ((step * 7) % 6 - 4)
    grads = []
    for i, p in enumerate(params):
        if i == NO_GRAD or (i == SOMETIMES and step % 2):
            grads.append(None)
            continue
        gr = (torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale).to(p.dtype)
        if step % 37 == 5:
            gr.zero_()
        if i == POISON and step in (120, 300):
            flat = gr.view(-1)
            flat[3], flat[7] = float("nan"), float("inf")
            flat[9] = -float("inf")
        gr = gr.to(p.device)
        if p.dim() == 4:
            gr = gr.contiguous(memory_format=torch.channels_last)  # laid out like the parameter
        grads.append(gr)
    return grads


def run_pair(dtype, device, *, steps, fused, lr=1e-2, alpha=0.99, eps=1e-8, centered=False,
             momentum=0.0, weight_decay=0.0, maximize=False, clip=C, compare=assert_same,
             resync=False):
    """Run ClippedRMSprop and RMSprop(foreach=False) + clamp_ side by side; ``compare`` every
    parameter and state tensor after every step. ``resync``: start each step from the
    reference's values (for a per-step bound instead of a trajectory)."""
    ref_params = make_params(dtype, device)
    params = [torch.nn.Parameter(p.detach().clone()) for p in ref_params]
    kw = dict(lr=lr, alpha=alpha, eps=eps, centered=centered, momentum=momentum,
              weight_decay=weight_decay, maximize=maximize)
    ref = torch.optim.RMSprop(ref_params, foreach=False, **kw)
    opt = ClippedRMSprop(params, clip=clip, fused=fused, **kw)
    lo, hi = (-clip, clip) if not isinstance(clip, tuple) else clip
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        for p, q, gr in zip(ref_params, params, make_grads(ref_params, step, gen)):
            p.grad = gr
            q.grad = None if gr is None else gr.clone()
        before = [p.detach().clone() for p in ref_params]
        before_state = [{k: v.clone() for k, v in ref.state.get(p, {}).items()} for p in ref_params]
        ref.step()
        with torch.no_grad():
            for p in ref_params:
                p.clamp_(lo, hi)
        opt.step()
        for i, (p, q) in enumerate(zip(ref_params, params)):
            compare(q, p, f"step {step} param {i}", before[i])
            rs, ms = ref.state.get(p, {}), opt.state.get(q, {})
            assert set(rs) == set(ms), f"step {step} param {i}: state keys {set(ms)} != {set(rs)}"
            for key in STATE_KEYS:
                if key in rs:
                    compare(ms[key], rs[key], f"step {step} param {i} {key}",
                            before_state[i].get(key))
            if rs:
                assert ms["step"].item() == rs["step"].item()
                assert ms["step"].dtype == rs["step"].dtype
        if resync:
            with torch.no_grad():
                for p, q in zip(ref_params, params):
                    q.copy_(p)
                    for key in STATE_KEYS:
                        if key in ref.state.get(p, {}):
                            opt.state[q][key].copy_(ref.state[p][key])
    return ref_params, params


def exact(got, want, what, before=None):  # noqa: ARG001
    assert_same(got, want, what)


CONFIGS = [dict(centered=c, momentum=m, weight_decay=w, maximize=x)
           for c, m, w, x in itertools.product((False, True), (0.0, 0.9), (0.0, 0.1), (False, True))]
CONFIG_IDS = ["c{centered:d}-m{momentum}-wd{weight_decay}-max{maximize:d}".format(**c) for c in CONFIGS]


@pytest.mark.skipif(not kernel_here(), reason="the compiled CPU kernel is unavailable here")
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_cpu_kernel_is_bit_identical_to_rmsprop_and_clamp_over_500_steps(dtype, config):
    run_pair(dtype, "cpu", steps=500, fused=True, compare=exact, **config)


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[-1], CONFIGS[6]], ids=[CONFIG_IDS[0], CONFIG_IDS[-1], CONFIG_IDS[6]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fallback_is_bit_identical_to_rmsprop_and_clamp(dtype, config):
    run_pair(dtype, "cpu", steps=200, fused=False, compare=exact, **config)


@pytest.mark.skipif(not kernel_here(), reason="the compiled CPU kernel is unavailable here")
@pytest.mark.parametrize("threads", [1, 3])
def test_cpu_kernel_exact_for_other_thread_counts(threads):
    # ATen's 16-bit loops leave a scalar tail in each thread's range: the kernel mimics the
    # ranges of the current thread count.
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for dtype in (torch.bfloat16, torch.float32):
            run_pair(dtype, "cpu", steps=60, fused=True, compare=exact, momentum=0.9,
                     weight_decay=0.1, centered=True)
    finally:
        torch.set_num_threads(old)


@pytest.mark.slow
@pytest.mark.skipif(not kernel_here(), reason="the compiled CPU kernel is unavailable here")
@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_cpu_kernel_exact_under_other_aten_cpu_capabilities(capability):
    # DEFAULT: ATen's kernels fuse no multiply-add; AVX2: they do, as AVX-512's. The kernel asks
    # ATen which one runs.
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT" and capability == "avx2":
        pytest.skip("this CPU has no AVX2")
    code = (
        "import sys, torch; sys.path.insert(0, 'tests'); import test_optim as t\n"
        "for dt in (torch.float32, torch.float64, torch.float16):\n"
        "    for cfg in (t.CONFIGS[0], t.CONFIGS[-1], t.CONFIGS[6]):\n"
        "        t.run_pair(dt, 'cpu', steps=80, fused=True, compare=t.exact, **cfg)\n"
        "print('capability', torch.backends.cpu.get_cpu_capability())\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"capability {capability.upper()}" in out.stdout


@pytest.mark.skipif(not kernel_here(), reason="the compiled CPU kernel is unavailable here")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[-1]], ids=[CONFIG_IDS[0], CONFIG_IDS[-1]])
def test_every_16_bit_pattern_as_parameter_state_and_gradient(dtype, config):
    # All 65,536 bit patterns (subnormals, infinities, NaNs, the largest values, whose squares
    # overflow) in every role, with bounds wide enough to keep most of them: the kernel's own
    # 16-bit conversions and roundings against ATen's.
    patterns = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    gen = torch.Generator().manual_seed(0)
    shuffled = lambda: patterns[torch.randperm(patterns.numel(), generator=gen)]  # noqa: E731
    big = float(torch.finfo(dtype).max)
    ref = torch.nn.Parameter(patterns.clone())
    mine = torch.nn.Parameter(patterns.clone())
    kw = dict(lr=0.5, **config)
    ropt = torch.optim.RMSprop([ref], foreach=False, **kw)
    opt = ClippedRMSprop([mine], clip=(-big / 2, big), **kw)
    for k in range(3):
        grad = shuffled()
        ref.grad, mine.grad = grad.clone(), grad.clone()
        if k == 0:  # start from arbitrary states (a square average is not negative)
            st = ropt.state[ref]
            st["step"] = torch.tensor(0.0)
            st["square_avg"] = shuffled().abs()
            if config["momentum"]:
                st["momentum_buffer"] = shuffled()
            if config["centered"]:
                st["grad_avg"] = shuffled()
            opt.state[mine] = {key: v.clone() for key, v in st.items()}
        ropt.step()
        with torch.no_grad():
            ref.clamp_(-big / 2, big)
        opt.step()
        assert_same(mine, ref, f"step {k} param")
        for key in STATE_KEYS:
            if key in ropt.state[ref]:
                assert_same(opt.state[mine][key], ropt.state[ref][key], f"step {k} {key}")
    assert ref.isfinite().float().mean() > 0.5  # most values stay numbers


def test_tuple_clip_and_parameters_without_gradient_are_clipped():
    params = [torch.nn.Parameter(torch.linspace(-1, 1, 11)) for _ in range(2)]
    opt = ClippedRMSprop(params, lr=0.1, clip=(-0.2, 0.5))
    params[0].grad = torch.ones(11)  # params[1] has no gradient: clipped, no state
    opt.step()
    ref = torch.nn.Parameter(torch.linspace(-1, 1, 11))
    ropt = torch.optim.RMSprop([ref], lr=0.1, foreach=False)
    ref.grad = torch.ones(11)
    ropt.step()
    assert_same(params[0], ref.detach().clamp(-0.2, 0.5))
    assert_same(params[1], torch.linspace(-1, 1, 11).clamp(-0.2, 0.5))
    assert params[1] not in opt.state
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        params[0].fill_(3.0)
    opt.step()  # no gradient anywhere: still clipped, steps unchanged
    assert torch.equal(params[0], torch.full((11,), 0.5))
    assert opt.state[params[0]]["step"].item() == 1


# ------------------------------------------------------------------ torch.optim compatibility
def _trained(opt_cls, params, steps, seed, **kw):
    opt = opt_cls(params, **kw)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        if opt_cls is torch.optim.RMSprop:
            with torch.no_grad():
                for p in params:
                    p.clamp_(-C, C)
    return opt


@pytest.mark.parametrize("direction", ["to_rmsprop", "from_rmsprop"])
def test_state_dict_loads_either_way_and_training_continues_identically(direction):
    kw = dict(lr=1e-2, momentum=0.9, centered=True, weight_decay=0.01)
    base = [torch.nn.Parameter(torch.randn(50) * 0.03), torch.nn.Parameter(torch.randn(3, 4) * 0.03)]
    first = (ClippedRMSprop, torch.optim.RMSprop)[direction == "from_rmsprop"]
    second = (torch.optim.RMSprop, ClippedRMSprop)[direction == "from_rmsprop"]
    extra = lambda cls: dict(clip=C) if cls is ClippedRMSprop else dict(foreach=False)  # noqa: E731
    a = [torch.nn.Parameter(p.detach().clone()) for p in base]
    opt_a = _trained(first, a, 20, seed=0, **kw, **extra(first))
    # Continue the same run with the other class, from a state dict...
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_b = second(b, **kw, **extra(second))
    sd = copy.deepcopy(opt_a.state_dict())
    assert set(sd["state"][0]) == {"step", "square_avg", "momentum_buffer", "grad_avg"}
    opt_b.load_state_dict(sd)
    # ... and with the first class, uninterrupted.
    gen_a, gen_b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    for _ in range(20):
        for p in a:
            p.grad = torch.randn(p.shape, generator=gen_a)
        for p in b:
            p.grad = torch.randn(p.shape, generator=gen_b)
        for opt, ps in ((opt_a, a), (opt_b, b)):
            opt.step()
            if isinstance(opt, torch.optim.RMSprop):
                with torch.no_grad():
                    for p in ps:
                        p.clamp_(-C, C)
    for p, q in zip(a, b):
        assert_same(q, p)
        for key in ("square_avg", "momentum_buffer", "grad_avg"):
            assert_same(opt_b.state[q][key], opt_a.state[p][key])
        assert opt_b.state[q]["step"].item() == opt_a.state[p]["step"].item() == 40
    if second is ClippedRMSprop:
        assert opt_b.param_groups[0]["clip"] == C  # RMSprop's dict has no clip: ours is kept
        assert opt_b.bounds == [(-C, C)]


def test_state_dict_keys_and_groups_match_rmsprop():
    p = torch.nn.Parameter(torch.zeros(3))
    q = torch.nn.Parameter(torch.zeros(3))
    mine = ClippedRMSprop([p], lr=1e-3, momentum=0.5)
    ref = torch.optim.RMSprop([q], lr=1e-3, momentum=0.5)
    p.grad, q.grad = torch.ones(3), torch.ones(3)
    mine.step()
    ref.step()
    sd, rsd = mine.state_dict(), ref.state_dict()
    assert set(sd["param_groups"][0]) == set(rsd["param_groups"][0]) | {"clip", "fused"}
    assert set(sd["state"][0]) == set(rsd["state"][0])
    step, rstep = sd["state"][0]["step"], rsd["state"][0]["step"]
    assert (step.dtype, step.device, step.shape) == (rstep.dtype, rstep.device, rstep.shape)


def test_lr_scheduler_drives_the_fused_step():
    base = [torch.nn.Parameter(torch.randn(100) * 0.03)]
    a = [torch.nn.Parameter(base[0].detach().clone())]
    opt = ClippedRMSprop(a, lr=0.1, clip=C)
    ref = torch.optim.RMSprop(base, lr=0.1, foreach=False)
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in (opt, ref)]
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        gr = torch.randn(100, generator=gen)
        a[0].grad, base[0].grad = gr.clone(), gr.clone()
        opt.step()
        ref.step()
        with torch.no_grad():
            base[0].clamp_(-C, C)
        for s in scheds:
            s.step()
        assert_same(a[0], base[0])
    assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"] == 0.1 * 0.5 ** 4


def test_tensor_lr_matches_float_lr():
    ps = [torch.nn.Parameter(torch.randn(64) * 0.03) for _ in range(2)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    a = ClippedRMSprop(ps, lr=torch.tensor(3e-3), momentum=0.9)
    b = ClippedRMSprop(qs, lr=3e-3, momentum=0.9)
    for k in range(5):
        for p, q in zip(ps, qs):
            p.grad = torch.full((64,), 0.1 * (k + 1))
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q in zip(ps, qs):
        assert_same(p, q)


def test_closure_is_called_with_grad_enabled_and_its_loss_returned():
    w = torch.nn.Parameter(torch.tensor([0.5, -0.5]))
    opt = ClippedRMSprop([w], lr=0.1, clip=0.2)
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert calls == [True] and loss.item() == pytest.approx(0.5)
    assert torch.all(w.abs() <= 0.2)


def test_maximize_equals_minimizing_the_negated_objective():
    a = torch.nn.Parameter(torch.randn(40) * 0.03)
    b = torch.nn.Parameter(a.detach().clone())
    oa = ClippedRMSprop([a], lr=1e-2, maximize=True)
    ob = ClippedRMSprop([b], lr=1e-2)
    g = torch.randn(40)
    a.grad, b.grad = g.clone(), -g
    oa.step()
    ob.step()
    assert_same(a, b)


def test_zero_grad_and_param_groups_with_their_own_clip():
    a = torch.nn.Parameter(torch.full((4,), 2.0))
    b = torch.nn.Parameter(torch.full((4,), 2.0))
    opt = ClippedRMSprop([{"params": [a]}, {"params": [b], "clip": (-1.0, 0.3)}], lr=0.0)
    assert opt.bounds == [(-0.01, 0.01), (-1.0, 0.3)]
    a.grad, b.grad = torch.ones(4), torch.ones(4)
    opt.zero_grad()
    assert a.grad is None and b.grad is None
    opt.step()
    assert torch.equal(a, torch.full((4,), 0.01)) and torch.equal(b, torch.full((4,), 0.3))
    assert opt.bounds_for([a]) == (-0.01, 0.01)
    assert opt.bounds_for([a, b]) is None  # the groups disagree
    assert opt.bounds_for([a, torch.zeros(1)]) is None  # not a parameter of this optimizer


def test_mixed_dtypes_in_one_group():
    ps = [torch.nn.Parameter(torch.randn(300, dtype=dt) * 0.03)
          for dt in (torch.float32, torch.float64, torch.bfloat16)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt = ClippedRMSprop(ps, lr=1e-2, momentum=0.5)
    ref = torch.optim.RMSprop(qs, lr=1e-2, momentum=0.5, foreach=False)
    for _ in range(10):
        for p, q in zip(ps, qs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
        with torch.no_grad():
            for q in qs:
                q.clamp_(-0.01, 0.01)
        for p, q in zip(ps, qs):
            assert_same(p, q)


def test_step_bumps_version_counters_like_inplace_ops():
    w = torch.nn.Parameter(torch.randn(5) * 0.01)
    opt = ClippedRMSprop([w], lr=1e-3)
    y = (w * w).sum()  # saves w for backward
    w.grad = torch.ones(5)
    v = w._version
    opt.step()
    assert w._version > v
    assert opt.state[w]["square_avg"]._version > 0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_parameters_on_two_devices_are_stepped_per_device():
    # meta has no kernel: its parameters take torch's RMSprop + fused_clip_, the CPU ones the op.
    a = torch.nn.Parameter(torch.full((3,), 0.5))
    b = torch.nn.Parameter(torch.zeros(3, device="meta"))
    opt = ClippedRMSprop([a, b], lr=0.1, clip=0.2)
    a.grad, b.grad = torch.ones(3), torch.ones(3, device="meta")
    opt.step()
    ref = torch.nn.Parameter(torch.full((3,), 0.5))
    ref.grad = torch.ones(3)
    torch.optim.RMSprop([ref], lr=0.1, foreach=False).step()
    assert_same(a, ref.detach().clamp(-0.2, 0.2))
    assert opt.state[b]["square_avg"].is_meta and opt.state[b]["step"].item() == 1


def test_fused_true_without_kernel_for_the_device_raises():
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    with pytest.raises(RuntimeError, match="fused=True"):
        ClippedRMSprop([p], fused=True)


# ------------------------------------------------------------------ argument errors
@pytest.mark.parametrize("kw,match", [
    (dict(lr=-1e-3), "Invalid learning rate: -0.001"),
    (dict(alpha=-0.5), "Invalid alpha value: -0.5"),
    (dict(eps=-1.0), "Invalid epsilon value: -1.0"),
    (dict(momentum=-0.1), "Invalid momentum value: -0.1"),
    (dict(weight_decay=-2.0), "Invalid weight_decay value: -2.0"),
    (dict(clip=0.0), "clip must be > 0"),
    (dict(clip=-0.01), "clip must be > 0"),
    (dict(clip=float("inf")), "clip must be finite"),
    (dict(clip=float("nan")), "clip must be finite"),
    (dict(clip=(0.5, -0.5)), "needs lo <= hi"),
    (dict(clip=(float("-inf"), 1.0)), "must be finite"),
    (dict(differentiable=True), "differentiable=True"),
])
def test_bad_hyperparameters_raise_value_error_naming_the_value(kw, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(")):
        ClippedRMSprop([torch.nn.Parameter(torch.zeros(2))], **kw)


def test_bad_param_groups_are_refused_before_they_are_added():
    opt = ClippedRMSprop([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="clip must be > 0"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "clip": -1.0})
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": -1.0})
    assert len(opt.param_groups) == 1
    with pytest.raises(TypeError, match="clip must be a real number"):
        ClippedRMSprop([torch.nn.Parameter(torch.zeros(2))], clip="0.01")
    with pytest.raises(TypeError, match="dtype torch.complex64"):
        ClippedRMSprop([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))])
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="appears twice"):
        ClippedRMSprop([p, p])


def test_a_clip_edited_into_a_bad_value_raises_before_any_write():
    p = torch.nn.Parameter(torch.full((3,), 0.5))
    opt = ClippedRMSprop([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.param_groups[0]["clip"] = float("nan")
    with pytest.raises(ValueError, match="clip must be finite"):
        opt.step()
    assert torch.equal(p, torch.full((3,), 0.5))


# ------------------------------------------------------------------ the op itself
def op_args(n=(300, 300), dtype=torch.float32, centered=True, momentum=0.9):
    ps = [torch.randn(k, dtype=dtype) * 0.05 for k in n]
    return dict(
        params=ps, grads=[torch.randn_like(p) for p in ps], square_avgs=[torch.rand_like(p) for p in ps],
        grad_avgs=[torch.randn_like(p) * 0.01 for p in ps] if centered else [],
        momentum_buffers=[torch.randn_like(p) * 0.1 for p in ps] if momentum else [],
        steps=[torch.zeros(()) for _ in ps], clip_only=[torch.randn(7, dtype=dtype)],
        lr_tensor=None, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=momentum,
        centered=centered, maximize=False, lo=-0.05, hi=0.05)


def call(a: dict) -> None:
    torch.ops.wgan_ext.rmsprop_clip_(*a.values())


def snapshot(a: dict) -> list:
    return [t.clone() for v in a.values() if isinstance(v, list) for t in v if not t.is_meta]


@pytest.mark.skipif(not kernel_here(), reason="the compiled CPU kernel is unavailable here")
@pytest.mark.parametrize("edit,exc,match", [
    (lambda a: a["grads"].__setitem__(1, a["grads"][1].double()), TypeError, r"grads\[1\] has dtype torch.float64"),
    (lambda a: a["square_avgs"].__setitem__(0, torch.zeros(6)), ValueError, r"square_avgs\[0\] has shape \[6\]"),
    (lambda a: a["momentum_buffers"].pop(), ValueError, "momentum_buffers has 1 tensors, expected 2"),
    (lambda a: a["grad_avgs"].clear(), ValueError, "grad_avgs has 0 tensors"),
    (lambda a: a["params"].__setitem__(1, a["params"][0]), ValueError, "share memory"),
    (lambda a: a["square_avgs"].__setitem__(1, a["params"][1]), ValueError, "share memory"),
    (lambda a: a["clip_only"].append(a["params"][0][:2]), ValueError, "share memory"),
    (lambda a: a["clip_only"].append(torch.zeros(2, dtype=torch.int32)), TypeError, "clip_only.1. has dtype torch.int32"),
    (lambda a: a["clip_only"].append(torch.zeros(2, device="meta")), ValueError, "one device"),
    (lambda a: a["steps"].__setitem__(0, torch.zeros(2)), TypeError, r"steps\[0\] must be a one-element"),
    (lambda a: a.update(lr_tensor=torch.zeros(2)), TypeError, "lr_tensor must be a one-element"),
    (lambda a: a.update(lr_tensor=torch.tensor(-1.0)), ValueError, "invalid learning rate: -1"),
    (lambda a: a.update(lo=1.0, hi=-1.0), ValueError, "lo <= hi"),
    (lambda a: a.update(hi=float("inf")), ValueError, "finite bounds"),
    (lambda a: a.update(eps=-1.0), ValueError, "invalid epsilon value: -1"),
    (lambda a: a.update(alpha=-1.0), ValueError, "invalid alpha value: -1"),
    (lambda a: a.update(weight_decay=-1.0), ValueError, "invalid weight_decay value: -1"),
    (lambda a: a.update(momentum=-1.0, momentum_buffers=[]), ValueError, "invalid momentum value: -1"),
    (lambda a: a.update(lr=float("nan")), ValueError, "invalid learning rate: nan"),
])
def test_op_errors_leave_every_tensor_untouched(edit, exc, match):
    a = op_args()
    edit(a)
    before = snapshot(a)
    with pytest.raises(exc, match=match):
        call(a)
    for t, b in zip(snapshot(a), before):
        assert_same(t, b)


@pytest.mark.skipif(not kernel_here(), reason="the compiled CPU kernel is unavailable here")
def test_op_bounds_not_representable_in_the_dtype_raise_before_any_write():
    a = op_args(dtype=torch.float16)
    a["params"].append(torch.zeros(3))  # float32 tensors come first in the walk
    for key in ("grads", "square_avgs", "grad_avgs", "momentum_buffers"):
        a[key].append(torch.zeros(3))
    a["steps"].append(torch.zeros(()))
    a.update(lo=-1e6, hi=1e6)  # beyond float16's 65504
    before = snapshot(a)
    with pytest.raises(RuntimeError, match="overflow"):
        call(a)
    for t, b in zip(snapshot(a), before):
        assert_same(t, b)


@pytest.mark.skipif(not kernel_here(), reason="the compiled CPU kernel is unavailable here")
def test_op_inference_tensor_outside_inference_mode_is_refused():
    with torch.inference_mode():
        a = op_args()
    before = snapshot(a)
    with pytest.raises(RuntimeError, match="inference tensor"):
        call(a)
    for t, b in zip(snapshot(a), before):
        assert_same(t, b)
    with torch.inference_mode():
        call(a)  # allowed there


@pytest.mark.skipif(not kernel_here(), reason="the compiled CPU kernel is unavailable here")
def test_op_writes_leaves_that_require_grad_without_no_grad():
    a = op_args()
    a["params"] = [p.requires_grad_() for p in a["params"]]
    call(a)  # no "a leaf Variable that requires grad is being used in an in-place operation"
    assert all(p.grad_fn is None for p in a["params"])
    assert all(s.item() == 1 for s in a["steps"])


@pytest.mark.skipif(not kernel_here(), reason="the compiled CPU kernel is unavailable here")
@pytest.mark.parametrize("centered,momentum", [(False, 0.0), (True, 0.9)])
def test_opcheck_cpu(centered, momentum):
    a = op_args(centered=centered, momentum=momentum)
    a["params"] = [p.requires_grad_() for p in a["params"]]
    torch.library.opcheck(torch.ops.wgan_ext.rmsprop_clip_.default, tuple(a.values()))
    a["lr_tensor"] = torch.tensor(1e-3)
    torch.library.opcheck(torch.ops.wgan_ext.rmsprop_clip_.default, tuple(a.values()))


@pytest.mark.skipif(not kernel_here(), reason="the compiled CPU kernel is unavailable here")
def test_op_from_two_threads_at_once_matches_serial_runs():
    # The op releases the GIL; it keeps no state between calls.
    args = [op_args(n=(50_000, 70_001)) for _ in range(2)]
    serial = [{k: [t.clone() for t in v] if isinstance(v, list) else v for k, v in a.items()} for a in args]
    for a in serial:
        for _ in range(20):
            call(a)
    threads = [threading.Thread(target=lambda a=a: [call(a) for _ in range(20)]) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, s in zip(args, serial):
        for x, y in zip(snapshot(a), snapshot(s)):
            assert_same(x, y)


# ------------------------------------------------------------------ torch.compile
def _critic_pair(device="cpu"):
    torch.manual_seed(0)
    make = lambda: torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).to(device)  # noqa: E731
    a, b = make(), make()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.skipif(not kernel_here(), reason="the compiled CPU kernel is unavailable here")
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_step_runs_the_op_and_matches_eager(backend):
    torch._dynamo.reset()
    a, b = _critic_pair()
    kw = dict(lr=torch.tensor(1e-3), momentum=0.9, centered=True, clip=C)
    opt_a, opt_b = ClippedRMSprop(a.parameters(), **kw), ClippedRMSprop(b.parameters(), **kw)
    graphs = []

    def spy(gm, example_inputs):
        graphs.append(str(gm.graph))
        return torch._dynamo.backends.registry.lookup_backend(backend)(gm, example_inputs)

    step = torch.compile(opt_a.step, backend=spy)
    for _ in range(4):
        x = torch.randn(4, 8)
        for m in (a, b):
            m.zero_grad()
            m(x).mean().backward()
        step()
        opt_b.step()
    assert any("wgan_ext.rmsprop_clip_" in g for g in graphs), graphs
    for p, q in zip(a.parameters(), b.parameters()):
        assert_same(p, q)


# ------------------------------------------------------------------ CUDA (run on a GPU machine)
# The CUDA kernel repeats the CPU kernel's arithmetic (one rounding per ATen op, fused
# multiply-adds where ATen's CPU kernels fuse them, correctly rounded sqrt). ATen's CUDA kernels
# are compiled by nvcc, which contracts a*b+c at its own discretion, so against
# torch.optim.RMSprop on CUDA the kernel agrees to within a few units in the last place of the
# largest operand of each update (measured per step, from identical state).
CUDA_ULPS = {torch.float32: 4, torch.float64: 4, torch.bfloat16: 2, torch.float16: 2}


MANTISSA = {torch.float32: 23, torch.float64: 52, torch.float16: 10, torch.bfloat16: 7}


def within_ulps(bound):
    """|got - want| <= bound units in the last place of max(|want|, |value before the step|)
    (the largest operand of the update, so that a cancellation is not counted against the
    kernel); NaN and infinities must agree exactly."""
    def compare(got, want, what, before):
        assert got.dtype == want.dtype and got.shape == want.shape, what
        g, w = got.detach().double().cpu(), want.detach().double().cpu()
        assert torch.equal(g.isnan(), w.isnan()), f"{what}: NaN positions differ"
        assert torch.equal(g.isinf(), w.isinf()) and torch.equal(g[g.isinf()], w[w.isinf()]), \
            f"{what}: infinities differ"
        scale = w.abs()
        if before is not None:
            scale = torch.maximum(scale, before.detach().double().cpu().abs())
        tiny = torch.finfo(got.dtype).tiny
        ulp = torch.exp2(torch.floor(torch.log2(scale.clamp(min=tiny))) - MANTISSA[got.dtype])
        fin = g.isfinite() & w.isfinite()
        err = ((g - w).abs() / ulp)[fin]
        assert err.numel() == 0 or err.max().item() <= bound, f"{what}: {err.max().item()} ulps"
    return compare


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")
def test_cuda_kernel_within_ulps_of_rmsprop_per_step_over_500_steps(dtype, config):
    assert wopt.kernel_available("cuda"), "the CUDA kernel must load on a GPU machine"
    run_pair(dtype, "cuda", steps=500, fused=True, compare=within_ulps(CUDA_ULPS[dtype]),
             resync=True, **config)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")
@pytest.mark.parametrize("momentum,centered", [(0.0, False), (0.9, True)])
def test_cuda_capturable_step_in_a_graph_replayed_equals_eager(momentum, centered):
    torch.manual_seed(0)
    shapes = [(1000,), (3, 5), (40_001,), (7,)] + [(33,)] * 250  # > one launch's tensors
    base = [torch.randn(s, device="cuda") * 0.03 for s in shapes]
    grads = [[torch.randn(s, device="cuda") for s in shapes] for _ in range(6)]
    kw = dict(momentum=momentum, centered=centered, capturable=True, clip=C)

    eager = [torch.nn.Parameter(b.clone()) for b in base]
    opt_e = ClippedRMSprop(eager, lr=torch.tensor(1e-2, device="cuda"), **kw)
    graphed = [torch.nn.Parameter(b.clone()) for b in base]
    lr = torch.tensor(1e-2, device="cuda")
    opt_g = ClippedRMSprop(graphed, lr=lr, **kw)
    static = [torch.zeros(s, device="cuda") for s in shapes]
    for p, g in zip(graphed, static):
        p.grad = g
    # Warm up on a side stream (state is created), then capture one step.
    for g, src in zip(static, grads[0]):
        g.copy_(src)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        opt_g.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt_g.step()
    for p, g in zip(eager, grads[0]):
        p.grad = g.clone()
    opt_e.step()
    for k in range(1, 6):
        lr.fill_(1e-2 / (k + 1))  # as a scheduler would: replays read the new value
        opt_e.param_groups[0]["lr"].fill_(1e-2 / (k + 1))
        for g, src in zip(static, grads[k]):
            g.copy_(src)
        graph.replay()
        for p, src in zip(eager, grads[k]):
            p.grad = src.clone()
        opt_e.step()
    torch.cuda.synchronize()
    for p, q in zip(graphed, eager):
        assert_same(p, q)
        for key in ("square_avg", "momentum_buffer", "grad_avg"):
            if key in opt_e.state[q]:
                assert_same(opt_g.state[p][key], opt_e.state[q][key])
        assert opt_g.state[p]["step"].item() == opt_e.state[q]["step"].item() == 6
        assert opt_g.state[p]["step"].device.type == "cuda"


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")
def test_cuda_many_tensors_big_tensors_and_misaligned_memory():
    # Over 192 tensors and over 2560 chunks (several launches), and tensors at odd offsets (no
    # 16-byte vector loads): the same values as the aligned layout, within ulps of RMSprop.
    torch.manual_seed(0)
    sizes = [3, 5, 1000] * 70 + [45_000_000]
    flat = torch.randn(sum(sizes) + 1, device="cuda") * 0.03
    start = [t.clone() for t in flat[1:].split(sizes)]
    grads = [torch.randn_like(t) for t in start]
    odd = [torch.nn.Parameter(t) for t in flat[1:].split(sizes)]
    aligned = [torch.nn.Parameter(t.clone()) for t in start]
    ref = [torch.nn.Parameter(t.clone()) for t in start]
    for ps in (odd, aligned, ref):
        for p, g in zip(ps, grads):
            p.grad = g.clone()
    assert odd[0].data_ptr() % 16 != 0 and odd[-1].data_ptr() % 16 != 0
    ClippedRMSprop(odd, lr=1e-2, momentum=0.5, clip=C).step()
    ClippedRMSprop(aligned, lr=1e-2, momentum=0.5, clip=C).step()
    torch.optim.RMSprop(ref, lr=1e-2, momentum=0.5, foreach=False).step()
    cmp = within_ulps(CUDA_ULPS[torch.float32])
    with torch.no_grad():
        for p, q, r, s in zip(odd, aligned, ref, start):
            assert_same(p, q)
            cmp(q, r.clamp_(-C, C), "vs RMSprop", s)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")
def test_opcheck_cuda():
    a = op_args()
    for k, v in a.items():
        if isinstance(v, list):
            a[k] = [t.cuda() for t in v]
    torch.library.opcheck(torch.ops.wgan_ext.rmsprop_clip_.default, tuple(a.values()))
    a["steps"] = [s.cuda() for s in a["steps"]]
    a["lr_tensor"] = torch.tensor(1e-3, device="cuda")
    torch.library.opcheck(torch.ops.wgan_ext.rmsprop_clip_.default, tuple(a.values()))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")
def test_cuda_compiled_step_matches_eager():
    torch._dynamo.reset()
    a, b = _critic_pair("cuda")
    kw = dict(lr=torch.tensor(1e-3, device="cuda"), momentum=0.9, clip=C, capturable=True)
    opt_a, opt_b = ClippedRMSprop(a.parameters(), **kw), ClippedRMSprop(b.parameters(), **kw)
    step = torch.compile(opt_a.step)
    for _ in range(4):
        x = torch.randn(4, 8, device="cuda")
        for m in (a, b):
            m.zero_grad()
            m(x).mean().backward()
        step()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert_same(p, q)


def test_public_name_and_docstring_formula():
    assert wgan_ext.ClippedRMSprop is ClippedRMSprop
    assert "ClippedRMSprop" in wgan_ext.__all__
    assert r"\min(\max(\theta, lo), hi)" in ClippedRMSprop.__doc__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # constructing on CPU warns only if no kernel loads
        if kernel_here():
            ClippedRMSprop([torch.nn.Parameter(torch.zeros(1))])
