"""fused_clip_(module) clamps exactly what ``module.parameters()`` yields at each call.

The compiled library walks the module tree in C++ (``wgan_ext._C.parameters``) where that is
exact and calls ``parameters()`` itself elsewhere. Each case compares the walk with
``list(module.parameters())`` object for object, and the clip with ``clamp_`` on the tensors
the module yields *now* (tensors it no longer yields are left alone).
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from wgan_ext import _ext, fused_clip_

C = 0.01

pytestmark = pytest.mark.skipif(not _ext.available("cpu"), reason="the compiled CPU library did not load")


def walk(module: nn.Module) -> list:
    return _ext.cpu_library().parameters(module)


def critic(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Sequential(nn.Linear(7, 3), nn.Linear(3, 1)))


def assert_walk_exact(module: nn.Module) -> None:
    got, want = walk(module), list(module.parameters())
    assert [id(p) for p in got] == [id(p) for p in want]


def assert_clips_what_parameters_yields(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    everything = {id(t): t for m in module.modules() for t in m._parameters.values() if t is not None}
    with torch.no_grad():
        for t in everything.values():
            t.copy_(torch.randn(t.shape, generator=g))
    before = {k: t.detach().clone() for k, t in everything.items()}
    current = {id(p) for p in module.parameters()}
    fused_clip_(module, C)
    for k, t in everything.items():
        want = before[k].clamp(-C, C) if k in current else before[k]
        assert torch.equal(t.detach(), want), k


# ----------------------------------------------------------------------------- module shapes
def _tied():
    m = critic()
    m.add_module("again", m[2])  # a shared submodule
    m.head = nn.Linear(3, 1)
    m.head.weight = m[2][1].weight  # a tied weight
    return m


def _with_nones():
    m = critic()
    m[0].register_parameter("extra", None)
    m.add_module("empty", None)
    return m


def _cycle():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    a.add_module("child", b)
    b.add_module("parent", a)
    return a


def _containers():
    return nn.ModuleDict({"list": nn.ParameterList([nn.Parameter(torch.randn(2)) for _ in range(3)]),
                          "dict": nn.ParameterDict({"x": nn.Parameter(torch.randn(3))}),
                          "seq": critic()})


def _lazy():
    return nn.Sequential(nn.Linear(3, 4), nn.LazyLinear(2))


SHAPES = [critic, _tied, _with_nones, _cycle, _containers, _lazy, lambda: nn.Sequential()]


@pytest.mark.parametrize("make", SHAPES, ids=lambda f: f.__name__)
def test_walk_equals_parameters(make):
    m = make()
    assert_walk_exact(m)
    if make is not _lazy:
        assert_clips_what_parameters_yields(m, 1)


# ----------------------------------------------------------------------------- overrides
class _OwnParameters(nn.Module):
    """A type that lists something else than its dicts."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(2, 2)
        self.outside = nn.Parameter(torch.randn(4))
        object.__setattr__(self, "hidden", nn.Parameter(torch.randn(3)))  # not in _parameters

    def parameters(self, recurse: bool = True):
        yield self.hidden
        yield from super().parameters(recurse)


class _OwnNamedModules(nn.Linear):
    """Hides its child from named_modules(), so parameters() does not yield the child's."""

    def __init__(self):
        super().__init__(2, 2)
        self.child = nn.Linear(3, 3)

    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        yield prefix, self


class _Proxy(nn.Module):
    """Redirects its parameter dict through __getattribute__."""

    def __init__(self, target: nn.Module):
        super().__init__()
        object.__setattr__(self, "target", target)

    def __getattribute__(self, name):
        if name == "_parameters":
            return object.__getattribute__(self, "target")._parameters
        return super().__getattribute__(name)


class _OrderedParams(nn.Linear):
    def __init__(self):
        super().__init__(2, 2)
        self._parameters = OrderedDict(self._parameters)  # not an exact dict


class _HashedParameter(nn.Parameter):
    def __hash__(self):
        return 0


def _instance_override():
    m = critic()
    other = nn.Parameter(torch.randn(6))
    m.parameters = lambda recurse=True: iter([other, m[0].weight])
    return m


def _hashed_parameter():
    m = nn.Linear(2, 2)
    m.weight = _HashedParameter(torch.randn(2, 2))
    return m


OVERRIDES = [lambda: _OwnParameters(), lambda: nn.Sequential(nn.Linear(2, 2), _OwnNamedModules()),
             lambda: _Proxy(nn.Linear(3, 3)), lambda: nn.Sequential(_OrderedParams()), _instance_override,
             _hashed_parameter]


@pytest.mark.parametrize("make", OVERRIDES, ids=["type_parameters", "child_named_modules", "getattribute_proxy",
                                                 "ordered_dict", "instance_parameters", "param_hash"])
def test_overrides_are_respected(make):
    m = make()
    assert_walk_exact(m)
    assert_clips_what_parameters_yields(m, 2)


def test_per_instance_parameters_is_followed_at_every_call():
    # Each call clamps what parameters() yields at that call, not what it yielded before.
    m = critic()
    targets = [nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(5))]
    for i, target in enumerate(targets * 2):
        m.parameters = lambda recurse=True, t=target: iter([t])
        assert_clips_what_parameters_yields(m, 10 + i)


def test_proxy_is_followed_at_every_call():
    targets = [nn.Linear(3, 3), nn.Linear(4, 4)]
    proxy = _Proxy(targets[0])
    assert_clips_what_parameters_yields(proxy, 20)
    object.__setattr__(proxy, "target", targets[1])
    assert_clips_what_parameters_yields(proxy, 21)
    assert targets[1].weight.abs().max().item() <= C


# ----------------------------------------------------------------------------- changes between calls
def _replace_weight(m):
    m[0].weight = nn.Parameter(torch.randn(7, 5))


def _replace_in_dict(m):  # what torch.func.functional_call does, bypassing __setattr__
    m[2][0]._parameters["weight"] = nn.Parameter(torch.randn(3, 7))


def _delete_bias(m):
    del m[0].bias


def _bias_none(m):
    m[2][1].bias = None


def _add_submodule(m):
    m.add_module("extra", nn.Linear(2, 2))


def _replace_submodule(m):
    m[2] = nn.Sequential(nn.Linear(7, 4), nn.Linear(4, 1))


def _register_parameter(m):
    m[1].register_parameter("scale", nn.Parameter(torch.randn(7)))


def _swap_tensors(m):
    torch.utils.swap_tensors(m[0].weight, nn.Parameter(torch.randn(7, 5, dtype=torch.float64)))


def _new_memory(m):
    m[0].weight.data = torch.randn(7, 5)


CHANGES = [_replace_weight, _replace_in_dict, _delete_bias, _bias_none, _add_submodule, _replace_submodule,
           _register_parameter, _swap_tensors, _new_memory]


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__.strip("_"))
def test_each_call_clips_the_current_parameters(change):
    m = critic()
    assert_clips_what_parameters_yields(m, 30)
    change(m)
    assert_walk_exact(m)
    assert_clips_what_parameters_yields(m, 31)


def test_a_library_patching_module_parameters_first_is_followed():
    # nn.Module.parameters replaced before wgan_ext's first call: the walk must not take the
    # patched method for torch's own.
    import subprocess
    import sys

    code = (
        "import torch, wgan_ext\n"
        "from torch import nn\n"
        "def only_weights(self, recurse=True):\n"
        "    return (p for n, p in self.named_parameters(recurse=recurse) if n.endswith('weight'))\n"
        "nn.Module.parameters = only_weights\n"
        "m = nn.Linear(3, 2)\n"
        "with torch.no_grad():\n"
        "    m.weight.fill_(5.0); m.bias.fill_(5.0)\n"
        "wgan_ext.fused_clip_(m, 0.01)\n"
        "print(m.weight.max().item(), m.bias.max().item())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    weight, bias = map(float, proc.stdout.split())
    assert weight == pytest.approx(0.01) and bias == 5.0


def test_the_walk_keeps_nothing_alive():
    import gc
    import weakref

    m = critic()
    fused_clip_(m, C)
    ref = weakref.ref(m[0].weight)
    m[0].weight = nn.Parameter(torch.randn(7, 5))
    gc.collect()
    assert ref() is None
