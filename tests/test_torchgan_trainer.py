"""Our losses inside a stock ``torchgan.trainer.Trainer``: clipping, update counts, equivalence.

Every run is on CPU with tiny models; images, checkpoints and logs go to ``tmp_path``.
"""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("torchgan", reason="the torchgan extra is not installed")

from torchgan.losses import WassersteinDiscriminatorLoss as TorchganCriticLoss  # noqa: E402
from torchgan.losses import WassersteinGeneratorLoss as TorchganGeneratorLoss  # noqa: E402

from _wgan_trainer_util import (  # noqa: E402
    ENC,
    StepLog,
    assert_same_state,
    copies,
    forever,
    loader,
    make_trainer,
    snapshot_at_generator_steps,
    state,
    toy_data,
)
from wgan_ext.functional import CriticSchedule  # noqa: E402
from wgan_ext.losses import (  # noqa: E402
    HingeCriticLoss,
    HingeGeneratorLoss,
    WassersteinCriticLoss,
    WassersteinGeneratorLoss,
    WassersteinGradientPenalty,
)
from wgan_ext.reference import algorithm1  # noqa: E402

C = 0.01


class ClipWatch:
    """Observes the critic after every critic optimizer step.

    The step post-hook snapshots the just-stepped (unclipped) parameters; the next observation
    point -- the next critic step's pre-hook, a generator step's pre-hook (the critic the
    generator trains against), or the end of training -- checks that all critic parameters lie
    in [lo, hi] and equal ``torch.clamp(snapshot, lo, hi)``.
    """

    def __init__(self, trainer, lo: float, hi: float) -> None:
        self.trainer, self.lo, self.hi = trainer, lo, hi
        self.snapshot = None
        self.checks = []  # (where, in_bounds, equals_clamped_snapshot)
        self.critic_steps = 0
        trainer.optimizer_discriminator.register_step_pre_hook(lambda *a: self.check("critic"))
        trainer.optimizer_discriminator.register_step_post_hook(self._post)
        trainer.optimizer_generator.register_step_pre_hook(lambda *a: self.check("generator"))

    def _params(self):
        return [p.detach() for p in self.trainer.discriminator.parameters()]

    def _post(self, *_):
        self.critic_steps += 1
        self.snapshot = [p.clone() for p in self._params()]

    def check(self, where: str) -> None:
        if self.snapshot is None:  # w_0 is not clipped by Algorithm 1
            return
        params = self._params()
        in_bounds = all(bool(((p >= self.lo) & (p <= self.hi)).all()) for p in params)
        clamped = all(torch.equal(p, s.clamp(self.lo, self.hi)) for p, s in zip(params, self.snapshot))
        self.checks.append((where, in_bounds, clamped))


def test_critic_parameters_clipped_after_every_critic_step(tmp_path):
    critic_loss = WassersteinCriticLoss(c=C)
    trainer = make_trainer(tmp_path, [WassersteinGeneratorLoss(), critic_loss], ncritic=5)
    # Default init puts weights far outside [-c, c]: clipping is visible.
    assert max(p.abs().max().item() for p in trainer.discriminator.parameters()) > 10 * C
    watch = ClipWatch(trainer, -C, C)
    trainer(loader(toy_data(31)))
    watch.check("end")

    assert watch.critic_steps == 31
    assert sum(1 for w, _, _ in watch.checks if w == "generator") == 6
    assert len(watch.checks) >= watch.critic_steps
    assert all(in_bounds and clamped for _, in_bounds, clamped in watch.checks), watch.checks


def test_clip_before_step_leaves_the_generator_an_unclipped_critic(tmp_path):
    # The watch above must catch torchgan's "clip too early": the same run with the clip before
    # the step shows the generator a critic outside [-c, c].
    trainer = make_trainer(
        tmp_path, [WassersteinGeneratorLoss(), WassersteinCriticLoss(c=C, clip_placement="before", n_critic=5)]
    )
    watch = ClipWatch(trainer, -C, C)
    trainer(loader(toy_data(21)))
    generator_views = [in_bounds for where, in_bounds, _ in watch.checks if where == "generator"]
    assert len(generator_views) == 4
    assert not any(generator_views)


@pytest.mark.parametrize(
    "order, ncritic, n_batches, expected_runs, expected_critic",
    [
        ("GD", 5, 26, [5] * 5, 26),  # recommended: no batch wasted
        ("DG", 1, 25, [5] * 5, 25),  # ncritic=1 lets the losses decide every batch
        ("DG", 5, 26, [5] * 5, 25),  # the critic refuses one batch while a generator step is due
    ],
)
def test_update_counts_match_n_critic(tmp_path, order, ncritic, n_batches, expected_runs, expected_critic):
    gen_loss, critic_loss = WassersteinGeneratorLoss(), WassersteinCriticLoss(n_critic=5)
    losses = [gen_loss, critic_loss] if order == "GD" else [critic_loss, gen_loss]
    trainer = make_trainer(tmp_path, losses, ncritic=ncritic)
    log = StepLog(trainer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(loader(toy_data(n_batches)))
    assert log.critic_runs() == expected_runs
    assert log.events.count("D") == critic_loss.critic_updates == expected_critic
    assert log.events.count("G") == gen_loss.generator_updates == critic_loss.generator_updates == len(expected_runs)
    wasted = [w for w in caught if "skipped to keep Algorithm 1 exact" in str(w.message)]
    assert bool(wasted) == (expected_critic < n_batches)


def test_n_critic_defaults_to_the_trainers_ncritic(tmp_path):
    trainer = make_trainer(tmp_path, [WassersteinGeneratorLoss(), WassersteinCriticLoss()], ncritic=3)
    log = StepLog(trainer)
    trainer(loader(toy_data(13)))
    assert log.critic_runs() == [3, 3, 3, 3]


def test_custom_schedule_counts(tmp_path):
    schedule = CriticSchedule(2, boost=7, warmup=2, every=5)  # n(g) = 7 for g in {0, 1, 5, 10}
    trainer = make_trainer(tmp_path, [WassersteinGeneratorLoss(), WassersteinCriticLoss(schedule=schedule)], ncritic=1)
    log = StepLog(trainer)
    trainer(loader(toy_data(45)))
    expected = [7 if (g < 2 or g % 5 == 0) else 2 for g in range(12)]
    assert expected == [7, 7, 2, 2, 2, 7, 2, 2, 2, 2, 7, 2]
    assert log.critic_runs() == expected


@pytest.mark.slow
def test_paper_schedule_counts(tmp_path):
    # 100 critic iterations before each of the first 25 generator iterations, then n_critic=5.
    trainer = make_trainer(
        tmp_path, [WassersteinGeneratorLoss(), WassersteinCriticLoss(schedule="paper")], ncritic=5
    )
    log = StepLog(trainer)
    trainer(loader(toy_data(2516)))
    assert log.critic_runs() == [100] * 25 + [5, 5, 5]
    assert log.events.count("D") == 2516


def _reference_run(trainer, g0, d0, dl, k, **kwargs):
    it = forever(dl)
    torch.manual_seed(123)
    return algorithm1(g0, d0, lambda: next(it), lambda m: torch.randn(m, ENC), n_gen_iters=k, **kwargs)


@pytest.mark.parametrize(
    "kind, order, ncritic, critic_kwargs, k, n_batches, ref_kwargs",
    [
        ("mlp", "GD", 5, {}, 4, 21, {}),
        ("mlp", "GD", 5, {"clip_backend": "torch"}, 4, 21, {}),  # the pure-PyTorch clip as well
        ("mlp", "DG", 1, {"n_critic": 5}, 4, 20, {}),
        ("mlp", "GD", 5, {"schedule": "paper"}, 2, 201, {"schedule": "paper"}),
        ("mlp", "GD", 1, {"schedule": CriticSchedule(2, boost=4, warmup=1, every=3)}, 5, 17,
         {"schedule": CriticSchedule(2, boost=4, warmup=1, every=3)}),
        pytest.param("dcgan", "GD", 5, {}, 2, 11, {}, marks=pytest.mark.slow),
    ],
)
def test_trainer_matches_hand_written_algorithm1(tmp_path, kind, order, ncritic, critic_kwargs, k, n_batches, ref_kwargs):
    gen_loss, critic_loss = WassersteinGeneratorLoss(), WassersteinCriticLoss(c=C, **critic_kwargs)
    losses = [gen_loss, critic_loss] if order == "GD" else [critic_loss, gen_loss]
    trainer = make_trainer(tmp_path, losses, ncritic=ncritic, kind=kind, epochs=2)
    g0, d0 = copies(trainer)
    # oneDNN's first-call set-up makes tiny convolutions slow and jittery on a shared CPU; both
    # runs use the same (native) kernels.
    mkldnn_was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    snaps = snapshot_at_generator_steps(trainer)
    # Two epochs over half the batches: the run crosses an epoch boundary (images, checkpoint).
    dl = loader(toy_data(-(-n_batches // 2), kind=kind))
    try:
        torch.manual_seed(123)
        trainer(dl)
        assert len(snaps) >= k
        result = _reference_run(trainer, g0, d0, dl, k, c=C, **ref_kwargs)
    finally:
        torch.backends.mkldnn.enabled = mkldnn_was
    assert result.generator_updates == k
    g_state, d_state = snaps[k]
    assert_same_state(g_state, state(g0))
    assert_same_state(d_state, state(d0))


def test_reference_differs_when_clip_placement_differs(tmp_path):
    # Sanity of the equivalence test: the same comparison fails against a "clip before" loop.
    trainer = make_trainer(tmp_path, [WassersteinGeneratorLoss(), WassersteinCriticLoss(c=C)], ncritic=5)
    g0, d0 = copies(trainer)
    snaps = snapshot_at_generator_steps(trainer)
    dl = loader(toy_data(11))
    torch.manual_seed(123)
    trainer(dl)
    _reference_run(trainer, g0, d0, dl, 2, c=C, clip_placement="before")
    assert any(not torch.equal(a, b) for a, b in zip(snaps[2][1].values(), state(d0).values()))


def test_clip_before_reproduces_torchgans_wasserstein_loss(tmp_path):
    def run(losses, path):
        trainer = make_trainer(path, losses, ncritic=5, epochs=2)
        torch.manual_seed(7)
        trainer(loader(toy_data(13)))
        return trainer

    theirs = run([TorchganGeneratorLoss(), TorchganCriticLoss(clip=(-C, C))], tmp_path / "theirs")
    ours = run(
        [WassersteinGeneratorLoss(), WassersteinCriticLoss(clip=(-C, C), clip_placement="before")], tmp_path / "ours"
    )
    assert_same_state(state(ours.generator), state(theirs.generator))
    assert_same_state(state(ours.discriminator), state(theirs.discriminator))
    assert ours.loss_information["generator_iters"] == theirs.loss_information["generator_iters"] == 2 * 3
    logs_t = theirs.logger.get_loss_viz().logs
    logs_o = ours.logger.get_loss_viz().logs
    assert logs_o["WassersteinGeneratorLoss"] == logs_t["WassersteinGeneratorLoss"]
    # Same numbers, our documented sign: torchgan logs -W, we log W.
    assert logs_o["WassersteinCriticLoss"] == [-v for v in logs_t["WassersteinDiscriminatorLoss"]]
    assert len(logs_o["WassersteinCriticLoss"]) == 26


@pytest.mark.parametrize(
    "gen_cls, critic_loss, clipped",
    [
        (WassersteinGeneratorLoss, lambda: WassersteinGradientPenalty(), False),
        (HingeGeneratorLoss, lambda: HingeCriticLoss(), False),
        (HingeGeneratorLoss, lambda: HingeCriticLoss(c=0.05), True),
    ],
)
def test_other_plugins_train_in_a_stock_trainer(tmp_path, gen_cls, critic_loss, clipped):
    gen_loss, critic = gen_cls(), critic_loss()
    trainer = make_trainer(tmp_path, [gen_loss, critic], ncritic=5)
    before = state(trainer.discriminator)
    log = StepLog(trainer)
    trainer(loader(toy_data(16)))
    assert log.critic_runs() == [5, 5, 5]
    assert log.events.count("D") == 16  # one optimizer step per critic call, penalty included
    after = state(trainer.discriminator)
    assert any(not torch.equal(after[key], before[key]) for key in after)
    assert all(torch.isfinite(v).all() for v in after.values())
    biggest = max(p.abs().max().item() for p in trainer.discriminator.parameters())
    assert (biggest <= torch.tensor(0.05).item()) == clipped  # the bound as rounded to float32
