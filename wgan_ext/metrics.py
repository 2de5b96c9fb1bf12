"""Distances and scores that say whether a WGAN learned: exact W1, modes covered, classes covered,
rank correlation.

The critic of a weight-clipped WGAN estimates ``K * W1(P_r, P_g)`` for some unknown Lipschitz
constant ``K`` (Arjovsky et al. 2017). On 2-D toy data we can compute W1 itself between equal-size
sample sets (an optimal assignment is an optimal transport plan between two uniform empirical
measures with the same number of atoms), and check how well the critic's estimate tracks it.

Also here: the closed-form distances of the worked examples in Lilian Weng's "From GAN to
WGAN" (the discrete EM example and the parallel-lines example), which the tests use to check the helpers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    "exact_w1",
    "em_distance_1d",
    "kl_divergence",
    "js_divergence",
    "parallel_lines",
    "parallel_lines_distances",
    "ModeCoverage",
    "mode_coverage",
    "ClassCoverage",
    "class_coverage",
    "spearman",
    "critic_estimate",
]

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float]]


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def exact_w1(x: ArrayLike, y: ArrayLike) -> float:
    """Exact 1-Wasserstein distance between the empirical measures of ``x`` and ``y``.

    ``x`` and ``y`` hold the same number of samples (``(n, d)``, or ``(n, ...)`` which is
    flattened; Euclidean ground cost). For two uniform measures on ``n`` atoms each, some optimal
    transport plan is a permutation (Birkhoff), so ``scipy.optimize.linear_sum_assignment`` on
    the ``n x n`` cost matrix gives W1 exactly: the mean cost of the optimal matching.
    Cost ``O(n^3)``: about 0.1 s for ``n = 1000``.

    Note the sample floor: two independent samples of the *same* distribution are at a positive
    distance that shrinks slowly with ``n``; compare against that floor, not against 0.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    a, b = _np(x), _np(y)
    if a.ndim == 1:
        a = a[:, None]
    if b.ndim == 1:
        b = b[:, None]
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    if len(a) != len(b):
        raise ValueError(f"exact_w1 needs equal-size sample sets, got {len(a)} and {len(b)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"samples differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    if len(a) == 0:
        raise ValueError("exact_w1 needs at least one sample")
    cost = cdist(a, b)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def em_distance_1d(p: ArrayLike, q: ArrayLike, spacing: float = 1.0) -> float:
    """Earth mover's distance between two piles of dirt on evenly spaced cells of a line.

    The worked example of "From GAN to WGAN": moving ``P = (3, 2, 1, 4)`` onto ``Q = (1, 2, 4, 3)`` carries
    ``delta_i = delta_{i-1} + P_i - Q_i`` across each cell boundary, and the cost is the sum of
    ``|delta_i|``: here ``2 + 2 + 1 + 0 = 5``. Masses are not normalised (the answer is in
    "mass x cells"); ``p`` and ``q`` must hold the same total mass.
    """
    a, b = _np(p).ravel(), _np(q).ravel()
    if a.shape != b.shape:
        raise ValueError(f"p and q must have the same number of cells, got {a.size} and {b.size}")
    if (a < 0).any() or (b < 0).any():
        raise ValueError("masses must be non-negative")
    if not math.isclose(a.sum(), b.sum(), rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(f"p and q must carry the same total mass, got {a.sum()} and {b.sum()}")
    return float(np.abs(np.cumsum(a - b)).sum() * spacing)


def kl_divergence(p: ArrayLike, q: ArrayLike) -> float:
    """``KL(p || q)`` of two discrete distributions (normalised here); ``inf`` where ``q = 0 < p``."""
    a, b = _np(p).ravel(), _np(q).ravel()
    a, b = a / a.sum(), b / b.sum()
    mask = a > 0
    if (b[mask] == 0).any():
        return math.inf
    return float(np.sum(a[mask] * np.log(a[mask] / b[mask])))


def js_divergence(p: ArrayLike, q: ArrayLike) -> float:
    """Jensen-Shannon divergence (natural log, so at most ``log 2``) of two discrete distributions."""
    a, b = _np(p).ravel(), _np(q).ravel()
    a, b = a / a.sum(), b / b.sum()
    m = 0.5 * (a + b)
    return 0.5 * kl_divergence(a, m) + 0.5 * kl_divergence(b, m)


def parallel_lines(theta: float, n: int, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The parallel-lines pair (WGAN paper, "From GAN to WGAN"): ``P = (0, y)``, ``Q = (theta, y)``,
    ``y ~ U(0, 1)``.

    Both sets use the same ``y`` values, so the optimal matching pairs each point with its
    horizontal neighbour and the empirical W1 equals ``|theta|`` exactly.
    """
    y = torch.rand(n, generator=generator, dtype=torch.float64)
    p = torch.stack([torch.zeros_like(y), y], dim=1)
    q = torch.stack([torch.full_like(y, float(theta)), y], dim=1)
    return p, q


def parallel_lines_distances(theta: float) -> dict[str, float]:
    """Closed-form distances of the parallel-lines example ("From GAN to WGAN", section 6.2).

    ``W = |theta|``; for ``theta != 0``: ``JS = log 2`` and ``KL = +inf`` both ways;
    for ``theta = 0`` all are 0.
    """
    if theta == 0:
        return {"W": 0.0, "JS": 0.0, "KL_PQ": 0.0, "KL_QP": 0.0}
    return {"W": abs(float(theta)), "JS": math.log(2.0), "KL_PQ": math.inf, "KL_QP": math.inf}


@dataclass(frozen=True)
class ModeCoverage:
    """How generated points sit on a mixture's modes.

    Attributes:
        covered: modes with at least ``min_count`` generated points within ``radius``.
        total: number of modes.
        high_quality: fraction of generated points within ``radius`` of some mode.
        counts: points within ``radius`` of each mode.
    """

    covered: int
    total: int
    high_quality: float
    counts: tuple


def mode_coverage(
    samples: ArrayLike,
    modes: ArrayLike,
    radius: float,
    min_count: Optional[int] = None,
) -> ModeCoverage:
    """Count the modes a generator covers (the measure of Metz et al. 2017 / Lin et al. 2018).

    A generated point is *high quality* when it lies within ``radius`` (usually 3 standard
    deviations of a mixture component) of its nearest mode, and a mode is *covered* when at least
    ``min_count`` points are high-quality points of it. The default ``min_count`` is a quarter of
    a mode's fair share, ``ceil(n / (4 K))``, so a handful of stray points do not count as a mode.
    """
    x, c = _np(samples).reshape(-1, 2), _np(modes).reshape(-1, 2)
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    k = len(c)
    if min_count is None:
        min_count = max(1, math.ceil(len(x) / (4 * k)))
    d = np.linalg.norm(x[:, None, :] - c[None, :, :], axis=2)
    nearest = d.argmin(axis=1)
    near = d[np.arange(len(x)), nearest] <= radius
    counts = np.bincount(nearest[near], minlength=k)
    return ModeCoverage(
        covered=int((counts >= min_count).sum()),
        total=k,
        high_quality=float(near.mean()) if len(x) else 0.0,
        counts=tuple(int(v) for v in counts),
    )


@dataclass(frozen=True)
class ClassCoverage:
    """How a classifier sees generated images.

    Attributes:
        covered: classes given to at least ``min_count`` confidently classified samples.
        total: number of classes.
        confident: fraction of samples whose top class probability is at least the threshold.
        counts: confidently classified samples of each class.
    """

    covered: int
    total: int
    confident: float
    counts: tuple


def class_coverage(probs: ArrayLike, threshold: float = 0.9, min_count: Optional[int] = None) -> ClassCoverage:
    """Classes that appear among the confidently classified samples (``probs``: ``(n, K)`` class
    probabilities). A sample is *confident* when its top probability is at least ``threshold``;
    a class is *covered* when at least ``min_count`` confident samples have it, by default a
    quarter of a class's fair share, ``ceil(n / (4 K))``, as :func:`mode_coverage` counts modes.
    """
    p = _np(probs)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"probs must be (n, K) class probabilities, got shape {p.shape}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    n, k = p.shape
    if min_count is None:
        min_count = max(1, math.ceil(n / (4 * k)))
    sure = p.max(axis=1) >= threshold
    counts = np.bincount(p.argmax(axis=1)[sure], minlength=k)
    return ClassCoverage(covered=int((counts >= min_count).sum()), total=k,
                         confident=float(sure.mean()) if n else 0.0, counts=tuple(int(v) for v in counts))


def spearman(a: ArrayLike, b: ArrayLike) -> float:
    """Spearman rank correlation of two equal-length series (NaN when either is constant or too short)."""
    from scipy.stats import spearmanr

    x, y = _np(a).ravel(), _np(b).ravel()
    if len(x) != len(y):
        raise ValueError(f"series differ in length: {len(x)} vs {len(y)}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y)[0])  # [0]: the coefficient, on old and new SciPy alike


@torch.no_grad()
def critic_estimate(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor, batch: int = 1024) -> float:
    """The critic's Wasserstein estimate ``mean f(real) - mean f(fake)`` (Algorithm 1's objective)."""
    def mean_f(x: torch.Tensor) -> float:
        total = 0.0
        for i in range(0, len(x), batch):
            total += float(critic(x[i : i + batch]).double().sum())
        return total / len(x)

    return mean_f(real) - mean_f(fake)
