"""Image scores: the shipped digit classifier (accuracy, determinism), the digit FD through
torchmetrics (against scipy's matrix square root, real vs real at the floor, noise far above it),
class coverage, and Inception FID's off switch (nothing downloaded)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wgan_ext import data as D
from wgan_ext import digits_classifier as DC
from wgan_ext import image_scores as S
from wgan_ext import metrics as M


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """All 1797 digits in [-1, 1], as the training data."""
    return D.make_source("digits").data


def test_shipped_classifier_is_accurate_on_the_held_out_split() -> None:
    model = DC.load_classifier()
    xtr, ytr, xte, yte = DC.digits_split()
    assert len(yte) == 450 and len(ytr) == 1347
    assert DC.accuracy(model, xte, yte) >= 0.97
    # the split is fixed: no held-out image is in the training split
    train_rows = {tuple(r) for r in xtr.reshape(len(xtr), -1).tolist()}
    assert sum(tuple(r) in train_rows for r in xte.reshape(len(xte), -1).tolist()) < 5  # sklearn's digits hold a few duplicates


def test_classifier_training_is_deterministic() -> None:
    a, b = DC.train_classifier(epochs=1), DC.train_classifier(epochs=1)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    assert DC.accuracy(a, *DC.digits_split()[2:]) > 0.8  # it learned something in one pass


@pytest.mark.slow
def test_the_script_reproduces_the_shipped_accuracy() -> None:
    model = DC.train_classifier()
    xtr, ytr, xte, yte = DC.digits_split()
    assert DC.accuracy(model, xte, yte) >= 0.97
    assert DC.accuracy(model, xte, yte) == pytest.approx(DC.accuracy(DC.load_classifier(), xte, yte), abs=0.01)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # dead ReLU features: singular covariances
def test_fd_is_the_frechet_distance_of_the_classifier_features(digits) -> None:
    """torchmetrics' FD equals ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)), computed here from
    the same features with scipy's matrix square root."""
    from scipy.linalg import sqrtm

    a, b = digits[:600], digits[600:1200]
    feats = [DC.load_classifier()(S.to_unit(x)).double().numpy() for x in (a, b)]
    mu = [f.mean(0) for f in feats]
    cov = [np.cov(f, rowvar=False) for f in feats]
    expected = ((mu[0] - mu[1]) ** 2).sum() + np.trace(cov[0] + cov[1] - 2 * sqrtm(cov[0] @ cov[1]).real)
    assert S.digit_fd(a, b) == pytest.approx(expected, rel=1e-3, abs=1e-3)


def test_real_digits_score_near_the_floor_and_noise_far_above(digits) -> None:
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(digits), generator=g)
    real, other, third = digits[perm[:512]], digits[perm[512:1024]], digits[perm[1024:1536]]
    scores = S.DigitScores(real, (other, third))
    assert 0 < scores.fd_floor < 10
    same = scores(other)
    assert same["fd"] < 2 * scores.fd_floor
    assert same["classes"] == 10 and same["confident"] > 0.85
    noise = scores(torch.rand(512, 1, 8, 8, generator=g) * 2 - 1)
    assert noise["fd"] > 50 * scores.fd_floor and noise["kid"] > 100 * max(same["kid"], 1.0)
    assert noise["classes"] == 0 and noise["confident"] < 0.05
    # evaluating draws nothing from the global RNG (KID's subsets come from their own seed)
    state = torch.get_rng_state()
    assert scores(other) == same
    assert torch.equal(state, torch.get_rng_state())


def test_a_one_class_sample_covers_one_class(digits) -> None:
    labels = torch.from_numpy(__import__("sklearn.datasets", fromlist=["load_digits"]).load_digits().target)
    sevens = digits[labels == 7]
    scores = S.DigitScores(digits[:512])
    row = scores(sevens.repeat(3, 1, 1, 1)[:512])
    assert row["classes"] == 1 and row["classes_total"] == 10
    assert row["fd"] > 20 * S.digit_fd(digits[:512], digits[512:1024])


def test_class_coverage_counts_confident_samples() -> None:
    probs = torch.full((40, 4), 0.02)
    probs[:20, 0] = 0.94  # 20 confident class-0 samples
    probs[20:30, 1] = 0.94  # 10 confident class-1 samples
    probs[30:32, 2] = 0.94  # 2 confident class-2 samples: fewer than ceil(40 / 16) = 3
    probs[32:, 3] = 0.5  # 8 unsure
    cov = M.class_coverage(probs, threshold=0.9)
    assert (cov.covered, cov.total, cov.counts) == (2, 4, (20, 10, 2, 0))
    assert cov.confident == pytest.approx(32 / 40)
    assert M.class_coverage(probs, threshold=0.9, min_count=1).covered == 3
    with pytest.raises(ValueError, match="threshold"):
        M.class_coverage(probs, threshold=0)


def test_inception_fid_is_off_without_its_weights_and_never_downloads(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("download attempted"))
    weights, note = S.inception_fid_status()
    assert weights is None and note.count("\n") == 0
    assert S.INCEPTION_WEIGHTS_FILE in note and "--inception-weights" in note and str(tmp_path) in note
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / S.INCEPTION_WEIGHTS_FILE).write_bytes(b"")
    weights, note = S.inception_fid_status()
    has_fidelity = __import__("importlib").util.find_spec("torch_fidelity") is not None
    assert (weights is not None) == has_fidelity
    assert has_fidelity or "pip install torch-fidelity" in note


def test_fd_of_identical_sets_is_zero(digits) -> None:
    assert abs(S.digit_fd(digits[:300], digits[:300])) < 1e-3
    assert math.isfinite(S.digit_fd(digits[:300], digits[300:600]))
