"""Data sources: toy distributions against their formulas, bundled digits, image folders, and the
resumable batch stream (batch i depends only on (seed, i))."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wgan_ext import data as D


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- 2-D toys


def test_8gaussians_modes_follow_wgan_gp_toy_code() -> None:
    modes = D.toy_modes("8gaussians").double()
    # centres on a circle of radius 2, then everything divided by 1.414
    assert torch.allclose(modes.norm(dim=1), torch.full((8,), 2 / 1.414, dtype=torch.float64), atol=1e-6)
    angles = sorted(round(math.degrees(math.atan2(y, x))) % 360 for x, y in modes.tolist())
    assert angles == list(range(0, 360, 45))


def test_8gaussians_samples_have_the_stated_std_and_balanced_modes() -> None:
    n = 40000
    x = D.toy_sample("8gaussians", n, _gen(1)).double()
    modes = D.toy_modes("8gaussians").double()
    nearest = torch.cdist(x, modes).argmin(dim=1)
    resid = x - modes[nearest]
    # std 0.02 in the unscaled units -> 0.02 / 1.414 after scaling; 40000 samples pin it to ~0.5%
    assert resid.std(dim=0).sub(0.02 / 1.414).abs().max() < 3e-4
    counts = torch.bincount(nearest, minlength=8).double()
    assert (counts / n - 1 / 8).abs().max() < 0.01  # each mode equally likely
    assert D.toy_mode_std("8gaussians") == pytest.approx(0.02 / 1.414)


def test_25gaussians_grid_and_std() -> None:
    modes = D.toy_modes("25gaussians").double()
    assert modes.shape == (25, 2)
    assert sorted(set(round(v, 6) for v in modes[:, 0].tolist())) == [round(k * 2 / 2.828, 6) for k in (-2, -1, 0, 1, 2)]
    x = D.toy_sample("25gaussians", 50000, _gen(2)).double()
    resid = x - modes[torch.cdist(x, modes).argmin(dim=1)]
    assert resid.std(dim=0).sub(0.05 / 2.828).abs().max() < 3e-4


def test_swissroll_matches_scikit_learn() -> None:
    from sklearn.datasets import make_swiss_roll

    n = 4000
    ours = D.toy_sample("swissroll", n, _gen(3)).double().numpy()
    ref = make_swiss_roll(n, noise=0.25, random_state=3)[0][:, [0, 2]] / 7.5
    # same distribution: radius quantiles agree (an independent implementation of the formula)
    qs = np.linspace(0.05, 0.95, 19)
    r_ours = np.quantile(np.linalg.norm(ours, axis=1), qs)
    r_ref = np.quantile(np.linalg.norm(ref, axis=1), qs)
    assert np.abs(r_ours - r_ref).max() < 0.05
    assert D.toy_modes("swissroll") is None


def test_unknown_toy_name() -> None:
    with pytest.raises(D.DataError, match="unknown"):
        D.toy_sample("9gaussians", 4)
    with pytest.raises(D.DataError, match="unknown dataset"):
        D.make_source("imagenet")


# ----------------------------------------------------------------------------- the stream


def test_stream_batch_depends_only_on_seed_and_index() -> None:
    src = D.make_source("8gaussians")
    a = D.BatchStream(src, 16, seed=5).take(10)
    b = D.BatchStream(src, 16, seed=5, position=7).take(3)
    for x, y in zip(a[7:], b):
        assert torch.equal(x, y)
    c = D.BatchStream(src, 16, seed=6).take(1)
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])


def test_stream_stops_when_told_and_counts_position() -> None:
    src = D.make_source("swissroll")
    s = D.BatchStream(src, 4, seed=0)
    s.stop_when = lambda: s.position >= 3
    assert len(list(s)) == 3 and s.position == 3
    assert list(s) == []  # still stopped


def test_finite_source_passes_are_permutations() -> None:
    n, m = 103, 10
    src = D.TensorSource("ids", torch.arange(n, dtype=torch.float32).unsqueeze(1))
    s = D.BatchStream(src, m, seed=1)
    per_pass = n // m
    first = torch.cat(s.take(per_pass)).long().view(-1)
    second = torch.cat(s.take(per_pass)).long().view(-1)
    for p in (first, second):
        assert len(set(p.tolist())) == per_pass * m  # no sample twice in a pass, last partial batch dropped
    assert not torch.equal(first, second)  # a fresh shuffle each pass
    assert s.passes == pytest.approx(2.0)
    # resuming mid-pass gives the same batches
    again = D.BatchStream(src, m, seed=1, position=per_pass + 4).take(1)[0].long().view(-1)
    assert torch.equal(again, second[4 * m : 5 * m])


def test_too_few_samples_for_one_batch() -> None:
    src = D.TensorSource("tiny", torch.zeros(5, 2))
    with pytest.raises(D.DataError, match="fewer than one batch"):
        D.BatchStream(src, 8, seed=0)


# ----------------------------------------------------------------------------- image data


def test_digits_are_scikit_learns_scaled_to_minus_one_one() -> None:
    from sklearn.datasets import load_digits

    src = D.make_source("digits")
    assert src.kind == "images" and src.shape == (1, 8, 8) and src.length == 1797
    ref = torch.from_numpy(load_digits().images).float()
    assert torch.allclose(src.data[:, 0], ref / 8 - 1)
    assert src.data.min() == -1 and src.data.max() == 1


def _write_images(folder, colours, size=(12, 10)):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, col in enumerate(colours):
        Image.new("RGB", size, col).save(folder / f"img{i}.png")


def test_image_folder_loads_recursively_and_scales(tmp_path) -> None:
    _write_images(tmp_path / "a", [(255, 255, 255), (0, 0, 0)])
    _write_images(tmp_path / "b" / "deeper", [(255, 0, 0)])
    (tmp_path / "notes.txt").write_text("not an image")
    src = D.make_source("folder", data_dir=str(tmp_path), image_size=8, channels=3)
    assert src.length == 3 and src.shape == (3, 8, 8)
    items = [src.dataset[i] for i in range(3)]
    assert torch.all(items[0] == 1.0)  # white -> +1
    assert torch.all(items[1] == -1.0)  # black -> -1
    assert torch.allclose(items[2][:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))  # red
    grey = D.make_source("folder", data_dir=str(tmp_path), image_size=8, channels=1)
    assert grey.shape == (1, 8, 8) and grey.dataset[0].shape == (1, 8, 8)


def test_image_folder_errors(tmp_path) -> None:
    with pytest.raises(D.DataError, match="does not exist"):
        D.make_source("folder", data_dir=str(tmp_path / "missing"))
    with pytest.raises(D.DataError, match="needs --data-dir"):
        D.make_source("folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.DataError, match="no image files"):
        D.make_source("folder", data_dir=str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(D.DataError, match="broken.png"):
        D.make_source("folder", data_dir=str(bad))


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_torchvision_sets_never_download(tmp_path, name) -> None:
    with pytest.raises(D.DataError, match="not found"):
        D.make_source(name, data_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing fetched or created


def test_eval_real_is_fixed_and_separate_from_training_stream() -> None:
    src = D.make_source("8gaussians")
    a, b = D.eval_real(src, 64, 0), D.eval_real(src, 64, 0)
    assert torch.equal(a, b)
    assert not torch.equal(a[:16], D.BatchStream(src, 16, 0).take(1)[0])
    digits = D.make_source("digits")
    e = D.eval_real(digits, 100, 0)
    assert e.shape == (100, 1, 8, 8)
