"""One run of Algorithm 1 as a plain loop (:func:`wgan_ext.reference.algorithm1`), for choosing
presets quickly: the networks, data, lr decay, evaluation and scores of ``wgan-ext train`` without
torchgan, plots or checkpoints. The notes on ``TOY_DEFAULTS`` and ``DIGITS_DEFAULTS`` in
``wgan_ext/train_config.py`` were measured with it; a chosen preset is then measured through
``wgan-ext train`` itself by ``quality_presets.py``.

Usage (from the repository root; one torch thread, so run two at once on 2 cores)::

    PYTHONPATH=. python benchmarks/preset_sweep.py --gh 256 --ch 128 --m 256 --lr 2e-4 --decay linear \\
        --its 8000 --every 400 --seed 2
    PYTHONPATH=. python benchmarks/preset_sweep.py --dataset digits --gh 256 --ch 256 --z 100 --batchnorm \\
        --lr 2e-4 --its 3000 --every 250 --seed 0

It prints one line (modes or classes covered at the end and over the last 5 evaluations, the
final score, Spearman(critic estimate, score)) and appends every evaluation to ``--out`` (JSON lines).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wgan_ext import data as D  # noqa: E402
from wgan_ext import metrics as M  # noqa: E402
from wgan_ext.networks import MLPCritic, MLPGenerator  # noqa: E402
from wgan_ext.optim import ClippedRMSprop  # noqa: E402
from wgan_ext.reference import algorithm1  # noqa: E402
from wgan_ext.train_setup import lr_factor  # noqa: E402
from wgan_ext.train_eval import Evaluator  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="8gaussians", choices=D.DATASETS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gh", type=int, default=128, help="generator units per hidden layer")
    p.add_argument("--ch", type=int, default=128, help="critic units per hidden layer")
    p.add_argument("--batchnorm", action="store_true", help="batch norm in the generator")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--decay", choices=("none", "linear"), default="none")
    p.add_argument("--m", type=int, default=64, help="batch size")
    p.add_argument("--its", type=int, default=3000, help="generator iterations")
    p.add_argument("--every", type=int, default=250, help="evaluate every N generator iterations")
    p.add_argument("--z", type=int, default=2, help="noise dimension")
    p.add_argument("--out", default="preset_sweep.jsonl")
    a = p.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    src = D.make_source(a.dataset)
    toy = a.dataset in D.TOY_DATASETS
    G = MLPGenerator(a.z, src.shape, a.gh, 3, tanh=not toy, batchnorm=a.batchnorm)
    C = MLPCritic(src.shape, a.ch, 3)
    opt_g = torch.optim.RMSprop(G.parameters(), lr=a.lr)
    opt_c = ClippedRMSprop(C.parameters(), lr=a.lr, clip=0.01)  # RMSProp, then clip to [-0.01, 0.01]
    stream = D.BatchStream(src, a.m, a.seed)
    ev = Evaluator(src, 512, a.seed, a.z, torch.device("cpu"))
    rows, seen, t0 = [], [0], time.time()

    def after(g: int, res) -> None:  # after generator iteration g + 1: its lr, and a score every --every
        for opt in (opt_g, opt_c):
            opt.param_groups[0]["lr"] = a.lr * lr_factor(a.decay, g + 1, a.its)
        if (g + 1) % a.every == 0:
            estimates = res.wasserstein[seen[0]:]
            seen[0] = len(res.wasserstein)
            row, _ = ev(G, C)
            row.update(gen_iter=g + 1, critic_w=sum(estimates) / len(estimates))
            rows.append(row)

    # c=None: the critic's optimizer clips (ClippedRMSprop), as the job's default does
    algorithm1(G, C, lambda: stream.take(1)[0], lambda m: torch.randn(m, a.z), n_gen_iters=a.its, n_critic=5,
               c=None, batch_size=a.m, optimizer_generator=opt_g, optimizer_critic=opt_c, callback=after)
    key, cover = ("w1", "modes") if toy else ("fd", "classes")
    rho = M.spearman([r["critic_w"] for r in rows], [r[key] for r in rows])
    last = [int(r[cover]) for r in rows[-5:]]
    line = (f"{a.dataset} seed {a.seed}: {cover} {last[-1]} at the end, {min(last)}-{max(last)} over the last 5; "
            f"{key} {rows[-1][key]:.3f}; Spearman(critic estimate, {key}) {rho:.2f}; {time.time() - t0:.0f} s")
    print(line, flush=True)
    with open(a.out, "a") as f:
        f.write(json.dumps({"args": vars(a), "spearman": rho, "rows": rows}, default=float) + "\n")


if __name__ == "__main__":
    main()
