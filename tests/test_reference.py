"""wgan_ext.reference.algorithm1: the hand-written yardstick (no torchgan needed)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from wgan_ext.reference import algorithm1, paper_schedule


def models(seed: int = 0):
    torch.manual_seed(seed)
    gen = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    critic = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
    return gen, critic


def stream(seed: int = 0, m: int = 8):
    g = torch.Generator().manual_seed(seed)
    return lambda: torch.randn(m, 2, generator=g) + 1.0


def test_counts_clipping_and_history():
    gen, critic = models()
    seen = []
    result = algorithm1(
        gen, critic, stream(), lambda m: torch.randn(m, 3), n_gen_iters=4, c=0.02,
        callback=lambda g, r: seen.append((g, r.critic_updates)),
    )
    assert result.critic_iters == [5, 5, 5, 5] and result.critic_updates == 20
    assert result.generator_updates == 4 and len(result.generator_loss) == 4 and len(result.wasserstein) == 20
    assert seen == [(0, 5), (1, 10), (2, 15), (3, 20)]
    assert all(bool((p.abs() <= 0.02).all()) for p in critic.parameters())
    assert isinstance(result.optimizer_critic, torch.optim.RMSprop)
    assert result.optimizer_critic.param_groups[0]["lr"] == 5e-5


def test_clip_before_leaves_the_last_critic_unclipped():
    gen, critic = models()
    gen2, critic2 = copy.deepcopy(gen), copy.deepcopy(critic)
    torch.manual_seed(1)
    algorithm1(gen, critic, stream(), lambda m: torch.randn(m, 3), n_gen_iters=2, lr=1e-2, c=0.02, clip_placement="before")
    torch.manual_seed(1)
    algorithm1(gen2, critic2, stream(), lambda m: torch.randn(m, 3), n_gen_iters=2, lr=1e-2, c=0.02)
    assert max(p.abs().max().item() for p in critic.parameters()) > 0.02
    assert max(p.abs().max().item() for p in critic2.parameters()) <= torch.tensor(0.02).item()


def test_one_critic_iteration_by_hand():
    gen, critic = models(2)
    gen2, critic2 = copy.deepcopy(gen), copy.deepcopy(critic)
    x = torch.randn(4, 2)
    torch.manual_seed(3)
    algorithm1(gen, critic, lambda: x, lambda m: torch.randn(m, 3), n_gen_iters=1, n_critic=1, lr=1e-2, c=0.05)
    opt_f, opt_g = torch.optim.RMSprop(critic2.parameters(), lr=1e-2), torch.optim.RMSprop(gen2.parameters(), lr=1e-2)
    torch.manual_seed(3)
    fake = gen2(torch.randn(4, 3)).detach()
    opt_f.zero_grad()
    (critic2(fake).mean() - critic2(x).mean()).backward()
    opt_f.step()
    with torch.no_grad():
        for p in critic2.parameters():
            p.clamp_(-0.05, 0.05)
    opt_g.zero_grad()
    (-critic2(gen2(torch.randn(4, 3))).mean()).backward()
    opt_g.step()
    for a, b in zip(list(gen.parameters()) + list(critic.parameters()), list(gen2.parameters()) + list(critic2.parameters())):
        assert torch.equal(a, b)


def test_schedules():
    assert [paper_schedule(g) for g in (0, 24, 25, 500, 501)] == [100, 100, 5, 100, 5]
    gen, critic = models()
    result = algorithm1(gen, critic, stream(), lambda m: torch.randn(m, 3), n_gen_iters=3, schedule=lambda g: g + 1)
    assert result.critic_iters == [1, 2, 3]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_gen_iters": -1}, "n_gen_iters"),
        ({"n_gen_iters": 1, "n_critic": 0}, "n_critic"),
        ({"n_gen_iters": 1, "c": 0}, "c must be"),
        ({"n_gen_iters": 1, "c": (0.1, -0.1)}, "lo < hi"),
        ({"n_gen_iters": 1, "clip_placement": "never"}, "clip_placement"),
        ({"n_gen_iters": 1, "schedule": "weekly"}, "schedule"),
    ],
)
def test_errors(kwargs, match):
    gen, critic = models()
    with pytest.raises(ValueError, match=match):
        algorithm1(gen, critic, stream(), lambda m: torch.randn(m, 3), **kwargs)
