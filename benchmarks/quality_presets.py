"""Quality of the two presets, ``wgan-ext train`` (8 gaussians) and ``wgan-ext train --dataset
digits``, over seeds: the tables at the top of ``benchmarks/QUALITY.md``.

Usage (from the repository root; each run takes a few minutes on 2 CPU cores)::

    # train: one run folder per seed (run two of these at once on 2 cores, one thread each)
    PYTHONPATH=. python benchmarks/quality_presets.py train --dataset digits --seeds 0 1 2 --runs-dir runs/quality
    # report: read every runs/quality/<dataset>-seed<N>/summary.json into QUALITY.md's tables
    PYTHONPATH=. python benchmarks/quality_presets.py report --runs-dir runs/quality

Each run is the preset exactly as the command line runs it (only ``--seed``, ``--out`` and
``--threads`` set). The report reads only the runs' ``summary.json`` files.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import sys
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HERE = os.path.dirname(os.path.abspath(__file__))
PRESETS = ("8gaussians", "digits")
BEGIN, END = "<!-- presets -->", "<!-- /presets -->"


def train(dataset: str, seeds: List[int], runs_dir: str, threads: int) -> None:
    from wgan_ext import train as T

    for seed in seeds:
        out = os.path.join(runs_dir, f"{dataset}-seed{seed}")
        t0 = time.perf_counter()
        res = T.run(T.TrainConfig(dataset=dataset, seed=seed, out=out, threads=threads), progress=False, quiet=True)
        print(f"{dataset} seed {seed}: {time.perf_counter() - t0:.0f} s, {res.out}", flush=True)


def _f(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _span(values: List[float], spec: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    lo, hi = min(values), max(values)
    return format(lo, spec) if format(lo, spec) == format(hi, spec) else f"{format(lo, spec)}-{format(hi, spec)}"


def _table(dataset: str, runs: List[Dict[str, Any]]) -> str:
    cfg = runs[0]["config"]
    lines = [f"### `wgan-ext train{'' if dataset == '8gaussians' else ' --dataset ' + dataset}`", "",
             f"Settings: weight clipping c = {cfg['c']}, n_critic = {cfg['n_critic']}, RMSProp lr = {cfg['lr']}"
             f"{' decaying linearly to 0' if cfg.get('lr_decay') == 'linear' else ''}, "
             f"batch m = {cfg['batch_size']}, {cfg['iterations']} generator iterations, ReLU MLPs: critic {cfg['n_hidden']} x "
             f"{cfg['hidden']}, generator {cfg['n_hidden']} x {cfg.get('generator_hidden') or cfg['hidden']}"
             f"{' with batch norm' if cfg.get('batchnorm') else ''}, noise dim {cfg['encoding_dims']}; scored every "
             f"{cfg['log_every']} generator iterations on {cfg['eval_samples']} fixed samples; {cfg['threads']} torch "
             "thread(s).", ""]
    if dataset == "digits":
        head = ("| seed | final digit FD | FD, mean of last 5 | FD floor (real vs real) | classes covered (of 10) | "
                "classes, last 5 | confident | Spearman(critic est., FD) | exact W1 (pixels) | wall time (s) |")
        lines += [head, "|---" * (head.count("|") - 1) + "|"]
        for r in runs:
            s, f, last = r["summary"], r["summary"]["final"], r["summary"]["last_evaluations"]
            lines.append(f"| {r['seed']} | {_f(f['fd'], '.2f')} | {_f(last['fd_mean'], '.2f')} | {_f(s['fd_floor'], '.2f')} | "
                         f"{f['classes']} | {last['classes_min']:.0f}-{last['classes_max']:.0f} | "
                         f"{100 * f['confident']:.0f}% | {_f(s['spearman_critic_fd'], '.2f')} | {_f(f['w1'], '.2f')} | "
                         f"{s['wall_time_s']:.0f} |")
        col = lambda k: [r["summary"]["final"][k] for r in runs]  # noqa: E731
        lines += ["", f"Range over {len(runs)} seeds: final digit FD {_span(col('fd'), '.1f')} "
                  f"(floor {_span([r['summary']['fd_floor'] for r in runs], '.2f')}), classes covered "
                  f"{_span(col('classes'), '.0f')} (last 5 evaluations: "
                  f"{_span([r['summary']['last_evaluations']['classes_min'] for r in runs], '.0f')} at the fewest), "
                  f"confident {_span([100 * v for v in col('confident')], '.0f')}%, Spearman(critic est., FD) "
                  f"{_span([r['summary']['spearman_critic_fd'] for r in runs], '.2f')}, wall time "
                  f"{_span([r['summary']['wall_time_s'] for r in runs], '.0f')} s."]
    else:
        head = ("| seed | final exact W1 | W1, mean of last 5 | W1 floor | modes covered (of 8) | modes, last 5 | "
                "within 3 std, mean of last 5 | Spearman(critic est., W1) | wall time (s) |")
        lines += [head, "|---" * (head.count("|") - 1) + "|"]
        for r in runs:
            s, f, last = r["summary"], r["summary"]["final"], r["summary"]["last_evaluations"]
            lines.append(f"| {r['seed']} | {f['w1']:.4f} | {last['w1_mean']:.4f} | {s['w1_floor']:.4f} | {f['modes']} | "
                         f"{last['modes_min']:.0f}-{last['modes_max']:.0f} | {100 * last['high_quality_mean']:.0f}% | "
                         f"{_f(s['spearman_critic_w1'], '.2f')} | {s['wall_time_s']:.0f} |")
        col = lambda k: [r["summary"]["final"][k] for r in runs]  # noqa: E731
        lines += ["", f"Range over {len(runs)} seeds: final exact W1 {_span(col('w1'), '.3f')}, modes covered "
                  f"{_span(col('modes'), '.0f')} (last 5 evaluations: "
                  f"{_span([r['summary']['last_evaluations']['modes_min'] for r in runs], '.0f')} at the fewest), "
                  f"Spearman(critic est., W1) {_span([r['summary']['spearman_critic_w1'] for r in runs], '.2f')}, "
                  f"wall time {_span([r['summary']['wall_time_s'] for r in runs], '.0f')} s."]
    return "\n".join(lines)


def report(runs_dir: str, out: str, note: str) -> None:
    import torch

    sections = []
    for dataset in PRESETS:
        runs = []
        for path in sorted(glob.glob(os.path.join(runs_dir, f"{dataset}-seed*", "summary.json"))):
            folder = os.path.dirname(path)
            runs.append({"seed": int(re.search(r"seed(\d+)$", folder).group(1)),
                         "summary": json.load(open(path)), "config": json.load(open(os.path.join(folder, "config.json")))})
        if runs:
            runs.sort(key=lambda r: r["seed"])
            sections.append(_table(dataset, runs))
    body = "\n\n".join([
        f"Written by `benchmarks/quality_presets.py` on {time.strftime('%Y-%m-%d')} ({platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}). {note}".rstrip(),
        *sections,
    ])
    text = open(out).read() if os.path.exists(out) else ""
    block = f"{BEGIN}\n{body}\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = block + "\n\n" + text
    with open(out, "w") as f:
        f.write(text)
    print(body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--dataset", choices=PRESETS, required=True)
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    t.add_argument("--runs-dir", default="runs/quality")
    t.add_argument("--threads", type=int, default=1)
    r = sub.add_parser("report")
    r.add_argument("--runs-dir", default="runs/quality")
    r.add_argument("--out", default=os.path.join(HERE, "QUALITY.md"))
    r.add_argument("--note", default="", help="how the machine was loaded, etc.")
    args = p.parse_args()
    if args.command == "train":
        train(args.dataset, args.seeds, args.runs_dir, args.threads)
    else:
        report(args.runs_dir, args.out, args.note)


if __name__ == "__main__":
    main()
