"""The ``wgan-ext`` command: ``wgan-ext train`` (and ``wgan-ext info`` when the build provides it).

``wgan-ext train`` with no arguments trains a weight-clipped WGAN (Algorithm 1) on 8 gaussians
through a torchgan Trainer with this package's losses, in a few minutes on a laptop CPU.
Every failure is one or two lines on stderr (what happened, what to do) and an exit code of its
own (:data:`wgan_ext.train_errors.EXIT_CODES`, listed in ``wgan-ext train --help``); 1 is left
to Python for an unexpected error.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from typing import Any, Dict, List, NoReturn, Optional

__all__ = ["main", "build_parser"]

PROG = "wgan-ext"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.HelpFormatter):
    """argparse's, but the exit-code table of the epilog keeps its lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("exit codes:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


# The [train] extras: import name -> distribution (pyproject.toml's optional-dependencies).
TRAIN_EXTRAS = {"torchgan": "torchgan", "torchvision": "torchvision", "scipy": "scipy", "sklearn": "scikit-learn",
                "matplotlib": "matplotlib", "tqdm": "tqdm", "PIL": "pillow"}


def _missing_extras() -> List[str]:
    """The distributions of the [train] extras that cannot be imported (not installed)."""
    missing = []
    for module, dist in TRAIN_EXTRAS.items():
        try:
            found = sys.modules[module] is not None if module in sys.modules else \
                importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(dist)
    return missing


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None


def _num(v: float) -> str:
    """A default for help texts: 64, 0.01, 1e-4."""
    text = f"{v:.0e}" if 0 < abs(v) < 1e-3 else f"{v:g}"
    return text.replace("e-0", "e-")


def _positive_finite(s: str) -> float:
    v = _float(s)
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {s!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``wgan-ext`` (subcommands ``train`` and ``info``)."""
    from .data import DATASETS, TOY_DATASETS
    from .functional import PAPER_C, CriticSchedule
    from .train_config import (ADAM_BETAS, ARCHS, DIGITS_DEFAULTS, GP_LR, IMAGE_DEFAULTS, LOSSES, LR_DECAYS,
                               MLP_THREADS, OPTIMIZERS, SCHEDULES, TOY_DEFAULTS, TrainConfig)

    cfg = TrainConfig()  # the fixed defaults; per-dataset ones come from TOY_DEFAULTS / IMAGE_DEFAULTS
    toy, img, dig = TOY_DEFAULTS, IMAGE_DEFAULTS, DIGITS_DEFAULTS
    paper = CriticSchedule.paper()

    def per_data(key: str) -> str:
        on_digits = f", {_num(dig[key])} on digits" if dig[key] != img[key] else ""
        return f"default {_num(toy[key])} on the 2-D toys{on_digits}, {_num(img[key])} otherwise"

    parser = _Parser(prog=PROG, description="Weight-clipped WGAN to the letter of the paper, on torchgan.")
    sub = parser.add_subparsers(dest="command", metavar="{train,info}", parser_class=_Parser)
    sub.add_parser("info", help="build and kernel information (fused clip backends)", add_help=False)
    from .train_errors import EXIT_CODES

    t = sub.add_parser(
        "train",
        formatter_class=_Formatter,
        epilog="exit codes:\n" + "\n".join(f"  {code:>3}  {what}" for code, what in EXIT_CODES.items()),
        help=f"train a WGAN (default: weight-clipped, {cfg.dataset}, a few minutes on CPU)",
        description=(
            "Train a WGAN through a torchgan Trainer with wgan-ext's losses. With no arguments: "
            f"Algorithm 1 of the WGAN paper (RMSProp, c={PAPER_C:g}, n_critic={cfg.n_critic}, batch "
            f"{toy['batch_size']}) on {cfg.dataset}, {toy['iterations']} generator iterations, lr {_num(toy['lr'])}"
            f"{' falling linearly to 0' if toy['lr_decay'] == 'linear' else ''}. "
            "Writes a run folder with samples, curves.png, metrics.csv, summary.json, config.json, "
            "checkpoint.pt (and TensorBoard events if tensorboard is installed). Iterations are generator "
            "iterations; each torchgan epoch is one logging period of --log-every of them, and the toys "
            "are generated afresh for every batch (an endless dataset). Ctrl-C saves a checkpoint; "
            "--resume continues it (bit for bit on CPU, on the same machine with the same --threads)."
        ),
    )
    S = argparse.SUPPRESS  # None defaults are filled per dataset/loss by wgan_ext.train_config.resolve_config
    d = t.add_argument_group("data")
    d.add_argument("--dataset", choices=DATASETS, default=S,
                   help=f"{', '.join(TOY_DATASETS)}: 2-D toys generated in code; digits: scikit-learn's "
                        "bundled 8x8 digits; mnist/cifar10/folder: your own files under --data-dir "
                        f"(never downloaded). Default {cfg.dataset}")
    d.add_argument("--data-dir", default=S, help="folder with MNIST/CIFAR-10 files or your images")
    d.add_argument("--image-size", type=_positive_int, default=S,
                   help=f"resize images to this side (default {img['image_size']})")
    d.add_argument("--channels", type=int, choices=(1, 3), default=S,
                   help=f"colour channels for --dataset folder (default {cfg.channels})")
    a = t.add_argument_group("algorithm")
    a.add_argument("--loss", choices=LOSSES, default=S,
                   help="clip: weight-clipped WGAN (Algorithm 1); gp: WGAN-GP; hinge: hinge loss with "
                        f"clipping (the critic loss of labml.ai's annotated WGAN). Default {cfg.loss}")
    a.add_argument("--c", type=_float, default=S, help=f"clip critic weights to [-c, c] (clip, hinge; default {PAPER_C:g})")
    a.add_argument("--n-critic", type=_positive_int, default=S,
                   help=f"critic updates per generator update (default {cfg.n_critic})")
    a.add_argument("--schedule", choices=SCHEDULES, default=S,
                   help=f"constant n_critic, or the paper code's: {paper.boost} critic updates for the first "
                        f"{paper.warmup} generator iterations and every {paper.every}th. Default {cfg.schedule}")
    a.add_argument("--paper-schedule", dest="schedule", action="store_const", const="paper", default=S,
                   help="same as --schedule paper")
    a.add_argument("--lr", type=_float, default=S,
                   help=f"learning rate. {'D' + per_data('lr')[1:]} (the paper's), {_num(GP_LR)} for gp (Adam). "
                        f"Why not {_num(img['lr'])} on the toys and digits: the presets were chosen to learn what "
                        "you can see within minutes (every mode, every digit; benchmarks/QUALITY.md); the rest of "
                        "Algorithm 1 (RMSProp, c, n_critic, clipping after every critic update) is unchanged")
    a.add_argument("--lr-decay", choices=LR_DECAYS, default=S,
                   help=f"none: the paper's constant lr; linear: lr falls linearly to 0 at the last generator "
                        f"iteration (a resumed run given more --iterations follows the longer ramp from where it "
                        f"is). Default {toy['lr_decay']} on the 2-D toys, none otherwise")
    a.add_argument("--optimizer", choices=OPTIMIZERS, default=S,
                   help="clipped-rmsprop (the default with weight clipping: the paper's RMSProp with the clip "
                        "fused into the critic's step), rmsprop (RMSProp, then a separate clip) or adam (betas "
                        f"{ADAM_BETAS[0]:g}, {ADAM_BETAS[1]:g}; the default for gp)")
    a.add_argument("--gp-lambda", type=_float, default=S,
                   help=f"gradient-penalty weight for --loss gp (default {cfg.gp_lambda:g})")
    r = t.add_argument_group("run length")
    r.add_argument("--batch-size", type=_positive_int, default=S, help=f"m, samples per batch ({per_data('batch_size')})")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--iterations", type=_positive_int, default=S,
                   help=f"generator iterations, each after n_critic critic updates on fresh batches "
                        f"({per_data('iterations')})")
    g.add_argument("--epochs", type=_positive_finite, default=S,
                   help="passes over a finite dataset instead (converted to generator iterations)")
    r.add_argument("--log-every", type=_positive_int, default=S,
                   help=f"evaluate, plot and checkpoint every N generator iterations ({per_data('log_every')})")
    r.add_argument("--score-every", type=_positive_int, default=S,
                   help=f"also score the generator (exact W1, digit FD) every N generator iterations between "
                        f"evaluations; each row then holds the period's mean, which the summary's Spearman "
                        f"compares with the critic's period-mean estimate (default {toy['score_every']} on the "
                        f"2-D toys, {dig['score_every']} on digits, --log-every otherwise)")
    m = t.add_argument_group("model")
    m.add_argument("--arch", choices=ARCHS, default=S, help="mlp (toys, digits) or dcgan (image files)")
    m.add_argument("--hidden", type=_positive_int, default=S,
                   help=f"MLP units per layer: the critic's, and the generator's unless --generator-hidden "
                        f"({per_data('hidden')}; the paper's: 512)")
    m.add_argument("--generator-hidden", type=_positive_int, default=S,
                   help=f"the MLP generator's units per layer (default {toy['generator_hidden']} on the 2-D toys, "
                        "else --hidden)")
    m.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=S,
                   help="batch norm after each hidden layer of the MLP generator, as in DCGAN's generator (on by "
                        "default for digits, off for the toys; DCGAN networks have their own)")
    m.add_argument("--encoding-dims", type=_positive_int, default=S, help=f"noise dimension ({per_data('encoding_dims')})")
    o = t.add_argument_group("run")
    o.add_argument("--seed", type=int, default=S, help=f"random seed (default {cfg.seed})")
    o.add_argument("--device", default=S, help=f"cpu, cuda, cuda:1, ... or mps (default {cfg.device})")
    o.add_argument("--threads", type=_positive_int, default=S,
                   help=f"CPU threads for torch, at most the CPUs this process may use (default {MLP_THREADS} for "
                        "MLPs: their tensors are too small to gain from more; else torch's default)")
    o.add_argument("--eval-samples", type=_positive_int, default=S,
                   help=f"samples for exact W1 and modes (default {cfg.eval_samples})")
    o.add_argument("--inception-weights", default=S, metavar="PATH",
                   help="Inception-v3 weights (weights-inception-2015-12-05-6726825d.pth) for FID on mnist, cifar10 "
                        "and folder (needs torch-fidelity; default: torch's hub cache if the file is there; never "
                        "downloaded)")
    o.add_argument("--out", default=S, help="run folder (default runs/DATASET-LOSS-TIME)")
    o.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN",
                   help="continue a run from its checkpoint: RUN (a run folder or checkpoint.pt), else --out, "
                        "else the latest run under ./runs")
    o.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="always show the progress bar (default: on a terminal)")
    o.add_argument("--no-progress", dest="progress", action="store_false",
                   help="never show the progress bar: one line per period instead")
    o.add_argument("--quiet", action="store_true", help="no per-period lines when the bar is off")
    p = t.add_argument_group(
        "several processes", "Under torchrun (torchrun --nproc-per-node N -m wgan_ext train ...) or with --nproc, "
        "each of the N processes takes m/N of every batch of m = --batch-size (a multiple of N); rank 0 alone "
        "evaluates and writes the run folder. A resumed run needs as many processes as it had.")
    p.add_argument("--nproc", type=_positive_int, default=None, metavar="N",
                   help="train on N local processes: launches them as torchrun --standalone would")
    p.add_argument("--fsdp", action="store_true", default=S,
                   help="shard the critic over the processes with FSDP2 (the generator stays DDP; not with --loss gp)")
    return parser


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise): only rank 0 prints."""
    try:
        return int(os.environ.get("RANK", "0")) if "WORLD_SIZE" in os.environ else 0
    except ValueError:
        return 0


def _err(msg: str, code: int = 2) -> int:
    if _rank() == 0:
        print(f"{PROG} train: error: {msg}", file=sys.stderr)
    return code


def _fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _spearman_line(summary: Dict[str, Any], key: str, name: str) -> str:
    rho, snap = summary.get(f"spearman_critic_{key}"), summary.get(f"spearman_critic_{key}_at_evaluations")
    if rho is None:
        return f"  Spearman(critic estimate, {name}) over the run: n/a (needs 3+ evaluations that vary)"
    line = f"  Spearman(critic estimate, {name}) over the run: {rho:.2f} (period means)"
    return line + (f"; {snap:.2f} with {name} at the evaluations alone" if snap is not None and snap != rho else "")


def _report(summary: Dict[str, Any]) -> None:
    f = summary.get("final") or {}
    n = summary.get("world_size", 1)
    print(f"done: {summary['generator_iterations']} generator iterations "
          f"({summary['critic_iterations']} critic updates) in {summary['wall_time_s']:.0f} s"
          + (f" on {n} processes" if n > 1 else ""))
    print(f"  critic's Wasserstein estimate (last period): {_fmt(f.get('critic_w'), '.3g')}")
    if f.get("w1") is not None:
        print(f"  exact W1(generated, real): {_fmt(f.get('w1'), '.4f')} "
              f"(two real samples of the same size differ by {_fmt(summary.get('w1_floor'), '.4f')})")
    if f.get("modes") is not None:
        print(f"  modes covered: {f['modes']}/{f['modes_total']} "
              f"({100 * f['high_quality']:.0f}% of samples within 3 std of a mode)")
    if f.get("fd") is not None:
        print(f"  digit FD (classifier features): {f['fd']:.3g} (two real samples of the same size: "
              f"{_fmt(summary.get('fd_floor'), '.3g')}); {f['classes']}/{f['classes_total']} classes covered, "
              f"{100 * f['confident']:.0f}% of samples classified confidently")
        print(_spearman_line(summary, "fd", "digit FD"))
    if f.get("fid") is not None:
        print(f"  Inception FID: {f['fid']:.4g}")
    recent = summary.get("last_evaluations") or {}
    if recent.get("count", 0) > 1 and recent.get("w1_mean") is not None:
        line = f"  over the last {recent['count']} evaluations: exact W1 {recent['w1_mean']:.4f} on average"
        if recent.get("modes_min") is not None:
            line += (f", {recent['modes_min']:.0f}-{recent['modes_max']:.0f} modes, "
                     f"{100 * recent['high_quality_mean']:.0f}% within 3 std on average")
        if recent.get("fd_mean") is not None:
            line += (f", digit FD {recent['fd_mean']:.3g} on average, "
                     f"{recent['classes_min']:.0f}-{recent['classes_max']:.0f} classes")
        print(line)
    if f.get("w1") is not None:
        print(_spearman_line(summary, "w1", "exact W1"))
    out = summary["out"]
    print(f"  run folder: {out} (curves.png, samples/, metrics.csv, summary.json, checkpoint.pt)")


def _forwarded(args: argparse.Namespace, explicit: Dict[str, Any], resume_out: Optional[str], out: str) -> List[str]:
    """The ``train`` arguments for the workers of ``--nproc``: the settings given, the run folder
    the launcher chose, and the output options."""
    argv: List[str] = []
    for k, v in explicit.items():
        if k == "fsdp":
            argv.append("--fsdp")
        elif k == "batchnorm":
            argv.append("--batchnorm" if v else "--no-batchnorm")
        elif k != "out":
            argv += [f"--{k.replace('_', '-')}", repr(v) if isinstance(v, float) else str(v)]
    argv += ["--resume", resume_out] if resume_out is not None else ["--out", out]
    if args.progress is not None:
        argv.append("--progress" if args.progress else "--no-progress")
    if args.quiet:
        argv.append("--quiet")
    return argv


def _launch(args: argparse.Namespace, explicit: Dict[str, Any]) -> int:
    """``--nproc N``: check the input here (one line, exit 2), then run N workers."""
    from .train import TrainConfig, TrainError, plan
    from .train_distributed import check_devices, gloo_available, launch, launched

    n = args.nproc
    if launched():
        raise TrainError(f"--nproc {n} launches its own processes; under torchrun, leave it out")
    if not gloo_available():
        raise TrainError(f"--nproc {n} needs torch.distributed with gloo, which this torch lacks")
    p = plan(TrainConfig(**explicit), resume=args.resume is not None, resume_from=args.resume or None,
             explicit=explicit, world_size=n, distributed=True)
    check_devices(p.cfg.device, n)
    if p.done is not None:
        return _nothing_to_do(p.out, p.done, p.cfg.iterations)
    return launch(n, _forwarded(args, explicit, p.out if args.resume is not None else None, p.out))


def _where(e: OSError) -> str:
    return f" {e.filename!r}" if getattr(e, "filename", None) else ""


def _nothing_to_do(out: str, done: int, iterations: int) -> int:
    if _rank() == 0:
        print(f"nothing to do: {out} has already done {done} of {iterations} "
              f"generator iterations; to train longer: {PROG} train --resume {out} --iterations N")
    return 0


def _train(args: argparse.Namespace) -> int:
    """``wgan-ext train``: every failure becomes its message and exit code (see EXIT_CODES)."""
    missing = _missing_extras()  # before anything is created
    if missing:
        return _err(f"missing packages of the [train] extras: {', '.join(missing)}\n"
                    f'install them with: pip install "wgan-ext[train]"', 3)
    from .data import DataError
    from .train import TrainError

    try:
        return _train_or_launch(args)
    except (TrainError, DataError) as e:
        return _err(str(e), getattr(e, "exit_code", 2))
    except OSError as e:  # writing the run folder before the run (its own errors say what is kept)
        return _err(f"could not write{_where(e)}: {e.strerror or e}", 6)


def _train_or_launch(args: argparse.Namespace) -> int:
    from .train import TrainConfig, run

    fields = TrainConfig.__dataclass_fields__
    explicit = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.nproc is not None:
        return _launch(args, explicit)
    result = run(TrainConfig(**explicit), resume=args.resume is not None, resume_from=args.resume or None,
                 explicit=explicit, progress=args.progress, quiet=args.quiet)
    if result.nothing_to_do:
        s = result.summary
        return _nothing_to_do(result.out, s["generator_iterations"], s["iterations"])
    if _rank() != 0:
        return 130 if result.interrupted else 0
    if result.interrupted:
        ck = os.path.join(result.out, "checkpoint.pt")
        n = result.summary.get("world_size", 1)
        again = f" (on {n} processes again)" if n > 1 else ""
        print(f"interrupted at generator iteration {result.summary['generator_iterations']}; "
              f"checkpoint saved to {ck}. Continue with: {PROG} train --resume {result.out}{again}", file=sys.stderr)
        return 130
    _report(result.summary)
    return 0


def _info(argv: List[str]) -> int:
    if importlib.util.find_spec("wgan_ext.info") is None:
        print(f"{PROG} info: not available in this build", file=sys.stderr)
        return 2
    from . import info  # type: ignore[attr-defined]

    return int(info.main(argv) or 0)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``wgan-ext`` console script; returns the exit code. Ctrl-C at any
    moment is one or two lines and exit code 130, never a traceback."""
    try:
        return _main(argv)
    except KeyboardInterrupt as e:  # the run's own message says what is kept; else nothing was yet
        if _rank() == 0:
            print(f"{PROG}: {str(e) or 'interrupted before the run started; nothing to keep: run the same command again'}",
                  file=sys.stderr)
        return 130


def _main(argv: Optional[List[str]]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "info":  # info parses its own arguments
        return _info(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed): return, don't exit
        return e.code if isinstance(e.code, int) else 2
    if args.command == "train":
        return _train(args)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":  # python -m wgan_ext.cli
    sys.exit(main())
