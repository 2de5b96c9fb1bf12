"""Turn pytest-benchmark JSON from the wgan-ext suite into benchmarks/RESULTS.md.

    python benchmarks/make_results.py --cpu cpu.json                 # (re)write the CPU section
    python benchmarks/make_results.py --gpu gpu.json --launches launches.json --extra gpu_extra.json

Each run fills its own section of the output (between ``<!-- cpu:begin -->`` / ``<!-- cpu:end -->``
or the gpu markers) and keeps the other one, so the CPU and GPU numbers can come from different
machines while every ratio inside a section comes from one run, side by side.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "RESULTS.md"

CLIP_COLS = ("limit", "fused_op", "fused_plan", "fused_flat", "fused_module", "fallback", "foreach",
             "loop", "compiled_loop")
STEP_COLS = ("none", "loop", "fused_module", "fused_plan", "fused_flat")
SHAPE_ORDER = ("dcgan64", "mlp3x512", "small800", "large", "tiny800")
SHAPE_NOTES = {
    "dcgan64": "torchgan DCGANDiscriminator(in_size=64)",
    "mlp3x512": "paper MLP critic, 64*64*3 -> 3 x 512 -> 1",
    "small800": "200 residual LayerNorm+Linear(64) blocks",
    "large": "Linear(d, d) stack (6 x 4096 on CUDA, 10 x 1024 on CPU)",
    "tiny800": "800 one-element parameters (not a critic: per-tensor overhead alone)",
}
PROBES = ("tiny800",)  # not critics: left out of the targets
# HBM bandwidth from the spec sheets, GB/s (what a copy reaches is measured in each run).
PEAKS = (
    ("H200", 4800.0),
    ("H100 PCIe", 2000.0),
    ("H100 NVL", 3900.0),
    ("H100", 3350.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100-SXM4-80GB", 2039.0),
    ("A100", 1555.0),
)
BIG = ("dcgan64", "mlp3x512", "large")  # critics of a few big tensors


def load(path):
    with open(path) as f:
        data = json.load(f)
    rows = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "kind" not in info:
            continue
        key = (info["kind"], info["device"], info["shape"], info["dtype"], info["contender"])
        rows[key] = dict(info, stats=b["stats"])
    return data, rows


def us(row, stat):
    return row["stats"][stat] * 1e6


def fmt_t(v):
    if v is None:
        return "–"
    if v >= 10_000:
        return f"{v / 1000:,.1f} ms"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def fmt_x(v):
    return "–" if v is None else (f"{v:.2f}x" if v < 10 else f"{v:.0f}x")


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def machine_lines(data, device):
    mi = data.get("machine_info", {})
    wb = mi.get("wgan_ext_bench", {})
    cpu = mi.get("cpu", {})
    ci = data.get("commit_info", {})
    lines = [
        f"- Run: {data.get('datetime', '?')[:19]} UTC, commit {str(ci.get('id', '?'))[:10]}"
        f"{' (dirty tree)' if ci.get('dirty') else ''}, pytest-benchmark {data.get('version', '?')}",
        f"- Machine: {cpu.get('brand_raw', mi.get('processor') or '?')}, "
        f"{cpu.get('count', '?')} logical CPUs, torch threads {wb.get('threads', '?')}; "
        f"Python {mi.get('python_version', '?')}",
        f"- torch {wb.get('torch', '?')}, CUDA (torch build) {wb.get('cuda')}, "
        f"wgan-ext {wb.get('wgan_ext', '?')}",
    ]
    if device == "cuda":
        lines.append(f"- GPU: {', '.join(wb.get('gpus', ['?']))}")
    for dev, k in wb.get("kernels", {}).items():
        state = f"loaded ({k['info']})" if k.get("loaded") else f"UNAVAILABLE: {k.get('info')}"
        lines.append(f"- Compiled {dev} kernel: {state}")
    return lines


def paired(rows, device, shape, dtype, contender, stat):
    """contender / limit: the per-round paired median if recorded, else a ratio of ``stat``s."""
    r = rows.get(("clip", device, shape, dtype, contender))
    if r is None:
        return None
    if contender == "limit":
        return 1.0
    if r.get("paired_ratio"):
        return r["paired_ratio"]
    limit = rows.get(("clip", device, shape, dtype, "limit"))
    return ratio(r["stats"][stat], limit["stats"][stat]) if limit else None


def clip_section(rows, device, stat):
    out = []
    keys = sorted({(k[2], k[3]) for k in rows if k[0] == "clip" and k[1] == device},
                  key=lambda sd: (sd[1] != "float32", SHAPE_ORDER.index(sd[0])
                                  if sd[0] in SHAPE_ORDER else 99))
    if not keys:
        return out, {}

    def t(shape, dtype, c):
        r = rows.get(("clip", device, shape, dtype, c))
        return us(r, stat) if r else None

    out += [f"Times: {stat} microseconds per call. – = not run (compiled_loop: float32 and the "
            "--bench-compile shapes only; fused_*: compiled kernel unavailable).", "",
            "| critic | dtype | tensors | params | " + " | ".join(CLIP_COLS) + " |",
            "|---|---|--:|--:|" + "--:|" * len(CLIP_COLS)]
    for shape, dtype in keys:
        any_row = next(r for k, r in rows.items() if k[:4] == ("clip", device, shape, dtype))
        n = any_row["numel"]
        params = f"{n / 1e6:.2f} M" if n >= 10_000 else str(n)
        out.append(f"| {shape} | {dtype} | {any_row['tensors']} | {params} | "
                   + " | ".join(fmt_t(t(shape, dtype, c)) for c in CLIP_COLS) + " |")
    out += ["", "Ratios, paired per round: every timed round of a contender follows one timed call "
            "of `limit` on the same bytes, and x/limit is the median over rounds of the pair's "
            "ratio (robust to load drift); a ratio between two contenders is the quotient of "
            "their x/limit. Lower is better for x/limit, higher for loop/x and foreach/x.", "",
            "| critic | dtype | op/limit | plan/limit | flat/limit | module/limit | loop/module "
            "| loop/plan | loop/flat | loop/op | foreach/op | fallback/module | compiled/module |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    summary = {}
    for shape, dtype in keys:
        g = {c: paired(rows, device, shape, dtype, c, stat) for c in CLIP_COLS}
        r = {
            "op/limit": g["fused_op"],
            "plan/limit": g["fused_plan"],
            "flat/limit": g["fused_flat"],
            "module/limit": g["fused_module"],
            "loop/module": ratio(g["loop"], g["fused_module"]),
            "loop/plan": ratio(g["loop"], g["fused_plan"]),
            "loop/flat": ratio(g["loop"], g["fused_flat"]),
            "loop/op": ratio(g["loop"], g["fused_op"]),
            "foreach/op": ratio(g["foreach"], g["fused_op"]),
            "fallback/module": ratio(g["fallback"], g["fused_module"]),
            "compiled/module": ratio(g["compiled_loop"], g["fused_module"]),
        }
        out.append(f"| {shape} | {dtype} | " + " | ".join(fmt_x(v) for v in r.values()) + " |")
        r["loop/limit"] = g["loop"]  # the ceiling of any loop/x: not a table column
        summary[(shape, dtype)] = r
    return out, summary


def peak_for(name, override):
    if override:
        return override, "given on the command line"
    for key, spec in PEAKS:
        if key in name:
            return spec, f"{key} spec sheet"
    return None, "unknown device"


def bandwidth_section(rows, stat, peak_override):
    out = []
    keys = sorted({(k[2], k[3]) for k in rows if k[0] == "clip" and k[1] == "cuda"},
                  key=lambda sd: (SHAPE_ORDER.index(sd[0]) if sd[0] in SHAPE_ORDER else 99,
                                  sd[1] != "float32"))
    if not keys:
        return out
    name = next(r["device_name"] for k, r in rows.items() if k[1] == "cuda")
    spec, src = peak_for(name, peak_override)
    out += [f"Achieved bandwidth, bytes = 2 x numel x itemsize (read + write). `wall`: {stat} of one "
            "synchronised call (launch + sync included); `dev`: back-to-back calls timed with CUDA "
            "events. `copy` is a device-to-device `copy_` of the same bytes measured in this run.",
            f"Peak for {name}: "
            + (f"{spec:,.0f} GB/s ({src})" if spec else "unknown (pass --peak-gbs)")
            + ".", "",
            "| critic | dtype | contender | wall GB/s | dev GB/s | dev % of spec | "
            "dev % of run's copy | run's copy GB/s |",
            "|---|---|---|--:|--:|--:|--:|--:|"]
    for shape, dtype in keys:
        limit = rows.get(("clip", "cuda", shape, dtype, "limit"))
        copy_gbs = None
        for c in ("limit", "fused_op", "fused_plan", "fused_flat", "fused_module"):
            r = rows.get(("clip", "cuda", shape, dtype, c))
            if r is None:
                continue
            nbytes = 2 * r["numel"] * r["itemsize"]
            wall = nbytes / (r["stats"][stat]) / 1e9
            dev = nbytes / (r["device_us"] * 1e-6) / 1e9 if r.get("device_us") else None
            if limit and limit.get("copy_device_us"):
                copy_gbs = nbytes / (limit["copy_device_us"] * 1e-6) / 1e9
            pct = f"{100 * dev / spec:.0f} %" if dev and spec else "–"
            pct_copy = f"{100 * dev / copy_gbs:.0f} %" if dev and copy_gbs else "–"
            out.append(f"| {shape} | {dtype} | {c} | {wall:,.0f} | "
                       f"{'–' if dev is None else f'{dev:,.0f}'} | {pct} | {pct_copy} | "
                       f"{'–' if copy_gbs is None else f'{copy_gbs:,.0f}'} |")
    return out


def step_section(rows, device, stat):
    keys = sorted({k[2] for k in rows if k[0] == "step" and k[1] == device},
                  key=lambda s: SHAPE_ORDER.index(s) if s in SHAPE_ORDER else 99)
    if not keys:
        return []
    batch = next(r["batch"] for k, r in rows.items() if k[0] == "step" and k[1] == device)
    host = " (host time: on CUDA the clip's launches, its kernels run asynchronously)"
    out = [f"Whole critic step, float32, batch {batch}: forward real + fake, backward, "
           f"RMSprop(lr=5e-5) step, clip; {stat} ms per step. The clip call is also timed inside "
           f"every step{host if device == 'cuda' else ''}: `clip us` is its median and `share` "
           "the median over steps of clip time / step time.", "",
           "| critic | no clip | loop | fused_module | fused_plan | fused_flat | loop clip us (share) "
           "| module clip us (share) | plan clip us (share) | flat clip us (share) "
           "| loop step / flat step |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]

    def get(shape, c):
        return rows.get(("step", device, shape, "float32", c))

    def ms(shape, c):
        r = get(shape, c)
        return r["stats"][stat] * 1e3 if r else None

    def clip(shape, c):
        r = get(shape, c)
        if r is None or "clip_us" not in r:
            return "–"
        return f"{fmt_t(r['clip_us'])} ({100 * r['clip_share']:.1f} %)"

    for shape in keys:
        vals = [ms(shape, c) for c in STEP_COLS]
        out.append(f"| {shape} | " + " | ".join("–" if v is None else f"{v:,.2f}" for v in vals)
                   + f" | {clip(shape, 'loop')} | {clip(shape, 'fused_module')} | "
                   f"{clip(shape, 'fused_plan')} | {clip(shape, 'fused_flat')} | "
                   f"{fmt_x(ratio(ms(shape, 'loop'), ms(shape, 'fused_flat')))} |")
    return out


def _met(ok):
    return "**met**" if ok else "**missed**"


def targets_cpu(summary, optim):
    out = ["Targets (from the issues; measured here, not asserted in tests):", ""]
    summary = {sd: r for sd, r in summary.items() if sd[0] not in PROBES}
    small = {d: r for (s, d), r in summary.items() if s == "small800"}
    for label, key, want in (("fused_clip_(critic, c)", "loop/module", 5.0),
                             ("FusedClipper()", "loop/plan", 20.0)):
        vals = {d: r[key] for d, r in small.items() if r[key] is not None}
        out.append(f"- {label} at least {want:g}x faster than the loop on small800: "
                   + (", ".join(f"{d} {v:.1f}x ({_met(v >= want)})" for d, v in vals.items())
                      or "not measured"))
    slow = {sd: r["loop/module"] for sd, r in summary.items() if r["loop/module"] is not None}
    if slow:
        worst_sd, worst = min(slow.items(), key=lambda kv: kv[1])
        out.append(f"- fused_clip_(critic, c) never slower than the loop: "
                   f"{_met(worst >= 1)} (slowest relative to the loop: {1 / worst:.2f}x the "
                   f"loop's time, {worst_sd[0]} {worst_sd[1]})")
    big = {sd: r["plan/limit"] for sd, r in summary.items() if sd[0] in BIG and r["plan/limit"] is not None}
    if big:
        worst_sd, worst = max(big.items(), key=lambda kv: kv[1])
        out.append(f"- FusedClipper() within 1.3x of one clamp_ over a flat buffer on critics of big "
                   f"tensors: {_met(worst <= 1.3)} (worst {worst:.2f}x, {worst_sd[0]} {worst_sd[1]})")
    ceiling = {d: r["loop/limit"] for d, r in small.items() if r.get("loop/limit") is not None}
    if ceiling:
        out.append("- ceiling on this machine: the flat limit itself is "
                   + ", ".join(f"{d} {v:.0f}x" for d, v in ceiling.items())
                   + " faster than the loop on small800 (no clip can beat the limit)")
    ten = optim.get("flat10m", {}).get("clipped_rmsprop")
    if ten is not None:
        out.append(f"- ClippedRMSprop.step() at least 3x faster than RMSprop(foreach=True) + fused_clip_ "
                   f"at 10 M parameters: {1 / ten:.2f}x ({_met(1 / ten >= 3)})")
    traffic = optim.get("flat10m", {}).get("traffic_ratio")
    if traffic is not None:
        out.append(f"- ClippedRMSprop within 1.2x of one pass over its memory (read p, g, v; write p, v) "
                   f"at 10 M parameters: {traffic:.2f}x ({_met(traffic <= 1.2)})")
    return out


def targets_gpu(summary, launches, optim, extra):
    out = ["Targets (from the issues; measured here, not asserted in tests):", ""]
    summary = {sd: r for sd, r in summary.items() if sd[0] not in PROBES}
    if launches:
        fused = [r for r in launches["rows"] if r["method"].startswith("fused")]
        counts = sorted({r["kernels_per_call"] for r in fused})
        out.append("- one kernel launch per call per dtype, whatever the tensor count: "
                   + _met(counts == [1.0]) + f" (kernels per call seen: {counts}; profiler, table below)")
    else:
        out.append("- one kernel launch per call: not profiled (run profile_launches.py)")
    for row in (extra or {}).get("bandwidth", []):
        if row["size"] in ("10M", "100M"):
            ms, bw = row["ms"], row["GB/s"]
            r = ms["FusedClipper()"] / ms["flat clamp_"]
            pct = bw["FusedClipper()"] / bw["copy"]
            out.append(f"- FusedClipper() within 1.1x of the flat clamp_ at {row['size']} {row['dtype']}: "
                       f"{r:.2f}x ({_met(r <= 1.1)}), {100 * pct:.0f} % of the copy bandwidth "
                       f"({_met(pct >= 0.9)} 90 %)")
    vals = {d: r["loop/plan"] for (s, d), r in summary.items() if s == "small800" and r["loop/plan"] is not None}
    if vals:
        out.append("- FusedClipper() at least 20x faster than the loop per call on small800: " + ", ".join(
            f"{d} {v:.0f}x ({_met(v >= 20)})" for d, v in vals.items()))
    for row in (extra or {}).get("steps", []):
        if "captured / eager" in row and row["critic"].startswith("mlp"):
            out.append(f"- a captured critic step of the toy MLP at least 3x the eager step rate: "
                       f"{row['captured / eager']:.1f}x ({_met(row['captured / eager'] >= 3)})")
    traffic = optim.get("flat10m", {}).get("traffic_ratio")
    if traffic is not None:
        out.append(f"- ClippedRMSprop within 1.2x of one pass's memory traffic at 10 M parameters: "
                   f"{traffic:.2f}x ({_met(traffic <= 1.2)})")
    return out


def optim_section(rows, device, stat):
    """The critic update (RMSprop + clip) per critic: times, and ratios to the baseline
    (RMSprop(foreach=True) + fused_clip_), paired per round."""
    keys = sorted({k[2] for k in rows if k[0] == "optim" and k[1] == device},
                  key=lambda s: SHAPE_ORDER.index(s) if s in SHAPE_ORDER else 98)
    if not keys:
        return [], {}
    cols = ("clipped_rmsprop", "clipped_fallback", "foreach_fused_clip", "single_loop", "compiled",
            "one_pass")
    out = [f"`ClippedRMSprop.step()` (fused) against `RMSprop(foreach=True).step()` + `fused_clip_` "
           f"(the baseline), `ClippedRMSprop(fused=False)` (RMSprop's step then `fused_clip_`), "
           f"`RMSprop(foreach=False)` + the loop, a `torch.compile`d RMSprop + loop, and `one_pass`, a "
           f"`copy_` moving the bytes of one pass over p, g, v (flat10m only); float32, "
           f"{stat} ms per step, then baseline / contender paired per round (higher is faster).", "",
           "| critic | " + " | ".join(cols) + " | " + " | ".join(f"baseline/{c}" for c in cols if c != "foreach_fused_clip") + " |",
           "|---|" + "--:|" * (2 * len(cols) - 1)]
    summary = {}
    for shape in keys:
        def row(c):
            return rows.get(("optim", device, shape, "float32", c))
        times = [f"{us(row(c), stat) / 1e3:,.2f}" if row(c) else "–" for c in cols]
        ratios = {}
        for c in cols:
            r = row(c)
            if r is not None and c != "foreach_fused_clip":
                ratios[c] = r.get("paired_ratio") or ratio(r["stats"][stat], row("foreach_fused_clip")["stats"][stat])
        traffic = (row("clipped_rmsprop") or {}).get("traffic_ratio")
        if traffic is None and ratios.get("one_pass") and ratios.get("clipped_rmsprop"):
            traffic = ratios["clipped_rmsprop"] / ratios["one_pass"]  # CPU: against the copy_ contender
        summary[shape] = dict(ratios, traffic_ratio=traffic)
        out.append(f"| {shape} | " + " | ".join(times) + " | "
                   + " | ".join(fmt_x(1 / ratios[c]) if ratios.get(c) else "–" for c in cols if c != "foreach_fused_clip")
                   + " |")
    return out, summary


def extra_section(extra):
    if not extra:
        return []
    out = [f"`benchmarks/gpu_extra.py` on {extra['device_name']}, torch {extra['torch']}: device time "
           "(CUDA events, back-to-back calls) against one `clamp_` over a flat buffer and a "
           "device-to-device copy of the same bytes (GB/s = 2 x bytes / time: read + write).", "",
           "| params | dtype | copy us | flat clamp_ us | FusedClipper us | fused_clip_ us | FusedClipper GB/s "
           "(% of copy) | FusedClipper / flat |",
           "|---|---|--:|--:|--:|--:|--:|--:|"]
    for r in extra["bandwidth"]:
        ms, bw = r["ms"], r["GB/s"]
        out.append(f"| {r['size']} | {r['dtype']} | {ms['copy'] * 1e3:,.1f} | {ms['flat clamp_'] * 1e3:,.1f} | "
                   f"{ms['FusedClipper()'] * 1e3:,.1f} | {ms['fused_clip_(critic, c)'] * 1e3:,.1f} | "
                   f"{bw['FusedClipper()']:,.0f} ({100 * bw['FusedClipper()'] / bw['copy']:.0f} %) | "
                   f"{ms['FusedClipper()'] / ms['flat clamp_']:.2f}x |")
    out += ["", "Whole critic step (batch 64; RMSprop(capturable=True) and FusedClipper), eager against "
            "captured with `torch.cuda.graph` and replayed:", "",
            "| critic | eager steps/s | captured steps/s | captured / eager |", "|---|--:|--:|--:|"]
    for r in extra["steps"]:
        out.append(f"| {r['critic']} | {r['eager steps/s']:,.0f} | {r.get('captured steps/s', float('nan')):,.0f} "
                   f"| {r.get('captured / eager', float('nan')):.1f}x |")
    return out


def launches_section(launches):
    if not launches:
        return []
    cuda = launches.get("device_type") == "cuda"
    methods = list(dict.fromkeys(r["method"] for r in launches["rows"]))
    shapes = list(dict.fromkeys((r["shape"], r["tensors"]) for r in launches["rows"]))
    cell = {(r["shape"], r["method"]): r for r in launches["rows"]}
    what = ("CUDA kernels per call (launch API calls per call in brackets)" if cuda
            else "ops dispatched per call (profiler events directly under the call)")
    out = [f"torch.profiler, {launches['calls']} calls of each, float32, "
           f"{launches.get('device', '?')}: {what}.", "",
           "| critic | tensors | " + " | ".join(methods) + " |",
           "|---|--:|" + "--:|" * len(methods)]
    for shape, tensors in shapes:
        vals = []
        for m in methods:
            r = cell.get((shape, m))
            if r is None:
                vals.append("–")
            elif cuda:
                vals.append(f"{r['kernels_per_call']:g} ({r['launch_calls_per_call']:g})")
            else:
                vals.append(f"{r['ops_per_call']:g}")
        out.append(f"| {shape} | {tensors} | " + " | ".join(vals) + " |")
    if cuda:
        fused = [r for r in launches["rows"] if r["method"].startswith("fused")]
        names = sorted({n for r in fused for n in r["kernel_names"]})
        memcpy = sorted({r["memcpy_per_call"] for r in fused})
        out += ["", f"Fused kernels: {', '.join(names) or '–'}; host-to-device copies per fused "
                f"call: {', '.join(f'{m:g}' for m in memcpy)}."]
    return out


def section(data, rows, device, stat, launches=None, peak=None, note=None, extra=None):
    label = "CPU" if device == "cpu" else "GPU"
    out = [f"## {label}", ""] + machine_lines(data, device) + [""]
    if note:
        out += [note, ""]
    clip, summary = clip_section(rows, device, stat)
    if not clip:
        return out + [f"No {device} results in this run.", ""]
    out += ["### Clip, per critic", ""] + clip + [""]
    if device == "cuda":
        out += (["### Bandwidth", ""] + bandwidth_section(rows, stat, peak) + [""]
                + extra_section(extra) + [""])
    step = step_section(rows, device, stat)
    if step:
        out += ["### Critic step", ""] + step + [""]
    optim, optim_summary = optim_section(rows, device, stat)
    if optim:
        out += ["### Critic update: ClippedRMSprop", ""] + optim + [""]
    if launches:
        title = "Launches" if device == "cuda" else "Dispatched ops"
        out += [f"### {title}", ""] + launches_section(launches) + [""]
    out += ["### Targets", ""]
    out += (targets_cpu(summary, optim_summary) if device == "cpu"
            else targets_gpu(summary, launches, optim_summary, extra))
    return out + [""]


HEADER = """# wgan-ext benchmark results

Generated by `benchmarks/make_results.py` from the pytest-benchmark suite in `benchmarks/`
(how to run: `benchmarks/README.md`). Every ratio is measured side by side in one run on one
machine: each contender of a group runs back to back in the same pytest session. CPU numbers come
from a shared 2-core machine and are noisy; compare ratios, not absolute times.

Contenders: `limit` = one `clamp_` over a flat buffer with the critic's element count (the floor);
`fused_op` = `torch.ops.wgan_ext.fused_clip_(tensors, lo, hi)` on a prepared list (kernel only);
`fused_plan` = `FusedClipper(critic, c)()` (parameters collected once); `fused_flat` =
`FusedClipper(critic, c, flatten=True)()` (parameters moved into one buffer first); `fused_module` =
`fused_clip_(critic, c)` (stateless: `parameters()`, then the op, which checks each call);
`fallback` = `fused_clip_(critic, c, backend="torch")`; `foreach` = `torch._foreach_clamp_min_` +
`_foreach_clamp_max_` on a prepared list; `loop` = `for p in critic.parameters():
p.data.clamp_(lo, hi)`; `compiled_loop` = `torch.compile` of that loop (float32, some shapes).
Weights are re-drawn uniform in [-2c, 2c] before every timed call (outside the timing).

Critics: """ + "; ".join(f"`{k}` = {v}" for k, v in SHAPE_NOTES.items()) + ".\n"


def write(out_path, device, body):
    begin, end = f"<!-- {device}:begin -->", f"<!-- {device}:end -->"
    text = Path(out_path).read_text() if Path(out_path).exists() else ""
    if "<!-- cpu:begin -->" not in text:
        text = (HEADER + "\n<!-- cpu:begin -->\n## CPU\n\nNot run yet.\n<!-- cpu:end -->\n\n"
                "<!-- gpu:begin -->\n## GPU\n\nNot run yet: `python -m pytest benchmarks "
                "--bench-devices=cuda --benchmark-json=gpu.json`, `python benchmarks/"
                "profile_launches.py --device cuda --json launches.json`, then `python benchmarks/"
                "make_results.py --gpu gpu.json --launches launches.json`.\n<!-- gpu:end -->\n")
    else:  # refresh the header; keep both sections and anything written after them
        text = HEADER + "\n" + text[text.index("<!-- cpu:begin -->"):]
    block = f"{begin}\n" + "\n".join(body).rstrip() + f"\n{end}"
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: block, text, flags=re.S)
    Path(out_path).write_text(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", help="pytest-benchmark JSON of a CPU run (--bench-devices=cpu)")
    ap.add_argument("--gpu", help="pytest-benchmark JSON of a CUDA run (--bench-devices=cuda)")
    ap.add_argument("--launches", help="JSON written by profile_launches.py (goes in the section "
                    "of the device it profiled)")
    ap.add_argument("--extra", help="JSON written by gpu_extra.py (GPU section)")
    ap.add_argument("--stat", default="median", choices=("median", "min", "mean"))
    ap.add_argument("--peak-gbs", type=float, help="override the device's peak HBM GB/s")
    ap.add_argument("--note", help="a paragraph to print under the section's machine lines")
    ap.add_argument("-o", "--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    if not args.cpu and not args.gpu:
        ap.error("give --cpu and/or --gpu")
    launches = json.loads(Path(args.launches).read_text()) if args.launches else None
    extra = json.loads(Path(args.extra).read_text()) if args.extra else None
    for device, path in (("cpu", args.cpu), ("cuda", args.gpu)):
        if not path:
            continue
        data, rows = load(path)
        use_launches = launches if launches and launches.get("device_type") == device else None
        body = section(data, rows, device, args.stat, use_launches, args.peak_gbs, args.note,
                       extra if device == "cuda" else None)
        write(args.out, "cpu" if device == "cpu" else "gpu", body)
        print(f"wrote the {device} section of {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
