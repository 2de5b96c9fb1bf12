"""fused_clip_(module, c) caches a plan per module (wgan_ext/_plan_cache.py).

Every test changes the module between calls in one way a user can, and checks the clip against
``torch.clamp`` on the tensors the module holds *now* (and that tensors it no longer holds are
left alone). A cache that trusted a stale plan fails them.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

import pytest
import torch
from torch import nn

from wgan_ext import _ext, _plan_cache, fused_clip_

C = 0.01

pytestmark = pytest.mark.skipif(not _ext.available("cpu"), reason="the compiled CPU kernel did not load")


@pytest.fixture(autouse=True)
def _fresh_cache():
    _plan_cache.clear()
    yield
    _plan_cache.clear()


HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")])]


def critic(seed: int = 0, device: str = "cpu") -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7),
                         nn.Sequential(nn.Linear(7, 3), nn.Linear(3, 1))).to(device)


def new_param(m: nn.Module, *shape: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape, device=next(m.parameters()).device))


def scramble_(module: nn.Module, seed: int) -> None:
    """New out-of-range values in every parameter, in place (the memory stays where it is)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))


def expected(module: nn.Module) -> list:
    return [p.detach().clone().clamp_(-C, C) for p in module.parameters()]


def assert_clipped(module: nn.Module, want: list) -> None:
    got = list(module.parameters())
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and torch.equal(g.detach(), w), (g, w)


def clip_and_check(module: nn.Module, seed: int) -> None:
    scramble_(module, seed)
    want = expected(module)
    fused_clip_(module, C)
    assert_clipped(module, want)


def cached_plans(module: nn.Module, backend: str = "auto"):
    entry = _plan_cache._entry(module, backend)
    return None if entry is None else entry.plans


def test_second_call_uses_the_plan_and_skips_the_parameters_walk(monkeypatch):
    m = critic()
    clip_and_check(m, 1)
    assert cached_plans(m) is not None
    # Now the module's parameters() and the checked path must not be needed at all.
    import wgan_ext.ops as ops

    def boom(*a, **k):
        raise AssertionError("the checked path ran on a cache hit")

    monkeypatch.setattr(ops, "_collect", boom)
    for seed in range(2, 5):
        clip_and_check(m, seed)


def test_a_hit_bumps_versions_once_like_clamp():
    m = critic()
    fused_clip_(m, C)
    before = [p._version for p in m.parameters()]
    fused_clip_(m, C)
    assert [p._version for p in m.parameters()] == [v + 1 for v in before]


def _replace_weight(m):
    old = m[0].weight
    m[0].weight = new_param(m, 7, 5)
    return [old]


def _replace_in_dict(m):  # what torch.func.functional_call does, bypassing __setattr__
    old = m[2][0].weight
    m[2][0]._parameters["weight"] = new_param(m, 3, 7)
    return [old]


def _delete_bias(m):
    old = m[0].bias
    del m[0].bias
    return [old]


def _bias_none(m):
    old = m[2][1].bias
    m[2][1].bias = None
    return [old]


def _add_submodule(m):
    m.add_module("extra", nn.Linear(2, 2).to(next(m.parameters()).device))
    return []


def _replace_submodule(m):
    old = list(m[2].parameters())
    m[2] = nn.Sequential(nn.Linear(7, 4), nn.Linear(4, 1)).to(next(m.parameters()).device)
    return old


def _register_parameter(m):
    m[1].register_parameter("scale", new_param(m, 7))
    return []


def _swap_tensors(m):
    # Exchanges the two objects' contents: the same Python object now wraps another TensorImpl.
    # Refused if anything else owns the TensorImpl, so it also shows the cache owns nothing.
    new = new_param(m, 7, 5)
    torch.utils.swap_tensors(m[0].weight, new)
    return [new]  # now holds the old TensorImpl


CHANGES = {
    "replace_weight": _replace_weight,
    "replace_in_parameters_dict": _replace_in_dict,
    "delete_bias": _delete_bias,
    "bias_none": _bias_none,
    "add_submodule": _add_submodule,
    "replace_submodule": _replace_submodule,
    "register_parameter": _register_parameter,
    "swap_tensors": _swap_tensors,
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("change", CHANGES)
def test_a_changed_parameter_set_is_clipped_as_it_is_now(change, device):
    m = critic(device=device)
    clip_and_check(m, 1)
    assert cached_plans(m) is not None
    gone = CHANGES[change](m)
    with torch.no_grad():
        for t in gone:
            t.fill_(5.0)  # out of range: must stay 5 (no longer the module's)
    clip_and_check(m, 2)
    for t in gone:
        assert torch.all(t == 5.0)
    assert cached_plans(m) is not None  # rebuilt for the new set
    clip_and_check(m, 3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("change", ["data_same_shape", "data_bigger", "data_strided", "to_float64", "resize"])
def test_moved_memory_is_clipped_where_it_is_now(change, device):
    m = critic(device=device)
    clip_and_check(m, 1)
    w = m[0].weight
    if change == "data_same_shape":
        w.data = torch.randn(7, 5, device=device)
    elif change == "data_bigger":
        w.data = torch.randn(70, 50, device=device)
    elif change == "data_strided":
        w.data = torch.randn(7, 10, device=device)[:, ::2]  # not dense: not one span
    elif change == "to_float64":
        m.to(torch.float64)
    else:
        w.data.resize_(9, 9)
    for seed in (2, 3):
        clip_and_check(m, seed)


def test_swap_module_params_on_conversion_is_not_blocked():
    # With this future flag, Module.to() swaps TensorImpls and refuses any that something else
    # owns: a cache holding strong references would break `.to()` after a fused_clip_.
    m = critic()
    clip_and_check(m, 1)
    old = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        m.to(torch.float64)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(old)
    assert m[0].weight.dtype == torch.float64
    clip_and_check(m, 2)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")
def test_a_module_on_two_devices_is_cached_per_device_and_moves():
    m = critic()
    m[2].cuda()
    for seed in (1, 2):
        clip_and_check(m, seed)
    assert len(cached_plans(m)) == 2
    m[2].cpu()  # the CUDA plan now points at CPU tensors: back through the checked path
    for seed in (3, 4):
        clip_and_check(m, seed)
    m.cuda()
    for seed in (5, 6):
        clip_and_check(m, seed)


def test_the_cache_keeps_no_replaced_tensor_or_module_alive():
    m = critic()
    fused_clip_(m, C)
    old = weakref.ref(m[0].weight)
    m[0].weight = nn.Parameter(torch.randn(7, 5))
    gc.collect()
    assert old() is None  # freed before any further fused_clip_ call
    fused_clip_(m, C)
    dead = weakref.ref(m)
    del m
    gc.collect()
    assert dead() is None
    assert len(_plan_cache._entries) == 0


def test_tied_weights_clipped_once():
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    m = nn.Sequential(a, b)
    clip_and_check(m, 1)
    v = a.weight._version
    clip_and_check(m, 2)
    assert a.weight._version == v + 2  # scramble's copy_ and one clip


def test_a_type_that_overrides_parameters_is_not_cached_and_is_obeyed():
    class OnlyFirst(nn.Sequential):
        def parameters(self, recurse=True):
            return self[0].parameters()

    m = OnlyFirst(nn.Linear(3, 3), nn.Linear(3, 3))
    with torch.no_grad():
        m[1].weight.fill_(5.0)
    for seed in (1, 2):
        clip_and_check(m, seed)
    assert torch.all(m[1].weight == 5.0)
    assert cached_plans(m) is None
    assert _plan_cache._entry(m, "auto") is not None  # remembered as "not cacheable"


def test_a_cycle_in_the_tree_is_clipped_and_not_cached():
    m = critic()
    m[2].add_module("back", m)  # parameters() de-duplicates modules; the fingerprint gives up
    for seed in (1, 2):
        clip_and_check(m, seed)
    assert _ext.module_fingerprint()(m) is None
    assert cached_plans(m) is None


def test_backends_are_cached_separately():
    m = critic()
    fused_clip_(m, C, backend="cpu")
    fused_clip_(m, C, backend="torch")
    assert cached_plans(m, "cpu") is not None
    assert _plan_cache._entry(m, "torch") is None  # the pure-PyTorch fallback has nothing to cache
    clip_and_check(m, 2)


def test_an_unsupported_dtype_after_caching_raises_and_modifies_nothing():
    m = critic()
    fused_clip_(m, C)
    scramble_(m, 1)
    before = [p.detach().clone() for p in m.parameters()]
    w = m[2][1].weight
    w.requires_grad_(False)  # set_data refuses an integer tensor for one that requires grad
    w.data = torch.zeros(1, 3, dtype=torch.int32)
    with pytest.raises(TypeError, match="dtype torch.int32"):
        fused_clip_(m, C)
    for p, b in zip(m.parameters(), before):
        if p.dtype == b.dtype:
            assert torch.equal(p.detach(), b)


def test_inference_tensor_after_caching_raises_outside_inference_mode():
    m = nn.Linear(3, 3)
    fused_clip_(m, C)
    with torch.inference_mode():
        m.weight.data = torch.randn(3, 3)
    with pytest.raises(RuntimeError, match="inference tensor"):
        fused_clip_(m, C)
    with torch.inference_mode():
        clip_and_check(m, 2)


def test_backward_after_a_cached_clip_raises_like_clamp():
    m = nn.Linear(3, 1)
    fused_clip_(m, C)
    out = (m(torch.randn(4, 3, requires_grad=True)) ** 2).sum()  # saves the weight for backward
    fused_clip_(m, C)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


# ----------------------------------------------------------------------------- the parts
def test_module_fingerprint_tracks_types_and_tensor_impls():
    fingerprint = _ext.module_fingerprint()
    m = critic()
    fp = fingerprint(m)
    assert isinstance(fp, bytes) and len(fp) % 8 == 0
    modules, params = len(list(m.modules())), len(list(m.parameters()))
    assert len(fp) // 8 == modules + params
    assert fingerprint(m, fp) is True
    m[0].weight.data = torch.randn(7, 5)  # same TensorImpl, new memory: the plan's business
    assert fingerprint(m, fp) is True
    m[0].weight = nn.Parameter(torch.randn(7, 5))
    assert fingerprint(m, fp) is False
    assert fingerprint(m, fingerprint(m)) is True
    assert fingerprint(object()) is None
    with pytest.raises(TypeError, match="expected must be bytes"):
        fingerprint(m, "x")


def _borrowing_plan(ts, direct=True):
    return torch.classes.wgan_ext.ClipPlan(ts, owning=False, direct=direct)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "through-op"])
def test_borrowing_plan_clips_and_declines_when_it_cannot_vouch(direct):
    ts = [torch.randn(5), torch.randn(3, 3, dtype=torch.float64), torch.randn(4).bfloat16()]
    plan = _borrowing_plan(ts, direct)
    assert plan.spans() == (3 if direct else -1)
    for seed in (1, 2):
        torch.manual_seed(seed)
        for t in ts:
            t.normal_()
        want = [t.clone().clamp_(-C, C) for t in ts]
        versions = [t._version for t in ts]
        assert plan.try_clip_(-C, C) is True
        for t, w in zip(ts, want):
            assert torch.equal(t, w)
        assert [t._version for t in ts] == [v + 1 for v in versions]
    assert plan.try_clip_(float("nan"), C) is False  # bad bounds: the checked path raises
    ts[1].data = torch.zeros(2, dtype=torch.int64)
    ts[0].mul_(100)
    assert plan.ready(-C, C) is False and plan.try_clip_(-C, C) is False
    assert torch.all(ts[0].abs() > C)  # declined before any write
    with pytest.raises(RuntimeError, match="only offers try_clip_"):
        plan.clip_(-C, C)


def test_borrowing_plan_keeps_nothing_alive():
    t = torch.randn(100)
    plan = _borrowing_plan([t])
    assert plan.size() == 1
    gone = weakref.ref(t)
    del t
    gc.collect()
    assert gone() is None


def test_borrowing_plan_rebuilds_for_a_strided_tensor_and_then_uses_the_op():
    t = torch.randn(6, 4)
    plan = _borrowing_plan([t])
    t.data = torch.randn(6, 8)[:, ::2]  # same TensorImpl, not dense now
    assert plan.try_clip_(-C, C) is False  # a table may not own the strided tensor
    assert plan.spans() == -1
    want = t.clone().clamp_(-C, C)
    assert plan.try_clip_(-C, C) is True
    assert torch.equal(t, want)


@pytest.mark.slow
def test_first_use_build_is_a_python_module_with_the_fingerprint(tmp_path):
    # Without the pip-built wgan_ext._C, the CPU library is compiled on first use; it must come
    # back as a Python module too, or fused_clip_(module) loses its cache.
    code = (
        "import sys; sys.modules['wgan_ext._C'] = None\n"
        "import torch\n"
        "from wgan_ext import _ext, _plan_cache, fused_clip_\n"
        "st = _ext.status('cpu')\n"
        "assert st.how == 'jit', st.reason\n"
        "m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))\n"
        "for _ in range(2):\n"
        "    with torch.no_grad():\n"
        "        for p in m.parameters(): p.normal_()\n"
        "    want = [p.detach().clamp(-0.01, 0.01) for p in m.parameters()]\n"
        "    fused_clip_(m, 0.01)\n"
        "    assert all(torch.equal(p.detach(), w) for p, w in zip(m.parameters(), want))\n"
        "assert _plan_cache._entry(m, 'auto').plans is not None\n"
        "print('ok', st.how)\n"
    )
    env = {**__import__("os").environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["ok", "jit"]


def test_info_reports_the_cache(capsys):
    from wgan_ext import info

    assert info.collect()["module_plan_cache"] is True  # the CPU library loaded (module skip above)
    assert info.main([]) == 0
    assert "fused_clip_(module) plan cache: on" in capsys.readouterr().out
