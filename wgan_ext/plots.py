"""PNG figures for a run: 2-D scatter over the critic's contour, image grids, training curves.

Every figure is written to a temporary file beside its target and moved into place with
``os.replace``, so an interrupted run never leaves a half-written PNG over a good one.
matplotlib runs on the non-interactive ``Agg`` backend (no display needed).
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Callable, List, Mapping, Optional, Sequence

import torch

__all__ = ["atomic_path", "plot_toy", "save_image_grid", "plot_curves"]


class atomic_path:
    """Context manager yielding a temp path in the target's folder; on success it replaces the target.

    >>> with atomic_path("out.png") as tmp:   # doctest: +SKIP
    ...     fig.savefig(tmp)
    """

    def __init__(self, path: str, suffix: str = "") -> None:
        self.path = os.fspath(path)
        self.suffix = suffix or os.path.splitext(self.path)[1]
        self.tmp: Optional[str] = None

    def __enter__(self) -> str:
        d = os.path.dirname(os.path.abspath(self.path))
        fd, self.tmp = tempfile.mkstemp(prefix=".tmp-", suffix=self.suffix, dir=d)
        os.close(fd)
        # mkstemp makes the file private (0600); give it the mode a plain open() would have.
        os.chmod(self.tmp, 0o666 & ~_umask())
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is None:
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.unlink(self.tmp)


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_toy(
    path: str,
    real: torch.Tensor,
    fake: torch.Tensor,
    critic: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    *,
    title: str = "",
    lim: float = 2.0,
    modes: Optional[torch.Tensor] = None,
    mode_radius: Optional[float] = None,
) -> None:
    """Scatter real (``(n, 2)``) and generated points over the critic's contour; save a PNG.

    ``modes`` / ``mode_radius`` draw a circle around each mode of a mixture (the region in which a
    generated point counts towards covering that mode).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=80)
    try:
        if critic is not None:
            n = 121
            g = torch.linspace(-lim, lim, n)
            xx, yy = torch.meshgrid(g, g, indexing="xy")
            grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
            with torch.no_grad():
                zz = critic(grid).reshape(n, n).double()
            # The clipped critic's values are tiny (|f| ~ 1e-3); standardise so the colours show shape.
            zz = (zz - zz.mean()) / (zz.std() + 1e-30)
            cs = ax.contourf(xx.numpy(), yy.numpy(), zz.numpy(), levels=20, cmap="coolwarm", alpha=0.55)
            cbar = fig.colorbar(cs, ax=ax, fraction=0.046, pad=0.04)
            cbar.set_label("critic f(x), standardised (high = looks real)")
        r, f = real.detach().cpu(), fake.detach().cpu()
        ax.scatter(r[:, 0], r[:, 1], s=10, c="tab:orange", label="real", alpha=0.8, linewidths=0)
        ax.scatter(f[:, 0], f[:, 1], s=5, c="tab:green", label="generated", alpha=0.7, linewidths=0)
        if modes is not None and mode_radius is not None:
            # The circles are the "covered" test of wgan_ext.metrics.mode_coverage.
            from matplotlib.patches import Circle

            for i, (mx, my) in enumerate(modes.tolist()):
                ax.add_patch(Circle((mx, my), mode_radius, fill=False, ec="k", lw=0.6,
                                    label="mode radius" if i == 0 else None))
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=7, markerscale=2)
        if title:
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def save_image_grid(path: str, images: torch.Tensor, nrow: int = 8) -> None:
    """Save a grid of images in ``[-1, 1]`` (``(n, c, h, w)``) as a PNG.

    Small images (8x8 digits) are upscaled with nearest-neighbour so the grid is viewable.
    """
    import torchvision.utils as vutils

    x = images.detach().cpu().float().clamp(-1, 1)
    scale = max(1, 32 // x.shape[-1])
    if scale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    grid = vutils.make_grid(x, nrow=nrow, normalize=True, value_range=(-1, 1), padding=2, pad_value=1.0)
    with atomic_path(path) as tmp:
        vutils.save_image(grid, tmp, format="png")


def plot_curves(path: str, rows: Sequence[Mapping[str, float]], *, title: str = "") -> List[str]:
    """Training curves against generator iterations: the critic's W estimate (log scale: its
    trend spans decades), the generator loss and, when the rows have them, exact W1 (with its
    sample floor and its means over the periods), modes covered with the fraction of samples
    within 3 std of a mode, the digit FD (with its floor and period means) and KID, classes
    covered with the fraction of confident samples, and Inception FID. Returns the panels
    drawn, top to bottom."""
    plt = _pyplot()
    its = [r["gen_iter"] for r in rows]

    def col(k: str) -> list[float]:
        return [float(r.get(k, math.nan)) if r.get(k) not in (None, "") else math.nan for r in rows]

    def has(k: str) -> bool:
        return any(math.isfinite(v) for v in col(k))

    optional = ("w1", "modes", "fd", "classes", "fid")
    panels = ["critic", "generator"] + [k for k in optional if has(k)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 2.2 * len(panels)), dpi=80, sharex=True)
    try:
        ax = axes[0]
        # Iteration 0 is left out here: the untrained critic is not clipped yet, so its estimate
        # (~1e-2) is on another scale than the clipped critic's (~1e-4 ... 1e-5).
        trained = [i for i, it in enumerate(its) if it > 0]
        t_its = [its[i] for i in trained]
        w, w_eval = ([col(k)[i] for i in trained] for k in ("critic_w", "critic_w_eval"))
        estimates = w + w_eval
        ax.plot(t_its, w, label="critic estimate, training batches", color="tab:blue")
        if any(math.isfinite(v) for v in w_eval):
            ax.plot(t_its, w_eval, label="critic estimate, fixed eval set", color="tab:cyan", ls="--")
        finite = [v for v in estimates if math.isfinite(v)]
        if finite and min(finite) > 0:
            ax.set_yscale("log")
        elif finite:  # an estimate <= 0 cannot go on a log axis; symlog keeps the decades readable
            small = min((abs(v) for v in finite if v != 0), default=1.0)
            ax.set_yscale("symlog", linthresh=small)
        ax.set_ylabel("E f(real) - E f(fake)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
        ax = axes[1]
        ax.plot(its, col("gen_loss"), color="tab:red", label="generator loss -E f(G(z))")
        ax.set_ylabel("generator loss")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        if "w1" in panels:
            ax = axes[panels.index("w1")]
            ax.plot(its, col("w1"), color="k", label="exact W1(generated, real)")
            _plot_period_mean(ax, its, col, "w1", "exact W1")
            floor = col("w1_floor")
            if any(math.isfinite(v) for v in floor):
                ax.axhline(floor[-1], color="gray", ls=":", label="W1 floor (real vs real)")
            ax.set_ylabel("exact W1")
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        if "modes" in panels:
            _plot_coverage(axes[panels.index("modes")], its, col, "modes", "modes covered",
                           "high_quality", "% of samples within 3 std of a mode", "% within 3 std")
        if "fd" in panels:
            _plot_fd(axes[panels.index("fd")], its, col)
        if "classes" in panels:
            _plot_coverage(axes[panels.index("classes")], its, col, "classes", "digit classes covered",
                           "confident", "% of samples classified confidently", "% confident")
        if "fid" in panels:
            ax = axes[panels.index("fid")]
            ax.plot(its, col("fid"), color="k", label="Inception FID(generated, real)")
            ax.set_ylabel("Inception FID")
            ax.set_yscale("log")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3, which="both")
        axes[-1].set_xlabel("generator iterations")
        if title:
            axes[0].set_title(title, fontsize=9)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return panels


def _plot_coverage(ax, its: Sequence[float], col: Callable[[str], List[float]], key: str, label: str,
                   frac: str, frac_label: str, frac_axis: str) -> None:
    """How many of ``key``'s groups (modes, digit classes) are covered, as steps against the
    ``{key}_total`` ceiling, and the fraction ``frac`` of samples in % on a second axis."""
    ax.step(its, col(key), color="tab:purple", where="post", label=label)
    ax.set_ylabel(label.replace("digit ", ""), color="tab:purple")
    ax.set_ylim(0, max(v for v in col(f"{key}_total") + [1.0] if math.isfinite(v)) + 0.5)
    ax2 = ax.twinx()
    ax2.plot(its, [100 * v for v in col(frac)], color="tab:green", marker=".", label=frac_label)
    ax2.set_ylabel(frac_axis, color="tab:green")
    ax2.set_ylim(0, 100)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)


def _plot_period_mean(ax, its: Sequence[float], col: Callable[[str], List[float]], key: str, name: str) -> None:
    """The score's mean over each period (``<key>_period``), when scored between evaluations."""
    mean, at = col(f"{key}_period"), col(key)
    if any(math.isfinite(m) and m != a for m, a in zip(mean, at)):
        ax.plot(its, mean, color="tab:green", lw=2, alpha=0.8, label=f"{name}, mean over the period")


def _plot_fd(ax, its: Sequence[float], col: Callable[[str], List[float]]) -> None:
    """The digit FD (log scale: it falls by decades) with its real-vs-real floor, and KID."""
    ax.plot(its, col("fd"), color="k", label="digit FD(generated, real)")
    _plot_period_mean(ax, its, col, "fd", "digit FD")
    floor = [v for v in col("fd_floor") if math.isfinite(v)]
    if floor:
        ax.axhline(floor[-1], color="gray", ls=":", label="FD floor (real vs real)")
    ax.set_ylabel("digit FD (classifier features)")
    ax.set_yscale("log")
    kid = col("kid")
    if any(math.isfinite(v) and v > 0 for v in kid):
        ax2 = ax.twinx()
        ax2.plot(its, [v if v > 0 else math.nan for v in kid], color="tab:orange", ls="--", label="KID")
        ax2.set_ylabel("KID", color="tab:orange")
        ax2.set_yscale("log")
        h2, l2 = ax2.get_legend_handles_labels()
    else:
        h2, l2 = [], []
    h1, l1 = ax.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7)
    ax.grid(alpha=0.3, which="both")
