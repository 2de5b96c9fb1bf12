"""``wgan-ext train``: :func:`run` trains a WGAN through a stock torchgan Trainer and keeps a run folder.

The training loop is torchgan's own ``Trainer.train``; this module feeds it and watches it:

* **Iterations, not epochs.** torchgan runs one ``train_iter`` per batch it pulls and calls an
  "epoch" one pass over its loader. Here the loader is a :class:`wgan_ext.data.BatchStream`
  that ends each torchgan epoch after exactly ``log_every`` *generator* iterations, so one
  torchgan epoch = one logging period. ``--iterations`` counts generator iterations (Algorithm 1's
  outer loop), each preceded by ``n_critic`` critic updates on fresh real batches; for the 2-D toys
  every batch is newly generated (an endless dataset), for finite data the stream makes
  shuffled passes (``--epochs E`` is converted to ``E * batches_per_pass / n_critic``
  generator iterations).
* **The parts**, one module each: settings (:mod:`wgan_ext.train_config`), building networks,
  optimizers, losses and the Trainer (:mod:`wgan_ext.train_setup`), scoring
  (:mod:`wgan_ext.train_eval`), what is shown and written (:mod:`wgan_ext.train_report`) and
  the checkpoint (:mod:`wgan_ext.train_checkpoint`). Here: the run folder, and :class:`_Run`,
  which drives the periods, counts updates, handles Ctrl-C and writes the checkpoint.
* **Checkpoints** (``checkpoint.pt``) are written atomically at the end of every period and when
  the run is interrupted (Ctrl-C stops at the next batch boundary, after saving). Evaluation
  draws from its own generators, never the training RNG, so on CPU a resumed run ends with the
  same parameters, bit for bit, as the uninterrupted one (same machine, same thread count).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import random
import signal
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from . import data as D
from .train_checkpoint import (
    CHECKPOINT_NAME,
    checkpoint_payload,
    generator_updates,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
)
from .train_config import LOSSES, OPTIMIZERS, SCHEDULES, TOY_DEFAULTS, TrainConfig, TrainError, resolve_config
from .train_eval import Evaluator
from .train_report import PeriodStats, Reporter, atomic_write_text, json_safe, summarize
from .train_setup import TrainerHooks, build_losses, build_network, build_trainer

__all__ = [
    "TrainConfig", "TrainError", "RunResult", "LOSSES", "OPTIMIZERS", "SCHEDULES", "TOY_DEFAULTS",
    "CHECKPOINT_NAME", "resolve_config", "run", "load_checkpoint", "save_checkpoint", "find_resume_dir",
]

# Settings that change what is trained; a resumed run must keep them.
_FIXED_ON_RESUME = (
    "dataset", "data_dir", "image_size", "channels", "loss", "c", "n_critic", "schedule", "lr",
    "optimizer", "batch_size", "seed", "arch", "hidden", "n_hidden", "encoding_dims", "gp_lambda",
    "eval_samples", "log_every",
)
# Settings a resumed run may change.
_CHANGEABLE_ON_RESUME = ("iterations", "epochs", "device", "threads")


@dataclass
class RunResult:
    """What :func:`run` returns.

    Attributes:
        out: the run folder.
        summary: the content of ``summary.json``; with ``nothing_to_do`` only
            ``generator_iterations`` (done) and ``iterations`` (asked for).
        interrupted: stopped by Ctrl-C (a checkpoint was written).
        nothing_to_do: a resumed run had already done the iterations asked for; nothing was written.
    """

    out: str
    summary: Dict[str, Any]
    interrupted: bool = False
    nothing_to_do: bool = False


# ----------------------------------------------------------------------------- run folder


def _prepare_out(out: str) -> str:
    """Create ``out`` if needed and prove it is writable; never deletes anything."""
    existing = out
    while not os.path.exists(existing) and os.path.dirname(existing) not in ("", existing):
        existing = os.path.dirname(existing)
    if os.path.exists(existing) and not os.path.isdir(existing):
        if existing == out:
            raise TrainError(f"output folder {out!r} exists and is not a folder")
        raise TrainError(f"output folder {out!r} cannot be created: {existing!r} is not a folder")
    try:
        os.makedirs(os.path.join(out, "samples"), exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise TrainError(f"output folder {out!r} is not writable: {e.strerror or e}") from None
    return out


def _default_out(cfg: TrainConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join("runs", f"{cfg.dataset}-{cfg.loss}-{stamp}")
    out, k = base, 1
    while os.path.exists(out):
        k += 1
        out = f"{base}-{k}"
    return out


def find_resume_dir(path: Optional[str], out: Optional[str]) -> str:
    """The run folder to resume: ``path`` (a run folder or its checkpoint file), else ``out``,
    else the most recently written run under ``./runs`` that has a checkpoint."""
    for candidate in (path, out):
        if candidate:
            if os.path.isfile(candidate):
                return os.path.dirname(os.path.abspath(candidate))
            if not os.path.isdir(candidate):
                raise TrainError(f"nothing to resume: {candidate!r} does not exist")
            return candidate
    runs = []
    if os.path.isdir("runs"):
        for name in os.listdir("runs"):
            ck = os.path.join("runs", name, CHECKPOINT_NAME)
            if os.path.isfile(ck):
                runs.append((os.path.getmtime(ck), os.path.join("runs", name)))
    if not runs:
        raise TrainError("nothing to resume: no run with a checkpoint under ./runs (pass --out RUN_DIR)")
    return max(runs)[1]


def _resumed_config(ck: Dict[str, Any], out: str, explicit: Dict[str, Any]) -> TrainConfig:
    """The checkpoint's config, with the settings a resumed run may change taken from ``explicit``."""
    saved = TrainConfig(**{k: v for k, v in ck["config"].items() if k in TrainConfig.__dataclass_fields__})
    for k, v in explicit.items():
        if k in _FIXED_ON_RESUME and v is not None and v != getattr(saved, k):
            raise TrainError(
                f"--{k.replace('_', '-')} {v} differs from the checkpoint's {getattr(saved, k)}; a resumed run "
                "keeps its settings (only --iterations/--epochs, --device and --threads may change)"
            )
    cfg = dataclasses.replace(saved, out=out)
    for k in _CHANGEABLE_ON_RESUME:
        if explicit.get(k) is not None:
            setattr(cfg, k, explicit[k])
    if explicit.get("iterations") is not None:
        cfg.epochs = None
    return cfg


# ----------------------------------------------------------------------------- the run


class _Interrupted(Exception):
    """Raised from inside torchgan's loop once the checkpoint of an interrupted run is written."""


class _Run:
    """One run: the objects it trains, its logging periods, Ctrl-C, and its checkpoint.

    torchgan's Trainer calls :meth:`after_batch` after every batch and :meth:`end_period` at the
    end of every logging period (through :class:`~wgan_ext.train_setup.TrainerHooks`).
    """

    def __init__(self, cfg: TrainConfig, source: D.DataSource, out: str, *, progress: Optional[bool],
                 quiet: bool, on_batch: Optional[Callable[["_Run"], None]]) -> None:
        self.cfg = cfg
        self.out = out
        self.on_batch = on_batch
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        self.critic_loss, self.gen_loss = build_losses(cfg)
        network = build_network(cfg, source)
        self.n_periods = math.ceil(cfg.iterations / cfg.log_every)
        losses = [self.critic_loss, self.gen_loss]
        self.trainer = build_trainer(cfg, network, losses, out, self.n_periods)
        self.trainer.logger = TrainerHooks([type(l).__name__ for l in losses], self.after_batch, self.end_period)
        self.stream = D.BatchStream(source, cfg.batch_size, cfg.seed)
        self.stream.stop_when = self._period_done
        self.evaluator = Evaluator(source, cfg.eval_samples, cfg.seed, cfg.encoding_dims, torch.device(cfg.device))
        self.reporter = Reporter(cfg, out, self.evaluator, progress=progress, quiet=quiet)
        self.history: List[Dict[str, Any]] = []
        self.stats = PeriodStats()
        self.next_period = 0
        self.elapsed = 0.0
        self.interrupt_requested = False
        self._seen = (0, 0)  # (critic, generator) updates already reported
        self._t0 = time.perf_counter()

    @property
    def gen_updates(self) -> int:
        return self.critic_loss.generator_updates

    def _period_done(self) -> bool:
        # An interrupt is handled after the next batch (after_batch), never by ending a period
        # early: an empty period would log a duplicate row.
        target = min((self.next_period + 1) * self.cfg.log_every, self.cfg.iterations)
        return self.gen_updates >= target

    def _clock(self) -> None:
        now = time.perf_counter()
        self.elapsed += now - self._t0
        self._t0 = now

    # -- called by torchgan's loop ------------------------------------------------------------
    def after_batch(self) -> None:
        critic_n, gen_n = self.critic_loss.critic_updates, self.gen_loss.generator_updates
        if critic_n != self._seen[0] and self.critic_loss.last_wasserstein is not None:
            self.stats.add_critic(self.critic_loss.last_wasserstein)
            self.reporter.critic_update(self.critic_loss.last_wasserstein)
        if gen_n != self._seen[1]:
            self.stats.add_generator(self.gen_loss.last_value)
            self.reporter.generator_update(self.gen_updates)
        self._seen = (critic_n, gen_n)
        if self.on_batch is not None:
            self.on_batch(self)
        if self.interrupt_requested:
            self._clock()
            self.write_checkpoint()
            raise _Interrupted()

    def end_period(self, epoch: int) -> None:
        self._clock()
        row: Dict[str, Any] = {
            "gen_iter": self.gen_updates,
            "critic_iter": self.critic_loss.critic_updates,
            "batches": self.stream.position,
            "critic_w": self.stats.critic_w,
            "gen_loss": self.stats.gen_loss,
        }
        self._evaluate(row)
        self.stats = PeriodStats()
        self.next_period = epoch + 1
        self.write_checkpoint()
        self._clock()  # evaluation, plots and the checkpoint count as run time too

    def _evaluate(self, row: Dict[str, Any]) -> None:
        """Score the generator, append ``row`` to the history and report it."""
        scores, fake = self.evaluator(self.trainer.generator, self.trainer.discriminator)
        row.update(scores)
        row["time_s"] = round(self.elapsed, 3)
        self.history.append(row)
        C, device = self.trainer.discriminator, torch.device(self.cfg.device)
        self.reporter.period(row, self.history, fake, lambda x: C(x.to(device)).cpu())

    # -- checkpoint ---------------------------------------------------------------------------
    def write_checkpoint(self) -> None:
        loop = {"stream_position": self.stream.position, "next_period": self.next_period,
                "period_stats": self.stats.state_dict(), "history": [dict(r) for r in self.history],
                "elapsed": self.elapsed}
        payload = checkpoint_payload(self.cfg.to_dict(), self.trainer, self.critic_loss, self.gen_loss, loop)
        save_checkpoint(os.path.join(self.out, CHECKPOINT_NAME), payload)

    def restore(self, ck: Dict[str, Any]) -> None:
        restore_training_state(ck, self.trainer, self.critic_loss, self.gen_loss)
        loop = ck["loop"]
        self.stream.position = int(loop["stream_position"])
        self.next_period = int(loop["next_period"])
        self.stats = PeriodStats(**loop["period_stats"])
        self.history = [dict(r) for r in loop["history"]]
        self.elapsed = float(loop["elapsed"])
        self.trainer.start_epoch = self.next_period

    # -- the loop -----------------------------------------------------------------------------
    def train(self) -> bool:
        """Run torchgan's loop to the end; True if it was interrupted (checkpoint written)."""
        self._seen = (self.critic_loss.critic_updates, self.gen_loss.generator_updates)
        self.reporter.open(self.gen_updates)
        previous = signal.getsignal(signal.SIGINT)
        installed = False
        try:
            if not self.history:  # the untrained generator (iteration 0): curves start where training starts
                self._evaluate({"gen_iter": 0, "critic_iter": 0, "batches": 0, "critic_w": math.nan,
                                "gen_loss": math.nan})
            try:
                signal.signal(signal.SIGINT, self._on_sigint)
                installed = True
            except ValueError:  # not the main thread: Ctrl-C handling stays Python's default
                pass
            self._t0 = time.perf_counter()
            if self.next_period < self.n_periods:
                self.trainer.epochs = self.n_periods
                with contextlib.redirect_stdout(io.StringIO()):  # torchgan prints a line per epoch
                    self.trainer(self.stream)
            return False
        except _Interrupted:
            return True
        finally:
            if installed:
                signal.signal(signal.SIGINT, previous)
            self.reporter.close()

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.interrupt_requested:  # second Ctrl-C: stop now; the last checkpoint is intact
            raise KeyboardInterrupt
        self.interrupt_requested = True

    def summary(self, interrupted: bool) -> Dict[str, Any]:
        return summarize(self.cfg, self.history, generator_updates=self.gen_updates,
                         critic_updates=self.critic_loss.critic_updates, elapsed=self.elapsed,
                         interrupted=interrupted, w1_floor=self.evaluator.w1_floor)


# ----------------------------------------------------------------------------- entry point


def run(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    resume_from: Optional[str] = None,
    explicit: Optional[Dict[str, Any]] = None,
    progress: Optional[bool] = None,
    quiet: bool = False,
    on_batch: Optional[Callable[[Any], None]] = None,
) -> RunResult:
    """Train a WGAN as configured and write the run folder; see the module docstring.

    Args:
        cfg: the configuration (``None`` fields are defaulted).
        resume: continue the run in ``resume_from`` / ``cfg.out`` / the latest under ``./runs``
            from its checkpoint. Its saved config wins; ``explicit`` values that differ from it
            are an error, except ``iterations`` / ``epochs`` (to extend a run), ``device`` and
            ``threads``. A run that has already done the iterations asked for is left as it is
            (``nothing_to_do``).
        resume_from: a run folder or checkpoint file.
        explicit: settings the user gave explicitly (checked against the checkpoint on resume).
        progress: ``True``/``False`` force the tqdm bar on/off; ``None``: on if stderr is a
            terminal with a width.
        quiet: no per-period lines when the bar is off.
        on_batch: called with the run state after every batch (tests use it to send Ctrl-C).

    Returns:
        A :class:`RunResult`. Raises :class:`TrainError` / :class:`wgan_ext.data.DataError` for
        bad input, before anything in an existing run folder is modified.
    """
    ck = None
    if resume:
        out = find_resume_dir(resume_from, cfg.out)
        ck = load_checkpoint(os.path.join(out, CHECKPOINT_NAME))
        cfg = _resumed_config(ck, out, explicit or {})
    else:
        if cfg.iterations is not None and cfg.epochs is not None:
            raise TrainError("give --iterations or --epochs, not both")
        resolve_config(cfg)  # fail on bad values before touching any data or file
    source = D.make_source(cfg.dataset, data_dir=cfg.data_dir, image_size=cfg.image_size, channels=cfg.channels)
    cfg = resolve_config(cfg, source)
    if ck is None:
        out = cfg.out or _default_out(cfg)
        if os.path.isfile(os.path.join(out, CHECKPOINT_NAME)) or os.path.isfile(os.path.join(out, "config.json")):
            raise TrainError(f"{out!r} already holds a run; continue it with --resume or choose another --out")
        cfg.out = out
    else:
        done = generator_updates(ck)
        if done >= cfg.iterations:
            return RunResult(out=out, summary={"generator_iterations": done, "iterations": cfg.iterations},
                             nothing_to_do=True)
    _prepare_out(out)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        run_ = _Run(cfg, source, out, progress=progress, quiet=quiet, on_batch=on_batch)
        if ck is not None:
            run_.restore(ck)
        atomic_write_text(os.path.join(out, "config.json"), json.dumps(json_safe(cfg.to_dict()), indent=2) + "\n")
        interrupted = run_.train()
    finally:
        torch.set_num_threads(threads_before)
    summary = run_.summary(interrupted)
    summary["out"] = out
    atomic_write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=2) + "\n")
    return RunResult(out=out, summary=summary, interrupted=interrupted)
