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


# Each preset's columns between "seed" and "wall time (s)": (header, cell from a run's summary s,
# its final evaluation f and its last-5-evaluations block last).
_COLUMNS = {
    "digits": [
        ("final digit FD", lambda s, f, last: _f(f["fd"], ".2f")),
        ("FD, mean of last 5", lambda s, f, last: _f(last["fd_mean"], ".2f")),
        ("FD floor (real vs real)", lambda s, f, last: _f(s["fd_floor"], ".2f")),
        ("classes covered (of 10)", lambda s, f, last: f"{f['classes']}"),
        ("classes, last 5", lambda s, f, last: f"{last['classes_min']:.0f}-{last['classes_max']:.0f}"),
        ("confident", lambda s, f, last: f"{100 * f['confident']:.0f}%"),
        ("Spearman(critic est., FD), period means", lambda s, f, last: _f(s["spearman_critic_fd"], ".2f")),
        ("at the evaluations", lambda s, f, last: _f(s.get("spearman_critic_fd_at_evaluations"), ".2f")),
        ("exact W1 (pixels)", lambda s, f, last: _f(f["w1"], ".2f")),
    ],
    "8gaussians": [
        ("final exact W1", lambda s, f, last: f"{f['w1']:.4f}"),
        ("W1, mean of last 5", lambda s, f, last: f"{last['w1_mean']:.4f}"),
        ("W1 floor", lambda s, f, last: f"{s['w1_floor']:.4f}"),
        ("modes covered (of 8)", lambda s, f, last: f"{f['modes']}"),
        ("modes, last 5", lambda s, f, last: f"{last['modes_min']:.0f}-{last['modes_max']:.0f}"),
        ("within 3 std, mean of last 5", lambda s, f, last: f"{100 * last['high_quality_mean']:.0f}%"),
        ("Spearman(critic est., W1), period means", lambda s, f, last: _f(s["spearman_critic_w1"], ".2f")),
        ("at the evaluations", lambda s, f, last: _f(s.get("spearman_critic_w1_at_evaluations"), ".2f")),
    ],
}


def _table(dataset: str, runs: List[Dict[str, Any]]) -> str:
    cfg = runs[0]["config"]
    score = "exact W1" if dataset == "8gaussians" else "the digit FD"
    lines = [f"### `wgan-ext train{'' if dataset == '8gaussians' else ' --dataset ' + dataset}`", "",
             f"Settings: weight clipping c = {cfg['c']}, n_critic = {cfg['n_critic']}, RMSProp lr = {cfg['lr']}"
             f"{' decaying linearly to 0' if cfg.get('lr_decay') == 'linear' else ''}, "
             f"batch m = {cfg['batch_size']}, {cfg['iterations']} generator iterations, ReLU MLPs: critic {cfg['n_hidden']} x "
             f"{cfg['hidden']}, generator {cfg['n_hidden']} x {cfg.get('generator_hidden') or cfg['hidden']}"
             f"{' with batch norm' if cfg.get('batchnorm') else ''}, noise dim {cfg['encoding_dims']}; evaluated every "
             f"{cfg['log_every']} generator iterations on {cfg['eval_samples']} fixed samples, {score} also every "
             f"{cfg.get('score_every') or cfg['log_every']} for the period means; {cfg['threads']} torch thread(s).", ""]
    columns = _COLUMNS[dataset]
    heads = ["seed"] + [head for head, _ in columns] + ["wall time (s)"]
    lines += ["| " + " | ".join(heads) + " |", "|---" * len(heads) + "|"]
    for r in runs:
        s = r["summary"]
        cells = [cell(s, s["final"], s["last_evaluations"]) for _, cell in columns]
        lines.append("| " + " | ".join([str(r["seed"]), *cells, f"{s['wall_time_s']:.0f}"]) + " |")

    def span(get: Any, spec: str) -> str:  # the range of get(summary) over the runs
        return _span([get(r["summary"]) for r in runs], spec)

    if dataset == "digits":
        summary = (f"final digit FD {span(lambda s: s['final']['fd'], '.1f')} (floor "
                   f"{span(lambda s: s['fd_floor'], '.2f')}), classes covered {span(lambda s: s['final']['classes'], '.0f')} "
                   f"(last 5 evaluations: {span(lambda s: s['last_evaluations']['classes_min'], '.0f')} at the fewest), "
                   f"confident {span(lambda s: 100 * s['final']['confident'], '.0f')}%, Spearman(critic est., FD) "
                   f"{span(lambda s: s['spearman_critic_fd'], '.2f')} over period means "
                   f"({span(lambda s: s.get('spearman_critic_fd_at_evaluations'), '.2f')} at the evaluations)")
    else:
        summary = (f"final exact W1 {span(lambda s: s['final']['w1'], '.3f')}, modes covered "
                   f"{span(lambda s: s['final']['modes'], '.0f')} (last 5 evaluations: "
                   f"{span(lambda s: s['last_evaluations']['modes_min'], '.0f')} at the fewest), "
                   f"Spearman(critic est., W1) {span(lambda s: s['spearman_critic_w1'], '.2f')} over period means "
                   f"({span(lambda s: s.get('spearman_critic_w1_at_evaluations'), '.2f')} at the evaluations)")
    lines += ["", f"Range over {len(runs)} seeds: {summary}, wall time {span(lambda s: s['wall_time_s'], '.0f')} s."]
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
