"""The CUDA clip under CUDA graphs, streams and the profiler (needs a GPU; skipped elsewhere).

* A whole critic step (forward real and fake, backward, RMSprop(capturable=True), clip) captured
  with torch.cuda.graph and replayed 20 times equals the same steps run eagerly, bit for bit,
  with FusedClipper and with fused_clip_.
* The same step under torch.compile(mode="reduce-overhead").
* A clip issued on a side stream is ordered with that stream's work.
* Kernel launches per call: one per dtype, and one more per 1,055 tensors (104 with CUDA before
  13: the tensors' addresses travel in the kernel's arguments, csrc/cuda/multi_tensor_apply.cuh).
"""

from __future__ import annotations

import pytest
import torch

from _clip_util import check, make_values
from wgan_ext import FusedClipper, fused_clip_

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")]

C = 0.01
LR = 5e-3


def _critic() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                               torch.nn.ReLU(), torch.nn.Linear(64, 1)).cuda()


def _data(step: int) -> tuple:
    g = torch.Generator(device="cuda").manual_seed(step)
    return (torch.randn(64, 2, device="cuda", generator=g) + 2.0,
            torch.randn(64, 2, device="cuda", generator=g))


def _make(clip_kind: str):
    critic = _critic()
    opt = torch.optim.RMSprop(critic.parameters(), lr=LR, capturable=True)
    if clip_kind == "clipper":
        clipper = FusedClipper(critic, C)
        clip = clipper.__call__
    else:
        def clip():
            fused_clip_(critic, C)
    return critic, opt, clip


def _step(critic, opt, clip, real, fake) -> None:
    loss = -(critic(real).mean() - critic(fake).mean())
    loss.backward()
    opt.step()
    clip()


@pytest.mark.parametrize("clip_kind", ["clipper", "fused_clip_"])
def test_captured_critic_step_replays_bit_for_bit_like_eager(clip_kind):
    eager = _make(clip_kind)
    graphed = _make(clip_kind)
    static_real, static_fake = _data(0)
    # Warm up on a side stream (as torch.cuda.graph asks), the same steps for both twins.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for w in range(3):
            real, fake = _data(100 + w)
            for critic, opt, clip in (eager, graphed):
                opt.zero_grad(set_to_none=True)
                _step(critic, opt, clip, real, fake)
    torch.cuda.current_stream().wait_stream(side)

    critic, opt, clip = graphed
    opt.zero_grad(set_to_none=True)  # grads are allocated inside the graph
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _step(critic, opt, clip, static_real, static_fake)

    for step in range(20):
        real, fake = _data(step)
        static_real.copy_(real)
        static_fake.copy_(fake)
        graph.replay()
        e_critic, e_opt, e_clip = eager
        e_opt.zero_grad(set_to_none=True)
        _step(e_critic, e_opt, e_clip, real, fake)
    torch.cuda.synchronize()
    for a, b in zip(eager[0].parameters(), graphed[0].parameters()):
        assert torch.equal(a, b)
        assert b.abs().max().item() <= C
    assert max(p.abs().max().item() for p in graphed[0].parameters()) == pytest.approx(C)


def test_critic_step_under_torch_compile_reduce_overhead():
    torch._dynamo.reset()
    eager, compiled = _make("fused_clip_"), _make("fused_clip_")

    def step(critic, opt, real, fake):
        opt.zero_grad(set_to_none=True)
        loss = -(critic(real).mean() - critic(fake).mean())
        loss.backward()
        opt.step()
        fused_clip_(critic, C)

    fast = torch.compile(step, mode="reduce-overhead")
    for s in range(20):
        real, fake = _data(s)
        step(eager[0], eager[1], real, fake)
        fast(compiled[0], compiled[1], real, fake)
    torch.cuda.synchronize()
    for a, b in zip(eager[0].parameters(), compiled[0].parameters()):
        assert b.abs().max().item() <= C
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("clip_kind", ["clipper", "fused_clip_"])
def test_clip_on_a_side_stream_is_ordered_with_that_stream(clip_kind):
    critic = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(8)]).cuda()
    clipper = FusedClipper(critic, C)
    clipper()  # first called on the default stream
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        with torch.no_grad():
            for p in critic.parameters():
                p.mul_(1000)  # queued on the side stream, before the clip
        before = [p.detach().clone() for p in critic.parameters()]
        clipper() if clip_kind == "clipper" else fused_clip_(critic, C)
        after = [p.detach().clone() for p in critic.parameters()]  # after the clip, on the side stream
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for a, b in zip(after, before):
        check(a, b, -C, C, "cuda")


def _kernels_per_call(fn, calls: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
             and "ClampFunctor" in e.name]
    return len(names) / calls


def test_launches_per_call():
    small = [make_values(64, torch.float32, "cuda", i) for i in range(800)]
    many = [make_values(8, torch.float32, "cuda", i) for i in range(3200)]
    mixed = small[:400] + [t.to(torch.bfloat16) for t in small[400:]]
    assert _kernels_per_call(lambda: fused_clip_(small, C)) == 1
    assert _kernels_per_call(FusedClipper(small, C)) == 1
    per_launch = 1055 if int(torch.version.cuda.split(".")[0]) >= 13 else 104  # kernel-argument space
    assert _kernels_per_call(FusedClipper(many, C)) == -(-3200 // per_launch)
    assert _kernels_per_call(lambda: fused_clip_(many, C)) == -(-3200 // per_launch)
    assert _kernels_per_call(FusedClipper(mixed, C)) == 2  # one per dtype
