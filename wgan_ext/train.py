"""Run orchestration for ``wgan-ext train``: data, networks, losses, a torchgan Trainer, logging,
checkpoints and resume.

The training loop is torchgan's own ``Trainer.train``; this module feeds it and watches it:

* **Iterations, not epochs.** torchgan runs one critic update per batch it pulls and calls an
  "epoch" one pass over its loader. Here the loader is a :class:`wgan_ext.data.BatchStream`
  that ends each torchgan epoch after exactly ``log_every`` *generator* iterations, so one
  torchgan epoch = one logging period. ``--iterations`` counts generator iterations (Algorithm 1's
  outer loop), each preceded by ``n_critic`` critic updates on fresh real batches; for the 2-D toys
  every batch is newly generated (an endless dataset), for finite data the stream makes
  shuffled passes (``--epochs E`` is converted to ``E * batches_per_pass / n_critic``
  generator iterations).
* **Logger.** torchgan's console/visdom/tensorboardX logger is replaced by :class:`RunLogger`
  (same interface), which drives the tqdm bar, evaluates at the end of each period, writes
  plots, metrics, TensorBoard scalars and the checkpoint.
* **Checkpoints** (``checkpoint.pt``) are written atomically (temp file + ``os.replace``) at the
  end of every period and when the run is interrupted (Ctrl-C stops at the next batch
  boundary, after saving). They hold everything the future of the run depends on: both models,
  both optimizers, the losses' update counters, torchgan's ``loss_information``, the data
  stream's position, the RNG states (torch, numpy, python) and the metrics so far. Evaluation
  draws from its own generators, never the training RNG, so on CPU a resumed run ends with the
  same parameters, bit for bit, as the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from . import data as D
from . import metrics as M
from . import plots as P

__all__ = [
    "TrainConfig",
    "TrainError",
    "RunResult",
    "LOSSES",
    "OPTIMIZERS",
    "SCHEDULES",
    "CHECKPOINT_NAME",
    "resolve_config",
    "run",
    "load_checkpoint",
    "find_resume_dir",
]

LOSSES = ("clip", "gp", "hinge")
OPTIMIZERS = ("rmsprop", "adam")
SCHEDULES = ("constant", "paper")
ARCHS = ("mlp", "dcgan")
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "wgan-ext-run"
CHECKPOINT_VERSION = 1

# Defaults for the 2-D toys. The paper's Algorithm 1 is kept (RMSProp, c = 0.01, n_critic = 5,
# m = 64); lr, width and length are chosen so that the default run learns visibly in about three
# minutes on two CPU cores. Measured on 8 gaussians (2 shared cores, 3 x 128 MLPs):
#   lr 5e-5 (paper): exact W1 0.24 after 10000 generator iterations, still falling slowly;
#   lr 1e-4:         W1 0.17 after 10000 (0.24 already after 3000);
#   lr 2e-4:         W1 0.20 after 6000 but noisier (modes come and go); 5e-4 kills the critic.
# 3 x 128 units learn as well as 3 x 256 here at half the time (3 x 512, the paper's MLP width
# for images, is 4x slower again); the WGAN-GP toy code's 2-D noise is kept.
TOY_DEFAULTS = {"lr": 1e-4, "iterations": 10000, "hidden": 128, "encoding_dims": 2, "log_every": 500}
# Settings that change what is trained; a resumed run must keep them.
_FIXED_ON_RESUME = (
    "dataset", "data_dir", "image_size", "channels", "loss", "c", "n_critic", "schedule", "lr",
    "optimizer", "batch_size", "seed", "arch", "hidden", "n_hidden", "encoding_dims", "gp_lambda",
    "eval_samples", "log_every",
)


class TrainError(Exception):
    """A problem with the user's input or files, reported as one line (no traceback)."""


@dataclass
class TrainConfig:
    """Everything a run depends on. ``None`` fields get dataset/loss-specific defaults from
    :func:`resolve_config`; the resolved config is saved as ``config.json`` in the run folder."""

    dataset: str = "8gaussians"
    data_dir: Optional[str] = None
    image_size: Optional[int] = None
    channels: int = 3
    loss: str = "clip"
    c: Optional[float] = None
    n_critic: int = 5
    schedule: str = "constant"
    lr: Optional[float] = None
    optimizer: Optional[str] = None
    batch_size: int = 64
    iterations: Optional[int] = None
    epochs: Optional[float] = None
    log_every: Optional[int] = None
    seed: int = 0
    device: str = "cpu"
    out: Optional[str] = None
    arch: Optional[str] = None
    hidden: Optional[int] = None
    n_hidden: int = 3
    encoding_dims: Optional[int] = None
    gp_lambda: float = 10.0
    eval_samples: int = 512
    threads: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RunResult:
    """What :func:`run` returns: where the run lives, its final summary, and whether it was cut short."""

    out: str
    summary: Dict[str, Any]
    interrupted: bool = False


# ----------------------------------------------------------------------------- configuration


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise TrainError(msg)


def resolve_config(cfg: TrainConfig, source: Optional[D.DataSource] = None) -> TrainConfig:
    """Validate ``cfg`` and fill in the defaults that depend on the dataset and loss.

    Raises :class:`TrainError` (one line) for any invalid value. Touches no file.
    """
    c = dataclasses.replace(cfg)
    _check(c.dataset in D.DATASETS, f"unknown dataset {c.dataset!r}; choose one of {', '.join(D.DATASETS)}")
    _check(c.loss in LOSSES, f"unknown loss {c.loss!r}; choose one of {', '.join(LOSSES)}")
    _check(c.schedule in SCHEDULES, f"unknown schedule {c.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    toy = c.dataset in D.TOY_DATASETS
    if c.c is not None:
        _check(math.isfinite(c.c) and c.c > 0, f"c must be > 0 (weights are clipped to [-c, c]), got {c.c}")
    if c.loss in ("clip", "hinge") and c.c is None:
        c.c = 0.01  # Algorithm 1; seed 001's hinge WGAN clips the same way
    if c.optimizer is None:
        c.optimizer = "adam" if c.loss == "gp" else "rmsprop"  # WGAN-GP uses Adam, WGAN RMSProp
    _check(c.optimizer in OPTIMIZERS, f"unknown optimizer {c.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if c.lr is None:
        if c.loss == "gp":
            c.lr = 1e-4  # Gulrajani et al. 2017
        else:
            c.lr = TOY_DEFAULTS["lr"] if toy else 5e-5  # paper's alpha for real images
    _check(math.isfinite(c.lr) and c.lr > 0, f"lr must be > 0, got {c.lr}")
    _check(c.n_critic >= 1, f"n_critic must be >= 1, got {c.n_critic}")
    _check(c.batch_size >= 1, f"batch size must be >= 1, got {c.batch_size}")
    _check(c.n_hidden >= 1, f"n_hidden must be >= 1, got {c.n_hidden}")
    _check(c.eval_samples >= 8, f"eval samples must be >= 8, got {c.eval_samples}")
    _check(math.isfinite(c.gp_lambda) and c.gp_lambda >= 0, f"gp lambda must be >= 0, got {c.gp_lambda}")
    _check(c.channels in (1, 3), f"channels must be 1 or 3, got {c.channels}")
    if c.arch is None:
        c.arch = "mlp" if c.dataset in D.TOY_DATASETS + ("digits",) else "dcgan"
    _check(c.arch in ARCHS, f"unknown architecture {c.arch!r}; choose one of {', '.join(ARCHS)}")
    if c.hidden is None:
        c.hidden = TOY_DEFAULTS["hidden"] if toy else 512  # paper: 512-unit MLP layers
    _check(c.hidden >= 1, f"hidden must be >= 1, got {c.hidden}")
    if c.encoding_dims is None:
        c.encoding_dims = TOY_DEFAULTS["encoding_dims"] if toy else 100  # WGAN-GP toy code: 2-D noise
    _check(c.encoding_dims >= 1, f"encoding dims must be >= 1, got {c.encoding_dims}")
    if toy:
        _check(c.arch == "mlp", f"dataset {c.dataset!r} is 2-D points: use --arch mlp")
        _check(c.epochs is None, f"dataset {c.dataset!r} is generated without end: use --iterations, not --epochs")
    if c.arch == "dcgan" and c.dataset != "digits" and c.image_size is None:
        c.image_size = 32
    if c.arch == "dcgan":
        size = 8 if c.dataset == "digits" else c.image_size
        _check(size is not None and size >= 16 and (size & (size - 1)) == 0,
               f"--arch dcgan needs an image size that is a power of 2 and >= 16, got {size}")
    if c.log_every is None:
        c.log_every = TOY_DEFAULTS["log_every"] if toy else 200
    _check(c.log_every >= 1, f"log every must be >= 1, got {c.log_every}")
    if c.threads is None:
        # Tiny MLP tensors gain nothing from intra-op threads, and on a busy machine the OpenMP
        # hand-offs make each op up to 100x slower (measured on 2 shared cores).
        c.threads = 1 if c.arch == "mlp" else torch.get_num_threads()
    _check(c.threads >= 1, f"threads must be >= 1, got {c.threads}")
    if c.epochs is not None:  # epochs win: a resumed config holds both (iterations derived)
        _check(c.epochs > 0, f"epochs must be > 0, got {c.epochs}")
        if source is not None:
            per_pass = source.batches_per_pass(c.batch_size) or 1
            c.iterations = max(1, math.ceil(c.epochs * per_pass / c.n_critic))
    if c.iterations is None:
        c.iterations = TOY_DEFAULTS["iterations"] if toy else 2000
    _check(c.iterations >= 1, f"iterations must be >= 1, got {c.iterations}")
    try:
        dev = torch.device(c.device)
    except (RuntimeError, TypeError) as e:
        raise TrainError(f"unknown device {c.device!r}: {e}") from None
    if dev.type == "cuda":
        _check(torch.cuda.is_available(), f"device {c.device!r} requested but CUDA is not available")
    return c


# ----------------------------------------------------------------------------- run folder


def _prepare_out(out: str) -> str:
    """Create ``out`` if needed and prove it is writable; never deletes anything."""
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
        for sub in ("samples",):
            os.makedirs(os.path.join(out, sub), exist_ok=True)
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


def _atomic_write_text(path: str, text: str) -> None:
    with P.atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


# ----------------------------------------------------------------------------- checkpoints


def _rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        # numpy's MT19937 key as a tensor so the file loads with weights_only=True
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_PLAIN = (int, float, bool, str, type(None))


def _loss_state(loss: torch.nn.Module) -> Dict[str, Any]:
    """The plain-valued attributes of a loss object: its update counters and last values."""
    out = {}
    for k, v in vars(loss).items():
        if isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(isinstance(x, _PLAIN) for x in v)):
            out[k] = v
    return out


def save_checkpoint(path: str, payload: Dict[str, Any]) -> None:
    """``torch.save`` to a temp file beside ``path``, fsync, then ``os.replace`` (atomic)."""
    with P.atomic_path(path, suffix=".pt") as tmp:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load and sanity-check a run checkpoint (``weights_only=True``: no code runs on load)."""
    if not os.path.isfile(path):
        raise TrainError(f"no checkpoint at {path!r}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or someone else's pickle
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainError(f"checkpoint {path!r} is corrupt or not a wgan-ext checkpoint ({msg[:160]})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path!r} is not a wgan-ext train checkpoint")
    if ck.get("version") != CHECKPOINT_VERSION:
        raise TrainError(f"checkpoint {path!r} has version {ck.get('version')!r}; this wgan-ext reads {CHECKPOINT_VERSION}")
    needed = ("config", "models", "optimizers", "losses", "loss_information", "rng", "stream_position",
              "next_period", "history", "period_acc", "elapsed")
    missing = [k for k in needed if k not in ck]
    if missing:
        raise TrainError(f"checkpoint {path!r} is incomplete (missing {', '.join(missing)})")
    return ck


# ----------------------------------------------------------------------------- building blocks


def _build_network(cfg: TrainConfig, source: D.DataSource) -> Dict[str, Dict[str, Any]]:
    from .networks import wgan_network

    opt_cls = torch.optim.RMSprop if cfg.optimizer == "rmsprop" else torch.optim.Adam
    opt_args = {"betas": (0.5, 0.9)} if cfg.optimizer == "adam" else {}  # WGAN-GP's Adam settings
    if cfg.arch == "mlp":
        return wgan_network(
            "mlp", sample_shape=source.shape, encoding_dims=cfg.encoding_dims, hidden=cfg.hidden,
            n_hidden=cfg.n_hidden, tanh=source.kind == "images", lr=cfg.lr, optimizer=opt_cls,
            optimizer_args=opt_args,
        )
    channels, size = source.shape[0], source.shape[-1]
    return wgan_network(
        "dcgan", image_size=size, channels=channels, encoding_dims=cfg.encoding_dims,
        step_channels=32, lr=cfg.lr, optimizer=opt_cls, optimizer_args=opt_args,
        # Batch norm makes f(x) depend on the rest of the batch, which a WGAN-GP critic must not.
        batchnorm=cfg.loss != "gp",
    )


def _build_losses(cfg: TrainConfig) -> tuple[list, int]:
    """(losses_list, Trainer ncritic). The critic loss is listed first and the Trainer offers the
    generator loss a turn after it in every batch (``ncritic=1``); the losses keep the schedule.
    So the batch of critic update ``n(g)`` also brings generator update ``g``: after ``k``
    generator iterations exactly Algorithm 1's critic updates are done, none of the next."""
    from . import losses as L

    schedule = "paper" if cfg.schedule == "paper" else None
    common = {"n_critic": cfg.n_critic, "schedule": schedule}
    if cfg.loss == "clip":
        critic = L.WassersteinCriticLoss(c=cfg.c, **common)
        gen = L.WassersteinGeneratorLoss()
    elif cfg.loss == "gp":
        critic = L.WassersteinGradientPenalty(lambd=cfg.gp_lambda, c=cfg.c, **common)
        gen = L.WassersteinGeneratorLoss()
    else:
        critic = L.HingeCriticLoss(c=cfg.c, **common)
        gen = L.HingeGeneratorLoss()
    return [critic, gen], 1


def _make_trainer_class():
    from torchgan.trainer import Trainer

    class WGANTrainer(Trainer):
        """torchgan's ``Trainer`` with our checkpoints: the per-epoch ``save_model`` is left to
        :class:`RunLogger`, which writes one atomic checkpoint *after* evaluating the period
        (torchgan saves before its evaluation, so its checkpoint would miss the period's metrics)."""

        def save_model(self, epoch: int, save_items: Any = None) -> None:
            pass

        def load_model(self, load_path: str = "", load_items: Any = None) -> None:
            raise NotImplementedError("runs of wgan-ext train resume with --resume (wgan_ext.train.run)")

    return WGANTrainer


class _Interrupted(Exception):
    """Raised from inside torchgan's loop once the checkpoint of an interrupted run is written."""


class _NullGrads:
    """Stands in for torchgan's GradientVisualize: its per-step gradient sums cost a sync per
    parameter and are not reported here."""

    def update_grads(self, name: str, model: torch.nn.Module, eps: float = 1e-5) -> None:
        pass


class _LossLogs:
    """Stands in for torchgan's LossVisualize: ``train_iter`` appends each loss value here; only
    the last is kept (the logger reads the real per-update values from the loss objects)."""

    def __init__(self, names: List[str]) -> None:
        self.logs: Dict[str, Any] = {n: _Last() for n in names}


class _Last(list):
    def append(self, v: Any) -> None:  # keep memory flat over long runs
        if self:
            self[0] = v
        else:
            super().append(v)


# ----------------------------------------------------------------------------- the run logger


class RunLogger:
    """torchgan ``Logger`` replacement: progress bar, evaluation, plots, metrics, checkpoints.

    torchgan's Trainer calls ``run_mid_epoch`` after every batch and ``run_end_epoch`` at the
    end of every epoch (= logging period, see the module docstring).
    """

    def __init__(self, run: "_Run") -> None:
        self.run = run
        names = [type(l).__name__ for l in run.losses]
        self._loss_logs = _LossLogs(names)
        self._grads = _NullGrads()

    # torchgan's Logger interface -------------------------------------------------------------
    def get_loss_viz(self) -> _LossLogs:
        return self._loss_logs

    def get_grad_viz(self) -> _NullGrads:
        return self._grads

    def get_metric_viz(self) -> None:
        return None

    def close(self) -> None:
        pass

    def run_mid_epoch(self, trainer: Any, *args: Any) -> None:
        self.run.after_batch()

    def run_end_epoch(self, trainer: Any, epoch: int, time_duration: float, *args: Any) -> None:
        self.run.end_period(epoch)


class _Run:
    """State and behaviour of one ``wgan-ext train`` run (see :func:`run`)."""

    def __init__(self, cfg: TrainConfig, source: D.DataSource, out: str, *, progress: Optional[bool],
                 quiet: bool, on_batch: Optional[Callable[["_Run"], None]]) -> None:
        self.cfg = cfg
        self.source = source
        self.out = out
        self.quiet = quiet
        self.on_batch = on_batch
        self.device = torch.device(cfg.device)
        self.toy = isinstance(source, D.ToySource)
        self.ckpt_path = os.path.join(out, CHECKPOINT_NAME)
        self.stdout = sys.stdout  # torchgan prints to stdout; we silence it but keep ours
        self.history: List[Dict[str, Any]] = []
        self.elapsed = 0.0
        self.acc = {"w_sum": 0.0, "w_n": 0, "g_sum": 0.0, "g_n": 0}
        self.recent_w: List[float] = []
        self.interrupt_requested = False
        self.next_period = 0
        self.progress_enabled = progress

        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        self.losses, ncritic = _build_losses(cfg)
        self.critic_loss, self.gen_loss = self.losses
        network = _build_network(cfg, source)
        self.n_periods = math.ceil(cfg.iterations / cfg.log_every)
        Trainer = _make_trainer_class()
        with contextlib.redirect_stdout(io.StringIO()):
            self.trainer = Trainer(
                network, self.losses, device=self.device, ncritic=ncritic, epochs=self.n_periods,
                sample_size=64, checkpoints=os.path.join(out, "samples", "torchgan"),
                recon=os.path.join(out, "samples"), nrow=8,
            )
        self.trainer.logger = RunLogger(self)
        self.stream = D.BatchStream(source, cfg.batch_size, cfg.seed)
        self.stream.stop_when = self._period_done
        self._setup_eval()
        self.bar = None
        self.tb = None

    # -- schedule of periods ------------------------------------------------------------------
    @property
    def gen_updates(self) -> int:
        return self.critic_loss.generator_updates

    def target(self, period: int) -> int:
        return min((period + 1) * self.cfg.log_every, self.cfg.iterations)

    def _period_done(self) -> bool:
        # An interrupt is handled after the next batch (after_batch), never by ending a period
        # early: an empty period would log a duplicate row.
        return self.gen_updates >= self.target(self.next_period)

    # -- evaluation set -----------------------------------------------------------------------
    def _setup_eval(self) -> None:
        n = self.cfg.eval_samples
        real = D.eval_real(self.source, n, self.cfg.seed)
        self.eval_real = real
        n = len(real)
        g = torch.Generator().manual_seed(self.cfg.seed + 0x5EED)
        # Fixed noise (its own generator): metrics over time compare the same z, and evaluating
        # never advances the training RNG, which keeps resumed runs bit-identical.
        self.eval_noise = torch.randn(n, self.trainer.generator.encoding_dims, generator=g)
        self.w1_floor = math.nan
        # The usual "high-quality sample" radius on mixture toys (VEEGAN, PacGAN): 3 std of a mode.
        self.mode_radius = 3 * self.source.mode_std if self.toy and self.source.mode_std else None
        if self.toy:
            other = D.toy_sample(self.source.name, n, torch.Generator().manual_seed(self.cfg.seed + 0xF100))
            self.w1_floor = M.exact_w1(real, other)
        elif self.source.length is not None and self.source.length >= 2 * n:
            pool = D.eval_real(self.source, 2 * n, self.cfg.seed + 1)
            self.w1_floor = M.exact_w1(pool[:n], pool[n:])

    @torch.no_grad()
    def evaluate(self) -> Dict[str, Any]:
        G, C = self.trainer.generator, self.trainer.discriminator
        modes = (G.training, C.training)
        G.eval()  # batch norm must not update its running statistics while we only look
        C.eval()
        try:
            return self._evaluate(G, C)
        finally:
            G.train(modes[0])
            C.train(modes[1])

    def _evaluate(self, G: torch.nn.Module, C: torch.nn.Module) -> Dict[str, Any]:
        fake = torch.cat([G(z.to(self.device)).cpu() for z in self.eval_noise.split(1024)])
        real = self.eval_real
        critic_cpu = lambda x: C(x.to(self.device)).cpu()  # noqa: E731
        row: Dict[str, Any] = {
            "critic_w_eval": M.critic_estimate(critic_cpu, real, fake),
            "w1": math.nan, "w1_floor": self.w1_floor, "modes": math.nan, "modes_total": math.nan,
            "high_quality": math.nan,
        }
        if real[0].numel() <= 4096:  # pixel-space W1 for small images is cheap and still says something
            row["w1"] = M.exact_w1(fake, real)
        if self.toy and self.source.modes is not None:
            cov = M.mode_coverage(fake, self.source.modes, self.mode_radius)
            row.update(modes=cov.covered, modes_total=cov.total, high_quality=cov.high_quality)
        self._last_fake = fake
        return row

    # -- per batch ----------------------------------------------------------------------------
    def after_batch(self) -> None:
        cl, gl = self.critic_loss, self.gen_loss
        if cl.critic_updates != self._seen_critic:
            self._seen_critic = cl.critic_updates
            w = cl.last_wasserstein
            if w is not None:
                self.acc["w_sum"] += w
                self.acc["w_n"] += 1
                self.recent_w.append(w)
                del self.recent_w[:-50]
        if gl.generator_updates != self._seen_gen:
            self._seen_gen = gl.generator_updates
            self.acc["g_sum"] += gl.last_value
            self.acc["g_n"] += 1
            if self.bar is not None:
                self.bar.update(self.gen_updates - self.bar.n)
                if self.gen_updates % 10 == 0:
                    self.bar.set_postfix_str(self._postfix(), refresh=False)
        if self.on_batch is not None:
            self.on_batch(self)
        if self.interrupt_requested:
            self.elapsed += time.perf_counter() - self._t0
            self._t0 = time.perf_counter()
            self.write_checkpoint()
            raise _Interrupted()

    def _postfix(self) -> str:
        w = sum(self.recent_w) / len(self.recent_w) if self.recent_w else math.nan
        s = f"W~{w:.3g}"
        if self.history:
            last = self.history[-1]
            if _finite(last.get("w1")):
                s += f" W1={last['w1']:.3f}"
            if _finite(last.get("modes")):
                s += f" modes={int(last['modes'])}/{int(last['modes_total'])}"
        return s

    # -- per period ---------------------------------------------------------------------------
    def end_period(self, epoch: int) -> None:
        now = time.perf_counter()
        self.elapsed += now - self._t0
        self._t0 = now
        a = self.acc
        row: Dict[str, Any] = {
            "gen_iter": self.gen_updates,
            "critic_iter": self.critic_loss.critic_updates,
            "batches": self.stream.position,
            "critic_w": a["w_sum"] / a["w_n"] if a["w_n"] else math.nan,
            "gen_loss": a["g_sum"] / a["g_n"] if a["g_n"] else math.nan,
        }
        row.update(self.evaluate())
        row["time_s"] = round(self.elapsed, 3)
        self.history.append(row)
        self.acc = {"w_sum": 0.0, "w_n": 0, "g_sum": 0.0, "g_n": 0}
        self.next_period = epoch + 1
        with torch.no_grad():
            self.write_outputs(row)
        self.write_checkpoint()
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix())
        elif not self.quiet:
            print(self._period_line(row), file=self.stdout, flush=True)
        # Evaluation, plots and the checkpoint count as run time too (they are part of the wait).
        now = time.perf_counter()
        self.elapsed += now - self._t0
        self._t0 = now

    def _period_line(self, row: Dict[str, Any]) -> str:
        s = (f"[{row['gen_iter']:>6}/{self.cfg.iterations}] critic W estimate {row['critic_w']:.4g}  "
             f"generator loss {row['gen_loss']:.4g}")
        if _finite(row["w1"]):
            s += f"  exact W1 {row['w1']:.4f}"
        if _finite(row["modes"]):
            s += f"  modes {int(row['modes'])}/{int(row['modes_total'])}"
        return s

    def write_outputs(self, row: Dict[str, Any]) -> None:
        cfg = self.cfg
        step = row["gen_iter"]
        title = f"{cfg.dataset}, {cfg.loss}, generator iteration {step}"
        if self.toy:
            path = os.path.join(self.out, "samples", f"step_{step:06d}.png")
            C = self.trainer.discriminator
            P.plot_toy(path, self.eval_real, self._last_fake,
                       lambda x: C(x.to(self.device)).cpu(), title=title, modes=self.source.modes,
                       mode_radius=self.mode_radius)
        else:
            path = os.path.join(self.out, "samples", f"step_{step:06d}.png")
            P.save_image_grid(path, self._last_fake[:64], nrow=8)
        P.plot_curves(os.path.join(self.out, "curves.png"), self.history, title=f"{cfg.dataset}, {cfg.loss}")
        self._write_metrics()
        if self.tb is not None:
            for k in ("critic_w", "gen_loss", "critic_w_eval", "w1", "modes", "high_quality"):
                if _finite(row.get(k)):
                    self.tb.add_scalar(f"wgan/{k}", row[k], step)
            try:
                from PIL import Image

                with Image.open(path) as im:
                    self.tb.add_image("samples", np.asarray(im.convert("RGB")), step, dataformats="HWC")
            except OSError:
                pass
            self.tb.flush()

    def _write_metrics(self) -> None:
        if not self.history:
            return
        keys = list(self.history[0].keys())
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        for r in self.history:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
        _atomic_write_text(os.path.join(self.out, "metrics.csv"), buf.getvalue())

    def summary(self, interrupted: bool) -> Dict[str, Any]:
        h = self.history
        last = h[-1] if h else {}
        col = lambda k: [r.get(k, math.nan) for r in h]  # noqa: E731
        return _json_safe({
            "dataset": self.cfg.dataset,
            "loss": self.cfg.loss,
            "generator_iterations": self.gen_updates,
            "critic_iterations": self.critic_loss.critic_updates,
            "interrupted": interrupted,
            "wall_time_s": round(self.elapsed, 2),
            "final": last,
            "spearman_critic_w1": M.spearman(col("critic_w"), col("w1")) if h else math.nan,
            "spearman_critic_eval_w1": M.spearman(col("critic_w_eval"), col("w1")) if h else math.nan,
            "w1_floor": self.w1_floor,
        })

    # -- checkpoints --------------------------------------------------------------------------
    def write_checkpoint(self) -> None:
        t = self.trainer
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.cfg.to_dict(),
            "models": {n: getattr(t, n).state_dict() for n in t.model_names},
            "optimizers": {n: getattr(t, n).state_dict() for n in t.optimizer_names},
            "losses": {type(l).__name__: _loss_state(l) for l in self.losses},
            "loss_information": dict(t.loss_information),
            "rng": _rng_state(),
            "stream_position": self.stream.position,
            "next_period": self.next_period,
            "period_acc": dict(self.acc),
            "history": [dict(r) for r in self.history],
            "elapsed": self.elapsed,
        }
        save_checkpoint(self.ckpt_path, payload)

    def restore(self, ck: Dict[str, Any]) -> None:
        t = self.trainer
        try:
            for n in t.model_names:
                getattr(t, n).load_state_dict(ck["models"][n])
            for n in t.optimizer_names:
                getattr(t, n).load_state_dict(ck["optimizers"][n])
            for l in self.losses:
                for k, v in ck["losses"][type(l).__name__].items():
                    setattr(l, k, v)
        except (KeyError, RuntimeError, ValueError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrainError(f"checkpoint does not fit this run's networks ({msg[:160]})") from None
        t.loss_information = dict(ck["loss_information"])
        self.stream.position = int(ck["stream_position"])
        self.next_period = int(ck["next_period"])
        self.acc = dict(ck["period_acc"])
        self.history = [dict(r) for r in ck["history"]]
        self.elapsed = float(ck["elapsed"])
        t.start_epoch = self.next_period
        _set_rng_state(ck["rng"])

    def initial_row(self) -> None:
        """Score the untrained generator (iteration 0), so curves start where training starts."""
        row: Dict[str, Any] = {"gen_iter": 0, "critic_iter": 0, "batches": 0,
                               "critic_w": math.nan, "gen_loss": math.nan}
        row.update(self.evaluate())
        row["time_s"] = 0.0
        self.history.append(row)
        with torch.no_grad():
            self.write_outputs(row)

    # -- main loop ----------------------------------------------------------------------------
    def train(self) -> bool:
        """Run torchgan's loop to the end; True if it was interrupted (checkpoint written)."""
        self._seen_critic = self.critic_loss.critic_updates
        self._seen_gen = self.gen_loss.generator_updates
        self._open_tensorboard()
        self._open_bar()
        if not self.history and self.gen_updates == 0:
            self.initial_row()  # draws no training randomness: resumed runs stay bit-identical
        previous = signal.getsignal(signal.SIGINT)
        installed = False
        try:
            try:
                signal.signal(signal.SIGINT, self._on_sigint)
                installed = True
            except ValueError:  # not the main thread: Ctrl-C handling stays Python's default
                pass
            self._t0 = time.perf_counter()
            if self.next_period < self.n_periods:
                self.trainer.epochs = self.n_periods
                # torchgan prints a line per checkpoint and at the end; our output is the bar.
                with contextlib.redirect_stdout(io.StringIO()):
                    self.trainer(self.stream)
            return False
        except _Interrupted:
            return True
        finally:
            if installed:
                signal.signal(signal.SIGINT, previous)
            if self.bar is not None:
                self.bar.close()
            if self.tb is not None:
                self.tb.close()

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.interrupt_requested:  # second Ctrl-C: stop now; the last checkpoint is intact
            raise KeyboardInterrupt
        self.interrupt_requested = True

    def _open_bar(self) -> None:
        enabled = self.progress_enabled
        if enabled is False:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(
            total=self.cfg.iterations, initial=self.gen_updates, unit="it", desc="wgan-ext train",
            dynamic_ncols=True, disable=None if enabled is None else False, file=sys.stderr,
        )
        if self.bar.disable:
            self.bar = None

    def _open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: CSV/JSON/PNG only
            return
        # purge_step drops events a previous, interrupted process wrote past this checkpoint.
        self.tb = SummaryWriter(os.path.join(self.out, "tb"), purge_step=self.gen_updates or None)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


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
            are an error, except ``iterations`` / ``epochs`` (to extend a run) and ``device``.
        resume_from: a run folder or checkpoint file.
        explicit: settings the user gave explicitly (checked against the checkpoint on resume).
        progress: ``True``/``False`` force the tqdm bar on/off; ``None``: on if stderr is a terminal.
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
        saved = TrainConfig(**{k: v for k, v in ck["config"].items() if k in TrainConfig.__dataclass_fields__})
        for k, v in (explicit or {}).items():
            if k in _FIXED_ON_RESUME and v is not None and v != getattr(saved, k):
                raise TrainError(
                    f"--{k.replace('_', '-')} {v} differs from the checkpoint's {getattr(saved, k)}; a resumed run "
                    "keeps its settings (only --iterations/--epochs, --device and --threads may change)"
                )
        cfg = dataclasses.replace(saved, out=out)
        for k in ("iterations", "epochs", "device", "threads"):
            if explicit and explicit.get(k) is not None:
                setattr(cfg, k, explicit[k])
        if explicit and explicit.get("iterations") is not None:
            cfg.epochs = None
    else:
        _check(cfg.iterations is None or cfg.epochs is None, "give --iterations or --epochs, not both")
        resolve_config(cfg)  # fail on bad values before touching any data or file
    source = D.make_source(cfg.dataset, data_dir=cfg.data_dir, image_size=cfg.image_size, channels=cfg.channels)
    cfg = resolve_config(cfg, source)
    if ck is None:
        out = cfg.out or _default_out(cfg)
        if os.path.isfile(os.path.join(out, CHECKPOINT_NAME)) or os.path.isfile(os.path.join(out, "config.json")):
            raise TrainError(f"{out!r} already holds a run; continue it with --resume or choose another --out")
        cfg.out = out
    else:
        out = cfg.out
    _prepare_out(out)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        run_ = _Run(cfg, source, out, progress=progress, quiet=quiet, on_batch=on_batch)
        if ck is not None:
            run_.restore(ck)
        _atomic_write_text(os.path.join(out, "config.json"), json.dumps(_json_safe(cfg.to_dict()), indent=2) + "\n")
        interrupted = run_.train()
    finally:
        torch.set_num_threads(threads_before)
    summary = run_.summary(interrupted)
    summary["out"] = out
    _atomic_write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=2) + "\n")
    return RunResult(out=out, summary=summary, interrupted=interrupted)
