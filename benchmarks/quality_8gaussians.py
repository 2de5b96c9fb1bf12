"""Quality report: the default ``wgan-ext train`` run on 8 gaussians vs a hand-written Algorithm 1.

Usage (from the repository root; a few minutes per seed and method on 2 CPU cores)::

    PYTHONPATH=. python benchmarks/quality_8gaussians.py            # seeds 0-4 -> benchmarks/QUALITY.md
    PYTHONPATH=. python benchmarks/quality_8gaussians.py --seeds 0 --iterations 500 --out /tmp/q.md

For each seed it runs

* **ours**: ``wgan_ext.train.run`` with the default configuration (exactly ``wgan-ext train``:
  torchgan Trainer, wgan-ext's losses, fused clip, logging, plots and checkpoints included), and
* **reference**: :func:`wgan_ext.reference.algorithm1` -- the plain-PyTorch Algorithm 1 loop
  (``RMSprop`` + ``clamp_``) with the same settings: same networks and initial weights (same seed
  and construction order), same lr, c, n_critic, batch size, iterations and data stream; its
  noise draws differ (torchgan's logger draws once at start-up), so it is an independent run of
  the same algorithm, not a replay; and, for the first seed,
* **reference, replay**: the same loop after making that one start-up draw too, so it consumes
  the global RNG exactly as ours does: its generator must end bit-identical to ours (the test
  ``tests/test_train.py::test_torchgan_run_equals_hand_written_algorithm1`` checks this on a
  short run), hence the same W1 and modes.

Both are scored identically every ``log_every`` generator iterations: exact W1 between
``G(fixed noise)`` and a fixed real set (optimal assignment), modes covered (>= n/(4K) samples
within 3 std of a mode), and the critic's Wasserstein estimate averaged over the period's critic
updates; at the end, the Spearman correlation of that estimate with exact W1 over the run.
The results table is written to ``--out`` (markdown).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wgan_ext import data as D  # noqa: E402
from wgan_ext import metrics as M  # noqa: E402
from wgan_ext import train as T  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def run_ours(seed: int, iterations: int, runs_dir: str) -> Dict[str, object]:
    """The default ``wgan-ext train`` run (only seed and iterations set)."""
    cfg = T.TrainConfig(seed=seed, iterations=iterations, out=os.path.join(runs_dir, f"ours-seed{seed}"))
    t0 = time.perf_counter()
    res = T.run(cfg, progress=False, quiet=True)
    wall = time.perf_counter() - t0
    s = res.summary
    return {
        "method": "wgan-ext train (torchgan)",
        "seed": seed,
        "w1": s["final"]["w1"],
        "w1_floor": s["w1_floor"],
        "modes": s["final"]["modes"],
        "high_quality": s["final"]["high_quality"],
        "spearman": s["spearman_critic_w1"],
        "final_generator": {k: v.clone() for k, v in torch.load(
            os.path.join(res.out, T.CHECKPOINT_NAME), weights_only=True)["models"]["generator"].items()},
        "spearman_eval": s["spearman_critic_eval_w1"],
        "wall_s": wall,
        **_curves(_history(res.out)),
    }


def _curves(rows: List[Dict[str, float]]) -> Dict[str, List[float]]:
    """Exact W1, modes covered and the high-quality fraction at each evaluation."""
    return {"w1_curve": [round(r["w1"], 4) for r in rows], "modes_curve": [int(r["modes"]) for r in rows],
            "hq_curve": [round(r["high_quality"], 3) for r in rows]}


def _history(out: str) -> List[Dict[str, float]]:
    import csv

    with open(os.path.join(out, "metrics.csv")) as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in r.items()} for r in csv.DictReader(f)]


def run_reference(seed: int, iterations: int, replay: bool = False) -> Dict[str, object]:
    """Algorithm 1 written out in plain PyTorch, same settings, scored like ours. ``replay``: make
    the one RNG draw torchgan's logger makes at start-up, so the noise stream is ours."""
    from wgan_ext.networks import MLPCritic, MLPGenerator
    from wgan_ext.reference import algorithm1
    from wgan_ext.train_setup import lr_factor

    source = D.make_source("8gaussians")
    cfg = T.resolve_config(T.TrainConfig(seed=seed, iterations=iterations), source)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        G = MLPGenerator(encoding_dims=cfg.encoding_dims, out_shape=(2,), hidden=cfg.generator_hidden, n_hidden=cfg.n_hidden)
        C = MLPCritic(in_shape=(2,), hidden=cfg.hidden, n_hidden=cfg.n_hidden)
        if replay:  # torchgan's ImageVisualize samples its test noise: G.sampler(64, device)
            torch.randn(64, cfg.encoding_dims)
        stream = D.BatchStream(source, cfg.batch_size, cfg.seed)
        real = D.eval_real(source, cfg.eval_samples, cfg.seed)
        z_eval = torch.randn(len(real), cfg.encoding_dims, generator=torch.Generator().manual_seed(cfg.seed + 0x5EED))
        radius = 3 * source.mode_std
        rows: List[Dict[str, float]] = []
        seen = [0]

        def score(gen_iter: int, ws: List[float]) -> None:
            with torch.no_grad():
                fake = G(z_eval)
            cov = M.mode_coverage(fake, source.modes, radius)
            rows.append({
                "gen_iter": gen_iter,
                "critic_w": sum(ws) / len(ws) if ws else math.nan,
                "critic_w_eval": M.critic_estimate(C, real, fake),
                "w1": M.exact_w1(fake, real),
                "modes": cov.covered,
                "high_quality": cov.high_quality,
            })

        def evaluate(g: int, res) -> None:
            for opt in (res.optimizer_generator, res.optimizer_critic):  # --lr-decay, as wgan-ext train sets it
                opt.param_groups[0]["lr"] = cfg.lr * lr_factor(cfg.lr_decay, g + 1, cfg.iterations)
            if (g + 1) % cfg.log_every and g + 1 != cfg.iterations:
                return
            score(g + 1, res.wasserstein[seen[0]:])
            seen[0] = len(res.wasserstein)

        score(0, [])  # the untrained generator, as ours logs it

        algorithm1(G, C, lambda: stream.take(1)[0], lambda m: torch.randn(m, cfg.encoding_dims),
                   n_gen_iters=cfg.iterations, n_critic=cfg.n_critic, lr=cfg.lr, c=cfg.c, callback=evaluate)
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    other = D.toy_sample("8gaussians", len(real), torch.Generator().manual_seed(cfg.seed + 0xF100))
    last = rows[-1]
    return {
        "method": "reference Algorithm 1, replay" if replay else "reference Algorithm 1 (plain PyTorch)",
        "seed": seed,
        "w1": last["w1"],
        "w1_floor": M.exact_w1(real, other),
        "modes": last["modes"],
        "high_quality": last["high_quality"],
        "spearman": M.spearman([r["critic_w"] for r in rows], [r["w1"] for r in rows]),
        "spearman_eval": M.spearman([r["critic_w_eval"] for r in rows], [r["w1"] for r in rows]),
        "wall_s": wall,
        **_curves(rows),
        "final_generator": {k: v.clone() for k, v in G.state_dict().items()},
    }


def _f(v: object, spec: str) -> str:
    """Format a number; None / NaN (e.g. a Spearman over too few evaluations) as n/a."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, spec)


def _range(rows: List[Dict[str, object]], key: str, spec: str) -> str:
    """``min-max`` of a column over runs (one value as is; n/a when none is finite)."""
    vals = [float(r[key]) for r in rows if r[key] is not None and math.isfinite(float(r[key]))]  # type: ignore[arg-type]
    if not vals:
        return "n/a"
    lo, hi = format(min(vals), spec), format(max(vals), spec)
    return lo if lo == hi else f"{lo}-{hi}"


def _last5(curve: List[float]) -> float:
    finite = [v for v in curve if math.isfinite(v)]
    return statistics.mean(finite[-5:])


def render(results: List[Dict[str, object]], iterations: int) -> str:
    cfg = T.resolve_config(T.TrainConfig(iterations=iterations))
    lines = [
        "# Quality: default `wgan-ext train` on 8 gaussians vs hand-written Algorithm 1",
        "",
        f"Written by `benchmarks/quality_8gaussians.py` on {time.strftime('%Y-%m-%d')} "
        f"({platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{cfg.threads} torch thread(s)).",
        "",
        "**All numbers come from this one machine.** Floating-point reductions round differently on",
        "other CPUs, libraries and thread counts, so the same command elsewhere follows another",
        "trajectory after a few evaluations: compare with the ranges over seeds, not with one run's digits.",
        "Wall times depend on what else the machine runs (these cores were shared).",
        "",
        f"Settings (both methods): weight clipping c = {cfg.c}, n_critic = {cfg.n_critic}, RMSProp lr = {cfg.lr:g} "
        f"(wgan-ext train: --optimizer {cfg.optimizer}), "
        f"batch m = {cfg.batch_size}, {cfg.iterations} generator iterations, MLPs {cfg.n_hidden} x {cfg.hidden} ReLU, "
        f"noise dim {cfg.encoding_dims}; scored every {cfg.log_every} generator iterations on "
        f"{cfg.eval_samples} fixed generated vs {cfg.eval_samples} fixed real points.",
        "",
        "| method | seed | final exact W1 | W1, mean of last 5 evaluations | W1 floor (real vs real) | "
        "modes covered (of 8) | samples within 3 std | same, mean of last 5 | Spearman(critic est., W1) | "
        "Spearman(critic eval est., W1) | wall time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['method']} | {r['seed']} | {_f(r['w1'], '.4f')} | {_f(r['w1_last5'], '.4f')} | "
            f"{_f(r['w1_floor'], '.4f')} | {r['modes']} | {100 * float(r['high_quality']):.0f}% | "
            f"{100 * float(r['hq_last5']):.0f}% | {_f(r['spearman'], '.2f')} | {_f(r['spearman_eval'], '.2f')} | "
            f"{r['wall_s']:.0f} |"
        )
    lines += ["", "Range (min-max) over seeds:", "",
              "| method | runs | final exact W1 | W1, mean of last 5 | modes covered | samples within 3 std, "
              "mean of last 5 | Spearman(critic est., W1) | wall time (s) |",
              "|---|---|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in results):
        rows = [r for r in results if r["method"] == method]
        hq = [dict(r, hq_pct=100 * float(r["hq_last5"])) for r in rows]
        lines.append(f"| {method} | {len(rows)} | {_range(rows, 'w1', '.3f')} | {_range(rows, 'w1_last5', '.3f')} | "
                     f"{_range(rows, 'modes', '.0f')} | {_range(hq, 'hq_pct', '.0f')}% | {_range(rows, 'spearman', '.2f')} | "
                     f"{_range(rows, 'wall_s', '.0f')} |")
    for rep_ in (r for r in results if "replay_identical" in r):
        lines += ["", f"Replay, seed {rep_['seed']}: final generator parameters "
                      f"{'**bit-identical** to' if rep_['replay_identical'] else '**differ** from'} the "
                      "`wgan-ext train` run's (checked on this machine, same thread count)."]
    first = results[0]["seed"]
    lines += ["", f"At each evaluation (seed {first}): exact W1 / modes covered / % of samples within 3 std", ""]
    for method in dict.fromkeys(r["method"] for r in results):
        r = next(r for r in results if r["method"] == method and r["seed"] == first)
        lines.append(f"- {method}: " + ", ".join(
            f"{w:.3f}/{m}/{100 * h:.0f}%" for w, m, h in zip(r["w1_curve"], r["modes_curve"], r["hq_curve"])))
    lines += [
        "",
        "How to read it: exact W1 is in the units of the plot axes (the 8 modes sit on a circle of",
        "radius 1.414); a perfect generator still scores the floor, because two finite samples of the",
        "same distribution differ. A mode is covered when at least a quarter of its fair share of",
        "samples lies within 3 std of its centre; \"within 3 std\" is the fraction of samples within",
        "3 std of some centre (the mode-collapse literature's \"high-quality samples\"). A clipped",
        "WGAN strings samples between modes and the generator keeps moving, so both swing from one",
        "evaluation to the next (see the per-evaluation line above): read the means over the last 5",
        "evaluations, not the last value.",
        "\"Critic est.\" is the critic's Wasserstein estimate E f(real) - E f(fake) averaged over each",
        "period's training batches (what the progress bar shows); \"critic eval est.\" is the same",
        "estimate on the fixed evaluation sets. A Spearman correlation near 1 means the critic's loss",
        "ranks the run's checkpoints as exact W1 does. Wall time of ours includes what the reference",
        "does not do: plots, metrics files, TensorBoard and a checkpoint per period.",
        "",
    ]
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--iterations", type=int, default=T.TOY_DEFAULTS["iterations"])
    p.add_argument("--out", default=os.path.join(HERE, "QUALITY.md"))
    p.add_argument("--runs-dir", default=None, help="keep the run folders here (default: a temp folder)")
    p.add_argument("--no-replay", action="store_true", help="skip the replay of the first seed")
    p.add_argument("--json", default=None, help="also save the results here (re-render with --render)")
    p.add_argument("--render", default=None, metavar="JSON", help="only write --out from saved results")
    args = p.parse_args(argv)
    if args.render:
        with open(args.render, encoding="utf-8") as f:
            saved = json.load(f)
        results, iterations = saved["results"], saved["iterations"]
    else:
        results, iterations = _run_all(args), args.iterations
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"iterations": iterations, "results": results}, f, indent=1)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(render(results, iterations))
    print(f"wrote {args.out}")
    return 0


def _run_all(args: argparse.Namespace) -> List[Dict[str, object]]:
    results: List[Dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = args.runs_dir or tmp
        for i, seed in enumerate(args.seeds):
            ours = run_ours(seed, args.iterations, runs_dir)
            jobs = [lambda: ours, lambda: run_reference(seed, args.iterations)]
            if i == 0 and not args.no_replay:
                jobs.append(lambda: run_reference(seed, args.iterations, replay=True))
            for job in jobs:
                r = job()
                if r["method"].endswith("replay"):  # type: ignore[union-attr]
                    mine, theirs = ours["final_generator"], r["final_generator"]
                    r["replay_identical"] = all(torch.equal(mine[k], v) for k, v in theirs.items())  # type: ignore[index]
                r["w1_last5"] = _last5(r["w1_curve"])  # type: ignore[arg-type]
                r["hq_last5"] = _last5(r["hq_curve"])  # type: ignore[arg-type]
                print(f"{r['method']:<40} seed {seed}: W1 {_f(r['w1'], '.4f')}  last-5 {r['w1_last5']:.4f}  "
                      f"modes {r['modes']}  within 3 std {100 * float(r['high_quality']):.0f}%  "
                      f"Spearman {_f(r['spearman'], '.2f')}  {r['wall_s']:.0f} s", flush=True)
                results.append(r)
    for r in results:
        r.pop("final_generator", None)  # tensors: compared above, not reported
    return results


if __name__ == "__main__":
    sys.exit(main())
