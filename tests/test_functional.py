"""wgan_ext.functional: formulas, per-sample gradient penalty, schedule, update rules, errors.

Needs no torchgan. Values are checked against hand-computed numbers, closed forms, or the same
update written out with torch ops.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import wgan_ext.functional as F


def mlp(seed: int = 0, d_in: int = 2, d_out: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 8), nn.ReLU(), nn.Linear(8, d_out))


def critic_fn(critic):
    return lambda x: critic(x).view(-1)


# --------------------------------------------------------------------------------------------
# losses


def test_wasserstein_losses_against_hand_values():
    f_real = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean 3
    f_fake = torch.tensor([0.5, -0.5, 1.0, 1.0])  # mean 0.5
    assert F.wasserstein_critic_loss(f_real, f_fake).item() == pytest.approx(-2.5)
    assert F.wasserstein_critic_loss(f_real, f_fake, "sum").item() == pytest.approx(-10.0)
    assert torch.equal(F.wasserstein_critic_loss(f_real, f_fake, "none"), f_fake - f_real)
    assert F.wasserstein_estimate(f_real, f_fake).item() == pytest.approx(2.5)
    assert F.wasserstein_generator_loss(f_fake).item() == pytest.approx(-0.5)
    assert F.wasserstein_generator_loss(f_fake, "sum").item() == pytest.approx(-2.0)
    # batches of different sizes: each side averaged on its own
    assert F.wasserstein_critic_loss(f_real, f_fake[:2]).item() == pytest.approx(0.0 - 3.0)
    assert F.wasserstein_estimate(f_real, f_fake[:2]).item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="reduction='none' needs f_real and f_fake of one shape"):
        F.wasserstein_critic_loss(f_real, f_fake[:2], "none")


def test_estimate_is_exactly_minus_the_loss():
    g = torch.Generator().manual_seed(0)
    f_real, f_fake = torch.randn(64, generator=g), torch.randn(64, generator=g)
    assert F.wasserstein_estimate(f_real, f_fake).item() == -F.wasserstein_critic_loss(f_real, f_fake).item()


def test_hinge_losses_against_hand_values():
    f_real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - f) = [0, 0.5, 2]
    f_fake = torch.tensor([-2.0, 0.0, 0.5])  # relu(1 + f) = [0, 1, 1.5]
    assert F.hinge_critic_loss(f_real, f_fake).item() == pytest.approx(2.5 / 3 + 2.5 / 3)
    assert F.hinge_critic_loss(f_real, f_fake, "sum").item() == pytest.approx(5.0)
    assert torch.equal(F.hinge_critic_loss(f_real, f_fake, "none"), torch.tensor([0.0, 1.5, 3.5]))
    assert F.hinge_generator_loss(f_fake).item() == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------
# gradient penalty


def test_interpolate_draws_one_eps_per_sample():
    real = torch.arange(12.0).view(4, 3)
    fake = -torch.ones(4, 3)
    torch.manual_seed(3)
    x_hat, eps = F.interpolate(real, fake)
    torch.manual_seed(3)
    assert torch.equal(eps, torch.rand(4))
    assert len(set(eps.tolist())) == 4
    for i in range(4):
        assert torch.allclose(x_hat[i], eps[i] * real[i] + (1 - eps[i]) * fake[i])
    assert x_hat.requires_grad and x_hat.is_leaf


def test_gradient_penalty_matches_closed_form_for_a_linear_critic():
    # f(x) = x . w has gradient w for every sample: penalty (||w|| - 1)^2 exactly.
    w = torch.tensor([0.6, 0.8, 2.0])
    x_hat = torch.randn(5, 3, requires_grad=True)
    expected = (w.norm() - 1) ** 2
    assert F.gradient_penalty(x_hat, x_hat @ w).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gradient_penalty_matches_independent_per_sample_norms():
    critic = mlp(1, d_in=6)
    x_hat = torch.randn(7, 2, 3, requires_grad=True)  # non-batch dims flattened for the norm
    got = F.gradient_penalty(x_hat, critic(x_hat.view(7, 6)).view(-1), "none")
    for i in range(7):
        xi = x_hat[i].detach().clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(critic(xi.view(1, 6)).sum(), xi)
        assert got[i].item() == pytest.approx(((gi.norm() - 1) ** 2).item(), rel=1e-5)
    assert F.gradient_penalty(x_hat, critic(x_hat.view(7, 6)).view(-1)).item() == pytest.approx(got.mean().item())


def test_wasserstein_gradient_penalty_weight_and_eps():
    critic = critic_fn(mlp(2))
    real, fake = torch.randn(4, 2), torch.randn(4, 2)
    eps = torch.tensor([0.0, 1.0, 0.5, 0.25])
    x_hat, _ = F.interpolate(real, fake, eps)
    unweighted = F.gradient_penalty(x_hat, critic(x_hat))
    weighted = F.wasserstein_gradient_penalty(critic, real, fake, eps=eps)
    assert weighted.item() == pytest.approx(10.0 * unweighted.item(), rel=1e-6)
    assert F.wasserstein_gradient_penalty(critic, real, fake, eps=eps, lambd=0.5).item() == pytest.approx(
        0.5 * unweighted.item(), rel=1e-6
    )
    with pytest.raises(ValueError, match=r"eps must have shape \(4,\)"):
        F.interpolate(real, fake, torch.rand(4, 1))


# --------------------------------------------------------------------------------------------
# schedule


def test_paper_schedule_values():
    s = F.CriticSchedule.paper(5)
    expected = {0: 100, 1: 100, 24: 100, 25: 5, 26: 5, 499: 5, 500: 100, 501: 5, 999: 5, 1000: 100}
    assert {g: s(g) for g in expected} == expected
    assert {g: F.paper_n_critic(g) for g in expected} == expected
    assert F.resolve_schedule("paper", 3)(30) == 3


def test_constant_schedule_and_n_critic_fallback():
    assert [F.CriticSchedule(5)(g) for g in (0, 1, 500)] == [5, 5, 5]
    unset = F.CriticSchedule()
    assert unset(7) == 5 and unset(7, n_critic=2) == 2  # Trainer's ncritic, else the paper's 5
    assert F.resolve_schedule(None, 4) == F.CriticSchedule(4)
    assert pickle.loads(pickle.dumps(F.CriticSchedule.paper(3))) == F.CriticSchedule.paper(3)
    assert "every=500" in repr(F.CriticSchedule.paper())


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: F.CriticSchedule(0), "n_critic must be a positive integer"),
        (lambda: F.CriticSchedule(5, boost=0), "boost must be a positive integer"),
        (lambda: F.CriticSchedule(5, warmup=-1), "warmup must be an integer >= 0"),
        (lambda: F.CriticSchedule(5, every=0), "every must be a positive integer"),
        (lambda: F.CriticSchedule(2.5), "n_critic must be a positive integer"),
        (lambda: F.resolve_schedule("hourly"), "schedule must be"),
        (lambda: F.resolve_schedule(F.CriticSchedule(5), 5), "inside the CriticSchedule"),
    ],
)
def test_schedule_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------------------------
# update rules


def _hand_critic_step(critic, opt, real, fake, lo, hi, placement):
    if placement == "before":
        with torch.no_grad():
            for p in critic.parameters():
                p.copy_(torch.clamp(p, lo, hi))
    opt.zero_grad()
    loss = critic(fake).mean() - critic(real).mean()
    loss.backward()
    opt.step()
    if placement == "after":
        with torch.no_grad():
            for p in critic.parameters():
                p.copy_(torch.clamp(p, lo, hi))


@pytest.mark.parametrize("placement", ["after", "before"])
def test_critic_step_matches_hand_written_update(placement):
    critic = mlp(4)
    twin = copy.deepcopy(critic)
    opt, opt2 = torch.optim.RMSprop(critic.parameters(), lr=1e-2), torch.optim.RMSprop(twin.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        real, fake = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
        step = F.critic_step(critic, opt, real, fake, clip=(-0.05, 0.05), clip_placement=placement)
        _hand_critic_step(twin, opt2, real, fake, -0.05, 0.05, placement)
        for p, q in zip(critic.parameters(), twin.parameters()):
            assert torch.equal(p, q)
        assert step.penalty is None and step.loss == -step.wasserstein
    inside = all(bool((p.abs() <= 0.05).all()) for p in critic.parameters())
    assert inside == (placement == "after")


@pytest.mark.parametrize("clip", [None, 0.05, (-0.05, 0.05), "clipper"])
def test_critic_step_with_a_clipping_optimizer_does_not_clip_twice(clip, monkeypatch):
    # ClippedRMSprop's step clips: the step must match the hand-written RMSprop + clamp (within
    # the fused kernel's stated bound), and no separate clip may run.
    from wgan_ext import ClippedRMSprop, FusedClipper

    critic = mlp(6)
    twin = copy.deepcopy(critic)
    opt = ClippedRMSprop(critic.parameters(), lr=1e-2, clip=0.05)
    opt2 = torch.optim.RMSprop(twin.parameters(), lr=1e-2)
    if clip == "clipper":
        clip = FusedClipper(critic, 0.05)
    monkeypatch.setattr(F, "fused_clip_", lambda *a, **k: pytest.fail("a second clip ran"))
    monkeypatch.setattr(FusedClipper, "__call__", lambda self: pytest.fail("a second clip ran"))
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        real, fake = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
        F.critic_step(critic, opt, real, fake, clip=clip)
        _hand_critic_step(twin, opt2, real, fake, -0.05, 0.05, "after")
        for p, q in zip(critic.parameters(), twin.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kwargs, match", [
    ({"clip": 0.02}, r"clip=\(-0.02, 0.02\) but the critic's ClippedRMSprop clips to \(-0.05, 0.05\)"),
    ({"clip": 0.05, "clip_placement": "before"}, "clip_placement='before' needs an optimizer that does not clip"),
])
def test_critic_step_refuses_a_clip_the_optimizer_contradicts(kwargs, match):
    from wgan_ext import ClippedRMSprop

    critic = mlp(7)
    before = copy.deepcopy(critic.state_dict())
    opt = ClippedRMSprop(critic.parameters(), lr=1e-2, clip=0.05)
    with pytest.raises(ValueError, match=match):
        F.critic_step(critic, opt, torch.randn(4, 2), torch.randn(4, 2), **kwargs)
    assert all(torch.equal(v, critic.state_dict()[k]) for k, v in before.items())
    partial = ClippedRMSprop(list(critic.parameters())[:2], lr=1e-2, clip=0.05)
    with pytest.raises(ValueError, match="does not clip every critic parameter"):
        F.critic_step(critic, partial, torch.randn(4, 2), torch.randn(4, 2), clip=0.05)


def test_critic_step_with_a_fused_clipper_clips_its_tensors():
    from wgan_ext import FusedClipper

    critic = mlp(8)
    twin = copy.deepcopy(critic)
    opt, opt2 = torch.optim.RMSprop(critic.parameters(), lr=1e-1), torch.optim.RMSprop(twin.parameters(), lr=1e-1)
    clipper = FusedClipper(critic, (-0.02, 0.03))
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    F.critic_step(critic, opt, real, fake, clip=clipper)
    _hand_critic_step(twin, opt2, real, fake, -0.02, 0.03, "after")
    for p, q in zip(critic.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_critic_step_with_penalty_is_one_step():
    critic = mlp(5)
    opt = torch.optim.RMSprop(critic.parameters(), lr=1e-3)
    steps = []
    opt.register_step_post_hook(lambda *a: steps.append(1))
    real, fake = torch.randn(6, 2), torch.randn(6, 2)
    eps = torch.rand(6)
    twin = copy.deepcopy(critic)
    step = F.critic_step(critic, opt, real, fake, lambd=10.0, eps=eps, real_fn=critic_fn(critic), fake_fn=critic_fn(critic))
    assert steps == [1]
    x_hat = (eps[:, None] * real + (1 - eps[:, None]) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(twin(x_hat).sum(), x_hat)
    expected_penalty = ((grad.norm(dim=1) - 1) ** 2).mean().item()
    assert step.penalty == pytest.approx(expected_penalty, rel=1e-5)
    w = (twin(real).mean() - twin(fake).mean()).item()
    assert step.wasserstein == pytest.approx(w, abs=1e-6)
    assert step.loss == pytest.approx(-w + 10.0 * expected_penalty, rel=1e-5, abs=1e-6)


def test_generator_step_matches_hand_written_update():
    gen, critic = mlp(6, d_in=3, d_out=2), mlp(7)
    gen2, critic2 = copy.deepcopy(gen), copy.deepcopy(critic)
    opt, opt2 = torch.optim.RMSprop(gen.parameters(), lr=1e-2), torch.optim.RMSprop(gen2.parameters(), lr=1e-2)
    z = torch.randn(5, 3)
    value = F.generator_step(gen, critic, opt, z)
    opt2.zero_grad()
    loss = -critic2(gen2(z)).mean()
    loss.backward()
    opt2.step()
    assert value == loss.item()
    for p, q in zip(gen.parameters(), gen2.parameters()):
        assert torch.equal(p, q)


# --------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"clip": (0.01, 0.01)}, ValueError, "needs lo < hi"),
        ({"clip": (0.01, -0.01)}, ValueError, "lo"),
        ({"c": 0.0}, ValueError, "c must be > 0"),
        ({"c": -1}, ValueError, "c must be > 0"),
        ({"c": "0.01"}, TypeError, "c must be a real number"),
        ({"clip": (0.1,)}, ValueError, "pair"),
        ({"clip": (-0.1, 0.1), "c": 0.1}, ValueError, "not both"),
    ],
)
def test_resolve_clip_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        F.resolve_clip(**kwargs)


def test_resolve_clip_values():
    assert F.resolve_clip(c=0.01) == (-0.01, 0.01)
    assert F.resolve_clip((-0.2, 0.1)) == (-0.2, 0.1)
    assert F.resolve_clip(0.3) == (-0.3, 0.3)
    assert F.resolve_clip() is None
    assert F.resolve_clip(default=0.01) == (-0.01, 0.01)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"reduction": "none"}, "reduction='none' gives one loss per sample"),
        ({"reduction": "max"}, "reduction must be one of"),
        ({"objective": "minimax"}, "objective must be one of"),
        ({"clip_placement": "during"}, "clip_placement must be one of"),
        ({"lambd": -1.0}, "lambd must be finite and >= 0"),
        ({"clip": (1.0, -1.0)}, "lo"),
    ],
)
def test_critic_step_bad_input_changes_nothing(kwargs, match):
    critic = mlp(8)
    opt = torch.optim.RMSprop(critic.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in critic.parameters()]
    with pytest.raises(ValueError, match=match):
        F.critic_step(critic, opt, torch.randn(4, 2), torch.randn(4, 2), **kwargs)
    assert all(torch.equal(p, b) for p, b in zip(critic.parameters(), before))
    assert all(p.grad is None for p in critic.parameters()) and not opt.state


def test_generator_step_needs_a_scalar():
    gen, critic = mlp(9, d_in=3, d_out=2), mlp(10)
    opt = torch.optim.RMSprop(gen.parameters())
    with pytest.raises(ValueError, match="reduction='none'"):
        F.generator_step(gen, critic, opt, torch.randn(2, 3), reduction="none")
    assert all(p.grad is None for p in gen.parameters())
