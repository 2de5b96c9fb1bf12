"""Scoring a generator during ``wgan-ext train``: exact W1, modes, the critic's estimate, and for
images the scores of :mod:`wgan_ext.image_scores` (digit FD, KID and classes; Inception FID).

The evaluation set (real samples and generator noise) is fixed at the start, from generators of
its own: scores over time compare the same points, and evaluating never draws from the
training RNG, which keeps resumed runs bit-identical.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from . import data as D
from . import image_scores as S
from . import metrics as M

__all__ = ["Evaluator", "SCORES", "PERIOD_SCORES"]

SCORES = ("critic_w_eval", "w1", "w1_floor", "modes", "modes_total", "high_quality",
          "fd", "fd_floor", "kid", "classes", "classes_total", "confident", "fid")
"""The keys of an evaluation row (NaN where a score does not apply to the data)."""

PERIOD_SCORES = ("w1", "fd")
"""Scores also averaged over each logging period (``w1_period``, ``fd_period``, with those taken
every ``score_every`` generator iterations): the critic's estimate in a row is a mean over its
period, and the summary's Spearman correlations take it against these."""


class Evaluator:
    """Scores ``G`` (and the critic's estimate) on a fixed set of ``n`` real samples and ``n``
    fixed noise vectors.

    Attributes:
        toy: the data are 2-D points (else images).
        real: the fixed real samples (CPU).
        w1_floor: exact W1 between two real samples of this size (NaN if there is no second one).
        modes, mode_radius: the mixture's mode centres and the "high-quality sample" radius,
            3 std of a mode (VEEGAN, PacGAN); ``None`` off the mixture toys.
        digits: the digit scores (:class:`~wgan_ext.image_scores.DigitScores`) on ``digits``.
        inception: Inception FID on other images, when its weights are found (``inception_weights``
            or torch's hub cache), else ``None``.
        notes: lines to show the user once (how to enable Inception FID).
    """

    def __init__(self, source: D.DataSource, n: int, seed: int, encoding_dims: int, device: torch.device,
                 inception_weights: Optional[str] = None) -> None:
        self.device = device
        self.real = D.eval_real(source, n, seed)
        n = len(self.real)
        self.noise = torch.randn(n, encoding_dims, generator=torch.Generator().manual_seed(seed + 0x5EED))
        self.toy = toy = isinstance(source, D.ToySource)
        self.modes = source.modes if toy else None
        self.mode_radius = 3 * source.mode_std if toy and source.mode_std else None
        self.w1_floor = math.nan
        self.digits: Optional[S.DigitScores] = None
        self.inception: Optional[S.InceptionFID] = None
        self.notes: List[str] = []
        pool = None
        if toy:
            other = D.toy_sample(source.name, n, torch.Generator().manual_seed(seed + 0xF100))
            self.w1_floor = M.exact_w1(self.real, other)
        elif source.length is not None and source.length >= 2 * n:
            pool = D.eval_real(source, 2 * n, seed + 1)
            self.w1_floor = M.exact_w1(pool[:n], pool[n:])
        if source.name == "digits":
            self.digits = S.DigitScores(self.real, (pool[:n], pool[n:]) if pool is not None else None)
        elif not toy:
            weights, note = S.inception_fid_status(inception_weights)
            self.notes.append(note)
            if weights is not None:
                self.inception = S.InceptionFID(self.real, weights)

    @torch.no_grad()
    def __call__(self, G: torch.nn.Module, C: torch.nn.Module) -> Tuple[Dict[str, Any], torch.Tensor]:
        """(scores keyed by :data:`SCORES`, the generated samples on CPU): :meth:`sample_scores`,
        the critic's estimate on the fixed set and Inception FID. ``G`` and ``C`` are put in eval
        mode meanwhile (batch norm must not update its statistics while we look)."""
        with _eval_mode(C):
            row, fake = self.sample_scores(G)
            row["critic_w_eval"] = M.critic_estimate(lambda x: C(x.to(self.device)).cpu(), self.real, fake)
            if self.inception is not None and bool(torch.isfinite(fake).all()):
                row["fid"] = self.inception(fake)
        return row, fake

    @torch.no_grad()
    def sample_scores(self, G: torch.nn.Module) -> Tuple[Dict[str, Any], torch.Tensor]:
        """The scores of ``G``'s samples alone, cheap enough to take between evaluations: exact W1,
        modes, the digit scores (the others NaN; all NaN when the samples are not finite)."""
        with _eval_mode(G):
            fake = torch.cat([G(z.to(self.device)).cpu() for z in self.noise.split(1024)])
        row: Dict[str, Any] = dict.fromkeys(SCORES, math.nan)
        row["w1_floor"] = self.w1_floor
        if not bool(torch.isfinite(fake).all()):  # diverged: NaN scores (the assignment would raise)
            return row, fake
        if self.real[0].numel() <= 4096:  # pixel-space W1 for small images is cheap and still says something
            row["w1"] = M.exact_w1(fake, self.real)
        if self.modes is not None:
            cov = M.mode_coverage(fake, self.modes, self.mode_radius)
            row.update(modes=cov.covered, modes_total=cov.total, high_quality=cov.high_quality)
        if self.digits is not None:
            row.update(self.digits(fake), fd_floor=self.digits.fd_floor)
        return row, fake


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(training)
