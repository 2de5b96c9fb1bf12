"""GPU measurements the pytest-benchmark suite does not make (run by scripts/gpu_check.sh).

1. Bandwidth: device time of ``FusedClipper()`` and ``fused_clip_(critic, c)`` against one
   ``clamp_`` over a flat buffer of the same size and a device-to-device ``copy_`` of the same
   bytes (the practical peak), at 1 M, 10 M and 100 M parameters, float32 and bfloat16.
2. A whole critic step (forward real and fake, backward, RMSprop(capturable=True), clip), eager
   against captured in a CUDA graph, on the WGAN paper's MLP critic (2-D toy data) and on
   torchgan's DCGAN critic: steps per second.

Writes JSON (``--json``) and prints the markdown tables of ``make_results.py``. ``--smoke`` runs tiny sizes (on CPU too, with
host timing and no graphs) so the script cannot rot unnoticed.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from bench_harness import cuda_ms_per_call, device_name
from make_results import extra_section

from wgan_ext import FusedClipper, fused_clip_

C = 0.01
SIZES = {"1M": (4, 512), "10M": (10, 1024), "100M": (6, 4096)}  # layers x (d x d) weights


def _timer(device: torch.device):
    """ms per call of fn, over `n` back-to-back calls (CUDA events on a GPU)."""
    def measure(fn, n: int) -> float:
        if device.type == "cuda":
            return cuda_ms_per_call(fn, n)
        fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) * 1e3 / n
    return measure


def bandwidth(device: torch.device, sizes: dict, calls: int) -> list:
    measure = _timer(device)
    rows = []
    for name, (layers, d) in sizes.items():
        for dtype in (torch.float32, torch.bfloat16):
            critic = torch.nn.Sequential(*[torch.nn.Linear(d, d, bias=False) for _ in range(layers)])
            critic = critic.to(device=device, dtype=dtype)
            numel = sum(p.numel() for p in critic.parameters())
            flat = torch.empty(numel, device=device, dtype=dtype).uniform_(-2 * C, 2 * C)
            src = torch.empty_like(flat)
            clipper = FusedClipper(critic, C)
            ms = {
                "copy": measure(lambda: flat.copy_(src), calls),
                "flat clamp_": measure(lambda: flat.clamp_(-C, C), calls),
                "FusedClipper()": measure(clipper, calls),
                "fused_clip_(critic, c)": measure(lambda: fused_clip_(critic, C), calls),
            }
            nbytes = 2 * numel * flat.element_size()  # read + write
            rows.append({"size": name, "dtype": str(dtype).removeprefix("torch."), "numel": numel,
                         "ms": ms, "GB/s": {k: nbytes / (v * 1e-3) / 1e9 for k, v in ms.items()}})
            del critic, flat, src, clipper
    return rows


def _critics(smoke: bool) -> dict:
    from wgan_ext.networks import MLPCritic

    out = {"mlp toy (2-D, 3 x 512)": (lambda: MLPCritic(2, hidden=512), (2,))}
    try:
        from torchgan.models import DCGANDiscriminator

        size = 16 if smoke else 64
        out["dcgan64" if not smoke else "dcgan16"] = (lambda: DCGANDiscriminator(in_size=size),
                                                      (3, size, size))
    except ImportError:
        pass
    return out


def critic_steps(device: torch.device, smoke: bool, steps: int) -> list:
    rows = []
    for name, (make, shape) in _critics(smoke).items():
        torch.manual_seed(0)
        critic = make().to(device)
        opt = torch.optim.RMSprop(critic.parameters(), lr=5e-5, capturable=device.type == "cuda")
        clip = FusedClipper(critic, C)
        real = torch.randn(64, *shape, device=device)
        fake = torch.randn(64, *shape, device=device)

        def step():
            loss = -(critic(real).mean() - critic(fake).mean())
            loss.backward()
            opt.step()
            clip()

        def eager():
            opt.zero_grad(set_to_none=True)
            step()

        measure = _timer(device)
        row = {"critic": name, "eager steps/s": 1e3 / measure(eager, steps)}
        if device.type == "cuda":
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    eager()
            torch.cuda.current_stream().wait_stream(side)
            opt.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            row["captured steps/s"] = 1e3 / measure(graph.replay, steps)
            row["captured / eager"] = row["captured steps/s"] / row["eager steps/s"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few calls")
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = {"64K": (1, 256)} if args.smoke else SIZES
    result = {
        "device_name": device_name(device),
        "torch": torch.__version__,
        "bandwidth": bandwidth(device, sizes, calls=3 if args.smoke else 50),
        "steps": critic_steps(device, args.smoke, steps=3 if args.smoke else 200),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print("\n".join(extra_section(result)))


if __name__ == "__main__":
    main()
