"""The WGAN math as plain functions: losses, gradient penalty, critic schedule, update rules.

Nothing here imports torchgan, so a plain PyTorch loop or another trainer can use exactly the
math that :mod:`wgan_ext.losses` (the torchgan plugins) run inside ``train_ops``.

Sign conventions (``f`` is the critic, ``x`` real data, ``G(z)`` generated data):

* critic *loss* (what the critic minimises): ``E[f(G(z))] - E[f(x)]`` -- the same sign as
  torchgan's ``wasserstein_discriminator_loss`` and, up to batch sampling, as ``errD`` in the
  paper's code (which is therefore about ``-W``);
* Wasserstein *estimate* (what :func:`critic_step` and the torchgan losses return and log):
  ``W = E[f(x)] - E[f(G(z))] = -loss``; it should shrink towards 0 as training converges;
* generator loss: ``-E[f(G(z))]``.

Paper defaults (Arjovsky et al. 2017, Algorithm 1): :data:`PAPER_LR` = 5e-5 (RMSProp),
:data:`PAPER_C` = 0.01, :data:`PAPER_BATCH_SIZE` = 64, :data:`PAPER_N_CRITIC` = 5; gradient
penalty weight :data:`GP_LAMBDA` = 10 (Gulrajani et al. 2017).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops import Backend, FusedClipper, _collect, fused_clip_, resolve_bounds
from .optim import ClippedRMSprop

__all__ = [
    "PAPER_LR",
    "PAPER_C",
    "PAPER_BATCH_SIZE",
    "PAPER_N_CRITIC",
    "GP_LAMBDA",
    "REDUCTIONS",
    "CLIP_PLACEMENTS",
    "OBJECTIVES",
    "reduce",
    "check_reduction",
    "wasserstein_generator_loss",
    "wasserstein_critic_loss",
    "wasserstein_estimate",
    "hinge_generator_loss",
    "hinge_critic_loss",
    "interpolate",
    "gradient_norms",
    "gradient_penalty",
    "wasserstein_gradient_penalty",
    "resolve_clip",
    "CriticSchedule",
    "resolve_schedule",
    "paper_n_critic",
    "CriticStep",
    "critic_step",
    "generator_step",
]

PAPER_LR = 5e-5
PAPER_C = 0.01
PAPER_BATCH_SIZE = 64
PAPER_N_CRITIC = 5
GP_LAMBDA = 10.0

REDUCTIONS = ("mean", "sum", "none")
CLIP_PLACEMENTS = ("after", "before")
OBJECTIVES = ("wasserstein", "hinge")

Clip = Union[float, Tuple[float, float]]
CriticFn = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------------------------
# argument checks


def check_reduction(reduction: str, *, scalar: bool = False, name: str = "reduction") -> str:
    """Return ``reduction`` if it is ``"mean"``, ``"sum"`` or (unless ``scalar``) ``"none"``.

    Raises ``ValueError`` naming ``name`` and the value otherwise. ``scalar=True`` is for callers
    that must backpropagate or log one number (an update step), where ``"none"`` cannot work.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name} must be one of {REDUCTIONS}, got {reduction!r}")
    if scalar and reduction == "none":
        raise ValueError(
            f"{name}='none' gives one loss per sample, but an update step needs a scalar loss; "
            "use reduction='mean' (the paper's E[.]) or 'sum'"
        )
    return reduction


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_lambda(lambd: object, name: str = "lambd") -> float:
    if isinstance(lambd, bool) or not isinstance(lambd, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(lambd).__name__} {lambd!r}")
    value = float(lambd)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {lambd!r}")
    return value


def resolve_clip(
    clip: Optional[Clip] = None, c: Optional[float] = None, *, default: Optional[Clip] = None
) -> Optional[Tuple[float, float]]:
    """Turn torchgan's ``clip=(lo, hi)`` or the shorthand ``c`` (for ``[-c, c]``) into ``(lo, hi)``.

    ``clip`` may also be a single positive number (same as ``c``). With neither given,
    ``default`` is resolved the same way (``None`` means no clipping).

    Raises:
        ValueError: both ``clip`` and ``c`` given, ``lo >= hi``, ``c <= 0``, a non-finite bound,
            or a ``clip`` sequence that is not a pair.
        TypeError: a bound that is not a real number.
    """
    if clip is not None and c is not None:
        raise ValueError(f"pass either clip=(lo, hi) or c (for [-c, c]), not both; got clip={clip!r}, c={c!r}")
    if clip is not None:
        lo, hi = resolve_bounds(clip, "clip")
        if lo >= hi:
            # resolve_bounds allows lo == hi; a critic clipped to one point cannot learn anything.
            raise ValueError(f"clip=(lo, hi) needs lo < hi, got {clip!r}")
        return lo, hi
    if c is not None:
        return resolve_bounds(c, "c")
    if default is None:
        return None
    return resolve_clip(default)


# --------------------------------------------------------------------------------------------
# losses


def reduce(x: Tensor, reduction: str = "mean") -> Tensor:
    """``x.mean()``, ``x.sum()`` or ``x`` itself for ``reduction`` = "mean" / "sum" / "none"."""
    check_reduction(reduction)
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x


def wasserstein_generator_loss(f_fake: Tensor, reduction: str = "mean") -> Tensor:
    r"""Generator loss :math:`L_G = -\mathbb{E}[f(G(z))]` (Algorithm 1 line 10).

    Args:
        f_fake: critic outputs on generated samples, shape ``(N, *)``.
        reduction: ``"mean"`` (the paper), ``"sum"`` or ``"none"`` (per-element ``-f_fake``).
    """
    return reduce(-f_fake, reduction)


def wasserstein_critic_loss(f_real: Tensor, f_fake: Tensor, reduction: str = "mean") -> Tensor:
    r"""Critic loss :math:`L_f = \mathbb{E}[f(G(z))] - \mathbb{E}[f(x)]` (minimised; ``= -W``).

    Minimising it is the ascent on ``E[f(x)] - E[f(G(z))]`` of Algorithm 1 line 5. Same sign as
    torchgan's ``wasserstein_discriminator_loss``, and for batches of one shape the same
    arithmetic (``reduce(f_fake - f_real)``), so values match it bit for bit. Batches of different
    sizes are reduced separately (not with ``"none"``).
    """
    if f_real.shape == f_fake.shape:
        return reduce(f_fake - f_real, reduction)
    if check_reduction(reduction) == "none":
        raise ValueError(
            "reduction='none' needs f_real and f_fake of one shape, got "
            f"{tuple(f_real.shape)} and {tuple(f_fake.shape)}"
        )
    return reduce(f_fake, reduction) - reduce(f_real, reduction)


def wasserstein_estimate(f_real: Tensor, f_fake: Tensor) -> Tensor:
    r"""The Wasserstein estimate :math:`W = \mathbb{E}[f(x)] - \mathbb{E}[f(G(z))]` (a 0-d tensor).

    This is ``-wasserstein_critic_loss(..., "mean")``: the value the paper plots (with the
    critic's sign flipped in the paper code, whose ``errD`` is about ``-W``).
    """
    if f_real.shape == f_fake.shape:
        # Negating a difference is exact, so this is bit for bit -loss (reduction="mean").
        return (f_real - f_fake).mean()
    return f_real.mean() - f_fake.mean()


def hinge_generator_loss(f_fake: Tensor, reduction: str = "mean") -> Tensor:
    r"""Hinge generator loss :math:`-\mathbb{E}[f(G(z))]` (labml.ai's annotated WGAN; same as the Wasserstein one)."""
    return reduce(-f_fake, reduction)


def hinge_critic_loss(f_real: Tensor, f_fake: Tensor, reduction: str = "mean") -> Tensor:
    r"""Hinge critic loss :math:`\mathbb{E}[\max(0, 1 - f(x))] + \mathbb{E}[\max(0, 1 + f(G(z)))]`.

    From labml.ai's annotated PyTorch WGAN (``relu(1 - f_real).mean() + relu(1 + f_fake).mean()``). With ``"none"``, the
    per-element sum of the two terms (the batches must then have the same shape).
    """
    real_term = F.relu(1.0 - f_real)
    fake_term = F.relu(1.0 + f_fake)
    if check_reduction(reduction) == "none":
        if real_term.shape != fake_term.shape:
            raise ValueError(
                "reduction='none' needs f_real and f_fake of one shape, got "
                f"{tuple(f_real.shape)} and {tuple(f_fake.shape)}"
            )
        return real_term + fake_term
    return reduce(real_term, reduction) + reduce(fake_term, reduction)


_CRITIC_OBJECTIVES = {"wasserstein": wasserstein_critic_loss, "hinge": hinge_critic_loss}
_GENERATOR_OBJECTIVES = {"wasserstein": wasserstein_generator_loss, "hinge": hinge_generator_loss}


def _objective(objective: str, table: dict) -> Callable:
    try:
        return table[objective]
    except (KeyError, TypeError):
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}") from None


# --------------------------------------------------------------------------------------------
# gradient penalty (Gulrajani et al. 2017)


def interpolate(real: Tensor, fake: Tensor, eps: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    r"""Random points on the lines between real and fake samples, one ``eps`` per sample.

    :math:`\hat{x}_i = \epsilon_i x_i + (1 - \epsilon_i) \tilde{x}_i`, :math:`\epsilon_i \sim U[0, 1]`.
    ``fake`` is detached; the result is a leaf that requires grad (so ``f(x_hat)`` can be
    differentiated with respect to it).

    Args:
        real, fake: batches of the same shape ``(N, *)``.
        eps: optional per-sample weights, shape ``(N,)``; drawn from ``torch.rand`` if omitted.

    Returns:
        ``(x_hat, eps)`` with ``eps`` of shape ``(N,)``.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    n = real.shape[0]
    if eps is None:
        eps = torch.rand(n, device=real.device, dtype=real.dtype)
    elif eps.shape != (n,):
        raise ValueError(f"eps must have shape ({n},) (one weight per sample), got {tuple(eps.shape)}")
    w = eps.to(real.dtype).view(n, *([1] * (real.dim() - 1)))
    x_hat = (w * real.detach() + (1.0 - w) * fake.detach()).requires_grad_(True)
    return x_hat, eps


def gradient_norms(x_hat: Tensor, f_hat: Tensor, *, create_graph: bool = True) -> Tensor:
    r"""Per-sample :math:`\lVert \nabla_{\hat{x}_i} f(\hat{x}) \rVert_2` over all non-batch dims, shape ``(N,)``.

    The gradient is that of ``f_hat.sum()``: for a critic that treats samples independently (no
    batch norm, as Gulrajani et al. advise) this is each sample's own input gradient.
    """
    (grad,) = torch.autograd.grad(
        outputs=f_hat,
        inputs=x_hat,
        grad_outputs=torch.ones_like(f_hat),
        create_graph=create_graph,
        retain_graph=True,
    )
    return grad.reshape(grad.shape[0], -1).norm(2, dim=1)


def gradient_penalty(x_hat: Tensor, f_hat: Tensor, reduction: str = "mean") -> Tensor:
    r"""Unweighted penalty :math:`\mathbb{E}_i[(\lVert \nabla_{\hat{x}_i} f(\hat{x}_i) \rVert_2 - 1)^2]`.

    One norm *per sample* (torchgan 0.1.0 takes a single norm over the whole batch). Drop-in for
    torchgan's ``wasserstein_gradient_penalty(interpolate, d_interpolate, reduction)``.
    """
    check_reduction(reduction)
    return reduce((gradient_norms(x_hat, f_hat) - 1.0) ** 2, reduction)


def wasserstein_gradient_penalty(
    critic: CriticFn,
    real: Tensor,
    fake: Tensor,
    *,
    lambd: float = GP_LAMBDA,
    eps: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    r""":math:`\lambda\, \mathbb{E}_i[(\lVert \nabla f(\hat{x}_i) \rVert_2 - 1)^2]` with fresh per-sample
    interpolates :math:`\hat{x}` between ``real`` and ``fake`` (WGAN-GP, lambda = 10).

    ``critic`` is any callable ``x -> f(x)``. Add the result to the critic loss and take *one*
    optimizer step (Gulrajani et al., Algorithm 1).
    """
    lambd = _check_lambda(lambd)
    x_hat, _ = interpolate(real, fake, eps)
    return lambd * gradient_penalty(x_hat, critic(x_hat), reduction)


# --------------------------------------------------------------------------------------------
# critic schedule


class CriticSchedule:
    r"""How many critic updates precede generator update number ``g`` (0-based).

    :math:`n(g) = \text{boost}` if ``g < warmup`` or (``every`` and ``g % every == 0``),
    else ``n_critic``. The paper's code (:meth:`paper`) uses ``boost=100, warmup=25, every=500``:
    100 critic iterations for the first 25 generator iterations and every 500th, ``n_critic``
    otherwise. ``CriticSchedule(5)`` is the constant ``n_critic = 5`` of Algorithm 1.

    Args:
        n_critic: critic updates per generator update outside the boosted iterations. ``None``
            takes the value given at call time (e.g. the torchgan Trainer's ``ncritic``), else
            :data:`PAPER_N_CRITIC`.
        boost: critic updates for the boosted generator iterations.
        warmup: the first ``warmup`` generator iterations are boosted.
        every: every ``every``-th generator iteration (0, every, 2*every, ...) is boosted.

    Instances are small, picklable and compare by value (they are saved in torchgan checkpoints).
    """

    def __init__(
        self, n_critic: Optional[int] = None, *, boost: int = 100, warmup: int = 0, every: Optional[int] = None
    ) -> None:
        self.n_critic = None if n_critic is None else _check_positive_int(n_critic, "n_critic")
        self.boost = _check_positive_int(boost, "boost")
        if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral) or warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
        self.warmup = int(warmup)
        self.every = None if every is None else _check_positive_int(every, "every")

    @classmethod
    def paper(cls, n_critic: Optional[int] = None) -> "CriticSchedule":
        """The schedule of the paper's code: 100 for ``g < 25`` and ``g % 500 == 0``, else ``n_critic``."""
        return cls(n_critic, boost=100, warmup=25, every=500)

    @property
    def is_constant(self) -> bool:
        return self.warmup == 0 and self.every is None

    def __call__(self, gen_iter: int, n_critic: Optional[int] = None) -> int:
        """Critic updates before generator update ``gen_iter`` (``n_critic``: fallback if unset)."""
        if gen_iter < self.warmup or (self.every is not None and gen_iter % self.every == 0):
            return self.boost
        if self.n_critic is not None:
            return self.n_critic
        return PAPER_N_CRITIC if n_critic is None else _check_positive_int(n_critic, "n_critic")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CriticSchedule):
            return NotImplemented
        return (self.n_critic, self.boost, self.warmup, self.every) == (
            other.n_critic, other.boost, other.warmup, other.every,
        )

    def __repr__(self) -> str:
        if self.is_constant:
            return f"CriticSchedule({self.n_critic!r})"
        return f"CriticSchedule({self.n_critic!r}, boost={self.boost}, warmup={self.warmup}, every={self.every})"


def resolve_schedule(
    schedule: Union[None, str, CriticSchedule], n_critic: Optional[int] = None
) -> CriticSchedule:
    """``None`` / ``"constant"`` -> ``CriticSchedule(n_critic)``; ``"paper"`` -> the paper's
    schedule; a :class:`CriticSchedule` is returned as is (``n_critic`` must then be ``None``).
    """
    if n_critic is not None:
        n_critic = _check_positive_int(n_critic, "n_critic")
    if schedule is None or schedule == "constant":
        return CriticSchedule(n_critic)
    if schedule == "paper":
        return CriticSchedule.paper(n_critic)
    if isinstance(schedule, CriticSchedule):
        if n_critic is not None:
            raise ValueError(f"pass n_critic inside the CriticSchedule, not beside it; got n_critic={n_critic!r}")
        return schedule
    raise ValueError(f"schedule must be None, 'constant', 'paper' or a CriticSchedule, got {schedule!r}")


def paper_n_critic(gen_iter: int, n_critic: int = PAPER_N_CRITIC) -> int:
    """``CriticSchedule.paper(n_critic)(gen_iter)``: 100 if ``gen_iter < 25 or gen_iter % 500 == 0``."""
    return CriticSchedule.paper(n_critic)(gen_iter)


# --------------------------------------------------------------------------------------------
# update rules


class CriticStep(NamedTuple):
    """What one :func:`critic_step` did (all Python floats, read after the step)."""

    loss: float
    """The minimised value: the critic loss plus ``lambd`` times the penalty."""
    wasserstein: float
    """``E[f(x)] - E[f(G(z))]`` on this batch (before the step)."""
    penalty: Optional[float]
    """The unweighted gradient penalty, or ``None`` without one."""


def critic_step(
    critic: nn.Module,
    optimizer: torch.optim.Optimizer,
    real: Tensor,
    fake: Tensor,
    *,
    objective: str = "wasserstein",
    clip: Union[Clip, FusedClipper, None] = None,
    clip_placement: str = "after",
    lambd: float = 0.0,
    reduction: str = "mean",
    real_fn: Optional[CriticFn] = None,
    fake_fn: Optional[CriticFn] = None,
    eps: Optional[Tensor] = None,
    clip_backend: Backend = "auto",
) -> CriticStep:
    r"""One critic update (Algorithm 1 lines 3-7): loss, backward, ``optimizer.step()``, clip.

    1. (``clip_placement="before"`` only: clip -- torchgan 0.1.0 and the paper's code)
    2. ``optimizer.zero_grad()``; ``f(x)`` then ``f(G(z))`` (in that order: it fixes batch-norm
       running statistics the same way torchgan does)
    3. loss = critic objective (+ ``lambd`` * per-sample gradient penalty, same step)
    4. backward, ``optimizer.step()``
    5. (``clip_placement="after"``, the default: :func:`wgan_ext.fused_clip_` on every parameter
       of ``critic`` -- Algorithm 1 line 7, so the critic the generator sees is clipped)

    With a :class:`wgan_ext.ClippedRMSprop` as ``optimizer``, step 4 already clips every
    parameter (one fused pass): there is no second clip, ``clip`` must be ``None`` or the
    optimizer's own bounds, and ``clip_placement="before"`` is refused.

    Args:
        critic: the module whose parameters are clipped (and, unless ``real_fn`` /
            ``fake_fn`` are given, called).
        optimizer: the critic's optimizer (RMSprop with lr 5e-5 in the paper).
        real: a batch of real data.
        fake: a batch of generated data; detached here.
        objective: ``"wasserstein"`` or ``"hinge"``.
        clip: ``None`` (no clipping), ``c``, ``(lo, hi)``, or a :class:`wgan_ext.FusedClipper`
            holding the critic's parameters (it clips them, with its own bounds).
        clip_placement: ``"after"`` (Algorithm 1) or ``"before"`` the optimizer step.
        lambd: gradient-penalty weight; 0 for none (10 for WGAN-GP).
        reduction: ``"mean"`` or ``"sum"`` (a scalar is needed).
        real_fn: callable used instead of ``critic(x)`` on real data (e.g. to pass labels).
        fake_fn: callable used instead of ``critic(x)`` on generated data and on the
            penalty's interpolates (torchgan passes generated labels there).
        eps: per-sample interpolation weights for the penalty (drawn if omitted).
        clip_backend: passed to :func:`wgan_ext.fused_clip_`.

    Raises:
        ValueError / TypeError: for a bad ``objective``, ``clip``, ``clip_placement``, ``lambd`` or
            ``reduction``, before anything is computed or modified.
    """
    loss_fn = _objective(objective, _CRITIC_OBJECTIVES)
    clipper = clip if isinstance(clip, FusedClipper) else None
    bounds = (clipper.lo, clipper.hi) if clipper is not None else resolve_clip(clip)
    if clip_placement not in CLIP_PLACEMENTS:
        raise ValueError(f"clip_placement must be one of {CLIP_PLACEMENTS}, got {clip_placement!r}")
    if isinstance(optimizer, ClippedRMSprop):
        _check_clipping_optimizer(critic, optimizer, bounds, clip_placement)
        bounds = None  # the optimizer's step clips
    lambd = _check_lambda(lambd)
    check_reduction(reduction, scalar=True)
    f_r = critic if real_fn is None else real_fn
    f_g = critic if fake_fn is None else fake_fn

    def clip_critic() -> None:
        if clipper is not None:
            clipper()
        else:
            fused_clip_(critic, bounds, backend=clip_backend)

    if bounds is not None and clip_placement == "before":
        clip_critic()
    optimizer.zero_grad()
    fake = fake.detach()
    f_real = f_r(real)
    f_fake = f_g(fake)
    loss = loss_fn(f_real, f_fake, reduction)
    penalty = None
    if lambd > 0:
        x_hat, _ = interpolate(real, fake, eps)
        penalty = gradient_penalty(x_hat, f_g(x_hat), reduction)
        loss = loss + lambd * penalty
    loss.backward()
    optimizer.step()
    if bounds is not None and clip_placement == "after":
        clip_critic()

    # One host sync for all logged numbers.
    stats = [loss.detach(), wasserstein_estimate(f_real.detach(), f_fake.detach())]
    if penalty is not None:
        stats.append(penalty.detach())
    values = torch.stack([s.float() for s in stats]).tolist()
    return CriticStep(values[0], values[1], values[2] if penalty is not None else None)


def _check_clipping_optimizer(critic: nn.Module, optimizer: ClippedRMSprop,
                              bounds: Optional[Tuple[float, float]], clip_placement: str) -> None:
    """Raise ``ValueError`` unless ``optimizer.step()`` clips every critic parameter to ``bounds``
    (when given), after the step."""
    if clip_placement == "before":
        raise ValueError("clip_placement='before' needs an optimizer that does not clip: ClippedRMSprop "
                         "clips every parameter after its update")
    done = optimizer.bounds_for(_collect(critic))
    if done is None:
        raise ValueError("the critic's ClippedRMSprop does not clip every critic parameter to one (lo, hi): "
                         "give it all of critic.parameters() (one clip value), or use torch.optim.RMSprop")
    if bounds is not None and done != bounds:
        raise ValueError(f"clip={bounds} but the critic's ClippedRMSprop clips to {done}: make them equal, "
                         "or pass clip=None")


def generator_step(
    generator: nn.Module,
    critic: CriticFn,
    optimizer: torch.optim.Optimizer,
    noise: Tensor,
    *,
    objective: str = "wasserstein",
    reduction: str = "mean",
    generator_fn: Optional[Callable[[Tensor], Tensor]] = None,
) -> float:
    r"""One generator update (Algorithm 1 lines 9-10): minimise :math:`-\mathbb{E}[f(G(z))]`.

    ``optimizer.zero_grad()``, ``fake = G(noise)``, loss, backward, ``optimizer.step()``. Only the
    generator's optimizer steps; gradients that reach the critic's parameters are left for the
    next critic step to zero. Returns the loss as a float.

    Args:
        generator: the generator (called as ``generator(noise)`` unless ``generator_fn``).
        critic: any callable ``x -> f(x)`` (a module, or a closure passing labels).
        optimizer: the generator's optimizer.
        noise: a batch of prior samples ``z``.
        objective: ``"wasserstein"`` or ``"hinge"`` (the same formula).
        reduction: ``"mean"`` or ``"sum"``.
        generator_fn: callable used instead of ``generator(noise)``.
    """
    loss_fn = _objective(objective, _GENERATOR_OBJECTIVES)
    check_reduction(reduction, scalar=True)
    g = generator if generator_fn is None else generator_fn
    optimizer.zero_grad()
    loss = loss_fn(critic(g(noise)), reduction)
    loss.backward()
    optimizer.step()
    return loss.item()
