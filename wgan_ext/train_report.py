"""What a ``wgan-ext train`` run shows and writes besides its checkpoint: the progress bar or
period lines, sample plots, ``curves.png``, ``metrics.csv``, TensorBoard scalars and the summary.

Only the process that owns the run folder (rank 0) makes a :class:`Reporter`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, TextIO

import numpy as np
import torch

from . import metrics as M
from . import plots as P
from .train_config import TrainConfig
from .train_eval import PERIOD_SCORES, Evaluator

__all__ = ["PeriodStats", "Reporter", "use_bar", "summarize", "atomic_write_text", "json_safe"]


@dataclass
class PeriodStats:
    """Running sums of one logging period: the critic's Wasserstein estimate, the generator loss,
    and the :data:`PERIOD_SCORES` of the generator taken during the period."""

    w_sum: float = 0.0
    w_n: int = 0
    g_sum: float = 0.0
    g_n: int = 0
    score_sums: Dict[str, float] = field(default_factory=dict)
    score_counts: Dict[str, int] = field(default_factory=dict)

    def add_critic(self, w: float) -> None:
        self.w_sum += w
        self.w_n += 1

    def add_generator(self, loss: float) -> None:
        self.g_sum += loss
        self.g_n += 1

    def add_scores(self, scores: Dict[str, Any]) -> None:
        """Count the finite :data:`PERIOD_SCORES` of ``scores`` (a row of the evaluator's)."""
        for k in PERIOD_SCORES:
            if _finite(scores.get(k)):
                self.score_sums[k] = self.score_sums.get(k, 0.0) + float(scores[k])
                self.score_counts[k] = self.score_counts.get(k, 0) + 1

    def period_scores(self, last: Dict[str, Any]) -> Dict[str, float]:
        """``{"w1_period": ..., "fd_period": ...}``: the means of the scores counted so far and
        those of ``last`` (the period's closing evaluation); NaN where none was finite."""
        whole = PeriodStats(score_sums=dict(self.score_sums), score_counts=dict(self.score_counts))
        whole.add_scores(last)
        return {f"{k}_period": whole.score_sums[k] / whole.score_counts[k] if k in whole.score_counts else math.nan
                for k in PERIOD_SCORES}

    @property
    def critic_w(self) -> float:
        return self.w_sum / self.w_n if self.w_n else math.nan

    @property
    def gen_loss(self) -> float:
        return self.g_sum / self.g_n if self.g_n else math.nan

    def state_dict(self) -> Dict[str, Any]:
        return asdict(self)


def use_bar(progress: Optional[bool], stream: TextIO) -> bool:
    """Draw a progress bar on ``stream``? ``progress`` forces it; by default only on a terminal
    that reports a width (a pseudo-terminal of 0 columns gets the period lines, as a pipe does)."""
    if progress is not None:
        return progress
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):  # no file descriptor, or not a terminal after all
        return False


def atomic_write_text(path: str, text: str) -> None:
    with P.atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def json_safe(v: Any) -> Any:
    """``v`` with NaN/inf floats as ``None`` (JSON has neither)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _modes_text(row: Dict[str, Any]) -> str:
    return f"{int(row['modes'])}/{int(row['modes_total'])} ({100 * row['high_quality']:.0f}% within 3 std)"


class Reporter:
    """The run's output: a tqdm bar (else one line per period on ``stdout``), and per period the
    sample plot, ``curves.png``, ``metrics.csv`` and TensorBoard scalars (if installed).

    Call :meth:`open`, then :meth:`critic_update` / :meth:`generator_update` as updates happen
    and :meth:`period` at the end of each logging period, and :meth:`close` at the end.
    """

    def __init__(self, cfg: TrainConfig, out: str, evaluator: Evaluator, *, progress: Optional[bool],
                 quiet: bool, stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> None:
        self.cfg = cfg
        self.out = out
        self.evaluator = evaluator
        self.progress = progress
        self.quiet = quiet
        # Resolved now: torchgan's loop runs with sys.stdout silenced, our lines must not be.
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.recent_w: List[float] = []
        self.last_row: Optional[Dict[str, Any]] = None
        self.bar: Any = None
        self.tb: Any = None

    def open(self, done: int) -> None:
        """Start the bar at ``done`` generator iterations and open TensorBoard (if installed)."""
        if not self.quiet:
            for note in self.evaluator.notes:
                print(note, file=self.stderr, flush=True)
        if use_bar(self.progress, self.stderr):
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=self.cfg.iterations, initial=done, unit="it", desc="wgan-ext train",
                                dynamic_ncols=True, file=self.stderr)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: CSV/JSON/PNG only
            return
        # purge_step drops events a previous, interrupted process wrote past this checkpoint.
        self.tb = SummaryWriter(os.path.join(self.out, "tb"), purge_step=done or None)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()

    def critic_update(self, w: float) -> None:
        self.recent_w.append(w)
        del self.recent_w[:-50]

    def generator_update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if done % 10 == 0:
                self.bar.set_postfix_str(self._postfix(), refresh=False)

    def _postfix(self) -> str:
        w = sum(self.recent_w) / len(self.recent_w) if self.recent_w else math.nan
        s = f"W~{w:.3g}"
        last = self.last_row or {}
        if _finite(last.get("w1")):
            s += f" W1={last['w1']:.3f}"
        if _finite(last.get("modes")):
            s += f" modes={_modes_text(last)}"
        if _finite(last.get("fd")):
            s += f" FD={last['fd']:.3g} classes={int(last['classes'])}"
        return s

    def period(self, row: Dict[str, Any], history: List[Dict[str, Any]], fake: torch.Tensor,
               critic: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Write the period's files for ``row`` (the last of ``history``) and show it."""
        self.last_row = row
        self._write_files(row, history, fake, critic)
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix())
        elif not self.quiet and row["gen_iter"] > 0:
            print(self._period_line(row), file=self.stdout, flush=True)

    def diverged(self, history: List[Dict[str, Any]]) -> None:
        """The evaluation that found the run diverged: its row (NaN scores) goes to ``metrics.csv``;
        nothing is plotted."""
        _write_metrics(os.path.join(self.out, "metrics.csv"), history)

    def _period_line(self, row: Dict[str, Any]) -> str:
        s = (f"[{row['gen_iter']:>6}/{self.cfg.iterations}] critic W estimate {row['critic_w']:.4g}  "
             f"generator loss {row['gen_loss']:.4g}")
        if _finite(row["w1"]):
            s += f"  exact W1 {row['w1']:.4f}"
        if _finite(row["modes"]):
            s += f"  modes {_modes_text(row)}"
        if _finite(row["fd"]):
            s += (f"  digit FD {row['fd']:.3g} (floor {row['fd_floor']:.3g})  classes {int(row['classes'])}/"
                  f"{int(row['classes_total'])} ({100 * row['confident']:.0f}% confident)")
        if _finite(row["fid"]):
            s += f"  Inception FID {row['fid']:.4g}"
        return s

    @torch.no_grad()
    def _write_files(self, row: Dict[str, Any], history: List[Dict[str, Any]], fake: torch.Tensor,
                     critic: Callable[[torch.Tensor], torch.Tensor]) -> None:
        cfg, ev = self.cfg, self.evaluator
        step = row["gen_iter"]
        path = os.path.join(self.out, "samples", f"step_{step:06d}.png")
        if ev.toy:
            P.plot_toy(path, ev.real, fake, critic, title=f"{cfg.dataset}, {cfg.loss}, generator iteration {step}",
                       modes=ev.modes, mode_radius=ev.mode_radius)
        else:
            P.save_image_grid(path, fake[:64], nrow=8)
        P.plot_curves(os.path.join(self.out, "curves.png"), history, title=f"{cfg.dataset}, {cfg.loss}")
        _write_metrics(os.path.join(self.out, "metrics.csv"), history)
        if self.tb is not None:
            for k in ("critic_w", "gen_loss", "critic_w_eval", "w1", "modes", "high_quality", "fd", "kid", "classes",
                      "confident", "fid"):
                if _finite(row.get(k)):
                    self.tb.add_scalar(f"wgan/{k}", row[k], step)
            try:
                from PIL import Image

                with Image.open(path) as im:
                    self.tb.add_image("samples", np.asarray(im.convert("RGB")), step, dataformats="HWC")
            except OSError:
                pass
            self.tb.flush()


def _write_metrics(path: str, history: List[Dict[str, Any]]) -> None:
    buf = io.StringIO()
    # The union of the rows' keys: a run resumed from an older checkpoint has rows without new scores.
    fields = list(dict.fromkeys(k for r in history for k in r))
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in history:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def summarize(cfg: TrainConfig, history: List[Dict[str, Any]], *, generator_updates: int, critic_updates: int,
              elapsed: float, interrupted: bool, w1_floor: float) -> Dict[str, Any]:
    """The content of ``summary.json`` (JSON-safe: NaN as ``None``)."""
    col = lambda k: [r.get(k, math.nan) for r in history]  # noqa: E731
    # The critic's estimate is a mean over each period: compare it with the scores' period means
    # (rows of runs from before score_every have only the evaluation's own score).
    period = lambda k: [r.get(f"{k}_period", r.get(k, math.nan)) for r in history]  # noqa: E731
    return json_safe({
        "dataset": cfg.dataset,
        "loss": cfg.loss,
        "generator_iterations": generator_updates,
        "critic_iterations": critic_updates,
        "interrupted": interrupted,
        "world_size": cfg.world_size,
        "wall_time_s": round(elapsed, 2),
        "final": history[-1] if history else {},
        "spearman_critic_w1": M.spearman(col("critic_w"), period("w1")) if history else math.nan,
        "spearman_critic_w1_at_evaluations": M.spearman(col("critic_w"), col("w1")) if history else math.nan,
        "spearman_critic_eval_w1": M.spearman(col("critic_w_eval"), col("w1")) if history else math.nan,
        "w1_floor": w1_floor,
        # Images: the critic's estimate against the digit FD (the paper's Figures 3-4) and Inception FID.
        "spearman_critic_fd": M.spearman(col("critic_w"), period("fd")) if history else math.nan,
        "spearman_critic_fd_at_evaluations": M.spearman(col("critic_w"), col("fd")) if history else math.nan,
        "spearman_critic_fid": M.spearman(col("critic_w"), col("fid")) if history else math.nan,
        "fd_floor": history[-1].get("fd_floor", math.nan) if history else math.nan,
        "last_evaluations": _recent(history),
    })


def _recent(history: List[Dict[str, Any]], n: int = 5) -> Dict[str, Any]:
    """Scores over the last ``n`` evaluations after iteration 0: steadier than the last one alone
    (modes covered and the fraction within 3 std swing with the generator)."""
    rows = [r for r in history if r.get("gen_iter", 0) > 0][-n:]

    def finite(k: str) -> List[float]:
        return [float(r[k]) for r in rows if _finite(r.get(k))]

    mean = lambda v: sum(v) / len(v) if v else math.nan  # noqa: E731
    modes, classes = finite("modes"), finite("classes")
    return {
        "count": len(rows),
        "w1_mean": mean(finite("w1")),
        "modes_min": min(modes) if modes else math.nan,
        "modes_max": max(modes) if modes else math.nan,
        "high_quality_mean": mean(finite("high_quality")),
        "fd_mean": mean(finite("fd")),
        "classes_min": min(classes) if classes else math.nan,
        "classes_max": max(classes) if classes else math.nan,
        "confident_mean": mean(finite("confident")),
    }
