"""The torchgan loss classes: formulas, one update per ``train_ops``, clipping, errors.

Each update is compared with the same update written out by hand with torch ops
(``torch.optim.RMSprop``, ``torch.clamp``, per-sample ``autograd.grad``).
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("torchgan", reason="the torchgan extra is not installed")

from torchgan.losses import DiscriminatorLoss, GeneratorLoss  # noqa: E402
from torchgan.losses import WassersteinDiscriminatorLoss as TorchganCriticLoss  # noqa: E402
from torchgan.models import Generator  # noqa: E402

from wgan_ext.functional import CriticSchedule  # noqa: E402
from wgan_ext.losses import (  # noqa: E402
    HingeCriticLoss,
    HingeGeneratorLoss,
    WassersteinCriticLoss,
    WassersteinDiscriminatorLoss,
    WassersteinGeneratorLoss,
    WassersteinGradientPenalty,
    UpdateCounter,
)
from wgan_ext.networks import MLPCritic, MLPGenerator  # noqa: E402

CPU = torch.device("cpu")
ENC = 3


def models(seed: int = 0):
    torch.manual_seed(seed)
    return MLPGenerator(ENC, out_shape=2, hidden=8, n_hidden=2), MLPCritic(2, hidden=8, n_hidden=2)


def rmsprop(module, lr=1e-2):
    # A large learning rate so that one step moves weights across the clipping bounds.
    return torch.optim.RMSprop(module.parameters(), lr=lr)


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def assert_params_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.fixture
def real():
    return torch.randn(8, 2, generator=torch.Generator().manual_seed(1)) + 1.0


# --------------------------------------------------------------------------------------------
# classes and formulas


def test_classes_are_torchgan_losses_and_alias():
    assert WassersteinDiscriminatorLoss is WassersteinCriticLoss
    for cls in (WassersteinCriticLoss, WassersteinGradientPenalty, HingeCriticLoss):
        assert issubclass(cls, DiscriminatorLoss) and not issubclass(cls, GeneratorLoss)
    for cls in (WassersteinGeneratorLoss, HingeGeneratorLoss):
        assert issubclass(cls, GeneratorLoss) and not issubclass(cls, DiscriminatorLoss)


def test_generator_forward_formula():
    f = torch.tensor([0.5, -2.0, 1.25, 3.0])
    assert WassersteinGeneratorLoss()(f).item() == pytest.approx(-(0.5 - 2.0 + 1.25 + 3.0) / 4)
    assert WassersteinGeneratorLoss("sum")(f).item() == pytest.approx(-2.75)
    assert torch.equal(WassersteinGeneratorLoss("none")(f), -f)
    assert HingeGeneratorLoss()(f).item() == pytest.approx(-0.6875)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_critic_forward_matches_torchgans_bit_for_bit(reduction):
    g = torch.Generator().manual_seed(3)
    fx, fgz = torch.randn(16, generator=g), torch.randn(16, generator=g)
    ours = WassersteinCriticLoss(reduction)(fx, fgz)
    assert torch.equal(ours, TorchganCriticLoss(reduction)(fx, fgz))
    hand = {"mean": (fgz - fx).sum() / 16, "sum": (fgz - fx).sum(), "none": fgz - fx}[reduction]
    assert torch.allclose(ours, hand, atol=1e-6)


def test_hinge_critic_forward_values():
    fx = torch.tensor([2.0, 0.5, -1.0])
    fgz = torch.tensor([-2.0, 0.0, 0.5])
    # relu(1 - fx) = [0, .5, 2], relu(1 + fgz) = [0, 1, 1.5]
    assert HingeCriticLoss()(fx, fgz).item() == pytest.approx(2.5 / 3 + 2.5 / 3)
    assert HingeCriticLoss("sum")(fx, fgz).item() == pytest.approx(5.0)
    assert torch.equal(HingeCriticLoss("none")(fx, fgz), torch.tensor([0.0, 1.5, 3.5]))


def test_gradient_penalty_forward_is_per_sample():
    # f(x) = sum_j x_j^2 has gradient 2x: per-sample norms 2 ||x_i||, known in closed form.
    x = torch.tensor([[0.3, 0.4], [3.0, 4.0], [0.0, 0.5]], requires_grad=True)
    fx = (x**2).sum(dim=1)
    norms = torch.tensor([1.0, 10.0, 1.0])
    expected = ((norms - 1) ** 2).mean()
    assert WassersteinGradientPenalty()(x, fx).item() == pytest.approx(expected.item())
    # torchgan 0.1.0 takes one norm over the whole batch instead (different number).
    from torchgan.losses.functional import wasserstein_gradient_penalty as torchgan_gp

    assert torchgan_gp(x, (x**2).sum(dim=1)).item() != pytest.approx(expected.item())


# --------------------------------------------------------------------------------------------
# train_ops against hand-written updates


def test_critic_train_ops_is_one_update_then_clip(real):
    gen, critic = models()
    gen2, critic2 = copy.deepcopy(gen), copy.deepcopy(critic)
    opt, opt2 = rmsprop(critic), rmsprop(critic2)
    loss = WassersteinCriticLoss(c=0.05)
    steps = []
    opt.register_step_post_hook(lambda *a: steps.append(1))

    torch.manual_seed(5)
    value = loss.train_ops(gen, critic, opt, real, CPU)

    torch.manual_seed(5)
    fake = gen2(torch.randn(8, ENC)).detach()
    opt2.zero_grad()
    f_real, f_fake = critic2(real), critic2(fake)
    (f_fake.mean() - f_real.mean()).backward()
    opt2.step()
    unclipped = params(critic2)
    with torch.no_grad():
        for p in critic2.parameters():
            p.copy_(torch.clamp(p, -0.05, 0.05))

    assert steps == [1]
    assert_params_equal(params(critic), params(critic2))
    assert any((u.abs() > 0.05).any() for u in unclipped)  # the clip did something
    assert value == pytest.approx((f_real.mean() - f_fake.mean()).item(), abs=1e-6)  # W, not -W
    assert loss.critic_updates == 1 and loss.last_wasserstein == value
    assert loss.last_loss == -value


def test_clip_before_matches_torchgans_train_ops(real):
    gen, critic = models()
    gen2, critic2 = copy.deepcopy(gen), copy.deepcopy(critic)
    opt, opt2 = rmsprop(critic), rmsprop(critic2)
    ours = WassersteinCriticLoss(clip=(-0.05, 0.05), clip_placement="before")
    theirs = TorchganCriticLoss(clip=(-0.05, 0.05))
    for seed in (11, 12, 13):
        torch.manual_seed(seed)
        v_ours = ours.train_ops(gen, critic, opt, real, CPU)
        torch.manual_seed(seed)
        v_theirs = theirs.train_ops(gen2, critic2, opt2, real, CPU)
        assert_params_equal(params(critic), params(critic2))
        assert v_ours == -v_theirs
    # Clipped before the step: the critic left behind is outside the bounds.
    assert max(p.abs().max().item() for p in critic.parameters()) > 0.05


def test_gradient_penalty_train_ops_adds_per_sample_penalty_in_one_step(real):
    gen, critic = models()
    gen2, critic2 = copy.deepcopy(gen), copy.deepcopy(critic)
    opt, opt2 = rmsprop(critic, 1e-3), rmsprop(critic2, 1e-3)
    loss = WassersteinGradientPenalty()
    steps = []
    opt.register_step_post_hook(lambda *a: steps.append(1))

    torch.manual_seed(9)
    value = loss.train_ops(gen, critic, opt, real, CPU)

    torch.manual_seed(9)
    fake = gen2(torch.randn(8, ENC)).detach()
    eps = torch.rand(8)
    opt2.zero_grad()
    f_real, f_fake = critic2(real), critic2(fake)
    norms = []
    for i in range(8):  # one sample at a time: an independent per-sample gradient norm
        xi = (eps[i] * real[i : i + 1] + (1 - eps[i]) * fake[i : i + 1]).requires_grad_(True)
        (gi,) = torch.autograd.grad(critic2(xi).sum(), xi, create_graph=True)
        norms.append(gi.flatten().norm())
    penalty = ((torch.stack(norms) - 1) ** 2).mean()
    (f_fake.mean() - f_real.mean() + 10.0 * penalty).backward()
    opt2.step()

    assert steps == [1]
    for p, q in zip(critic.parameters(), critic2.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)
    assert loss.last_penalty == pytest.approx(penalty.item(), rel=1e-5)
    assert value == pytest.approx((f_real.mean() - f_fake.mean()).item(), abs=1e-6)
    # No clipping by default: WGAN-GP replaces it.
    assert max(p.abs().max().item() for p in critic.parameters()) > 0.05


def test_hinge_train_ops(real):
    gen, critic = models()
    gen2, critic2 = copy.deepcopy(gen), copy.deepcopy(critic)
    opt, opt2 = rmsprop(critic), rmsprop(critic2)
    torch.manual_seed(4)
    value = HingeCriticLoss().train_ops(gen, critic, opt, real, CPU)
    torch.manual_seed(4)
    fake = gen2(torch.randn(8, ENC)).detach()
    opt2.zero_grad()
    loss = torch.relu(1 - critic2(real)).mean() + torch.relu(1 + critic2(fake)).mean()
    loss.backward()
    opt2.step()
    assert_params_equal(params(critic), params(critic2))
    assert value == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("cls", [WassersteinGeneratorLoss, HingeGeneratorLoss])
def test_generator_train_ops(cls):
    gen, critic = models()
    gen2, critic2 = copy.deepcopy(gen), copy.deepcopy(critic)
    opt, opt2 = rmsprop(gen), rmsprop(gen2)
    torch.manual_seed(2)
    value = cls().train_ops(gen, critic, opt, CPU, 6)
    torch.manual_seed(2)
    opt2.zero_grad()
    loss = -critic2(gen2(torch.randn(6, ENC))).mean()
    loss.backward()
    opt2.step()
    assert_params_equal(params(gen), params(gen2))
    assert_params_equal(params(critic), params(critic2))  # only the generator's optimizer steps
    assert value == loss.item()


def test_override_train_ops_uses_torchgans_calling_convention(real):
    gen, critic = models()
    opt = rmsprop(critic)
    calls = []

    def custom(*args):
        calls.append(args)
        return 42.0

    loss = WassersteinCriticLoss(override_train_ops=custom)
    assert loss.train_ops(gen, critic, opt, real, CPU) == 42.0
    assert calls == [(gen, critic, opt, real, CPU, None)]
    assert loss.critic_updates == 1
    g_loss = WassersteinGeneratorLoss(override_train_ops=custom)
    assert g_loss.train_ops(gen, critic, opt, CPU, 8) == 42.0
    assert calls[1] == (gen, critic, opt, CPU, 8, None)


def test_generator_waits_for_the_critic_schedule(real):
    gen, critic = models()
    opt_g, opt_d = rmsprop(gen), rmsprop(critic)
    g_loss, d_loss = WassersteinGeneratorLoss(), WassersteinCriticLoss(schedule=CriticSchedule(2, boost=3, warmup=1))
    losses = {"g": g_loss, "d": d_loss}
    before = params(gen)
    assert g_loss.train_ops(gen, critic, opt_g, CPU, 8, losses=losses) == 0.0  # no critic update yet
    assert_params_equal(params(gen), before)
    events = []
    for _ in range(9):
        d_loss.train_ops(gen, critic, opt_d, real, CPU, losses=losses)
        events.append("D")
        done = g_loss.generator_updates
        g_loss.train_ops(gen, critic, opt_g, CPU, 8, losses=losses)
        events += ["G"] * (g_loss.generator_updates - done)
    # n(0) = 3, then n(g) = 2
    assert "".join(events) == "DDDG" + "DDG" * 3
    assert d_loss.generator_updates == g_loss.generator_updates == 4
    assert d_loss.critic_updates == 9 and d_loss.critic_updates_since_generator == 0


def _alternate(g_loss, d_loss, losses, n_batches, real):
    """Critic first, then the generator, in each of ``n_batches`` (the Trainer with ncritic=1)."""
    gen, critic = models()
    opt_g, opt_d = rmsprop(gen), rmsprop(critic)
    for _ in range(n_batches):
        d_loss.train_ops(gen, critic, opt_d, real, CPU, losses=losses)
        g_loss.train_ops(gen, critic, opt_g, CPU, 8, losses=losses)
    return gen, critic


def test_an_explicit_counter_pairs_the_losses_like_the_default(real):
    counter = UpdateCounter(n_critic=3)
    d_loss, g_loss = WassersteinCriticLoss(counter=counter), WassersteinGeneratorLoss(counter=counter)
    torch.manual_seed(0)
    explicit = _alternate(g_loss, d_loss, {"d": d_loss, "g": g_loss}, 9, real)
    assert (counter.critic_updates, counter.generator_updates, g_loss.generator_updates) == (9, 3, 3)
    assert d_loss.counter is counter and d_loss.critic_updates == 9

    d_default, g_default = WassersteinCriticLoss(n_critic=3), WassersteinGeneratorLoss()
    assert g_default.counter is None
    torch.manual_seed(0)
    default = _alternate(g_default, d_default, {"d": d_default, "g": g_default}, 9, real)
    assert g_default.counter is d_default.counter  # adopted from the Trainer's critic loss
    for a, b in zip(explicit, default):
        assert_params_equal(params(a), params(b))


def test_losses_with_different_counters_are_refused(real):
    gen, critic = models()
    d_loss, g_loss = WassersteinCriticLoss(), WassersteinGeneratorLoss(counter=UpdateCounter(5))
    with pytest.raises(ValueError, match="different UpdateCounters"):
        _untouched(lambda: g_loss.train_ops(gen, critic, rmsprop(gen), CPU, 8, losses={"d": d_loss, "g": g_loss}),
                   gen, critic)
    with pytest.raises(ValueError, match="give n_critic/schedule to it"):
        WassersteinCriticLoss(counter=UpdateCounter(5), n_critic=5)
    with pytest.raises(TypeError, match="counter must be an UpdateCounter"):
        WassersteinGeneratorLoss(counter=5)


def test_state_dict_holds_counts_and_last_values_only(real):
    d_loss, g_loss = WassersteinCriticLoss(c=0.05, n_critic=2), WassersteinGeneratorLoss()
    _alternate(g_loss, d_loss, {"d": d_loss, "g": g_loss}, 5, real)
    d_state, g_state = d_loss.state_dict(), g_loss.state_dict()
    assert d_state["_extra_state"] == {
        "counter": {"critic_updates": 5, "generator_updates": 2, "critic_updates_since_generator": 1},
        "last_value": d_loss.last_value, "last_wasserstein": d_loss.last_wasserstein,
        "last_loss": d_loss.last_loss, "last_penalty": None,
    }
    assert g_state["_extra_state"] == {"generator_updates": 2, "last_value": g_loss.last_value}

    counter = UpdateCounter(2)
    d_new, g_new = WassersteinCriticLoss(c=0.05, counter=counter), WassersteinGeneratorLoss(counter=counter)
    d_new.load_state_dict(d_state)
    g_new.load_state_dict(g_state)
    assert (counter.critic_updates, counter.generator_updates, counter.critic_updates_since_generator) == (5, 2, 1)
    assert (d_new.last_wasserstein, g_new.last_value) == (d_loss.last_wasserstein, g_loss.last_value)
    assert d_new.clip == (-0.05, 0.05)  # configuration is not in the state

    bad = {"_extra_state": {**d_state["_extra_state"], "counter": {"critic_updates": -1, "generator_updates": 0,
                                                                   "critic_updates_since_generator": 0}}}
    with pytest.raises(ValueError, match="critic_updates' must be an integer >= 0"):
        d_new.load_state_dict(bad)
    with pytest.raises(ValueError, match="missing"):
        g_new.load_state_dict({"_extra_state": {"generator_updates": 1}})
    assert counter.critic_updates == 5 and g_new.generator_updates == 2  # nothing changed


# --------------------------------------------------------------------------------------------
# bad input: clear errors, nothing modified


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"clip": (0.01, 0.01)}, ValueError, r"clip=\(lo, hi\) needs lo < hi"),
        ({"clip": (0.02, -0.02)}, ValueError, r"lo"),
        ({"clip": (-0.01, 0.0, 0.01)}, ValueError, "pair"),
        ({"c": 0}, ValueError, "c must be > 0"),
        ({"c": -0.01}, ValueError, "c must be > 0"),
        ({"c": float("nan")}, ValueError, "finite"),
        ({"c": True}, TypeError, "c must be a real number"),
        ({"c": 0.01, "clip": (-0.01, 0.01)}, ValueError, "not both"),
        ({"reduction": "avg"}, ValueError, "reduction must be one of"),
        ({"clip_placement": "middle"}, ValueError, "clip_placement"),
        ({"schedule": "weekly"}, ValueError, "schedule must be"),
        ({"schedule": "trainer", "n_critic": 5}, ValueError, "n_critic"),
        ({"n_critic": 0}, ValueError, "n_critic must be a positive integer"),
        ({"clip_backend": "gpu"}, ValueError, "clip_backend"),
        ({"override_train_ops": 5}, TypeError, "override_train_ops"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        WassersteinCriticLoss(**kwargs)


def test_gradient_penalty_constructor_errors():
    with pytest.raises(ValueError, match="lambd must be finite and >= 0"):
        WassersteinGradientPenalty(lambd=-1.0)
    with pytest.raises(ValueError, match="nothing to clip"):
        WassersteinGradientPenalty(clip_placement="before")


def _untouched(fn, *modules):
    """Run ``fn`` (expected to raise) and check it changed no parameter and drew no random number."""
    before = [params(m) for m in modules]
    rng = torch.get_rng_state()
    fn()
    for m, b in zip(modules, before):
        assert_params_equal(params(m), b)
    assert torch.equal(torch.get_rng_state(), rng)


def test_reduction_none_needs_a_scalar_in_train_ops(real):
    gen, critic = models()
    loss = WassersteinCriticLoss(reduction="none")
    assert loss(torch.ones(3), torch.zeros(3)).shape == (3,)  # forward is fine per sample

    def call():
        with pytest.raises(ValueError, match="reduction='none' gives one loss per sample"):
            loss.train_ops(gen, critic, rmsprop(critic), real, CPU)

    _untouched(call, gen, critic)
    assert loss.critic_updates == 0
    g_loss = WassersteinGeneratorLoss(reduction="none")
    with pytest.raises(ValueError, match="reduction='none'"):
        g_loss.train_ops(gen, critic, rmsprop(gen), CPU, 8)


class LabelledGenerator(Generator):
    def __init__(self):
        super().__init__(ENC, label_type="required")
        self.net = torch.nn.Linear(ENC + 1, 2)

    def forward(self, z, labels):
        return self.net(torch.cat([z, labels.float().unsqueeze(1)], dim=1))


def test_labels_required_but_missing(real):
    gen, critic = LabelledGenerator(), models()[1]
    with pytest.raises(ValueError, match="labels is None, but generator.label_type='required'"):
        _untouched(lambda: WassersteinCriticLoss().train_ops(gen, critic, rmsprop(critic), real, CPU), gen, critic)
    with pytest.raises(ValueError, match="labels is None"):
        _untouched(lambda: WassersteinGeneratorLoss().train_ops(gen, critic, rmsprop(gen), CPU, 8), gen, critic)
    # with labels it trains
    value = WassersteinCriticLoss().train_ops(gen, critic, rmsprop(critic), real, CPU, labels=torch.arange(8) % 2)
    assert isinstance(value, float)


def test_two_critic_losses_in_one_trainer_are_refused(real):
    gen, critic = models()
    losses = {"a": WassersteinCriticLoss(), "b": WassersteinGradientPenalty(), "g": WassersteinGeneratorLoss()}

    def call():
        with pytest.raises(ValueError, match="2 wgan_ext critic losses"):
            losses["a"].train_ops(gen, critic, rmsprop(critic), real, CPU, losses=losses)

    _untouched(call, gen, critic)
    with pytest.raises(ValueError, match="2 wgan_ext critic losses"):
        losses["g"].train_ops(gen, critic, rmsprop(gen), CPU, 8, losses=losses)


def test_real_inputs_must_be_a_tensor():
    gen, critic = models()
    with pytest.raises(TypeError, match="real_inputs must be a tensor"):
        WassersteinCriticLoss().train_ops(gen, critic, rmsprop(critic), {"x": 1}, CPU)


def test_critic_loss_clips_with_the_bounds_on_cpu_and_is_copyable():
    from wgan_ext import ClippedRMSprop, FusedClipper

    loss = WassersteinCriticLoss(c=0.01)
    critic = MLPCritic(in_shape=(2,), hidden=8)
    assert loss._clip_for(critic, torch.optim.RMSprop(critic.parameters())) == (-0.01, 0.01)
    assert loss._clip_for(critic, ClippedRMSprop(critic.parameters(), clip=0.01)) == (-0.01, 0.01)
    loss._clipper = FusedClipper(critic, 0.01)  # as on CUDA: never copied or pickled
    assert copy.deepcopy(loss)._clipper is None and loss._clipper is not None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_critic_loss_on_cuda_keeps_a_fused_clipper_while_the_parameters_stay():
    from wgan_ext import ClippedRMSprop, FusedClipper

    loss = WassersteinCriticLoss(c=0.01)
    critic = MLPCritic(in_shape=(2,), hidden=8).cuda()
    opt = torch.optim.RMSprop(critic.parameters())
    first = loss._clip_for(critic, opt)
    assert isinstance(first, FusedClipper) and (first.lo, first.hi) == (-0.01, 0.01)
    assert loss._clip_for(critic, opt) is first
    layer = next(m for m in critic.modules() if isinstance(m, torch.nn.Linear))
    layer.weight = torch.nn.Parameter(torch.randn_like(layer.weight))
    second = loss._clip_for(critic, opt)
    assert second is not first and any(t is layer.weight for t in second.tensors)
    assert loss._clip_for(critic, ClippedRMSprop(critic.parameters(), clip=0.01)) == (-0.01, 0.01)
    assert loss._clipper is None
