"""Clipping every critic weight to [-c, c]: fused kernels vs what people use today.

One pytest-benchmark group per (device, critic shape, dtype); in each group:

  limit          one ``clamp_`` over a single flat buffer with the critic's element count
  fused_op       ``torch.ops.wgan_ext.fused_clip_(tensors, lo, hi)`` on a prepared list (kernel)
  fused_module   ``fused_clip_(critic, c, backend=<device>)``: stateless, collects
                 ``critic.parameters()`` and checks every tensor (in the op) at each call
  fused_plan     ``FusedClipper(critic, c, backend=<device>)()``: parameters collected once
  fused_flat     ``FusedClipper(critic, c, flatten=True)``: the parameters moved into one buffer
                 first (on a twin critic built the same way, so the others keep theirs)
  fallback       ``fused_clip_(critic, c, backend="torch")``: the pure-PyTorch fallback
  foreach        ``torch._foreach_clamp_min_`` + ``torch._foreach_clamp_max_`` on a prepared list
  loop           ``for p in critic.parameters(): p.data.clamp_(lo, hi)`` (torchgan, the paper)
  compiled_loop  ``torch.compile`` of that loop (float32, only the shapes in --bench-compile)

Every round restores the weights drawn uniform in [-2c, 2c] before the timed call (untimed), and
times one ``limit`` call just before it (its buffer restored by the same per-tensor copies), so
each contender's ratio to the limit is paired per round
(``extra_info["paired_ratio"]``, the median over rounds).
"""

from __future__ import annotations

import pytest
import torch

from bench_critics import DTYPES, HI, LO, SHAPES, C, Weights, build
from bench_harness import compile_shapes, require_kernel

CONTENDERS = ("limit", "fused_op", "fused_module", "fused_plan", "fused_flat", "fallback", "foreach",
              "loop", "compiled_loop")

_cache: dict = {}


def critic_for(device, shape, dtype):
    """One critic at a time, shared by the contenders of a group (they run back to back)."""
    key = (device, shape, dtype)
    if key not in _cache:
        _cache.clear()
        try:
            critic = build(shape, device, DTYPES[dtype])
        except ImportError as e:  # dcgan64 needs torchgan
            pytest.skip(f"critic {shape} unavailable: {e}")
        _cache[key] = (critic, Weights(critic.parameters()))
    return _cache[key]


@pytest.fixture(scope="module", autouse=True)
def _free_critics():
    yield
    _cache.clear()


def loop(critic, lo, hi):
    for p in critic.parameters():
        p.data.clamp_(lo, hi)


def make(contender, critic, params, dev, dtype, request):
    """(timed function, backend description) for ``contender``; may skip."""
    if contender == "fused_op":
        backend = require_kernel(dev.type)
        return (lambda: torch.ops.wgan_ext.fused_clip_(params, LO, HI)), backend
    if contender == "fused_module":
        from wgan_ext import fused_clip_

        backend = require_kernel(dev.type)
        return (lambda: fused_clip_(critic, C, backend=dev.type)), backend
    if contender == "fused_plan":
        from wgan_ext import FusedClipper

        backend = require_kernel(dev.type)
        return FusedClipper(critic, C, backend=dev.type), backend
    if contender == "fused_flat":
        from wgan_ext import FusedClipper

        backend = require_kernel(dev.type)
        return FusedClipper(critic, C, backend=dev.type, flatten=True), backend + ", flattened"
    if contender == "fallback":
        from wgan_ext import fused_clip_

        return (lambda: fused_clip_(critic, C, backend="torch")), "torch reference"
    if contender == "foreach":
        def foreach():
            with torch.no_grad():
                torch._foreach_clamp_min_(params, LO)
                torch._foreach_clamp_max_(params, HI)

        return foreach, "aten foreach"
    if contender == "loop":
        return (lambda: loop(critic, LO, HI)), "aten clamp_ per tensor"
    if contender == "compiled_loop":
        shape = request.node.callspec.params["shape"]
        if dtype != "float32" or shape not in compile_shapes(request.config):
            pytest.skip("torch.compile contender runs on float32 and the --bench-compile shapes only")
        torch._dynamo.reset()  # a fresh cache: no guard chains left by other critics
        compiled = torch.compile(loop)
        return (lambda: compiled(critic, LO, HI)), "torch.compile (inductor)"
    raise AssertionError(contender)


@pytest.mark.parametrize("contender", CONTENDERS)  # varies fastest: a group runs back to back
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES)
def test_clip(run, dev, shape, dtype, contender, request):
    if shape == "tiny800" and (dtype != "float32" or contender == "compiled_loop"):
        pytest.skip("tiny800 (per-tensor overhead probe) runs float32 and no torch.compile")
    critic, weights = critic_for(dev, shape, dtype)
    params = list(critic.parameters())
    numel = sum(p.numel() for p in params)
    info = dict(kind="clip", device=dev.type, shape=shape, dtype=dtype, contender=contender,
                tensors=len(params), numel=numel, itemsize=params[0].element_size())
    group = f"clip {dev.type} {shape} {dtype}"

    flat = torch.empty(numel, device=dev, dtype=DTYPES[dtype]).uniform_(2 * LO, 2 * HI)
    # Restored through views sized like the critic's tensors: the same copies (a small tensor's
    # copy_ runs on one thread, a big one's on all) as the contenders' restore, so the limit's
    # bytes sit in the same cores' caches when its timed call starts. (One big copy_ would
    # spread them over all cores, a placement no critic's weights have after an optimizer step.)
    flat_weights = Weights(torch.split(flat, [p.numel() for p in params]))
    limit = lambda: flat.clamp_(LO, HI)  # noqa: E731
    if contender == "limit":
        run(limit, dev=dev, setup=flat_weights.restore, group=group, backend="aten clamp_", **info)
        if dev.type == "cuda":
            run.device_time(limit)
            src = torch.empty_like(flat)
            run.device_time(lambda: flat.copy_(src), key="copy_device_us")
        return

    if contender == "fused_flat":  # a twin: flattening moves the shared critic's memory
        critic = build(shape, dev, DTYPES[dtype])
        params = list(critic.parameters())
    fn, backend = make(contender, critic, params, dev, dtype, request)
    if contender == "fused_flat":
        weights = Weights(params)  # the moved parameters' memory
    run(fn, dev=dev, setup=weights.restore, group=group, backend=backend,
        ref=(limit, flat_weights.restore), **info)
    if dev.type == "cuda":
        run.device_time(fn)
    for p in params:  # the contender really clipped (the next group member restores them)
        assert torch.equal(p, p.clamp(LO, HI))
