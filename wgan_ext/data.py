"""Training data that needs no download, served as a resumable stream of batches.

Two kinds of source:

* **2-D toys generated in code** (``8gaussians``, ``25gaussians``, ``swissroll``), as in the
  WGAN-GP toy code (Gulrajani et al. 2017): an endless supply, so every batch is fresh.
* **Finite image sets**: scikit-learn's bundled 8x8 handwritten ``digits`` (1797 real images,
  shipped inside scikit-learn), or files the user already has: ``mnist`` / ``cifar10`` through
  torchvision with ``download=False``, or any ``folder`` of images.

Everything reaches the torchgan ``Trainer`` through :class:`BatchStream`. Batch ``i`` of the
stream is a pure function of ``(seed, i)``, so a run stopped after any batch resumes with exactly
the batches the uninterrupted run would have seen: the only data state to checkpoint is the
integer :attr:`BatchStream.position`. Images are scaled to ``[-1, 1]`` (the generator's ``tanh``
range); points are left in their natural units so exact W1 is in the units of the plot axes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import torch

__all__ = [
    "TOY_DATASETS",
    "IMAGE_DATASETS",
    "DATASETS",
    "DataError",
    "DataSource",
    "ToySource",
    "TensorSource",
    "DatasetSource",
    "BatchStream",
    "make_source",
    "toy_sample",
    "toy_modes",
    "toy_mode_std",
    "eval_real",
    "ImageFiles",
]

TOY_DATASETS = ("8gaussians", "25gaussians", "swissroll")
IMAGE_DATASETS = ("digits", "mnist", "cifar10", "folder")
DATASETS = TOY_DATASETS + IMAGE_DATASETS

# The WGAN-GP toy code divides every point by these after placing the modes, so both mixtures
# fit in roughly [-2, 2]^2.
_SCALE_8 = 1.414
_SCALE_25 = 2.828
_STD_8 = 0.02
_STD_25 = 0.05

# Tags mixed into seeds so the data streams never share random numbers with each other.
_TAG_TOY = 0x70D5
_TAG_PERM = 0x9E41


class DataError(ValueError):
    """A dataset that cannot be used: unknown name, missing or unreadable files."""


def _mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from integers (``SeedSequence`` hashes, so nearby inputs differ)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


# ----------------------------------------------------------------------------- 2-D toys


def toy_modes(name: str) -> Optional[torch.Tensor]:
    """Centres of the mixture ``name`` (``(K, 2)``, in data units), or ``None`` for the swiss roll."""
    if name == "8gaussians":
        s = 1.0 / math.sqrt(2.0)
        c = torch.tensor(
            [(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)],
            dtype=torch.float64,
        )
        return (2.0 * c / _SCALE_8).float()
    if name == "25gaussians":
        g = torch.arange(-2, 3, dtype=torch.float64)
        c = torch.cartesian_prod(g, g) * 2.0
        return (c / _SCALE_25).float()
    if name == "swissroll":
        return None
    raise DataError(f"unknown toy dataset {name!r}; choose one of {', '.join(TOY_DATASETS)}")


def toy_mode_std(name: str) -> Optional[float]:
    """Per-coordinate standard deviation of each mixture component, in data units."""
    if name == "8gaussians":
        return _STD_8 / _SCALE_8
    if name == "25gaussians":
        return _STD_25 / _SCALE_25
    if name == "swissroll":
        return None
    raise DataError(f"unknown toy dataset {name!r}; choose one of {', '.join(TOY_DATASETS)}")


def toy_sample(name: str, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Draw ``n`` points (``float32``, ``(n, 2)``) from the toy distribution ``name``.

    8 gaussians: centres on a circle of radius 2, std 0.02, all divided by 1.414.
    25 gaussians: centres on the grid ``{-4,-2,0,2,4}^2``, std 0.05, divided by 2.828.
    Swiss roll: scikit-learn's ``make_swiss_roll`` (noise 0.25), coordinates (x, z) / 7.5.
    All three follow the WGAN-GP toy code.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if name in ("8gaussians", "25gaussians"):
        centres = toy_modes(name).double()
        # Undo the final scaling so noise is added in the original units, as the reference code does.
        scale = _SCALE_8 if name == "8gaussians" else _SCALE_25
        std = _STD_8 if name == "8gaussians" else _STD_25
        idx = torch.randint(len(centres), (n,), generator=generator)
        pts = torch.randn(n, 2, generator=generator, dtype=torch.float64) * std + centres[idx] * scale
        return (pts / scale).float()
    if name == "swissroll":
        # Same formula as sklearn.datasets.make_swiss_roll, drawn from a torch generator so the
        # stream stays a function of the seed alone.
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator, dtype=torch.float64))
        x = t * torch.cos(t)
        z = t * torch.sin(t)
        pts = torch.stack([x, z], dim=1) + 0.25 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return (pts / 7.5).float()
    raise DataError(f"unknown toy dataset {name!r}; choose one of {', '.join(TOY_DATASETS)}")


# ----------------------------------------------------------------------------- sources


class DataSource:
    """Where batches come from. Subclasses implement :meth:`batch`.

    Attributes:
        name: dataset name as given on the command line.
        kind: ``"points"`` (2-D toys) or ``"images"``.
        shape: shape of one sample, e.g. ``(2,)`` or ``(1, 8, 8)``.
        length: number of distinct samples, or ``None`` for an endless generator.
    """

    name: str
    kind: str
    shape: tuple
    length: Optional[int]

    def batch(self, index: int, batch_size: int, seed: int) -> torch.Tensor:
        """Batch number ``index`` of the stream for ``seed`` (a pure function of its arguments)."""
        raise NotImplementedError

    def batch_rows(self, index: int, batch_size: int, seed: int, rows: slice) -> torch.Tensor:
        """Rows ``rows`` of :meth:`batch` (one process's share of it, under torch.distributed)."""
        return self.batch(index, batch_size, seed)[rows]

    def batches_per_pass(self, batch_size: int) -> Optional[int]:
        """Full batches in one pass over a finite set (``None`` for endless sources)."""
        if self.length is None:
            return None
        return self.length // batch_size


@dataclass
class ToySource(DataSource):
    """An endless 2-D toy distribution; batch ``i`` is drawn from a generator seeded by ``(seed, i)``."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in TOY_DATASETS:
            raise DataError(f"unknown toy dataset {self.name!r}; choose one of {', '.join(TOY_DATASETS)}")
        self.kind = "points"
        self.shape = (2,)
        self.length = None

    def batch(self, index: int, batch_size: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_mix_seed(seed, _TAG_TOY, index))
        return toy_sample(self.name, batch_size, g)

    def sample(self, n: int, seed: int) -> torch.Tensor:
        """``n`` points from a stream independent of the training batches (for evaluation)."""
        return toy_sample(self.name, n, torch.Generator().manual_seed(_mix_seed(seed, 0xE7A1)))

    @property
    def modes(self) -> Optional[torch.Tensor]:
        return toy_modes(self.name)

    @property
    def mode_std(self) -> Optional[float]:
        return toy_mode_std(self.name)


class _ShuffledPasses(DataSource):
    """Finite data: pass ``p`` visits the samples in ``randperm`` seeded by ``(seed, p)``;
    the last incomplete batch of a pass is dropped so every critic step sees ``m`` samples.
    Subclasses implement :meth:`_read` (the samples at some indices), so a process reads only its rows."""

    _perm_key: Optional[tuple] = None
    _perm: Optional[torch.Tensor] = None

    def _indices(self, index: int, batch_size: int, seed: int) -> torch.Tensor:
        per_pass = self.batches_per_pass(batch_size)
        if not per_pass:
            raise DataError(
                f"dataset {self.name!r} has {self.length} samples, fewer than one batch of {batch_size}"
            )
        p, offset = divmod(index, per_pass)
        key = (seed, p)
        if self._perm_key != key:  # one permutation per pass, cached while the pass lasts
            g = torch.Generator().manual_seed(_mix_seed(seed, _TAG_PERM, p))
            self._perm = torch.randperm(self.length, generator=g)
            self._perm_key = key
        return self._perm[offset * batch_size : (offset + 1) * batch_size]

    def batch(self, index: int, batch_size: int, seed: int) -> torch.Tensor:
        return self._read(self._indices(index, batch_size, seed))

    def batch_rows(self, index: int, batch_size: int, seed: int, rows: slice) -> torch.Tensor:
        return self._read(self._indices(index, batch_size, seed)[rows])  # reads only these samples

    def _read(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TensorSource(_ShuffledPasses):
    """A finite set held in memory as one tensor (already scaled to ``[-1, 1]``)."""

    def __init__(self, name: str, data: torch.Tensor) -> None:
        self.name = name
        self.kind = "images" if data.dim() == 4 else "points"
        self.data = data.contiguous()
        self.shape = tuple(data.shape[1:])
        self.length = int(data.shape[0])

    def _read(self, indices: torch.Tensor) -> torch.Tensor:
        return self.data[indices]


class DatasetSource(_ShuffledPasses):
    """A finite ``torch.utils.data.Dataset`` read lazily (image files); item ``[0]`` is the image."""

    def __init__(self, name: str, dataset: torch.utils.data.Dataset, shape: tuple) -> None:
        self.name = name
        self.kind = "images"
        self.dataset = dataset
        self.shape = tuple(shape)
        self.length = len(dataset)  # type: ignore[arg-type]

    def _read(self, indices: torch.Tensor) -> torch.Tensor:
        items = []
        for i in indices.tolist():
            item = self.dataset[i]
            items.append(item[0] if isinstance(item, (tuple, list)) else item)
        return torch.stack(items)


# ----------------------------------------------------------------------------- image sets


def _load_digits() -> TensorSource:
    """scikit-learn's 8x8 digits (values 0..16), as ``(1797, 1, 8, 8)`` in ``[-1, 1]``."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32)  # bundled with scikit-learn: no download
    x = torch.from_numpy(images).unsqueeze(1) / 8.0 - 1.0
    return TensorSource("digits", x)


def _image_transform(image_size: int, channels: int):
    from torchvision import transforms

    ops = []
    if channels == 1:
        ops.append(transforms.Grayscale(1))
    ops += [
        transforms.Resize(image_size),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize([0.5] * channels, [0.5] * channels),  # [0, 1] -> [-1, 1]
    ]
    return transforms.Compose(ops)


def _check_dir(root: Optional[str], name: str) -> str:
    if not root:
        raise DataError(f"dataset {name!r} needs --data-dir pointing at files you already have")
    if not os.path.isdir(root):
        raise DataError(f"data folder {root!r} does not exist or is not a folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"data folder {root!r} is not readable")
    return root


class ImageFiles(torch.utils.data.Dataset):
    """Every image file under a folder (recursively, sorted by path), for ``--dataset folder``."""

    def __init__(self, root: str, transform: Callable, channels: int) -> None:
        from torchvision.datasets.folder import IMG_EXTENSIONS

        self.root = root
        self.transform = transform
        self.mode = "L" if channels == 1 else "RGB"
        files = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            for f in sorted(filenames):
                if f.lower().endswith(IMG_EXTENSIONS):
                    files.append(os.path.join(dirpath, f))
        self.files: list[str] = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        path = self.files[i]
        try:
            with Image.open(path) as im:
                im = im.convert(self.mode)
                return self.transform(im)
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # the last: a header claiming too many pixels
            raise DataError(f"cannot read image {path!r}: {e}") from None


def _load_folder(root: Optional[str], image_size: int, channels: int) -> DatasetSource:
    root = _check_dir(root, "folder")
    ds = ImageFiles(root, _image_transform(image_size, channels), channels)
    if len(ds) == 0:
        raise DataError(f"no image files found under {root!r}")
    ds[0]  # fail now, with the file's name, rather than mid-run
    return DatasetSource("folder", ds, (channels, image_size, image_size))


def _load_torchvision(name: str, root: Optional[str], image_size: int) -> DatasetSource:
    from torchvision import datasets

    root = _check_dir(root, name)
    channels = 1 if name == "mnist" else 3
    cls = datasets.MNIST if name == "mnist" else datasets.CIFAR10
    expect = "MNIST/raw/train-images-idx3-ubyte" if name == "mnist" else "cifar-10-batches-py/data_batch_1"
    try:
        # download=False always: this package never fetches data behind the user's back.
        ds = cls(root, train=True, download=False, transform=_image_transform(image_size, channels))
    except (RuntimeError, OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            f"{name} files not found or unreadable under {root!r} (expected e.g. {root}/{expect}): {msg}"
        ) from None
    try:
        ds[0]
    except Exception as e:  # a truncated file shows up here, not in the constructor
        raise DataError(f"{name} files under {root!r} are unreadable: {e}") from None
    return DatasetSource(name, ds, (channels, image_size, image_size))


def make_source(
    name: str,
    *,
    data_dir: Optional[str] = None,
    image_size: Optional[int] = None,
    channels: int = 3,
) -> DataSource:
    """Build the data source for ``--dataset name``.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: folder with the user's files (``mnist``, ``cifar10``, ``folder``).
        image_size: side length images are resized / cropped to (``mnist``, ``cifar10``,
            ``folder``; default 32). ``digits`` stay 8x8.
        channels: 1 or 3, for ``folder`` only.

    Raises:
        DataError: an unknown name, or missing / unreadable files (one-line message).
    """
    if name in TOY_DATASETS:
        return ToySource(name)
    if name == "digits":
        return _load_digits()
    size = 32 if image_size is None else int(image_size)
    if size < 4:
        raise DataError(f"image size must be >= 4, got {size}")
    if name == "folder":
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        return _load_folder(data_dir, size, channels)
    if name in ("mnist", "cifar10"):
        return _load_torchvision(name, data_dir, size)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


# ----------------------------------------------------------------------------- the stream


class BatchStream:
    """The "data loader" handed to torchgan's ``Trainer``: one real batch per critic step.

    torchgan's ``Trainer`` runs one ``train_iter`` (one critic update, plus a generator update
    every ``n_critic``-th) per batch it pulls, and one "epoch" per pass over its loader. This
    stream turns that into an iteration-based loop: iterating it yields batches until
    :attr:`stop_when` returns true (checked before each batch), so ``train.py`` ends each torchgan
    epoch after an exact number of generator iterations. Batch ``i`` is
    ``source.batch(i, batch_size, seed)`` and :attr:`position` counts batches handed out, which is
    all the data state a checkpoint needs. :attr:`global_batch` is the size of the batches drawn
    from the source (``batch_size`` here; a subclass may hand out a share of each, see :meth:`_draw`).
    """

    def __init__(self, source: DataSource, batch_size: int, seed: int, position: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        per_pass = source.batches_per_pass(batch_size)
        if per_pass == 0:
            raise DataError(
                f"dataset {source.name!r} has {source.length} samples, fewer than one batch of {batch_size}"
            )
        self.source = source
        self.batch_size = batch_size  # read by torchgan's Trainer.__call__
        self.global_batch = batch_size
        self.seed = int(seed)
        self.position = int(position)
        self.stop_when: Optional[Callable[[], bool]] = None

    def _draw(self) -> torch.Tensor:
        """Batch number :attr:`position` of the stream (what this stream hands out of it)."""
        return self.source.batch(self.position, self.batch_size, self.seed)

    def __iter__(self) -> Iterator[torch.Tensor]:
        while self.stop_when is None or not self.stop_when():
            x = self._draw()
            self.position += 1
            yield x

    def take(self, n: int) -> list[torch.Tensor]:
        """The next ``n`` batches (advances :attr:`position`); for tests and the reference loop."""
        out = []
        for _ in range(n):
            out.append(self._draw())
            self.position += 1
        return out

    @property
    def passes(self) -> Optional[float]:
        """Passes over a finite set so far (``None`` for endless toys)."""
        per_pass = self.source.batches_per_pass(self.global_batch)
        return None if per_pass is None else self.position / per_pass


def eval_real(source: DataSource, n: int, seed: int) -> torch.Tensor:
    """A fixed set of ``n`` real samples for metrics, independent of the training stream."""
    if isinstance(source, ToySource):
        return source.sample(n, seed)
    g = torch.Generator().manual_seed(_mix_seed(seed, 0xE7A2))
    idx = torch.randperm(source.length, generator=g)[: min(n, source.length)]
    if isinstance(source, TensorSource):
        return source.data[idx]
    return torch.stack([_first(source.dataset[i]) for i in idx.tolist()])  # type: ignore[attr-defined]


def _first(item: object) -> torch.Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item  # type: ignore[return-value]


