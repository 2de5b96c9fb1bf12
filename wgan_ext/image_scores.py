"""Scores of generated images, computed by torchmetrics as GAN papers compute them.

* **digits**: the Fréchet distance (FID's formula) and the kernel distance (KID's) in the
  feature space of a small classifier of the 8x8 digits (:mod:`wgan_ext.digits_classifier`),
  through torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` with
  ``feature=`` that classifier; and the classes covered by confidently classified samples.
* **other images** (mnist, cifar10, folder): Inception FID, only when Inception's weights are on
  this machine (``--inception-weights PATH`` or torch's hub cache) and torch-fidelity is
  installed; otherwise nothing is computed and :func:`inception_fid_status` says how to enable it.
  Nothing here downloads.

Images arrive in ``[-1, 1]`` (the generator's ``tanh`` range) and are passed to torchmetrics in
``[0, 1]`` with ``normalize=True``.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from . import metrics as M

__all__ = [
    "CONFIDENCE", "DigitScores", "digit_fd", "InceptionFID", "INCEPTION_WEIGHTS_FILE", "inception_fid_status",
    "to_unit",
]

CONFIDENCE = 0.9
"""A sample is confidently classified when its top class probability is at least this."""
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
"""The file name of torch-fidelity's Inception-v3 weights (FID's reference network)."""
_KID_SEED = 0x4B1D  # KID draws random subsets: from a generator of its own, never the training RNG


def to_unit(x: Tensor) -> Tensor:
    """Images in ``[-1, 1]`` to ``[0, 1]`` (float32, CPU), what torchmetrics takes with ``normalize=True``."""
    return ((x.detach().cpu().float() + 1) / 2).clamp_(0, 1)


def _fd_metric(classifier: torch.nn.Module):
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=classifier, input_img_size=(1, 8, 8), normalize=True,
                                    reset_real_features=False)


def digit_fd(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between two sets of 8x8 digit images in ``[-1, 1]``, in the shipped
    classifier's feature space (torchmetrics' FID with that feature extractor)."""
    from .digits_classifier import load_classifier

    fd = _fd_metric(load_classifier())
    fd.update(to_unit(a), real=True)
    fd.update(to_unit(b), real=False)
    return float(fd.compute())


class DigitScores:
    """Scores of generated digits against a fixed real set.

    Args:
        real: the fixed real images, ``(n, 1, 8, 8)`` in ``[-1, 1]``.
        floor_pair: two further disjoint real sets of ``n`` images: the Fréchet distance between
            them is the floor a perfect generator still scores (NaN if not given).

    Calling it with generated images returns ``fd``, ``kid``, ``classes`` (covered),
    ``classes_total`` and ``confident`` (fraction of confidently classified samples).
    """

    def __init__(self, real: Tensor, floor_pair: Optional[Tuple[Tensor, Tensor]] = None) -> None:
        from torchmetrics.image.kid import KernelInceptionDistance

        from .digits_classifier import load_classifier

        self.classifier = load_classifier()
        n = len(real)
        self.fd = _fd_metric(self.classifier)
        with warnings.catch_warnings():  # "KID keeps all features in memory": n of 32 numbers here
            warnings.simplefilter("ignore", UserWarning)
            self.kid = KernelInceptionDistance(feature=self.classifier, subsets=20, subset_size=max(2, n // 2),
                                               normalize=True, reset_real_features=False)
        unit = to_unit(real)
        self.fd.update(unit, real=True)
        self.kid.update(unit, real=True)
        self.fd_floor = digit_fd(*floor_pair) if floor_pair is not None else math.nan

    @torch.no_grad()
    def __call__(self, fake: Tensor) -> Dict[str, float]:
        unit = to_unit(fake)
        self.fd.reset()  # keeps the real set's features (reset_real_features=False)
        self.kid.reset()
        self.fd.update(unit, real=False)
        self.kid.update(unit, real=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_KID_SEED)
            kid = float(self.kid.compute()[0])
        cov = M.class_coverage(self.classifier.logits(unit).softmax(1), CONFIDENCE)
        return {"fd": float(self.fd.compute()), "kid": kid, "classes": cov.covered, "classes_total": cov.total,
                "confident": cov.confident}


def inception_fid_status(weights: Optional[str] = None) -> Tuple[Optional[str], str]:
    """(the Inception weights file to use, or ``None``; one line saying so, or how to enable it).

    ``weights``: a path given by the user (``--inception-weights``); otherwise torch's hub cache
    (``torch.hub.get_dir()/checkpoints``) is looked in, where torch-fidelity keeps the file it
    downloads. Never downloads.
    """
    import importlib.util

    path = weights or os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_WEIGHTS_FILE)
    have_path = os.path.isfile(path)
    have_lib = importlib.util.find_spec("torch_fidelity") is not None
    if have_path and have_lib:
        return path, f"Inception FID: on ({path})"
    missing = [] if have_lib else ["pip install torch-fidelity"]
    if not have_path:
        missing.append(f"put {INCEPTION_WEIGHTS_FILE} in {os.path.dirname(path)} or pass --inception-weights PATH")
    return None, "Inception FID: off; to enable it, " + " and ".join(missing)


class InceptionFID:
    """torchmetrics' Inception FID (2048 features) of generated images against a fixed real set,
    with Inception-v3's weights read from ``weights`` (see :func:`inception_fid_status`).
    Grey images are repeated to three channels."""

    def __init__(self, real: Tensor, weights: str) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.fid = FrechetInceptionDistance(feature=2048, normalize=True, reset_real_features=False,
                                            feature_extractor_weights_path=weights)
        self.fid.update(self._rgb(real), real=True)

    @staticmethod
    def _rgb(x: Tensor) -> Tensor:
        u = to_unit(x)
        return u.expand(-1, 3, -1, -1) if u.shape[1] == 1 else u

    @torch.no_grad()
    def __call__(self, fake: Tensor) -> float:
        self.fid.reset()
        for chunk in fake.split(128):
            self.fid.update(self._rgb(chunk), real=False)
        return float(self.fid.compute())
