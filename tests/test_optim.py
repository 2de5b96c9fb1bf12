"""ClippedRMSprop and wgan_ext::rmsprop_clip_ against torch.optim.RMSprop followed by clamp_.

The reference is always an independent computation: ``torch.optim.RMSprop`` on copies of the
same parameters, gradients and state, then ``clamp_`` of every parameter. Where RMSprop's own
step runs (``fused=False``, ``differentiable=True``) the comparison is bit for bit; the compiled
kernel is held to its documented bound: per step within ``KERNEL_ULPS`` of
``RMSprop(foreach=False)`` + ``clamp_`` (16-bit types: of that, or of the same computed in
float32 and rounded), and over 300 steps of a WGAN critic within rtol=1e-5 in float32.

The drop-in checks take torch's own ``OptimizerInfo`` for RMSprop (its constructor inputs, error
inputs and schedulers) with a clip that never binds, under which RMSprop + ``clamp_`` is RMSprop.
"""

from __future__ import annotations

import copy
import io
import itertools
import pickle
import threading
import warnings

import pytest
import torch
from _clip_util import HAS_CUDA, INT_VIEW

import wgan_ext
from wgan_ext import ClippedRMSprop, optim as wopt

STATE_KEYS = ("square_avg", "momentum_buffer", "grad_avg")
C = 0.05
WIDE = 6e4  # a clip that never binds in these tests and fits float16 (largest finite 65504)
try:  # torch's OptimizerInfo for RMSprop; its test utilities need expecttest (the test extra)
    _frozen = torch.backends.flags_frozen()
    from torch.testing._internal.common_optimizers import OptimizerErrorEnum, OptimizerInput, optim_db
    if not _frozen:  # importing them froze torch.backends flags for the whole session: undo
        torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
    RMSPROP = next(info for info in optim_db if info.optim_cls is torch.optim.RMSprop)
except ImportError:
    RMSPROP = None
KERNEL = wopt.kernel_available("cpu")
needs_kernel = pytest.mark.skipif(not KERNEL, reason="the compiled CPU kernel is unavailable here")


def assert_same(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    """Bit-identical, except that two NaNs are equal whatever their payloads."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    g, w = got.detach().cpu(), want.detach().cpu()
    if g.is_complex():
        g, w = torch.view_as_real(g), torch.view_as_real(w)
    nan_g, nan_w = g.isnan(), w.isnan()
    assert torch.equal(nan_g, nan_w), f"{what}: NaN positions differ"
    iv = INT_VIEW[g.element_size()]
    gb, wb = g.contiguous().view(iv)[~nan_g], w.contiguous().view(iv)[~nan_w]
    if not torch.equal(gb, wb):
        diff = (gb != wb).nonzero()[:5].flatten().tolist()
        raise AssertionError(f"{what}: {int((gb != wb).sum())} of {gb.numel()} values differ, "
                             f"e.g. {[g[~nan_g][i].item() for i in diff]} vs "
                             f"{[w[~nan_w][i].item() for i in diff]}")


MANTISSA = {torch.float32: 23, torch.float64: 52, torch.float16: 10, torch.bfloat16: 7}
# The kernel's stated bound per step (ClippedRMSprop's docstring).
KERNEL_ULPS = {torch.float32: 8, torch.float64: 8, torch.bfloat16: 2, torch.float16: 2}


def within_ulps(bound):
    """|got - want| <= bound units in the last place of max(|want|, |value before the step|,
    |want - value before|, |term|) (the largest operand of the update, ``term`` being
    lr * momentum * buffer before the step, so that a cancellation is not counted against the
    kernel); a NaN or an infinity only where ``want`` has the same. ``want`` may be a list of
    references: each element then has to agree with one of them."""
    def compare(got, want, what, before, term=None):
        wants = want if isinstance(want, (list, tuple)) else [want]
        g = got.detach().double().cpu()
        ok = torch.zeros(g.shape, dtype=torch.bool)
        for w in wants:
            assert got.dtype == w.dtype and got.shape == w.shape, what
            w = w.detach().double().cpu()
            scale = w.abs()
            if before is not None:  # also the size of the step itself: p + u can cancel
                b = before.detach().double().cpu()
                scale = torch.maximum(torch.maximum(scale, b.abs()), (w - b).abs().nan_to_num())
            if term is not None:  # another operand of the update, e.g. lr * momentum * buf
                scale = torch.maximum(scale, term.detach().double().cpu().abs().nan_to_num())
            tiny = torch.finfo(got.dtype).tiny
            ulp = torch.exp2(torch.floor(torch.log2(scale.clamp(min=tiny))) - MANTISSA[got.dtype])
            err = torch.where(g.isfinite() & w.isfinite(), (g - w).abs() / ulp, float("inf"))
            ok |= (g.isnan() & w.isnan()) | (g.isinf() & (g == w)) | (err <= bound)
        assert ok.all(), (f"{what}: {int((~ok).sum())} values beyond {bound} ulps (or NaN/inf "
                          f"not in a reference), e.g. {g[~ok][:3].tolist()}")
    return compare


def exact(got, want, what, before=None, term=None):  # noqa: ARG001
    assert_same(got, want, what)


# ------------------------------------------------------------------ per-step reference harness
def make_params(dtype: torch.dtype, device: str, seed: int = 0) -> list:
    """Parameters covering the kernel's paths: sizes around vector widths and ATen's 32768
    grain (a tensor split between threads), a channels_last tensor (dense, not contiguous),
    a strided slice (not dense), and an empty one."""
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
        if i == POISON and step in (3, 120):
            flat = gr.view(-1)
            flat[3], flat[7], flat[9] = float("nan"), float("inf"), -float("inf")
        gr = gr.to(p.device)
        if p.dim() == 4:
            gr = gr.contiguous(memory_format=torch.channels_last)  # laid out like the parameter
        grads.append(gr)
    return grads


def reference_step(params, grads, states, kw, lo, hi, compute_dtype, foreach=False):
    """One ``RMSprop`` step then ``clamp_``, in ``compute_dtype``, from copies of the given
    parameters, gradients and state; the results rounded back to the parameters' dtypes."""
    ps = [torch.nn.Parameter(p.detach().to(compute_dtype, copy=True)) for p in params]
    ref = torch.optim.RMSprop(ps, foreach=foreach, **kw)
    for p, g, st in zip(ps, grads, states):
        p.grad = None if g is None else g.to(compute_dtype, copy=True)
        if st:
            ref.state[p] = {k: v.clone() if k == "step" else v.to(compute_dtype, copy=True)
                            for k, v in st.items()}
    ref.step()
    with torch.no_grad():
        for p in ps:
            p.clamp_(lo, hi)
    back = [{k: v if k == "step" else v.to(q.dtype) for k, v in ref.state.get(p, {}).items()}
            for p, q in zip(ps, params)]
    return [p.detach().to(q.dtype) for p, q in zip(ps, params)], back


def run_steps(dtype, device, *, steps, compare, fused=None, foreach=False, compute_dtype=None,
              lr=1e-2, clip=C, **config):
    """Step ``ClippedRMSprop`` ``steps`` times; before each step, compute the reference step
    from its current parameters and state, and ``compare`` every parameter and state tensor.
    ``compute_dtype`` (16-bit types: float32): a second reference, computed in that type; the
    comparison then takes a list of both (RMSprop in float16 rounds each op, and its default
    eps=1e-8 rounds to 0 there: 0/0 gives NaN where float gives a number, and the reverse)."""
    params = make_params(dtype, device)
    kw = dict(lr=lr, **config)
    opt = ClippedRMSprop(params, clip=clip, fused=fused, foreach=foreach, **kw)
    lo, hi = (-clip, clip) if not isinstance(clip, tuple) else clip
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        grads = make_grads(params, step, gen)
        before = [p.detach().clone() for p in params]
        states = [{k: v.clone() for k, v in opt.state.get(p, {}).items()} for p in params]
        want, want_states = reference_step(params, grads, states, kw, lo, hi, dtype, foreach)
        if compute_dtype not in (None, dtype):  # also the reference computed in compute_dtype
            other, other_states = reference_step(params, grads, states, kw, lo, hi,
                                                 compute_dtype, foreach)
            want = [[a, b] for a, b in zip(want, other)]
            want_states = [{k: [v, o[k]] if k != "step" else v for k, v in st.items()}
                           for st, o in zip(want_states, other_states)]
        for p, gr in zip(params, grads):
            p.grad = gr
        opt.step()
        for i, p in enumerate(params):
            buf = states[i].get("momentum_buffer")
            term = None if buf is None else buf * (lr * config.get("momentum", 0))
            compare(p, want[i], f"step {step} param {i}", before[i], term)
            got_state = opt.state.get(p, {})
            assert set(got_state) == set(want_states[i]), f"step {step} param {i}: state keys"
            for key in STATE_KEYS:
                if key in got_state:
                    compare(got_state[key], want_states[i][key], f"step {step} param {i} {key}",
                            states[i].get(key))
            if got_state:
                assert got_state["step"].item() == want_states[i]["step"].item()


CONFIGS = [dict(centered=c, momentum=m, weight_decay=w, maximize=x)
           for c, m, w, x in itertools.product((False, True), (0.0, 0.9), (0.0, 0.1), (False, True))]
CONFIG_IDS = ["c{centered:d}-m{momentum}-wd{weight_decay}-max{maximize:d}".format(**c) for c in CONFIGS]
FEW = [0, 6, 15]  # plain; momentum + weight decay; everything


def _kernel_steps(dtype, config, steps):
    wide = dtype in (torch.float16, torch.bfloat16)
    run_steps(dtype, "cpu", steps=steps, fused=True, compare=within_ulps(KERNEL_ULPS[dtype]),
              compute_dtype=torch.float32 if wide else None, **config)


@needs_kernel
@pytest.mark.parametrize("dtype,config", [
    (torch.float32, 0), (torch.float32, 15), (torch.float64, 6), (torch.bfloat16, 15), (torch.float16, 6)],
    ids=lambda v: str(v) if isinstance(v, torch.dtype) else CONFIG_IDS[v])
def test_kernel_within_its_ulp_bound_of_rmsprop_and_clamp_per_step(dtype, config):
    _kernel_steps(dtype, CONFIGS[config], steps=8)  # step 3: NaN and inf gradients; step 5: zeros


@pytest.mark.slow
@needs_kernel
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_kernel_within_its_ulp_bound_of_rmsprop_and_clamp_per_step_all_configs(dtype, config):
    _kernel_steps(dtype, config, steps=60)


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("config", [CONFIGS[i] for i in FEW], ids=[CONFIG_IDS[i] for i in FEW])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fallback_is_bit_identical_to_rmsprop_and_clamp(dtype, config, foreach):
    run_steps(dtype, "cpu", steps=8, fused=False, foreach=foreach, compare=exact, **config)


def wgan_critic(fused, steps=300, n_critic=5, c=0.01):
    """Algorithm 1 of the WGAN paper on a 2-D mixture of Gaussians (MLP critic and generator,
    RMSprop lr 5e-5, n_critic=5, clip c): the critic's parameters after ``steps`` critic steps.
    ``fused`` None: torch's RMSprop(foreach=False) then clamp_, else ClippedRMSprop(fused=...)."""
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                 torch.nn.ReLU(), torch.nn.Linear(64, 1))
    gen = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    if fused is None:
        opt_c = torch.optim.RMSprop(critic.parameters(), lr=5e-5, foreach=False)
    else:
        opt_c = ClippedRMSprop(critic.parameters(), lr=5e-5, clip=c, fused=fused)
    opt_g = torch.optim.RMSprop(gen.parameters(), lr=5e-5, foreach=False)
    data = torch.Generator().manual_seed(1)
    centers = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])

    def real(n=64):
        return centers[torch.randint(0, 4, (n,), generator=data)] + 0.05 * torch.randn(n, 2, generator=data)

    for _ in range(steps // n_critic):
        for _ in range(n_critic):
            opt_c.zero_grad()
            fake = gen(torch.randn(64, 4, generator=data)).detach()
            (critic(fake).mean() - critic(real()).mean()).backward()
            opt_c.step()
            if fused is None:
                with torch.no_grad():
                    for p in critic.parameters():
                        p.clamp_(-c, c)
        opt_g.zero_grad()
        (-critic(gen(torch.randn(64, 4, generator=data))).mean()).backward()
        opt_g.step()
    return [p.detach() for p in critic.parameters()]


def test_wgan_critic_over_300_steps_matches_rmsprop_and_clamp():
    want = wgan_critic(None)
    assert sum(int((p.abs() == 0.01).sum()) for p in want) > 100  # the clip binds
    for fused in ((True,) if KERNEL else ()) + (False,):
        got = wgan_critic(fused)
        for g, w in zip(got, want):
            if fused:
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
            else:
                assert_same(g, w)


# ------------------------------------------------------------------ torch's OptimizerInfo inputs
IMPLS = {"kernel": dict(fused=None), "forloop": dict(fused=False, foreach=False),
         "foreach": dict(fused=False, foreach=True)}
INPUTS = [] if RMSPROP is None else RMSPROP.optim_inputs_func(device="cpu") + [
    OptimizerInput(params=None, kwargs={"lr": torch.tensor(1e-3)}, desc="Tensor lr")]
ERROR_INPUTS = [] if RMSPROP is None else RMSPROP.optim_error_inputs_func("cpu", torch.float32)


def _model(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype))
            for s in ((10, 5), (10,), (2, 3, 4), (7,))]


def _drive(opt, params, steps=8):
    """Drive ``opt`` as torch's optimizer tests do: a first step without gradients, a second
    param group, closures returning a loss, zero_grad both ways, a scheduler; the last
    parameter never gets a gradient. Returns the losses."""
    weights = [torch.randn(torch.view_as_real(p).shape if p.is_complex() else p.shape,
                           generator=torch.Generator().manual_seed(i), dtype=p.real.dtype)
               for i, p in enumerate(params)]
    opt.step()  # no gradient anywhere
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    losses = []
    for k in range(steps):
        def closure():
            opt.zero_grad(set_to_none=k % 2 == 0)
            loss = sum(((torch.view_as_real(p) if p.is_complex() else p) ** 2 * w).sum()
                       + (torch.view_as_real(p) if p.is_complex() else p).sum()
                       for p, w in zip(params[:-1], weights))
            loss.backward()
            return loss
        losses.append(opt.step(closure))
        sched.step()
    return losses


def _make(cls, params, kwargs, impl):
    kwargs = {"lr": 1e-2, **kwargs}  # RMSprop's default lr (ClippedRMSprop's is the paper's)
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 3e-3, "weight_decay": 0.2}]
    if cls is ClippedRMSprop:
        return ClippedRMSprop(groups, clip=WIDE, **kwargs, **IMPLS[impl])
    return torch.optim.RMSprop(groups, foreach=IMPLS[impl].get("foreach", False), **kwargs)


def _same_state(got: dict, want: dict, close) -> None:
    assert got["state"].keys() == want["state"].keys()
    for i in want["state"]:
        assert got["state"][i].keys() == want["state"][i].keys()
        for key, value in want["state"][i].items():
            close(got["state"][i][key], value, f"state {i} {key}")
    for g, w in zip(got["param_groups"], want["param_groups"]):
        mine = ("clip", "fused", "foreach")  # foreach: None for the kernel, False for its reference
        assert {k: v for k, v in g.items() if k not in mine} == {k: v for k, v in w.items() if k != "foreach"}
        assert g["clip"] == WIDE


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64], ids=str)
@pytest.mark.parametrize("optim_input", INPUTS, ids=[i.desc for i in INPUTS])
def test_matches_rmsprop_on_torchs_optimizer_inputs(optim_input, dtype, impl):
    if impl == "kernel" and not KERNEL:
        pytest.skip("the compiled CPU kernel is unavailable here")
    kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in optim_input.kwargs.items()}
    ref_kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in optim_input.kwargs.items()}
    mine, theirs = _model(dtype), _model(dtype)
    opt, ref = _make(ClippedRMSprop, mine, kwargs, impl), _make(torch.optim.RMSprop, theirs, ref_kwargs, impl)
    if impl == "kernel":  # within a few ulps per step; a few steps stay within assert_close's
        def close(g, w, what="", before=None):  # noqa: ARG001
            torch.testing.assert_close(g, w, msg=what)
    else:
        close = exact
    for got, want in zip(_drive(opt, mine), _drive(ref, theirs)):
        close(got, want, "loss")
    for p, q in zip(mine, theirs):
        close(p, q, "param")
    _same_state(opt.state_dict(), ref.state_dict(), close)


@pytest.mark.parametrize("error_input", ERROR_INPUTS,
                         ids=lambda e: e.optimizer_error_input.desc)
def test_refuses_what_rmsprop_refuses(error_input):
    optim_input = error_input.optimizer_error_input
    params = optim_input.params
    if params is None:
        params = [torch.nn.Parameter(torch.randn(3))]
    for cls in (torch.optim.RMSprop, ClippedRMSprop):
        if issubclass(error_input.error_type, Warning):
            ctx = pytest.warns(error_input.error_type, match=error_input.error_regex)
        else:
            ctx = pytest.raises(error_input.error_type, match=error_input.error_regex)
        with ctx:
            opt = cls(params, **optim_input.kwargs)
            if error_input.error_on == OptimizerErrorEnum.STEP_ERROR:  # none for RMSprop today
                opt.step()


def test_state_dict_round_trips_deepcopy_pickle_and_weights_only_load():
    params = _model(torch.float32)
    opt = ClippedRMSprop(params, lr=1e-2, momentum=0.9, centered=True, clip=(-0.5, 2.0))
    public = lambda o: {k for k in vars(o) if not k.startswith("_")}  # noqa: E731
    assert public(copy.deepcopy(opt)) == public(opt)
    _drive(opt, params, steps=3)
    twin = copy.deepcopy(opt)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    again = ClippedRMSprop(params, lr=1.0)
    again.load_state_dict(loaded)
    unpickled = pickle.loads(pickle.dumps(opt))
    for other in (twin, again, unpickled):
        assert other.param_groups[0]["clip"] == (-0.5, 2.0)
        assert other.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        for i, st in opt.state_dict()["state"].items():
            for key, value in st.items():
                assert_same(other.state_dict()["state"][i][key], value, key)


@pytest.mark.parametrize("direction", ["to_rmsprop", "from_rmsprop"])
def test_state_dict_loads_either_way_and_training_continues_identically(direction):
    kw = dict(lr=1e-2, momentum=0.9, centered=True, weight_decay=0.01)
    first, second = ((ClippedRMSprop, torch.optim.RMSprop) if direction == "to_rmsprop"
                     else (torch.optim.RMSprop, ClippedRMSprop))
    extra = lambda cls: dict(clip=C, fused=False) if cls is ClippedRMSprop else dict(foreach=False)  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.03) for s in ((50,), (3, 4))]

    def train(opt, ps, steps, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
            with torch.no_grad():
                for p in ps:
                    p.clamp_(-C, C)  # a no-op after ClippedRMSprop's step

    opt_a = first(a, **kw, **extra(first))
    train(opt_a, a, 20, seed=0)
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_b = second(b, **kw, **extra(second))
    sd = copy.deepcopy(opt_a.state_dict())
    assert set(sd["state"][0]) == {"step", "square_avg", "momentum_buffer", "grad_avg"}
    opt_b.load_state_dict(sd)
    train(opt_a, a, 20, seed=9)
    train(opt_b, b, 20, seed=9)
    for p, q in zip(a, b):
        assert_same(q, p)
        for key in STATE_KEYS:
            assert_same(opt_b.state[q][key], opt_a.state[p][key])
        assert opt_b.state[q]["step"].item() == opt_a.state[p]["step"].item() == 40
    if second is ClippedRMSprop:
        assert opt_b.param_groups[0]["clip"] == C  # RMSprop's dict has no clip: ours is kept
        assert opt_b.bounds == [(-C, C)] and opt_b.param_groups[0]["fused"] is False


def test_step_hooks_and_state_dict_hooks_run():
    p = torch.nn.Parameter(torch.full((3,), 2.0))
    opt = ClippedRMSprop([p], lr=0.1, clip=0.5)  # the step takes p to 1.0, the clip to 0.5
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre", float(p.detach()[0]))))
    opt.register_step_post_hook(lambda o, a, k: calls.append(("post", float(p.detach()[0]))))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append(("sd", len(sd["state"]))))
    p.grad = torch.ones(3)
    opt.step()
    opt.state_dict()
    assert calls == [("pre", 2.0), ("post", 0.5), ("sd", 1)]


def test_differentiable_step_is_rmsprops_then_clamp_with_the_same_gradients():
    # As torch's TestDifferentiableOptimizer: the step as a function of parameter, gradient and
    # state, checked with gradcheck, and its outputs and their gradients equal to RMSprop's
    # differentiable step followed by clamp_ (which binds for some elements here).
    gen = torch.Generator().manual_seed(0)
    leaf = lambda scale=1.0: (torch.rand(10, generator=gen, dtype=torch.float64) * scale).requires_grad_()  # noqa: E731
    p, grad = leaf(), leaf()
    state = {"step": torch.zeros((), dtype=torch.float64), "square_avg": leaf(),
             "momentum_buffer": leaf(), "grad_avg": leaf(1e-2)}
    kw = dict(lr=0.9, maximize=True, momentum=0.9, centered=True, weight_decay=0.1,
              differentiable=True)
    lo, hi = -0.3, 0.6

    def step_fn(cls):
        def fn(p, grad, *values):
            p = p.clone()
            p.grad = grad
            opt = cls([p], **kw, **(dict(clip=(lo, hi)) if cls is ClippedRMSprop else {}))
            opt.state[p].update({k: v.clone() for k, v in zip(state, values)})
            opt.step()
            if cls is torch.optim.RMSprop:
                p.clamp_(lo, hi)
            return (p,) + tuple(v for v in opt.state[p].values() if v.requires_grad)
        return fn

    inputs = (p, grad, *state.values())
    mine, theirs = step_fn(ClippedRMSprop)(*inputs), step_fn(torch.optim.RMSprop)(*inputs)
    assert ((mine[0] == lo) | (mine[0] == hi)).any() and ((mine[0] > lo) & (mine[0] < hi)).any()
    diff = [t for t in inputs if t.requires_grad]
    for a, b in zip(mine, theirs):
        assert_same(a, b)
        for ga, gb in zip(torch.autograd.grad(a.sum(), diff, retain_graph=True, allow_unused=True),
                          torch.autograd.grad(b.sum(), diff, retain_graph=True, allow_unused=True)):
            assert (ga is None) == (gb is None) and (ga is None or torch.equal(ga, gb))
    assert torch.autograd.gradcheck(step_fn(ClippedRMSprop), inputs)


def test_a_parameter_listed_twice_warns_and_steps_as_rmsprop():
    p = torch.nn.Parameter(torch.full((4,), 0.5))
    q = torch.nn.Parameter(torch.full((4,), 0.5))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = ClippedRMSprop([p, p], lr=0.1, clip=WIDE)
    with pytest.warns(UserWarning, match="duplicate parameters"):
        ref = torch.optim.RMSprop([q, q], lr=0.1, foreach=False)
    for _ in range(3):
        p.grad, q.grad = torch.ones(4), torch.ones(4)
        opt.step()
        ref.step()
    assert_same(p, q)
    assert opt.state[p]["step"].item() == ref.state[q]["step"].item() == 6


@pytest.mark.parametrize("fused", [pytest.param(None, marks=needs_kernel), False], ids=["kernel", "fallback"])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_complex_parameters_step_as_rmsprop_and_both_parts_are_clipped(dtype, fused):
    # Each step from the same values and state as RMSprop(foreach=False) + clamp_ of view_as_real.
    gen = torch.Generator().manual_seed(0)
    real = torch.view_as_real
    mine = [torch.nn.Parameter(torch.randn(n, generator=gen, dtype=dtype) * 0.3) for n in (33, 100)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in mine]
    no_grad = torch.nn.Parameter(torch.randn(20, generator=gen, dtype=dtype))
    kw = dict(lr=1e-2, momentum=0.5, centered=True, weight_decay=0.1)
    opt = ClippedRMSprop(mine + [no_grad], clip=(-0.2, 0.3), fused=fused, **kw)
    ref = torch.optim.RMSprop(theirs, foreach=False, **kw)
    compare = exact if fused is False else within_ulps(KERNEL_ULPS[mine[0].real.dtype])
    want_no_grad = real(no_grad).detach().clamp(-0.2, 0.3)
    for _ in range(10):
        before = {}
        for p, q in zip(mine, theirs):
            p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
            q.grad = p.grad.clone()
            q.data.copy_(p.data)
            ref.state[q] = {k: v.clone() for k, v in opt.state[p].items()} if p in opt.state else {}
            before[p] = {"param": real(p).detach().clone(),
                         **{k: real(v).clone() for k, v in opt.state.get(p, {}).items() if k != "step"}}
        opt.step()
        ref.step()
        with torch.no_grad():
            for p, q in zip(mine, theirs):
                real(q).clamp_(-0.2, 0.3)
                compare(real(p), real(q), "param", before[p]["param"])
                for key in STATE_KEYS:
                    compare(real(opt.state[p][key]), real(ref.state[q][key]), key, before[p].get(key))
    assert ((real(mine[1]) == -0.2) | (real(mine[1]) == 0.3)).any()  # the clip binds
    assert_same(real(no_grad), want_no_grad)


def test_capturable_on_the_cpu_is_refused_as_rmsprop_refuses_it():
    for cls in (torch.optim.RMSprop, ClippedRMSprop):
        p = torch.nn.Parameter(torch.ones(3))
        opt = cls([p], capturable=True)
        p.grad = torch.ones(3)
        with pytest.raises(AssertionError, match="If capturable=True"):
            opt.step()
        assert torch.equal(p, torch.ones(3))


# ------------------------------------------------------------------ ClippedRMSprop's own behaviour
def test_tuple_clip_and_parameters_without_gradient_are_clipped():
    params = [torch.nn.Parameter(torch.linspace(-1, 1, 11)) for _ in range(2)]
    opt = ClippedRMSprop(params, lr=0.1, clip=(-0.2, 0.5))
    params[0].grad = torch.ones(11)  # params[1] has no gradient: clipped, no state
    opt.step()
    ref = torch.nn.Parameter(torch.linspace(-1, 1, 11))
    ropt = torch.optim.RMSprop([ref], lr=0.1, foreach=False)
    ref.grad = torch.ones(11)
    ropt.step()
    compare = exact if not wopt.kernel_available("cpu") else within_ulps(KERNEL_ULPS[torch.float32])
    compare(params[0], ref.detach().clamp(-0.2, 0.5), "param", torch.linspace(-1, 1, 11))
    assert_same(params[1], torch.linspace(-1, 1, 11).clamp(-0.2, 0.5))
    assert params[1] not in opt.state
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        params[0].fill_(3.0)
    opt.step()  # no gradient anywhere: still clipped, steps unchanged
    assert torch.equal(params[0], torch.full((11,), 0.5))
    assert opt.state[params[0]]["step"].item() == 1


def test_param_groups_with_their_own_clip_and_bounds_for():
    a = torch.nn.Parameter(torch.full((4,), 2.0))
    b = torch.nn.Parameter(torch.full((4,), 2.0))
    opt = ClippedRMSprop([{"params": [a]}, {"params": [b], "clip": (-1.0, 0.3)}], lr=0.0)
    assert opt.bounds == [(-0.01, 0.01), (-1.0, 0.3)]
    a.grad, b.grad = torch.ones(4), torch.ones(4)
    opt.step()
    assert torch.equal(a, torch.full((4,), 0.01)) and torch.equal(b, torch.full((4,), 0.3))
    assert opt.bounds_for([a]) == (-0.01, 0.01)
    assert opt.bounds_for([a, b]) is None  # the groups disagree
    assert opt.bounds_for([a, torch.zeros(1)]) is None  # not a parameter of this optimizer


@pytest.mark.parametrize("fused", [pytest.param(None, marks=needs_kernel), False], ids=["kernel", "fallback"])
def test_mixed_dtypes_in_one_group(fused):
    ps = [torch.nn.Parameter(torch.randn(300, dtype=dt) * 0.03)
          for dt in (torch.float32, torch.float64, torch.bfloat16)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt = ClippedRMSprop(ps, lr=1e-2, momentum=0.5, fused=fused)
    ref = torch.optim.RMSprop(qs, lr=1e-2, momentum=0.5, foreach=False)
    for _ in range(10):
        before = [p.detach().clone() for p in ps]
        terms = [opt.state[p]["momentum_buffer"] * 0.5e-2 if p in opt.state else None for p in ps]
        for p, q in zip(ps, qs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
            q.data.copy_(p.data)  # each step from the same values
            ref.state[q] = {k: v.clone() for k, v in opt.state[p].items()} if p in opt.state else {}
        opt.step()
        ref.step()
        with torch.no_grad():
            for q in qs:
                q.clamp_(-0.01, 0.01)
        for p, q, b, term in zip(ps, qs, before, terms):
            (exact if fused is False else within_ulps(KERNEL_ULPS[p.dtype] if p.dtype != torch.bfloat16 else 4))(p, q, "param", b, term)


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


def test_a_step_count_on_the_meta_device_steps_as_rmsprop():
    # The op would dispatch to its meta kernel and write nothing: the group takes RMSprop's step.
    p, q = torch.nn.Parameter(torch.full((3,), 0.5)), torch.nn.Parameter(torch.full((3,), 0.5))
    opt = ClippedRMSprop([p], lr=0.1, clip=WIDE)
    ref = torch.optim.RMSprop([q], lr=0.1, foreach=False)
    for k in range(2):
        p.grad, q.grad = torch.ones(3), torch.ones(3)
        opt.step()
        ref.step()
        if k == 0:
            opt.state[p]["step"] = torch.zeros((), device="meta")
            ref.state[q]["step"] = torch.zeros((), device="meta")
    torch.testing.assert_close(p, q, rtol=1e-6, atol=0)  # the first step is the kernel's
    assert not torch.equal(p, torch.full((3,), 0.5))


def test_a_tensor_lr_on_the_meta_device_raises_before_any_group_is_written():
    a, b = torch.nn.Parameter(torch.full((3,), 0.5)), torch.nn.Parameter(torch.full((3,), 0.5))
    opt = ClippedRMSprop([{"params": [a]}, {"params": [b]}], lr=0.1, clip=0.2)
    opt.param_groups[1]["lr"] = torch.tensor(0.1, device="meta")
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    with pytest.raises(RuntimeError, match="lr is a tensor on the meta device"):
        opt.step()
    assert torch.equal(a, torch.full((3,), 0.5)) and torch.equal(b, torch.full((3,), 0.5))
    assert all(not opt.state[p] or opt.state[p]["step"].item() == 0 for p in (a, b))


def test_nothing_is_written_when_a_later_group_cannot_be_stepped():
    a = torch.nn.Parameter(torch.full((3,), 0.5))
    h = torch.nn.Parameter(torch.full((3,), 0.5, dtype=torch.float16))
    opt = ClippedRMSprop([{"params": [a]}, {"params": [h]}], lr=0.1, clip=1.0)
    a.grad, h.grad = torch.ones(3), torch.ones(3, dtype=torch.float16)
    opt.param_groups[1]["clip"] = 1e5  # edited after the group was added: beyond float16
    with pytest.raises(ValueError, match=r"clip=100000.0 does not fit a parameter of dtype torch.float16"):
        opt.step()
    assert torch.equal(a, torch.full((3,), 0.5)) and torch.equal(h, torch.full((3,), 0.5, dtype=torch.float16))
    assert all(not opt.state[p] or opt.state[p]["step"].item() == 0 for p in (a, h))


def test_a_clip_beyond_a_parameters_dtype_is_refused_when_the_group_is_added():
    h = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"clip=\(-1.0, 70000.0\) does not fit .* torch.float16 \(largest finite value 65504\)"):
        ClippedRMSprop([h], clip=(-1.0, 70000.0))
    opt = ClippedRMSprop([torch.nn.Parameter(torch.zeros(2))], clip=1e5)  # float32 holds it
    with pytest.raises(ValueError, match="does not fit"):
        opt.add_param_group({"params": [h]})
    assert len(opt.param_groups) == 1 and opt.state == {}
    opt.add_param_group({"params": [h], "clip": 65504.0})  # the largest finite float16


def test_fused_true_without_kernel_for_the_device_raises():
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    with pytest.raises(RuntimeError, match="fused=True"):
        ClippedRMSprop([p], fused=True)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(lr=-1e-3), ValueError, "Invalid learning rate: -0.001"),
    (dict(alpha=-0.5), ValueError, "Invalid alpha value: -0.5"),
    (dict(eps=-1.0), ValueError, "Invalid epsilon value: -1.0"),
    (dict(weight_decay=-2.0), ValueError, "Invalid weight_decay value: -2.0"),
    (dict(clip=0.0), ValueError, "clip must be > 0"),
    (dict(clip=-0.01), ValueError, "clip must be > 0"),
    (dict(clip=float("inf")), ValueError, "clip must be finite"),
    (dict(clip=float("nan")), ValueError, "clip must be finite"),
    (dict(clip=(0.5, -0.5)), ValueError, "needs lo <= hi"),
    (dict(clip=(float("-inf"), 1.0)), ValueError, "must be finite"),
    (dict(clip="0.01"), TypeError, "clip must be a real number"),
    (dict(fused=1), TypeError, "fused must be None, True or False"),
    (dict(fused=True, foreach=True), ValueError, "`fused` and `foreach` cannot be `True` together"),
    (dict(fused=True, differentiable=True), ValueError, "`fused` does not support `differentiable`"),
])
def test_bad_arguments_raise_naming_the_value(kw, exc, match):
    with pytest.raises(exc, match=match.replace("(", r"\(")):
        ClippedRMSprop([torch.nn.Parameter(torch.zeros(2))], **kw)


def test_bad_param_groups_are_refused_before_they_are_added():
    opt = ClippedRMSprop([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="clip must be > 0"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "clip": -1.0})
    with pytest.raises(TypeError, match="dtype torch.int32"):
        opt.add_param_group({"params": [torch.zeros(2, dtype=torch.int32)]})
    assert len(opt.param_groups) == 1


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


@needs_kernel
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
    (lambda a: a.update(hi=float("inf")), ValueError, "bounds must be finite"),
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


@needs_kernel
def test_op_bounds_not_representable_in_the_dtype_raise_before_any_write():
    a = op_args(dtype=torch.float16)
    a["params"].append(torch.zeros(3))  # float32 tensors come first in the walk
    for key in ("grads", "square_avgs", "grad_avgs", "momentum_buffers"):
        a[key].append(torch.zeros(3))
    a["steps"].append(torch.zeros(()))
    a.update(lo=-1e6, hi=1e6)  # beyond float16's 65504
    before = snapshot(a)
    with pytest.raises(ValueError, match="overflow"):
        call(a)
    for t, b in zip(snapshot(a), before):
        assert_same(t, b)


@needs_kernel
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


@needs_kernel
def test_op_writes_leaves_that_require_grad_without_no_grad():
    a = op_args()
    a["params"] = [p.requires_grad_() for p in a["params"]]
    call(a)  # no "a leaf Variable that requires grad is being used in an in-place operation"
    assert all(p.grad_fn is None for p in a["params"])
    assert all(s.item() == 1 for s in a["steps"])


@needs_kernel
@pytest.mark.parametrize("centered,momentum", [(False, 0.0), (True, 0.9)])
def test_opcheck_cpu(centered, momentum):
    a = op_args(centered=centered, momentum=momentum)
    a["params"] = [p.requires_grad_() for p in a["params"]]
    torch.library.opcheck(torch.ops.wgan_ext.rmsprop_clip_.default, tuple(a.values()))
    a["lr_tensor"] = torch.tensor(1e-3)
    torch.library.opcheck(torch.ops.wgan_ext.rmsprop_clip_.default, tuple(a.values()))


@needs_kernel
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


@needs_kernel
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
# ATen's CUDA kernels are compiled by nvcc, which contracts a*b+c at its own discretion: RMSprop
# on CUDA is itself only within ulps of RMSprop on the CPU, so the kernel is held to the same
# per-step bound against it.
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")
def test_cuda_kernel_within_ulps_of_rmsprop_per_step(dtype, config):
    assert wopt.kernel_available("cuda"), "the CUDA kernel must load on a GPU machine"
    wide = dtype in (torch.float16, torch.bfloat16)
    run_steps(dtype, "cuda", steps=300, fused=True, compare=within_ulps(KERNEL_ULPS[dtype]),
              compute_dtype=torch.float32 if wide else dtype, **config)


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
    cmp = within_ulps(KERNEL_ULPS[torch.float32])
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


def test_public_name_and_docstring():
    assert wgan_ext.ClippedRMSprop is ClippedRMSprop and "ClippedRMSprop" in wgan_ext.__all__
    assert issubclass(ClippedRMSprop, torch.optim.RMSprop)
    assert r"\min(\max(\theta, lo), hi)" in ClippedRMSprop.__doc__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # constructing on CPU warns only if no kernel loads
        if KERNEL:
            ClippedRMSprop([torch.nn.Parameter(torch.zeros(1))])
