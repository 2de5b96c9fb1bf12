"""Count what one clip call launches, per method and critic, with torch.profiler.

    python benchmarks/profile_launches.py --device cuda --json launches.json

On CUDA: device kernels per call (memcpy counted apart), and the CPU-side launch API calls
(cudaLaunchKernel & co.) per call. On CPU: the ops the call dispatches from Python (the profiler
events directly under the call). Prints a table; --json writes it for make_results.py --launches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
    import wgan_ext  # noqa: F401
except ImportError:  # not installed: use the checkout
    sys.path.insert(0, os.path.dirname(HERE))

from bench_critics import CRITICS, HI, LO, C, build  # noqa: E402

MARK = "wgan_ext_bench_call"
LAUNCH_APIS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
               "cudaLaunchCooperativeKernel")


def loop(critic, lo, hi):
    for p in critic.parameters():
        p.data.clamp_(lo, hi)


def methods(critic, shape, device, with_compile):
    import wgan_ext
    from wgan_ext import _ext, fused_clip_

    params = list(critic.parameters())
    flat = torch.empty(sum(p.numel() for p in params), device=device, dtype=params[0].dtype)
    out = {}
    if _ext.available(device.type):
        out["fused_module"] = lambda: fused_clip_(critic, C, backend=device.type)
        out["fused_op"] = lambda: torch.ops.wgan_ext.fused_clip_(params, LO, HI)
        if hasattr(wgan_ext, "FusedClipper"):
            out["fused_plan"] = wgan_ext.FusedClipper(critic, C, backend=device.type)
            twin = build(shape, device, params[0].dtype)  # flattening moves memory: a twin
            out["fused_flat"] = wgan_ext.FusedClipper(twin, C, backend=device.type, flatten=True)
    else:
        print(f"# compiled {device.type} kernel unavailable: {_ext.status(device.type).reason}",
              file=sys.stderr)
    out["fallback"] = lambda: fused_clip_(critic, C, backend="torch")

    def foreach():
        with torch.no_grad():
            torch._foreach_clamp_min_(params, LO)
            torch._foreach_clamp_max_(params, HI)

    out["foreach"] = foreach
    out["loop"] = lambda: loop(critic, LO, HI)
    if with_compile:
        torch._dynamo.reset()
        compiled = torch.compile(loop)
        out["compiled_loop"] = lambda: compiled(critic, LO, HI)
    out["limit"] = lambda: flat.clamp_(LO, HI)
    return out


def count(fn, device, calls):
    cuda = device.type == "cuda"
    for _ in range(3):  # warm up: allocator, CUDA table, compile
        fn()
    if cuda:
        torch.cuda.synchronize()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(calls):
            with record_function(MARK):
                fn()
        if cuda:
            torch.cuda.synchronize()
    events = prof.events()
    top = [e for e in events
           if e.device_type == DeviceType.CPU and e.cpu_parent is not None
           and e.cpu_parent.name == MARK]
    row = {"ops_per_call": len(top) / calls, "op_names": sorted({e.name for e in top})}
    if cuda:
        dev_events = [e for e in events if e.device_type == DeviceType.CUDA]
        kernels = [e for e in dev_events if not e.name.lower().startswith(("memcpy", "memset"))]
        launches = [e for e in events if e.device_type == DeviceType.CPU and e.name in LAUNCH_APIS]
        row.update(
            kernels_per_call=len(kernels) / calls,
            memcpy_per_call=(len(dev_events) - len(kernels)) / calls,
            launch_calls_per_call=len(launches) / calls,
            kernel_names=sorted({e.name[:60] for e in kernels}),
            kernel_us_per_call=sum(e.time_range.elapsed_us() for e in kernels) / calls,
        )
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", default=",".join(CRITICS))
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--compile", action="store_true", help="also profile torch.compile of the loop")
    ap.add_argument("--json", help="write the counts here (for make_results.py --launches)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available; use --device cpu")
    rows = []
    for shape in args.shapes.split(","):
        try:
            critic = build(shape, device, torch.float32)
        except ImportError as e:  # dcgan64 needs torchgan
            print(f"# skipping {shape}: {e}", file=sys.stderr)
            continue
        tensors = sum(1 for _ in critic.parameters())
        for name, fn in methods(critic, shape, device, args.compile).items():
            row = dict(shape=shape, tensors=tensors, method=name, **count(fn, device, args.calls))
            rows.append(row)
            if device.type == "cuda":
                print(f"{shape:9s} {tensors:4d} tensors  {name:13s} kernels/call "
                      f"{row['kernels_per_call']:6.1f}  launch calls/call "
                      f"{row['launch_calls_per_call']:6.1f}  memcpy/call {row['memcpy_per_call']:4.1f}  "
                      f"{', '.join(row['kernel_names'][:2])}")
            else:
                print(f"{shape:9s} {tensors:4d} tensors  {name:13s} ops/call "
                      f"{row['ops_per_call']:6.1f}  {', '.join(row['op_names'][:3])}")
    result = {
        "device_type": device.type,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "calls": args.calls,
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
