"""A small CNN classifier of scikit-learn's 8x8 digits: the feature space in which digit samples
are scored (Fréchet distance, class coverage), as Inception-v3's is for natural images.

Its weights (``digits_classifier.pt``, ~40 KB) ship with the package and load offline; they were
made by ``scripts/train_digits_classifier.py``, which calls :func:`train_classifier` (deterministic:
fixed split, fixed seed, one thread). Inputs are images in ``[0, 1]``,
shaped ``(N, 1, 8, 8)``, as torchmetrics passes them with ``normalize=True``.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "DigitsClassifier", "WEIGHTS_PATH", "SPLIT_SEED", "TRAIN_SEED", "digits_split", "train_classifier",
    "load_classifier", "accuracy",
]

WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_classifier.pt")
SPLIT_SEED = 0  # the fixed train / held-out split (sklearn's train_test_split, stratified, 25% held out)
TRAIN_SEED = 0


class DigitsClassifier(nn.Module):
    """Two 3x3 convolutions, a 2x2 max-pool and a 32-unit feature layer, then 10 logits.

    ``forward`` returns the 32 features (what torchmetrics' ``FrechetInceptionDistance(feature=...)``
    calls); :meth:`logits` the class scores.
    """

    num_features = 32

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * 4 * 4, self.num_features), nn.ReLU(),
        )
        self.head = nn.Linear(self.num_features, 10)

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(N, 32)`` of images ``x`` in ``[0, 1]`` (``(N, 1, 8, 8)`` or ``(N, 64)``)."""
        return self.features(x.reshape(-1, 1, 8, 8).float())

    def logits(self, x: Tensor) -> Tensor:
        """Class scores ``(N, 10)`` of images in ``[0, 1]``."""
        return self.head(self.forward(x))


def digits_split() -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train images, train labels, held-out images, held-out labels); images ``(N, 1, 8, 8)`` in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()  # bundled with scikit-learn: no download
    x = d.images.astype(np.float32) / 16.0
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.25, random_state=SPLIT_SEED, stratify=d.target)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return t(xtr).unsqueeze(1), t(ytr).long(), t(xte).unsqueeze(1), t(yte).long()


def _shifted(x: Tensor) -> Tensor:
    """``x`` and its copies moved by one pixel in each of the 4 directions (zero fill): the
    classifier then judges a generated digit drawn a pixel off centre as a digit too."""
    out = [x]
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        s = torch.roll(x, (dy, dx), dims=(2, 3))
        if dy:
            s[:, :, 0 if dy > 0 else -1, :] = 0
        if dx:
            s[:, :, :, 0 if dx > 0 else -1] = 0
        out.append(s)
    return torch.cat(out)


def _outliers(n: int, generator: torch.Generator) -> Tensor:
    """``n`` images that are no digit: uniform noise, random black-and-white pixels, flat grey."""
    kind = torch.randint(3, (n, 1, 1, 1), generator=generator)
    noise = torch.rand(n, 1, 8, 8, generator=generator)
    binary = (torch.rand(n, 1, 8, 8, generator=generator) < 0.5).float()
    flat = torch.rand(n, 1, 1, 1, generator=generator).expand(n, 1, 8, 8)
    return torch.where(kind == 0, noise, torch.where(kind == 1, binary, flat))


def train_classifier(epochs: int = 15, seed: int = TRAIN_SEED, lr: float = 3e-3, batch_size: int = 128) -> DigitsClassifier:
    """Train a :class:`DigitsClassifier` on the fixed training split, deterministically.

    Adam on the training images and their one-pixel shifts, in batches drawn from a generator
    seeded with ``seed``, on one thread: the same call gives the same weights on the same machine
    and torch. Each batch also holds half as many images that are no digit (:func:`_outliers`),
    taught to give every class 1/10 (outlier exposure, Hendrycks et al. 2019), so that noise and
    blocks are not classified confidently.
    """
    xtr, ytr, _, _ = digits_split()
    x, y = _shifted(xtr), ytr.repeat(5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            model = DigitsClassifier()
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            for _ in range(epochs):
                for idx in torch.randperm(len(x), generator=gen).split(batch_size):
                    out = model.logits(torch.cat([x[idx], _outliers(len(idx) // 2, gen)]))
                    n = len(idx)
                    loss = nn.functional.cross_entropy(out[:n], y[idx])
                    loss = loss - 0.5 * out[n:].log_softmax(1).mean()  # cross-entropy to the uniform
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


_cached: Optional[DigitsClassifier] = None


def load_classifier(path: Optional[str] = None) -> DigitsClassifier:
    """The shipped classifier (``path``: another weights file), in eval mode, gradients off.
    The shipped one is loaded once per process and shared."""
    global _cached
    if path is None and _cached is not None:
        return _cached
    model = DigitsClassifier()
    model.load_state_dict(torch.load(path or WEIGHTS_PATH, map_location="cpu", weights_only=True))
    model.eval().requires_grad_(False)
    if path is None:
        _cached = model
    return model


@torch.no_grad()
def accuracy(model: DigitsClassifier, x: Tensor, y: Tensor) -> float:
    """Fraction of ``x`` (images in [0, 1]) that ``model`` labels as ``y``."""
    return float((model.logits(x).argmax(1) == y).double().mean())
