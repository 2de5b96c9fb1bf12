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
* **Several processes** (torchrun, ``--nproc``): every process runs :func:`run` and trains its
  share of each batch of m, with DDP (and FSDP2 for the critic with ``--fsdp``) wrapped around
  the networks as torchgan builds them; rank 0 checks the input and alone evaluates and writes
  (:mod:`wgan_ext.train_distributed`). The single-process path does none of this.
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
from . import train_distributed as TD
from .train_checkpoint import (
    CHECKPOINT_NAME,
    checkpoint_payload,
    generator_updates,
    load_checkpoint,
    restore_training_state,
    rng_state,
    save_checkpoint,
)
from .train_config import LOSSES, OPTIMIZERS, SCHEDULES, TOY_DEFAULTS, TrainConfig, TrainError, resolve_config
from .train_errors import CheckpointError, DivergedError, RunWriteError
from .train_eval import Evaluator
from .train_limits import check_memory, check_numbers
from .train_report import PeriodStats, Reporter, atomic_write_text, json_safe, summarize
from .train_setup import TrainerHooks, build_losses, build_network, build_trainer, lr_factor

__all__ = [
    "TrainConfig", "TrainError", "RunResult", "LOSSES", "OPTIMIZERS", "SCHEDULES", "TOY_DEFAULTS",
    "CHECKPOINT_NAME", "CONFIG_NAME", "resolve_config", "run", "plan", "load_checkpoint", "save_checkpoint",
    "find_resume_dir", "CheckpointError", "DivergedError", "RunWriteError",
]

CONFIG_NAME = "config.json"

# Settings that change what is trained; a resumed run must keep them.
_FIXED_ON_RESUME = (
    "dataset", "data_dir", "image_size", "channels", "loss", "c", "n_critic", "schedule", "lr", "lr_decay",
    "optimizer", "batch_size", "seed", "arch", "hidden", "generator_hidden", "n_hidden", "batchnorm",
    "encoding_dims", "gp_lambda", "eval_samples", "log_every", "score_every", "fsdp",
)
# Settings a resumed run may change.
_CHANGEABLE_ON_RESUME = ("iterations", "epochs", "device", "threads", "inception_weights")


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
    else the most recently written run under ``./runs`` that has a checkpoint (or only its
    config: a run that stopped before its first checkpoint)."""
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
            for kept in (CHECKPOINT_NAME, CONFIG_NAME):
                path = os.path.join("runs", name, kept)
                if os.path.isfile(path):
                    runs.append((os.path.getmtime(path), os.path.join("runs", name)))
                    break
    if not runs:
        raise TrainError("nothing to resume: no run with a checkpoint under ./runs (pass --out RUN_DIR)")
    return max(runs)[1]


def _resumed_config(ck: Dict[str, Any], out: str, explicit: Dict[str, Any]) -> TrainConfig:
    """The checkpoint's config, with the settings a resumed run may change taken from ``explicit``."""
    saved = TrainConfig(**{k: v for k, v in ck["config"].items() if k in TrainConfig.__dataclass_fields__})
    if "lr_decay" not in ck["config"]:  # written before --lr-decay existed: its lr was constant
        saved.lr_decay = "none"
    if "batchnorm" not in ck["config"] and saved.arch == "mlp":  # likewise: no batch norm then,
        saved.batchnorm = False                                   # and one width for both MLPs
    if "generator_hidden" not in ck["config"] and saved.arch == "mlp":
        saved.generator_hidden = saved.hidden
    if "score_every" not in ck["config"]:  # likewise: scored at its evaluations only
        saved.score_every = saved.log_every
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


def _check_one_folder(resume_from: Optional[str], out: Optional[str], run_dir: str) -> None:
    """``--resume RUN --out OTHER``: a resumed run writes into its own folder only."""
    if resume_from and out and os.path.realpath(out) != os.path.realpath(run_dir):
        raise TrainError(f"--resume {resume_from} continues the run in {run_dir!r}, in that folder; --out {out} "
                         "names another: leave out --out (a resumed run is not copied)")


def _read_config(out: str) -> Dict[str, Any]:
    path = os.path.join(out, CONFIG_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path!r} is unreadable ({e})\nstart a new run with another --out") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path!r} holds no run config\nstart a new run with another --out")
    return saved


def _check_saved_config(cfg: TrainConfig, ck_path: str) -> None:
    """The checkpoint's own settings are valid (those a resumed run may change are checked later,
    as the user's input)."""
    try:
        saved = dataclasses.replace(cfg, device="cpu", threads=None, world_size=cfg.world_size)
        check_numbers(resolve_config(saved))
    except (TrainError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {ck_path!r} holds an invalid setting: {e}\n"
                              "it was altered after it was written: restore it from a backup, or start a new run") from None


# ----------------------------------------------------------------------------- the run


def _non_finite(models: Dict[str, Optional[torch.nn.Module]]) -> Optional[str]:
    """``"generator and critic weights"`` (those of the models with a NaN or inf parameter; this
    process's shard of a sharded one), else None."""
    bad = [name for name, model in models.items() if model is not None and not all(
        bool(torch.isfinite((p.to_local() if hasattr(p, "to_local") else p).detach()).all())
        for p in model.parameters())]
    return f"{' and '.join(bad)} weights" if bad else None


class _Interrupted(Exception):
    """Raised from inside torchgan's loop once the checkpoint of an interrupted run is written."""


class _Run:
    """One run: the objects it trains, its logging periods, Ctrl-C, and its checkpoint.

    torchgan's Trainer calls :meth:`after_batch` after every batch and :meth:`end_period` at the
    end of every logging period (through :class:`~wgan_ext.train_setup.TrainerHooks`). On several
    processes (``world``) every rank runs one, in lockstep; rank 0's evaluates and writes.
    """

    def __init__(self, cfg: TrainConfig, source: D.DataSource, out: str, *, progress: Optional[bool],
                 quiet: bool, on_batch: Optional[Callable[["_Run"], None]], world: Optional[TD.World] = None) -> None:
        self.cfg = cfg
        self.out = out
        self.on_batch = on_batch
        self.world = world = world or TD.World()
        self.device = world.device(cfg.device)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        self.critic_loss, self.gen_loss = build_losses(cfg)
        network = build_network(cfg, source)
        if world.distributed:
            network = TD.wrap_network(network, world, self.device)
        self.n_periods = math.ceil(cfg.iterations / cfg.log_every)
        losses = [self.critic_loss, self.gen_loss]
        self.trainer = build_trainer(cfg, network, losses, out if world.writer else None, self.n_periods, self.device)
        self.trainer.logger = TrainerHooks([type(l).__name__ for l in losses], self.after_batch, self.end_period)
        TD.seed_rank(cfg.seed, world)
        self.stream = TD.batch_stream(source, cfg.batch_size, cfg.seed, world)
        self.stream.stop_when = self._period_done
        self.evaluator: Optional[Evaluator] = None
        self.reporter: Optional[Reporter] = None
        if world.writer:
            # Building the scorers creates networks (the digit classifier, Inception), whose
            # initialisation would draw from the training RNG -- on rank 0 only, and only when the
            # process had not built them before.
            with torch.random.fork_rng(devices=[]):
                self.evaluator = Evaluator(source, cfg.eval_samples, cfg.seed, cfg.encoding_dims, self.device,
                                           inception_weights=cfg.inception_weights)
            self.reporter = Reporter(cfg, out, self.evaluator, progress=progress, quiet=quiet)
        self.history: List[Dict[str, Any]] = []
        self.stats = PeriodStats()
        self.next_period = 0
        self.elapsed = 0.0
        self.interrupt_requested = False
        self.checkpoint_at: Optional[int] = None  # generator iterations of the last checkpoint written or loaded
        self._seen = (0, 0)  # (critic, generator) updates already reported
        self._t0 = time.perf_counter()

    @property
    def gen_updates(self) -> int:
        return self.critic_loss.generator_updates

    def _set_lr(self, done: Optional[int] = None, iterations: Optional[int] = None) -> None:
        """Set the learning rate of generator iteration ``done + 1`` (default: the next one) and
        of the critic updates before it, in a run of ``iterations`` (default: this run's)."""
        done = self.gen_updates if done is None else done
        lr = self.cfg.lr * lr_factor(self.cfg.lr_decay, done, iterations or self.cfg.iterations)
        for name in self.trainer.optimizer_names:
            for group in getattr(self.trainer, name).param_groups:
                group["lr"] = lr

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
            if self.reporter is not None:
                self.reporter.critic_update(self.critic_loss.last_wasserstein)
        generator_updated = gen_n != self._seen[1]
        if generator_updated:
            self._set_lr()
            self.stats.add_generator(self.gen_loss.last_value)
            if self.reporter is not None:
                self.reporter.generator_update(self.gen_updates)
            self._score_between()
        self._seen = (critic_n, gen_n)
        if self.on_batch is not None:
            self.on_batch(self)
        stop = self.interrupt_requested
        if self.world.distributed:  # ranks agree once per generator iteration (a collective)
            stop = generator_updated and self.world.any(stop)
        if stop:
            self._clock()
            self.write_checkpoint()
            raise _Interrupted()

    def _score_between(self) -> None:
        """Every ``score_every`` generator iterations inside a period, rank 0 scores the generator
        alone (:meth:`Evaluator.sample_scores`, no collective) into the period's means."""
        n = self.gen_updates
        if self.evaluator is None or n % self.cfg.score_every or self._period_done():
            return  # the period's last iteration is scored by its evaluation
        scores, _ = self.evaluator.sample_scores(TD.plain_generator(self.trainer))
        self.stats.add_scores(scores)

    def end_period(self, epoch: int) -> None:
        self._clock()
        stats = TD.period_means(self.stats, self.world)
        row: Dict[str, Any] = {
            "gen_iter": self.gen_updates,
            "critic_iter": self.critic_loss.critic_updates,
            "batches": self.stream.position,
            "critic_w": stats.critic_w,
            "gen_loss": stats.gen_loss,
        }
        self._evaluate(row)
        self.stats = PeriodStats()
        self.next_period = epoch + 1
        self.write_checkpoint()
        self._clock()  # evaluation, plots and the checkpoint count as run time too

    def _evaluate(self, row: Dict[str, Any]) -> None:
        """Score the generator, append ``row`` to the history and report it (rank 0)."""
        G, C = TD.eval_models(self.trainer, self.world)

        def score_and_report() -> None:
            assert self.evaluator is not None and self.reporter is not None and C is not None
            scores, fake = self.evaluator(G, C)
            row.update(scores)
            # iteration 0 has no period: its "period" is itself (self.stats, still empty, adds nothing)
            row.update(self.stats.period_scores(scores))
            row["time_s"] = round(self.elapsed, 3)
            self.history.append(row)
            bad = _non_finite({"generator": G, "critic": C})
            if bad is None and not bool(torch.isfinite(fake).all()):
                bad = "generated samples"
            if bad is not None:  # the row (NaN scores) goes to metrics.csv; nothing is plotted
                self.reporter.diverged(self.history)
                raise DivergedError(self._diverged_message(bad))
            device = self.device
            self.reporter.period(row, self.history, fake, lambda x: C(x.to(device)).cpu())

        self.world.share(score_and_report)  # other ranks wait for rank 0's outcome
        if not self.world.writer:
            self.history.append(row)

    # -- checkpoint ---------------------------------------------------------------------------
    def _diverged_message(self, what: str) -> str:
        at = f"training diverged: the {what} hold NaN or inf at generator iteration {self.gen_updates}"
        if self.checkpoint_at is None:
            kept = "no checkpoint was written before it"
        else:
            kept = f"{self.out} keeps the checkpoint of generator iteration {self.checkpoint_at}, the last finite one"
        return f"{at}\n{kept}; start a new run with a smaller --lr than {self.cfg.lr:g}"

    def write_checkpoint(self) -> None:
        """Write the checkpoint, unless the weights are no longer finite (then
        :class:`DivergedError`: the previous checkpoint stays)."""
        bad = _non_finite({"generator": self.trainer.generator, "critic": self.trainer.discriminator})
        if self.world.any(bad is not None):
            raise DivergedError(self._diverged_message(bad or "weights of another process"))
        loop = {"stream_position": self.stream.position, "next_period": self.next_period,
                "period_stats": self.stats.state_dict(), "history": [dict(r) for r in self.history],
                "elapsed": self.elapsed}
        config = self.cfg.to_dict()
        extra: Dict[str, Any] = {}
        if self.world.distributed:  # full states gathered from every rank (collectives)
            models, optimizers = TD.model_states(self.trainer, self.world)
            ranks = self.world.gather({"rng": rng_state(), "period_stats": self.stats.state_dict()})
            extra = dict(models=models, optimizers=optimizers, ranks=ranks)

        def save() -> None:
            payload = checkpoint_payload(config, self.trainer, self.critic_loss, self.gen_loss, loop, **extra)
            save_checkpoint(os.path.join(self.out, CHECKPOINT_NAME), payload)

        self.world.share(save)  # one process: just save()
        self.checkpoint_at = self.gen_updates

    def restore(self, ck: Dict[str, Any]) -> None:
        # A checkpoint of one process has no "ranks"; one of several always has (see plan).
        mine: Optional[Dict[str, Any]] = ck["ranks"][self.world.rank] if "ranks" in ck else None

        def load_models(models: Dict[str, Any], optimizers: Dict[str, Any]) -> None:
            TD.load_model_states(self.trainer, self.world, models, optimizers)

        # the optimizers' lr as the checkpoint's run set it (checked against the saved one; a longer
        # run then sets its own in train())
        self._set_lr(generator_updates(ck), int(ck["config"]["iterations"]))
        restore_training_state(ck, self.trainer, self.critic_loss, self.gen_loss,
                               load_models=load_models if self.world.distributed else None,
                               rng=mine["rng"] if mine else None)
        loop = ck["loop"]
        self.stream.position = int(loop["stream_position"])
        self.next_period = int(loop["next_period"])
        self.stats = PeriodStats(**(mine["period_stats"] if mine else loop["period_stats"]))
        self.history = [dict(r) for r in loop["history"]]
        self.elapsed = float(loop["elapsed"])
        self.trainer.start_epoch = self.next_period
        self.checkpoint_at = self.gen_updates

    # -- the loop -----------------------------------------------------------------------------
    def train(self) -> bool:
        """Run torchgan's loop to the end; True if it was interrupted (checkpoint written)."""
        self._seen = (self.critic_loss.critic_updates, self.gen_loss.generator_updates)
        if self.reporter is not None:
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
            self._set_lr()
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
            if self.reporter is not None:
                self.reporter.close()

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.interrupt_requested:  # second Ctrl-C: stop now; the last checkpoint is intact
            raise KeyboardInterrupt
        self.interrupt_requested = True

    def summary(self, interrupted: bool) -> Dict[str, Any]:
        return summarize(self.cfg, self.history, generator_updates=self.gen_updates,
                         critic_updates=self.critic_loss.critic_updates, elapsed=self.elapsed,
                         interrupted=interrupted, w1_floor=self.evaluator.w1_floor if self.evaluator else math.nan)


# ----------------------------------------------------------------------------- entry point


@dataclass
class _Plan:
    """What a run will do, decided before any process trains: its settings, folder and checkpoint."""

    cfg: TrainConfig
    out: str
    ck: Optional[Dict[str, Any]] = None
    done: Optional[int] = None  # set when a resumed run has nothing left to do


def plan(cfg: TrainConfig, *, resume: bool = False, resume_from: Optional[str] = None,
         explicit: Optional[Dict[str, Any]] = None, world_size: int = 1, distributed: bool = False,
         source: Optional[List[D.DataSource]] = None) -> _Plan:
    """Check everything a run needs before it starts, and create its folder (see :func:`run`).

    ``world_size``: processes that will train; ``distributed``: under torch.distributed (torchrun
    or ``--nproc``). ``source``: if given, a list that receives the built data source.

    Raises:
        TrainError / DataError: bad input; nothing in an existing run folder is modified.
    """
    ck = None
    restart = False  # resuming a run that stopped before its first checkpoint: start its config afresh
    if resume:
        out = find_resume_dir(resume_from, cfg.out)
        _check_one_folder(resume_from, cfg.out, out)
        ck_path = os.path.join(out, CHECKPOINT_NAME)
        if not os.path.isfile(ck_path) and not os.path.isfile(os.path.join(out, CONFIG_NAME)):
            raise TrainError(f"nothing to resume: {out!r} holds no {CHECKPOINT_NAME} and no {CONFIG_NAME}")
        if not os.path.isfile(ck_path):
            cfg = dataclasses.replace(_resumed_config({"config": _read_config(out)}, out, explicit or {}),
                                      world_size=world_size)
            restart = True
        else:
            ck = load_checkpoint(ck_path)
            cfg = _resumed_config(ck, out, explicit or {})
            _check_saved_config(cfg, ck_path)
        if ck is not None and cfg.world_size != world_size:
            raise TrainError(
                f"{out!r} was trained by {cfg.world_size} process(es) and resumes only with as many "
                f"(torchrun --nproc-per-node / --nproc {cfg.world_size}), not {world_size}: each keeps its random "
                "stream in the checkpoint")
        if ck is not None and world_size > 1 and len(ck.get("ranks") or ()) != world_size:
            raise CheckpointError(f"checkpoint {ck_path!r} is incomplete (no state of each of its {world_size} "
                                  "processes)\nrestore it from a backup, or start a new run")
    if ck is None:
        if not restart and cfg.iterations is not None and cfg.epochs is not None:
            raise TrainError("give --iterations or --epochs, not both")
        cfg = dataclasses.replace(cfg, world_size=world_size)
        resolve_config(cfg)  # fail on bad values before touching any data or file
    check_numbers(cfg)
    if cfg.fsdp:
        if not distributed:
            raise TrainError("--fsdp shards the critic over several processes: launch with torchrun "
                             "--nproc-per-node N -m wgan_ext train ..., or add --nproc N")
        TD.check_fsdp()
    built = D.make_source(cfg.dataset, data_dir=cfg.data_dir, image_size=cfg.image_size, channels=cfg.channels)
    if source is not None:
        source.append(built)
    cfg = resolve_config(cfg, built)
    if ck is None:
        out = cfg.out or _default_out(cfg)
        if os.path.isfile(os.path.join(out, CHECKPOINT_NAME)):
            raise TrainError(f"{out!r} already holds a run; continue it with --resume or choose another --out")
        cfg.out = out  # a folder with a config but no checkpoint never trained: it starts again
    else:
        done = generator_updates(ck)
        if done >= cfg.iterations:
            return _Plan(cfg, out, ck, done)
    check_memory(cfg, built, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)) if distributed else 1)
    _prepare_out(out)
    return _Plan(cfg, out, ck)


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

    Under torchrun (or in a process group already set up) every process calls this with the
    same arguments and trains its share (:mod:`wgan_ext.train_distributed`); rank 0 checks the
    input, and alone writes the folder and reports.

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
        bad input, before anything in an existing run folder is modified (on every process).
    """
    world = TD.join()
    try:
        return _run(world, cfg, resume=resume, resume_from=resume_from, explicit=explicit, progress=progress,
                    quiet=quiet, on_batch=on_batch)
    finally:
        world.close()


def _run(world: TD.World, cfg: TrainConfig, *, resume: bool, resume_from: Optional[str],
         explicit: Optional[Dict[str, Any]], progress: Optional[bool], quiet: bool,
         on_batch: Optional[Callable[[Any], None]]) -> RunResult:
    built: List[D.DataSource] = []
    p = world.share(lambda: plan(cfg, resume=resume, resume_from=resume_from, explicit=explicit,
                                 world_size=world.world_size, distributed=world.distributed, source=built))
    cfg, out, ck = p.cfg, p.out, p.ck
    if p.done is not None:
        return RunResult(out=out, summary={"generator_iterations": p.done, "iterations": cfg.iterations},
                         nothing_to_do=True)
    world.fsdp = cfg.fsdp

    def this_rank_source() -> D.DataSource:
        if world.distributed:
            TD.check_devices(cfg.device, world.local_world_size)
            if world.device(cfg.device).type == "cuda":
                torch.cuda.set_device(world.device(cfg.device))
        if built:
            return built[0]
        return D.make_source(cfg.dataset, data_dir=cfg.data_dir, image_size=cfg.image_size, channels=cfg.channels)

    source = world.agree(this_rank_source)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    run_: Optional[_Run] = None
    try:
        run_ = _Run(cfg, source, out, progress=progress, quiet=quiet, on_batch=on_batch, world=world)
        if ck is not None:
            run_.restore(ck)
        world.share(lambda: atomic_write_text(os.path.join(out, CONFIG_NAME),
                                              json.dumps(json_safe(cfg.to_dict()), indent=2) + "\n"))
        interrupted = run_.train()
        summary = _summary(run_, world, out, interrupted)
        world.share(lambda: _write_summary(out, summary))
    except DivergedError:
        if run_ is not None:  # what it did until then, for the record; the error says the rest
            diverged = _summary(run_, world, out, False)
            diverged["diverged_at"] = run_.gen_updates
            with contextlib.suppress(OSError):
                world.share(lambda: _write_summary(out, diverged))
        raise
    except OSError as e:  # disk full, folder removed, ...: say what is kept
        raise RunWriteError(_stopped(f"could not write {e.filename or out!r}: {e.strerror or e}", out)) from None
    except KeyboardInterrupt:  # before the run's own handler is installed, or a second Ctrl-C
        raise KeyboardInterrupt(_stopped("interrupted", out)) from None
    finally:
        torch.set_num_threads(threads_before)
    return RunResult(out=out, summary=summary, interrupted=interrupted)


def _summary(run_: _Run, world: TD.World, out: str, interrupted: bool) -> Dict[str, Any]:
    if world.writer:
        summary = run_.summary(interrupted)
    else:  # rank 0 reports
        summary = {"generator_iterations": run_.gen_updates, "interrupted": interrupted, "world_size": world.world_size}
    summary["out"] = out
    return summary


def _write_summary(out: str, summary: Dict[str, Any]) -> None:
    atomic_write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=2) + "\n")


def _stopped(what: str, out: str) -> str:
    """Two lines: ``what`` happened, and what the run folder keeps and how to go on."""
    ck = os.path.join(out, CHECKPOINT_NAME)
    if os.path.isfile(ck):
        try:
            kept = f"the checkpoint of generator iteration {generator_updates(load_checkpoint(ck))}"
        except TrainError:
            kept = "its last checkpoint"
        return f"{what}\n{out} keeps {kept}: continue with: wgan-ext train --resume {out}"
    if os.path.isfile(os.path.join(out, CONFIG_NAME)):
        return f"{what} before the first checkpoint\nstart it again with: wgan-ext train --resume {out}"
    return f"{what} before the run started; nothing to keep: run the same command again"
