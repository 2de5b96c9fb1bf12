r"""A hand-written Algorithm 1 (Arjovsky et al. 2017) in plain PyTorch: the yardstick.

Deliberately independent of :mod:`wgan_ext.functional`, :mod:`wgan_ext.losses` and
:func:`wgan_ext.fused_clip_`: it spells the algorithm out with ``torch.optim.RMSprop`` and
``Tensor.clamp_``, so tests and benchmarks can compare the plugins (or the ``wgan-ext train``
job) against it. Given the same models, data, seeds and RNG consumption it ends with the same
parameters, bit for bit, on CPU::

    while θ has not converged:
        for t = 1 .. n_critic(g):
            x ~ P_r (m samples);  z ~ p(z) (m samples)
            g_w ← ∇_w [ mean f_w(x) - mean f_w(g_θ(z)) ]
            w ← w + α · RMSProp(w, g_w)          (optimizer minimises mean f(g(z)) - mean f(x))
            w ← clip(w, -c, c)                   (after every critic update)
        z ~ p(z) (m samples)
        g_θ ← -∇_θ mean f_w(g_θ(z))
        θ ← θ - α · RMSProp(θ, g_θ)

RNG use per critic iteration: ``sample_real()``, then ``sample_noise(m)``; per generator
iteration: ``sample_noise(batch_size)``. This is the order in which the torchgan plugins draw,
so seeding the global RNG identically makes both runs draw the same numbers.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["algorithm1", "Algorithm1Result", "paper_schedule"]

ScheduleArg = Union[None, str, Callable[[int], int]]


def paper_schedule(gen_iter: int, n_critic: int = 5) -> int:
    """The critic schedule of the paper's code: 100 if ``gen_iter < 25 or gen_iter % 500 == 0``."""
    if gen_iter < 25 or gen_iter % 500 == 0:
        return 100
    return n_critic


@dataclass
class Algorithm1Result:
    """What :func:`algorithm1` did.

    Attributes:
        generator_updates: generator iterations performed (``n_gen_iters``).
        critic_updates: critic iterations performed in total.
        critic_iters: critic iterations before each generator iteration.
        wasserstein: ``mean f(x) - mean f(G(z))`` of every critic iteration (before its update).
        generator_loss: ``-mean f(G(z))`` of every generator iteration.
        optimizer_generator, optimizer_critic: the optimizers (to continue training).
    """

    generator_updates: int = 0
    critic_updates: int = 0
    critic_iters: List[int] = field(default_factory=list)
    wasserstein: List[float] = field(default_factory=list)
    generator_loss: List[float] = field(default_factory=list)
    optimizer_generator: Optional[torch.optim.Optimizer] = None
    optimizer_critic: Optional[torch.optim.Optimizer] = None


def _bounds(c: Union[float, Tuple[float, float], None]) -> Optional[Tuple[float, float]]:
    if c is None:
        return None
    if isinstance(c, (tuple, list)):
        if len(c) != 2 or not float(c[0]) < float(c[1]):
            raise ValueError(f"c=(lo, hi) needs two numbers with lo < hi, got {c!r}")
        return float(c[0]), float(c[1])
    if isinstance(c, bool) or not isinstance(c, numbers.Real) or not c > 0:
        raise ValueError(f"c must be a positive number or a (lo, hi) pair, got {c!r}")
    return -float(c), float(c)


def algorithm1(
    generator: nn.Module,
    critic: nn.Module,
    sample_real: Callable[[], Tensor],
    sample_noise: Callable[[int], Tensor],
    *,
    n_gen_iters: int,
    n_critic: int = 5,
    lr: float = 5e-5,
    c: Union[float, Tuple[float, float], None] = 0.01,
    schedule: ScheduleArg = None,
    batch_size: Optional[int] = None,
    clip_placement: str = "after",
    optimizer_generator: Optional[torch.optim.Optimizer] = None,
    optimizer_critic: Optional[torch.optim.Optimizer] = None,
    callback: Optional[Callable[[int, Algorithm1Result], None]] = None,
) -> Algorithm1Result:
    """Train ``generator`` and ``critic`` in place with the paper's Algorithm 1.

    Args:
        generator: ``G``, called as ``generator(z)``.
        critic: ``f``, called as ``critic(x)``; any output shape (it is averaged).
        sample_real: returns the next batch of real data (``m`` samples), on the models' device.
        sample_noise: ``sample_noise(m)`` returns ``m`` prior samples ``z``.
        n_gen_iters: generator iterations to run (the ``while`` loop).
        n_critic: critic iterations per generator iteration (5).
        lr: RMSProp learning rate alpha (5e-5); ignored for a given optimizer.
        c: clip to ``[-c, c]`` (0.01), a ``(lo, hi)`` pair, or ``None`` for no clipping.
        schedule: ``None`` (``n_critic`` always), ``"paper"`` (:func:`paper_schedule`), or a
            callable ``gen_iter -> critic iterations`` (e.g. a
            :class:`wgan_ext.functional.CriticSchedule`).
        batch_size: ``m`` for the generator's noise; default: the size of the last real batch.
        clip_placement: ``"after"`` each critic update (Algorithm 1) or ``"before"`` it (the
            paper's code and torchgan 0.1.0: the critic is clipped at the start of each critic
            iteration, so the generator trains against an unclipped critic).
        optimizer_generator, optimizer_critic: to continue a run; default
            ``torch.optim.RMSprop(params, lr=lr)`` (PyTorch defaults otherwise, as the paper code).
        callback: ``callback(gen_iter, result)`` after each generator iteration.

    Returns:
        An :class:`Algorithm1Result` (counts, per-iteration values, the optimizers).
    """
    if isinstance(n_gen_iters, bool) or not isinstance(n_gen_iters, numbers.Integral) or n_gen_iters < 0:
        raise ValueError(f"n_gen_iters must be an integer >= 0, got {n_gen_iters!r}")
    if isinstance(n_critic, bool) or not isinstance(n_critic, numbers.Integral) or n_critic < 1:
        raise ValueError(f"n_critic must be a positive integer, got {n_critic!r}")
    if clip_placement not in ("after", "before"):
        raise ValueError(f"clip_placement must be 'after' or 'before', got {clip_placement!r}")
    if schedule is None:
        def n_critic_for(g: int) -> int:
            return n_critic
    elif schedule == "paper":
        def n_critic_for(g: int) -> int:
            return paper_schedule(g, n_critic)
    elif callable(schedule):
        n_critic_for = schedule
    else:
        raise ValueError(f"schedule must be None, 'paper' or a callable, got {schedule!r}")
    bounds = _bounds(c)

    opt_g = optimizer_generator or torch.optim.RMSprop(generator.parameters(), lr=lr)
    opt_f = optimizer_critic or torch.optim.RMSprop(critic.parameters(), lr=lr)
    result = Algorithm1Result(optimizer_generator=opt_g, optimizer_critic=opt_f)
    m = batch_size

    def clip() -> None:
        with torch.no_grad():
            for p in critic.parameters():
                p.clamp_(bounds[0], bounds[1])

    for g in range(n_gen_iters):
        k = int(n_critic_for(g))
        for _ in range(k):
            if bounds is not None and clip_placement == "before":
                clip()
            x = sample_real()
            z = sample_noise(x.shape[0])
            with torch.no_grad():
                fake = generator(z)
            opt_f.zero_grad()
            f_real = critic(x)
            f_fake = critic(fake)
            loss = (f_fake - f_real).mean()  # minimising -W ascends W = mean f(x) - mean f(G(z))
            loss.backward()
            opt_f.step()
            if bounds is not None and clip_placement == "after":
                clip()
            result.wasserstein.append(-loss.item())
            result.critic_updates += 1
            m = x.shape[0] if batch_size is None else batch_size
        result.critic_iters.append(k)

        if m is None:
            raise ValueError("batch_size is needed when a generator iteration has no critic iteration before it")
        z = sample_noise(m)
        opt_g.zero_grad()
        g_loss = -critic(generator(z)).mean()
        g_loss.backward()
        opt_g.step()
        result.generator_loss.append(g_loss.item())
        result.generator_updates += 1
        if callback is not None:
            callback(g, result)
    return result
