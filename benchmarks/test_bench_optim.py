"""The critic update of Algorithm 1 (RMSprop step + clip of every weight): fused vs separate.

One group per (device, shape), float32; in each group:

  clipped_rmsprop     ``ClippedRMSprop(params, lr, clip=c).step()``: the fused op, one pass
  clipped_fallback    ``ClippedRMSprop(..., fused=False).step()``: RMSprop's functional step +
                      ``fused_clip_`` (what runs where no kernel serves the device)
  foreach_fused_clip  ``RMSprop(foreach=True).step()`` + ``fused_clip_(critic, c)``: the baseline
  single_loop         ``RMSprop(foreach=False).step()`` + ``for p in params: p.data.clamp_(-c, c)``
  compiled            ``torch.compile`` of (``RMSprop(foreach=True).step()`` + that loop), the way
                      torch.optim optimizers are compiled (only the shapes in --bench-compile)

Shapes: the benchmark critics (bench_critics.py) plus ``flat10m``, 10 M parameters in 4 tensors
of 2.5 M (a large critic in a few big tensors). Gradients are fixed random tensors set once; every round restores
the weights to their uniform [-2c, 2c] draw outside the timing (the optimizer state evolves,
identically for every contender). Each round also times one ``foreach_fused_clip`` call on a twin
critic just before the contender (``extra_info["paired_ratio"]`` = contender / baseline, the
median over rounds: both calls see the same machine load). On CUDA, ``device_us`` is the
fused step's back-to-back device time and ``copy_device_us`` that of a device-to-device copy
moving the same bytes as one pass (read parameter, gradient, square average; write parameter,
square average: 5 x 4 bytes per parameter), ``traffic_ratio`` their quotient.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench_critics import CRITICS, C, HI, LO, Weights, build
from bench_harness import compile_shapes, require_kernel

CONTENDERS = ("clipped_rmsprop", "clipped_fallback", "foreach_fused_clip", "single_loop", "compiled",
              "one_pass")
SHAPES = CRITICS + ("flat10m",)
LR = 5e-5


def make_critic(shape: str, dev: torch.device) -> nn.Module:
    if shape != "flat10m":
        return build(shape, dev, torch.float32)
    torch.manual_seed(0)
    critic = nn.ParameterList(nn.Parameter(torch.empty(2_500_000, device=dev)) for _ in range(4))
    with torch.no_grad():
        for p in critic:
            p.uniform_(-2 * C, 2 * C)
    return critic


class Setup:
    """A critic with fixed gradients, its pristine weights, and one contender's update."""

    def __init__(self, contender: str, shape: str, dev: torch.device, request):
        try:
            self.critic = make_critic(shape, dev)
        except ImportError as e:  # dcgan64 needs torchgan
            pytest.skip(f"critic {shape} unavailable: {e}")
        self.params = list(self.critic.parameters())
        gen = torch.Generator(device=dev).manual_seed(1)
        for p in self.params:
            p.grad = torch.randn(p.shape, device=dev, generator=gen)
        self.weights = Weights(self.params)
        self.backend = ""
        self.fn = self._make(contender, shape, dev, request)

    def _make(self, contender, shape, dev, request):
        from wgan_ext import ClippedRMSprop, fused_clip_

        params, critic = self.params, self.critic
        if contender == "clipped_rmsprop":
            self.backend = require_kernel(dev.type)
            return ClippedRMSprop(params, lr=LR, clip=C, fused=True).step
        if contender == "clipped_fallback":
            self.backend = "torch RMSprop + fused_clip_"
            return ClippedRMSprop(params, lr=LR, clip=C, fused=False).step
        if contender == "foreach_fused_clip":
            self.backend = "RMSprop(foreach) + fused_clip_ (" + require_kernel(dev.type) + ")"
            opt = torch.optim.RMSprop(params, lr=LR, foreach=True)

            def foreach_fused_clip():
                opt.step()
                fused_clip_(critic, C, backend=dev.type)

            return foreach_fused_clip
        if contender == "single_loop":
            self.backend = "RMSprop(foreach=False) + clamp_ loop"
            opt = torch.optim.RMSprop(params, lr=LR, foreach=False)

            def single_loop():
                opt.step()
                for p in params:
                    p.data.clamp_(LO, HI)

            return single_loop
        if contender == "compiled":
            every = request.config.getoption("--bench-compile") == "all"
            if shape not in compile_shapes(request.config) and not every:
                pytest.skip("torch.compile contender runs on the --bench-compile shapes only")
            self.backend = "torch.compile(RMSprop(foreach) + clamp_ loop)"
            torch._dynamo.reset()
            opt = torch.optim.RMSprop(params, lr=LR, foreach=True)

            @torch.compile
            def compiled():
                opt.step()
                with torch.no_grad():
                    for p in params:
                        p.clamp_(LO, HI)

            return compiled
        if contender == "one_pass":
            if shape != "flat10m":
                pytest.skip("the one-pass floor runs on flat10m only")
            self.backend = "a copy_ of the bytes one pass moves"
            numel = sum(p.numel() for p in params)
            src = torch.empty(numel * 5 // 2, device=dev)  # a copy reads and writes: 2 x 2.5 x 4 B
            dst = torch.empty_like(src)
            return lambda: dst.copy_(src)
        raise AssertionError(contender)


@pytest.mark.parametrize("contender", CONTENDERS)  # varies fastest: a group runs back to back
@pytest.mark.parametrize("shape", SHAPES)
def test_optim_step(run, dev, shape, contender, request):
    mine = Setup(contender, shape, dev, request)
    numel = sum(p.numel() for p in mine.params)
    info = dict(kind="optim", device=dev.type, shape=shape, dtype="float32", contender=contender,
                tensors=len(mine.params), numel=numel, itemsize=4, backend=mine.backend)
    group = f"optim {dev.type} {shape} float32"
    ref = None
    if contender != "foreach_fused_clip":  # the paired baseline, on a twin critic
        twin = Setup("foreach_fused_clip", shape, dev, request)
        ref = (twin.fn, twin.weights.restore)
    run(mine.fn, dev=dev, setup=mine.weights.restore, group=group, ref=ref, **info)
    if dev.type == "cuda" and contender == "clipped_rmsprop" and not run.benchmark.disabled:
        run.device_time(mine.fn)
        src = torch.empty(numel * 5 // 2, device=dev)  # a copy reads and writes: 2 x 2.5 x 4 B
        dst = torch.empty_like(src)
        run.device_time(lambda: dst.copy_(src), key="copy_device_us")
        extra = run.benchmark.extra_info
        extra["traffic_ratio"] = extra["device_us"] / extra["copy_device_us"]
    for p in mine.params:  # the contender really clipped
        assert contender == "one_pass" or torch.equal(p, p.clamp(LO, HI))
