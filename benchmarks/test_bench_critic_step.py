"""A whole critic step (forward real + fake, backward, RMSprop step, clip): the clip's share.

One group per (device, critic shape), float32. Contenders differ only in the clip:

  none           no clip: the step without it, to subtract
  loop           ``for p in critic.parameters(): p.data.clamp_(-c, c)``
  fused_module   ``fused_clip_(critic, c, backend=<device>)``
  fused_plan     ``FusedClipper(critic, c, backend=<device>)()``
  fused_flat     the same with ``flatten=True`` (the parameters moved into one buffer first)

The weights evolve as in training (no restore between rounds): RMSprop(lr=5e-5) moves a few of
them out of [-c, c] each step and the clip brings them back. The clip call is also timed inside
each step (host time: on CUDA that is its launch cost, the kernels run asynchronously), giving
``extra_info["clip_share"]``, the median over rounds of clip time / step time. Batch: the paper's m = 64 on CUDA,
16 on CPU (a DCGAN step at 64 takes seconds on 2 cores).
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from bench_critics import CRITICS, C, HI, LO, build, input_shape
from bench_harness import require_kernel

CLIPS = ("none", "loop", "fused_module", "fused_plan", "fused_flat")
BATCH = {"cpu": 16, "cuda": 64}


def make_clip(clip, critic, dev):
    if clip == "none":
        return (lambda: None), "none"
    if clip == "loop":
        def loop():
            for p in critic.parameters():
                p.data.clamp_(LO, HI)

        return loop, "aten clamp_ per tensor"
    backend = require_kernel(dev.type)
    if clip == "fused_module":
        from wgan_ext import fused_clip_

        return (lambda: fused_clip_(critic, C, backend=dev.type)), backend
    from wgan_ext import FusedClipper

    if clip == "fused_flat":
        return FusedClipper(critic, C, backend=dev.type, flatten=True), backend + ", flattened"
    return FusedClipper(critic, C, backend=dev.type), backend


@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("shape", CRITICS)
def test_critic_step(run, dev, shape, clip):
    try:
        critic = build(shape, dev, torch.float32)
    except ImportError as e:  # dcgan64 needs torchgan
        pytest.skip(f"critic {shape} unavailable: {e}")
    clip_fn, backend = make_clip(clip, critic, dev)
    opt = torch.optim.RMSprop(critic.parameters(), lr=5e-5)
    batch = BATCH[dev.type]
    gen = torch.Generator(device=dev).manual_seed(1)
    real = torch.randn(batch, *input_shape(shape, dev), device=dev, generator=gen)
    fake = torch.randn(batch, *input_shape(shape, dev), device=dev, generator=gen)

    clip_times: list = []

    def step():
        opt.zero_grad(set_to_none=True)
        loss = critic(fake).mean() - critic(real).mean()  # the critic maximises real - fake
        loss.backward()
        opt.step()
        t0 = time.perf_counter()
        clip_fn()
        clip_times.append(time.perf_counter() - t0)

    params = list(critic.parameters())
    run(step, dev=dev, group=f"step {dev.type} {shape} float32", min_rounds=15, kind="step",
        device=dev.type, shape=shape, dtype="float32", contender=clip, batch=batch,
        tensors=len(params), numel=sum(p.numel() for p in params), backend=backend)
    rounds = run.round_times()
    if rounds:  # the clip's share of each timed step, paired per round
        shares = [c / r for c, r in zip(clip_times[-len(rounds):], rounds)]
        run.benchmark.extra_info.update(
            clip_share=statistics.median(shares),
            clip_us=statistics.median(clip_times[-len(rounds):]) * 1e6,
        )
    if clip != "none":
        assert all(torch.equal(p, p.clamp(LO, HI)) for p in params)
