r"""WGAN losses as torchgan plugins: Algorithm 1 to the letter, inside a stock ``torchgan`` Trainer.

Drop them into ``torchgan.trainer.Trainer(network, losses_list=[...], ncritic=5)``::

    from wgan_ext.losses import WassersteinGeneratorLoss, WassersteinCriticLoss
    trainer = Trainer(network, [WassersteinGeneratorLoss(), WassersteinCriticLoss(c=0.01)],
                      ncritic=5, device=torch.device("cpu"))

What differs from ``torchgan.losses`` (which the classes subclass, and accept the arguments of):

* **clip after the step.** :class:`WassersteinCriticLoss` runs one critic update and *then*
  clamps every critic parameter with :func:`wgan_ext.fused_clip_` (Algorithm 1 line 7), so the
  critic the generator trains against is clipped. torchgan 0.1.0 and the paper's code clamp
  *before* the step ("Clip too early", martinarjovsky/WassersteinGAN#50); pass
  ``clip_placement="before"`` to reproduce those runs exactly.
* **exact n_critic and the paper's schedule in a stock Trainer.** The losses count real updates
  and the generator loss only steps once the critic has done its ``n_critic`` updates since the
  last generator update (see *Schedule* below).
* **WGAN-GP done right.** :class:`WassersteinGradientPenalty` draws one epsilon per sample, takes
  one gradient norm per sample and adds ``lambd * penalty`` (10) to the Wasserstein critic loss
  in the *same* optimizer step (torchgan: one batch-wide norm, one scalar epsilon, a separate
  step).
* **logged value = Wasserstein estimate.** The critic losses' ``train_ops`` return (and torchgan
  logs) ``W = E[f(x)] - E[f(G(z))]``. ``forward`` keeps torchgan's sign: the minimised
  ``E[f(G(z))] - E[f(x)] = -W``, the sign of ``errD`` in the paper's code (which is about ``-W``).
  torchgan's own critic loss returns ``-W``.
* clear errors (``ValueError`` / ``TypeError`` naming the argument) instead of silent fallbacks,
  all raised before anything is modified.

Schedule: an :class:`UpdateCounter` shared by the pair of losses
    torchgan's Trainer calls the generator loss whenever its count of critic-loss calls is a
    multiple of the constant ``ncritic`` -- including before the very first critic update -- and
    cannot vary ``ncritic``. Rather than a Trainer subclass, the pair of losses carries the
    schedule in one small shared object, an :class:`UpdateCounter`: the critic loss counts its
    updates there, the generator loss steps only when the counter says that the critic has done
    ``n(g)`` updates since the last generator update (otherwise the call is a no-op), and the
    critic loss refuses a batch while a generator update is due. So the update sequence is
    exactly Algorithm 1 whatever the list order and ``ncritic``.

    Pass one counter to both losses to pair them explicitly::

        counter = UpdateCounter(n_critic=5)                   # or schedule="paper"
        losses = [WassersteinCriticLoss(c=0.01, counter=counter), WassersteinGeneratorLoss(counter=counter)]

    Without one, the critic loss makes its own (from its ``n_critic`` / ``schedule``) and a
    generator loss without a counter adopts the counter of the one wgan_ext critic loss in the
    same Trainer on its first ``train_ops`` call (torchgan passes the Trainer's ``losses`` dict).
    ``n_critic=None`` (default) takes the Trainer's ``ncritic``.

    Which list order? Both waste no batch:

    * ``[generator_loss, critic_loss]`` with ``ncritic`` = ``n_critic`` (torchgan's usual
      form): the generator update due after critic update ``k * n_critic`` comes at the start
      of the *next* batch, so ``N`` batches give ``N`` critic updates and ``N // n_critic - 1``
      generator updates once ``N`` is a multiple of ``n_critic`` (the last one is due).
    * ``[critic_loss, generator_loss]`` with ``ncritic=1`` (what ``wgan-ext train`` uses; needs
      ``n_critic`` on the critic loss or counter): the generator update comes in the same batch
      as the critic update that completes its ``n(g)``, so ``k * n_critic`` batches give exactly
      ``k`` generator updates. Also right for the paper schedule.

    Consequence: torchgan's ``loss_information["generator_iters"]`` counts *calls* of the
    generator loss (its meaning in torchgan), not updates. The real counts are
    ``critic_loss.critic_updates`` / ``critic_loss.generator_updates``. A call that does not
    update returns the last value (0.0 before the first update).

Checkpoints: ``state_dict()`` / ``load_state_dict()`` of each loss hold only what changes while
training (update counts and last values, as the module's extra state), not its configuration;
the critic loss's includes the shared counter's counts. torchgan's own ``Trainer.save_model``
pickles the loss objects instead, which works too (:mod:`wgan_ext.torchgan_compat`).

Importing this module applies :func:`wgan_ext.torchgan_compat.apply` (two narrow fixes that let
torchgan 0.1.0's Trainer write images and resume checkpoints on current torch/torchvision).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

try:
    from torchgan.losses.loss import DiscriminatorLoss, GeneratorLoss
except ImportError as _e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "wgan_ext.losses are torchgan plugins and need torchgan: pip install 'wgan-ext[torchgan]'. "
        "Without torchgan, use wgan_ext.functional (the same math for a plain PyTorch loop)."
    ) from _e

from . import functional as WF
from . import torchgan_compat
from .functional import Clip, CriticSchedule
from .ops import Backend, FusedClipper, _collect
from .optim import ClippedRMSprop

torchgan_compat.apply()

__all__ = [
    "WassersteinGeneratorLoss",
    "WassersteinCriticLoss",
    "WassersteinDiscriminatorLoss",
    "WassersteinGradientPenalty",
    "HingeGeneratorLoss",
    "HingeCriticLoss",
    "CriticLossBase",
    "UpdateCounter",
]

ScheduleArg = Union[None, str, CriticSchedule]
_LABEL_TYPES = ("none", "required", "generated")


# --------------------------------------------------------------------------------------------
# the schedule and update counts a critic loss shares with its generator loss


class UpdateCounter:
    r"""The critic schedule and update counts shared by a critic loss and its generator loss.

    The critic loss records each critic update here, the generator loss asks
    :meth:`generator_update_due` and records each generator update. See the module docstring
    for how the losses get one (explicitly, or by default from the critic loss).

    Args:
        n_critic: critic updates per generator update; ``None`` takes the Trainer's ``ncritic``
            (else 5).
        schedule: ``None`` / ``"constant"`` (``n_critic`` every time), ``"paper"`` (100 for the
            first 25 generator iterations and every 500th), a
            :class:`~wgan_ext.functional.CriticSchedule`, or ``"trainer"`` (no gating: the
            Trainer's constant ``ncritic`` alone decides, as in torchgan).

    Attributes:
        schedule (CriticSchedule | None): ``None`` means the Trainer decides (no gating).
        critic_updates (int): critic updates made.
        generator_updates (int): generator updates made.
        critic_updates_since_generator (int): critic updates since the last generator update.
        trainer_ncritic (int | None): the Trainer's ``ncritic``, set by the losses on each call.
    """

    _STATE = ("critic_updates", "generator_updates", "critic_updates_since_generator")

    def __init__(self, n_critic: Optional[int] = None, schedule: ScheduleArg = None) -> None:
        if schedule == "trainer":
            if n_critic is not None:
                raise ValueError(f"schedule='trainer' leaves n_critic to the Trainer's ncritic; got n_critic={n_critic!r}")
            self.schedule: Optional[CriticSchedule] = None
        else:
            self.schedule = WF.resolve_schedule(schedule, n_critic)
        self.critic_updates = 0
        self.generator_updates = 0
        self.critic_updates_since_generator = 0
        self.trainer_ncritic: Optional[int] = None

    @property
    def gates(self) -> bool:
        """True when the losses keep the schedule (False: ``schedule="trainer"``)."""
        return self.schedule is not None

    def required_critic_updates(self) -> int:
        """``n(g)`` for the next generator update ``g = generator_updates``."""
        schedule = self.schedule if self.schedule is not None else CriticSchedule()
        return schedule(self.generator_updates, self.trainer_ncritic)

    def generator_update_due(self) -> bool:
        """True once the critic has done its ``n(g)`` updates since the last generator update."""
        return self.critic_updates_since_generator >= self.required_critic_updates()

    def record_critic_update(self) -> None:
        self.critic_updates += 1
        self.critic_updates_since_generator += 1

    def record_generator_update(self) -> None:
        self.generator_updates += 1
        self.critic_updates_since_generator = 0

    def state_dict(self) -> dict:
        """The counts (the schedule is configuration and is not included)."""
        return {k: getattr(self, k) for k in self._STATE}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the counts of :meth:`state_dict`; ``ValueError`` (nothing changed) if they do not fit."""
        _check_state(state, self._STATE, "UpdateCounter")
        for k in self._STATE:
            v = state[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"UpdateCounter state {k!r} must be an integer >= 0, got {v!r}")
        for k in self._STATE:
            setattr(self, k, int(state[k]))

    def __repr__(self) -> str:
        return (f"UpdateCounter(schedule={self.schedule!r}, critic_updates={self.critic_updates}, "
                f"generator_updates={self.generator_updates})")


def _check_state(state: Any, keys: Tuple[str, ...], owner: str) -> None:
    if not isinstance(state, Mapping):
        raise ValueError(f"{owner} state must be a mapping, got {type(state).__name__}")
    missing = [k for k in keys if k not in state]
    unexpected = [k for k in state if k not in keys]
    if missing or unexpected:
        raise ValueError(f"{owner} state does not fit: missing {missing}, unexpected {unexpected}")


# --------------------------------------------------------------------------------------------
# helpers shared by the generator and critic losses


def _label_types(generator: Any, discriminator: Any) -> Tuple[str, str]:
    types = []
    for name, model in (("generator", generator), ("discriminator", discriminator)):
        label_type = getattr(model, "label_type", "none")
        if label_type not in _LABEL_TYPES:
            raise ValueError(f"{name}.label_type must be one of {_LABEL_TYPES}, got {label_type!r}")
        types.append(label_type)
    return types[0], types[1]


def _check_labels(labels: Optional[Tensor], g_type: str, d_type: str) -> None:
    if labels is None and "required" in (g_type, d_type):
        raise ValueError(
            f"labels is None, but generator.label_type={g_type!r} and discriminator.label_type={d_type!r}: "
            "a model with label_type='required' needs labels; feed (inputs, labels) batches to the Trainer"
        )


def _encoding_dims(generator: Any) -> int:
    dims = getattr(generator, "encoding_dims", None)
    if dims is None:
        raise TypeError(
            f"generator must have an 'encoding_dims' attribute (torchgan.models.Generator), "
            f"got {type(generator).__name__}"
        )
    return dims


def _sample_labels(generator: Any, g_type: str, batch_size: int, device: Any) -> Optional[Tensor]:
    if g_type != "generated":
        return None
    return torch.randint(0, generator.num_classes, (batch_size,), device=device)


def _generate(generator: Any, noise: Tensor, g_type: str, labels: Optional[Tensor], label_gen: Optional[Tensor]) -> Tensor:
    if g_type == "none":
        return generator(noise)
    return generator(noise, labels if g_type == "required" else label_gen)


def _critic_callers(
    discriminator: Any, g_type: str, d_type: str, labels: Optional[Tensor], label_gen: Optional[Tensor]
) -> Tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """(real_fn, fake_fn) with torchgan's label conventions."""
    if d_type == "none":
        return discriminator, discriminator
    real_labels = labels if d_type == "required" else label_gen
    fake_labels = label_gen if g_type == "generated" else labels
    return (lambda x: discriminator(x, real_labels)), (lambda x: discriminator(x, fake_labels))


def _check_counter(counter: Any) -> None:
    if counter is not None and not isinstance(counter, UpdateCounter):
        raise TypeError(f"counter must be an UpdateCounter or None, got {type(counter).__name__}")


def _scan_losses(losses: Any) -> Tuple[List["WassersteinGeneratorLoss"], List["CriticLossBase"], List[Any]]:
    """Our generator losses, our critic losses and other critic losses in the Trainer's ``losses``."""
    if losses is None:
        return [], [], []
    values = list(losses.values()) if isinstance(losses, Mapping) else list(losses)
    gens = [v for v in values if isinstance(v, WassersteinGeneratorLoss)]
    critics = [v for v in values if isinstance(v, CriticLossBase)]
    foreign = [
        v for v in values
        if isinstance(v, DiscriminatorLoss) and not isinstance(v, (CriticLossBase, GeneratorLoss))
    ]
    for kind, found in (("generator", gens), ("critic", critics)):
        if len(found) > 1:
            names = ", ".join(type(v).__name__ for v in found)
            raise ValueError(
                f"losses_list holds {len(found)} wgan_ext {kind} losses ({names}); each one performs a full "
                f"{kind} update, so use exactly one (WassersteinGradientPenalty already includes the "
                "Wasserstein critic term)"
            )
    return gens, critics, foreign


# --------------------------------------------------------------------------------------------
# generator losses


class WassersteinGeneratorLoss(GeneratorLoss):
    r"""WGAN generator loss (Arjovsky et al. 2017, Algorithm 1 lines 9-10).

    .. math:: L(G) = -\mathbb{E}_{z \sim p(z)}[f(G(z))]

    ``train_ops``: sample ``z`` (``torch.randn(batch_size, generator.encoding_dims)``, as
    torchgan), one generator update with the generator's optimizer. With an
    :class:`UpdateCounter` (its own, or the critic loss's in the same Trainer) it steps only when
    the counter says a generator update is due, and is a no-op (returning the last loss)
    otherwise -- see the module docstring.

    Args:
        reduction: ``"mean"`` (the paper), ``"sum"``, or ``"none"`` (``forward`` only: an update
            needs a scalar).
        override_train_ops: replaces the update rule; called as torchgan does,
            ``override_train_ops(generator, discriminator, optimizer_generator, device,
            batch_size, labels)``. It still counts as one generator update.
        counter: the :class:`UpdateCounter` shared with the critic loss; ``None``: adopt the
            critic loss's on the first ``train_ops`` in a Trainer.

    Attributes:
        counter (UpdateCounter | None): the shared counter (``None`` until paired).
        generator_updates (int): real generator updates made by this loss.
        last_value (float): the loss of the last update (0.0 before the first).
    """

    _objective = "wasserstein"
    _STATE = ("generator_updates", "last_value")
    _checkpoint_globals = (UpdateCounter, CriticSchedule)  # allow-listed by torchgan_compat

    def __init__(
        self, reduction: str = "mean", override_train_ops: Optional[Callable] = None, *,
        counter: Optional[UpdateCounter] = None,
    ) -> None:
        WF.check_reduction(reduction)
        if override_train_ops is not None and not callable(override_train_ops):
            raise TypeError(f"override_train_ops must be callable or None, got {override_train_ops!r}")
        _check_counter(counter)
        super().__init__(reduction, override_train_ops)
        self.counter = counter
        self.generator_updates = 0
        self.last_value = 0.0

    def get_extra_state(self) -> dict:
        """What ``state_dict()`` holds: the update count and last value (not the configuration;
        the shared counter is saved by the critic loss)."""
        return {k: getattr(self, k) for k in self._STATE}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`get_extra_state` (``load_state_dict``); ``ValueError`` if it does not fit."""
        _check_state(state, self._STATE, type(self).__name__)
        self.generator_updates, self.last_value = int(state["generator_updates"]), state["last_value"]

    def forward(self, fgz: Tensor) -> Tensor:
        r""":math:`-f(G(z))` reduced by ``reduction``.

        Args:
            fgz: critic outputs on generated data, shape ``(N, *)``.
        """
        return WF.wasserstein_generator_loss(fgz, self.reduction)

    def train_ops(
        self,
        generator: Any,
        discriminator: Any,
        optimizer_generator: torch.optim.Optimizer,
        device: Any,
        batch_size: int,
        labels: Optional[Tensor] = None,
        losses: Optional[Mapping[str, Any]] = None,
        ncritic: Optional[int] = None,
    ) -> float:
        """One generator update if one is due; returns its loss (else the last loss).

        ``losses`` and ``ncritic`` are filled in by torchgan's Trainer from its attributes of
        the same names (its ``losses`` dict and ``ncritic``); called by hand, leave them out and
        every call is an update.

        Raises:
            ValueError: ``reduction="none"``; labels required but missing; two wgan_ext
                generator or critic losses in ``losses``. Nothing is modified then.
        """
        WF.check_reduction(self.reduction, scalar=True)
        g_type, d_type = _label_types(generator, discriminator)
        _check_labels(labels, g_type, d_type)
        _, critics, _ = _scan_losses(losses)
        counter = self._pair(critics)
        if counter is not None and ncritic is not None:
            counter.trainer_ncritic = ncritic

        if self.override_train_ops is not None:
            value = self.override_train_ops(generator, discriminator, optimizer_generator, device, batch_size, labels)
            self._record(value)
            return value
        if counter is not None and counter.gates and not counter.generator_update_due():
            return self.last_value

        noise = torch.randn(batch_size, _encoding_dims(generator), device=device)
        label_gen = _sample_labels(generator, g_type, batch_size, device)
        _, fake_fn = _critic_callers(discriminator, g_type, d_type, labels, label_gen)
        value = WF.generator_step(
            generator,
            fake_fn,
            optimizer_generator,
            noise,
            objective=self._objective,
            reduction=self.reduction,
            generator_fn=lambda z: _generate(generator, z, g_type, labels, label_gen),
        )
        self._record(value)
        return value

    def _pair(self, critics: List["CriticLossBase"]) -> Optional[UpdateCounter]:
        """The counter to use: our own, else the Trainer's critic loss's (adopted for good)."""
        if critics:
            theirs = critics[0].counter
            if self.counter is None:
                self.counter = theirs
            elif self.counter is not theirs:
                raise ValueError(
                    f"{type(self).__name__} and {type(critics[0]).__name__} hold different UpdateCounters: "
                    "pass the same counter to both (or none to the generator loss)"
                )
        return self.counter

    def _record(self, value: Any) -> None:
        self.generator_updates += 1
        self.last_value = value
        if self.counter is not None:
            self.counter.record_generator_update()


class HingeGeneratorLoss(WassersteinGeneratorLoss):
    r"""Hinge-GAN generator loss (labml.ai's annotated WGAN): the same formula as the Wasserstein one.

    .. math:: L(G) = -\mathbb{E}_{z \sim p(z)}[f(G(z))]

    Pair it with :class:`HingeCriticLoss`. Arguments and ``train_ops`` as
    :class:`WassersteinGeneratorLoss`.
    """

    _objective = "hinge"

    def forward(self, fgz: Tensor) -> Tensor:
        r""":math:`-f(G(z))` reduced by ``reduction``."""
        return WF.hinge_generator_loss(fgz, self.reduction)


# --------------------------------------------------------------------------------------------
# critic losses


class CriticLossBase(DiscriminatorLoss):
    r"""Shared update rule of the critic losses: schedule, one update, clipping.

    ``train_ops``: sample ``z``, ``fake = G(z)`` (no graph), then
    :func:`wgan_ext.functional.critic_step`: (clip if ``clip_placement="before"``), zero grads,
    ``f(x)``, ``f(fake)``, loss (+ ``lambd`` * gradient penalty), backward, optimizer step,
    (clip with :func:`wgan_ext.fused_clip_` if ``clip_placement="after"``).

    Args:
        reduction: ``"mean"``, ``"sum"``, or ``"none"`` (``forward`` only).
        clip: ``(lo, hi)`` with ``lo < hi`` (torchgan's form), or a positive number ``c``.
        override_train_ops: replaces the update rule, called as torchgan's Wasserstein loss
            does: ``override_train_ops(generator, discriminator, optimizer_discriminator,
            real_inputs, device, labels)``; still counted as one critic update.
        c: shorthand for ``clip=(-c, c)``; ``c > 0``. Not together with ``clip``.
        clip_placement: ``"after"`` the optimizer step (Algorithm 1, default) or ``"before"``
            (torchgan 0.1.0 / the paper's code).
        n_critic: critic updates per generator update; ``None`` takes the Trainer's ``ncritic``
            (else 5).
        schedule: ``None`` / ``"constant"`` (``n_critic`` every time), ``"paper"`` (100 for the
            first 25 generator iterations and every 500th), a
            :class:`~wgan_ext.functional.CriticSchedule`, or ``"trainer"`` (no gating: the
            Trainer's constant ``ncritic`` alone decides, as in torchgan). With
            ``clip_placement="before"`` and neither ``schedule`` nor ``n_critic`` given, the
            default is ``"trainer"`` so that the run matches torchgan's exactly.
        clip_backend: passed to :func:`wgan_ext.fused_clip_` (``"auto"``, ``"cpu"``, ``"cuda"``,
            ``"torch"``).
        counter: an :class:`UpdateCounter` to share with the generator loss (it carries the
            schedule: then leave ``n_critic`` and ``schedule`` out). ``None``: a new one from
            ``n_critic`` and ``schedule``.

    Attributes:
        clip (tuple | None): the resolved ``(lo, hi)``.
        counter (UpdateCounter): the schedule and update counts shared with the generator loss.
        schedule (CriticSchedule | None), critic_updates (int), generator_updates (int),
            critic_updates_since_generator (int): read from ``counter``.
        last_value (float): the value ``train_ops`` last returned.
        last_wasserstein (float | None), last_loss (float | None), last_penalty (float | None):
            details of the last update.
    """

    _objective = "wasserstein"
    _default_clip: Optional[Clip] = None
    _checkpoint_globals = (UpdateCounter, CriticSchedule)  # allow-listed by torchgan_compat
    _LAST = ("last_value", "last_wasserstein", "last_loss", "last_penalty")
    lambd = 0.0  # gradient-penalty weight (WassersteinGradientPenalty sets its own)

    def __init__(
        self,
        reduction: str = "mean",
        clip: Optional[Clip] = None,
        override_train_ops: Optional[Callable] = None,
        *,
        c: Optional[float] = None,
        clip_placement: str = "after",
        n_critic: Optional[int] = None,
        schedule: ScheduleArg = None,
        clip_backend: Backend = "auto",
        counter: Optional[UpdateCounter] = None,
    ) -> None:
        # Everything is validated before torchgan's __init__ runs, so a bad argument leaves nothing behind.
        WF.check_reduction(reduction)
        bounds = WF.resolve_clip(clip, c, default=self._default_clip)
        if clip_placement not in WF.CLIP_PLACEMENTS:
            raise ValueError(f"clip_placement must be one of {WF.CLIP_PLACEMENTS}, got {clip_placement!r}")
        if clip_placement == "before" and bounds is None:
            raise ValueError("clip_placement='before' needs clip=(lo, hi) or c: there is nothing to clip")
        if override_train_ops is not None and not callable(override_train_ops):
            raise TypeError(f"override_train_ops must be callable or None, got {override_train_ops!r}")
        if clip_backend not in ("auto", "cpu", "cuda", "torch"):
            raise ValueError(f"clip_backend must be 'auto', 'cpu', 'cuda' or 'torch', got {clip_backend!r}")
        _check_counter(counter)
        if counter is not None and (n_critic is not None or schedule is not None):
            raise ValueError("the UpdateCounter carries the schedule: give n_critic/schedule to it, not to the loss too")
        if counter is None:
            if schedule is None and n_critic is None and clip_placement == "before":
                schedule = "trainer"  # torchgan's own sequence, to reproduce its runs
            counter = UpdateCounter(n_critic, schedule)

        super().__init__(reduction, override_train_ops)
        self.clip = bounds
        self.clip_placement = clip_placement
        self.clip_backend = clip_backend
        self.counter = counter
        self.last_value = 0.0
        self.last_wasserstein: Optional[float] = None
        self.last_loss: Optional[float] = None
        self.last_penalty: Optional[float] = None
        self._warned_skip = False
        self._warned_foreign = False
        self._clipper: Optional[FusedClipper] = None  # see _clip_for

    # -- schedule and counts (kept in the shared counter) -------------------------------------

    @property
    def schedule(self) -> Optional[CriticSchedule]:
        return self.counter.schedule

    @property
    def critic_updates(self) -> int:
        return self.counter.critic_updates

    @property
    def generator_updates(self) -> int:
        return self.counter.generator_updates

    @property
    def critic_updates_since_generator(self) -> int:
        return self.counter.critic_updates_since_generator

    def get_extra_state(self) -> dict:
        """What ``state_dict()`` holds: the shared counter's counts and the last values (not the
        configuration)."""
        return {"counter": self.counter.state_dict(), **{k: getattr(self, k) for k in self._LAST}}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`get_extra_state` (``load_state_dict``), into the shared counter too;
        ``ValueError`` (nothing changed) if it does not fit."""
        _check_state(state, ("counter", *self._LAST), type(self).__name__)
        self.counter.load_state_dict(state["counter"])
        for k in self._LAST:
            setattr(self, k, state[k])

    # -- torchgan API --------------------------------------------------------------------------

    def forward(self, fx: Tensor, fgz: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def train_ops(
        self,
        generator: Any,
        discriminator: Any,
        optimizer_discriminator: torch.optim.Optimizer,
        real_inputs: Tensor,
        device: Any,
        labels: Optional[Tensor] = None,
        losses: Optional[Mapping[str, Any]] = None,
        ncritic: Optional[int] = None,
    ) -> float:
        """One critic update (then clipping); returns the logged value (see the class).

        ``losses`` and ``ncritic`` are filled in by torchgan's Trainer (its ``losses`` dict and
        ``ncritic``); called by hand, leave them out and every call is an update.

        Raises:
            ValueError: ``reduction="none"``; labels required but missing; two wgan_ext critic
                or generator losses in ``losses``. TypeError: ``real_inputs`` not a tensor.
                Nothing is modified then.
        """
        WF.check_reduction(self.reduction, scalar=True)
        if not isinstance(real_inputs, Tensor):
            raise TypeError(f"real_inputs must be a tensor batch, got {type(real_inputs).__name__}")
        g_type, d_type = _label_types(generator, discriminator)
        _check_labels(labels, g_type, d_type)
        gens, _, foreign = _scan_losses(losses)
        if ncritic is not None:
            self.counter.trainer_ncritic = ncritic
        if foreign and not self._warned_foreign:
            self._warned_foreign = True
            warnings.warn(
                f"{type(self).__name__} shares the Trainer with other critic losses "
                f"({', '.join(type(v).__name__ for v in foreign)}): their updates are not counted by the "
                "n_critic schedule, and the Trainer counts them in its ncritic gating",
                RuntimeWarning,
                stacklevel=2,
            )

        if self.override_train_ops is not None:
            value = self.override_train_ops(
                generator, discriminator, optimizer_discriminator, real_inputs, device, labels
            )
            self._record(value, None, None, None)
            return value
        if gens and self.counter.gates and self.counter.generator_update_due():
            self._warn_skip()
            return self.last_value

        batch_size = real_inputs.size(0)
        noise = torch.randn(batch_size, _encoding_dims(generator), device=device)
        label_gen = _sample_labels(generator, g_type, batch_size, device)
        with torch.no_grad():  # the critic step needs G(z) as data only
            fake = _generate(generator, noise, g_type, labels, label_gen)
        real_fn, fake_fn = _critic_callers(discriminator, g_type, d_type, labels, label_gen)
        step = WF.critic_step(
            discriminator,
            optimizer_discriminator,
            real_inputs,
            fake,
            objective=self._objective,
            clip=self._clip_for(discriminator, optimizer_discriminator),
            clip_placement=self.clip_placement,
            lambd=self.lambd,
            reduction=self.reduction,
            real_fn=real_fn,
            fake_fn=fake_fn,
            clip_backend=self.clip_backend,
        )
        value = step.loss if self._objective == "hinge" else step.wasserstein
        self._record(value, step.wasserstein, step.loss, step.penalty)
        return value

    def _clip_for(self, critic: Any, optimizer: Any) -> Union[Clip, FusedClipper, None]:
        """What the critic step clips with: the bounds (``fused_clip_`` collects the parameters at
        each call); for a CUDA critic a :class:`FusedClipper` of its parameters instead (one op
        call on the held list), kept while they are the same tensors. Nothing to clip if the
        optimizer is a :class:`ClippedRMSprop` (its step clips)."""
        first = next(critic.parameters(), None)
        if (self.clip is None or self.clip_backend == "torch" or isinstance(optimizer, ClippedRMSprop)
                or first is None or not first.is_cuda):
            self._clipper = None
            return self.clip
        params = _collect(critic)
        held = self._clipper.tensors if self._clipper is not None else []
        if len(held) != len(params) or any(a is not b for a, b in zip(held, params)):
            self._clipper = FusedClipper(list(params), self.clip, backend=self.clip_backend)
        return self._clipper

    def __getstate__(self) -> dict:
        # The clipper holds the critic's tensors and a device table: never copied or pickled.
        state = dict(self.__dict__)
        state["_clipper"] = None
        return state

    def _record(self, value: Any, wasserstein: Optional[float], loss: Optional[float], penalty: Optional[float]) -> None:
        self.counter.record_critic_update()
        self.last_value = value
        self.last_wasserstein, self.last_loss, self.last_penalty = wasserstein, loss, penalty

    def _warn_skip(self) -> None:
        if self._warned_skip:
            return
        self._warned_skip = True
        warnings.warn(
            f"{type(self).__name__}: the Trainer called the critic loss while a generator update was due "
            f"(n_critic={self.counter.required_critic_updates()} critic updates done); this batch is skipped to "
            "keep Algorithm 1 exact. To waste no batches, list the critic loss first with Trainer ncritic=1, or "
            "the generator loss first with an ncritic that divides every n_critic of the schedule",
            RuntimeWarning,
            stacklevel=3,
        )

    def extra_repr(self) -> str:
        return (
            f"reduction={self.reduction!r}, clip={self.clip}, clip_placement={self.clip_placement!r}, "
            f"schedule={self.schedule!r}, lambd={self.lambd}"
        )


class WassersteinCriticLoss(CriticLossBase):
    r"""Weight-clipped WGAN critic loss (Arjovsky et al. 2017, Algorithm 1 lines 2-7).

    .. math:: L(f) = \mathbb{E}_{z}[f(G(z))] - \mathbb{E}_{x \sim P_r}[f(x)] = -W,
       \qquad w \leftarrow \mathrm{clip}(w, -c, c) \text{ after each update}

    ``forward(fx, fgz)`` returns this loss (torchgan's sign; the paper code's ``errD``);
    ``train_ops`` performs one critic update, then :func:`wgan_ext.fused_clip_` on every critic
    parameter, and returns the Wasserstein estimate ``W = E[f(x)] - E[f(G(z))]`` (so loss curves
    fall towards 0 as training converges; torchgan's own class returns ``-W``).

    Alias: :data:`WassersteinDiscriminatorLoss`, so torchgan users can swap the import.
    Arguments as :class:`CriticLossBase`; with neither ``clip`` nor ``c`` the paper's
    ``c = 0.01`` is used (torchgan's class does not clip by default).

    Example:
        >>> loss = WassersteinCriticLoss(c=0.01)            # Algorithm 1, n_critic from the Trainer
        >>> paper = WassersteinCriticLoss(schedule="paper")  # 100 critic iterations at the start
        >>> legacy = WassersteinCriticLoss(clip=(-0.01, 0.01), clip_placement="before")  # torchgan
    """

    _default_clip = WF.PAPER_C

    def forward(self, fx: Tensor, fgz: Tensor) -> Tensor:
        r""":math:`f(G(z)) - f(x)` reduced by ``reduction`` (``-W`` for ``"mean"``).

        Args:
            fx: critic outputs on real data, shape ``(N, *)``.
            fgz: critic outputs on generated data, shape ``(N, *)``.
        """
        return WF.wasserstein_critic_loss(fx, fgz, self.reduction)


WassersteinDiscriminatorLoss = WassersteinCriticLoss
"""Alias of :class:`WassersteinCriticLoss` under torchgan's name."""


class WassersteinGradientPenalty(CriticLossBase):
    r"""WGAN-GP critic loss (Gulrajani et al. 2017): Wasserstein term plus gradient penalty, one step.

    .. math:: L(f) = \mathbb{E}[f(G(z))] - \mathbb{E}[f(x)]
       + \lambda\, \mathbb{E}_i\big[(\lVert \nabla_{\hat{x}_i} f(\hat{x}_i) \rVert_2 - 1)^2\big],
       \quad \hat{x}_i = \epsilon_i x_i + (1 - \epsilon_i) G(z_i),\ \epsilon_i \sim U[0, 1]

    One epsilon and one gradient norm *per sample*, ``lambd = 10``, and the penalty is added to
    the critic loss before the single optimizer step. Use it *instead of*
    :class:`WassersteinCriticLoss` (it includes the Wasserstein term; listing both is an error).
    No weight clipping unless ``clip``/``c`` is given. ``train_ops`` returns the Wasserstein
    estimate ``W``; the unweighted penalty is in ``last_penalty``.

    ``forward(interpolate, d_interpolate)`` is the unweighted penalty, as in torchgan.

    Args:
        reduction: ``"mean"`` or ``"sum"`` over samples (``"none"``: ``forward`` only).
        lambd: penalty weight, ``>= 0`` (10 in the paper).
        override_train_ops: as :class:`CriticLossBase`.
        **kwargs: ``clip``, ``c``, ``clip_placement``, ``n_critic``, ``schedule``,
            ``clip_backend``, ``counter`` (keywords only) as :class:`CriticLossBase`.
    """

    def __init__(
        self, reduction: str = "mean", lambd: float = WF.GP_LAMBDA, override_train_ops: Optional[Callable] = None,
        **kwargs: Any,
    ) -> None:
        lambd = WF._check_lambda(lambd)  # before torchgan's __init__: nothing is left behind
        super().__init__(reduction, override_train_ops=override_train_ops, **kwargs)
        self.lambd = lambd

    def forward(self, interpolate: Tensor, d_interpolate: Tensor) -> Tensor:
        r""":math:`(\lVert \nabla_{\hat{x}_i} f(\hat{x}_i) \rVert_2 - 1)^2` per sample, reduced.

        Args:
            interpolate: the points :math:`\hat{x}` (requiring grad), shape ``(N, *)``.
            d_interpolate: the critic's outputs on them, shape ``(N, *)``.
        """
        return WF.gradient_penalty(interpolate, d_interpolate, self.reduction)


class HingeCriticLoss(CriticLossBase):
    r"""Hinge critic loss (labml.ai's annotated PyTorch WGAN).

    .. math:: L(f) = \mathbb{E}_x[\max(0, 1 - f(x))] + \mathbb{E}_z[\max(0, 1 + f(G(z)))]

    ``train_ops`` performs one critic update (no weight clipping unless ``clip``/``c`` is given)
    and returns this loss (hinge values are not a Wasserstein estimate; that is in
    ``last_wasserstein``). Arguments as :class:`CriticLossBase`.
    """

    _objective = "hinge"

    def forward(self, fx: Tensor, fgz: Tensor) -> Tensor:
        r""":math:`\max(0, 1 - f(x)) + \max(0, 1 + f(G(z)))`, each term reduced by ``reduction``."""
        return WF.hinge_critic_loss(fx, fgz, self.reduction)
