"""``wgan-ext info`` / ``python -m wgan_ext info``: which fused_clip_ backend is active, and why.

Loads each backend (building it on first use if needed) and prints versions, the way each
backend was obtained ('prebuilt', 'jit') or the reason it is unavailable.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Optional

import torch

from . import _ext
from ._version import __version__
from .optim import kernel_available


def collect() -> dict:
    """Versions and backend status as a plain dict (what ``info --json`` prints)."""
    cpu = _ext.status("cpu")
    cuda = _ext.status("cuda")
    gpu = torch.cuda.is_available()
    src = _ext.source_dir()
    active = {
        "cpu": "cpu kernel" if cpu.loaded else "torch fallback",
        "cuda": ("cuda kernel" if cuda.loaded else "torch fallback") if gpu else "no CUDA device",
    }
    optimizer = {
        "cpu": "fused kernel" if kernel_available("cpu") else "RMSprop's step + fused_clip_",
        "cuda": ("fused kernel" if kernel_available("cuda") else "RMSprop's step + fused_clip_")
        if gpu else "no CUDA device",
    }
    return {
        "wgan_ext": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_device": torch.cuda.get_device_name(0) if gpu else None,
        "backends": {
            name: {"loaded": st.loaded, "how": st.how, "reason": st.reason}
            for name, st in (("cpu", cpu), ("cuda", cuda))
        },
        "active": active,
        "clipped_rmsprop": optimizer,
        "kernel_sources": str(src) if src else None,
    }


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="wgan-ext info", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    args = parser.parse_args(argv)
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"wgan-ext {info['wgan_ext']}  (python {info['python']}, torch {info['torch']}, "
          f"CUDA build {info['torch_cuda'] or 'none'})")
    print(f"CUDA device: {info['cuda_device'] or 'none visible'}")
    for name, st in info["backends"].items():
        state = f"loaded ({st['how']})" if st["loaded"] else f"unavailable: {st['reason']}"
        print(f"  {name:4s} kernel: {state}")
    print(f"fused_clip_ on CPU tensors uses: {info['active']['cpu']}")
    print(f"fused_clip_ on CUDA tensors uses: {info['active']['cuda']}")
    print(f"ClippedRMSprop on CPU uses: {info['clipped_rmsprop']['cpu']}; "
          f"on CUDA: {info['clipped_rmsprop']['cuda']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
