"""Distance helpers against the worked examples of "From GAN to WGAN", closed forms and independent computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from wgan_ext import metrics as M


# ----------------------------------------------------------------------------- the EM example


def test_em_worked_example_is_5() -> None:
    # "From GAN to WGAN": P = (3, 2, 1, 4), Q = (1, 2, 4, 3); deltas 2, 2, -1, 0 -> W = 5
    assert M.em_distance_1d([3, 2, 1, 4], [1, 2, 4, 3]) == 5.0


def test_em_example_by_optimal_assignment() -> None:
    # Independent route: one unit of dirt per atom, matched by linear_sum_assignment.
    p = np.repeat([1, 2, 3, 4], [3, 2, 1, 4]).astype(float)
    q = np.repeat([1, 2, 3, 4], [1, 2, 4, 3]).astype(float)
    assert M.exact_w1(p, q) * 10 == pytest.approx(5.0)


def test_em_1d_matches_scipy_on_random_histograms() -> None:
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(0)
    cells = np.arange(12, dtype=float)
    for _ in range(20):
        p, q = rng.random(12), rng.random(12)
        q *= p.sum() / q.sum()
        expected = wasserstein_distance(cells, cells, p, q) * p.sum()  # scipy normalises the masses
        assert M.em_distance_1d(p, q) == pytest.approx(expected, rel=1e-9)


def test_em_1d_rejects_unequal_mass() -> None:
    with pytest.raises(ValueError, match="same total mass"):
        M.em_distance_1d([1, 2], [1, 1])


# ----------------------------------------------------------------------------- exact W1


def test_exact_w1_equals_sorted_matching_in_1d() -> None:
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=200), rng.exponential(size=200)
    assert M.exact_w1(a, b) == pytest.approx(wasserstein_distance(a, b), rel=1e-12)


def test_exact_w1_equals_brute_force_over_permutations() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 2)), rng.normal(size=(6, 2)) + 1
    cost = np.linalg.norm(a[:, None] - b[None], axis=2)
    best = min(cost[range(6), list(perm)].mean() for perm in itertools.permutations(range(6)))
    assert M.exact_w1(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(best, rel=1e-12)


def test_exact_w1_of_a_translation_is_its_length() -> None:
    x = torch.rand(50, 3, dtype=torch.float64)
    # Duality with f(x) = <x, t/|t|> bounds W1 below by |t|, and the identity matching attains it.
    shift = torch.tensor([0.3, -0.4, 0.0], dtype=torch.float64)
    assert M.exact_w1(x, x + shift) == pytest.approx(0.5, abs=1e-9)
    assert M.exact_w1(x, x) == 0.0


def test_exact_w1_needs_equal_sizes() -> None:
    with pytest.raises(ValueError, match="equal-size"):
        M.exact_w1(np.zeros((3, 2)), np.zeros((4, 2)))


# ----------------------------------------------------------------------------- parallel lines


@pytest.mark.parametrize("theta", [-0.7, -0.05, 0.0, 0.3, 1.5])
def test_parallel_lines_w1_is_abs_theta(theta) -> None:
    p, q = M.parallel_lines(theta, 300, torch.Generator().manual_seed(0))
    assert M.exact_w1(p, q) == pytest.approx(abs(theta), abs=1e-12)
    assert M.parallel_lines_distances(theta)["W"] == abs(theta)


@pytest.mark.parametrize("theta", [-0.5, 0.25, 1.0])
def test_parallel_lines_js_log2_kl_inf_on_histograms(theta) -> None:
    # Discretise the plane: both lines put uniform mass on 10 y-cells, P in the x-column of 0 and
    # Q in the x-column of theta (a different column when theta != 0).
    xs = sorted({0.0, float(theta)})
    p = np.zeros((len(xs), 10))
    q = np.zeros((len(xs), 10))
    p[xs.index(0.0)] = 0.1
    q[xs.index(float(theta))] = 0.1
    closed = M.parallel_lines_distances(theta)
    assert M.js_divergence(p, q) == pytest.approx(math.log(2)) == pytest.approx(closed["JS"])
    assert M.kl_divergence(p, q) == math.inf == closed["KL_PQ"]
    assert M.kl_divergence(q, p) == math.inf == closed["KL_QP"]


def test_parallel_lines_theta_zero_all_zero() -> None:
    p = np.full(10, 0.1)
    assert M.js_divergence(p, p) == 0.0 and M.kl_divergence(p, p) == 0.0
    assert M.parallel_lines_distances(0.0) == {"W": 0.0, "JS": 0.0, "KL_PQ": 0.0, "KL_QP": 0.0}


def test_kl_closed_form() -> None:
    p, q = [0.5, 0.5], [0.25, 0.75]
    assert M.kl_divergence(p, q) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    assert M.js_divergence(p, q) == pytest.approx(M.js_divergence(q, p))


# ----------------------------------------------------------------------------- modes, correlation


def test_mode_coverage_counts_modes_with_enough_nearby_points() -> None:
    modes = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    pts = torch.cat([
        modes[0].repeat(10, 1),
        modes[1].repeat(10, 1) + 0.01,
        modes[2].repeat(1, 1),           # a stray point: not enough for a mode
        torch.tensor([[0.5, 0.5]] * 3),  # far from every mode
    ])
    cov = M.mode_coverage(pts, modes, radius=0.05, min_count=5)
    assert (cov.covered, cov.total) == (2, 4)
    assert cov.counts == (10, 10, 1, 0)
    assert cov.high_quality == pytest.approx(21 / 24)
    # default min_count = ceil(n / (4K)) = ceil(24 / 16) = 2: the stray still does not count
    assert M.mode_coverage(pts, modes, radius=0.05).covered == 2


def test_spearman_against_rank_formula() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=30), rng.normal(size=30)
    ra, rb = a.argsort().argsort(), b.argsort().argsort()
    d2 = ((ra - rb) ** 2).sum()
    n = 30
    assert M.spearman(a, b) == pytest.approx(1 - 6 * d2 / (n * (n * n - 1)))
    assert M.spearman(a, np.exp(a)) == pytest.approx(1.0)
    assert M.spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(M.spearman(a, np.ones(30)))
    assert math.isnan(M.spearman([1.0, 2.0], [1.0, 2.0]))


def test_critic_estimate_of_a_linear_critic() -> None:
    w = torch.tensor([[2.0], [-1.0]])
    critic = lambda x: x @ w  # noqa: E731
    real, fake = torch.randn(100, 2), torch.randn(80, 2) + 3
    expected = float((real.mean(0) - fake.mean(0)) @ w.view(-1))
    assert M.critic_estimate(critic, real, fake, batch=7) == pytest.approx(expected, rel=1e-5)
